//! The operator's autoscaler: after a reconcile that leaves a VM converged, a Wukong with
//! `spec.autoscaling` whose interval has passed is read through the guest agent (the same
//! guest-operations layer and reading as locally), evaluated by the pure recommender, and
//! its `status.autoscaling` written; a changed target is the desired state of the next
//! reconcile (`controller::desired_config` applies it), asked for at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use wukong_api::autoscaling::{AutoscalingStatus, Policy};
use wukong_api::{VmConfig, WukongStatus};
use wukong_autoscaler::status::{self, LIMITED};
use wukong_autoscaler::{Current, Recommender};
use wukong_engine::VmRef;
use wukong_engine::status::set_condition;

use crate::backend::KubevirtBackend;
use crate::metrics::Metrics;

/// Each autoscaled VM's recommender and when it was last evaluated.
pub struct Autoscalers {
    vms: Mutex<HashMap<VmRef, (Recommender, Option<Instant>)>>,
    metrics: Arc<Metrics>,
}

/// What one evaluation asks of the controller.
pub struct Next {
    /// Look again after this long (at once after a change, to apply it).
    pub after: Duration,
}

impl Autoscalers {
    /// No VM yet; each evaluation exported through `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Autoscalers {
        Autoscalers {
            vms: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Forgets `vm` (deleted).
    pub fn forget(&self, vm: &VmRef) {
        self.vms.lock().expect("autoscalers").remove(vm);
        self.metrics.autoscaler.forget(&vm.namespace, &vm.name);
    }

    /// Evaluates `vm` (effective desired configuration `config`) into `status` if its
    /// interval has passed. `None`: it owns nothing.
    #[allow(clippy::too_many_arguments)]
    pub async fn evaluate(
        &self,
        backend: &KubevirtBackend,
        recorder: &Recorder,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        vm: &VmRef,
        config: &VmConfig,
        running: bool,
        status: &mut WukongStatus,
    ) -> Option<Next> {
        let Some(spec) = config.autoscaling.as_ref() else {
            self.metrics.autoscaler.forget(&vm.namespace, &vm.name);
            return None;
        };
        let policy = Policy::of(spec);
        let interval = Duration::from_secs(policy.interval.into());
        // A VM this operator has not evaluated yet carries on from the history in its status
        // (written by this operator before a restart, or by another replica).
        let (mut rec, last) = self
            .vms
            .lock()
            .expect("autoscalers")
            .remove(vm)
            .unwrap_or_else(|| {
                let history = status.autoscaling.as_ref().and_then(|a| a.history.as_ref());
                (Recommender::resume(history), None)
            });
        // A reconcile brought by something else is not an evaluation (half a second's slack
        // for a requeue that comes a little early).
        if let Some(at) = last.filter(|at| at.elapsed() + Duration::from_millis(500) < interval) {
            let after = interval - at.elapsed().min(interval);
            self.vms
                .lock()
                .expect("autoscalers")
                .insert(vm.clone(), (rec, last));
            return Some(Next { after });
        }
        let at = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
        let reading = if running {
            backend.metrics(vm, at).await.map_err(|e| e.to_string())
        } else {
            Err("the VM is not running".into())
        };
        let boot_memory = status
            .boot_memory
            .as_ref()
            .and_then(|q| q.bytes().ok())
            .unwrap_or(config.memory);
        let current = Current::of(config, boot_memory);
        let ev = rec.evaluate(&policy, &current, reading, None);
        let now = jiff::Timestamp::now().to_string();
        let autoscaling = status
            .autoscaling
            .get_or_insert_with(AutoscalingStatus::default);
        let changed = status::record(autoscaling, &policy, &ev, &now);
        if changed {
            rec.applied(&ev.changes, at);
        }
        autoscaling.history = Some(rec.history());
        let has = status.conditions.iter().any(|c| c.type_ == LIMITED);
        if let Some((on, reason, msg)) = status::limited(&ev, has) {
            set_condition(&mut status.conditions, LIMITED, on, reason, &msg, None);
        }
        for w in &ev.warnings {
            publish(
                recorder,
                reference,
                EventType::Warning,
                "AutoscalingLimited",
                w,
            )
            .await;
        }
        self.metrics
            .autoscaler
            .observe(&vm.namespace, &vm.name, &policy, &ev, changed);
        if changed {
            // One Event for the evaluation: the recorder folds Events of one reason into a
            // series, which would hide every change but the first.
            let note: Vec<String> = ev.changes.iter().map(status::describe).collect();
            publish(
                recorder,
                reference,
                EventType::Normal,
                "Autoscaled",
                &note.join("; "),
            )
            .await;
        }
        self.vms
            .lock()
            .expect("autoscalers")
            .insert(vm.clone(), (rec, Some(Instant::now())));
        Some(Next {
            after: if changed {
                Duration::from_millis(100)
            } else {
                interval
            },
        })
    }
}

async fn publish(
    recorder: &Recorder,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let _ = recorder
        .publish(
            &KubeEvent {
                type_,
                reason: reason.into(),
                note: Some(note.chars().take(1000).collect()),
                action: "Autoscale".into(),
                secondary: None,
            },
            reference,
        )
        .await;
}

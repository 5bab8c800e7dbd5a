//! The controller: kube-rs's `Controller` on Wukongs, owning their `VirtualMachine`s and
//! watching their VMIs and PVCs through a label mapper. One reconcile = resolve the desired
//! configuration → create the VM and its PVCs if missing → converge through the engine
//! (observe → preflight → plan → edits → verify in the guest) → status and Kubernetes Events.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, DeleteParams, DynamicObject, Patch};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizing, finalizer};
use kube::runtime::reflector;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{
    Config as ControllerConfig, Predicate, PredicateConfig, WatchStreamExt, predicates, watcher,
};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use wukong_api::{
    BackendKind, FieldError, FieldErrors, HostLimits, Pinned, VmConfig, Wukong, WukongStatus,
    resolve, resolve_new,
};
use wukong_engine::status::{apply_event, observe_into, report_into, set_condition};
use wukong_engine::{
    Backend, BackendError, Desired, Engine, EngineError, Event, EventSink, Journal, Timeouts, VmRef,
};
use wukong_kubevirt::render::{NAME_LABEL, render};

use crate::backend::{
    Imports, KubeTimeouts, KubevirtBackend, delete_disks, pvc_resource, vm_resource, vmi_resource,
};
use crate::metrics::Metrics;
use crate::writes;

/// The finalizer that keeps a Wukong until its VM (and, if asked, its disks) are gone.
pub const FINALIZER: &str = "vm.novasphere.dev/cleanup";
/// Annotation: `"true"` deletes the disks (PVCs) with the Wukong; they are kept otherwise.
pub const DELETE_DISKS: &str = "vm.novasphere.dev/delete-disks";
/// Reconciles running at once (each mostly waits on the API server or the guest).
const CONCURRENCY: u16 = 64;
const MANAGED: &str = "app.kubernetes.io/managed-by=wukong";

/// Operator settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// Watch one namespace only (all when `None`).
    pub namespace: Option<String>,
    /// Where `/metrics`, `/healthz`, `/readyz` listen (none when `None`).
    pub metrics_addr: Option<SocketAddr>,
    /// How long the guest may take to show a step.
    pub verify_timeout: Duration,
    /// Platform waits.
    pub kube: KubeTimeouts,
    /// Re-verify a converged VM this often.
    pub resync: Duration,
    /// First retry delay after a failure (doubling, at most 5 minutes).
    pub backoff: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespace: None,
            metrics_addr: None,
            verify_timeout: Duration::from_secs(60),
            kube: KubeTimeouts::default(),
            resync: Duration::from_secs(300),
            backoff: Duration::from_secs(5),
        }
    }
}

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or could not be reached.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// The VM could not be observed.
    #[error("{0}")]
    Engine(String),
}

/// Shared by every reconcile.
pub struct Context {
    client: Client,
    backend: KubevirtBackend,
    reporter: Reporter,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    opts: Options,
    ops: AtomicU64,
    failures: Mutex<HashMap<VmRef, u32>>,
    /// The resourceVersion of each Wukong's last status write.
    written: Mutex<HashMap<VmRef, String>>,
    autoscalers: crate::autoscale::Autoscalers,
}

impl Context {
    /// An Event recorder for one reconcile. kube's recorder keeps every event it published
    /// (to count repeats) and walks that cache on each publish: one per reconcile keeps both
    /// small with thousands of VMs.
    fn recorder(&self) -> Recorder {
        Recorder::new(self.client.clone(), self.reporter.clone())
    }
}

/// The desired configuration of a Wukong on a cluster: creation defaults resolved, the
/// ceilings and boot disk pinned in status once chosen, the fields the autoscaler owns taken
/// from its target (`Auto` mode).
pub fn desired_config(w: &Wukong) -> Result<(VmConfig, Pinned), FieldErrors> {
    let (mut config, pinned) = configured(w)?;
    wukong_api::autoscaling::effective(&mut config, w.status.as_ref());
    Ok((config, pinned))
}

/// The configuration the spec and the pinned values make.
fn configured(w: &Wukong) -> Result<(VmConfig, Pinned), FieldErrors> {
    let name = w.name_any();
    // The CRD holds the same rule; an object stored before it (or past it) is refused here.
    if let Err(reason) = wukong_api::document::check_object_name(&name) {
        return Err(FieldErrors(vec![FieldError::invalid(
            "metadata.name",
            reason,
        )]));
    }
    let (config, fresh) =
        resolve_new(&name, &w.spec, BackendKind::Kubevirt, HostLimits::UNLIMITED)?;
    let Some(pinned) = w.status.as_ref().and_then(Pinned::from_status) else {
        return Ok((config, fresh));
    };
    let full = config.to_spec();
    let mut spec = w.spec.clone();
    spec.cpu = spec.cpu.or(full.cpu);
    spec.memory = spec.memory.or(full.memory);
    spec.disks = spec.disks.or(full.disks);
    spec.networks = spec.networks.or(full.networks);
    Ok((resolve(&name, &spec, &pinned)?, pinned))
}

/// Persists progress into the Wukong's status and reports it as Kubernetes Events.
struct StatusSink {
    tx: mpsc::UnboundedSender<Event>,
}

impl Journal for StatusSink {
    fn record(&self, _: &VmRef, event: &Event) -> Result<(), String> {
        self.tx
            .send(event.clone())
            .map_err(|_| "the status writer stopped".to_string())
    }
}

impl EventSink for StatusSink {
    fn emit(&self, _: &VmRef, event: &Event) {
        if matches!(event, Event::StepProgress { .. }) {
            let _ = self.tx.send(event.clone());
        }
    }
}

fn kube_event(event: &Event) -> Option<KubeEvent> {
    let (type_, reason, note) = match event {
        Event::Planned { plan, .. } | Event::Replanned { plan, .. } => {
            let (live, restart, _) = plan.counts();
            (
                EventType::Normal,
                "Planned",
                format!("{live} live step(s), {restart} needing a restart"),
            )
        }
        Event::StepStarted { step, .. } => (
            EventType::Normal,
            "StepStarted",
            format!("{} [{}]", step.action.describe(), step.mode),
        ),
        Event::StepDone {
            index, duration_ms, ..
        } => (
            EventType::Normal,
            "StepDone",
            format!("step {index} verified in the guest after {duration_ms} ms"),
        ),
        Event::StepFailed { index, error, .. } => (
            EventType::Warning,
            "StepFailed",
            format!("step {index}: {error}"),
        ),
        Event::Restarting { .. } => (
            EventType::Normal,
            "Restarting",
            "restarting the VM for the restart-only changes".into(),
        ),
        Event::Restarted { .. } => (
            EventType::Normal,
            "Restarted",
            "the VM runs again with every change".into(),
        ),
        Event::RestartPending { reason, .. } => {
            (EventType::Normal, "RestartPending", reason.clone())
        }
        Event::Notice { message, warning } => (
            if *warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            "Notice",
            message.clone(),
        ),
        _ => return None,
    };
    Some(KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    })
}

impl Context {
    /// Writes `status` of `vm` whole, and remembers the version it made.
    async fn write_status(
        &self,
        api: &Api<Wukong>,
        vm: &VmRef,
        status: &WukongStatus,
    ) -> Result<(), kube::Error> {
        let patch = json!([{"op": "add", "path": "/status", "value": status}]);
        let patch: json_patch::Patch = serde_json::from_value(patch).expect("a valid patch");
        let written = api
            .patch_status(&vm.name, &writes::strict(), &Patch::<()>::Json(patch))
            .await?;
        if let Some(rv) = written.resource_version() {
            self.written.lock().expect("written").insert(vm.clone(), rv);
        }
        Ok(())
    }

    /// Counts one more failure of `vm` and backs off accordingly.
    fn retry_later(&self, vm: &VmRef) -> Action {
        let mut failures = self.failures.lock().expect("failures");
        let n = failures.entry(vm.clone()).or_default();
        *n += 1;
        Action::requeue(backoff(self.opts.backoff, *n))
    }

    /// `w` if it is the version this operator last wrote (or it never wrote one); the stored
    /// object otherwise: the cache may lag behind the operator's own status write, and the
    /// pinned ceilings and boot disk live in status.
    async fn current(
        &self,
        api: &Api<Wukong>,
        vm: &VmRef,
        w: Arc<Wukong>,
    ) -> Result<Option<Arc<Wukong>>, kube::Error> {
        let fresh = match self.written.lock().expect("written").get(vm) {
            None => true,
            Some(rv) => w.resource_version().as_ref() == Some(rv),
        };
        if fresh {
            return Ok(Some(w));
        }
        Ok(api.get_opt(&vm.name).await?.map(Arc::new))
    }
}

/// A task that belongs to the future holding it: if that future is dropped unfinished (a
/// reconcile cancelled, its operator stopped or crashed), the task is aborted with it, so no
/// status write outlives the reconcile that queued it and lands over a successor's.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Applies events to `status` and writes it (coalescing bursts), until the engine is done.
async fn status_writer(
    ctx: Arc<Context>,
    api: Api<Wukong>,
    vm: VmRef,
    mut status: WukongStatus,
    mut rx: mpsc::UnboundedReceiver<Event>,
    reference: k8s_openapi::api::core::v1::ObjectReference,
) -> WukongStatus {
    let recorder = ctx.recorder();
    let metrics = &ctx.metrics;
    let mut last_step: Option<(String, String)> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(e) = rx.try_recv() {
            batch.push(e);
        }
        for e in &batch {
            apply_event(&mut status, e);
            match e {
                Event::StepStarted { step, .. } => {
                    last_step = Some((action_name(&step.action), step.mode.to_string()));
                }
                Event::StepDone { duration_ms, .. } => {
                    if let Some((a, m)) = &last_step {
                        metrics.step(a, m, *duration_ms as f64 / 1000.0);
                    }
                }
                _ => {}
            }
            if let Some(k) = kube_event(e) {
                let _ = recorder.publish(&k, &reference).await;
            }
        }
        if let Err(e) = ctx.write_status(&api, &vm, &status).await {
            tracing::warn!(%vm, error = %e, "progress not written to status");
        }
    }
    status
}

fn action_name(a: &wukong_planner::Action) -> String {
    serde_json::to_value(a)
        .ok()
        .and_then(|v| v["action"].as_str().map(String::from))
        .unwrap_or_default()
}

fn backoff(base: Duration, failures: u32) -> Duration {
    (base * (1 << failures.saturating_sub(1).min(8))).min(Duration::from_secs(300))
}

/// The status (and an Event when it changes) of a VM whose disks are being imported, or whose
/// import failed.
async fn importing(
    ctx: &Context,
    api: &Api<Wukong>,
    vm: &VmRef,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    generation: i64,
    mut status: WukongStatus,
    imports: Imports,
) -> Result<Action, Error> {
    let before = status.clone();
    let (failed, message) = match &imports {
        Imports::Failed(m) => (true, m.clone()),
        Imports::Pending(m) => (false, m.clone()),
        Imports::Done => return Ok(Action::await_change()),
    };
    status.phase = Some(if failed {
        wukong_api::Phase::Failed
    } else {
        wukong_api::Phase::Pending
    });
    let reason = if failed { "ImportFailed" } else { "Importing" };
    set_condition(
        &mut status.conditions,
        "Ready",
        false,
        reason,
        &message,
        Some(generation),
    );
    if failed {
        set_condition(
            &mut status.conditions,
            "Degraded",
            true,
            reason,
            &message,
            Some(generation),
        );
    }
    if status != before {
        ctx.write_status(api, vm, &status).await?;
        let _ = ctx
            .recorder()
            .publish(
                &KubeEvent {
                    type_: if failed {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: reason.into(),
                    note: Some(message),
                    action: "Import".into(),
                    secondary: None,
                },
                reference,
            )
            .await;
    }
    // CDI's progress is read again shortly; the PVC's creation and the VMI bring a reconcile
    // of their own.
    Ok(Action::requeue(Duration::from_secs(if failed {
        60
    } else {
        3
    })))
}

/// Creates the VM and its disks and records the pinned values.
async fn created(
    ctx: &Context,
    api: &Api<Wukong>,
    w: &Wukong,
    vm: &VmRef,
    config: &VmConfig,
    pinned: &Pinned,
    mut status: WukongStatus,
) -> Result<Action, Error> {
    let generation = w.metadata.generation.unwrap_or(1);
    let name = &vm.name;
    let reference = w.object_ref(&());
    // In a namespace being deleted nothing is made: its deletion (the namespace's) brings
    // the next reconcile, the cleanup.
    if ctx.backend.terminating(&vm.namespace) {
        return Ok(Action::await_change());
    }
    match create(ctx, w, config).await {
        Ok(()) => {}
        Err(Error::Kube(e)) if ctx.backend.note_terminating(&vm.namespace, &e) => {
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e),
    }
    status.max_cpu = Some(pinned.max_cpu);
    status.max_memory = Some(wukong_api::Quantity::from_bytes(pinned.max_memory));
    status.boot_disk = pinned.boot_disk.clone();
    status.phase = Some(wukong_api::Phase::Pending);
    set_condition(
        &mut status.conditions,
        "Ready",
        false,
        "Creating",
        "the VirtualMachine and its disks were created",
        Some(generation),
    );
    ctx.write_status(api, vm, &status).await?;
    let _ = ctx
        .recorder()
        .publish(
            &KubeEvent {
                type_: EventType::Normal,
                reason: "Created".into(),
                note: Some(format!(
                    "VirtualMachine {name} and {} PVC(s)",
                    config.disks.len()
                )),
                action: "Create".into(),
                secondary: None,
            },
            &reference,
        )
        .await;
    Ok(Action::requeue(Duration::from_secs(10)))
}

async fn apply(w: Arc<Wukong>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = w.namespace().unwrap_or_default();
    let name = w.name_any();
    let vm = VmRef::new(&ns, &name);
    let api: Api<Wukong> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(w) = ctx.current(&api, &vm, w).await? else {
        return Ok(Action::await_change());
    };
    let generation = w.metadata.generation.unwrap_or(1);
    let before = w.status.clone().unwrap_or_default();
    let mut status = before.clone();
    let reference = w.object_ref(&());
    let (config, pinned) = match desired_config(&w) {
        Ok(c) => c,
        Err(errors) => {
            set_condition(
                &mut status.conditions,
                "Degraded",
                true,
                "InvalidSpec",
                &errors.to_string(),
                Some(generation),
            );
            if status != before {
                ctx.write_status(&api, &vm, &status).await?;
            }
            return Ok(Action::await_change());
        }
    };
    // Disks imported from a source (CDI) come first: until they are, KubeVirt does not start
    // the VM, and the status says how far the imports are (the VM exists once pinned values
    // are in the status).
    if before.max_cpu.is_some() && config.disks.iter().any(|d| d.source.is_some()) {
        match ctx.backend.imports(&vm, &config).await {
            Ok(Imports::Done) => {}
            Ok(imports) => {
                return importing(&ctx, &api, &vm, &reference, generation, status, imports).await;
            }
            Err(e) => return Err(Error::Engine(e.to_string())),
        }
    }
    ctx.backend.set_desired(&vm, config.clone());
    // A change to a VM that ran (or one that failed) is observed in its guest; a converged
    // VM and a new one (whose first operation only formats and mounts, which the agent's
    // filesystem list shows) through the VMI, so a resync of thousands execs into none.
    let degraded = before
        .conditions
        .iter()
        .any(|c| c.type_ == "Degraded" && c.status == "True");
    let changed = before.observed_generation.is_some_and(|g| g != generation);
    ctx.backend.probe_guest(&vm, degraded || changed);
    // Reconciles of one Wukong never overlap: an operation the status shows in flight was left
    // by an operator that stopped during it. It ends as interrupted; this one plans afresh.
    if let Some(id) = wukong_engine::status::interrupted(&mut status) {
        tracing::warn!(%vm, operation = %id, "an operation left in flight by a stopped operator ends as interrupted");
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let mut writer = AbortOnDrop(tokio::spawn(status_writer(
        ctx.clone(),
        api.clone(),
        vm.clone(),
        status.clone(),
        rx,
        reference,
    )));
    let sink = StatusSink { tx };
    let op = format!(
        "{generation}-{}",
        ctx.ops.fetch_add(1, Ordering::SeqCst) + 1
    );
    let (_desired_tx, mut desired_rx) = watch::channel(Desired {
        generation,
        config: config.clone(),
    });
    let engine = Engine {
        backend: &ctx.backend,
        journal: &sink,
        events: &sink,
        timeouts: Timeouts {
            verify: ctx.opts.verify_timeout,
        },
    };
    let outcome = engine.converge(&vm, &op, &mut desired_rx).await;
    // A failed operation's last observation may be stale: the VM is observed again, so the
    // status tells how it is (its phase above all), not how it was.
    let observed = match &outcome {
        Ok(r) => match &r.observed {
            Some(o) => Some(o.clone()),
            None => ctx.backend.observe(&vm).await.ok(),
        },
        Err(_) => None,
    };
    ctx.backend.settle(&vm);
    drop(sink);
    let mut status = (&mut writer.0).await.unwrap_or(status);
    let result = match outcome {
        Ok(report) => {
            if let Some(o) = &observed {
                observe_into(&mut status, o, Some(generation));
                // The phase is the VMI's; whether the agent answers is the Ready condition's.
                if let Some(phase) = ctx.backend.phase(&vm) {
                    status.phase = Some(phase);
                }
            }
            report_into(&mut status, &report);
            if !report.steps.is_empty() {
                ctx.metrics.operation(if report.succeeded {
                    "succeeded"
                } else {
                    "failed"
                });
            }
            ctx.metrics.pending(&vm, report.pending.is_some());
            Ok(if !report.succeeded {
                ctx.retry_later(&vm)
            } else {
                ctx.failures.lock().expect("failures").remove(&vm);
                let next = if report.pending.is_some() {
                    Duration::from_secs(60)
                } else {
                    ctx.opts.resync
                };
                let running = ctx.backend.phase(&vm) == Some(wukong_api::Phase::Running);
                match ctx
                    .autoscalers
                    .evaluate(
                        &ctx.backend,
                        &ctx.recorder(),
                        &w.object_ref(&()),
                        &vm,
                        &config,
                        running,
                        &mut status,
                    )
                    .await
                {
                    Some(a) => Action::requeue(a.after.min(next)),
                    None => Action::requeue(next),
                }
            })
        }
        Err(EngineError::Backend(BackendError::NotFound(what))) if what == vm.to_string() => {
            return created(&ctx, &api, &w, &vm, &config, &pinned, status).await;
        }
        Err(EngineError::Backend(BackendError::Settling(why))) => {
            status.phase = Some(wukong_api::Phase::Starting);
            set_condition(
                &mut status.conditions,
                "Ready",
                false,
                "Starting",
                &why,
                Some(generation),
            );
            // The VMI's events bring the next reconcile; this is the fallback.
            Ok(Action::requeue(Duration::from_secs(30)))
        }
        Err(EngineError::Plan(e)) => {
            set_condition(
                &mut status.conditions,
                "Degraded",
                true,
                "Refused",
                &e.to_string(),
                Some(generation),
            );
            Ok(Action::await_change())
        }
        Err(e) => {
            set_condition(
                &mut status.conditions,
                "Degraded",
                true,
                "Unobservable",
                &e.to_string(),
                Some(generation),
            );
            Err(Error::Engine(e.to_string()))
        }
    };
    if status != before {
        ctx.write_status(&api, &vm, &status).await?;
    }
    result
}

/// Creates the PVCs and the VM of a new Wukong. The VM is owned by the Wukong (it goes with
/// it); the PVCs are not (data is kept unless the Wukong asks otherwise).
async fn create(ctx: &Context, w: &Wukong, config: &VmConfig) -> Result<(), Error> {
    let ns = w.namespace().unwrap_or_default();
    let name = w.name_any();
    let rendered = render(&name, &ns, config);
    for p in &rendered.pvcs {
        let obj: DynamicObject =
            serde_json::from_value(p.clone()).map_err(|e| Error::Engine(e.to_string()))?;
        match writes::create(&ctx.client, &pvc_resource(), &ns, &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut vm = rendered.vm;
    let owner = w
        .controller_owner_ref(&())
        .expect("a stored object has a uid");
    vm["metadata"]["ownerReferences"] = json!([owner]);
    let obj: DynamicObject =
        serde_json::from_value(vm).map_err(|e| Error::Engine(e.to_string()))?;
    match writes::create(&ctx.client, &vm_resource(), &ns, &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn cleanup(w: Arc<Wukong>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = w.namespace().unwrap_or_default();
    let name = w.name_any();
    let vm = VmRef::new(&ns, &name);
    let vms: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &vm_resource());
    match vms.delete(&name, &DeleteParams::foreground()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    let keep = w
        .annotations()
        .get(DELETE_DISKS)
        .is_none_or(|v| v != "true");
    let note = if keep {
        format!("VM deleted; its disks are kept (PVCs labelled {NAME_LABEL}={name})")
    } else {
        let n = delete_disks(&ctx.client, &vm).await?;
        format!("VM and {n} disk(s) deleted")
    };
    let _ = ctx
        .recorder()
        .publish(
            &KubeEvent {
                type_: EventType::Normal,
                reason: "Deleted".into(),
                note: Some(note),
                action: "Delete".into(),
                secondary: None,
            },
            &w.object_ref(&()),
        )
        .await;
    ctx.backend.forget(&vm);
    ctx.autoscalers.forget(&vm);
    ctx.written.lock().expect("written").remove(&vm);
    ctx.failures.lock().expect("failures").remove(&vm);
    ctx.metrics.pending(&vm, false);
    Ok(Action::await_change())
}

async fn reconcile(w: Arc<Wukong>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = w.namespace().unwrap_or_default();
    let api: Api<Wukong> = Api::namespaced(ctx.client.clone(), &ns);
    let w = match deleting(&api, w).await? {
        Some(w) => w,
        None => return Ok(Action::await_change()),
    };
    let c = ctx.clone();
    let r = finalizer(&api, FINALIZER, w, |event| async move {
        match event {
            Finalizing::Apply(w) => apply(w, c).await,
            Finalizing::Cleanup(w) => cleanup(w, c).await,
        }
    })
    .await
    .or_else(|e| match e {
        // Removing the finalizer found the object gone: the cleanup is done.
        kube::runtime::finalizer::Error::RemoveFinalizer(kube::Error::Api(s)) if s.code == 404 => {
            Ok(Action::await_change())
        }
        e => Err(Error::Finalizer(e.to_string())),
    });
    ctx.metrics
        .reconcile(if r.is_ok() { "ok" } else { "error" });
    r
}

/// `w`, unless it is being deleted: then the stored object, or `None` when its cleanup is
/// already done (the object is gone or no longer holds the finalizer). The cache can lag
/// behind the finalizer's removal; a cleanup run from it would delete and report twice.
async fn deleting(api: &Api<Wukong>, w: Arc<Wukong>) -> Result<Option<Arc<Wukong>>, Error> {
    if w.metadata.deletion_timestamp.is_none() {
        return Ok(Some(w));
    }
    Ok(api
        .get_opt(&w.name_any())
        .await?
        .filter(|w| w.finalizers().iter().any(|f| f == FINALIZER))
        .map(Arc::new))
}

fn error_policy(w: Arc<Wukong>, error: &Error, ctx: Arc<Context>) -> Action {
    let vm = VmRef::new(&w.namespace().unwrap_or_default(), &w.name_any());
    tracing::warn!(%vm, %error, "reconcile failed");
    ctx.retry_later(&vm)
}

fn by_label(o: DynamicObject) -> Option<ObjectRef<Wukong>> {
    let name = o.labels().get(NAME_LABEL)?.clone();
    Some(ObjectRef::new(&name).within(&o.namespace()?))
}

/// Runs the operator until `shutdown` completes.
pub async fn run(
    client: Client,
    opts: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    run_with(client, opts, Arc::new(Metrics::new()), shutdown).await
}

/// Runs the operator until `shutdown` completes, counting into `metrics`.
pub async fn run_with(
    client: Client,
    opts: Options,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    if let Some(addr) = opts.metrics_addr {
        let local = crate::metrics::serve(metrics.clone(), addr)
            .await
            .map_err(|e| Error::Engine(format!("metrics on {addr}: {e}")))?;
        tracing::info!(%local, "serving /metrics, /healthz, /readyz");
    }
    let dynamic = |ar: &kube::core::ApiResource| -> Api<DynamicObject> {
        match &opts.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
            None => Api::all_with(client.clone(), ar),
        }
    };
    let wukongs: Api<Wukong> = match &opts.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (vm_ar, vmi_ar, pvc_ar) = (vm_resource(), vmi_resource(), pvc_resource());
    let (vms, vmis, pvcs) = (dynamic(&vm_ar), dynamic(&vmi_ar), dynamic(&pvc_ar));
    let ctx = Arc::new(Context {
        backend: KubevirtBackend::new(client.clone(), opts.kube),
        reporter: Reporter {
            controller: "wukong-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        },
        client,
        metrics: metrics.clone(),
        opts,
        ops: AtomicU64::new(0),
        failures: Mutex::new(HashMap::new()),
        written: Mutex::new(HashMap::new()),
        autoscalers: crate::autoscale::Autoscalers::new(metrics.clone()),
    });
    let wc = watcher::Config::default();
    // Only what the user changes starts a reconcile (spec → generation, deletion, finalizers,
    // annotations), not the operator's own status writes; the VM, VMI and PVC watches and
    // the periodic resync cover the rest.
    let (reader, writer) = reflector::store::<Wukong>();
    let trigger = watcher(wukongs, wc.clone())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation
                .combine(predicates::finalizers)
                .combine(predicates::annotations),
            PredicateConfig::default(),
        );
    let controller = Controller::for_stream(trigger, reader)
        .with_config(ControllerConfig::default().concurrency(CONCURRENCY))
        .owns_with(vms, vm_ar, wc.clone().labels(MANAGED))
        .watches_with(vmis, vmi_ar, wc.clone().labels(NAME_LABEL), by_label)
        .watches_with(pvcs, pvc_ar, wc.labels(MANAGED), by_label)
        .graceful_shutdown_on(shutdown);
    metrics.set_ready();
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "reconcile");
            }
        })
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_that_is_no_dns_label_is_refused_before_anything_is_rendered() {
        let mut w: Wukong = serde_yaml::from_str(
            "apiVersion: vm.novasphere.dev/v1alpha1\nkind: Wukong\nmetadata: {name: my.vm, namespace: t}\nspec: {cpu: 1, memory: 1Gi}\n",
        )
        .unwrap();
        let e = desired_config(&w).unwrap_err();
        assert_eq!(e.0[0].field, "metadata.name", "{e}");
        w.metadata.name = Some("my-vm".into());
        assert!(desired_config(&w).is_ok());
    }
}

//! The local daemon's autoscaler: one task per VM with `spec.autoscaling`, reading the guest
//! every interval through the guest-operations layer, evaluating the reading with the pure
//! recommender, writing `status.autoscaling`, and — in `Auto` mode — handing a changed target
//! to the VM's worker, which applies it through the same plan → execute → verify path as a
//! user's change.

use std::sync::Arc;
use std::time::Duration;

use wukong_api::autoscaling::{AutoscalingStatus, DEFAULT_INTERVAL, Policy};
use wukong_autoscaler::status::{self, LIMITED};
use wukong_autoscaler::{Current, Recommender};
use wukong_engine::VmRef;
use wukong_engine::status::set_condition;

use crate::daemon::{Daemon, desired_config};
use crate::store::StoreError;

/// Runs the autoscaler of `vm` until its record is gone.
/// A restarted daemon carries on from the history stored with the VM's status.
pub async fn run(daemon: Arc<Daemon>, vm: VmRef) {
    let mut recommender = None;
    loop {
        let Ok(Some(rec)) = daemon.backend.store().get(&vm) else {
            return;
        };
        let Some(spec) = rec.object.spec.autoscaling.clone() else {
            // Nothing owned: forget the history and the figures, look again later.
            recommender = Some(Recommender::default());
            daemon.metrics.autoscaler.forget(&vm.namespace, &vm.name);
            tokio::time::sleep(Duration::from_secs(DEFAULT_INTERVAL.into())).await;
            continue;
        };
        let recommender = recommender.get_or_insert_with(|| {
            let status = rec.object.status.as_ref();
            Recommender::resume(status.and_then(|s| s.autoscaling.as_ref()?.history.as_ref()))
        });
        let policy = Policy::of(&spec);
        evaluate(&daemon, &vm, &policy, recommender).await;
        tokio::time::sleep(Duration::from_secs(policy.interval.into())).await;
    }
}

/// Now, in seconds since the Unix epoch: the recommender's clock, which outlives the daemon.
fn wall_clock() -> f64 {
    jiff::Timestamp::now().as_millisecond() as f64 / 1000.0
}

/// One evaluation.
async fn evaluate(
    daemon: &Arc<Daemon>,
    vm: &VmRef,
    policy: &Policy,
    recommender: &mut Recommender,
) {
    let reading = if daemon.backend.is_running(vm) {
        daemon
            .backend
            .metrics(vm, wall_clock())
            .await
            .map_err(|e| e.to_string())
    } else {
        Err("the VM is not running".into())
    };
    // Read after the reading: an operation may have held the agent until just now.
    let Ok(Some(rec)) = daemon.backend.store().get(vm) else {
        return;
    };
    let Ok(config) = desired_config(&rec) else {
        return;
    };
    let mut current = Current::of(&config, rec.boot_memory);
    // Memory the host cannot commit is a ceiling like maxMemory (read only when memory is
    // owned: it lists every VM).
    if policy.memory.is_some()
        && let Some(room) = daemon.memory_room(vm)
    {
        current.max_memory = current.max_memory.min(room.max(current.memory));
    }
    let st = rec.object.status.as_ref();
    let busy = st
        .and_then(|s| s.operation.as_ref())
        .map(|o| format!("operation {} is under way", o.id));
    let ev = recommender.evaluate(policy, &current, reading, busy.as_deref());
    let (at, now) = (wall_clock(), jiff::Timestamp::now().to_string());
    let mut changed = false;
    // What the recommender will remember if the change is written (stored with it).
    let mut next = None;
    let updated = daemon.backend.store().update::<StoreError>(vm, None, |r| {
        let s = r.object.status.get_or_insert_with(Default::default);
        let a = s.autoscaling.get_or_insert_with(AutoscalingStatus::default);
        changed = status::record(a, policy, &ev, &now);
        let mut after = recommender.clone();
        if changed {
            after.applied(&ev.changes, at);
        }
        a.history = Some(after.history());
        next = Some(after);
        let generation = r.object.metadata.generation;
        let has = s.conditions.iter().any(|c| c.type_ == LIMITED);
        if let Some((on, reason, msg)) = status::limited(&ev, has) {
            set_condition(&mut s.conditions, LIMITED, on, reason, &msg, generation);
        }
        Ok(())
    });
    for w in &ev.warnings {
        daemon.notice(vm, format!("autoscaler: {w}"), true);
    }
    daemon
        .metrics
        .autoscaler
        .observe(&vm.namespace, &vm.name, policy, &ev, changed);
    let Ok(rec) = updated else { return };
    if let Some(after) = next {
        *recommender = after;
    }
    if changed {
        for c in &ev.changes {
            daemon.notice(vm, status::describe(c), false);
        }
        daemon.ensure_worker(&rec);
    }
}

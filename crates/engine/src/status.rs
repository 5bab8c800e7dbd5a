//! Turning observations and operation reports into `status` (pure).

use crate::{Event, OperationReport};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use wukong_api::quantity::Quantity;
use wukong_api::{
    GuestDisk, GuestFilesystem, GuestNic, GuestStatus, OperationStatus, PendingChange, Phase,
    StepStatus, WukongStatus,
};
use wukong_planner::{Observed, Step};

/// Sets (or replaces) a condition, keeping its transition time when the status is unchanged.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    kind: &str,
    on: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let status = if on { "True" } else { "False" };
    let now = Time(jiff::Timestamp::now());
    match conditions.iter_mut().find(|c| c.type_ == kind) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now;
            }
            c.status = status.into();
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: kind.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: now,
            observed_generation: generation,
        }),
    }
}

/// The guest part of status from an observation.
pub fn guest_status(observed: &Observed) -> Option<GuestStatus> {
    let g = observed.guest.as_ref()?;
    let cfg = &observed.config;
    Some(GuestStatus {
        cpus_online: Some(g.cpus_online),
        memory: Some(Quantity::from_bytes(g.memory_total)),
        boot_id: g.boot_id.clone(),
        disks: g
            .disks
            .iter()
            .map(|(name, d)| GuestDisk {
                name: name.clone(),
                size: Quantity::from_bytes(d.size),
                device: d.device.as_ref().map(|d| format!("/dev/{d}")),
                filesystem: d.filesystem_size.map(|size| GuestFilesystem {
                    fs_type: d.fs_type.clone().unwrap_or_else(|| {
                        cfg.disk(name)
                            .and_then(|c| c.filesystem.as_ref())
                            .map_or("unknown".into(), |f| {
                                format!("{:?}", f.fs_type).to_lowercase()
                            })
                    }),
                    mount_path: d.mount.clone().unwrap_or_default(),
                    size: Quantity::from_bytes(size),
                    used: None,
                }),
                not_grown: d.grow_blocked.clone(),
            })
            .collect(),
        networks: cfg
            .networks
            .iter()
            .filter(|n| g.macs.iter().any(|m| m.eq_ignore_ascii_case(&n.mac)))
            .map(|n| GuestNic {
                name: n.name.clone(),
                mac: n.mac.clone(),
                interface_name: None,
            })
            .collect(),
    })
}

/// Phase from whether QEMU runs and the agent answers.
pub fn phase(observed: &Observed) -> Phase {
    match (observed.running, observed.guest.is_some()) {
        (false, _) => Phase::Stopped,
        (true, true) => Phase::Running,
        (true, false) => Phase::Starting,
    }
}

/// Refreshes the observed parts of status: phase, guest view, Ready.
pub fn observe_into(status: &mut WukongStatus, observed: &Observed, generation: Option<i64>) {
    let phase = phase(observed);
    status.phase = Some(phase);
    status.guest = guest_status(observed);
    status.boot_memory = Some(Quantity::from_bytes(observed.boot_memory));
    if observed.running {
        status.boot_cpu.get_or_insert(observed.config.cpu);
    }
    status.max_cpu = Some(observed.config.max_cpu);
    status.max_memory = Some(Quantity::from_bytes(observed.config.max_memory));
    let (ready, reason, msg) = match phase {
        Phase::Running => (true, "AgentReady", "running and the guest agent answers"),
        Phase::Starting => (
            false,
            "AgentNotReady",
            "running, the guest agent does not answer",
        ),
        _ => (false, "NotRunning", "the VM is not running"),
    };
    set_condition(
        &mut status.conditions,
        "Ready",
        ready,
        reason,
        msg,
        generation,
    );
    // A warning, not a failure: what the guest has on a disk that Wukong leaves as it is.
    if let Some(g) = &observed.guest {
        let left: Vec<String> = g
            .disks
            .iter()
            .filter_map(|(name, d)| {
                d.grow_blocked
                    .as_ref()
                    .map(|why| format!("disk {name}: {why}"))
            })
            .collect();
        set_condition(
            &mut status.conditions,
            "FilesystemsGrowable",
            left.is_empty(),
            if left.is_empty() {
                "AllGrowable"
            } else {
                "LeftAsTheyAre"
            },
            &if left.is_empty() {
                "every filesystem grows with its disk".to_string()
            } else {
                left.join("; ")
            },
            generation,
        );
    }
}

fn step_status(step: &Step, state: &str, ms: Option<u64>, msg: Option<String>) -> StepStatus {
    StepStatus {
        description: step.action.describe(),
        mode: step.mode.to_string(),
        state: state.into(),
        progress: None,
        duration_ms: ms,
        message: msg,
    }
}

/// Folds one engine event into the in-flight operation of `status`.
pub fn apply_event(status: &mut WukongStatus, event: &Event) {
    match event {
        Event::Planned { operation, plan } | Event::Replanned { operation, plan } => {
            let mut op = status
                .operation
                .take()
                .filter(|o| o.id == *operation)
                .unwrap_or(OperationStatus {
                    id: operation.clone(),
                    phase: "Running".into(),
                    started_at: Some(jiff::Timestamp::now().to_string()),
                    ..Default::default()
                });
            op.steps
                .retain(|s| s.state == "Done" || s.state == "Failed");
            op.steps.extend(
                plan.steps
                    .iter()
                    .map(|s| step_status(s, "Pending", None, None)),
            );
            status.operation = Some(op);
            set_condition(
                &mut status.conditions,
                "Resizing",
                true,
                "OperationRunning",
                &format!("operation {operation}"),
                None,
            );
        }
        Event::StepStarted { step, .. } => {
            if let Some(s) = find_step(status, step, "Pending") {
                s.state = "Running".into();
            }
        }
        Event::StepProgress {
            done, total, note, ..
        } => {
            if let Some(s) = status
                .operation
                .as_mut()
                .and_then(|o| o.steps.iter_mut().find(|s| s.state == "Running"))
                && *total > 0
            {
                s.progress = Some(((done * 100) / total).min(100) as u8);
                // What the step is waiting for, while it runs ("disk tools: ImportInProgress
                // 47.00%").
                if !note.is_empty() {
                    s.message = Some(note.clone());
                }
            }
        }
        Event::StepDone {
            duration_ms, note, ..
        } => {
            if let Some(s) = status
                .operation
                .as_mut()
                .and_then(|o| o.steps.iter_mut().find(|s| s.state == "Running"))
            {
                s.state = "Done".into();
                s.progress = Some(100);
                s.duration_ms = Some(*duration_ms);
                s.message = note.clone();
            }
        }
        Event::StepFailed { error, undone, .. } => {
            if let Some(s) = status
                .operation
                .as_mut()
                .and_then(|o| o.steps.iter_mut().find(|s| s.state == "Running"))
            {
                s.state = "Failed".into();
                s.message = Some(if *undone {
                    format!("{error} (undone)")
                } else {
                    error.clone()
                });
            }
        }
        Event::Restarting { .. } => {
            if let Some(o) = status.operation.as_mut() {
                for s in o.steps.iter_mut().filter(|s| s.mode == "restart") {
                    s.state = "Running".into();
                }
            }
        }
        Event::Restarted { duration_ms, .. } => {
            if let Some(o) = status.operation.as_mut() {
                for s in o.steps.iter_mut().filter(|s| s.mode == "restart") {
                    s.state = "Done".into();
                    s.duration_ms = Some(*duration_ms);
                }
            }
        }
        Event::RestartPending { .. } => {
            if let Some(o) = status.operation.as_mut() {
                for s in o.steps.iter_mut().filter(|s| s.mode == "restart") {
                    s.state = "Skipped".into();
                    s.message = Some("waits for a restart".into());
                }
            }
        }
        Event::Notice { .. } => {}
        Event::Finished {
            succeeded, message, ..
        } => {
            if let Some(mut o) = status.operation.take() {
                o.phase = if *succeeded { "Succeeded" } else { "Failed" }.into();
                if !*succeeded {
                    // Steps a failure kept from running (same resource, or the restart).
                    for s in o.steps.iter_mut().filter(|s| s.state == "Pending") {
                        s.state = "Skipped".into();
                    }
                    // Steps still running when the operation failed (a refused restart)
                    // failed with it.
                    for s in o.steps.iter_mut().filter(|s| s.state == "Running") {
                        s.state = "Failed".into();
                        s.message.clone_from(message);
                    }
                }
                o.finished_at = Some(jiff::Timestamp::now().to_string());
                o.message = message.clone();
                status.last_operation = Some(o);
            }
            set_condition(
                &mut status.conditions,
                "Resizing",
                false,
                "Idle",
                "no operation in flight",
                None,
            );
        }
    }
}

/// Ends an operation that `status` shows in flight although nothing runs it any more (the
/// process that ran it was killed): phase `Interrupted`, its running step too, the Resizing
/// condition off. Returns the operation's id if there was one. Whoever starts again observes
/// the VM and plans afresh; nothing of the old plan is replayed.
pub fn interrupted(status: &mut WukongStatus) -> Option<String> {
    let mut o = status.operation.take()?;
    let id = o.id.clone();
    let message =
        "interrupted: the process running it stopped; the VM was observed and planned again";
    o.phase = "Interrupted".into();
    for s in o.steps.iter_mut() {
        match s.state.as_str() {
            "Running" => {
                s.state = "Interrupted".into();
                s.message = Some(message.into());
            }
            "Pending" => s.state = "Skipped".into(),
            _ => {}
        }
    }
    o.finished_at = Some(jiff::Timestamp::now().to_string());
    o.message = Some(message.into());
    status.last_operation = Some(o);
    set_condition(
        &mut status.conditions,
        "Resizing",
        false,
        "Idle",
        "no operation in flight",
        None,
    );
    Some(id)
}

fn find_step<'a>(
    status: &'a mut WukongStatus,
    step: &Step,
    state: &str,
) -> Option<&'a mut StepStatus> {
    let d = step.action.describe();
    status
        .operation
        .as_mut()?
        .steps
        .iter_mut()
        .find(|s| s.state == state && s.description == d)
}

/// Records the outcome of an operation: pending restarts, Degraded, observed generation.
pub fn report_into(status: &mut WukongStatus, report: &OperationReport) {
    let pending: Vec<PendingChange> = report
        .pending
        .iter()
        .flat_map(|(_, steps)| steps.iter())
        .map(|s| PendingChange {
            resource: s.action.resource(),
            change: s.action.change(),
            reason: s.reason.clone(),
        })
        .collect();
    let waiting = !pending.is_empty();
    let msg = match &report.pending {
        Some((why, _)) => format!(
            "{}: {}",
            pending
                .iter()
                .map(|p| format!("{} {} ({})", p.resource, p.change, p.reason))
                .collect::<Vec<_>>()
                .join("; "),
            why
        ),
        None => "no change waits for a restart".into(),
    };
    set_condition(
        &mut status.conditions,
        "RestartRequired",
        waiting,
        if waiting {
            "ChangesPending"
        } else {
            "NothingPending"
        },
        &msg,
        Some(report.generation),
    );
    status.restart_pending = Some(waiting);
    status.pending_changes = pending;
    match (&report.message, report.succeeded) {
        (Some(m), false) => set_condition(
            &mut status.conditions,
            "Degraded",
            true,
            "OperationFailed",
            m,
            Some(report.generation),
        ),
        _ => set_condition(
            &mut status.conditions,
            "Degraded",
            false,
            "AsDesired",
            "the last operation succeeded",
            Some(report.generation),
        ),
    }
    if report.succeeded {
        status.observed_generation = Some(report.generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(state: &str) -> StepStatus {
        StepStatus {
            description: format!("a {state} step"),
            mode: "live".into(),
            state: state.into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_operation_left_in_flight_ends_as_interrupted_and_nothing_is_resizing() {
        let mut st = WukongStatus {
            operation: Some(OperationStatus {
                id: "3-2".into(),
                phase: "Running".into(),
                steps: vec![step("Done"), step("Running"), step("Pending")],
                ..Default::default()
            }),
            ..Default::default()
        };
        set_condition(
            &mut st.conditions,
            "Resizing",
            true,
            "OperationRunning",
            "operation 3-2",
            None,
        );
        assert_eq!(interrupted(&mut st).as_deref(), Some("3-2"));
        assert!(st.operation.is_none());
        let last = st.last_operation.as_ref().unwrap();
        assert_eq!(last.phase, "Interrupted");
        let states: Vec<&str> = last.steps.iter().map(|s| s.state.as_str()).collect();
        assert_eq!(states, ["Done", "Interrupted", "Skipped"]);
        assert!(last.finished_at.is_some() && last.message.is_some());
        let resizing = st
            .conditions
            .iter()
            .find(|c| c.type_ == "Resizing")
            .unwrap();
        assert_eq!(resizing.status, "False");
        // Nothing in flight: nothing to end, the last operation stays as it was.
        assert_eq!(interrupted(&mut st), None);
        assert_eq!(st.last_operation.as_ref().unwrap().phase, "Interrupted");
    }
}

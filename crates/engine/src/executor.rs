//! Carries out a plan step by step: apply through the backend, verify in the guest, record,
//! report; undo a failed step where possible; batch the restart-only steps into one restart
//! when the policy allows; re-plan when the desired state changes between steps.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use wukong_api::VmConfig;
use wukong_planner::effect::apply;
use wukong_planner::verify::verify;
use wukong_planner::{Mode, Observed, Plan, PlanError, Step, plan};

use crate::backend::{Backend, BackendError, StepProgress, VmRef};
use crate::events::{Event, EventSink, Journal};

/// The desired configuration and its generation (bumped on every accepted apply).
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// Generation of the desired spec.
    pub generation: i64,
    /// The configuration.
    pub config: VmConfig,
}

/// Why an operation could not run at all (a failed *step* is a report, not an error).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The desired state asks for something never done (disk shrink…).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The VM could not be observed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The journal could not be written: the engine stops rather than act unrecorded.
    #[error("journal: {0}")]
    Journal(String),
}

/// How one step ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    /// Carried out and verified in the guest.
    Done {
        /// Time from start to verified.
        duration: Duration,
    },
    /// Failed; `undone` says whether its effect was reverted.
    Failed {
        /// Why.
        error: String,
        /// Reverted.
        undone: bool,
    },
    /// Carried out by the restart.
    Restarted,
    /// Waits for a restart the policy does not allow now.
    Pending,
}

/// The result of one operation.
#[derive(Clone, Debug, PartialEq)]
pub struct OperationReport {
    /// Operation id.
    pub id: String,
    /// Each step carried out or left, in order.
    pub steps: Vec<(Step, StepOutcome)>,
    /// Whether the VM reached the desired state (pending restarts aside).
    pub succeeded: bool,
    /// Why it did not.
    pub message: Option<String>,
    /// The generation it converged to.
    pub generation: i64,
    /// Restart-only steps still waiting, with the reason.
    pub pending: Option<(String, Vec<Step>)>,
    /// The VM as last observed by the operation (after its last verified step), when that
    /// observation is still current.
    pub observed: Option<Observed>,
}

/// Timing knobs.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// How long the guest may take to show a step's effect after the backend reports it done.
    pub verify: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            verify: Duration::from_secs(20),
        }
    }
}

/// The engine for one backend, journal and event sink.
pub struct Engine<'a, B, J, S> {
    /// The backend.
    pub backend: &'a B,
    /// Where progress is persisted.
    pub journal: &'a J,
    /// Where progress is reported.
    pub events: &'a S,
    /// Timing knobs.
    pub timeouts: Timeouts,
}

struct ProgressEvents<'a, S> {
    events: &'a S,
    vm: &'a VmRef,
    operation: &'a str,
    index: usize,
    /// The last note, kept for the step's record.
    note: std::sync::Mutex<Option<String>>,
}

impl<S: EventSink> StepProgress for ProgressEvents<'_, S> {
    fn progress(&self, done: u64, total: u64, note: &str) {
        *self.note.lock().expect("progress note") = Some(note.to_string());
        self.events.emit(
            self.vm,
            &Event::StepProgress {
                operation: self.operation.to_string(),
                index: self.index,
                done,
                total,
                note: note.to_string(),
            },
        );
    }
}

impl<B: Backend, J: Journal, S: EventSink> Engine<'_, B, J, S> {
    fn tell(&self, vm: &VmRef, event: Event) -> Result<(), EngineError> {
        self.journal
            .record(vm, &event)
            .map_err(EngineError::Journal)?;
        self.events.emit(vm, &event);
        Ok(())
    }

    /// Plans against the VM as it is now, without changing anything.
    pub async fn preview(
        &self,
        vm: &VmRef,
        desired: &VmConfig,
        now: jiff::Timestamp,
    ) -> Result<(Observed, Plan), EngineError> {
        let observed = self.backend.observe(vm).await?;
        let caps = self.backend.capabilities(vm, &observed).await?;
        let p = plan(desired, &observed, &caps, now)?;
        Ok((observed, p))
    }

    /// Converges `vm` to the newest desired state in `desired`, re-planning whenever it
    /// changes between two steps. Each live step is verified in the guest before the next
    /// starts; a failed step is undone where possible and the later steps of its resource
    /// are not run, while the other resources' steps still are.
    pub async fn converge(
        &self,
        vm: &VmRef,
        operation: &str,
        desired: &mut watch::Receiver<Desired>,
    ) -> Result<OperationReport, EngineError> {
        let mut target = desired.borrow_and_update().clone();
        let (mut observed, mut current) = self
            .preview(vm, &target.config, jiff::Timestamp::now())
            .await?;
        let mut report = OperationReport {
            id: operation.to_string(),
            steps: Vec::new(),
            succeeded: true,
            message: None,
            generation: target.generation,
            pending: None,
            observed: None,
        };
        if current.is_empty() {
            report.observed = Some(observed);
            return Ok(report);
        }
        self.tell(
            vm,
            Event::Planned {
                operation: operation.into(),
                plan: current.clone(),
            },
        )?;
        // Resources whose step failed in this operation: their later steps depend on it and
        // do not run; the other resources' steps still do.
        let mut failed: Vec<String> = Vec::new();
        // A boot (a start step, or the restart) is followed by one more plan: what only a
        // running guest can take (formats, mounts, onlining) is planned from what it shows.
        let mut booted = false;
        'boot: loop {
            'replan: loop {
                let live: Vec<Step> = current
                    .steps
                    .iter()
                    .filter(|s| s.mode != Mode::Restart)
                    .cloned()
                    .collect();
                for step in live {
                    if desired.has_changed().unwrap_or(false) {
                        target = desired.borrow_and_update().clone();
                        (observed, current) = self
                            .preview(vm, &target.config, jiff::Timestamp::now())
                            .await?;
                        report.generation = target.generation;
                        self.replanned(vm, operation, &current)?;
                        continue 'replan;
                    }
                    let index = report.steps.len() + 1;
                    if failed.contains(&step.action.resource()) {
                        let error =
                            "not run: an earlier step of the same resource failed".to_string();
                        report.steps.push((
                            step,
                            StepOutcome::Failed {
                                error,
                                undone: false,
                            },
                        ));
                        continue;
                    }
                    self.tell(
                        vm,
                        Event::StepStarted {
                            operation: operation.into(),
                            index,
                            step: step.clone(),
                        },
                    )?;
                    crate::failpoint::hit_step("started", &step);
                    let started = Instant::now();
                    let progress = ProgressEvents {
                        events: self.events,
                        vm,
                        operation,
                        index,
                        note: std::sync::Mutex::new(None),
                    };
                    let outcome = match self
                        .backend
                        .apply_step(vm, &step, &target.config, &progress)
                        .await
                    {
                        Ok(()) => {
                            crate::failpoint::hit_step("applied", &step);
                            self.await_verified(vm, &step, &observed).await
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    match outcome {
                        Ok(after) => {
                            observed = after;
                            let duration = started.elapsed();
                            self.tell(
                                vm,
                                Event::StepDone {
                                    operation: operation.into(),
                                    index,
                                    duration_ms: duration.as_millis() as u64,
                                    note: progress.note.lock().expect("progress note").take(),
                                },
                            )?;
                            crate::failpoint::hit_step("done", &step);
                            let started_vm = matches!(step.action, wukong_planner::Action::Start);
                            report.steps.push((step, StepOutcome::Done { duration }));
                            if started_vm && !booted {
                                booted = true;
                                let (o, p) = self
                                    .preview(vm, &target.config, jiff::Timestamp::now())
                                    .await?;
                                observed = o;
                                if !p.is_empty() {
                                    current = p;
                                    self.replanned(vm, operation, &current)?;
                                    continue 'replan;
                                }
                            }
                        }
                        Err(error) => {
                            let undone = self.backend.undo_step(vm, &step).await.unwrap_or(false);
                            self.tell(
                                vm,
                                Event::StepFailed {
                                    operation: operation.into(),
                                    index,
                                    error: error.clone(),
                                    undone,
                                },
                            )?;
                            report.succeeded = false;
                            let what = format!("{}: {error}", step.action.describe());
                            report.message = Some(match report.message.take() {
                                Some(earlier) => format!("{earlier}; {what}"),
                                None => what,
                            });
                            failed.push(step.action.resource());
                            report
                                .steps
                                .push((step, StepOutcome::Failed { error, undone }));
                        }
                    }
                }
                break;
            }
            if !failed.is_empty() {
                // A restart is not taken on top of a failed live change: the next attempt
                // re-plans from what the VM then has.
                return self.finish(vm, report);
            }

            let restart_steps: Vec<Step> = current.in_mode(Mode::Restart).cloned().collect();
            if let (false, Some(decision)) = (restart_steps.is_empty(), current.restart.as_ref()) {
                if decision.allowed_now {
                    self.tell(
                        vm,
                        Event::Restarting {
                            operation: operation.into(),
                            steps: restart_steps.clone(),
                        },
                    )?;
                    crate::failpoint::hit("restart.started");
                    let started = Instant::now();
                    match self
                        .backend
                        .restart(vm, &target.config, &restart_steps)
                        .await
                    {
                        Ok(()) => {
                            self.tell(
                                vm,
                                Event::Restarted {
                                    operation: operation.into(),
                                    duration_ms: started.elapsed().as_millis() as u64,
                                },
                            )?;
                            crate::failpoint::hit("restart.done");
                            let (after, left) = self
                                .preview(vm, &target.config, jiff::Timestamp::now())
                                .await?;
                            report.steps.extend(
                                restart_steps
                                    .into_iter()
                                    .map(|s| (s, StepOutcome::Restarted)),
                            );
                            observed = after;
                            let live_only = left.in_mode(Mode::Restart).next().is_none();
                            if !left.is_empty() && live_only && !booted {
                                // What the restarted guest takes live (mounts, formats).
                                booted = true;
                                current = left;
                                self.replanned(vm, operation, &current)?;
                                continue 'boot;
                            }
                            if !left.is_empty() {
                                report.succeeded = false;
                                report.message = Some(format!(
                                    "after the restart the VM still differs: {}",
                                    left.steps
                                        .iter()
                                        .map(|s| s.action.describe())
                                        .collect::<Vec<_>>()
                                        .join("; ")
                                ));
                            }
                        }
                        Err(e) => {
                            report.succeeded = false;
                            report.message = Some(format!("restart failed: {e}"));
                            // The changes still wait for a restart; the retry tries it again.
                            report.pending = Some((
                                format!("the restart failed ({e}); it is retried"),
                                restart_steps.clone(),
                            ));
                            report.steps.extend(restart_steps.into_iter().map(|s| {
                                (
                                    s,
                                    StepOutcome::Failed {
                                        error: e.to_string(),
                                        undone: false,
                                    },
                                )
                            }));
                        }
                    }
                } else {
                    self.tell(
                        vm,
                        Event::RestartPending {
                            operation: operation.into(),
                            reason: decision.reason.clone(),
                            steps: restart_steps.clone(),
                        },
                    )?;
                    report.pending = Some((decision.reason.clone(), restart_steps.clone()));
                    report
                        .steps
                        .extend(restart_steps.into_iter().map(|s| (s, StepOutcome::Pending)));
                }
            }
            break 'boot;
        }
        if report.succeeded {
            report.observed = Some(observed);
        }
        self.finish(vm, report)
    }

    /// Tells that the operation goes on with `plan` (a new spec, or a boot to plan after).
    fn replanned(&self, vm: &VmRef, operation: &str, plan: &Plan) -> Result<(), EngineError> {
        self.tell(
            vm,
            Event::Replanned {
                operation: operation.into(),
                plan: plan.clone(),
            },
        )
    }

    fn finish(&self, vm: &VmRef, report: OperationReport) -> Result<OperationReport, EngineError> {
        self.tell(
            vm,
            Event::Finished {
                operation: report.id.clone(),
                succeeded: report.succeeded,
                message: report.message.clone(),
                generation: report.generation,
            },
        )?;
        Ok(report)
    }

    /// Observes until the guest shows the step's effect, or the verify timeout passes.
    /// Offline steps (VM stopped) are checked against the VM's definition instead.
    async fn await_verified(
        &self,
        vm: &VmRef,
        step: &Step,
        before: &Observed,
    ) -> Result<Observed, String> {
        let deadline = Instant::now() + self.timeouts.verify;
        let mut expected = before.clone();
        apply(&mut expected, &step.action);
        let mut pause = Duration::from_millis(10);
        loop {
            let after = match self.backend.observe(vm).await {
                Ok(a) => a,
                // Still on its way: the same as a guest that has not caught up yet.
                Err(BackendError::Settling(why)) if Instant::now() < deadline => {
                    let _ = why;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                    continue;
                }
                Err(e) => return Err(e.to_string()),
            };
            let check = match step.mode {
                Mode::Offline => same_definition(&expected.config, &after.config),
                _ => match (&before.guest, &after.guest, &step.action) {
                    (_, _, wukong_planner::Action::Start | wukong_planner::Action::Stop) => {
                        if after.running == expected.running {
                            Ok(())
                        } else {
                            Err(format!("the VM is not {}", if expected.running { "running" } else { "stopped" }))
                        }
                    }
                    (Some(b), Some(a), action) => verify(action, b, a),
                    _ => Err("the guest agent does not answer: the change cannot be verified in the guest".into()),
                },
            };
            match check {
                Ok(()) => return Ok(after),
                Err(why) if Instant::now() >= deadline => {
                    return Err(format!(
                        "not verified within {:?}: {why}",
                        self.timeouts.verify
                    ));
                }
                Err(_) => {
                    // Wait for the guest to catch up: poll the condition, never a fixed sleep
                    // that the result depends on.
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
            }
        }
    }
}

/// Whether two definitions agree, disk and NIC order aside.
fn same_definition(expected: &VmConfig, actual: &VmConfig) -> Result<(), String> {
    let sorted = |c: &VmConfig| {
        let mut c = c.clone();
        c.disks.sort_by(|a, b| a.name.cmp(&b.name));
        c.networks.sort_by(|a, b| a.name.cmp(&b.name));
        c
    };
    if sorted(expected) == sorted(actual) {
        Ok(())
    } else {
        Err("the VM's definition does not show the change".into())
    }
}

//! What the engine tells the world while it works: progress events (for the CLI's progress
//! bars and the API's watch) and journal records (persisted, for crash recovery).

use serde::{Deserialize, Serialize};
use wukong_planner::{Plan, Step};

use crate::backend::VmRef;

/// One event of an operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Event {
    /// An operation starts with this plan.
    Planned {
        /// Operation id.
        operation: String,
        /// The plan.
        plan: Plan,
    },
    /// The desired state changed mid-operation; the rest was planned again.
    Replanned {
        /// Operation id.
        operation: String,
        /// The new plan for what remains.
        plan: Plan,
    },
    /// A step starts.
    StepStarted {
        /// Operation id.
        operation: String,
        /// Step number in the operation, from 1.
        index: usize,
        /// The step.
        step: Step,
    },
    /// A step made progress.
    StepProgress {
        /// Operation id.
        operation: String,
        /// Step number.
        index: usize,
        /// Units done.
        done: u64,
        /// Units in all.
        total: u64,
        /// Note.
        note: String,
    },
    /// A step was carried out and verified in the guest.
    StepDone {
        /// Operation id.
        operation: String,
        /// Step number.
        index: usize,
        /// Time from start to guest-verified.
        duration_ms: u64,
        /// How it went, when the backend said (e.g. "onlined through the agent").
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// A step failed (and was undone where possible).
    StepFailed {
        /// Operation id.
        operation: String,
        /// Step number.
        index: usize,
        /// Why.
        error: String,
        /// Whether its effect was undone.
        undone: bool,
    },
    /// One restart starts, carrying these restart-only steps.
    Restarting {
        /// Operation id.
        operation: String,
        /// The steps the restart applies.
        steps: Vec<Step>,
    },
    /// The restart is done and the guest is back.
    Restarted {
        /// Operation id.
        operation: String,
        /// Time from stop to guest ready.
        duration_ms: u64,
    },
    /// Restart-only changes wait (policy), listed.
    RestartPending {
        /// Operation id.
        operation: String,
        /// Why they wait.
        reason: String,
        /// The waiting steps.
        steps: Vec<Step>,
    },
    /// Something happened to the VM outside an operation (created, started, QEMU died…).
    Notice {
        /// What happened.
        message: String,
        /// Whether it is a problem.
        warning: bool,
    },
    /// The operation ended.
    Finished {
        /// Operation id.
        operation: String,
        /// Whether it reached its goal (pending restarts aside).
        succeeded: bool,
        /// Why not.
        message: Option<String>,
        /// The generation the operation worked towards last (a new spec re-plans a running
        /// operation): who waits for a generation waits for its operation.
        #[serde(default)]
        generation: i64,
    },
}

/// Receives events. Must not block.
pub trait EventSink: Send + Sync {
    /// One event about `vm`.
    fn emit(&self, vm: &VmRef, event: &Event);
}

/// Persists an operation's progress so that a restarted daemon knows what was in flight.
/// After a crash the engine does not replay the journal: it observes the VM and plans again;
/// the journal says which step was running and is kept as history.
pub trait Journal: Send + Sync {
    /// Records an event durably before the engine goes on.
    fn record(&self, vm: &VmRef, event: &Event) -> Result<(), String>;
}

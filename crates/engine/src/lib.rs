//! The engine: the backend contract and the executor that takes a VM from what it has to what
//! it should have, step by step, verified in the guest, journaled and reported.
//!
//! desired + observed → plan (wukong-planner, pure) → execute each step through a [`Backend`]
//! → verify in the guest → report ([`Event`]s, [`OperationReport`]).
#![forbid(unsafe_code)]

pub mod backend;
pub mod events;
pub mod executor;
pub mod failpoint;
pub mod status;

pub use backend::{Backend, BackendError, StepProgress, VmRef};
pub use events::{Event, EventSink, Journal};
pub use executor::{Desired, Engine, EngineError, OperationReport, StepOutcome, Timeouts};

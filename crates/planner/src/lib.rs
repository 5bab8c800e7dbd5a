//! The planner: desired configuration + observed VM + backend capabilities → a plan of typed
//! steps, each live or restart-required with its reason; and what "verified in the guest"
//! means for each step. Pure: no IO, no clock (the caller passes `now`).
#![forbid(unsafe_code)]

pub mod capabilities;
pub mod document;
pub mod effect;
pub mod observed;
pub mod plan;
pub mod verify;
pub mod window;

pub use capabilities::{Capabilities, CpuRemoval, QemuVersion, Support};
pub use document::PlanDocument;
pub use observed::{GuestDiskView, GuestView, Observed};
pub use plan::{Action, Mode, Plan, PlanError, Step, plan};
pub use window::RestartDecision;

//! The Wukong API: the `Wukong` resource, its quantities, its validation, its defaults and its
//! CRD. Pure: no sockets, no processes, no files.
#![forbid(unsafe_code)]

pub mod autoscaling;
pub mod config;
pub mod crd;
pub mod document;
pub mod merge;
pub mod quantity;
pub mod sources;
pub mod types;
pub mod validate;

pub use config::{DiskConfig, HostLimits, NicConfig, Pinned, VmConfig, resolve, resolve_new};
pub use quantity::Quantity;
pub use types::*;
pub use validate::{ErrorKind, FieldError, FieldErrors};

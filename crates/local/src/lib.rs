//! The local backend: VMs on this host, run by QEMU (QMP + guest agent), described by
//! `Wukong` objects kept in an embedded database, served by `wukong serve`.
#![forbid(unsafe_code)]

pub mod admission;
pub mod api;
pub mod autoscale;
pub mod backend;
pub mod boot;
pub mod client;
pub mod daemon;
pub mod image;
pub mod machine;
pub mod metrics;
pub mod paths;
pub mod paused;
pub mod process;
pub mod qga;
pub mod qmp;
pub mod serve;
pub mod store;
pub mod trusted;

pub use backend::{LocalBackend, LocalOptions, LocalTimeouts};
pub use paths::Home;
pub use store::{Store, VmRecord};

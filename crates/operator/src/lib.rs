//! The Wukong operator for KubeVirt clusters: `Wukong` objects become KubeVirt
//! `VirtualMachine`s and PVCs, every change goes through KubeVirt's live-update machinery and
//! is finished in the guest (filesystem growth through the guest agent) and verified there.
//!
//! - [`controller`]: the kube-rs `Controller`, finalizer, status and Events.
//! - [`backend`]: the engine's backend over the cluster API.
//! - [`guest`]: guest agent commands through the launcher's `compute` container.
//! - [`metrics`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`writes`]: strict field validation on every object the operator writes.
#![forbid(unsafe_code)]

pub mod autoscale;
pub mod backend;
pub mod controller;
pub mod guest;
pub mod metrics;
pub mod writes;

pub use controller::{DELETE_DISKS, FINALIZER, Options, desired_config, run, run_with};

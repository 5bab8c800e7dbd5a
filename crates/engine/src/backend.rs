//! The contract every backend (local QEMU, KubeVirt) implements: observe the VM as the guest
//! sees it, report what it can do live, carry out one plan step, verify it, restart.

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wukong_api::{BackendKind, VmConfig};
use wukong_planner::{Capabilities, Observed, Step};

/// Which VM: namespace and name (the local backend uses namespace `default` unless told).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VmRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl VmRef {
    /// `namespace/name`.
    pub fn new(namespace: &str, name: &str) -> Self {
        VmRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for VmRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why a backend call failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The VM does not exist on this backend.
    #[error("VM {0} not found")]
    NotFound(String),
    /// The VM, its monitor or its guest agent cannot be reached.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The platform is still bringing the VM to the state it was last asked for (a cluster
    /// starting it): nothing to plan yet; try again when it reports progress.
    #[error("settling: {0}")]
    Settling(String),
    /// A wait ran past its deadline.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: Duration,
    },
    /// The hypervisor, platform or guest refused or failed the operation.
    #[error("{0}")]
    Failed(String),
    /// The step is not something this backend does.
    #[error("not supported by the {backend} backend: {what}")]
    Unsupported {
        /// Backend.
        backend: BackendKind,
        /// What.
        what: String,
    },
}

/// Progress of one step, reported while it runs (e.g. memory plugged so far).
pub trait StepProgress: Send + Sync {
    /// `done` out of `total` units (bytes, vCPUs…), with a short note.
    fn progress(&self, done: u64, total: u64, note: &str);
}

/// One backend. Every method is bounded in time: a hung monitor or guest agent ends in
/// [`BackendError::Timeout`], never in a hung caller.
pub trait Backend: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// The VM as it is now: configuration in effect, whether it runs, and the guest's view
    /// (when the guest agent answers).
    fn observe(&self, vm: &VmRef) -> impl Future<Output = Result<Observed, BackendError>> + Send;

    /// What can be done live on this VM now (QEMU version, free ports, cluster features…).
    fn capabilities(
        &self,
        vm: &VmRef,
        observed: &Observed,
    ) -> impl Future<Output = Result<Capabilities, BackendError>> + Send;

    /// Carries out one live (or offline) step and waits until the platform reports it done.
    /// `desired` is the whole target configuration, for steps that need more than their own
    /// fields (e.g. a disk's filesystem settings).
    fn apply_step(
        &self,
        vm: &VmRef,
        step: &Step,
        desired: &VmConfig,
        progress: &dyn StepProgress,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Undoes a step that failed or failed verification, where possible (detach what was
    /// attached, remove the NIC that was added). Returns whether anything was undone.
    fn undo_step(
        &self,
        vm: &VmRef,
        step: &Step,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send {
        let _ = (vm, step);
        async { Ok(false) }
    }

    /// Applies the restart-only steps with one clean restart into `desired`, and waits until
    /// the guest is back.
    fn restart(
        &self,
        vm: &VmRef,
        desired: &VmConfig,
        steps: &[Step],
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
}

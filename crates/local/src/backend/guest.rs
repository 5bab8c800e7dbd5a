//! The guest agent of one VM, locked for a run of guest-side operations, and the guest's view
//! as the guest-operations layer probes it.

use super::*;

/// How long a long guest command (format, filesystem growth) may take.
const LONG_GUEST_COMMAND: Duration = Duration::from_secs(120);

/// The guest agent of one VM, held for a run of guest-side operations.
pub(super) struct GuestSession {
    qga: Qga,
    timeout: Duration,
    _lock: tokio::sync::OwnedMutexGuard<()>,
}

impl GuestSession {
    pub(super) fn ops(&self) -> Guest<'_, Qga> {
        Guest::new(&self.qga, self.timeout, LONG_GUEST_COMMAND)
    }
}

impl LocalBackend {
    /// The VM's guest agent for the guest-side operations, held by one caller at a time.
    pub(super) async fn guest(&self, vm: &VmRef) -> Result<GuestSession, BackendError> {
        let lock = self.agent_lock(vm).lock_owned().await;
        let qga = Qga::connect(&VmFiles::qga(&self.dir(vm)), self.options.timeouts.agent).await?;
        Ok(GuestSession {
            qga,
            timeout: self.options.timeouts.agent,
            _lock: lock,
        })
    }

    /// The guest's view, or `None` when its agent does not answer in time.
    pub async fn guest_view(&self, vm: &VmRef) -> Option<GuestView> {
        async { self.guest(vm).await?.ops().view().await }
            .await
            .ok()
    }

    /// The autoscaler's reading of the guest, taken at `at` seconds on the caller's clock.
    pub async fn metrics(
        &self,
        vm: &VmRef,
        at: f64,
    ) -> Result<wukong_autoscaler::Sample, BackendError> {
        self.guest(vm).await?.ops().metrics(at).await
    }
}

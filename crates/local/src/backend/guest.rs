//! The guest agent of one VM, locked for a run of guest-side operations, and the guest's view
//! as the guest-operations layer probes it.

use super::*;

/// How long a long guest command (format, filesystem growth) may take.
const LONG_GUEST_COMMAND: Duration = Duration::from_secs(120);

/// How long a kept agent connection may take to answer a ping before a new one is opened.
const PING: Duration = Duration::from_secs(2);

/// The open agent connection of one VM, kept between callers: opening one costs 70-100 ms
/// in a TCG guest (the agent's channel reopens), a ping on a kept one a few ms.
pub(super) struct Kept {
    /// The QEMU process it belongs to: a restarted VM gets a new connection.
    pid: i32,
    qga: Qga,
}

/// The guest agent of one VM, held for a run of guest-side operations. Dropped, it leaves
/// its connection for the next caller.
pub(super) struct GuestSession {
    kept: Option<Kept>,
    timeout: Duration,
    slot: tokio::sync::OwnedMutexGuard<Option<Kept>>,
}

impl GuestSession {
    pub(super) fn ops(&self) -> Guest<'_, Qga> {
        Guest::new(self.qga(), self.timeout, LONG_GUEST_COMMAND)
    }

    pub(super) fn qga(&self) -> &Qga {
        &self
            .kept
            .as_ref()
            .expect("a session holds its connection")
            .qga
    }
}

impl Kept {
    pub(super) fn new(pid: i32, qga: Qga) -> Kept {
        Kept { pid, qga }
    }
}

impl Drop for GuestSession {
    fn drop(&mut self) {
        *self.slot = self.kept.take();
    }
}

impl LocalBackend {
    /// The VM's guest agent for the guest-side operations, held by one caller at a time: the
    /// kept connection when it still belongs to this QEMU, nothing went wrong on it and the
    /// agent answers a ping on it, else a new one.
    pub(super) async fn guest(&self, vm: &VmRef) -> Result<GuestSession, BackendError> {
        let dir = self.dir(vm);
        let mut slot = self.agent_slot(vm).lock_owned().await;
        let pid = process::running_pid(&dir)
            .ok_or_else(|| BackendError::Unreachable(format!("VM {vm} is not running")))?
            .as_raw();
        let kept = match slot.take() {
            Some(k)
                if k.pid == pid && k.qga.reusable(PING.min(self.options.timeouts.agent)).await =>
            {
                k
            }
            _ => Kept::new(
                pid,
                Qga::connect(&VmFiles::qga(&dir), self.options.timeouts.agent).await?,
            ),
        };
        Ok(GuestSession {
            kept: Some(kept),
            timeout: self.options.timeouts.agent,
            slot,
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

//! Memory: the virtio-mem device's `requested-size`, followed until the guest has plugged
//! (or unplugged) it; blocks the guest leaves offline are onlined as movable through the
//! guest-operations layer.

use super::*;

impl LocalBackend {
    pub(super) async fn resize_memory(
        &self,
        vm: &VmRef,
        to: u64,
        progress: &dyn StepProgress,
    ) -> Result<(), BackendError> {
        let rec = self.record(vm)?;
        let requested = to
            .checked_sub(rec.boot_memory)
            .ok_or_else(|| failed("memory below the boot size cannot be removed live"))?;
        let qmp = self.qmp(vm).await?;
        let path = format!("/machine/peripheral/{VMEM_ID}");
        let current = vmem_bytes(&qmp, &path, "size").await?;
        if current == requested {
            return Ok(());
        }
        let mut how = "memory (un)plugged by the guest";
        if requested > current {
            // New blocks must come online while they are plugged: virtio-mem stops plugging
            // once about 1 GiB sits offline.
            let by = self.guest(vm).await?.ops().auto_online_memory().await?;
            if by == wukong_guest::Onlined::ByAgent {
                how = "memory plugged, onlined through the agent (the guest's auto-online was off)";
            }
            progress.progress(0, requested - current, by.describe());
        }
        let mut events = qmp.subscribe();
        qmp.qom_set(&path, "requested-size", json!(requested))
            .await?;
        failpoint::hit("memory.requested");
        let from = current;
        let total = from.abs_diff(requested);
        // QEMU rate-limits the size-change event (one a second): it feeds progress, while the
        // device's size is polled for completion.
        // The deadline is checked between QMP commands, never by cancelling one in flight (the
        // monitor client does not survive a command dropped mid-way).
        let deadline = tokio::time::Instant::now() + self.options.timeouts.memory;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(qmp::Event::MEMORY_DEVICE_SIZE_CHANGE { data, .. }) => {
                        progress.progress(from.abs_diff(data.size), total, how);
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(BackendError::Unreachable("QMP closed".into()));
                    }
                },
                _ = tick.tick() => {
                    let size = vmem_bytes(&qmp, &path, "size").await?;
                    if size == requested {
                        progress.progress(total, total, how);
                        return Ok(());
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(failed(format!(
                            "the guest did not take the memory: requested {} MiB of hot-plug memory, plugged {} MiB after {:?} (is virtio_mem loaded and memory onlined?)",
                            requested >> 20,
                            size >> 20,
                            self.options.timeouts.memory
                        )));
                    }
                }
            }
        }
    }
}

/// The virtio-mem device's plugged size once it matches what was requested: a resize in
/// flight (e.g. one a crashed daemon started) would make the guest's view and QEMU's disagree.
/// Waits at most 5 s (a guest that refuses memory never settles).
pub(super) async fn settled_memory(qmp: &Qmp) -> Result<u64, BackendError> {
    let path = format!("/machine/peripheral/{VMEM_ID}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let size = vmem_bytes(qmp, &path, "size").await?;
        let requested = vmem_bytes(qmp, &path, "requested-size").await?;
        if size == requested || tokio::time::Instant::now() >= deadline {
            return Ok(size);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A byte count of the virtio-mem device. A reply that is not one is an error, never read as
/// 0 (that would make a plugged device look empty).
async fn vmem_bytes(qmp: &Qmp, path: &str, property: &str) -> Result<u64, BackendError> {
    let v = qmp.qom_get(path, property).await?;
    v.as_u64().ok_or_else(|| {
        failed(format!(
            "QEMU answered {v} for {path} {property}, not a byte count"
        ))
    })
}

//! A VM that QEMU paused because a disk write failed on the host: every disk runs with
//! `werror=enospc`, so a write the host's filesystem has no room for stops the guest (QEMU
//! sends `BLOCK_IO_ERROR` and its run state becomes `io-error`) instead of failing inside it.
//! Here: whether a VM is so paused and on which disks, the room left where its images live,
//! and the `cont` that lets QEMU retry the write.

use qapi::qmp;
use wukong_engine::{BackendError, VmRef};

use super::{LocalBackend, failed};

/// Why QEMU holds a VM paused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoPause {
    /// The disks whose writes failed, each with QEMU's word for it (`nospace`, `failed`).
    pub disks: Vec<(String, String)>,
}

impl IoPause {
    /// Whether every failed write failed for lack of space (then freeing space is the cure).
    pub fn no_space(&self) -> bool {
        !self.disks.is_empty() && self.disks.iter().all(|(_, why)| why == "nospace")
    }
}

/// Bytes free for an unprivileged writer on the filesystem holding `path`.
pub fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    (s.blocks_available() as u64).checked_mul(s.fragment_size() as u64)
}

/// The disk name behind a device id (`disk-NAME`, or a QOM path ending in it).
fn disk_of(qdev: &str) -> Option<String> {
    let id = qdev.rsplit('/').find(|s| s.starts_with("disk-"))?;
    id.strip_prefix("disk-").map(str::to_string)
}

impl LocalBackend {
    /// `Some` when QEMU runs the VM but holds it paused after a failed disk write.
    pub async fn io_pause(&self, vm: &VmRef) -> Result<Option<IoPause>, BackendError> {
        let qmp = self.qmp(vm).await?;
        let state = qmp.run(qmp::query_status {}).await?;
        if state.status != qmp::RunState::io_error {
            return Ok(None);
        }
        let blocks = qmp.run(qmp::query_block {}).await?;
        let disks = blocks
            .iter()
            .filter_map(|b| {
                let why = match b.io_status {
                    Some(qmp::BlockDeviceIoStatus::nospace) => "nospace",
                    Some(qmp::BlockDeviceIoStatus::failed) => "failed",
                    _ => return None,
                };
                let name = b.qdev.as_deref().and_then(disk_of)?;
                Some((name, why.to_string()))
            })
            .collect();
        Ok(Some(IoPause { disks }))
    }

    /// Bytes free on the filesystem that holds the VM's disk images.
    pub fn host_free(&self, vm: &VmRef) -> Option<u64> {
        free_bytes(&self.dir(vm))
    }

    /// Lets a VM paused on a failed write run again: QEMU retries the write first (and pauses
    /// again if it fails again).
    pub async fn resume_after_io_error(&self, vm: &VmRef) -> Result<(), BackendError> {
        let qmp = self.qmp(vm).await?;
        qmp.run(qmp::cont {}).await.map_err(failed)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_and_qom_paths_name_their_disk() {
        assert_eq!(disk_of("disk-data").as_deref(), Some("data"));
        assert_eq!(
            disk_of("/machine/peripheral/disk-data/virtio-backend").as_deref(),
            Some("data")
        );
        assert_eq!(disk_of("/machine/unattached/device[3]"), None);
        assert_eq!(disk_of(""), None);
    }

    #[test]
    fn only_writes_that_all_lacked_space_count_as_no_space() {
        let p = |w: &[&str]| IoPause {
            disks: w.iter().map(|s| ("d".to_string(), s.to_string())).collect(),
        };
        assert!(p(&["nospace", "nospace"]).no_space());
        assert!(!p(&["nospace", "failed"]).no_space());
        assert!(!p(&[]).no_space());
    }

    #[test]
    fn the_filesystem_of_a_directory_has_a_free_figure() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).is_some());
        assert_eq!(free_bytes(&dir.path().join("missing")), None);
    }
}

//! What a VM has now: the platform's view (configuration) and the guest's own view.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wukong_api::VmConfig;

/// The VM as it is: what the planner plans from and the verifier checks against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Observed {
    /// The configuration the VM has now (CPU = vCPUs in use, memory = plugged memory, disks
    /// and NICs as attached).
    pub config: VmConfig,
    /// Whether the VM runs.
    pub running: bool,
    /// The platform starts the VM by itself and has not yet (KubeVirt with a run strategy that
    /// runs it, its disks still binding or importing): no start step is needed, changes go to
    /// its definition, and the start uses them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub starting: bool,
    /// Memory the VM booted with: the floor of a live shrink.
    pub boot_memory: u64,
    /// The guest's own report, when its agent answers.
    pub guest: Option<GuestView>,
}

impl Observed {
    /// A running VM whose guest reports exactly its configuration (for plans against a
    /// described VM, and for tests).
    pub fn running(config: VmConfig) -> Self {
        let guest = GuestView::matching(&config);
        Observed {
            boot_memory: config.memory,
            running: true,
            starting: false,
            guest: Some(guest),
            config,
        }
    }
}

/// The VM as its guest sees it (through the guest agent).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestView {
    /// vCPUs online.
    pub cpus_online: u32,
    /// MemTotal, bytes.
    pub memory_total: u64,
    /// Block devices by disk name (serial).
    pub disks: BTreeMap<String, GuestDiskView>,
    /// MAC addresses of the guest's interfaces.
    pub macs: Vec<String>,
    /// The guest's boot id.
    pub boot_id: Option<String>,
    /// Memory plugged into the guest that it left offline (blocks Linux has not onlined),
    /// bytes. Zero when the guest onlines what it gets.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub memory_offline: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// One disk in the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestDiskView {
    /// Block device size, bytes.
    pub size: u64,
    /// Size of the filesystem on it (or on its last partition), when mounted.
    pub filesystem_size: Option<u64>,
    /// Whether the filesystem sits in a partition (then the partition is grown first).
    pub partitioned: bool,
    /// Device name in the guest (`vdb`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The last partition's device name (`vdb1`), when partitioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Where its filesystem is mounted, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// The mounted filesystem's type (`ext4`, `xfs`…), when mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_type: Option<String>,
    /// Bytes of the disk before the partition that holds the filesystem: the filesystem can
    /// fill at most `size - offset`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    /// The logical volume (device-mapper name) between the disk and the filesystem, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// Why the filesystem on this disk cannot be grown in the guest (a partition that is
    /// not the last one, two candidate logical volumes, a filesystem type that cannot grow
    /// online). The disk itself still grows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grow_blocked: Option<String>,
}

impl GuestDiskView {
    /// Whether the filesystem fills what the disk offers it (its size past the offset).
    pub fn filesystem_fills(&self, disk_size: u64) -> bool {
        self.filesystem_size
            .is_some_and(|fs| filesystem_fills(fs, disk_size.saturating_sub(self.offset)))
    }
}

impl GuestView {
    /// The view of a guest that has exactly `config` (filesystems filling their disks).
    pub fn matching(config: &VmConfig) -> Self {
        GuestView {
            cpus_online: config.cpu,
            memory_total: config.memory,
            disks: config
                .disks
                .iter()
                .map(|d| {
                    (
                        d.name.clone(),
                        GuestDiskView {
                            size: d.size,
                            filesystem_size: d.filesystem.as_ref().map(|_| d.size),
                            mount: d.filesystem.as_ref().map(|f| f.mount_path.clone()),
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            macs: config.networks.iter().map(|n| n.mac.clone()).collect(),
            boot_id: None,
            memory_offline: 0,
        }
    }
}

/// A filesystem fills its disk when it has at least this share of it (per mille).
pub const FILESYSTEM_FILL_PERMILLE: u64 = 950;

/// Whether a filesystem of `fs` bytes fills a disk of `disk` bytes.
pub fn filesystem_fills(fs: u64, disk: u64) -> bool {
    u128::from(fs) * 1000 >= u128::from(disk) * u128::from(FILESYSTEM_FILL_PERMILLE)
}

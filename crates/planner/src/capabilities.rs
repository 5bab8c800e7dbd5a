//! What a backend can do live on a given VM. The planner reads nothing else about the backend.

use serde::{Deserialize, Serialize};
use wukong_api::quantity::GIB;
use wukong_api::{BackendKind, NetworkSource};

/// Whether a kind of change can be made live, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Support {
    /// The change is made while the VM runs.
    Live,
    /// The change needs a restart, for this reason.
    Restart(String),
}

impl Support {
    /// `Restart(reason)`.
    pub fn restart(reason: impl Into<String>) -> Self {
        Support::Restart(reason.into())
    }
    /// Whether it is live.
    pub fn is_live(&self) -> bool {
        matches!(self, Support::Live)
    }
}

/// How vCPUs are taken away live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CpuRemoval {
    /// The vCPU is unplugged from the VM (QEMU 10.x; KubeVirt refuses it).
    Unplug,
    /// The vCPU is taken offline in the guest and stays plugged (safe everywhere).
    GuestOffline,
}

/// The live capabilities of one backend for one VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// The backend these describe.
    pub backend: BackendKind,
    /// Adding vCPUs (up to maxCpu).
    pub cpu_add: Support,
    /// How many more vCPUs can be brought online live, when limited (e.g. QEMU under TCG uses
    /// up one `maxcpus` slot per vCPU ever created).
    pub cpu_add_budget: Option<u32>,
    /// Removing vCPUs: how, or why it needs a restart.
    pub cpu_remove: Result<CpuRemoval, String>,
    /// Growing memory (up to maxMemory).
    pub memory_grow: Support,
    /// Shrinking memory (down to the boot size).
    pub memory_shrink: Support,
    /// Memory hotplug exists only if the VM booted with at least this much (KubeVirt: 1Gi).
    pub memory_hotplug_min_boot: Option<u64>,
    /// Growing a disk image / volume.
    pub disk_grow: Support,
    /// Disks whose volume cannot grow live, with the reason (e.g. StorageClass without
    /// expansion).
    pub disk_grow_blocked: Vec<(String, String)>,
    /// Growing the partition and filesystem inside the guest.
    pub filesystem_grow: Support,
    /// Attaching a hot-pluggable disk.
    pub disk_attach: Support,
    /// Detaching a hot-pluggable disk.
    pub disk_detach: Support,
    /// Free hotplug slots (PCIe root ports) shared by disk attach and NIC add, when limited.
    pub hotplug_slots: Option<u32>,
    /// Adding a NIC.
    pub nic_add: Support,
    /// Removing a NIC; `bridge_only_unplug` narrows it further.
    pub nic_remove: Support,
    /// Only NICs on a secondary (Multus) network with bridge binding can be unplugged.
    pub bridge_only_unplug: bool,
    /// Changing a NIC's source, MAC or model.
    pub nic_update: Support,
}

/// A QEMU version, as `query-version` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QemuVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
}

impl QemuVersion {
    /// The first version known to re-add a vCPU after an unplug without crashing (10.0; 7.2
    /// double-frees on the next add).
    pub const SAFE_CPU_READD: QemuVersion = QemuVersion {
        major: 10,
        minor: 0,
    };
}

impl Capabilities {
    /// The local QEMU backend. `cpu_add_budget` is what the engine knows of the VM's remaining
    /// vCPU creations; `hotplug_slots` its free root ports.
    pub fn local(
        qemu: QemuVersion,
        cpu_add_budget: Option<u32>,
        hotplug_slots: Option<u32>,
    ) -> Self {
        Capabilities {
            backend: BackendKind::Local,
            cpu_add: Support::Live,
            cpu_add_budget,
            cpu_remove: Ok(if qemu >= QemuVersion::SAFE_CPU_READD {
                CpuRemoval::Unplug
            } else {
                CpuRemoval::GuestOffline
            }),
            memory_grow: Support::Live,
            memory_shrink: Support::Live,
            memory_hotplug_min_boot: None,
            disk_grow: Support::Live,
            disk_grow_blocked: Vec::new(),
            filesystem_grow: Support::Live,
            disk_attach: Support::Live,
            disk_detach: Support::Live,
            hotplug_slots,
            nic_add: Support::Live,
            nic_remove: Support::Live,
            bridge_only_unplug: false,
            nic_update: Support::Live,
        }
    }

    /// A KubeVirt cluster with live updates and live migration available (the preflight of the
    /// kubevirt backend narrows this per cluster and VM).
    pub fn kubevirt() -> Self {
        Capabilities {
            backend: BackendKind::Kubevirt,
            cpu_add: Support::Live,
            cpu_add_budget: None,
            cpu_remove: Err("KubeVirt refuses vCPU hot-unplug since v1.3".into()),
            memory_grow: Support::Live,
            memory_shrink: Support::Live,
            memory_hotplug_min_boot: Some(GIB),
            disk_grow: Support::Live,
            disk_grow_blocked: Vec::new(),
            filesystem_grow: Support::Live,
            disk_attach: Support::Live,
            disk_detach: Support::Live,
            hotplug_slots: None,
            nic_add: Support::Live,
            nic_remove: Support::Live,
            bridge_only_unplug: true,
            nic_update: Support::restart("KubeVirt changes a NIC's MAC or model only at boot"),
        }
    }

    /// Every change by restart, for `reason` (a backend with live changes turned off). Work
    /// inside the running guest (format, mount, grow a filesystem to its disk) is no live
    /// change of the VM: it still follows the boot that made the disk.
    pub fn restart_only(backend: BackendKind, reason: &str) -> Self {
        let r = Support::restart(reason);
        Capabilities {
            backend,
            cpu_add: r.clone(),
            cpu_add_budget: None,
            cpu_remove: Err(reason.to_string()),
            memory_grow: r.clone(),
            memory_shrink: r.clone(),
            memory_hotplug_min_boot: None,
            disk_grow: r.clone(),
            disk_grow_blocked: Vec::new(),
            filesystem_grow: Support::Live,
            disk_attach: r.clone(),
            disk_detach: r.clone(),
            hotplug_slots: None,
            nic_add: r.clone(),
            nic_remove: r.clone(),
            bridge_only_unplug: false,
            nic_update: r,
        }
    }

    /// Whether the NIC on `source` can be unplugged live, and if not, why.
    pub fn nic_remove_for(&self, source: &NetworkSource) -> Support {
        if !self.nic_remove.is_live() {
            return self.nic_remove.clone();
        }
        if self.bridge_only_unplug && !matches!(source, NetworkSource::Multus(_)) {
            return Support::restart(format!(
                "only bridge-bound secondary networks can be unplugged live, not {source}"
            ));
        }
        Support::Live
    }
}

//! The fully resolved configuration of a VM: every default filled in, every quantity in bytes.
//!
//! Creation defaults are resolved once, when the VM is created ([`resolve_new`]); afterwards
//! the stored desired spec is complete and the ceilings and the boot disk are pinned in status
//! ([`Pinned`]), so later applies never recompute them.

use serde::{Deserialize, Serialize};

use crate::quantity::{GIB, MEMORY_ALIGNMENT, Quantity};
use crate::types::{
    BackendKind, DiskBus, DiskSpec, FilesystemSpec, MaintenanceWindow, NetworkSource, NetworkSpec,
    NicModel, RestartPolicy, RunStrategy, VolumeMode, WukongSpec, WukongStatus,
};
use crate::validate::{FieldError, FieldErrors, validate_for_backend, validate_spec};

/// vCPUs of a VM created without `cpu`.
pub const DEFAULT_CPU: u32 = 1;
/// Memory of a VM created without `memory`.
pub const DEFAULT_MEMORY: u64 = GIB;
/// Name of the boot disk of a VM created without `disks`.
pub const DEFAULT_DISK_NAME: &str = "system";
/// Size of that disk.
pub const DEFAULT_DISK_SIZE: u64 = 10 * GIB;
/// Name of the NIC of a VM created without `networks`.
pub const DEFAULT_NETWORK_NAME: &str = "default";
/// Headroom factor for unset ceilings: maxCpu = 4 x cpu, maxMemory = 4 x memory.
pub const HEADROOM_FACTOR: u32 = 4;

/// What the host (or cluster) allows one VM at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostLimits {
    /// Most vCPUs one VM may have.
    pub max_cpu: u32,
    /// Most memory one VM may have, in bytes.
    pub max_memory: u64,
}

impl HostLimits {
    /// No practical limit (for planning against a described VM).
    pub const UNLIMITED: HostLimits = HostLimits {
        max_cpu: 512,
        max_memory: 16 * 1024 * GIB,
    };
}

/// Values fixed at creation and kept in status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pinned {
    /// vCPU ceiling chosen at creation.
    pub max_cpu: u32,
    /// Memory ceiling chosen at creation, bytes.
    pub max_memory: u64,
    /// The boot disk.
    pub boot_disk: Option<String>,
}

impl Pinned {
    /// The pinned values recorded in a status, if all are there.
    pub fn from_status(status: &WukongStatus) -> Option<Pinned> {
        Some(Pinned {
            max_cpu: status.max_cpu?,
            max_memory: status.max_memory.as_ref()?.bytes().ok()?,
            boot_disk: status.boot_disk.clone(),
        })
    }
}

/// A disk, resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskConfig {
    /// Name (= serial).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Whether it is the boot disk.
    pub boot: bool,
    /// Whether it can be attached/detached live.
    pub hotpluggable: bool,
    /// Bus.
    pub bus: DiskBus,
    /// Filesystem created on it while blank.
    pub filesystem: Option<FilesystemSpec>,
    /// Where its content comes from at creation.
    #[serde(default)]
    pub source: Option<crate::types::DiskSource>,
    /// Snapshot the disk before growing it.
    #[serde(default)]
    pub snapshot_before_grow: bool,
    /// Cluster StorageClass.
    pub storage_class: Option<String>,
    /// Cluster volume mode.
    pub volume_mode: Option<VolumeMode>,
}

/// A NIC, resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NicConfig {
    /// Name.
    pub name: String,
    /// Where it connects.
    pub source: NetworkSource,
    /// MAC address (a stable one derived from the names when unset).
    pub mac: String,
    /// Model.
    pub model: NicModel,
}

/// A VM's configuration with nothing left open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmConfig {
    /// vCPUs.
    pub cpu: u32,
    /// Memory, bytes.
    pub memory: u64,
    /// vCPU ceiling without restart.
    pub max_cpu: u32,
    /// Memory ceiling without restart, bytes.
    pub max_memory: u64,
    /// Disks in spec order.
    pub disks: Vec<DiskConfig>,
    /// NICs in spec order.
    pub networks: Vec<NicConfig>,
    /// Whether it should run.
    pub run_strategy: RunStrategy,
    /// What to do with restart-only changes.
    pub restart_policy: RestartPolicy,
    /// When restarts may happen under `Window`.
    pub maintenance_window: Option<MaintenanceWindow>,
    /// How it boots (none: the backend's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<crate::types::BootSpec>,
    /// cloud-init NoCloud data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<crate::types::CloudInitSpec>,
    /// What the autoscaler owns and within which bounds (the config itself holds the spec's
    /// values; [`crate::autoscaling::apply_target`] makes it the effective desired state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<crate::autoscaling::AutoscalingSpec>,
}

impl VmConfig {
    /// The boot disk, if any.
    pub fn boot_disk(&self) -> Option<&DiskConfig> {
        self.disks.iter().find(|d| d.boot)
    }

    /// A disk by name.
    pub fn disk(&self, name: &str) -> Option<&DiskConfig> {
        self.disks.iter().find(|d| d.name == name)
    }

    /// A NIC by name.
    pub fn network(&self, name: &str) -> Option<&NicConfig> {
        self.networks.iter().find(|n| n.name == name)
    }

    /// The complete spec that describes this configuration (what is stored as desired after
    /// creation).
    pub fn to_spec(&self) -> WukongSpec {
        WukongSpec {
            cpu: Some(self.cpu),
            memory: Some(Quantity::from_bytes(self.memory)),
            max_cpu: Some(self.max_cpu),
            max_memory: Some(Quantity::from_bytes(self.max_memory)),
            disks: Some(
                self.disks
                    .iter()
                    .map(|d| DiskSpec {
                        name: d.name.clone(),
                        size: Quantity::from_bytes(d.size),
                        boot: d.boot.then_some(true),
                        hotpluggable: (!d.boot).then_some(d.hotpluggable),
                        bus: Some(d.bus),
                        filesystem: d.filesystem.clone(),
                        source: d.source.clone(),
                        snapshot_before_grow: d.snapshot_before_grow.then_some(true),
                        storage_class: d.storage_class.clone(),
                        volume_mode: d.volume_mode,
                    })
                    .collect(),
            ),
            networks: Some(
                self.networks
                    .iter()
                    .map(|n| NetworkSpec {
                        mac: Some(n.mac.clone()),
                        model: Some(n.model),
                        ..NetworkSpec::with_source(&n.name, &n.source)
                    })
                    .collect(),
            ),
            run_strategy: Some(self.run_strategy),
            restart_policy: Some(self.restart_policy),
            maintenance_window: self.maintenance_window.clone(),
            boot: self.boot.clone(),
            cloud_init: self.cloud_init.clone(),
            autoscaling: self.autoscaling.clone(),
        }
    }
}

/// A stable, locally administered MAC for NIC `nic` of VM `vm` (52:54:00 prefix, QEMU's).
pub fn stable_mac(vm: &str, nic: &str) -> String {
    // FNV-1a: stable across releases and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in vm.bytes().chain([0u8]).chain(nic.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[5], b[6], b[7])
}

fn default_network(backend: BackendKind) -> NetworkSpec {
    let source = match backend {
        BackendKind::Local => NetworkSource::User,
        BackendKind::Kubevirt => NetworkSource::Pod,
    };
    NetworkSpec::with_source(DEFAULT_NETWORK_NAME, &source)
}

fn round_down_aligned(bytes: u64) -> u64 {
    bytes - bytes % MEMORY_ALIGNMENT
}

/// Resolves a spec for a VM that is being created: fills the creation defaults, chooses the
/// ceilings (4x, capped by `limits`) and the boot disk, and checks everything against the
/// backend and the host.
pub fn resolve_new(
    vm: &str,
    spec: &WukongSpec,
    backend: BackendKind,
    limits: HostLimits,
) -> Result<(VmConfig, Pinned), FieldErrors> {
    validate_spec(spec)?;
    validate_for_backend(spec, backend)?;
    let mut spec = spec.clone();
    let cpu = spec.cpu.unwrap_or(DEFAULT_CPU);
    let memory = match &spec.memory {
        Some(q) => q.bytes().expect("validated"),
        None => DEFAULT_MEMORY,
    };
    let max_cpu = spec
        .max_cpu
        .unwrap_or_else(|| (cpu * HEADROOM_FACTOR).min(limits.max_cpu).max(cpu));
    let max_memory = match &spec.max_memory {
        Some(q) => q.bytes().expect("validated"),
        None => round_down_aligned(
            (memory * u64::from(HEADROOM_FACTOR))
                .min(limits.max_memory)
                .max(memory),
        ),
    };
    let mut errors = Vec::new();
    if max_cpu > limits.max_cpu {
        errors.push(FieldError::invalid(
            if spec.max_cpu.is_some() {
                "spec.maxCpu"
            } else {
                "spec.cpu"
            },
            format!(
                "{max_cpu} vCPUs exceed the host limit of {}",
                limits.max_cpu
            ),
        ));
    }
    if max_memory > limits.max_memory {
        errors.push(FieldError::invalid(
            if spec.max_memory.is_some() {
                "spec.maxMemory"
            } else {
                "spec.memory"
            },
            format!(
                "{} exceeds the host limit of {}",
                Quantity::from_bytes(max_memory),
                Quantity::from_bytes(limits.max_memory)
            ),
        ));
    }
    if cpu > max_cpu {
        errors.push(FieldError::invalid(
            "spec.cpu",
            format!("{cpu} exceeds maxCpu {max_cpu}"),
        ));
    }
    FieldErrors(errors).into_result()?;
    if spec.disks.is_none() {
        spec.disks = Some(vec![DiskSpec {
            name: DEFAULT_DISK_NAME.into(),
            size: Quantity::from_bytes(DEFAULT_DISK_SIZE),
            boot: Some(true),
            ..Default::default()
        }]);
    }
    if spec.networks.is_none() {
        spec.networks = Some(vec![default_network(backend)]);
    }
    let disks = spec.disks.as_deref().unwrap_or_default();
    let boot_disk = disks
        .iter()
        .find(|d| d.boot == Some(true))
        .or(disks.first())
        .map(|d| d.name.clone());
    let pinned = Pinned {
        max_cpu,
        max_memory,
        boot_disk,
    };
    spec.cpu = Some(cpu);
    spec.memory = Some(Quantity::from_bytes(memory));
    let config = resolve(vm, &spec, &pinned)?;
    Ok((config, pinned))
}

/// Resolves the stored desired spec of an existing VM with its pinned values. Fields absent
/// from `spec` that have no pinned value are errors: the stored spec is complete after
/// creation.
pub fn resolve(vm: &str, spec: &WukongSpec, pinned: &Pinned) -> Result<VmConfig, FieldErrors> {
    validate_spec(spec)?;
    let mut errors = Vec::new();
    let cpu = spec.cpu.unwrap_or_else(|| {
        errors.push(FieldError::invalid("spec.cpu", "missing"));
        1
    });
    let memory = match &spec.memory {
        Some(q) => q.bytes().unwrap_or(0),
        None => {
            errors.push(FieldError::invalid("spec.memory", "missing"));
            0
        }
    };
    let max_cpu = spec.max_cpu.unwrap_or(pinned.max_cpu);
    let max_memory = spec
        .max_memory
        .as_ref()
        .and_then(|q| q.bytes().ok())
        .unwrap_or(pinned.max_memory);
    if cpu > max_cpu {
        errors.push(FieldError::invalid(
            "spec.cpu",
            format!("{cpu} exceeds maxCpu {max_cpu}"),
        ));
    }
    if memory > max_memory {
        errors.push(FieldError::invalid(
            "spec.memory",
            format!(
                "{} exceeds maxMemory {}",
                Quantity::from_bytes(memory),
                Quantity::from_bytes(max_memory)
            ),
        ));
    }
    let disks: Vec<DiskConfig> = spec
        .disks
        .iter()
        .flatten()
        .map(|d| {
            let boot = pinned.boot_disk.as_deref() == Some(d.name.as_str());
            DiskConfig {
                name: d.name.clone(),
                size: d.size.bytes().unwrap_or(0),
                boot,
                hotpluggable: !boot
                    && d.bus != Some(DiskBus::Sata)
                    && d.hotpluggable.unwrap_or(true),
                bus: d.bus.unwrap_or_default(),
                filesystem: d.filesystem.clone(),
                source: d.source.clone(),
                snapshot_before_grow: d.snapshot_before_grow.unwrap_or(false),
                storage_class: d.storage_class.clone(),
                volume_mode: d.volume_mode,
            }
        })
        .collect();
    for (i, d) in spec.disks.iter().flatten().enumerate() {
        if d.boot == Some(true) && pinned.boot_disk.as_deref() != Some(d.name.as_str()) {
            errors.push(FieldError::not_allowed(
                format!("spec.disks[{i}].boot"),
                format!(
                    "the boot disk is fixed at creation ({}) and cannot change",
                    pinned.boot_disk.as_deref().unwrap_or("none")
                ),
            ));
        }
    }
    if let Some(a) = &spec.autoscaling {
        if let Some(c) = a.cpu.as_ref().filter(|c| c.max > max_cpu) {
            errors.push(FieldError::invalid(
                "spec.autoscaling.cpu.max",
                format!("{} exceeds maxCpu {max_cpu}", c.max),
            ));
        }
        if let Some(m) = a
            .memory
            .as_ref()
            .filter(|m| m.max.bytes().is_ok_and(|b| b > max_memory))
        {
            errors.push(FieldError::invalid(
                "spec.autoscaling.memory.max",
                format!(
                    "{} exceeds maxMemory {}",
                    m.max,
                    Quantity::from_bytes(max_memory)
                ),
            ));
        }
    }
    let networks = spec
        .networks
        .iter()
        .flatten()
        .map(|n| NicConfig {
            name: n.name.clone(),
            source: n.source().unwrap_or(NetworkSource::User),
            mac: n.mac.clone().unwrap_or_else(|| stable_mac(vm, &n.name)),
            model: n.model.unwrap_or_default(),
        })
        .collect();
    FieldErrors(errors).into_result()?;
    Ok(VmConfig {
        cpu,
        memory,
        max_cpu,
        max_memory,
        disks,
        networks,
        run_strategy: spec.run_strategy.unwrap_or_default(),
        restart_policy: spec.restart_policy.unwrap_or_default(),
        maintenance_window: spec.maintenance_window.clone(),
        // An empty `boot: {}` says nothing: the backend's default, as no `boot` at all.
        boot: spec
            .boot
            .clone()
            .filter(|b| b.firmware.is_some() || b.kernel.is_some()),
        cloud_init: spec.cloud_init.clone(),
        autoscaling: spec.autoscaling.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: HostLimits = HostLimits {
        max_cpu: 8,
        max_memory: 16 * GIB,
    };

    #[test]
    fn creation_defaults_and_headroom() {
        let (cfg, pinned) =
            resolve_new("vm", &WukongSpec::default(), BackendKind::Local, HOST).unwrap();
        assert_eq!((cfg.cpu, cfg.memory), (DEFAULT_CPU, DEFAULT_MEMORY));
        assert_eq!((cfg.max_cpu, cfg.max_memory), (4, 4 * GIB));
        assert_eq!(pinned.boot_disk.as_deref(), Some(DEFAULT_DISK_NAME));
        assert_eq!(cfg.disks[0].size, DEFAULT_DISK_SIZE);
        assert!(cfg.disks[0].boot && !cfg.disks[0].hotpluggable);
        assert_eq!(cfg.networks[0].source, NetworkSource::User);
        assert_eq!(cfg.networks[0].mac, stable_mac("vm", "default"));
    }

    #[test]
    fn headroom_is_capped_by_the_host() {
        let spec = WukongSpec {
            cpu: Some(4),
            memory: Some("8Gi".into()),
            ..Default::default()
        };
        let (cfg, _) = resolve_new("vm", &spec, BackendKind::Local, HOST).unwrap();
        assert_eq!((cfg.max_cpu, cfg.max_memory), (8, 16 * GIB));
        let spec = WukongSpec {
            cpu: Some(12),
            ..Default::default()
        };
        let err = resolve_new("vm", &spec, BackendKind::Local, HOST).unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.cpu: 12 vCPUs exceed the host limit of 8"
        );
    }

    #[test]
    fn first_disk_is_boot_unless_flagged_and_boot_cannot_move() {
        let spec: WukongSpec = serde_json::from_value(serde_json::json!({
            "disks": [{"name": "a", "size": "1Gi"}, {"name": "b", "size": "1Gi", "boot": true}]
        }))
        .unwrap();
        let (cfg, pinned) = resolve_new("vm", &spec, BackendKind::Local, HOST).unwrap();
        assert_eq!(cfg.boot_disk().unwrap().name, "b");
        let moved: WukongSpec = serde_json::from_value(serde_json::json!({
            "cpu": 1, "memory": "1Gi",
            "disks": [{"name": "a", "size": "1Gi", "boot": true}, {"name": "b", "size": "1Gi"}]
        }))
        .unwrap();
        let err = resolve("vm", &moved, &pinned).unwrap_err();
        assert_eq!(err.kind(), crate::validate::ErrorKind::NotAllowed);
    }

    #[test]
    fn to_spec_round_trips() {
        let (cfg, pinned) =
            resolve_new("vm", &WukongSpec::default(), BackendKind::Kubevirt, HOST).unwrap();
        assert_eq!(resolve("vm", &cfg.to_spec(), &pinned).unwrap(), cfg);
    }
}

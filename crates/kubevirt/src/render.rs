//! What a `Wukong` becomes on a cluster: one KubeVirt `VirtualMachine` and one PVC per disk.
//! The same code serves `wukong render` and the operator.

use serde_json::{Value, json};
use wukong_api::quantity::{GIB, MIB, format_bytes};
use wukong_api::{
    DiskBus, DiskConfig, NetworkSource, NicConfig, NicModel, RunStrategy, VmConfig, VolumeMode,
};

/// Label put on everything Wukong renders: the owning Wukong's name.
pub const NAME_LABEL: &str = wukong_api::crd::NAME_LABEL_KEY;
/// KubeVirt adds memory hotplug (a virtio-mem device) only to VMs that boot with this much.
pub const MIN_HOTPLUG_GUEST: u64 = GIB;
/// CDI's default share of a Filesystem-mode PVC kept for the filesystem itself.
pub const DEFAULT_FILESYSTEM_OVERHEAD: f64 = 0.055;

/// The objects for one VM.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    /// The `kubevirt.io/v1` `VirtualMachine`.
    pub vm: Value,
    /// One `PersistentVolumeClaim` per disk, in disk order.
    pub pvcs: Vec<Value>,
}

/// The PVC name of a disk.
pub fn pvc_name(vm: &str, disk: &str) -> String {
    format!("{vm}-{disk}")
}

fn quantity(bytes: u64) -> String {
    format_bytes(bytes)
}

fn labels(vm: &str) -> Value {
    json!({"app.kubernetes.io/managed-by": "wukong", NAME_LABEL: vm})
}

/// KubeVirt's name of a run strategy.
pub fn run_strategy(r: RunStrategy) -> &'static str {
    match r {
        RunStrategy::Always => "Always",
        RunStrategy::RerunOnFailure => "RerunOnFailure",
        RunStrategy::Manual => "Manual",
        RunStrategy::Halted => "Halted",
        RunStrategy::Once => "Once",
    }
}

/// The `domain.devices.disks[]` entry of a disk.
pub fn disk_entry(d: &DiskConfig) -> Value {
    let bus = match d.bus {
        DiskBus::Virtio => "virtio",
        DiskBus::Scsi => "scsi",
        DiskBus::Sata => "sata",
    };
    json!({"name": d.name, "serial": d.name, "disk": {"bus": bus}})
}

/// The `volumes[]` entry of a disk: its PVC, hot-pluggable unless it is the boot disk or
/// marked otherwise.
pub fn volume_entry(vm: &str, d: &DiskConfig) -> Value {
    let mut pvc = json!({"claimName": pvc_name(vm, &d.name)});
    if d.hotpluggable {
        pvc["hotpluggable"] = json!(true);
    }
    json!({"name": d.name, "persistentVolumeClaim": pvc})
}

/// The `domain.devices.interfaces[]` entry of a NIC: masquerade on the pod network, bridge on
/// a secondary network (so that it can be unplugged live).
pub fn interface_entry(n: &NicConfig) -> Value {
    let mut i = json!({"name": n.name, "macAddress": n.mac, "model": match n.model {
        NicModel::Virtio => "virtio",
        NicModel::E1000e => "e1000e",
    }});
    match n.source {
        NetworkSource::Pod => i["masquerade"] = json!({}),
        _ => i["bridge"] = json!({}),
    }
    i
}

/// The `networks[]` entry of a NIC.
pub fn network_entry(n: &NicConfig) -> Value {
    match &n.source {
        NetworkSource::Multus(net) => json!({"name": n.name, "multus": {"networkName": net}}),
        _ => json!({"name": n.name, "pod": {}}),
    }
}

/// The `domain.memory` of a VM that boots with `c.memory`: `maxGuest` only when the guest boots
/// with at least 1Gi (KubeVirt's webhook refuses it below).
pub fn memory_entry(c: &VmConfig) -> Value {
    let mut m = json!({"guest": quantity(c.memory)});
    if c.memory >= MIN_HOTPLUG_GUEST && c.max_memory > c.memory {
        m["maxGuest"] = json!(quantity(c.max_memory));
    }
    m
}

/// The VM's template spec (what a restart applies).
pub fn template_spec(vm: &str, c: &VmConfig) -> Value {
    let mut disks: Vec<&DiskConfig> = c.disks.iter().collect();
    disks.sort_by_key(|d| !d.boot);
    json!({
        "domain": {
            "cpu": {"sockets": c.cpu, "cores": 1, "threads": 1, "maxSockets": c.max_cpu},
            "memory": memory_entry(c),
            "devices": {
                "disks": disks.iter().map(|d| disk_entry(d)).collect::<Vec<_>>(),
                "interfaces": c.networks.iter().map(interface_entry).collect::<Vec<_>>(),
            },
        },
        "networks": c.networks.iter().map(network_entry).collect::<Vec<_>>(),
        "volumes": disks.iter().map(|d| volume_entry(vm, d)).collect::<Vec<_>>(),
    })
}

/// The PVC of a disk.
pub fn pvc(vm: &str, namespace: &str, d: &DiskConfig) -> Value {
    let mut spec = json!({
        // ReadWriteMany keeps the VM live-migratable, which KubeVirt's CPU and memory hotplug
        // need.
        "accessModes": ["ReadWriteMany"],
        "volumeMode": match d.volume_mode.unwrap_or(VolumeMode::Block) {
            VolumeMode::Block => "Block",
            VolumeMode::Filesystem => "Filesystem",
        },
        "resources": {"requests": {"storage": quantity(d.size)}},
    });
    if let Some(sc) = &d.storage_class {
        spec["storageClassName"] = json!(sc);
    }
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": pvc_name(vm, &d.name), "namespace": namespace, "labels": labels(vm)},
        "spec": spec,
    })
}

/// Renders the objects of VM `vm` in `namespace` with configuration `c`.
pub fn render(vm: &str, namespace: &str, c: &VmConfig) -> Rendered {
    let object = json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": vm, "namespace": namespace, "labels": labels(vm)},
        "spec": {
            "runStrategy": run_strategy(c.run_strategy),
            "template": {
                "metadata": {"labels": {NAME_LABEL: vm}},
                "spec": template_spec(vm, c),
            },
        },
    });
    Rendered {
        vm: object,
        pvcs: c.disks.iter().map(|d| pvc(vm, namespace, d)).collect(),
    }
}

/// The size the guest sees for a disk of `size` bytes: the full size on a Block PVC; on a
/// Filesystem PVC the disk image leaves the filesystem overhead out (and is aligned down to
/// 1 MiB).
pub fn expected_guest_size(size: u64, mode: VolumeMode, filesystem_overhead: f64) -> u64 {
    match mode {
        VolumeMode::Block => size,
        VolumeMode::Filesystem => {
            let usable = (size as f64 * (1.0 - filesystem_overhead)) as u64;
            usable - usable % MIB
        }
    }
}

//! What a `Wukong` becomes on a cluster: one KubeVirt `VirtualMachine` (with a DataVolume
//! template per disk imported from a source, a cloud-init volume, its firmware) and one PVC
//! per blank disk.
//! The same code serves `wukong render` and the operator.

use serde_json::{Value, json};
use wukong_api::quantity::{GIB, MIB, format_bytes};
use wukong_api::{
    DiskBus, DiskConfig, Firmware, NetworkSource, NicConfig, NicModel, RunStrategy, VmConfig,
    VolumeMode,
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
    /// One `PersistentVolumeClaim` per blank disk, in disk order (a disk with a source gets
    /// its PVC from its DataVolume template).
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

/// The `volumes[]` entry of a disk: its PVC (a DataVolume's, for a disk imported from a
/// source), hot-pluggable unless it is the boot disk or marked otherwise.
pub fn volume_entry(vm: &str, d: &DiskConfig) -> Value {
    let (kind, mut source) = if d.source.is_some() {
        ("dataVolume", json!({"name": pvc_name(vm, &d.name)}))
    } else {
        (
            "persistentVolumeClaim",
            json!({"claimName": pvc_name(vm, &d.name)}),
        )
    };
    if d.hotpluggable {
        source["hotpluggable"] = json!(true);
    }
    json!({"name": d.name, kind: source})
}

fn storage_spec(d: &DiskConfig) -> Value {
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
    spec
}

/// The `dataVolumeTemplates[]` entry of a disk imported from a source (CDI: http, registry,
/// or a clone of a PVC of the VM's own namespace); `None` for a blank disk.
pub fn data_volume_template(vm: &str, namespace: &str, d: &DiskConfig) -> Option<Value> {
    let s = d.source.as_ref()?;
    let source = if let Some(h) = &s.http {
        json!({"http": {"url": h.url}})
    } else if let Some(r) = &s.registry {
        json!({"registry": {"url": r.url}})
    } else if let Some(p) = &s.pvc {
        json!({"pvc": {"namespace": namespace, "name": p.name}})
    } else {
        return None;
    };
    Some(json!({
        "metadata": {"name": pvc_name(vm, &d.name), "labels": labels(vm)},
        "spec": {"source": source, "storage": storage_spec(d)},
    }))
}

/// The DataVolume of a disk with a source added to a VM that exists (KubeVirt makes those of
/// the templates itself, at creation); `None` for a blank disk.
pub fn data_volume(vm: &str, namespace: &str, d: &DiskConfig) -> Option<Value> {
    let mut dv = data_volume_template(vm, namespace, d)?;
    dv["apiVersion"] = json!("cdi.kubevirt.io/v1beta1");
    dv["kind"] = json!("DataVolume");
    dv["metadata"]["namespace"] = json!(namespace);
    Some(dv)
}

/// The cloud-init volume's name (its disk is a CD-ROM: never one of the user's disks).
pub const CLOUD_INIT_VOLUME: &str = "cloudinit";

/// The PVC behind a template volume: its claim, or its DataVolume's (same name).
pub fn volume_claim(volume: &Value) -> Option<&str> {
    volume["persistentVolumeClaim"]["claimName"]
        .as_str()
        .or(volume["dataVolume"]["name"].as_str())
}

/// Whether a template volume is hot-pluggable.
pub fn volume_hotpluggable(volume: &Value) -> bool {
    volume["persistentVolumeClaim"]["hotpluggable"] == true
        || volume["dataVolume"]["hotpluggable"] == true
}

/// The cloud-init volume's disk entry (a CD-ROM).
pub fn cloud_init_disk() -> Value {
    json!({"name": CLOUD_INIT_VOLUME, "cdrom": {"bus": "sata"}})
}

/// The boot settings a template spec shows (its firmware).
pub fn observed_boot(template: &Value) -> Option<wukong_api::BootSpec> {
    let b = &template["domain"]["firmware"]["bootloader"];
    let firmware = if b.get("efi").is_some() {
        Firmware::Uefi
    } else if b.get("bios").is_some() {
        Firmware::Bios
    } else {
        return None;
    };
    Some(wukong_api::BootSpec {
        firmware: Some(firmware),
        kernel: None,
    })
}

/// The cloud-init data a template spec holds.
pub fn observed_cloud_init(template: &Value) -> Option<wukong_api::CloudInitSpec> {
    let v = template["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == CLOUD_INIT_VOLUME)?;
    let src = &v["cloudInitNoCloud"];
    let text = |k: &str| src[k].as_str().map(String::from);
    let secret = |k: &str| {
        src[k]["name"].as_str().map(|n| wukong_api::LocalRef {
            name: n.to_string(),
        })
    };
    Some(wukong_api::CloudInitSpec {
        user_data: text("userData"),
        network_data: text("networkData"),
        secret_ref: secret("secretRef"),
        network_data_secret_ref: secret("networkDataSecretRef"),
    })
}

/// The cloud-init volume of `c`, if it has cloud-init data.
pub fn cloud_init_volume(c: &VmConfig) -> Option<Value> {
    let ci = c.cloud_init.as_ref()?;
    let mut src = serde_json::Map::new();
    if let Some(u) = &ci.user_data {
        src.insert("userData".into(), json!(u));
    }
    if let Some(n) = &ci.network_data {
        src.insert("networkData".into(), json!(n));
    }
    if let Some(r) = &ci.secret_ref {
        src.insert("secretRef".into(), json!({"name": r.name}));
    }
    if let Some(r) = &ci.network_data_secret_ref {
        src.insert("networkDataSecretRef".into(), json!({"name": r.name}));
    }
    Some(json!({"name": CLOUD_INIT_VOLUME, "cloudInitNoCloud": src}))
}

/// `domain.firmware`: BIOS, or EFI with secure boot off (KubeVirt's default is on, which
/// needs SMM, and an unsigned loader would not boot); none for the default.
fn firmware(c: &VmConfig) -> Option<Value> {
    match c.boot.as_ref()?.firmware? {
        Firmware::Bios => Some(json!({"bootloader": {"bios": {}}})),
        Firmware::Uefi => Some(json!({"bootloader": {"efi": {"secureBoot": false}}})),
    }
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
    let mut disk_entries: Vec<Value> = disks.iter().map(|d| disk_entry(d)).collect();
    let mut volumes: Vec<Value> = disks.iter().map(|d| volume_entry(vm, d)).collect();
    if let Some(v) = cloud_init_volume(c) {
        disk_entries.push(cloud_init_disk());
        volumes.push(v);
    }
    let mut spec = json!({
        "domain": {
            "cpu": {"sockets": c.cpu, "cores": 1, "threads": 1, "maxSockets": c.max_cpu},
            "memory": memory_entry(c),
            "devices": {
                "disks": disk_entries,
                "interfaces": c.networks.iter().map(interface_entry).collect::<Vec<_>>(),
            },
        },
        "networks": c.networks.iter().map(network_entry).collect::<Vec<_>>(),
        "volumes": volumes,
    });
    if let Some(f) = firmware(c) {
        spec["domain"]["firmware"] = f;
    }
    spec
}

/// The PVC of a blank disk.
pub fn pvc(vm: &str, namespace: &str, d: &DiskConfig) -> Value {
    let spec = storage_spec(d);
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": pvc_name(vm, &d.name), "namespace": namespace, "labels": labels(vm)},
        "spec": spec,
    })
}

/// Renders the objects of VM `vm` in `namespace` with configuration `c`.
pub fn render(vm: &str, namespace: &str, c: &VmConfig) -> Rendered {
    let mut object = json!({
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
    let templates: Vec<Value> = c
        .disks
        .iter()
        .filter_map(|d| data_volume_template(vm, namespace, d))
        .collect();
    if !templates.is_empty() {
        object["spec"]["dataVolumeTemplates"] = json!(templates);
    }
    Rendered {
        vm: object,
        // A disk imported from a source gets its PVC from CDI (its DataVolume).
        pvcs: c
            .disks
            .iter()
            .filter(|d| d.source.is_none())
            .map(|d| pvc(vm, namespace, d))
            .collect(),
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

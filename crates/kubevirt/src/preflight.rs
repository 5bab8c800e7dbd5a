//! Preflight: from what a cluster says about itself (the `KubeVirt` CR, the VM, its VMI,
//! StorageClasses, PVCs) to the planner's capability set, with the reason for every change
//! that will not be live *on this cluster*.

use serde_json::Value;
use wukong_api::BackendKind;
use wukong_api::quantity::parse_bytes;
use wukong_planner::{Capabilities, Support};

use crate::render::pvc_name;

/// What preflight reads. Any part may be missing (not created yet, not readable).
#[derive(Clone, Debug, Default)]
pub struct ClusterFacts {
    /// The `kubevirt.io/v1` `KubeVirt` CR.
    pub kubevirt: Option<Value>,
    /// The VM as it is in the cluster.
    pub vm: Option<Value>,
    /// Its running instance.
    pub vmi: Option<Value>,
    /// `storage.k8s.io/v1` StorageClasses.
    pub storage_classes: Vec<Value>,
    /// The VM's PVCs.
    pub pvcs: Vec<Value>,
}

impl ClusterFacts {
    /// Sorts a list of cluster objects by kind.
    pub fn from_objects(objects: impl IntoIterator<Item = Value>) -> Self {
        let mut f = ClusterFacts::default();
        for o in objects {
            match o["kind"].as_str() {
                Some("KubeVirt") => f.kubevirt = Some(o),
                Some("VirtualMachine") => f.vm = Some(o),
                Some("VirtualMachineInstance") => f.vmi = Some(o),
                Some("StorageClass") => f.storage_classes.push(o),
                Some("PersistentVolumeClaim") => f.pvcs.push(o),
                _ => {}
            }
        }
        f
    }
}

/// What preflight concludes.
#[derive(Clone, Debug, PartialEq)]
pub struct Preflight {
    /// What can be done live on this cluster, for this VM.
    pub capabilities: Capabilities,
    /// Whether volumes are hot-plugged by editing the VM (declarative) or through the
    /// `addvolume`/`removevolume` subresources.
    pub declarative_hotplug: bool,
    /// Memory the running VMI booted with (`status.memory.guestAtBoot`).
    pub guest_at_boot: Option<u64>,
    /// Findings worth telling the user.
    pub notes: Vec<String>,
}

/// The condition of type `kind` in `obj`'s status, if there is one.
pub fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// Reads the cluster facts for VM `vm` whose disks are `disks` (name, StorageClass).
pub fn preflight(vm: &str, facts: &ClusterFacts, disks: &[(String, Option<String>)]) -> Preflight {
    let mut caps = Capabilities::kubevirt();
    let mut notes = Vec::new();
    let config = facts
        .kubevirt
        .as_ref()
        .map(|k| k["spec"]["configuration"].clone())
        .unwrap_or(Value::Null);
    let gates: Vec<&str> = config["developerConfiguration"]["featureGates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();

    if config["vmRolloutStrategy"] == "Stage" {
        let why =
            "the cluster's vmRolloutStrategy is Stage: every template change waits for a restart";
        caps = Capabilities::restart_only(BackendKind::Kubevirt, why);
        notes.push(why.into());
    }

    // CPU and memory are made live by a live migration to a new launcher pod.
    let methods: Vec<&str> = facts
        .kubevirt
        .as_ref()
        .and_then(|k| k["spec"]["workloadUpdateStrategy"]["workloadUpdateMethods"].as_array())
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut migration_blocked: Option<String> = None;
    if facts.kubevirt.is_some() && !methods.contains(&"LiveMigrate") {
        migration_blocked =
            Some("LiveMigrate is not in the cluster's workloadUpdateMethods".into());
    }
    if let Some(vmi) = &facts.vmi
        && let Some(c) = condition(vmi, "LiveMigratable")
        && c["status"] == "False"
    {
        migration_blocked = Some(format!(
            "the VM is not live-migratable ({})",
            c["message"]
                .as_str()
                .or(c["reason"].as_str())
                .unwrap_or("no reason given")
        ));
    }
    for pvc in &facts.pvcs {
        let modes: Vec<&str> = pvc["spec"]["accessModes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !modes.is_empty() && !modes.contains(&"ReadWriteMany") {
            let name = pvc["metadata"]["name"].as_str().unwrap_or("");
            let disk = disks
                .iter()
                .find(|(d, _)| pvc_name(vm, d) == name)
                .map_or(name.to_string(), |(d, _)| d.clone());
            migration_blocked
                .get_or_insert(format!("the VM is not live-migratable (RWO volume {disk})"));
        }
    }
    if let Some(why) = migration_blocked {
        let r = Support::Restart(format!("CPU and memory changes will restart: {why}"));
        caps.cpu_add = r.clone();
        caps.memory_grow = r.clone();
        caps.memory_shrink = r;
        notes.push(why);
    }

    // Declarative volume hotplug is skipped silently under the deprecated gate or a
    // migration update strategy: use the subresources then.
    let mut declarative = true;
    if gates.contains(&"HotplugVolumes") {
        declarative = false;
        notes.push("the deprecated HotplugVolumes gate is on: volumes are hot-plugged through addvolume/removevolume".into());
    }
    if let Some(vm) = &facts.vm
        && vm["spec"]["updateVolumesStrategy"] == "Migration"
    {
        declarative = false;
        notes.push("the VM's updateVolumesStrategy is Migration: volumes are hot-plugged through addvolume/removevolume".into());
    }

    for (disk, class) in disks {
        let class = class.clone().or_else(|| {
            facts
                .storage_classes
                .iter()
                .find(|s| {
                    s["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"]
                        == "true"
                })
                .and_then(|s| s["metadata"]["name"].as_str().map(str::to_string))
        });
        let Some(class) = class else { continue };
        let sc = facts
            .storage_classes
            .iter()
            .find(|s| s["metadata"]["name"] == class.as_str());
        if sc.is_some_and(|s| s["allowVolumeExpansion"] != true) {
            caps.disk_grow_blocked.push((
                disk.clone(),
                format!("StorageClass {class} does not allow volume expansion: the disk grows only by recreating it"),
            ));
        }
    }

    if let Some(vmi) = &facts.vmi
        && condition(vmi, "AgentConnected").is_none_or(|c| c["status"] != "True")
    {
        caps.filesystem_grow = Support::restart(
            "the guest agent is not connected: the filesystem cannot be grown in the guest until it is",
        );
        notes.push("the guest agent is not connected".into());
    }

    let guest_at_boot = facts
        .vmi
        .as_ref()
        .and_then(|v| {
            v["status"]["memory"]["guestAtBoot"]
                .as_str()
                .map(str::to_string)
        })
        .and_then(|s| parse_bytes(&s).ok());
    Preflight {
        capabilities: caps,
        declarative_hotplug: declarative,
        guest_at_boot,
        notes,
    }
}

//! The admission rules KubeVirt's webhooks enforce on a `VirtualMachine` that matter to Wukong
//! (beyond the schema), written from KubeVirt's documentation: what a real cluster would
//! refuse.

use serde_json::Value;

use crate::quantity::bytes;

/// KubeVirt aligns guest memory to 2 MiB and refuses what is not.
const MEMORY_ALIGNMENT: u64 = 2 << 20;
/// Memory hotplug needs a guest of at least 1 GiB.
const MIN_HOTPLUG_GUEST: u64 = 1 << 30;
/// Inline cloud-init data KubeVirt's webhook takes (larger goes through a Secret).
const CLOUD_INIT_INLINE: usize = 2048;

/// Every rule `vm` breaks, as `path: reason`.
pub fn check_vm(vm: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    if vm["spec"].get("liveUpdateFeatures").is_some() {
        errors.push(".spec.liveUpdateFeatures: removed in KubeVirt v1.2".into());
    }
    let spec = &vm["spec"]["template"]["spec"];
    for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        for k in ["userData", "networkData"] {
            if let Some(d) = v["cloudInitNoCloud"][k].as_str()
                && d.len() > CLOUD_INIT_INLINE
            {
                errors.push(format!(
                    ".spec.template.spec.volumes[{i}].cloudInitNoCloud.{k}: must be at most {CLOUD_INIT_INLINE} bytes ({} given): use a Secret",
                    d.len()
                ));
            }
        }
    }
    let cpu = &spec["domain"]["cpu"];
    if let (Some(s), Some(max)) = (cpu["sockets"].as_u64(), cpu["maxSockets"].as_u64())
        && s > max
    {
        errors.push(format!(
            ".spec.template.spec.domain.cpu.sockets: {s} exceeds maxSockets {max}"
        ));
    }
    let mem = &spec["domain"]["memory"];
    let guest = bytes(&mem["guest"]);
    if let Some(max) = mem.get("maxGuest").and_then(bytes) {
        let path = ".spec.template.spec.domain.memory";
        match guest {
            Some(g) if g < MIN_HOTPLUG_GUEST => errors.push(format!(
                "{path}.maxGuest: memory hotplug needs a guest of at least 1Gi (guest is {g} bytes)"
            )),
            Some(g) if max < g => errors.push(format!("{path}.maxGuest: smaller than guest")),
            _ => {}
        }
        for (k, v) in [("guest", guest), ("maxGuest", Some(max))] {
            if let Some(v) = v
                && v % MEMORY_ALIGNMENT != 0
            {
                errors.push(format!("{path}.{k}: not 2Mi-aligned"));
            }
        }
    }
    let networks = spec["networks"].as_array().cloned().unwrap_or_default();
    for (i, iface) in spec["domain"]["devices"]["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if iface["state"] == "absent" {
            let on_pod = networks
                .iter()
                .any(|n| n["name"] == iface["name"] && n.get("pod").is_some());
            if iface.get("bridge").is_none() || on_pod {
                errors.push(format!(
                    ".spec.template.spec.domain.devices.interfaces[{i}].state: absent is allowed only for bridge-bound secondary networks"
                ));
            }
        }
    }
    let disks: Vec<&Value> = spec["domain"]["devices"]["disks"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let volumes: Vec<&Value> = spec["volumes"].as_array().into_iter().flatten().collect();
    for d in &disks {
        if !volumes.iter().any(|v| v["name"] == d["name"]) {
            errors.push(format!(
                ".spec.template.spec.domain.devices.disks: {} has no volume",
                d["name"]
            ));
        }
    }
    for v in &volumes {
        if !disks.iter().any(|d| d["name"] == v["name"]) {
            errors.push(format!(
                ".spec.template.spec.volumes: {} has no disk",
                v["name"]
            ));
        }
    }
    errors
}

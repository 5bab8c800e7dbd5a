//! The exact cluster edits that carry out a plan on KubeVirt: JSON patches on the
//! `VirtualMachine` guarded by `test` ops on the values observed, PVC size raises, volume
//! hotplug (declarative edits or the `addvolume`/`removevolume` bodies), NIC unplug by
//! `state: absent`, guest-side steps, and the restart. Restart-only edits are held back and
//! written only together with the restart: KubeVirt stops propagating CPU and memory changes
//! once `RestartRequired` is set.

use serde_json::{Value, json};
use wukong_api::VmConfig;
use wukong_api::quantity::format_bytes;
use wukong_planner::{Action, Mode, Plan};

use crate::render::{
    CLOUD_INIT_VOLUME, cloud_init_disk, cloud_init_volume, data_volume, disk_entry,
    interface_entry, network_entry, pvc, pvc_name, run_strategy, template_spec, volume_entry,
};

/// One edit of the cluster.
#[derive(Clone, Debug, PartialEq)]
pub enum Edit {
    /// An RFC 6902 JSON patch on the `VirtualMachine`.
    PatchVm(Vec<Value>),
    /// A merge patch on a PVC.
    PatchPvc {
        /// PVC name.
        name: String,
        /// The merge patch.
        patch: Value,
    },
    /// Create a PVC.
    CreatePvc(Value),
    /// Create a DataVolume (CDI imports it into its PVC).
    CreateDataVolume(Value),
    /// `PUT …/virtualmachines/{vm}/addvolume` with this `v1.AddVolumeOptions` body.
    AddVolume(Value),
    /// `PUT …/virtualmachines/{vm}/removevolume` with this `v1.RemoveVolumeOptions` body.
    RemoveVolume(Value),
    /// A step carried out inside the guest through its agent (format, grow a filesystem).
    InGuest(Action),
    /// Write the held-back template with this patch, then `PUT …/virtualmachines/{vm}/restart`
    /// with this `v1.RestartOptions` body.
    Restart {
        /// The patch writing every restart-only change at once.
        patch: Vec<Value>,
        /// The restart body.
        body: Value,
    },
}

const DEVICES: &str = "/spec/template/spec/domain/devices";

/// What makes a new disk's volume: a DataVolume for a disk with a source, else a PVC.
fn create_disk(vm: &str, namespace: &str, disk: &wukong_api::DiskConfig) -> Edit {
    match data_volume(vm, namespace, disk) {
        Some(dv) => Edit::CreateDataVolume(dv),
        None => Edit::CreatePvc(pvc(vm, namespace, disk)),
    }
}

/// The `volumeSource` of a hot-plugged disk.
fn hotplug_source(vm: &str, disk: &wukong_api::DiskConfig) -> Value {
    let name = pvc_name(vm, &disk.name);
    if disk.source.is_some() {
        json!({"dataVolume": {"name": name, "hotpluggable": true}})
    } else {
        json!({"persistentVolumeClaim": {"claimName": name, "hotpluggable": true}})
    }
}
const TEMPLATE: &str = "/spec/template/spec";

fn index_of(list: &Value, name: &str) -> Option<usize> {
    list.as_array()?.iter().position(|x| x["name"] == name)
}

/// `test` that the value at `path` is what was observed, then `replace` it.
fn guarded_replace(current: &Value, path: &str, value: Value) -> Vec<Value> {
    let observed = current.pointer(path).cloned().unwrap_or(Value::Null);
    vec![
        json!({"op": "test", "path": path, "value": observed}),
        json!({"op": "replace", "path": path, "value": value}),
    ]
}

/// Removes the named entry of the list at `path`, after testing that the index still holds it.
fn guarded_remove(current: &Value, path: &str, name: &str) -> Vec<Value> {
    match current.pointer(path).and_then(|l| index_of(l, name)) {
        Some(i) => vec![
            json!({"op": "test", "path": format!("{path}/{i}/name"), "value": name}),
            json!({"op": "remove", "path": format!("{path}/{i}")}),
        ],
        None => vec![],
    }
}

/// The edits for `plan` of VM `vm` in `namespace`, against the cluster's current
/// `VirtualMachine` object `observed`.
pub fn edits(
    vm: &str,
    namespace: &str,
    plan: &Plan,
    desired: &VmConfig,
    observed: &Value,
    declarative_hotplug: bool,
) -> Vec<Edit> {
    let mut out: Vec<Edit> = Vec::new();
    // Each patch is guarded by the values the patches before it leave.
    let mut current = observed.clone();
    let mut applied = 0;
    for step in plan.steps.iter().filter(|s| s.mode != Mode::Restart) {
        if let Ok(next) = apply_patches(&current, &out[applied..]) {
            current = next;
        }
        applied = out.len();
        let current = &current;
        match &step.action {
            Action::AddVcpus { to, .. } | Action::RemoveVcpus { to, .. } => out.push(Edit::PatchVm(
                guarded_replace(current, &format!("{TEMPLATE}/domain/cpu/sockets"), json!(to)),
            )),
            Action::GrowMemory { to, .. } | Action::ShrinkMemory { to, .. } => out.push(Edit::PatchVm(
                guarded_replace(current, &format!("{TEMPLATE}/domain/memory/guest"), json!(format_bytes(*to))),
            )),
            Action::GrowDisk { disk, to, .. } => out.push(Edit::PatchPvc {
                name: pvc_name(vm, disk),
                patch: json!({"spec": {"resources": {"requests": {"storage": format_bytes(*to)}}}}),
            }),
            Action::GrowFilesystem { .. } | Action::CreateFilesystem { .. } | Action::OnlineMemory { .. } => {
                out.push(Edit::InGuest(step.action.clone()))
            }
            Action::AttachDisk { disk } => {
                out.push(create_disk(vm, namespace, disk));
                if declarative_hotplug {
                    out.push(Edit::PatchVm(vec![
                        json!({"op": "add", "path": format!("{DEVICES}/disks/-"), "value": disk_entry(disk)}),
                        json!({"op": "add", "path": format!("{TEMPLATE}/volumes/-"), "value": volume_entry(vm, disk)}),
                    ]));
                } else {
                    out.push(Edit::AddVolume(json!({
                        "name": disk.name,
                        "disk": disk_entry(disk),
                        "volumeSource": hotplug_source(vm, disk),
                    })));
                }
            }
            Action::DetachDisk { disk } => {
                // Unmounted in the guest first; a busy filesystem refuses the detach.
                out.push(Edit::InGuest(step.action.clone()));
                if declarative_hotplug {
                    let mut ops = guarded_remove(current, &format!("{DEVICES}/disks"), disk);
                    ops.extend(guarded_remove(current, &format!("{TEMPLATE}/volumes"), disk));
                    out.push(Edit::PatchVm(ops));
                } else {
                    out.push(Edit::RemoveVolume(json!({"name": disk})));
                }
            }
            Action::AddNic { nic } => out.push(Edit::PatchVm(vec![
                json!({"op": "add", "path": format!("{DEVICES}/interfaces/-"), "value": interface_entry(nic)}),
                json!({"op": "add", "path": format!("{TEMPLATE}/networks/-"), "value": network_entry(nic)}),
            ])),
            Action::RemoveNic { nic } => {
                // Unplugged by marking the interface absent; the network stays until done.
                let list = format!("{DEVICES}/interfaces");
                if let Some(i) = current.pointer(&list).and_then(|l| index_of(l, &nic.name)) {
                    out.push(Edit::PatchVm(vec![
                        json!({"op": "test", "path": format!("{list}/{i}/name"), "value": nic.name}),
                        json!({"op": "add", "path": format!("{list}/{i}/state"), "value": "absent"}),
                    ]));
                }
            }
            Action::UpdateNic { to, .. } => {
                let list = format!("{TEMPLATE}/networks");
                if let Some(i) = current.pointer(&list).and_then(|l| index_of(l, &to.name)) {
                    out.push(Edit::PatchVm(guarded_replace(current, &format!("{list}/{i}"), network_entry(to))));
                }
            }
            // The run strategy asked for (a start is planned only for one that runs the VM).
            Action::Start => out.push(Edit::PatchVm(guarded_replace(
                current,
                "/spec/runStrategy",
                json!(run_strategy(desired.run_strategy)),
            ))),
            Action::Stop => out.push(Edit::PatchVm(guarded_replace(current, "/spec/runStrategy", json!("Halted")))),
            // New data in the template; KubeVirt gives it to the guest at the next start.
            Action::SetCloudInit { .. } => {
                let volumes = format!("{TEMPLATE}/volumes");
                let at = current.pointer(&volumes).and_then(|l| index_of(l, CLOUD_INIT_VOLUME));
                let ops = match (at, cloud_init_volume(desired)) {
                    (Some(i), Some(v)) => guarded_replace(current, &format!("{volumes}/{i}"), v),
                    (Some(_), None) => {
                        let mut ops = guarded_remove(current, &format!("{DEVICES}/disks"), CLOUD_INIT_VOLUME);
                        ops.extend(guarded_remove(current, &volumes, CLOUD_INIT_VOLUME));
                        ops
                    }
                    (None, Some(v)) => vec![
                        json!({"op": "add", "path": format!("{DEVICES}/disks/-"), "value": cloud_init_disk()}),
                        json!({"op": "add", "path": format!("{volumes}/-"), "value": v}),
                    ],
                    (None, None) => vec![],
                };
                if !ops.is_empty() {
                    out.push(Edit::PatchVm(ops));
                }
            }
            // Restart-only: the restart writes the whole template.
            Action::SetMaxCpu { .. }
            | Action::SetMaxMemory { .. }
            | Action::ChangeDisk { .. }
            | Action::SetBoot { .. } => {}
        }
    }
    if let Ok(next) = apply_patches(&current, &out[applied..]) {
        current = next;
    }
    if plan.restart.as_ref().is_some_and(|r| r.allowed_now)
        && plan.steps.iter().any(|s| s.mode == Mode::Restart)
    {
        for step in plan.steps.iter().filter(|s| s.mode == Mode::Restart) {
            if let Action::AttachDisk { disk } = &step.action {
                out.push(create_disk(vm, namespace, disk));
            }
        }
        out.push(Edit::Restart {
            patch: guarded_replace(&current, TEMPLATE, template_spec(vm, desired)),
            body: json!({"apiVersion": "kubevirt.io/v1", "kind": "RestartOptions"}),
        });
    }
    out
}

/// The patch that takes a guarded patch (`test` the old value, `replace` it) back: `test` the
/// new value, `replace` it with the old. Only for patches made of such pairs.
pub fn revert(patch: &[Value]) -> Vec<Value> {
    patch
        .chunks(2)
        .rev()
        .flat_map(|pair| match pair {
            [test, replace] if test["op"] == "test" && replace["op"] == "replace" => vec![
                json!({"op": "test", "path": replace["path"], "value": replace["value"]}),
                json!({"op": "replace", "path": test["path"], "value": test["value"]}),
            ],
            _ => vec![],
        })
        .collect()
}

/// Applies the `PatchVm` edits to `vm` (as the API server would), for checking the result.
pub fn apply_patches(vm: &Value, edits: &[Edit]) -> Result<Value, String> {
    let mut doc = vm.clone();
    for e in edits {
        let ops = match e {
            Edit::PatchVm(ops) | Edit::Restart { patch: ops, .. } => ops,
            _ => continue,
        };
        let patch: json_patch::Patch =
            serde_json::from_value(Value::Array(ops.clone())).map_err(|e| e.to_string())?;
        json_patch::patch(&mut doc, &patch).map_err(|e| e.to_string())?;
    }
    Ok(doc)
}

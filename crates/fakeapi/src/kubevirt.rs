//! A simulated KubeVirt (and the bits of CSI and the kubelet it leans on): it turns
//! `VirtualMachine`s into running `VirtualMachineInstance`s with launcher pods, propagates the
//! live fields (CPU sockets, memory, hot-pluggable volumes, bridge NICs) and marks the rest
//! `RestartRequired` (sticky, blocking CPU/memory/volume propagation as KubeVirt does), binds
//! and resizes PVCs, answers the `restart`/`start`/`stop`/`addvolume`/`removevolume` and
//! `filesystemlist`/`guestosinfo` subresources, and runs a simulated guest agent behind
//! `virsh qemu-agent-command` in the launcher's `compute` container (pod exec over WebSocket).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{Method, Uri};
use axum::response::Response;
use base64::Engine as _;
use serde_json::{Value, json};
use wukong_kubevirt::bytes;
use wukong_kubevirt::render::{DEFAULT_FILESYSTEM_OVERHEAD, NAME_LABEL, expected_guest_size};

use crate::http::{Server, error_response, json_response, query_pairs};
use crate::store::{ApiError, Kind, Store, Sub, now};

/// Faults a test can inject.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// VMs whose VMI never reports a new CPU count.
    pub freeze_cpu: HashSet<String>,
    /// VMs whose guest leaves hot-added vCPUs offline (only the boot vCPUs online).
    pub offline_cpus: HashSet<String>,
    /// VMs whose guest does not take hot-plugged memory (no virtio-mem driver): its MemTotal
    /// stays at the boot size whatever the VMI reports.
    pub memory_unseen: HashSet<String>,
    /// PVCs whose resize fails.
    pub fail_resize: HashSet<String>,
    /// PVCs no provisioner binds (they stay Pending, as while a volume is imported or no
    /// storage fits): a VM using one is not started.
    pub unbound: HashSet<String>,
    /// `virtualmachines/restart` is refused (no RBAC for it).
    pub refuse_restart: bool,
    /// The guest agent refuses `guest-exec` (a locked-down agent policy).
    pub agent_blocks_exec: bool,
}

#[derive(Clone, Debug)]
struct Fs {
    fs_type: String,
    mount: Option<String>,
    size: u64,
}

#[derive(Clone, Debug, Default)]
struct Disk {
    size: u64,
    fs: Option<Fs>,
}

#[derive(Default)]
struct Guests {
    /// Disk contents by (namespace, claim): they outlive a VMI.
    disks: BTreeMap<(String, String), Disk>,
    /// Finished guest-exec results by pid.
    execs: BTreeMap<i64, (i64, String, String)>,
    /// vCPUs each VMI booted with.
    boot_cpus: BTreeMap<(String, String), u64>,
    next_pid: i64,
}

/// The simulated KubeVirt.
pub struct Sim {
    store: Arc<Store>,
    guests: Mutex<Guests>,
    /// One reconcile at a time, as one KubeVirt controller worker per VM would.
    busy: Mutex<()>,
    /// Injected faults.
    pub faults: Mutex<Faults>,
}

fn vm_kind() -> &'static Kind {
    Kind::named("kubevirt.io", "VirtualMachine")
}
fn vmi_kind() -> &'static Kind {
    Kind::named("kubevirt.io", "VirtualMachineInstance")
}
fn pvc_kind() -> &'static Kind {
    Kind::named("", "PersistentVolumeClaim")
}
fn pod_kind() -> &'static Kind {
    Kind::named("", "Pod")
}

fn condition(kind: &str, status: bool, reason: &str, message: &str) -> Value {
    json!({"type": kind, "status": if status { "True" } else { "False" }, "reason": reason,
           "message": message, "lastTransitionTime": now(), "lastProbeTime": null})
}

fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|x| x["name"] == name)
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x["name"].as_str().map(String::from))
        .collect()
}

fn claim(volume: &Value) -> Option<&str> {
    volume["persistentVolumeClaim"]["claimName"].as_str()
}

fn hotpluggable(volume: &Value) -> bool {
    volume["persistentVolumeClaim"]["hotpluggable"] == true
}

fn device(index: usize) -> String {
    format!("vd{}", (b'a' + index as u8) as char)
}

fn launcher(vm: &str) -> String {
    format!("virt-launcher-{vm}")
}

impl Sim {
    /// A simulated KubeVirt over `store`.
    pub fn new(store: Arc<Store>) -> Arc<Sim> {
        Arc::new(Sim {
            store,
            guests: Mutex::new(Guests::default()),
            busy: Mutex::new(()),
            faults: Mutex::new(Faults::default()),
        })
    }

    /// Reacts to changes until the store goes away.
    pub async fn run(self: Arc<Self>) {
        let mut rx = self.store.subscribe();
        let (vms, _) = self.store.list(vm_kind(), None);
        for vm in vms {
            self.reconcile_object(&vm);
        }
        loop {
            match rx.recv().await {
                Ok(c) => match c.kind.kind {
                    "VirtualMachine" => self.reconcile_object(&c.object),
                    "VirtualMachineInstance" if c.kind_of_change == "DELETED" => {
                        self.reconcile_object(&c.object)
                    }
                    "PersistentVolumeClaim" if c.kind_of_change != "DELETED" => {
                        self.bind_and_resize(&c.object);
                        if let Some(vm) = c.object["metadata"]["labels"][NAME_LABEL].as_str() {
                            let ns = c.object["metadata"]["namespace"]
                                .as_str()
                                .unwrap_or_default();
                            self.reconcile(ns, vm);
                        }
                    }
                    _ => {}
                },
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let (vms, _) = self.store.list(vm_kind(), None);
                    for vm in vms {
                        self.reconcile_object(&vm);
                    }
                }
                Err(_) => return,
            }
        }
    }

    /// Goes over every PVC and VM again (what KubeVirt's and the resizer's resyncs do).
    pub fn resync(&self) {
        let (pvcs, _) = self.store.list(pvc_kind(), None);
        for p in &pvcs {
            self.bind_and_resize(p);
        }
        let (vms, _) = self.store.list(vm_kind(), None);
        for vm in vms {
            self.reconcile_object(&vm);
        }
    }

    fn reconcile_object(&self, o: &Value) {
        let ns = o["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        self.reconcile(ns, name);
    }

    /// Binds a new PVC, and grows its capacity to its request (or fails, when told to).
    fn bind_and_resize(&self, pvc: &Value) {
        let ns = pvc["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = pvc["metadata"]["name"].as_str().unwrap_or_default();
        let request = bytes(&pvc["spec"]["resources"]["requests"]["storage"]).unwrap_or(0);
        let capacity = bytes(&pvc["status"]["capacity"]["storage"]);
        let mut status = pvc["status"].clone();
        match capacity {
            None if self.faults.lock().expect("faults").unbound.contains(name) => {
                if status["phase"] == "Pending" {
                    return;
                }
                status = json!({"phase": "Pending"});
            }
            None => {
                status = json!({"phase": "Bound", "accessModes": pvc["spec"]["accessModes"],
                                "capacity": {"storage": pvc["spec"]["resources"]["requests"]["storage"]}});
                self.guests
                    .lock()
                    .expect("guests")
                    .disks
                    .entry((ns.into(), name.into()))
                    .or_default();
            }
            Some(c) if request > c => {
                if self
                    .faults
                    .lock()
                    .expect("faults")
                    .fail_resize
                    .contains(name)
                {
                    status["conditions"] = json!([{"type": "ControllerResizeError", "status": "True",
                        "message": "resize volume failed: the storage backend has no room"}]);
                    status["allocatedResourceStatuses"] =
                        json!({"storage": "ControllerResizeInfeasible"});
                } else {
                    status["capacity"]["storage"] =
                        pvc["spec"]["resources"]["requests"]["storage"].clone();
                    if let Some(o) = status.as_object_mut() {
                        o.remove("conditions");
                        o.remove("allocatedResourceStatuses");
                    }
                }
            }
            Some(_) => return,
        }
        let mut new = pvc.clone();
        new["status"] = status;
        let _ = self.store.update(pvc_kind(), ns, name, new, Sub::Status);
    }

    fn reconcile(&self, ns: &str, name: &str) {
        let _busy = self.busy.lock().expect("busy");
        self.reconcile_locked(ns, name);
    }

    fn reconcile_locked(&self, ns: &str, name: &str) {
        let vmi = self.store.get(vmi_kind(), ns, name);
        let Some(vm) = self.store.get(vm_kind(), ns, name) else {
            if vmi.is_some() {
                self.stop(ns, name);
            }
            return;
        };
        let want = vm["metadata"].get("deletionTimestamp").is_none()
            && match vm["spec"]["runStrategy"].as_str() {
                Some("Always" | "RerunOnFailure") => true,
                Some("Halted") => false,
                _ => vmi.is_some(),
            };
        let mut restart_required = vm["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "RestartRequired"));
        // The launcher pod is scheduled only once its claims are bound.
        let bound = vm["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(claim)
            .all(|c| {
                self.store
                    .get(pvc_kind(), ns, c)
                    .is_some_and(|p| p["status"]["phase"] == "Bound")
            });
        let vmi = match (want && (bound || vmi.is_some()), vmi) {
            (true, None) => {
                restart_required = false;
                self.start(ns, name, &vm)
            }
            (false, Some(_)) => {
                self.stop(ns, name);
                None
            }
            (_, v) => v,
        };
        if let Some(vmi) = &vmi {
            restart_required |= self.sync(ns, name, &vm, vmi, restart_required);
        }
        let mut conditions = vec![condition(
            "Ready",
            vmi.is_some(),
            "",
            if vmi.is_some() {
                ""
            } else {
                "VMI does not exist"
            },
        )];
        if restart_required {
            conditions.push(condition(
                "RestartRequired",
                true,
                "",
                "a non-live-updatable field was changed in the template spec",
            ));
        }
        let mut status = json!({
            "printableStatus": match (&vmi, want) {
                (Some(_), _) => "Running",
                (None, true) if !bound => "WaitingForVolumeBinding",
                (None, _) => "Stopped",
            },
            "ready": vmi.is_some(),
            "created": vmi.is_some(),
            "conditions": conditions,
        });
        // Keep the transition times of unchanged conditions.
        if let Some(old) = vm["status"]["conditions"].as_array() {
            for c in status["conditions"].as_array_mut().into_iter().flatten() {
                if let Some(o) = old
                    .iter()
                    .find(|o| o["type"] == c["type"] && o["status"] == c["status"])
                {
                    *c = o.clone();
                }
            }
        }
        if vm["status"] != status {
            let mut new = vm.clone();
            new["status"] = status;
            let _ = self.store.update(vm_kind(), ns, name, new, Sub::Status);
        }
    }

    fn start(&self, ns: &str, name: &str, vm: &Value) -> Option<Value> {
        let template = &vm["spec"]["template"];
        let mut labels = template["metadata"]["labels"].clone();
        if !labels.is_object() {
            labels = json!({});
        }
        labels["kubevirt.io/vm"] = json!(name);
        let vmi = json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": name, "namespace": ns, "labels": labels,
                "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                    "name": name, "uid": vm["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}]},
            "spec": template["spec"],
        });
        let created = self.store.create(vmi_kind(), ns, vmi).ok()?;
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": launcher(name), "namespace": ns,
                "labels": {"kubevirt.io": "virt-launcher", "vm.kubevirt.io/name": name,
                           "kubevirt.io/created-by": created["metadata"]["uid"]}},
            "spec": {"containers": [{"name": "compute", "image": "quay.io/kubevirt/virt-launcher:v1.9.0"}]},
        });
        if let Ok(mut pod) = self.store.create(pod_kind(), ns, pod) {
            pod["status"] = json!({"phase": "Running"});
            let _ = self
                .store
                .update(pod_kind(), ns, &launcher(name), pod, Sub::Status);
        }
        let spec = &created["spec"];
        let memory = bytes(&spec["domain"]["memory"]["guest"]).unwrap_or(0);
        let cpu = &spec["domain"]["cpu"];
        // A fresh boot: the boot disk holds the root filesystem.
        {
            let mut g = self.guests.lock().expect("guests");
            g.boot_cpus.insert(
                (ns.to_string(), name.to_string()),
                cpu["sockets"].as_u64().unwrap_or(1),
            );
            if let Some(first) = spec["domain"]["devices"]["disks"]
                .as_array()
                .and_then(|d| d.first())
                && let Some(c) = named(&spec["volumes"], first["name"].as_str().unwrap_or_default())
                    .and_then(claim)
            {
                let d = g.disks.entry((ns.into(), c.into())).or_default();
                if d.fs.is_none() {
                    d.fs = Some(Fs {
                        fs_type: "ext4".into(),
                        mount: Some("/".into()),
                        size: 0,
                    });
                }
            }
        }
        let mut status = json!({
            "phase": "Running", "nodeName": "node-1",
            "conditions": [condition("Ready", true, "", ""), condition("AgentConnected", true, "", ""),
                           condition("LiveMigratable", true, "", "")],
            "currentCPUTopology": {"sockets": cpu["sockets"], "cores": cpu["cores"], "threads": cpu["threads"]},
            "memory": {"guestAtBoot": spec["domain"]["memory"]["guest"], "guestRequested": spec["domain"]["memory"]["guest"],
                       "guestCurrent": wukong_api::quantity::format_bytes(memory)},
            "interfaces": [], "volumeStatus": [],
        });
        self.refresh(ns, spec, &mut status);
        let mut vmi = created;
        vmi["status"] = status;
        self.store
            .update(vmi_kind(), ns, name, vmi, Sub::Status)
            .ok()
    }

    fn stop(&self, ns: &str, name: &str) {
        let _ = self.store.delete(vmi_kind(), ns, name);
        let _ = self.store.delete(pod_kind(), ns, &launcher(name));
    }

    /// Volume and interface status from the VMI spec, PVCs and guest disks.
    fn refresh(&self, ns: &str, spec: &Value, status: &mut Value) {
        let mut g = self.guests.lock().expect("guests");
        let disks = spec["domain"]["devices"]["disks"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut volumes = Vec::new();
        for (i, d) in disks.iter().enumerate() {
            let name = d["name"].as_str().unwrap_or_default();
            let Some(v) = named(&spec["volumes"], name) else {
                continue;
            };
            let mut vs = json!({"name": name, "target": device(i), "phase": "Ready", "reason": "VolumeReady",
                                "message": "Volume is ready"});
            if let Some(c) = claim(v) {
                let pvc = self.store.get(pvc_kind(), ns, c).unwrap_or(Value::Null);
                let capacity = bytes(&pvc["status"]["capacity"]["storage"]).unwrap_or(0);
                let mode = pvc["spec"]["volumeMode"].as_str().unwrap_or("Filesystem");
                vs["persistentVolumeClaimInfo"] = json!({
                    "claimName": c, "accessModes": pvc["spec"]["accessModes"],
                    "capacity": pvc["status"].get("capacity").cloned().unwrap_or_else(|| json!({})), "requests": pvc["spec"]["resources"]["requests"],
                    "volumeMode": mode, "filesystemOverhead": "0.055",
                });
                let size = expected_guest_size(
                    capacity,
                    if mode == "Block" {
                        wukong_api::VolumeMode::Block
                    } else {
                        wukong_api::VolumeMode::Filesystem
                    },
                    DEFAULT_FILESYSTEM_OVERHEAD,
                );
                vs["size"] = json!(size);
                let disk = g.disks.entry((ns.into(), c.into())).or_default();
                disk.size = size;
                if let Some(fs) = &mut disk.fs
                    && fs.size == 0
                {
                    fs.size = size;
                }
            }
            if hotpluggable(v) {
                vs["hotplugVolume"] = json!({"attachPodName": format!("hp-volume-{name}")});
            }
            volumes.push(vs);
        }
        status["volumeStatus"] = json!(volumes);
        let interfaces: Vec<Value> = spec["domain"]["devices"]["interfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["state"] != "absent")
            .enumerate()
            .map(|(n, i)| json!({"name": i["name"], "mac": i["macAddress"], "interfaceName": format!("eth{n}"),
                                 "infoSource": "domain, guest-agent", "linkState": "up"}))
            .collect();
        status["interfaces"] = json!(interfaces);
    }

    /// Propagates the live fields of the VM template to the VMI; returns whether a restart is
    /// needed for the rest.
    fn sync(&self, ns: &str, name: &str, vm: &Value, vmi: &Value, blocked: bool) -> bool {
        let t = &vm["spec"]["template"]["spec"];
        let mut s = vmi["spec"].clone();
        let mut status = vmi["status"].clone();
        let mut restart = false;
        let (tc, sc) = (&t["domain"]["cpu"], s["domain"]["cpu"].clone());
        if tc["maxSockets"] != sc["maxSockets"]
            || tc["cores"] != sc["cores"]
            || tc["threads"] != sc["threads"]
        {
            restart = true;
        } else if tc["sockets"] != sc["sockets"] && !blocked {
            if tc["sockets"].as_u64() < sc["sockets"].as_u64() {
                restart = true;
            } else {
                s["domain"]["cpu"]["sockets"] = tc["sockets"].clone();
                if !self
                    .faults
                    .lock()
                    .expect("faults")
                    .freeze_cpu
                    .contains(name)
                {
                    status["currentCPUTopology"]["sockets"] = tc["sockets"].clone();
                }
            }
        }
        let (tm, sm) = (&t["domain"]["memory"], s["domain"]["memory"].clone());
        if tm["maxGuest"] != sm["maxGuest"] {
            restart = true;
        } else if tm["guest"] != sm["guest"] && !blocked {
            let want = bytes(&tm["guest"]).unwrap_or(0);
            let boot = bytes(&status["memory"]["guestAtBoot"]).unwrap_or(0);
            match bytes(&sm["maxGuest"]) {
                Some(max) if want <= max && want >= boot => {
                    s["domain"]["memory"]["guest"] = tm["guest"].clone();
                    status["memory"]["guestRequested"] = tm["guest"].clone();
                    status["memory"]["guestCurrent"] = tm["guest"].clone();
                }
                _ => restart = true,
            }
        }
        // Volumes: hot-pluggable ones come and go live, the rest need a restart.
        let (tv, sv) = (names(&t["volumes"]), names(&s["volumes"]));
        for v in tv.iter().filter(|v| !sv.contains(v)) {
            let vol = named(&t["volumes"], v).cloned().unwrap_or_default();
            if !hotpluggable(&vol) {
                restart = true;
            } else if !blocked {
                let disk = named(&t["domain"]["devices"]["disks"], v)
                    .cloned()
                    .unwrap_or_default();
                push(&mut s["volumes"], vol);
                push(&mut s["domain"]["devices"]["disks"], disk);
            }
        }
        for v in sv.iter().filter(|v| !tv.contains(v)) {
            let vol = named(&s["volumes"], v).cloned().unwrap_or_default();
            if !hotpluggable(&vol) {
                restart = true;
            } else if !blocked {
                remove(&mut s["volumes"], v);
                remove(&mut s["domain"]["devices"]["disks"], v);
            }
        }
        // NICs: bridge interfaces plug and unplug live (state: absent); the rest at restart.
        let (ti, si) = (
            &t["domain"]["devices"]["interfaces"],
            s["domain"]["devices"]["interfaces"].clone(),
        );
        for i in ti.as_array().into_iter().flatten() {
            let n = i["name"].as_str().unwrap_or_default();
            match named(&si, n) {
                Some(cur) if cur == i => {}
                Some(_) if i["state"] == "absent" && i.get("bridge").is_some() => {
                    replace(&mut s["domain"]["devices"]["interfaces"], n, i.clone());
                }
                None if i["state"] != "absent" && i.get("bridge").is_some() => {
                    push(&mut s["domain"]["devices"]["interfaces"], i.clone());
                    if let Some(net) = named(&t["networks"], n) {
                        push(&mut s["networks"], net.clone());
                    }
                }
                _ => restart = true,
            }
        }
        if si
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| named(ti, i["name"].as_str().unwrap_or_default()).is_none())
        {
            restart = true;
        }
        self.refresh(ns, &s, &mut status);
        if s != vmi["spec"] {
            let mut new = vmi.clone();
            new["spec"] = s;
            if let Ok(v) = self.store.update(vmi_kind(), ns, name, new, Sub::Main) {
                let mut v = v;
                v["status"] = status;
                let _ = self.store.update(vmi_kind(), ns, name, v, Sub::Status);
            }
        } else if status != vmi["status"] {
            let mut new = vmi.clone();
            new["status"] = status;
            let _ = self.store.update(vmi_kind(), ns, name, new, Sub::Status);
        }
        restart
    }

    /// `…/subresources.kubevirt.io/v1/namespaces/{ns}/{resource}/{name}/{action}`.
    pub fn subresource(
        &self,
        method: &Method,
        resource: &str,
        ns: &str,
        name: &str,
        action: &str,
        body: &[u8],
    ) -> Response {
        match self.subresource_result(method, resource, ns, name, action, body) {
            Ok((code, v)) => json_response(code, &v),
            Err(e) => error_response(&e),
        }
    }

    fn subresource_result(
        &self,
        method: &Method,
        resource: &str,
        ns: &str,
        name: &str,
        action: &str,
        body: &[u8],
    ) -> Result<(u16, Value), ApiError> {
        let _busy = self.busy.lock().expect("busy");
        match (method.as_str(), resource, action) {
            ("PUT", "virtualmachines", "restart" | "start" | "stop") => {
                let vm = self.store.fetch(vm_kind(), ns, name)?;
                match action {
                    "restart" => {
                        if self.faults.lock().expect("faults").refuse_restart {
                            return Err(ApiError::new(
                                403,
                                "Forbidden",
                                format!(
                                    "virtualmachines.subresources.kubevirt.io \"{name}\" is forbidden: User cannot update resource \"virtualmachines/restart\" in API group \"subresources.kubevirt.io\" in the namespace \"{ns}\""
                                ),
                            ));
                        }
                        if self.store.get(vmi_kind(), ns, name).is_none() {
                            return Err(ApiError::new(409, "Conflict", "VM is not running"));
                        }
                        let mut vm2 = vm.clone();
                        if let Some(c) = vm2["status"]["conditions"].as_array_mut() {
                            c.retain(|c| c["type"] != "RestartRequired");
                        }
                        let _ = self.store.update(vm_kind(), ns, name, vm2, Sub::Status);
                        self.stop(ns, name);
                    }
                    _ => {
                        let mut vm2 = vm.clone();
                        vm2["spec"]["runStrategy"] = json!(if action == "start" {
                            "Always"
                        } else {
                            "Halted"
                        });
                        self.store.update(vm_kind(), ns, name, vm2, Sub::Main)?;
                    }
                }
                self.reconcile_locked(ns, name);
                Ok((202, json!({})))
            }
            ("PUT", "virtualmachines", "addvolume" | "removevolume") => {
                let opts: Value = serde_json::from_slice(body).map_err(|e| {
                    ApiError::new(400, "BadRequest", format!("the body is not JSON: {e}"))
                })?;
                let mut vm = self.store.fetch(vm_kind(), ns, name)?;
                let vol = opts["name"].as_str().unwrap_or_default().to_string();
                let spec = &mut vm["spec"]["template"]["spec"];
                if action == "addvolume" {
                    if named(&spec["volumes"], &vol).is_some() {
                        return Err(ApiError::new(
                            400,
                            "BadRequest",
                            format!(
                                "Unable to add volume [{vol}] because volume with that name already exists"
                            ),
                        ));
                    }
                    let mut v = opts["volumeSource"].clone();
                    v["name"] = json!(vol);
                    push(&mut spec["volumes"], v);
                    push(
                        &mut spec["domain"]["devices"]["disks"],
                        opts["disk"].clone(),
                    );
                } else {
                    if !named(&spec["volumes"], &vol).is_some_and(hotpluggable) {
                        return Err(ApiError::new(
                            400,
                            "BadRequest",
                            format!(
                                "Unable to remove volume [{vol}] because it does not exist or is not hotpluggable"
                            ),
                        ));
                    }
                    remove(&mut spec["volumes"], &vol);
                    remove(&mut spec["domain"]["devices"]["disks"], &vol);
                }
                self.store.update(vm_kind(), ns, name, vm, Sub::Main)?;
                Ok((202, json!({})))
            }
            ("GET", "virtualmachineinstances", "filesystemlist" | "guestosinfo") => {
                let vmi = self.store.fetch(vmi_kind(), ns, name)?;
                if action == "guestosinfo" {
                    return Ok((
                        200,
                        json!({"guestAgentVersion": "7.2.0", "hostname": name,
                        "os": {"name": "Debian GNU/Linux", "id": "debian", "versionId": "12"}}),
                    ));
                }
                Ok((200, json!({"items": self.filesystems(ns, &vmi)})))
            }
            _ => Err(ApiError::new(
                404,
                "NotFound",
                format!("no subresource {resource}/{action} for {method}"),
            )),
        }
    }

    /// What `filesystemlist` answers for VMI `name`, if it runs.
    pub fn filesystems_of(&self, ns: &str, name: &str) -> Option<Vec<Value>> {
        let vmi = self.store.get(vmi_kind(), ns, name)?;
        Some(self.filesystems(ns, &vmi))
    }

    fn filesystems(&self, ns: &str, vmi: &Value) -> Vec<Value> {
        let g = self.guests.lock().expect("guests");
        let spec = &vmi["spec"];
        let mut out = Vec::new();
        for (i, d) in spec["domain"]["devices"]["disks"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let name = d["name"].as_str().unwrap_or_default();
            let Some(c) = named(&spec["volumes"], name).and_then(claim) else {
                continue;
            };
            let Some(disk) = g.disks.get(&(ns.to_string(), c.to_string())) else {
                continue;
            };
            if let Some(fs) = &disk.fs
                && let Some(m) = &fs.mount
            {
                out.push(json!({"diskName": device(i), "mountPoint": m, "fileSystemType": fs.fs_type,
                    "totalBytes": fs.size, "usedBytes": fs.size / 50,
                    "disk": [{"serial": d["serial"].as_str().unwrap_or(name), "busType": "virtio"}]}));
            }
        }
        out
    }

    /// The guest disk behind a device path in VMI `vmi`: `/dev/vdX` or `/dev/disk/by-id/virtio-SERIAL`.
    fn disk_of(&self, ns: &str, vmi: &Value, dev: &str) -> Option<(String, String)> {
        let spec = &vmi["spec"];
        let disks = spec["domain"]["devices"]["disks"].as_array()?;
        let i = if let Some(serial) = dev.strip_prefix("/dev/disk/by-id/virtio-") {
            disks.iter().position(|d| d["serial"] == serial)?
        } else {
            let n = dev.strip_prefix("/dev/vd")?;
            (n.as_bytes().first()? - b'a') as usize
        };
        let name = disks.get(i)?["name"].as_str()?;
        Some((
            ns.to_string(),
            claim(named(&spec["volumes"], name)?)?.to_string(),
        ))
    }

    /// The vCPUs the domain has and how many of them the guest onlined (the boot ones only,
    /// for a guest that leaves hot-added vCPUs offline).
    fn guest_cpus(&self, ns: &str, vmi: &Value) -> (u64, u64) {
        let n = vmi["status"]["currentCPUTopology"]["sockets"]
            .as_u64()
            .unwrap_or(1);
        let name = vmi["metadata"]["name"].as_str().unwrap_or_default();
        if !self
            .faults
            .lock()
            .expect("faults")
            .offline_cpus
            .contains(name)
        {
            return (n, n);
        }
        let g = self.guests.lock().expect("guests");
        let boot = *g
            .boot_cpus
            .get(&(ns.to_string(), name.to_string()))
            .unwrap_or(&n);
        (n, boot.min(n))
    }

    /// What the guest's procfs, sysfs and mount table show, in the form the probe script
    /// prints: the guest's boot (one per VMI), MemTotal as the VMI reports it, the vCPUs it
    /// onlined, memory blocks (all online), the disks (unpartitioned virtio disks, `vda`
    /// onwards in the VMI's disk order) with their mounts, and the NICs.
    fn guest_probe(&self, ns: &str, vmi: &Value) -> String {
        let mut out = format!(
            "boot {}\n",
            vmi["metadata"]["uid"].as_str().unwrap_or_default()
        );
        let name = vmi["metadata"]["name"].as_str().unwrap_or_default();
        let seen = if self
            .faults
            .lock()
            .expect("faults")
            .memory_unseen
            .contains(name)
        {
            "guestAtBoot"
        } else {
            "guestCurrent"
        };
        let memory = bytes(&vmi["status"]["memory"][seen]).unwrap_or(0);
        out += &format!("mem {}\n", memory / 1024);
        let (_, online) = self.guest_cpus(ns, vmi);
        out += &format!("cpus 0-{}\n", online.saturating_sub(1));
        out += &format!("memblocks {} 0 8000000 online_movable\n", memory >> 27);
        for i in vmi["status"]["interfaces"].as_array().into_iter().flatten() {
            if let (Some(name), Some(mac)) = (i["interfaceName"].as_str(), i["mac"].as_str()) {
                out += &format!("nic {name} {mac}\n");
            }
        }
        let disks = vmi["spec"]["domain"]["devices"]["disks"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for (i, d) in disks.iter().enumerate() {
            let dev = format!("vd{}", (b'a' + i as u8) as char);
            let Some(k) = self.disk_of(ns, vmi, &format!("/dev/{dev}")) else {
                continue;
            };
            let g = self.guests.lock().expect("guests");
            let Some(disk) = g.disks.get(&k) else {
                continue;
            };
            let serial = d["serial"].as_str().or(d["name"].as_str()).unwrap_or("-");
            out += &format!("disk {dev} {} {serial}\n", disk.size / 512);
            if let Some(Fs {
                fs_type,
                mount: Some(m),
                size,
            }) = &disk.fs
            {
                out += &format!("mnt {dev} {m} {fs_type} {size}\n");
            }
        }
        out
    }

    /// Runs one command in the simulated guest: exit code, stdout, stderr.
    fn guest_run(&self, ns: &str, vmi: &Value, argv: &[String]) -> (i64, String, String) {
        // `timeout -s KILL SECS prog args…` runs prog (nothing here takes that long).
        if argv.first().map(String::as_str) == Some("timeout") {
            let skip = if argv.get(1).map(String::as_str) == Some("-s") {
                4
            } else {
                2
            };
            return self.guest_run(ns, vmi, argv.get(skip..).unwrap_or_default());
        }
        let arg = |i: usize| argv.get(i).map(String::as_str).unwrap_or_default();
        let last = argv.last().map(String::as_str).unwrap_or_default();
        // Programs are found by name, wherever the caller says they live.
        let program = arg(0).rsplit('/').next().unwrap_or_default();
        let with_disk = |dev: &str, f: &mut dyn FnMut(&mut Disk) -> (i64, String, String)| {
            let Some(k) = self.disk_of(ns, vmi, dev) else {
                return (1, String::new(), format!("{dev}: no such device\n"));
            };
            let mut g = self.guests.lock().expect("guests");
            match g.disks.get_mut(&k) {
                Some(d) => f(d),
                None => (1, String::new(), format!("{dev}: no such device\n")),
            }
        };
        match program {
            "mke2fs" | "mkfs.ext4" | "mkfs.xfs" => {
                let fs_type = if program == "mkfs.xfs" { "xfs" } else { "ext4" };
                with_disk(last, &mut |d| {
                    if d.fs.as_ref().is_some_and(|f| f.mount.is_some()) {
                        return (
                            1,
                            String::new(),
                            format!("{last} is mounted; will not make a filesystem here!\n"),
                        );
                    }
                    d.fs = Some(Fs {
                        fs_type: fs_type.into(),
                        mount: None,
                        size: d.size,
                    });
                    (0, String::new(), String::new())
                })
            }
            "blkid" => with_disk(last, &mut |d| match &d.fs {
                Some(f) => (
                    0,
                    format!("{last}: TYPE=\"{}\"\n", f.fs_type),
                    String::new(),
                ),
                None => (2, String::new(), String::new()),
            }),
            "mkdir" => (0, String::new(), String::new()),
            "mount" => {
                let (dev, path) = (arg(argv.len() - 2).to_string(), last.to_string());
                with_disk(&dev, &mut |d| match &mut d.fs {
                    Some(f) => {
                        f.mount = Some(path.clone());
                        (0, String::new(), String::new())
                    }
                    None => (
                        32,
                        String::new(),
                        format!(
                            "mount: {path}: wrong fs type, bad option, bad superblock on {dev}\n"
                        ),
                    ),
                })
            }
            "resize2fs" => with_disk(last, &mut |d| match &mut d.fs {
                Some(f) if f.fs_type == "ext4" => {
                    f.size = d.size;
                    (
                        0,
                        String::new(),
                        format!(
                            "The filesystem on {last} is now {} (4k) blocks long.\n",
                            d.size / 4096
                        ),
                    )
                }
                _ => (
                    1,
                    String::new(),
                    "resize2fs: Bad magic number in super-block\n".into(),
                ),
            }),
            "xfs_growfs" => {
                let mut g = self.guests.lock().expect("guests");
                match g
                    .disks
                    .values_mut()
                    .find(|d| d.fs.as_ref().and_then(|f| f.mount.as_deref()) == Some(last))
                {
                    Some(d) => {
                        let size = d.size;
                        if let Some(f) = &mut d.fs {
                            f.size = size;
                        }
                        (0, String::new(), String::new())
                    }
                    None => (
                        1,
                        String::new(),
                        format!("xfs_growfs: {last} is not a mounted XFS filesystem\n"),
                    ),
                }
            }
            "sh" if arg(1) == "-c" => (0, self.guest_probe(ns, vmi), String::new()),
            // The first bytes of a disk: zeros, unless a filesystem was made on it.
            "head" if arg(1) == "-c" => with_disk(last, &mut |d| {
                let n: usize = arg(2).parse().unwrap_or(0);
                let fill = if d.fs.is_some() { 'S' } else { '\0' };
                (0, std::iter::repeat_n(fill, n).collect(), String::new())
            }),
            "umount" => {
                let mut g = self.guests.lock().expect("guests");
                match g
                    .disks
                    .values_mut()
                    .filter_map(|d| d.fs.as_mut())
                    .find(|f| f.mount.as_deref() == Some(last))
                {
                    Some(f) => {
                        f.mount = None;
                        (0, String::new(), String::new())
                    }
                    None => (32, String::new(), format!("umount: {last}: not mounted.\n")),
                }
            }
            "sfdisk" | "partx" | "sync" | "true" => (0, String::new(), String::new()),
            other => (127, String::new(), format!("{other}: not found\n")),
        }
    }

    /// Answers one guest agent command (the JSON virsh passes through), as virsh prints it.
    fn agent(&self, ns: &str, vmi: &Value, command: &Value) -> Result<Value, String> {
        let args = &command["arguments"];
        match command["execute"].as_str().unwrap_or_default() {
            "guest-ping" => Ok(json!({"return": {}})),
            "guest-get-vcpus" => {
                let (n, online) = self.guest_cpus(ns, vmi);
                Ok(json!({"return": (0..n)
                    .map(|i| json!({"logical-id": i, "online": i < online, "can-offline": i > 0}))
                    .collect::<Vec<_>>()}))
            }
            "guest-exec" => {
                if self.faults.lock().expect("faults").agent_blocks_exec {
                    return Err("unable to execute QEMU agent command 'guest-exec': Command guest-exec has been disabled".into());
                }
                let mut argv = vec![args["path"].as_str().unwrap_or_default().to_string()];
                argv.extend(
                    args["arg"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a.as_str().map(String::from)),
                );
                let result = self.guest_run(ns, vmi, &argv);
                let mut g = self.guests.lock().expect("guests");
                g.next_pid += 1;
                let pid = g.next_pid + 1000;
                g.execs.insert(pid, result);
                Ok(json!({"return": {"pid": pid}}))
            }
            "guest-exec-status" => {
                let pid = args["pid"].as_i64().unwrap_or_default();
                let g = self.guests.lock().expect("guests");
                let Some((code, out, err)) = g.execs.get(&pid) else {
                    return Err(format!(
                        "unable to execute QEMU agent command 'guest-exec-status': Invalid parameter 'pid' {pid}"
                    ));
                };
                let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
                Ok(
                    json!({"return": {"exited": true, "exitcode": code, "out-data": b64(out), "err-data": b64(err)}}),
                )
            }
            other => Err(format!(
                "unable to execute QEMU agent command '{other}': The command {other} has not been found"
            )),
        }
    }

    /// Runs `argv` in pod `pod`'s container `container`: exit code, stdout, stderr.
    fn exec_in_pod(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        argv: &[String],
    ) -> Result<(i64, String, String), ApiError> {
        let p = self.store.fetch(pod_kind(), ns, pod)?;
        if p["status"]["phase"] != "Running" {
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!("pod {pod} is not running"),
            ));
        }
        if container != "compute" {
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!("container {container} is not valid for pod {pod}"),
            ));
        }
        let vm = p["metadata"]["labels"]["vm.kubevirt.io/name"]
            .as_str()
            .unwrap_or_default();
        // virsh [-c URI] qemu-agent-command DOMAIN JSON [--timeout N]
        let mut it = argv.iter().map(String::as_str);
        if it.next() != Some("virsh") {
            return Ok((
                127,
                String::new(),
                format!(
                    "{}: not found\n",
                    argv.first().map(String::as_str).unwrap_or_default()
                ),
            ));
        }
        let mut rest: Vec<&str> = it.collect();
        if rest.first() == Some(&"-c") {
            if rest.get(1).is_none_or(|u| !u.contains("virtqemud-sock")) {
                return Ok((
                    1,
                    String::new(),
                    "error: failed to connect to the hypervisor\n".into(),
                ));
            }
            rest.drain(..2);
        }
        let [sub, domain, json_text, ..] = rest.as_slice() else {
            return Ok((
                1,
                String::new(),
                "error: command needs a domain and a JSON command\n".into(),
            ));
        };
        if *sub != "qemu-agent-command" {
            return Ok((
                1,
                String::new(),
                format!("error: unknown command: '{sub}'\n"),
            ));
        }
        if *domain != format!("{ns}_{vm}") {
            return Ok((
                1,
                String::new(),
                format!("error: failed to get domain '{domain}'\n"),
            ));
        }
        let Some(vmi) = self.store.get(vmi_kind(), ns, vm) else {
            return Ok((
                1,
                String::new(),
                format!("error: failed to get domain '{domain}'\n"),
            ));
        };
        let Ok(command) = serde_json::from_str::<Value>(json_text) else {
            return Ok((
                1,
                String::new(),
                "error: internal error: cannot parse json\n".into(),
            ));
        };
        Ok(match self.agent(ns, &vmi, &command) {
            Ok(v) => (0, format!("{v}\n"), String::new()),
            Err(e) => (1, String::new(), format!("error: internal error: {e}\n")),
        })
    }
}

fn push(list: &mut Value, v: Value) {
    if !list.is_array() {
        *list = json!([]);
    }
    if let Some(a) = list.as_array_mut() {
        a.push(v);
    }
}

fn remove(list: &mut Value, name: &str) {
    if let Some(a) = list.as_array_mut() {
        a.retain(|x| x["name"] != name);
    }
}

fn replace(list: &mut Value, name: &str, v: Value) {
    if let Some(a) = list.as_array_mut()
        && let Some(x) = a.iter_mut().find(|x| x["name"] == name)
    {
        *x = v;
    }
}

/// `GET /api/v1/namespaces/{ns}/pods/{name}/exec` upgraded to a WebSocket speaking the
/// channel protocol (1 stdout, 2 stderr, 3 the final `Status`).
pub async fn exec(
    State(server): State<Arc<Server>>,
    Path((ns, pod)): Path<(String, String)>,
    uri: Uri,
    ws: WebSocketUpgrade,
) -> Response {
    let q = query_pairs(uri.query().unwrap_or_default());
    let argv: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    let container = q
        .iter()
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    server.store.count("pods/exec", "create");
    let result = server.sim.exec_in_pod(&ns, &pod, &container, &argv);
    if let Err(e) = &result {
        return error_response(e);
    }
    ws.protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |mut socket| async move {
            let Ok((code, out, err)) = result else { return };
            let frame = |ch: u8, data: &[u8]| {
                let mut b = vec![ch];
                b.extend_from_slice(data);
                Message::Binary(Bytes::from(b))
            };
            if !out.is_empty() {
                let _ = socket.send(frame(1, out.as_bytes())).await;
            }
            if !err.is_empty() {
                let _ = socket.send(frame(2, err.as_bytes())).await;
            }
            let status = if code == 0 {
                json!({"metadata": {}, "status": "Success"})
            } else {
                json!({"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                       "message": format!("command terminated with non-zero exit code: exit status {code}"),
                       "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
            };
            let _ = socket.send(frame(3, status.to_string().as_bytes())).await;
            let _ = socket.send(Message::Close(None)).await;
        })
}

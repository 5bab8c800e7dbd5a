//! The controllers: virt-controller's VM → VMI loop (with launcher pods) and the CSI
//! provisioner/resizer's PVC loop, driven by watches and a periodic resync.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::guest::{Fs, device};
use crate::objects::{DV, POD, PVC, Res, VM, VMI};
use crate::{NODE, Sim, Work, claim, hotpluggable, key, launcher, named};
use wukong_fakeapi::quantity::{bytes, format};

/// KubeVirt's default share of a Filesystem-mode PVC kept back from the disk image.
const FILESYSTEM_OVERHEAD: f64 = 0.055;
const MIB: u64 = 1 << 20;

fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The PVCs one reconcile has read, by claim name.
type Pvcs = std::collections::HashMap<String, Value>;

fn condition(kind: &str, status: bool, reason: &str, message: &str) -> Value {
    json!({"type": kind, "status": if status { "True" } else { "False" }, "reason": reason,
           "message": message, "lastTransitionTime": now(), "lastProbeTime": null})
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x["name"].as_str().map(String::from))
        .collect()
}

/// The size the guest sees of a disk on a PVC of `capacity` bytes: all of a Block PVC; on a
/// Filesystem PVC a disk image that leaves KubeVirt's filesystem overhead free, in whole MiB.
fn guest_size(capacity: u64, mode: &str) -> u64 {
    if mode == "Block" {
        return capacity;
    }
    let usable = (capacity as f64 * (1.0 - FILESYSTEM_OVERHEAD)) as u64;
    usable / MIB * MIB
}

/// Starts the watches, the resync timer and the worker.
pub(crate) fn spawn(
    sim: Arc<Sim>,
    queues: Vec<mpsc::UnboundedReceiver<Work>>,
    resync: Option<Duration>,
) -> Vec<tokio::task::JoinHandle<()>> {
    // What each change is work for: VMs and deleted VMIs for their VM, PVCs for their
    // claim, launcher pods being deleted for the kubelet.
    let watch = |res: Res| {
        let sim = sim.clone();
        tokio::spawn(async move {
            let api = sim.objects.api(res, "");
            let mut events = watcher(api, watcher::Config::default()).boxed();
            while let Some(e) = events.next().await {
                let (object, deleted) = match e {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => (o, false),
                    Ok(watcher::Event::Delete(o)) => (o, true),
                    _ => continue,
                };
                let object = serde_json::to_value(object).unwrap_or_default();
                let (ns, name) = key(&object);
                // The echo of the simulator's own status write changes nothing for it.
                if !deleted && sim.own_write(res.kind(), &object) {
                    continue;
                }
                let work = match res.kind() {
                    "VirtualMachine" => Work::Vm(ns, name),
                    "VirtualMachineInstance" if deleted => Work::Vm(ns, name),
                    "PersistentVolumeClaim" if !deleted => Work::Pvc(ns, name),
                    "DataVolume" if !deleted => Work::Dv(ns, name),
                    "Pod"
                        if !deleted
                            && object["metadata"].get("deletionTimestamp").is_some()
                            && object["spec"]["nodeName"] == NODE =>
                    {
                        Work::PodGone(ns, name)
                    }
                    _ => continue,
                };
                sim.kick(work);
            }
        })
    };
    let mut tasks = vec![watch(VM), watch(VMI), watch(PVC), watch(POD), watch(DV)];
    if let Some(period) = resync {
        let timer = sim.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                timer.kick(Work::All);
            }
        }));
    }
    for mut rx in queues {
        let sim = sim.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(w) = rx.recv().await {
                // Taken: a change from now on queues it again.
                sim.pending.lock().expect("pending").remove(&w);
                sim.work_on(w).await;
            }
        }));
    }
    tasks
}

impl Sim {
    async fn work_on(&self, w: Work) {
        match w {
            Work::Vm(ns, name) => self.reconcile(&ns, &name).await,
            Work::Pvc(ns, name) => {
                if let Ok(Some(pvc)) = self.objects.get(PVC, &ns, &name).await {
                    self.bind_and_resize(&pvc).await;
                }
                let vm = self
                    .claims
                    .lock()
                    .expect("claims")
                    .get(&(ns.clone(), name))
                    .cloned();
                if let Some(vm) = vm {
                    self.reconcile(&ns, &vm).await;
                }
            }
            Work::Dv(ns, name) => self.import(&ns, &name).await,
            // The kubelet has stopped the pod's containers: the pod goes at once.
            Work::PodGone(ns, name) => {
                let _ = self.objects.delete_now(POD, &ns, &name).await;
            }
            Work::All => {
                for dv in self.objects.list(DV).await.unwrap_or_default() {
                    let (ns, name) = key(&dv);
                    self.import(&ns, &name).await;
                }
                for pvc in self.objects.list(PVC).await.unwrap_or_default() {
                    self.bind_and_resize(&pvc).await;
                }
                for vm in self.objects.list(VM).await.unwrap_or_default() {
                    let (ns, name) = key(&vm);
                    self.reconcile(&ns, &name).await;
                }
            }
        }
    }

    /// Binds a new PVC, and grows its capacity to its request (or fails, when told to).
    async fn bind_and_resize(&self, pvc: &Value) {
        let (ns, name) = key(pvc);
        let request = bytes(&pvc["spec"]["resources"]["requests"]["storage"]).unwrap_or(0);
        let capacity = bytes(&pvc["status"]["capacity"]["storage"]);
        let mut status = pvc["status"].clone();
        let faults = self.faults.lock().expect("faults").clone();
        match capacity {
            None if faults.unbound.contains(&name) => {
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
                    .entry((ns.clone(), name.clone()))
                    .or_default();
            }
            Some(c) if request > c => {
                if faults.fail_resize.contains(&name) {
                    if status["allocatedResourceStatuses"]["storage"]
                        == "ControllerResizeInfeasible"
                    {
                        return;
                    }
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
        if let Ok(w) = self.objects.replace_status(PVC, &ns, &name, &new).await {
            self.wrote(PVC.kind(), &w);
        }
    }

    /// Brings VMI and VM status in line with VM `name`, holding its lock.
    pub(crate) async fn reconcile(&self, ns: &str, name: &str) {
        let lock = self.vm_lock(ns, name);
        let _held = lock.lock().await;
        self.reconcile_held(ns, name).await
    }

    /// [`Sim::reconcile`] for a caller that holds the VM's lock.
    pub(crate) async fn reconcile_held(&self, ns: &str, name: &str) {
        let Ok(vmi) = self.objects.get(VMI, ns, name).await else {
            return;
        };
        let vm = match self.objects.get(VM, ns, name).await {
            Ok(Some(vm)) => vm,
            Ok(None) => {
                if vmi.is_some() {
                    self.stop(ns, name).await;
                }
                return;
            }
            Err(_) => return,
        };
        self.ensure_data_volumes(ns, &vm).await;
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
        let mut bound = true;
        let mut pvcs = Pvcs::new();
        for c in vm["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(claim)
        {
            self.claims
                .lock()
                .expect("claims")
                .insert((ns.to_string(), c.to_string()), name.to_string());
            let pvc = self.objects.get(PVC, ns, c).await.ok().flatten();
            bound &= pvc
                .as_ref()
                .is_some_and(|p| p["status"]["phase"] == "Bound");
            if let Some(p) = pvc {
                pvcs.insert(c.to_string(), p);
            }
        }
        let vmi = match (want && (bound || vmi.is_some()), vmi) {
            (true, None) => {
                restart_required = false;
                self.start(ns, name, &vm, &mut pvcs).await
            }
            (false, Some(_)) => {
                self.stop(ns, name).await;
                None
            }
            (_, v) => v,
        };
        if let Some(vmi) = &vmi {
            restart_required |= self
                .sync(ns, name, &vm, vmi, restart_required, &mut pvcs)
                .await;
        }
        let ready = vmi.is_some();
        let mut conditions = vec![condition(
            "Ready",
            ready,
            "",
            if ready { "" } else { "VMI does not exist" },
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
            "printableStatus": match (ready, want) {
                (true, _) => "Running",
                (false, true) if !bound => "WaitingForVolumeBinding",
                (false, _) => "Stopped",
            },
            "ready": ready,
            "created": ready,
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
            if let Ok(w) = self.objects.replace_status(VM, ns, name, &new).await {
                self.wrote(VM.kind(), &w);
            }
        }
    }

    async fn start(&self, ns: &str, name: &str, vm: &Value, pvcs: &mut Pvcs) -> Option<Value> {
        let template = &vm["spec"]["template"];
        let mut labels = template["metadata"]["labels"].clone();
        if !labels.is_object() {
            labels = json!({});
        }
        labels["kubevirt.io/vm"] = json!(name);
        let spec = &template["spec"];
        let memory = bytes(&spec["domain"]["memory"]["guest"]).unwrap_or(0);
        let cpu = &spec["domain"]["cpu"];
        let mut status = json!({
            "phase": "Running", "nodeName": NODE,
            "conditions": [condition("Ready", true, "", ""), condition("AgentConnected", true, "", ""),
                           condition("LiveMigratable", true, "", "")],
            "currentCPUTopology": {"sockets": cpu["sockets"], "cores": cpu["cores"], "threads": cpu["threads"]},
            "memory": {"guestAtBoot": spec["domain"]["memory"]["guest"], "guestRequested": spec["domain"]["memory"]["guest"],
                       "guestCurrent": format(memory)},
            "interfaces": [], "volumeStatus": [],
        });
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
        self.refresh(ns, spec, &mut status, pvcs).await;
        // KubeVirt's VMI has no status subresource: the status goes in with the object.
        let vmi = json!({
            "metadata": {"name": name, "namespace": ns, "labels": labels,
                "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                    "name": name, "uid": vm["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}]},
            "spec": spec,
            "status": status,
        });
        let created = self.objects.create(VMI, ns, vmi).await.ok()?;
        let pod = json!({
            "metadata": {"name": launcher(name), "namespace": ns,
                "labels": {"kubevirt.io": "virt-launcher", "vm.kubevirt.io/name": name,
                           "kubevirt.io/created-by": created["metadata"]["uid"]}},
            "spec": {"nodeName": NODE, "automountServiceAccountToken": false,
                     "containers": [{"name": "compute", "image": "quay.io/kubevirt/virt-launcher:v1.9.0"}]},
        });
        if let Ok(mut pod) = self.objects.create(POD, ns, pod).await {
            pod["status"] = json!({"phase": "Running"});
            let _ = self
                .objects
                .replace_status(POD, ns, &launcher(name), &pod)
                .await;
        }
        Some(created)
    }

    pub(crate) async fn stop(&self, ns: &str, name: &str) {
        let _ = self.objects.delete(VMI, ns, name).await;
        let _ = self.objects.delete(POD, ns, &launcher(name)).await;
    }

    /// Volume and interface status from the VMI spec, PVCs and guest disks.
    async fn refresh(&self, ns: &str, spec: &Value, status: &mut Value, pvcs: &mut Pvcs) {
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
                let pvc = match pvcs.get(c) {
                    Some(p) => p.clone(),
                    None => self
                        .objects
                        .get(PVC, ns, c)
                        .await
                        .ok()
                        .flatten()
                        .unwrap_or(Value::Null),
                };
                let capacity = bytes(&pvc["status"]["capacity"]["storage"]).unwrap_or(0);
                let mode = pvc["spec"]["volumeMode"].as_str().unwrap_or("Filesystem");
                vs["persistentVolumeClaimInfo"] = json!({
                    "claimName": c, "accessModes": pvc["spec"]["accessModes"],
                    "capacity": pvc["status"].get("capacity").cloned().unwrap_or_else(|| json!({})), "requests": pvc["spec"]["resources"]["requests"],
                    "volumeMode": mode, "filesystemOverhead": FILESYSTEM_OVERHEAD.to_string(),
                });
                let size = guest_size(capacity, mode);
                vs["size"] = json!(size);
                let mut g = self.guests.lock().expect("guests");
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
    async fn sync(
        &self,
        ns: &str,
        name: &str,
        vm: &Value,
        vmi: &Value,
        blocked: bool,
        pvcs: &mut Pvcs,
    ) -> bool {
        let t = &vm["spec"]["template"]["spec"];
        let mut s = vmi["spec"].clone();
        let mut status = vmi["status"].clone();
        let mut restart = false;
        let freeze_cpu = self
            .faults
            .lock()
            .expect("faults")
            .freeze_cpu
            .contains(name);
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
                if !freeze_cpu {
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
        self.refresh(ns, &s, &mut status, pvcs).await;
        if s != vmi["spec"] || status != vmi["status"] {
            let mut new = vmi.clone();
            new["spec"] = s;
            new["status"] = status;
            let _ = self.objects.replace(VMI, ns, name, new).await;
        }
        restart
    }
}

pub(crate) fn push(list: &mut Value, v: Value) {
    if !list.is_array() {
        *list = json!([]);
    }
    if let Some(a) = list.as_array_mut() {
        a.push(v);
    }
}

pub(crate) fn remove(list: &mut Value, name: &str) {
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

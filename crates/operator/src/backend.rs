//! The KubeVirt backend: observes a VM from its `VirtualMachine`, `VirtualMachineInstance`,
//! PVCs and the guest agent (`filesystemlist`), carries out plan steps as the cluster edits of
//! `wukong_kubevirt::edits`, waits for the platform (PVC capacity, new VMI after a restart),
//! and finishes in the guest through the launcher's `compute` container.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::Value;
use wukong_api::{
    BackendKind, DiskBus, DiskConfig, NetworkSource, NicConfig, NicModel, Phase, RunStrategy,
    VmConfig,
};
use wukong_engine::{Backend, BackendError, StepProgress, VmRef};
use wukong_kubevirt::bytes;
use wukong_kubevirt::edits::{Edit, edits, revert};
use wukong_kubevirt::preflight::{ClusterFacts, condition, preflight};
use wukong_kubevirt::render::{NAME_LABEL, pvc_name};
use wukong_planner::{Action, Capabilities, GuestDiskView, GuestView, Observed, Plan, Step};

use crate::guest::Guest;
use crate::writes;

mod imports;
pub use imports::{DvState, IMPORT_RESTARTS, Imports, dv_state};

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// `kubevirt.io/v1` `VirtualMachine`.
pub fn vm_resource() -> ApiResource {
    resource("kubevirt.io", "v1", "VirtualMachine", "virtualmachines")
}
/// `kubevirt.io/v1` `VirtualMachineInstance`.
pub fn vmi_resource() -> ApiResource {
    resource(
        "kubevirt.io",
        "v1",
        "VirtualMachineInstance",
        "virtualmachineinstances",
    )
}
/// `kubevirt.io/v1` `KubeVirt`.
pub fn kubevirt_resource() -> ApiResource {
    resource("kubevirt.io", "v1", "KubeVirt", "kubevirts")
}
/// `v1` `PersistentVolumeClaim`.
pub fn pvc_resource() -> ApiResource {
    resource("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims")
}
/// `cdi.kubevirt.io/v1beta1` `DataVolume`.
pub fn dv_resource() -> ApiResource {
    resource("cdi.kubevirt.io", "v1beta1", "DataVolume", "datavolumes")
}
/// `storage.k8s.io/v1` `StorageClass`.
pub fn storage_class_resource() -> ApiResource {
    resource("storage.k8s.io", "v1", "StorageClass", "storageclasses")
}

/// An API error as a backend error: 404 → not found, transport → unreachable.
pub fn api_error(what: &str, e: kube::Error) -> BackendError {
    match &e {
        kube::Error::Api(s) if s.code == 404 => BackendError::NotFound(what.into()),
        kube::Error::Api(s) => {
            BackendError::Failed(format!("{what}: {} ({})", s.message, s.reason))
        }
        _ => BackendError::Unreachable(format!("{what}: {e}")),
    }
}

/// Whether the server refused a create because the namespace is being deleted: nothing is
/// to be made there any more (the namespace's objects, this Wukong too, are on their way out).
pub fn namespace_terminating(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403
        && s.details.as_ref().is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating")))
}

/// Progress no one is told of.
struct Quiet;
impl StepProgress for Quiet {
    fn progress(&self, _: u64, _: u64, _: &str) {}
}

fn to_value(o: DynamicObject) -> Value {
    serde_json::to_value(o).unwrap_or(Value::Null)
}

/// Timing knobs.
#[derive(Clone, Copy, Debug)]
pub struct KubeTimeouts {
    /// How long a PVC may take to reach its new capacity.
    pub resize: Duration,
    /// How long a restart may take until the new VMI runs.
    pub restart: Duration,
    /// How long one guest command may take.
    pub guest: Duration,
    /// How long the import of a disk hot-plugged from a source may take (one that gets
    /// nowhere fails sooner: see [`IMPORT_RESTARTS`]).
    pub import: Duration,
}

impl Default for KubeTimeouts {
    fn default() -> Self {
        KubeTimeouts {
            resize: Duration::from_secs(120),
            restart: Duration::from_secs(300),
            guest: Duration::from_secs(120),
            import: Duration::from_secs(3600),
        }
    }
}

type Seen = (Option<Value>, Option<Value>, Vec<Value>);
/// The KubeVirt CR and the StorageClasses.
type ClusterWide = (Option<Value>, Vec<Value>);

/// How long a namespace that refused a create for being deleted is left alone.
const TERMINATING_TTL: Duration = Duration::from_secs(30);

/// How long the KubeVirt CR and StorageClasses are reused.
const CLUSTER_TTL: Duration = Duration::from_secs(10);

/// The backend for one cluster.
pub struct KubevirtBackend {
    client: Client,
    /// The Wukong's desired configuration, per VM (for the parts the cluster does not hold:
    /// filesystems, restart policy…).
    desired: Mutex<HashMap<VmRef, VmConfig>>,
    declarative: Mutex<HashMap<VmRef, bool>>,
    /// The objects of each VM's last observation (VM, VMI, PVCs), for preflight.
    seen: Mutex<HashMap<VmRef, Seen>>,
    cluster: Mutex<Option<(Instant, ClusterWide)>>,
    /// VMs whose operation observes the guest itself (the probe through the agent) rather
    /// than what the VMI and the agent's filesystem list report.
    probing: Mutex<HashSet<VmRef>>,
    /// Each VM's phase as its VMI last showed it.
    phases: Mutex<HashMap<VmRef, Phase>>,
    /// Namespaces a create was refused in because they are being deleted, and when.
    terminating: Mutex<HashMap<String, Instant>>,
    guest: Guest,
    timeouts: KubeTimeouts,
}

impl KubevirtBackend {
    /// A backend on `client`.
    pub fn new(client: Client, timeouts: KubeTimeouts) -> Self {
        KubevirtBackend {
            guest: Guest::new(client.clone(), timeouts.guest),
            client,
            desired: Mutex::new(HashMap::new()),
            declarative: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            cluster: Mutex::new(None),
            probing: Mutex::new(HashSet::new()),
            phases: Mutex::new(HashMap::new()),
            terminating: Mutex::new(HashMap::new()),
            timeouts,
        }
    }

    /// Sets what `vm` should have (before an operation).
    pub fn set_desired(&self, vm: &VmRef, config: VmConfig) {
        self.desired
            .lock()
            .expect("desired")
            .insert(vm.clone(), config);
    }

    /// Whether the next operation of `vm` observes the guest itself (online vCPUs, MemTotal,
    /// block devices, filesystems, boot id through the agent), or, for a VM with nothing to
    /// change, the VMI and the agent's filesystem list (no exec into its launcher).
    pub fn probe_guest(&self, vm: &VmRef, on: bool) {
        let mut p = self.probing.lock().expect("probing");
        if on {
            p.insert(vm.clone());
        } else {
            p.remove(vm);
        }
    }

    /// Drops what the last operation observed of `vm` (kept only while one runs).
    pub fn settle(&self, vm: &VmRef) {
        self.seen.lock().expect("seen").remove(vm);
        self.probing.lock().expect("probing").remove(vm);
    }

    /// Forgets `vm` (after deletion).
    pub fn forget(&self, vm: &VmRef) {
        self.desired.lock().expect("desired").remove(vm);
        self.declarative.lock().expect("declarative").remove(vm);
        self.seen.lock().expect("seen").remove(vm);
        self.phases.lock().expect("phases").remove(vm);
    }

    /// The VM's phase as its VMI showed it at the last observation: Running while the VMI
    /// runs, whether or not its guest agent answers (Ready says that).
    pub fn phase(&self, vm: &VmRef) -> Option<Phase> {
        self.phases.lock().expect("phases").get(vm).copied()
    }

    /// Whether `ns` refused a create lately because it is being deleted: nothing is tried
    /// there for a while (its objects are all on their way out), then once more (a namespace
    /// of the same name may have been made since).
    pub fn terminating(&self, ns: &str) -> bool {
        let mut t = self.terminating.lock().expect("terminating");
        match t.get(ns) {
            Some(at) if at.elapsed() < TERMINATING_TTL => true,
            Some(_) => {
                t.remove(ns);
                false
            }
            None => false,
        }
    }

    /// Notes that `e` (from a create in `ns`) says `ns` is being deleted, and whether it did.
    pub fn note_terminating(&self, ns: &str, e: &kube::Error) -> bool {
        let yes = namespace_terminating(e);
        if yes {
            self.terminating
                .lock()
                .expect("terminating")
                .insert(ns.to_string(), Instant::now());
        }
        yes
    }

    fn api(&self, ar: &ApiResource, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, ar)
    }

    async fn get(
        &self,
        ar: &ApiResource,
        ns: &str,
        name: &str,
    ) -> Result<Option<Value>, BackendError> {
        self.api(ar, ns)
            .get_opt(name)
            .await
            .map(|o| o.map(to_value))
            .map_err(|e| api_error(&format!("{} {ns}/{name}", ar.kind), e))
    }

    /// The PVCs the VM's template names (by GET: cheap on any API server).
    async fn pvcs(&self, vm: &VmRef, object: &Value) -> Result<Vec<Value>, BackendError> {
        let claims: Vec<&str> = object["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(wukong_kubevirt::render::volume_claim)
            .collect();
        let mut out = Vec::new();
        for c in claims {
            if let Some(p) = self.get(&pvc_resource(), &vm.namespace, c).await? {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// The KubeVirt CR and the StorageClasses, cached for a few seconds (cluster-wide, and
    /// read by every reconcile).
    async fn cluster(&self) -> Result<ClusterWide, BackendError> {
        if let Some((at, c)) = self.cluster.lock().expect("cluster").as_ref()
            && at.elapsed() < CLUSTER_TTL
        {
            return Ok(c.clone());
        }
        let kubevirts: Api<DynamicObject> =
            Api::all_with(self.client.clone(), &kubevirt_resource());
        let classes: Api<DynamicObject> =
            Api::all_with(self.client.clone(), &storage_class_resource());
        let lp = ListParams::default();
        let kubevirt = kubevirts
            .list(&lp)
            .await
            .map_err(|e| api_error("KubeVirt CR", e))?
            .items
            .into_iter()
            .next()
            .map(to_value);
        let storage_classes: Vec<Value> = classes
            .list(&lp)
            .await
            .map_err(|e| api_error("StorageClasses", e))?
            .items
            .into_iter()
            .map(to_value)
            .collect();
        let c = (kubevirt, storage_classes);
        *self.cluster.lock().expect("cluster") = Some((Instant::now(), c.clone()));
        Ok(c)
    }

    /// What preflight reads, for `vm`: the objects of its last observation when there is one.
    pub async fn facts(&self, vm: &VmRef) -> Result<ClusterFacts, BackendError> {
        let (kubevirt, storage_classes) = self.cluster().await?;
        let seen = self.seen.lock().expect("seen").get(vm).cloned();
        let (object, vmi, pvcs) = match seen {
            Some(s) => s,
            None => {
                let object = self.get(&vm_resource(), &vm.namespace, &vm.name).await?;
                let pvcs = match &object {
                    Some(o) => self.pvcs(vm, o).await?,
                    None => Vec::new(),
                };
                (
                    object,
                    self.get(&vmi_resource(), &vm.namespace, &vm.name).await?,
                    pvcs,
                )
            }
        };
        Ok(ClusterFacts {
            kubevirt,
            vm: object,
            vmi,
            storage_classes,
            pvcs,
        })
    }

    async fn patch_vm(&self, vm: &VmRef, ops: &[Value]) -> Result<(), BackendError> {
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.to_vec()))
            .map_err(|e| BackendError::Failed(format!("patch: {e}")))?;
        self.api(&vm_resource(), &vm.namespace)
            .patch(&vm.name, &writes::strict(), &Patch::<()>::Json(patch))
            .await
            .map(|_| ())
            .map_err(|e| api_error(&format!("VirtualMachine {vm}"), e))
    }

    async fn subresource(
        &self,
        vm: &VmRef,
        action: &str,
        body: &Value,
    ) -> Result<(), BackendError> {
        let url = format!(
            "/apis/subresources.kubevirt.io/v1/namespaces/{}/virtualmachines/{}/{action}",
            vm.namespace, vm.name
        );
        let req = http::Request::put(url)
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(body).unwrap_or_default())
            .map_err(|e| BackendError::Failed(e.to_string()))?;
        self.client
            .request_text(req)
            .await
            .map(|_| ())
            .map_err(|e| api_error(&format!("{action} of {vm}"), e))
    }

    /// Creates `object` (a PVC or a DataVolume) in the VM's namespace, unless the namespace is
    /// being deleted; one that exists already is fine.
    async fn create_in(
        &self,
        vm: &VmRef,
        ar: &ApiResource,
        what: &str,
        object: &Value,
    ) -> Result<(), BackendError> {
        let obj: DynamicObject = serde_json::from_value(object.clone())
            .map_err(|e| BackendError::Failed(format!("{what}: {e}")))?;
        let deleted = || {
            BackendError::Settling(format!(
                "namespace {} is being deleted: nothing new is made in it",
                vm.namespace
            ))
        };
        if self.terminating(&vm.namespace) {
            return Err(deleted());
        }
        match writes::create(&self.client, ar, &vm.namespace, &obj).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) if self.note_terminating(&vm.namespace, &e) => Err(deleted()),
            Err(e) => Err(api_error(what, e)),
        }
    }

    /// Carries out one cluster edit.
    async fn edit(&self, vm: &VmRef, e: &Edit, desired: &VmConfig) -> Result<(), BackendError> {
        let pvcs = self.api(&pvc_resource(), &vm.namespace);
        match e {
            Edit::PatchVm(ops) => self.patch_vm(vm, ops).await,
            Edit::PatchPvc { name, patch } => pvcs
                .patch(name, &writes::strict(), &Patch::Merge(patch))
                .await
                .map(|_| ())
                .map_err(|e| api_error(&format!("PVC {name}"), e)),
            Edit::CreatePvc(obj) => self.create_in(vm, &pvc_resource(), "PVC", obj).await,
            Edit::CreateDataVolume(obj) => {
                self.create_in(vm, &dv_resource(), "DataVolume", obj).await
            }
            Edit::AddVolume(body) => self.subresource(vm, "addvolume", body).await,
            Edit::RemoveVolume(body) => self.subresource(vm, "removevolume", body).await,
            Edit::InGuest(action) => self.in_guest(vm, action, desired).await,
            Edit::Restart { patch, body } => {
                // KubeVirt restarts into the template: the restart-only changes go in just
                // before, and come back out when the restart is refused.
                self.patch_vm(vm, patch).await?;
                let Err(e) = self.subresource(vm, "restart", body).await else {
                    return Ok(());
                };
                Err(BackendError::Failed(
                    match self.patch_vm(vm, &revert(patch)).await {
                        Ok(()) => format!(
                            "{e}; the restart-only changes were taken back out of the template"
                        ),
                        Err(r) => format!(
                            "{e}; taking the restart-only changes back out of the template failed too ({r}): the next start uses them"
                        ),
                    },
                ))
            }
        }
    }

    /// The autoscaler's reading of `vm`'s guest, taken at `at` seconds on the caller's clock.
    pub async fn metrics(
        &self,
        vm: &VmRef,
        at: f64,
    ) -> Result<wukong_autoscaler::Sample, BackendError> {
        let agent = crate::guest::VmAgent {
            guest: &self.guest,
            vm,
        };
        self.guest.ops(&agent).metrics(at).await
    }

    async fn in_guest(
        &self,
        vm: &VmRef,
        action: &Action,
        desired: &VmConfig,
    ) -> Result<(), BackendError> {
        let agent = crate::guest::VmAgent {
            guest: &self.guest,
            vm,
        };
        let ops = self.guest.ops(&agent);
        match action {
            Action::GrowFilesystem { disk, .. } => ops.grow(disk).await,
            Action::CreateFilesystem { disk, filesystem } => {
                let serial = desired
                    .disk(disk)
                    .map_or(disk.as_str(), |d| d.name.as_str());
                ops.ensure_filesystem(serial, filesystem).await
            }
            Action::OnlineMemory { .. } => ops.online_memory_blocks().await.map(|_| ()),
            Action::DetachDisk { disk } => ops.unmount_disk(disk, false).await.map_err(|e| match e {
                BackendError::Failed(why) => BackendError::Failed(format!("{why}; stop what uses it")),
                other => BackendError::Failed(format!(
                    "cannot tell whether disk {disk} is mounted in the guest ({other}): not detached"
                )),
            }),
            other => Err(BackendError::Unsupported {
                backend: BackendKind::Kubevirt,
                what: other.describe(),
            }),
        }
    }

    /// Makes the cluster edits of `plan` against the VM as it is now.
    async fn carry_out(
        &self,
        vm: &VmRef,
        plan: &Plan,
        desired: &VmConfig,
        progress: &dyn StepProgress,
    ) -> Result<(), BackendError> {
        let object = self
            .get(&vm_resource(), &vm.namespace, &vm.name)
            .await?
            .ok_or_else(|| BackendError::NotFound(vm.to_string()))?;
        let declarative = *self
            .declarative
            .lock()
            .expect("declarative")
            .get(vm)
            .unwrap_or(&true);
        for e in edits(&vm.name, &vm.namespace, plan, desired, &object, declarative) {
            self.edit(vm, &e, desired).await?;
            // A disk with a source goes into the VM once CDI has imported it, its progress
            // shown meanwhile (KubeVirt would wait too, but silently).
            if let Edit::CreateDataVolume(dv) = &e
                && let Some(disk) = desired
                    .disks
                    .iter()
                    .find(|d| dv["metadata"]["name"].as_str() == Some(&pvc_name(&vm.name, &d.name)))
            {
                self.await_import(vm, disk, progress).await?;
            }
        }
        Ok(())
    }

    /// Waits until the PVC of `disk` has at least `to` bytes, or reports why it cannot.
    async fn await_capacity(
        &self,
        vm: &VmRef,
        disk: &str,
        to: u64,
        progress: &dyn StepProgress,
    ) -> Result<(), BackendError> {
        let name = pvc_name(&vm.name, disk);
        let deadline = Instant::now() + self.timeouts.resize;
        loop {
            let pvc = self
                .get(&pvc_resource(), &vm.namespace, &name)
                .await?
                .ok_or_else(|| BackendError::NotFound(format!("PVC {name}")))?;
            let capacity = bytes(&pvc["status"]["capacity"]["storage"]).unwrap_or(0);
            progress.progress(capacity.min(to), to, "PVC capacity");
            if capacity >= to {
                return Ok(());
            }
            let failed = pvc["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| {
                    c["status"] == "True"
                        && c["type"]
                            .as_str()
                            .is_some_and(|t| t.ends_with("ResizeError"))
                });
            if let Some(c) = failed {
                return Err(BackendError::Failed(format!(
                    "PVC {name} could not be resized: {}",
                    c["message"].as_str().unwrap_or("no message")
                )));
            }
            if let Some(s) = pvc["status"]["allocatedResourceStatuses"]["storage"].as_str()
                && s.ends_with("Infeasible")
            {
                return Err(BackendError::Failed(format!(
                    "PVC {name} could not be resized: {s}"
                )));
            }
            if Instant::now() > deadline {
                return Err(BackendError::Timeout {
                    what: format!("PVC {name} to reach {to} bytes"),
                    after: self.timeouts.resize,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until a VMI other than `old_uid` runs.
    async fn await_new_vmi(&self, vm: &VmRef, old_uid: Option<String>) -> Result<(), BackendError> {
        let deadline = Instant::now() + self.timeouts.restart;
        loop {
            if let Some(vmi) = self.get(&vmi_resource(), &vm.namespace, &vm.name).await?
                && vmi["metadata"]["uid"].as_str().map(String::from) != old_uid
                && vmi["status"]["phase"] == "Running"
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BackendError::Timeout {
                    what: format!("{vm} to run again after the restart"),
                    after: self.timeouts.restart,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A VM's phase from its VMI: none, or one that finished, is a stopped VM.
pub fn vmi_phase(vmi: Option<&Value>) -> Phase {
    match vmi.and_then(|v| v["status"]["phase"].as_str()) {
        Some("Running") => Phase::Running,
        None | Some("Succeeded" | "Failed") => Phase::Stopped,
        Some(_) => Phase::Starting,
    }
}

/// The configuration a cluster VM has, with what the cluster does not hold taken from
/// `desired`.
pub fn config_of(vm: &Value, pvcs: &[Value], desired: &VmConfig) -> VmConfig {
    let spec = &vm["spec"]["template"]["spec"];
    let cpu = &spec["domain"]["cpu"];
    let mem = &spec["domain"]["memory"];
    let memory = bytes(&mem["guest"]).unwrap_or(desired.memory);
    let pvc = |claim: &str| pvcs.iter().find(|p| p["metadata"]["name"] == claim);
    let disks = spec["domain"]["devices"]["disks"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, d)| {
            let name = d["name"].as_str()?;
            let volume = spec["volumes"]
                .as_array()?
                .iter()
                .find(|v| v["name"] == name)?;
            let claim = wukong_kubevirt::render::volume_claim(volume)?;
            let p = pvc(claim);
            let size = p
                .and_then(|p| {
                    bytes(&p["status"]["capacity"]["storage"])
                        .or_else(|| bytes(&p["spec"]["resources"]["requests"]["storage"]))
                })
                .unwrap_or(0);
            let want = desired.disk(name);
            Some(DiskConfig {
                name: name.into(),
                size,
                boot: i == 0,
                hotpluggable: wukong_kubevirt::render::volume_hotpluggable(volume),
                bus: match d["disk"]["bus"].as_str() {
                    Some("scsi") => DiskBus::Scsi,
                    Some("sata") => DiskBus::Sata,
                    _ => DiskBus::Virtio,
                },
                filesystem: want.and_then(|w| w.filesystem.clone()),
                source: want.and_then(|w| w.source.clone()),
                snapshot_before_grow: want.is_some_and(|w| w.snapshot_before_grow),
                storage_class: want.and_then(|w| w.storage_class.clone()),
                volume_mode: want.and_then(|w| w.volume_mode),
            })
        })
        .collect();
    let networks = spec["domain"]["devices"]["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["state"] != "absent")
        .filter_map(|i| {
            let name = i["name"].as_str()?;
            let net = spec["networks"]
                .as_array()?
                .iter()
                .find(|n| n["name"] == name)?;
            Some(NicConfig {
                name: name.into(),
                source: match net["multus"]["networkName"].as_str() {
                    Some(m) => NetworkSource::Multus(m.into()),
                    None => NetworkSource::Pod,
                },
                mac: i["macAddress"].as_str().unwrap_or_default().into(),
                model: match i["model"].as_str() {
                    Some("e1000e") => NicModel::E1000e,
                    _ => NicModel::Virtio,
                },
            })
        })
        .collect();
    VmConfig {
        cpu: cpu["sockets"].as_u64().unwrap_or(1) as u32,
        memory,
        max_cpu: cpu["maxSockets"].as_u64().unwrap_or(desired.max_cpu as u64) as u32,
        max_memory: bytes(&mem["maxGuest"]).unwrap_or(memory),
        disks,
        networks,
        run_strategy: match vm["spec"]["runStrategy"].as_str() {
            Some("Halted") => RunStrategy::Halted,
            Some("Manual") => RunStrategy::Manual,
            Some("RerunOnFailure") => RunStrategy::RerunOnFailure,
            Some("Once") => RunStrategy::Once,
            _ => RunStrategy::Always,
        },
        restart_policy: desired.restart_policy,
        maintenance_window: desired.maintenance_window.clone(),
        boot: wukong_kubevirt::render::observed_boot(spec),
        cloud_init: wukong_kubevirt::render::observed_cloud_init(spec),
        autoscaling: desired.autoscaling.clone(),
    }
}

/// The guest's view from the VMI status and the agent's filesystem list.
pub fn guest_view(vmi: &Value, filesystems: &[Value]) -> GuestView {
    let st = &vmi["status"];
    let topo = &st["currentCPUTopology"];
    let n = |k: &str| topo[k].as_u64().unwrap_or(1);
    let mut disks = BTreeMap::new();
    for v in st["volumeStatus"].as_array().into_iter().flatten() {
        let Some(name) = v["name"].as_str() else {
            continue;
        };
        let target = v["target"].as_str().unwrap_or_default();
        let serial = vmi["spec"]["domain"]["devices"]["disks"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["name"] == name))
            .and_then(|d| d["serial"].as_str())
            .unwrap_or(name);
        let fs = filesystems.iter().find(|f| {
            f["disk"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d["serial"] == serial))
        });
        let disk_name = fs.and_then(|f| f["diskName"].as_str()).unwrap_or(target);
        disks.insert(
            name.to_string(),
            GuestDiskView {
                size: v["size"].as_u64().unwrap_or(0),
                filesystem_size: fs.and_then(|f| f["totalBytes"].as_u64()),
                partitioned: fs.is_some() && disk_name != target,
                device: Some(target.to_string()),
                partition: (fs.is_some() && disk_name != target).then(|| disk_name.to_string()),
                mount: fs.and_then(|f| f["mountPoint"].as_str()).map(String::from),
                fs_type: fs
                    .and_then(|f| f["fileSystemType"].as_str())
                    .map(String::from),
                ..Default::default()
            },
        );
    }
    GuestView {
        cpus_online: (n("sockets") * n("cores") * n("threads")) as u32,
        memory_total: bytes(&st["memory"]["guestCurrent"]).unwrap_or(0),
        disks,
        macs: st["interfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| {
                i["infoSource"]
                    .as_str()
                    .is_some_and(|s| s.contains("guest-agent"))
            })
            .filter_map(|i| i["mac"].as_str().map(str::to_lowercase))
            .collect(),
        boot_id: vmi["metadata"]["uid"].as_str().map(String::from),
        memory_offline: 0,
    }
}

impl Backend for KubevirtBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Kubevirt
    }

    async fn observe(&self, vm: &VmRef) -> Result<Observed, BackendError> {
        let object = self
            .get(&vm_resource(), &vm.namespace, &vm.name)
            .await?
            .ok_or_else(|| BackendError::NotFound(vm.to_string()))?;
        let vmi = self.get(&vmi_resource(), &vm.namespace, &vm.name).await?;
        let pvcs = self.pvcs(vm, &object).await?;
        self.seen.lock().expect("seen").insert(
            vm.clone(),
            (Some(object.clone()), vmi.clone(), pvcs.clone()),
        );
        let desired = self
            .desired
            .lock()
            .expect("desired")
            .get(vm)
            .cloned()
            .ok_or_else(|| BackendError::Failed(format!("no desired state for {vm}")))?;
        let mut config = config_of(&object, &pvcs, &desired);
        let running = vmi
            .as_ref()
            .is_some_and(|v| v["status"]["phase"] == "Running");
        let starts =
            |r: RunStrategy| matches!(r, RunStrategy::Always | RunStrategy::RerunOnFailure);
        // KubeVirt runs the VM by itself once it can (disks bound and imported, a node found).
        let starting = !running && starts(config.run_strategy);
        self.phases.lock().expect("phases").insert(
            vm.clone(),
            match vmi_phase(vmi.as_ref()) {
                Phase::Stopped if starting => Phase::Starting,
                p => p,
            },
        );
        // An instance that exists but does not run yet was made from the template as it is:
        // wait for it. Without one, the template is what changes (the start will use it).
        if vmi.is_some() && starting && starts(desired.run_strategy) {
            return Err(BackendError::Settling(format!(
                "KubeVirt is starting the VM ({})",
                object["status"]["printableStatus"]
                    .as_str()
                    .unwrap_or("no status yet")
            )));
        }
        // What is in effect is what the running instance reports, not what the template asks.
        if let Some(v) = vmi.as_ref().filter(|_| running) {
            if let Some(s) = v["status"]["currentCPUTopology"]["sockets"].as_u64() {
                config.cpu = s as u32;
            }
            if let Some(m) = bytes(&v["status"]["memory"]["guestCurrent"]) {
                config.memory = m;
            }
        }
        let guest = match &vmi {
            Some(v)
                if running
                    && condition(v, "AgentConnected").is_some_and(|c| c["status"] == "True") =>
            {
                // A failed filesystem list is unknown, not "no filesystems": no guest view
                // then, so nothing is planned from it (never a format or a mount).
                let probing = self.probing.lock().expect("probing").contains(vm);
                let agent = crate::guest::VmAgent {
                    guest: &self.guest,
                    vm,
                };
                // KubeVirt reports the domain's vCPUs and memory, not whether the guest onlined
                // them: an operation verifies in the guest itself.
                let probed = match probing {
                    true => match self.guest.ops(&agent).view().await {
                        Ok(view) => Some(view),
                        Err(e) => {
                            tracing::debug!(%vm, "guest probe failed, using the VMI: {e}");
                            None
                        }
                    },
                    false => None,
                };
                match probed {
                    Some(view) => {
                        config.cpu = config.cpu.min(view.cpus_online);
                        Some(view)
                    }
                    None => match self.guest.filesystems(vm).await {
                        Ok(filesystems) => {
                            let mut view = guest_view(v, &filesystems);
                            // Without exec the agent's own count is all there is.
                            if probing && let Ok(online) = self.guest.online_vcpus(vm).await {
                                view.cpus_online = online;
                                config.cpu = config.cpu.min(online);
                            }
                            Some(view)
                        }
                        Err(e) => {
                            tracing::debug!(%vm, "filesystem list unknown: {e}");
                            None
                        }
                    },
                }
            }
            _ => None,
        };
        let boot_memory = vmi
            .as_ref()
            .and_then(|v| bytes(&v["status"]["memory"]["guestAtBoot"]))
            .unwrap_or(config.memory);
        Ok(Observed {
            config,
            running,
            starting,
            boot_memory,
            guest,
        })
    }

    async fn capabilities(
        &self,
        vm: &VmRef,
        observed: &Observed,
    ) -> Result<Capabilities, BackendError> {
        let facts = self.facts(vm).await?;
        let disks: Vec<(String, Option<String>)> = observed
            .config
            .disks
            .iter()
            .map(|d| (d.name.clone(), d.storage_class.clone()))
            .collect();
        let p = preflight(&vm.name, &facts, &disks);
        self.declarative
            .lock()
            .expect("declarative")
            .insert(vm.clone(), p.declarative_hotplug);
        Ok(p.capabilities)
    }

    async fn apply_step(
        &self,
        vm: &VmRef,
        step: &Step,
        desired: &VmConfig,
        progress: &dyn StepProgress,
    ) -> Result<(), BackendError> {
        let plan = Plan {
            steps: vec![step.clone()],
            restart: None,
        };
        self.carry_out(vm, &plan, desired, progress).await?;
        wukong_engine::failpoint::hit("kubevirt.edited");
        if let Action::GrowDisk { disk, to, .. } = &step.action {
            self.await_capacity(vm, disk, *to, progress).await?;
        }
        Ok(())
    }

    async fn undo_step(&self, vm: &VmRef, step: &Step) -> Result<bool, BackendError> {
        // A hot-plugged disk or NIC the guest never saw is taken out again.
        let undo = match &step.action {
            Action::AttachDisk { disk } => Action::DetachDisk {
                disk: disk.name.clone(),
            },
            Action::AddNic { nic } => Action::RemoveNic { nic: nic.clone() },
            _ => return Ok(false),
        };
        let desired = self.desired.lock().expect("desired").get(vm).cloned();
        let Some(desired) = desired else {
            return Ok(false);
        };
        let step = Step {
            action: undo,
            ..step.clone()
        };
        self.apply_step(vm, &step, &desired, &Quiet)
            .await
            .map(|()| true)
    }

    async fn restart(
        &self,
        vm: &VmRef,
        desired: &VmConfig,
        steps: &[Step],
    ) -> Result<(), BackendError> {
        let old = self
            .get(&vmi_resource(), &vm.namespace, &vm.name)
            .await?
            .and_then(|v| v["metadata"]["uid"].as_str().map(String::from));
        let plan = Plan {
            steps: steps.to_vec(),
            restart: Some(wukong_planner::RestartDecision {
                policy: desired.restart_policy,
                allowed_now: true,
                reason: "the engine restarts now".into(),
                next_window: None,
            }),
        };
        self.carry_out(vm, &plan, desired, &Quiet).await?;
        wukong_engine::failpoint::hit("kubevirt.restart-requested");
        self.await_new_vmi(vm, old).await
    }
}

/// Deletes the PVCs Wukong made for `vm` (when its disks are not kept).
pub async fn delete_disks(client: &Client, vm: &VmRef) -> Result<usize, kube::Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &vm.namespace, &pvc_resource());
    let lp = ListParams::default().labels(&format!("{NAME_LABEL}={}", vm.name));
    let list = api.list(&lp).await?;
    for p in &list.items {
        api.delete(&p.name_any(), &DeleteParams::default()).await?;
    }
    Ok(list.items.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_create_refused_for_a_terminating_namespace_is_told_apart() {
        // The Status a kube-apiserver's NamespaceLifecycle admission answers with.
        let status = |cause: &str| -> kube::Error {
            kube::Error::Api(Box::new(
                serde_json::from_value(json!({
                    "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403,
                    "reason": "Forbidden",
                    "message": "persistentvolumeclaims \"w-data\" is forbidden: unable to create new content in namespace t because it is being terminated",
                    "details": {"name": "w-data", "kind": "persistentvolumeclaims",
                                "causes": [{"reason": cause, "message": "namespace t is being terminated", "field": "metadata.namespace"}]}
                }))
                .unwrap(),
            ))
        };
        assert!(namespace_terminating(&status("NamespaceTerminating")));
        assert!(
            !namespace_terminating(&status("")),
            "a plain 403 (RBAC) is an error"
        );
    }

    #[test]
    fn guest_view_counts_cpus_and_reads_filesystems() {
        let vmi = json!({
            "metadata": {"uid": "u1"},
            "spec": {"domain": {"devices": {"disks": [{"name": "system", "serial": "system"}, {"name": "data", "serial": "data"}]}}},
            "status": {
                "currentCPUTopology": {"sockets": 3, "cores": 1, "threads": 1},
                "memory": {"guestCurrent": "2Gi"},
                "volumeStatus": [{"name": "system", "target": "vda", "size": 1000}, {"name": "data", "target": "vdb", "size": 2000}],
                "interfaces": [{"name": "default", "mac": "02:AA:00:00:00:01", "infoSource": "domain, guest-agent"},
                               {"name": "lan", "mac": "02:aa:00:00:00:02", "infoSource": "domain"}],
            }
        });
        let fs = vec![
            json!({"diskName": "vdb1", "mountPoint": "/data", "fileSystemType": "ext4", "totalBytes": 1900,
                             "disk": [{"serial": "data"}]}),
        ];
        let g = guest_view(&vmi, &fs);
        assert_eq!(g.cpus_online, 3);
        assert_eq!(g.memory_total, 2 << 30);
        assert_eq!(
            g.macs,
            vec!["02:aa:00:00:00:01"],
            "only what the guest agent saw"
        );
        let data = &g.disks["data"];
        assert_eq!((data.size, data.filesystem_size), (2000, Some(1900)));
        assert_eq!(data.partition.as_deref(), Some("vdb1"));
        assert!(g.disks["system"].filesystem_size.is_none());
        assert_eq!(g.boot_id.as_deref(), Some("u1"));
    }
}

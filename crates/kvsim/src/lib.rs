//! A simulated KubeVirt that runs beside any Kubernetes API server — the project's fake or a
//! real kube-apiserver — and talks to it only over HTTP, as KubeVirt's own components do:
//!
//! - controllers ([`control`]) that watch `VirtualMachine`s and PVCs, start VMIs with launcher
//!   pods, propagate the live fields (CPU sockets, memory, hot-pluggable volumes, bridge NICs)
//!   and mark the rest `RestartRequired` (sticky, blocking CPU/memory/volume propagation as
//!   KubeVirt does), and bind and resize PVCs (the CSI side);
//! - an HTTPS server ([`serve`]) that is both virt-api — the `subresources.kubevirt.io`
//!   aggregated API (`restart`/`start`/`stop`/`addvolume`/`removevolume`,
//!   `filesystemlist`/`guestosinfo`), registered by an `APIService` — and the node's kubelet,
//!   whose `/exec` the API server proxies pod exec to (the launcher's `compute` container runs
//!   `virsh qemu-agent-command` against a simulated guest agent, [`guest`]).
//!
//! [`start`] registers all of it (a `KubeVirt` CR with live updates on, two StorageClasses,
//! the `APIService` with its `ExternalName` Service, a Node) and returns a handle for faults.
#![forbid(unsafe_code)]

mod cdi;
mod control;
mod guest;
mod objects;
mod serve;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kube::Client;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use guest::Guests;
use objects::Objects;

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
    /// `virtualmachines/restart` is refused (virt-api's own authorization says no).
    pub refuse_restart: bool,
    /// The guest agent refuses `guest-exec` (a locked-down agent policy).
    pub agent_blocks_exec: bool,
    /// DataVolumes whose import never gets anywhere (a URL that does not answer): CDI leaves
    /// them ImportInProgress with progress `N/A` while the importer pod restarts.
    pub import_stuck: HashSet<String>,
    /// DataVolumes whose import stops halfway (ImportInProgress, 47.00%) until taken out.
    pub import_held: HashSet<String>,
    /// Work running in a VM's guest, in vCPUs kept busy (its `/proc/stat` counters move so).
    pub cpu_load: HashMap<String, f64>,
    /// Bytes used on the filesystem of a disk, by PVC name (else a fiftieth of it).
    pub fs_used: HashMap<String, u64>,
    /// Memory in use in a VM's guest (MemTotal − MemAvailable), bytes, by VM name (else 30 %
    /// of MemTotal).
    pub mem_used: HashMap<String, u64>,
}

/// What a controller worker is asked to look at.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Work {
    /// The VM `(namespace, name)`.
    Vm(String, String),
    /// The PVC `(namespace, name)`.
    Pvc(String, String),
    /// The pod `(namespace, name)` on this node, being deleted.
    PodGone(String, String),
    /// The DataVolume `(namespace, name)` (CDI's importer).
    Dv(String, String),
    /// Every PVC and VM.
    All,
}

/// `(namespace, name)` of an object.
type ObjectKey = (String, String);

/// The `(namespace, name)` of `object`.
pub(crate) fn key(object: &Value) -> ObjectKey {
    let text = |k: &str| {
        object["metadata"][k]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    (text("namespace"), text("name"))
}

fn version(object: &Value) -> String {
    object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The simulated KubeVirt.
pub struct Sim {
    objects: Objects,
    guests: Mutex<Guests>,
    /// Which VM uses each claim `(namespace, claim)`, as last seen.
    claims: Mutex<std::collections::BTreeMap<ObjectKey, String>>,
    /// One reconcile or subresource call at a time per VM, as KubeVirt's workers take a VM.
    vm_locks: Mutex<std::collections::HashMap<ObjectKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Work queued and not yet taken (a work queue: the same work is queued once).
    pending: Mutex<HashSet<Work>>,
    faults: Mutex<Faults>,
    /// The resourceVersion of the simulator's last status write per `(kind, ns, name)`.
    written: Mutex<std::collections::HashMap<(String, ObjectKey), String>>,
    /// Pod execs served by the simulated kubelet.
    execs: AtomicU64,
    /// The workers' queues (work goes to one by its VM, so one VM's work stays in order).
    shards: Vec<mpsc::UnboundedSender<Work>>,
}

/// Controller workers.
const WORKERS: usize = 4;

impl Sim {
    /// Queues `w` unless it is queued already.
    fn kick(&self, w: Work) {
        if !self.pending.lock().expect("pending").insert(w.clone()) {
            return;
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        match &w {
            Work::Vm(ns, name)
            | Work::Pvc(ns, name)
            | Work::PodGone(ns, name)
            | Work::Dv(ns, name) => (ns, name).hash(&mut h),
            Work::All => {}
        }
        let _ = self.shards[h.finish() as usize % self.shards.len()].send(w);
    }

    /// Notes `object` (of `kind`) as written by the simulator itself.
    fn wrote(&self, kind: &'static str, object: &Value) {
        self.written
            .lock()
            .expect("written")
            .insert((kind.to_string(), key(object)), version(object));
    }

    /// Whether `object` (of `kind`) is exactly what the simulator last wrote of it.
    fn own_write(&self, kind: &str, object: &Value) -> bool {
        self.written
            .lock()
            .expect("written")
            .get(&(kind.to_string(), key(object)))
            .is_some_and(|rv| *rv == version(object))
    }

    /// The lock of VM `(ns, name)`.
    fn vm_lock(&self, ns: &str, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.vm_locks
            .lock()
            .expect("vm locks")
            .entry((ns.to_string(), name.to_string()))
            .or_default()
            .clone()
    }
}

/// A running simulator; dropping it stops it.
pub struct Running {
    /// The simulator.
    pub sim: Arc<Sim>,
    /// Where its HTTPS server (virt-api and kubelet) listens.
    pub addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Running {
    /// Changes the injected faults; the controllers then go over everything again (what
    /// failed is tried again, as their periodic resyncs would).
    pub fn faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.sim.faults.lock().expect("faults"));
        self.sim.kick(Work::All);
    }

    /// Pod execs the simulated kubelet has served.
    pub fn execs(&self) -> u64 {
        self.sim.execs.load(Ordering::Relaxed)
    }

    /// What `filesystemlist` answers for VMI `name` in `ns`, if it runs.
    pub async fn filesystems_of(&self, ns: &str, name: &str) -> Option<Vec<Value>> {
        let vmi = self.sim.objects.get(objects::VMI, ns, name).await.ok()??;
        Some(self.sim.filesystems(ns, &vmi))
    }
}

/// The name of the Node the simulated kubelet stands for.
pub const NODE: &str = "node-1";

/// Knobs.
#[derive(Clone, Debug)]
pub struct Options {
    /// How often the controllers go over every PVC and VM whatever the watches said (none:
    /// only when told to, by [`Running::faults`]).
    pub resync: Option<std::time::Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            resync: Some(std::time::Duration::from_secs(10)),
        }
    }
}

/// Starts the simulator against the API server `client` talks to (with rights to write
/// everything KubeVirt, CSI and a kubelet write, and to register an APIService and a Node).
pub async fn start(client: Client) -> anyhow::Result<Running> {
    start_with(client, Options::default()).await
}

/// [`start`] with options.
pub async fn start_with(client: Client, opts: Options) -> anyhow::Result<Running> {
    let (shards, queues): (Vec<_>, Vec<_>) =
        (0..WORKERS).map(|_| mpsc::unbounded_channel()).unzip();
    let sim = Arc::new(Sim {
        objects: Objects::new(client),
        guests: Mutex::new(Guests::default()),
        claims: Mutex::default(),
        vm_locks: Mutex::default(),
        written: Mutex::default(),
        pending: Mutex::default(),
        faults: Mutex::new(Faults::default()),
        execs: AtomicU64::new(0),
        shards,
    });
    let (listener, tls) = serve::listen().await?;
    let addr = listener.local_addr()?;
    let mut tasks = vec![tokio::spawn(serve::run(sim.clone(), listener, tls))];
    register(&sim.objects, addr.port()).await?;
    tasks.extend(control::spawn(sim.clone(), queues, opts.resync));
    Ok(Running { sim, addr, tasks })
}

/// Creates `object` unless it exists.
async fn ensure(
    objects: &Objects,
    res: objects::Res,
    ns: &str,
    object: Value,
) -> anyhow::Result<()> {
    match objects.create(res, ns, object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(anyhow::anyhow!("creating a {}: {e}", res.kind())),
    }
}

async fn register(objects: &Objects, port: u16) -> anyhow::Result<()> {
    use objects::*;
    ensure(
        objects,
        NAMESPACE,
        "",
        json!({"metadata": {"name": "kubevirt"}}),
    )
    .await?;
    ensure(objects, KUBEVIRT, "kubevirt", json!({
        "metadata": {"name": "kubevirt", "namespace": "kubevirt"},
        "spec": {"workloadUpdateStrategy": {"workloadUpdateMethods": ["LiveMigrate"]},
                 "configuration": {"vmRolloutStrategy": "LiveUpdate",
                                   "developerConfiguration": {"featureGates": ["DeclarativeHotplugVolumes"]}}}}))
    .await?;
    for (name, expandable, default) in [("expandable", true, true), ("fixed", false, false)] {
        let mut sc = json!({"metadata": {"name": name}, "provisioner": "csi.example.dev",
            "allowVolumeExpansion": expandable});
        if default {
            sc["metadata"]["annotations"] =
                json!({"storageclass.kubernetes.io/is-default-class": "true"});
        }
        ensure(objects, STORAGE_CLASS, "", sc).await?;
    }
    // virt-api: an APIService whose Service names this host (an ExternalName, so a server
    // without a service network reaches it on loopback).
    ensure(
        objects,
        SERVICE,
        "kubevirt",
        json!({
        "metadata": {"name": "virt-api", "namespace": "kubevirt"},
        "spec": {"type": "ExternalName", "externalName": "localhost",
                 "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}}),
    )
    .await?;
    ensure(objects, API_SERVICE, "", json!({
        "metadata": {"name": "v1.subresources.kubevirt.io"},
        "spec": {"group": "subresources.kubevirt.io", "version": "v1",
                 "service": {"namespace": "kubevirt", "name": "virt-api", "port": port},
                 "insecureSkipTLSVerify": true, "groupPriorityMinimum": 1000, "versionPriority": 15}}))
    .await?;
    // The kubelet: a Node whose status says where it serves.
    ensure(objects, NODE_RES, "", json!({"metadata": {"name": NODE}})).await?;
    let mut node = objects
        .get(NODE_RES, "", NODE)
        .await?
        .ok_or_else(|| anyhow::anyhow!("node {NODE} vanished"))?;
    node["status"] = json!({
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": "localhost"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "the simulated kubelet is ready"}],
    });
    objects
        .replace_status(NODE_RES, "", NODE, &node)
        .await
        .map_err(|e| anyhow::anyhow!("writing the status of node {NODE}: {e}"))?;
    Ok(())
}

pub(crate) fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|x| x["name"] == name)
}

/// The PVC behind a volume: its claim, or its DataVolume's (which has the same name).
pub(crate) fn claim(volume: &Value) -> Option<&str> {
    volume["persistentVolumeClaim"]["claimName"]
        .as_str()
        .or(volume["dataVolume"]["name"].as_str())
}

pub(crate) fn hotpluggable(volume: &Value) -> bool {
    volume["persistentVolumeClaim"]["hotpluggable"] == true
        || volume["dataVolume"]["hotpluggable"] == true
}

pub(crate) fn launcher(vm: &str) -> String {
    format!("virt-launcher-{vm}")
}

//! The local backend: `wukong_engine::Backend` on QEMU. Observes a VM through QMP (devices,
//! vCPU slots, virtio-mem) and the guest agent (what the guest sees); carries out each plan
//! step with QMP commands and guest commands (argv lists); restarts into a new definition.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qapi::qmp;
use serde_json::json;
use tokio::sync::broadcast;
use wukong_api::{BackendKind, DiskConfig, NicConfig, VmConfig};
use wukong_engine::{Backend, BackendError, StepProgress, VmRef};
use wukong_planner::effect::apply;
use wukong_planner::{
    Action, Capabilities, CpuRemoval, GuestView, Mode, Observed, QemuVersion, Step,
};

use crate::machine::{
    self, Accel, BootSource, Machine, VMEM_ID, VmFiles, disk_id, netdev_id, nic_driver, nic_id,
    node_name, port_id,
};
use crate::paths::{Home, private_dir};
use crate::process;
use crate::qga::Qga;
use wukong_guest::Guest;

/// How long a long guest command (format, filesystem growth) may take.
const LONG_GUEST_COMMAND: Duration = Duration::from_secs(120);
use crate::qmp::{BlockdevAdd, NetdevAdd, Qmp, SnapshotInternal};
use crate::store::{Store, StoreError, VmRecord};

/// Annotation that lets a detach go on when the disk is busy in the guest (lazy unmount).
pub const FORCE_DETACH: &str = "vm.novasphere.dev/force-detach";

/// Timeouts of the local backend.
#[derive(Clone, Copy, Debug)]
pub struct LocalTimeouts {
    /// Boot to guest agent.
    pub boot: Duration,
    /// One guest agent call (probe, exec).
    pub agent: Duration,
    /// A device the guest must release (unplug).
    pub unplug: Duration,
    /// Memory to be plugged or unplugged by the guest.
    pub memory: Duration,
    /// A guest shutdown before QEMU is told to quit.
    pub shutdown: Duration,
}

impl Default for LocalTimeouts {
    fn default() -> Self {
        LocalTimeouts {
            boot: Duration::from_secs(120),
            agent: Duration::from_secs(10),
            unplug: Duration::from_secs(15),
            memory: Duration::from_secs(30),
            shutdown: Duration::from_secs(30),
        }
    }
}

/// Settings of the local backend.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    /// Accelerator.
    pub accel: Accel,
    /// What VMs boot.
    pub boot: BootSource,
    /// Free root ports reserved for hot-plug.
    pub hotplug_ports: u32,
    /// Take vCPUs offline in the guest instead of unplugging them, whatever the QEMU version.
    pub force_guest_offline: bool,
    /// Make changes live where possible; `false` does every change by restart (the way
    /// platforms without live resize do it, kept for comparison).
    pub live: bool,
    /// Timeouts.
    pub timeouts: LocalTimeouts,
}

/// The guest agent of one VM, held for a run of guest-side operations.
struct GuestSession {
    qga: Qga,
    timeout: Duration,
    _lock: tokio::sync::OwnedMutexGuard<()>,
}

impl GuestSession {
    fn ops(&self) -> Guest<'_, Qga> {
        Guest::new(&self.qga, self.timeout, LONG_GUEST_COMMAND)
    }
}

/// The local backend.
pub struct LocalBackend {
    home: Home,
    store: Arc<Store>,
    options: LocalOptions,
    /// The guest agent serves one client at a time: one lock per VM.
    agent_locks: Mutex<HashMap<VmRef, Arc<tokio::sync::Mutex<()>>>>,
}

fn failed(e: impl std::fmt::Display) -> BackendError {
    BackendError::Failed(e.to_string())
}

impl From<StoreError> for BackendError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(v) => BackendError::NotFound(v),
            other => BackendError::Failed(other.to_string()),
        }
    }
}

impl LocalBackend {
    /// A backend over `store`, keeping VM files under `home`.
    pub fn new(home: Home, store: Arc<Store>, options: LocalOptions) -> Self {
        LocalBackend {
            home,
            store,
            options,
            agent_locks: Mutex::new(HashMap::new()),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The options.
    pub fn options(&self) -> &LocalOptions {
        &self.options
    }

    /// The VM's private directory.
    pub fn dir(&self, vm: &VmRef) -> PathBuf {
        self.home.vm_dir(vm)
    }

    fn record(&self, vm: &VmRef) -> Result<VmRecord, BackendError> {
        self.store
            .get(vm)?
            .ok_or_else(|| BackendError::NotFound(vm.to_string()))
    }

    fn update(&self, vm: &VmRef, f: impl FnOnce(&mut VmRecord)) -> Result<VmRecord, BackendError> {
        self.store
            .update::<StoreError>(vm, None, |r| {
                f(r);
                Ok(())
            })
            .map_err(Into::into)
    }

    fn agent_lock(&self, vm: &VmRef) -> Arc<tokio::sync::Mutex<()>> {
        self.agent_locks
            .lock()
            .expect("agent lock map")
            .entry(vm.clone())
            .or_default()
            .clone()
    }

    /// Runs `f` with the VM's guest agent, one caller at a time.
    pub async fn with_agent<T, F, Fut>(&self, vm: &VmRef, f: F) -> Result<T, BackendError>
    where
        F: FnOnce(Qga) -> Fut,
        Fut: std::future::Future<Output = Result<T, BackendError>>,
    {
        let lock = self.agent_lock(vm);
        let _guard = lock.lock().await;
        let qga = Qga::connect(&VmFiles::qga(&self.dir(vm)), self.options.timeouts.agent).await?;
        f(qga).await
    }

    async fn qmp(&self, vm: &VmRef) -> Result<Qmp, BackendError> {
        let dir = self.dir(vm);
        if process::running_pid(&dir).is_none() {
            return Err(BackendError::Unreachable(format!("VM {vm} is not running")));
        }
        Qmp::connect(&VmFiles::qmp(&dir), Duration::from_secs(5)).await
    }

    /// The VM's guest agent for the guest-side operations, held by one caller at a time.
    async fn guest(&self, vm: &VmRef) -> Result<GuestSession, BackendError> {
        let lock = self.agent_lock(vm).lock_owned().await;
        let qga = Qga::connect(&VmFiles::qga(&self.dir(vm)), self.options.timeouts.agent).await?;
        Ok(GuestSession {
            qga,
            timeout: self.options.timeouts.agent,
            _lock: lock,
        })
    }

    /// The guest's view, or `None` when its agent does not answer in time.
    pub async fn guest_view(&self, vm: &VmRef) -> Option<GuestView> {
        async { self.guest(vm).await?.ops().view().await }
            .await
            .ok()
    }

    /// Whether QEMU runs.
    pub fn is_running(&self, vm: &VmRef) -> bool {
        process::running_pid(&self.dir(vm)).is_some()
    }

    /// Boots the VM from its recorded definition: disk images, QEMU, until the agent answers.
    /// Returns the time to the guest agent.
    pub async fn start(&self, vm: &VmRef) -> Result<Duration, BackendError> {
        process::check_tools()?;
        let dir = self.dir(vm);
        if process::running_pid(&dir).is_some() {
            return Ok(Duration::ZERO);
        }
        private_dir(&dir).map_err(failed)?;
        crate::paths::check_socket_path(&VmFiles::qmp(&dir)).map_err(BackendError::Failed)?;
        let rec = self.record(vm)?;
        let def = rec.definition.clone();
        for d in &def.disks {
            let src = d
                .source
                .as_ref()
                .map(|s| std::path::PathBuf::from(&s.image));
            process::ensure_disk_image(&VmFiles::disk(&dir, &d.name), d.size, src.as_deref())
                .await?;
        }
        let m = Machine {
            name: format!("{}_{}", vm.namespace, vm.name),
            dir: &dir,
            config: &def,
            boot: &self.options.boot,
            accel: self.options.accel,
            hotplug_ports: self.options.hotplug_ports,
        };
        let args = machine::qemu_args(&m);
        let total = machine::root_ports(&m);
        // Boot devices take the ports in the order the command line gives them.
        let mut ports = std::collections::BTreeMap::new();
        let mut n = 3;
        let mut boot_disks: Vec<&DiskConfig> = def.disks.iter().collect();
        boot_disks.sort_by_key(|d| !d.boot);
        for d in boot_disks {
            ports.insert(disk_id(&d.name), port_id(n));
            n += 1;
        }
        for nic in &def.networks {
            ports.insert(nic_id(&nic.name), port_id(n));
            n += 1;
        }
        process::spawn(&dir, &args).await?;
        self.update(vm, |r| {
            r.boot_memory = def.memory;
            r.vcpu_creations = def.cpu;
            r.ports = ports;
            r.ports_total = total;
        })?;
        // Formats and mounts are planned steps of the operation that started it (the engine
        // plans again once the guest runs), not part of the boot.
        process::wait_for_agent(&dir, self.options.timeouts.boot).await
    }

    /// Stops the VM (guest shutdown, QMP quit, kill).
    pub async fn stop(&self, vm: &VmRef) -> Result<process::StopPath, BackendError> {
        let lock = self.agent_lock(vm);
        let _guard = lock.lock().await;
        process::stop(&self.dir(vm), self.options.timeouts.shutdown).await
    }

    /// Runs a command in the guest (argv, no shell).
    pub async fn exec(
        &self,
        vm: &VmRef,
        argv: &[String],
        timeout: Duration,
    ) -> Result<crate::qga::ExecOutput, BackendError> {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.with_agent(vm, |q| async move { q.exec(&argv, None, timeout).await })
            .await
    }

    /// Makes the disk's filesystem exist (formatting only a blank disk), be mounted where the
    /// spec says, and fill its disk.
    async fn ensure_filesystem(&self, vm: &VmRef, disk: &DiskConfig) -> Result<(), BackendError> {
        let Some(fs) = disk.filesystem.clone() else {
            return Ok(());
        };
        let name = disk.name.clone();
        self.guest(vm)
            .await?
            .ops()
            .ensure_filesystem(&name, &fs)
            .await
    }

    async fn free_port(&self, vm: &VmRef, device: &str) -> Result<String, BackendError> {
        let rec = self.record(vm)?;
        let used: std::collections::BTreeSet<&String> = rec.ports.values().collect();
        let port = (3..=rec.ports_total)
            .map(port_id)
            .find(|p| !used.contains(p))
            .ok_or_else(|| failed("no free PCIe root port"))?;
        let device = device.to_string();
        let chosen = port.clone();
        // Recorded before the device is added: a crash in between leaves a reservation that
        // the next observation releases.
        self.update(vm, |r| {
            r.ports.insert(device, chosen);
        })?;
        Ok(port)
    }

    fn release_port(&self, vm: &VmRef, device: &str) -> Result<(), BackendError> {
        self.update(vm, |r| {
            r.ports.remove(device);
        })?;
        Ok(())
    }

    async fn add_vcpus(
        &self,
        vm: &VmRef,
        to: u32,
        progress: &dyn StepProgress,
    ) -> Result<(), BackendError> {
        let t = self.options.timeouts.agent;
        // vCPUs that are plugged but offline come back online first; only the rest are
        // hot-added.
        let plugged = self
            .with_agent(vm, |q| async move { q.vcpus(t).await })
            .await?
            .len() as u32;
        let need = to.saturating_sub(plugged);
        if need > 0 {
            self.hot_add_vcpus(vm, need).await?;
        }
        // A guest with a rule onlines hot-added vCPUs itself; any it leaves offline (new or
        // plugged before) are onlined through the agent as soon as they appear.
        let within = self.options.timeouts.unplug;
        let by = self.guest(vm).await?.ops().online_vcpus(to, within).await?;
        progress.progress(u64::from(to), u64::from(to), by.describe());
        Ok(())
    }

    /// Hot-adds `need` vCPUs, each into the lowest free slot.
    async fn hot_add_vcpus(&self, vm: &VmRef, need: u32) -> Result<(), BackendError> {
        let qmp = self.qmp(vm).await?;
        for _ in 0..need {
            let slots = qmp.run(qmp::query_hotpluggable_cpus {}).await?;
            let free = slots
                .iter()
                .filter(|s| s.qom_path.is_none())
                .min_by_key(|s| (s.props.socket_id, s.props.core_id, s.props.thread_id))
                .ok_or_else(|| failed("no free vCPU slot (maxCpu reached)"))?;
            let p = &free.props;
            let mut props = serde_json::Map::new();
            for (k, v) in [
                ("socket-id", p.socket_id),
                ("core-id", p.core_id),
                ("thread-id", p.thread_id),
                ("node-id", p.node_id),
                ("die-id", p.die_id),
            ] {
                if let Some(v) = v {
                    props.insert(k.into(), json!(v));
                }
            }
            let id = format!(
                "cpu-{}-{}-{}",
                p.socket_id.unwrap_or(0),
                p.core_id.unwrap_or(0),
                p.thread_id.unwrap_or(0)
            );
            // Counted before it exists: under TCG every creation uses up a slot for good.
            self.update(vm, |r| r.vcpu_creations += 1)?;
            qmp.device_add(&free.type_, &id, None, props).await?;
        }
        Ok(())
    }

    async fn remove_vcpus(
        &self,
        vm: &VmRef,
        to: u32,
        method: CpuRemoval,
    ) -> Result<(), BackendError> {
        let t = self.options.timeouts.agent;
        let method = if self.options.force_guest_offline {
            CpuRemoval::GuestOffline
        } else {
            method
        };
        let online = online_vcpus(
            &self
                .with_agent(vm, |q| async move { q.vcpus(t).await })
                .await?,
        );
        let surplus = online.len().saturating_sub(to as usize);
        if method == CpuRemoval::Unplug {
            // Only hot-added vCPUs can be unplugged; the guest takes each one offline when
            // QEMU asks. Boot vCPUs fall back to going offline in the guest.
            let qmp = self.qmp(vm).await?;
            let mut unplugged = 0;
            let hot = hot_added_cpus(&qmp).await?;
            for id in hot.iter().rev().take(surplus) {
                let deadline = tokio::time::Instant::now() + self.options.timeouts.unplug;
                qmp.run(qmp::device_del { id: id.clone() }).await?;
                loop {
                    if !hot_added_cpus(&qmp).await?.contains(id) {
                        break;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(BackendError::Timeout {
                            what: format!("the guest to release vCPU {id}"),
                            after: self.options.timeouts.unplug,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                unplugged += 1;
            }
            if unplugged == surplus {
                return Ok(());
            }
        }
        let still = online_vcpus(
            &self
                .with_agent(vm, |q| async move { q.vcpus(t).await })
                .await?,
        );
        let surplus = still.len().saturating_sub(to as usize);
        let off: Vec<(i64, bool)> = still
            .iter()
            .rev()
            .take(surplus)
            .map(|id| (*id, false))
            .collect();
        if !off.is_empty() {
            self.with_agent(vm, |q| async move { q.set_vcpus(&off, t).await })
                .await?;
        }
        Ok(())
    }

    async fn resize_memory(
        &self,
        vm: &VmRef,
        to: u64,
        progress: &dyn StepProgress,
    ) -> Result<(), BackendError> {
        let rec = self.record(vm)?;
        let requested = to
            .checked_sub(rec.boot_memory)
            .ok_or_else(|| failed("memory below the boot size cannot be removed live"))?;
        let qmp = self.qmp(vm).await?;
        let path = format!("/machine/peripheral/{VMEM_ID}");
        let current = qmp.qom_get(&path, "size").await?.as_u64().unwrap_or(0);
        if current == requested {
            return Ok(());
        }
        let mut how = "memory (un)plugged by the guest";
        if requested > current {
            // New blocks must come online while they are plugged: virtio-mem stops plugging
            // once about 1 GiB sits offline.
            let by = self.guest(vm).await?.ops().auto_online_memory().await?;
            if by == wukong_guest::Onlined::ByAgent {
                how = "memory plugged, onlined through the agent (the guest's auto-online was off)";
            }
            progress.progress(0, requested - current, by.describe());
        }
        let mut events = qmp.subscribe();
        qmp.qom_set(&path, "requested-size", json!(requested))
            .await?;
        let from = current;
        let total = from.abs_diff(requested);
        // QEMU rate-limits the size-change event (one a second): it feeds progress, while the
        // device's size is polled for completion.
        // The deadline is checked between QMP commands, never by cancelling one in flight (the
        // monitor client does not survive a command dropped mid-way).
        let deadline = tokio::time::Instant::now() + self.options.timeouts.memory;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(qmp::Event::MEMORY_DEVICE_SIZE_CHANGE { data, .. }) => {
                        progress.progress(from.abs_diff(data.size), total, how);
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(BackendError::Unreachable("QMP closed".into()));
                    }
                },
                _ = tick.tick() => {
                    let size = qmp.qom_get(&path, "size").await?.as_u64().unwrap_or(0);
                    if size == requested {
                        progress.progress(total, total, how);
                        return Ok(());
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(failed(format!(
                            "the guest did not take the memory: requested {} MiB of hot-plug memory, plugged {} MiB after {:?} (is virtio_mem loaded and memory onlined?)",
                            requested >> 20,
                            size >> 20,
                            self.options.timeouts.memory
                        )));
                    }
                }
            }
        }
    }

    async fn attach_disk(&self, vm: &VmRef, disk: &DiskConfig) -> Result<(), BackendError> {
        let dir = self.dir(vm);
        let image = VmFiles::disk(&dir, &disk.name);
        let src = disk
            .source
            .as_ref()
            .map(|s| std::path::PathBuf::from(&s.image));
        process::ensure_disk_image(&image, disk.size, src.as_deref()).await?;
        let qmp = self.qmp(vm).await?;
        let present = qmp.peripherals().await?;
        if !present.contains(&disk_id(&disk.name)) {
            self.plug_disk(vm, &qmp, disk, &image).await?;
        }
        // A device QEMU already has (an attach cut short by a crash) is adopted.
        let d = disk.clone();
        self.update(vm, |r| {
            r.definition.disks.retain(|x| x.name != d.name);
            r.definition.disks.push(d);
        })?;
        Ok(())
    }

    async fn plug_disk(
        &self,
        vm: &VmRef,
        qmp: &Qmp,
        disk: &DiskConfig,
        image: &std::path::Path,
    ) -> Result<(), BackendError> {
        let port = self.free_port(vm, &disk_id(&disk.name)).await?;
        let node_exists = qmp
            .run(qmp::query_named_block_nodes { flat: Some(true) })
            .await?
            .iter()
            .any(|n| n.node_name.as_deref() == Some(node_name(&disk.name).as_str()));
        if !node_exists {
            qmp.run(BlockdevAdd(json!({
                "driver": "qcow2",
                "node-name": node_name(&disk.name),
                "discard": "unmap",
                "file": {"driver": "file", "filename": image.to_string_lossy()},
            })))
            .await?;
        }
        let mut props = serde_json::Map::new();
        props.insert("drive".into(), json!(node_name(&disk.name)));
        props.insert("serial".into(), json!(disk.name));
        if let Err(e) = qmp
            .device_add("virtio-blk-pci", &disk_id(&disk.name), Some(&port), props)
            .await
        {
            let _ = qmp
                .run(qmp::blockdev_del {
                    node_name: node_name(&disk.name),
                })
                .await;
            self.release_port(vm, &disk_id(&disk.name))?;
            return Err(e);
        }
        Ok(())
    }

    async fn detach_disk(&self, vm: &VmRef, name: &str, force: bool) -> Result<(), BackendError> {
        let n = name.to_string();
        // Unmount everything on it in the guest first; a busy filesystem refuses unless
        // forced. A guest that cannot be asked refuses too (unknown is not "nothing mounted"),
        // except for a forced detach (the undo of an attach).
        let unmounted = async { self.guest(vm).await?.ops().unmount_disk(name, force).await }.await;
        match unmounted {
            Ok(()) => {}
            Err(BackendError::Failed(e)) => {
                return Err(failed(format!(
                    "{e}; stop what uses it, or set the annotation {FORCE_DETACH}: \"true\""
                )));
            }
            Err(e) if !force => {
                return Err(failed(format!(
                    "cannot tell whether disk {n} is mounted in the guest ({e}): not detached"
                )));
            }
            Err(_) => {}
        }
        let qmp = self.qmp(vm).await?;
        self.unplug(&qmp, &disk_id(name)).await?;
        let _ = qmp
            .run(qmp::blockdev_del {
                node_name: node_name(name),
            })
            .await;
        let n = name.to_string();
        self.update(vm, |r| {
            r.definition.disks.retain(|x| x.name != n);
            r.ports.remove(&disk_id(&n));
        })?;
        Ok(())
    }

    async fn add_nic(&self, vm: &VmRef, nic: &NicConfig) -> Result<(), BackendError> {
        let qmp = self.qmp(vm).await?;
        if !qmp.peripherals().await?.contains(&nic_id(&nic.name)) {
            self.plug_nic(vm, &qmp, nic).await?;
        }
        // A NIC QEMU already has (an add cut short by a crash) is adopted.
        let n = nic.clone();
        self.update(vm, |r| {
            r.definition.networks.retain(|x| x.name != n.name);
            r.definition.networks.push(n);
        })?;
        Ok(())
    }

    async fn plug_nic(&self, vm: &VmRef, qmp: &Qmp, nic: &NicConfig) -> Result<(), BackendError> {
        let _ = qmp
            .run(qmp::netdev_del {
                id: netdev_id(&nic.name),
            })
            .await;
        let port = self.free_port(vm, &nic_id(&nic.name)).await?;
        let props: serde_json::Map<String, serde_json::Value> = machine::netdev_props(nic)
            .into_iter()
            .map(|(k, v)| (k, json!(v)))
            .collect();
        qmp.run(NetdevAdd(serde_json::Value::Object(props))).await?;
        let mut dev = serde_json::Map::new();
        dev.insert("netdev".into(), json!(netdev_id(&nic.name)));
        dev.insert("mac".into(), json!(nic.mac));
        if let Err(e) = qmp
            .device_add(nic_driver(nic.model), &nic_id(&nic.name), Some(&port), dev)
            .await
        {
            let _ = qmp
                .run(qmp::netdev_del {
                    id: netdev_id(&nic.name),
                })
                .await;
            self.release_port(vm, &nic_id(&nic.name))?;
            return Err(e);
        }
        let n = nic.clone();
        self.update(vm, |r| {
            r.definition.networks.retain(|x| x.name != n.name);
            r.definition.networks.push(n);
        })?;
        Ok(())
    }

    /// Unplugs device `id` if QEMU has it, waiting until the guest releases it.
    async fn unplug(&self, qmp: &Qmp, id: &str) -> Result<(), BackendError> {
        if qmp.peripherals().await?.iter().any(|p| p == id) {
            qmp.device_del(id, self.options.timeouts.unplug).await?;
        }
        Ok(())
    }

    async fn remove_nic(&self, vm: &VmRef, name: &str) -> Result<(), BackendError> {
        let qmp = self.qmp(vm).await?;
        self.unplug(&qmp, &nic_id(name)).await?;
        let _ = qmp
            .run(qmp::netdev_del {
                id: netdev_id(name),
            })
            .await;
        let n = name.to_string();
        self.update(vm, |r| {
            r.definition.networks.retain(|x| x.name != n);
            r.ports.remove(&nic_id(&n));
        })?;
        Ok(())
    }

    /// Applies a step to the stored definition of a stopped VM.
    fn apply_offline(&self, vm: &VmRef, action: &Action) -> Result<(), BackendError> {
        let rec = self.record(vm)?;
        let mut o = Observed {
            config: rec.definition.clone(),
            running: false,
            starting: false,
            boot_memory: rec.boot_memory,
            guest: None,
        };
        apply(&mut o, action);
        self.update(vm, |r| r.definition = o.config)?;
        Ok(())
    }
}

/// The virtio-mem device's plugged size once it matches what was requested: a resize in
/// flight (e.g. one a crashed daemon started) would make the guest's view and QEMU's disagree.
/// Waits at most 5 s (a guest that refuses memory never settles).
async fn settled_memory(qmp: &Qmp) -> Result<u64, BackendError> {
    let path = format!("/machine/peripheral/{VMEM_ID}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let size = qmp.qom_get(&path, "size").await?.as_u64().unwrap_or(0);
        let requested = qmp
            .qom_get(&path, "requested-size")
            .await?
            .as_u64()
            .unwrap_or(0);
        if size == requested || tokio::time::Instant::now() >= deadline {
            return Ok(size);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Logical ids of the online vCPUs, ascending.
fn online_vcpus(v: &[(i64, bool)]) -> Vec<i64> {
    let mut ids: Vec<i64> = v.iter().filter(|(_, o)| *o).map(|(id, _)| *id).collect();
    ids.sort_unstable();
    ids
}

/// Ids of the hot-added vCPUs present now, lowest slot first.
async fn hot_added_cpus(qmp: &Qmp) -> Result<Vec<String>, BackendError> {
    let mut ids: Vec<String> = qmp
        .peripherals()
        .await?
        .into_iter()
        .filter(|p| p.starts_with("cpu-"))
        .collect();
    ids.sort_by_key(|id| {
        id.split('-')
            .skip(1)
            .map(|n| n.parse::<u32>().unwrap_or(0))
            .collect::<Vec<_>>()
    });
    Ok(ids)
}

impl Backend for LocalBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }

    async fn observe(&self, vm: &VmRef) -> Result<Observed, BackendError> {
        let rec = self.record(vm)?;
        if !self.is_running(vm) {
            return Ok(Observed {
                config: rec.definition,
                running: false,
                starting: false,
                boot_memory: rec.boot_memory,
                guest: None,
            });
        }
        let qmp = self.qmp(vm).await?;
        let plugged = qmp
            .run(qmp::query_hotpluggable_cpus {})
            .await?
            .iter()
            .filter(|c| c.qom_path.is_some())
            .count() as u32;
        let peripherals = qmp.peripherals().await?;
        let hotplug_memory = if peripherals.iter().any(|p| p == VMEM_ID) {
            settled_memory(&qmp).await?
        } else {
            0
        };
        drop(qmp);
        let guest = self.guest_view(vm).await;
        let mut config = rec.definition.clone();
        config.cpu = guest.as_ref().map_or(plugged, |g| g.cpus_online);
        config.memory = rec.boot_memory + hotplug_memory;
        config
            .disks
            .retain(|d| peripherals.contains(&disk_id(&d.name)));
        config
            .networks
            .retain(|n| peripherals.contains(&nic_id(&n.name)));
        // What QEMU really has is the truth: a crash between a device change and its record
        // is repaired here.
        let (disks, nets) = (config.disks.clone(), config.networks.clone());
        if disks != rec.definition.disks || nets != rec.definition.networks {
            let present: Vec<String> = peripherals.clone();
            self.update(vm, |r| {
                r.definition.disks = disks;
                r.definition.networks = nets;
                r.ports.retain(|dev, _| present.contains(dev));
            })?;
        }
        Ok(Observed {
            config,
            running: true,
            starting: false,
            boot_memory: rec.boot_memory,
            guest,
        })
    }

    async fn capabilities(
        &self,
        vm: &VmRef,
        observed: &Observed,
    ) -> Result<Capabilities, BackendError> {
        let rec = self.record(vm)?;
        if !self.options.live {
            return Ok(Capabilities::restart_only(
                BackendKind::Local,
                "live changes are turned off (wukong serve --no-live)",
            ));
        }
        if !observed.running {
            return Ok(Capabilities::local(QemuVersion::SAFE_CPU_READD, None, None));
        }
        let qmp = self.qmp(vm).await?;
        let (major, minor) = qmp.version().await?;
        let plugged = qmp
            .run(qmp::query_hotpluggable_cpus {})
            .await?
            .iter()
            .filter(|c| c.qom_path.is_some())
            .count() as u32;
        let offline_plugged = plugged.saturating_sub(observed.config.cpu);
        let creations_left = rec.definition.max_cpu.saturating_sub(rec.vcpu_creations);
        let free_ports = rec.ports_total.saturating_sub(2 + rec.ports.len() as u32);
        let mut caps = Capabilities::local(
            QemuVersion { major, minor },
            Some(offline_plugged + creations_left),
            Some(free_ports),
        );
        // Under TCG an unplugged vCPU's slot is gone for good: once no creations are left,
        // keep vCPUs plugged and take them offline instead.
        if self.options.force_guest_offline || creations_left == 0 {
            caps.cpu_remove = Ok(CpuRemoval::GuestOffline);
        }
        Ok(caps)
    }

    async fn apply_step(
        &self,
        vm: &VmRef,
        step: &Step,
        desired: &VmConfig,
        progress: &dyn StepProgress,
    ) -> Result<(), BackendError> {
        if step.mode == Mode::Offline {
            return self.apply_offline(vm, &step.action);
        }
        match &step.action {
            Action::AddVcpus { to, .. } => {
                self.add_vcpus(vm, *to, progress).await?;
                let to = *to;
                self.update(vm, |r| r.definition.cpu = to)?;
            }
            Action::RemoveVcpus { to, method, .. } => {
                self.remove_vcpus(vm, *to, *method).await?;
                let to = *to;
                self.update(vm, |r| r.definition.cpu = to)?;
            }
            Action::GrowMemory { to, .. } | Action::ShrinkMemory { to, .. } => {
                self.resize_memory(vm, *to, progress).await?;
                let to = *to;
                self.update(vm, |r| r.definition.memory = to)?;
            }
            Action::GrowDisk { disk, to, .. } => {
                let qmp = self.qmp(vm).await?;
                if desired.disk(disk).is_some_and(|d| d.snapshot_before_grow) {
                    let name = format!("wukong-pre-grow-{}", jiff::Timestamp::now().as_second());
                    qmp.run(SnapshotInternal(
                        json!({"device": node_name(disk), "name": name}),
                    ))
                    .await?;
                    progress.progress(0, 1, &format!("snapshot {name} taken"));
                }
                qmp.run(qmp::block_resize {
                    device: None,
                    node_name: Some(node_name(disk)),
                    size: *to as i64,
                })
                .await?;
                let (disk, to) = (disk.clone(), *to);
                self.update(vm, |r| {
                    if let Some(d) = r.definition.disks.iter_mut().find(|d| d.name == disk) {
                        d.size = to;
                    }
                })?;
            }
            Action::GrowFilesystem { disk, .. } => self.guest(vm).await?.ops().grow(disk).await?,
            Action::CreateFilesystem { disk, .. } => {
                let d = desired
                    .disk(disk)
                    .cloned()
                    .ok_or_else(|| failed(format!("unknown disk {disk}")))?;
                self.ensure_filesystem(vm, &d).await?;
            }
            Action::OnlineMemory { .. } => {
                let n = self.guest(vm).await?.ops().online_memory_blocks().await?;
                progress.progress(
                    n as u64,
                    n as u64,
                    "memory blocks onlined through the agent",
                );
            }
            Action::AttachDisk { disk } => self.attach_disk(vm, disk).await?,
            Action::DetachDisk { disk } => {
                let force = self
                    .record(vm)?
                    .object
                    .metadata
                    .annotations
                    .is_some_and(|a| a.get(FORCE_DETACH).is_some_and(|v| v == "true"));
                self.detach_disk(vm, disk, force).await?
            }
            Action::AddNic { nic } => self.add_nic(vm, nic).await?,
            Action::RemoveNic { nic } => self.remove_nic(vm, &nic.name).await?,
            Action::UpdateNic { from, to } => {
                self.remove_nic(vm, &from.name).await?;
                self.add_nic(vm, to).await?;
            }
            Action::Start => {
                self.start(vm).await?;
            }
            Action::Stop => {
                self.stop(vm).await?;
            }
            Action::SetMaxCpu { .. } | Action::SetMaxMemory { .. } | Action::ChangeDisk { .. } => {
                return Err(BackendError::Unsupported {
                    backend: BackendKind::Local,
                    what: format!("{} while running", step.action.describe()),
                });
            }
        }
        Ok(())
    }

    async fn undo_step(&self, vm: &VmRef, step: &Step) -> Result<bool, BackendError> {
        match &step.action {
            Action::AttachDisk { disk } => {
                self.detach_disk(vm, &disk.name, true).await?;
                Ok(true)
            }
            Action::AddNic { nic } => {
                self.remove_nic(vm, &nic.name).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn restart(
        &self,
        vm: &VmRef,
        desired: &VmConfig,
        _steps: &[Step],
    ) -> Result<(), BackendError> {
        self.stop(vm).await?;
        let d = desired.clone();
        self.update(vm, |r| r.definition = d)?;
        self.start(vm).await?;
        Ok(())
    }
}

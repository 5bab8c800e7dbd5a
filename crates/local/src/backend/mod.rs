//! The local backend: `wukong_engine::Backend` on QEMU. Observes a VM through QMP (devices,
//! vCPU slots, virtio-mem) and the guest agent (what the guest sees); carries out each plan
//! step with QMP commands and guest commands (argv lists); restarts into a new definition.
//! Here: the backend itself, boot and shutdown, offline steps; one file per resource beside.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qapi::qmp;
use serde_json::json;
use tokio::sync::broadcast;
use wukong_api::{BackendKind, DiskConfig, NicConfig, VmConfig};
use wukong_engine::{Backend, BackendError, StepProgress, VmRef, failpoint};
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

use crate::qmp::{BlockdevAdd, NetdevAdd, Qmp, SnapshotInternal};
use crate::store::{Store, StoreError, VmRecord};

mod cpu;
mod disks;
mod guest;
mod memory;
mod nics;
mod pause;
mod platform;

pub use pause::{IoPause, free_bytes};

/// Annotation that lets a detach go on when the disk is busy in the guest (lazy unmount).
pub const FORCE_DETACH: &str = "vm.novasphere.dev/force-detach";

/// Timeouts of the local backend.
#[derive(Clone, Copy, Debug)]
pub struct LocalTimeouts {
    /// Boot to guest agent (a cloud image under TCG runs cloud-init before its agent: minutes).
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
            boot: Duration::from_secs(300),
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
    /// Directories whose images a spec may name (resolved; see [`crate::trusted`]).
    pub image_roots: Vec<PathBuf>,
    /// Events kept per VM in the database.
    pub event_history: usize,
    /// The UEFI firmware for VMs that boot `uefi`.
    pub uefi: crate::boot::UefiFirmware,
    /// How much guest memory (plus QEMU's share) the VMs may commit on this host.
    pub memory_commit: crate::admission::CommitLimit,
}

/// The local backend.
pub struct LocalBackend {
    home: Home,
    store: Arc<Store>,
    options: LocalOptions,
    /// The guest agent serves one client at a time: one slot per VM, locked by its user,
    /// holding the connection kept between users.
    agents: Mutex<HashMap<VmRef, AgentSlot>>,
}

type AgentSlot = Arc<tokio::sync::Mutex<Option<guest::Kept>>>;

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
            agents: Mutex::new(HashMap::new()),
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

    fn agent_slot(&self, vm: &VmRef) -> AgentSlot {
        self.agents
            .lock()
            .expect("agent slot map")
            .entry(vm.clone())
            .or_default()
            .clone()
    }

    /// Runs `f` with the VM's guest agent, one caller at a time.
    pub async fn with_agent<T>(
        &self,
        vm: &VmRef,
        f: impl AsyncFnOnce(&Qga) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let session = self.guest(vm).await?;
        f(session.qga()).await
    }

    async fn qmp(&self, vm: &VmRef) -> Result<Qmp, BackendError> {
        let dir = self.dir(vm);
        if process::running_pid(&dir).is_none() {
            return Err(BackendError::Unreachable(format!("VM {vm} is not running")));
        }
        Qmp::connect(&VmFiles::qmp(&dir), Duration::from_secs(5)).await
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
        // The agent serves one client: nobody else connects while the boot waits for it, and
        // the connection that saw it come up is the one kept.
        let mut slot = self.agent_slot(vm).lock_owned().await;
        *slot = None;
        private_dir(&dir).map_err(failed)?;
        crate::paths::check_socket_path(&VmFiles::qmp(&dir)).map_err(BackendError::Failed)?;
        let rec = self.record(vm)?;
        let def = rec.definition.clone();
        for d in &def.disks {
            let src = d
                .source
                .as_ref()
                .and_then(|s| s.image.as_ref())
                .map(std::path::PathBuf::from);
            process::ensure_disk_image(
                &VmFiles::disk(&dir, &d.name),
                d.size,
                src.as_deref(),
                &self.options.image_roots,
            )
            .await?;
        }
        // The kernel and initrd a spec names stay open (`_pins`) until QEMU has read them.
        let (boot, _pins) = crate::boot::boot_source(
            &def,
            &self.options.boot,
            &dir,
            &self.options.uefi,
            &self.options.image_roots,
        )?;
        let seed = self.write_seed(vm, def.cloud_init.as_ref()).await?;
        let m = Machine {
            name: format!("{}_{}", vm.namespace, vm.name),
            dir: &dir,
            config: &def,
            boot: &boot,
            accel: self.options.accel,
            hotplug_ports: self.options.hotplug_ports,
            seed: seed.as_deref(),
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
        let pid = process::spawn(&dir, &args).await?;
        self.update(vm, |r| {
            r.boot_memory = def.memory;
            r.vcpu_creations = def.cpu;
            r.ports = ports;
            r.ports_total = total;
        })?;
        // Formats and mounts are planned steps of the operation that started it (the engine
        // plans again once the guest runs), not part of the boot.
        let (took, qga) = process::wait_for_agent(&dir, pid, self.options.timeouts.boot).await?;
        *slot = Some(guest::Kept::new(pid.as_raw(), qga));
        Ok(took)
    }

    /// Writes (or removes) the VM's cloud-init seed for its next boot.
    pub(super) async fn write_seed(
        &self,
        vm: &VmRef,
        ci: Option<&wukong_api::CloudInitSpec>,
    ) -> Result<Option<PathBuf>, BackendError> {
        let rec = self.record(vm)?;
        let uid = rec
            .object
            .metadata
            .uid
            .clone()
            .unwrap_or_else(|| vm.to_string());
        crate::boot::write_seed(&self.dir(vm), &vm.name, &uid, ci).await
    }

    /// Stops the VM (guest shutdown, QMP quit, kill).
    pub async fn stop(&self, vm: &VmRef) -> Result<process::StopPath, BackendError> {
        // The guest's shutdown goes through an agent connection of its own: the kept one is
        // closed first, and nobody opens another while the VM stops.
        let mut slot = self.agent_slot(vm).lock_owned().await;
        *slot = None;
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
        self.with_agent(vm, async |q| q.exec(&argv, None, timeout).await)
            .await
    }

    /// Makes the record agree with what QEMU has: disks and NICs QEMU does not have (an
    /// unplug cut short by a crash) leave the definition, their ports are free again.
    pub(super) async fn repair_record(&self, vm: &VmRef) -> Result<(), BackendError> {
        let present = self.qmp(vm).await?.peripherals().await?;
        let rec = self.record(vm)?;
        let stale = rec
            .definition
            .disks
            .iter()
            .any(|d| !present.contains(&disk_id(&d.name)))
            || rec
                .definition
                .networks
                .iter()
                .any(|n| !present.contains(&nic_id(&n.name)));
        if stale {
            self.update(vm, |r| {
                r.definition
                    .disks
                    .retain(|d| present.contains(&disk_id(&d.name)));
                r.definition
                    .networks
                    .retain(|n| present.contains(&nic_id(&n.name)));
                r.ports.retain(|dev, _| present.contains(dev));
            })?;
        }
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

//! `plan(desired, observed, capabilities, now)`: the ordered, typed steps that take a VM from
//! what it has to what it should have, each live or restart-required with its reason.
//!
//! Order, chosen so that nothing is lost and ports are freed before they are needed:
//! stop → detach disks → remove NICs → vCPUs → memory → grow disks (then their filesystems) →
//! attach disks (then create their filesystems) → add/update NICs → restart-only changes →
//! start. A disk never shrinks and the boot disk is never detached: such a desired state is a
//! [`PlanError`], not a plan.

use serde::{Deserialize, Serialize};
use wukong_api::quantity::{Quantity, human_bytes};
use wukong_api::{
    DiskConfig, FieldError, FieldErrors, FilesystemSpec, NicConfig, RunStrategy, VmConfig,
};

use crate::capabilities::{Capabilities, CpuRemoval, Support};
use crate::observed::Observed;
use crate::window::{RestartDecision, restart_decision};

/// How a step is carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// While the VM runs, no reboot.
    Live,
    /// Only by restarting the VM (batched into one restart).
    Restart,
    /// The VM is not running: the definition changes, the next start uses it.
    Offline,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Live => "live",
            Mode::Restart => "restart",
            Mode::Offline => "offline",
        })
    }
}

/// What one step does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "action",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Action {
    /// Bring vCPUs online (hot-add or online offline ones).
    AddVcpus {
        /// vCPUs before.
        from: u32,
        /// vCPUs after.
        to: u32,
    },
    /// Take vCPUs away.
    RemoveVcpus {
        /// vCPUs before.
        from: u32,
        /// vCPUs after.
        to: u32,
        /// Unplug, or offline in the guest.
        method: CpuRemoval,
    },
    /// Grow memory (bytes).
    GrowMemory {
        /// Bytes before.
        from: u64,
        /// Bytes after.
        to: u64,
    },
    /// Online memory the guest holds but left offline (plugged, never onlined).
    OnlineMemory {
        /// Bytes offline in the guest.
        bytes: u64,
    },
    /// Shrink memory (bytes).
    ShrinkMemory {
        /// Bytes before.
        from: u64,
        /// Bytes after.
        to: u64,
    },
    /// Grow a disk's block device.
    GrowDisk {
        /// Disk name.
        disk: String,
        /// Bytes before.
        from: u64,
        /// Bytes after.
        to: u64,
    },
    /// Grow the partition (if any) and the filesystem on a disk to fill it.
    GrowFilesystem {
        /// Disk name.
        disk: String,
        /// Disk size the filesystem should fill.
        size: u64,
    },
    /// Attach a new disk.
    AttachDisk {
        /// The disk.
        disk: Box<DiskConfig>,
    },
    /// Create the requested filesystem on a newly attached blank disk and mount it.
    CreateFilesystem {
        /// Disk name.
        disk: String,
        /// Filesystem and mount point.
        filesystem: FilesystemSpec,
    },
    /// Detach a disk (its image is kept).
    DetachDisk {
        /// Disk name.
        disk: String,
    },
    /// Change a disk's bus or hotplug flag.
    ChangeDisk {
        /// The disk before.
        from: Box<DiskConfig>,
        /// The disk after.
        to: Box<DiskConfig>,
    },
    /// Add a NIC.
    AddNic {
        /// The NIC.
        nic: NicConfig,
    },
    /// Remove a NIC.
    RemoveNic {
        /// The NIC.
        nic: NicConfig,
    },
    /// Change a NIC's source, MAC or model.
    UpdateNic {
        /// The NIC before.
        from: NicConfig,
        /// The NIC after.
        to: NicConfig,
    },
    /// Change the vCPU ceiling.
    SetMaxCpu {
        /// Before.
        from: u32,
        /// After.
        to: u32,
    },
    /// Change the memory ceiling.
    SetMaxMemory {
        /// Bytes before.
        from: u64,
        /// Bytes after.
        to: u64,
    },
    /// Change how the VM boots (firmware or kernel; none: the backend's default).
    SetBoot {
        /// Before.
        from: Box<Option<wukong_api::BootSpec>>,
        /// After.
        to: Box<Option<wukong_api::BootSpec>>,
    },
    /// Write new cloud-init data for the guest's next boot.
    SetCloudInit {
        /// The data (none: no cloud-init seed).
        to: Box<Option<wukong_api::CloudInitSpec>>,
    },
    /// Start the VM.
    Start,
    /// Stop the VM.
    Stop,
}

fn boot_words(b: &Option<wukong_api::BootSpec>) -> String {
    b.as_ref()
        .map_or_else(|| "the default".into(), wukong_api::BootSpec::describe)
}

impl Action {
    /// The resource the step changes: `cpu`, `memory`, `disk/NAME`, `network/NAME`, `vm`.
    pub fn resource(&self) -> String {
        match self {
            Action::AddVcpus { .. } | Action::RemoveVcpus { .. } | Action::SetMaxCpu { .. } => {
                "cpu".into()
            }
            Action::GrowMemory { .. }
            | Action::ShrinkMemory { .. }
            | Action::OnlineMemory { .. }
            | Action::SetMaxMemory { .. } => "memory".into(),
            Action::GrowDisk { disk, .. }
            | Action::GrowFilesystem { disk, .. }
            | Action::CreateFilesystem { disk, .. }
            | Action::DetachDisk { disk } => format!("disk/{disk}"),
            Action::AttachDisk { disk } => format!("disk/{}", disk.name),
            Action::ChangeDisk { to, .. } => format!("disk/{}", to.name),
            Action::AddNic { nic } | Action::RemoveNic { nic } => format!("network/{}", nic.name),
            Action::UpdateNic { to, .. } => format!("network/{}", to.name),
            Action::SetBoot { .. } => "boot".into(),
            Action::SetCloudInit { .. } => "cloud-init".into(),
            Action::Start | Action::Stop => "vm".into(),
        }
    }

    /// The change in words, e.g. `2 -> 4`.
    pub fn change(&self) -> String {
        let q = |b: &u64| Quantity::from_bytes(*b).to_string();
        match self {
            Action::AddVcpus { from, to }
            | Action::RemoveVcpus { from, to, .. }
            | Action::SetMaxCpu { from, to } => format!("{from} -> {to}"),
            Action::GrowMemory { from, to }
            | Action::ShrinkMemory { from, to }
            | Action::SetMaxMemory { from, to }
            | Action::GrowDisk { from, to, .. } => format!("{} -> {}", q(from), q(to)),
            Action::GrowFilesystem { size, .. } => format!("fill {}", q(size)),
            Action::OnlineMemory { bytes } => format!("online {}", q(bytes)),
            Action::AttachDisk { disk } => format!("attach {}", q(&disk.size)),
            Action::CreateFilesystem { filesystem, .. } => format!(
                "{} at {}",
                fs_name(filesystem.fs_type),
                filesystem.mount_path
            ),
            Action::DetachDisk { .. } => "detach".into(),
            Action::ChangeDisk { from, to } => format!(
                "bus {:?} -> {:?}, hotpluggable {} -> {}",
                from.bus, to.bus, from.hotpluggable, to.hotpluggable
            )
            .to_lowercase(),
            Action::AddNic { nic } => format!("add {} ({})", nic.mac, nic.source),
            Action::RemoveNic { nic } => format!("remove {}", nic.mac),
            Action::UpdateNic { from, to } => {
                format!("{} {} -> {} {}", from.source, from.mac, to.source, to.mac)
            }
            Action::SetBoot { from, to } => format!("{} -> {}", boot_words(from), boot_words(to)),
            Action::SetCloudInit { to } => match to.as_ref() {
                Some(_) => "new data for the next boot".into(),
                None => "no data from the next boot".into(),
            },
            Action::Start => "start".into(),
            Action::Stop => "stop".into(),
        }
    }

    /// One line for people: what the step does.
    pub fn describe(&self) -> String {
        match self {
            Action::AddVcpus { from, to } => format!("add {} vCPU(s): {from} -> {to}", to - from),
            Action::RemoveVcpus { from, to, method } => format!(
                "remove {} vCPU(s) ({}): {from} -> {to}",
                from - to,
                match method {
                    CpuRemoval::Unplug => "unplug",
                    CpuRemoval::GuestOffline => "offline in guest",
                }
            ),
            Action::GrowMemory { from, to } => format!(
                "grow memory: {} -> {}",
                human_bytes(*from),
                human_bytes(*to)
            ),
            Action::ShrinkMemory { from, to } => format!(
                "shrink memory: {} -> {}",
                human_bytes(*from),
                human_bytes(*to)
            ),
            Action::OnlineMemory { bytes } => format!(
                "online {} of memory the guest left offline",
                human_bytes(*bytes)
            ),
            Action::GrowDisk { disk, from, to } => format!(
                "grow disk {disk}: {} -> {}",
                human_bytes(*from),
                human_bytes(*to)
            ),
            Action::GrowFilesystem { disk, .. } => {
                format!("grow partition and filesystem on {disk}")
            }
            Action::AttachDisk { disk } => {
                format!("attach disk {} ({})", disk.name, human_bytes(disk.size))
            }
            Action::CreateFilesystem { disk, filesystem } => format!(
                "format {disk} as {} if blank, mount at {}",
                fs_name(filesystem.fs_type),
                filesystem.mount_path
            ),
            Action::DetachDisk { disk } => format!("detach disk {disk} (image kept)"),
            Action::ChangeDisk { to, .. } => format!("change bus/hotplug of disk {}", to.name),
            Action::AddNic { nic } => format!("add NIC {} ({}, {})", nic.name, nic.mac, nic.source),
            Action::RemoveNic { nic } => format!("remove NIC {} ({})", nic.name, nic.mac),
            Action::UpdateNic { to, .. } => format!("change NIC {}", to.name),
            Action::SetMaxCpu { from, to } => format!("change maxCpu: {from} -> {to}"),
            Action::SetMaxMemory { from, to } => format!(
                "change maxMemory: {} -> {}",
                human_bytes(*from),
                human_bytes(*to)
            ),
            Action::SetBoot { from, to } => {
                format!("boot from {} (was {})", boot_words(to), boot_words(from))
            }
            Action::SetCloudInit { to } if to.is_some() => {
                "write the new cloud-init data (read by cloud-init at the next boot)".into()
            }
            Action::SetCloudInit { .. } => "remove the cloud-init data (from the next boot)".into(),
            Action::Start => "start the VM".into(),
            Action::Stop => "stop the VM".into(),
        }
    }
}

fn fs_name(t: wukong_api::FsType) -> &'static str {
    match t {
        wukong_api::FsType::Ext4 => "ext4",
        wukong_api::FsType::Xfs => "xfs",
    }
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// What it does.
    #[serde(flatten)]
    pub action: Action,
    /// Live, restart or offline.
    pub mode: Mode,
    /// Why this mode.
    pub reason: String,
}

impl Step {
    fn new(action: Action, mode: Mode, reason: impl Into<String>) -> Self {
        Step {
            action,
            mode,
            reason: reason.into(),
        }
    }
}

/// The steps from observed to desired, and what happens to the restart-only ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Ordered steps: live (or offline) first, then restart-only ones, then a start.
    pub steps: Vec<Step>,
    /// Present when some step needs a restart: whether the policy allows it now.
    pub restart: Option<RestartDecision>,
}

impl Plan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
    /// Steps in a mode.
    pub fn in_mode(&self, mode: Mode) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(move |s| s.mode == mode)
    }
    /// Counts of live, restart and offline steps.
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.in_mode(Mode::Live).count(),
            self.in_mode(Mode::Restart).count(),
            self.in_mode(Mode::Offline).count(),
        )
    }
}

/// The desired state asks for something that is never done.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub FieldErrors);

/// Accumulates steps, deciding each one's mode.
struct Builder<'a> {
    caps: &'a Capabilities,
    running: bool,
    live: Vec<Step>,
    restart: Vec<Step>,
}

impl Builder<'_> {
    /// Adds `action`: live when the VM runs and `support` says so, restart-only when it runs
    /// and `support` says why not, offline when it does not run.
    fn push(&mut self, action: Action, support: Support, live_reason: &str) {
        if !self.running {
            self.live.push(Step::new(
                action,
                Mode::Offline,
                "the VM is not running: its definition changes, the next start uses it",
            ));
            return;
        }
        match support {
            Support::Live => self.live.push(Step::new(action, Mode::Live, live_reason)),
            Support::Restart(reason) => self.restart.push(Step::new(action, Mode::Restart, reason)),
        }
    }
}

/// Plans the steps from `observed` to `desired`.
///
/// Pure: the same inputs give the same plan. `now` only decides whether a restart window is
/// open. Errors list every refused change (disk shrink, boot disk detach, changing a disk's
/// filesystem or storage).
pub fn plan(
    desired: &VmConfig,
    observed: &Observed,
    caps: &Capabilities,
    now: jiff::Timestamp,
) -> Result<Plan, PlanError> {
    check_allowed(desired, &observed.config)?;
    let have = &observed.config;
    let should_run = !matches!(desired.run_strategy, RunStrategy::Halted);
    let mut b = Builder {
        caps,
        running: observed.running,
        live: Vec::new(),
        restart: Vec::new(),
    };
    let mut pre = Vec::new();
    if (observed.running || observed.starting) && !should_run {
        pre.push(Step::new(Action::Stop, Mode::Live, "runStrategy is Halted"));
        b.running = false;
    }

    // Ports freed by live removals are usable by live additions after them.
    let mut slots = caps.hotplug_slots;

    for d in &have.disks {
        if desired.disk(&d.name).is_none() {
            let support = if !d.hotpluggable {
                Support::restart(format!("disk {} is not hot-pluggable", d.name))
            } else {
                b.caps.disk_detach.clone()
            };
            if b.running && support.is_live() {
                slots = slots.map(|s| s + 1);
            }
            b.push(
                Action::DetachDisk {
                    disk: d.name.clone(),
                },
                support,
                "hot-unplug after unmounting in the guest",
            );
        }
    }
    for n in &have.networks {
        if desired.network(&n.name).is_none() {
            let support = b.caps.nic_remove_for(&n.source);
            if b.running && support.is_live() {
                slots = slots.map(|s| s + 1);
            }
            b.push(Action::RemoveNic { nic: n.clone() }, support, "hot-unplug");
        }
    }

    plan_cpu(&mut b, desired, have);
    plan_memory(&mut b, desired, observed);
    plan_boot(&mut b, desired, have);

    for d in &desired.disks {
        let Some(h) = have.disk(&d.name) else {
            continue;
        };
        let guest_disk = observed.guest.as_ref().and_then(|g| g.disks.get(&d.name));
        let mut disk_by_restart = false;
        if d.size > h.size {
            let support = match caps.disk_grow_blocked.iter().find(|(n, _)| *n == d.name) {
                Some((_, why)) => Support::restart(why.clone()),
                None => caps.disk_grow.clone(),
            };
            let reason = format!(
                "resize the image while attached; its filesystem: {}",
                filesystem_fate(guest_disk, h)
            );
            disk_by_restart = !support.is_live();
            b.push(
                Action::GrowDisk {
                    disk: d.name.clone(),
                    from: h.size,
                    to: d.size,
                },
                support,
                &reason,
            );
        }
        let blocked = guest_disk.is_some_and(|g| g.grow_blocked.is_some());
        let fs_lags =
            guest_disk.is_some_and(|g| g.filesystem_size.is_some() && !g.filesystem_fills(d.size));
        let has_fs = !blocked
            && (h.filesystem.is_some() || guest_disk.is_some_and(|g| g.filesystem_size.is_some()));
        match (&d.filesystem, guest_disk) {
            // The guest shows no mounted filesystem where the spec wants one (a failed
            // format, a guest reboot): create it if the disk is blank, and mount it (which
            // also grows it to the disk).
            (Some(fs), Some(g)) if g.filesystem_size.is_none() => b.push(
                Action::CreateFilesystem {
                    disk: d.name.clone(),
                    filesystem: fs.clone(),
                },
                caps.filesystem_grow.clone(),
                "no filesystem mounted in the guest: format if blank, then mount",
            ),
            _ if has_fs && (d.size > h.size || fs_lags) => b.push(
                Action::GrowFilesystem {
                    disk: d.name.clone(),
                    size: d.size,
                },
                // A disk grown by the restart has its filesystem grown after it.
                if disk_by_restart {
                    Support::restart("after the restart grows its disk")
                } else {
                    caps.filesystem_grow.clone()
                },
                "grow the partition and the mounted filesystem online in the guest",
            ),
            _ => {}
        }
        if (d.bus, d.hotpluggable) != (h.bus, h.hotpluggable) {
            b.push(
                Action::ChangeDisk {
                    from: Box::new(h.clone()),
                    to: Box::new(d.clone()),
                },
                Support::restart("a disk's bus and hotplug flag are fixed while it is attached"),
                "",
            );
        }
    }

    for d in &desired.disks {
        if have.disk(&d.name).is_some() {
            continue;
        }
        let support = if !d.hotpluggable {
            Support::restart(format!("disk {} is not hot-pluggable", d.name))
        } else if !caps.disk_attach.is_live() {
            caps.disk_attach.clone()
        } else {
            take_slot(&mut slots, b.running)
        };
        let live = b.running && support.is_live();
        b.push(
            Action::AttachDisk {
                disk: Box::new(d.clone()),
            },
            support.clone(),
            "hot-plug on a free PCIe port",
        );
        if let Some(fs) = &d.filesystem {
            let action = Action::CreateFilesystem {
                disk: d.name.clone(),
                filesystem: fs.clone(),
            };
            if live {
                b.push(
                    action,
                    Support::Live,
                    "format the blank disk and mount it in the guest",
                );
            } else if b.running {
                b.restart.push(Step::new(
                    action,
                    Mode::Restart,
                    "after the disk is attached by the restart",
                ));
            } else {
                b.push(action, Support::Live, "");
            }
        }
    }

    for n in &desired.networks {
        match have.network(&n.name) {
            None => {
                let support = if caps.nic_add.is_live() {
                    take_slot(&mut slots, b.running)
                } else {
                    caps.nic_add.clone()
                };
                b.push(
                    Action::AddNic { nic: n.clone() },
                    support,
                    "hot-plug with its MAC",
                );
            }
            Some(h) if h != n => {
                b.push(
                    Action::UpdateNic {
                        from: h.clone(),
                        to: n.clone(),
                    },
                    caps.nic_update.clone(),
                    "unplug and plug again with the new settings",
                );
            }
            Some(_) => {}
        }
    }

    let mut steps = pre;
    steps.append(&mut b.live);
    let restart = if b.restart.is_empty() {
        None
    } else {
        Some(restart_decision(
            desired.restart_policy,
            desired.maintenance_window.as_ref(),
            now,
        ))
    };
    steps.append(&mut b.restart);
    if !observed.running
        && !observed.starting
        && should_run
        && desired.run_strategy != RunStrategy::Manual
    {
        steps.push(Step::new(
            Action::Start,
            Mode::Live,
            format!("runStrategy is {:?}", desired.run_strategy),
        ));
    }
    Ok(Plan { steps, restart })
}

/// What happens to the filesystem of a disk that grows, in words for the plan.
fn filesystem_fate(guest: Option<&crate::GuestDiskView>, have: &DiskConfig) -> String {
    match guest {
        Some(g) if g.grow_blocked.is_some() => format!(
            "left as it is ({})",
            g.grow_blocked.as_deref().unwrap_or_default()
        ),
        Some(g) if g.filesystem_size.is_some() => format!(
            "grown in the guest ({}{}{})",
            g.fs_type.as_deref().unwrap_or("filesystem"),
            g.mount
                .as_deref()
                .map(|m| format!(" at {m}"))
                .unwrap_or_default(),
            g.volume
                .as_deref()
                .map(|v| format!(", logical volume {v}"))
                .unwrap_or_default()
        ),
        // A view from the guest itself always names the device.
        Some(g) if g.device.is_some() => "none seen in the guest (raw disk)".into(),
        _ if have.filesystem.is_some() => "grown in the guest".into(),
        _ => "grown in the guest if it has one (the guest is not seen now)".into(),
    }
}

fn take_slot(slots: &mut Option<u32>, running: bool) -> Support {
    match slots {
        Some(0) if running => Support::restart(
            "no free PCIe port for a hot-plug (a restart adds ports; reserve more with the backend's hotplug-ports setting)",
        ),
        Some(n) if running => {
            *n -= 1;
            Support::Live
        }
        _ => Support::Live,
    }
}

/// Boot settings change only by a restart; cloud-init data is written at once for the next
/// boot (cloud-init reads it when the guest boots, never while it runs).
fn plan_boot(b: &mut Builder<'_>, desired: &VmConfig, have: &VmConfig) {
    if desired.boot != have.boot {
        b.push(
            Action::SetBoot {
                from: Box::new(have.boot.clone()),
                to: Box::new(desired.boot.clone()),
            },
            Support::restart("how the VM boots is fixed while it runs"),
            "",
        );
    }
    if desired.cloud_init != have.cloud_init {
        b.push(
            Action::SetCloudInit {
                to: Box::new(desired.cloud_init.clone()),
            },
            Support::Live,
            "takes effect at the next restart (the instance-id stays the VM's uid)",
        );
    }
}

fn plan_cpu(b: &mut Builder<'_>, desired: &VmConfig, have: &VmConfig) {
    let raise_max = desired.max_cpu != have.max_cpu;
    if raise_max {
        b.push(
            Action::SetMaxCpu {
                from: have.max_cpu,
                to: desired.max_cpu,
            },
            Support::restart("the vCPU ceiling (maxCpu) is fixed while the VM runs"),
            "",
        );
    }
    use std::cmp::Ordering::*;
    match desired.cpu.cmp(&have.cpu) {
        Equal => {}
        Greater => {
            let support = if desired.cpu > have.max_cpu {
                Support::restart(format!(
                    "{} vCPUs exceed the running VM's ceiling of {}",
                    desired.cpu, have.max_cpu
                ))
            } else if !b.caps.cpu_add.is_live() {
                b.caps.cpu_add.clone()
            } else {
                match b.caps.cpu_add_budget {
                    Some(budget) if desired.cpu - have.cpu > budget => Support::restart(format!(
                        "only {budget} more vCPU(s) can be added live (under TCG every vCPU ever created uses up a slot until restart)"
                    )),
                    _ => Support::Live,
                }
            };
            b.push(
                Action::AddVcpus {
                    from: have.cpu,
                    to: desired.cpu,
                },
                support,
                "hot-add into the lowest free slots, online in the guest",
            );
        }
        Less => {
            let (method, support) = match &b.caps.cpu_remove {
                Ok(m) => (*m, Support::Live),
                Err(why) => (CpuRemoval::Unplug, Support::restart(why.clone())),
            };
            let reason = match method {
                CpuRemoval::Unplug => "hot-unplug the highest vCPUs",
                CpuRemoval::GuestOffline => {
                    "take the highest vCPUs offline in the guest (this QEMU cannot re-add unplugged vCPUs safely)"
                }
            };
            b.push(
                Action::RemoveVcpus {
                    from: have.cpu,
                    to: desired.cpu,
                    method,
                },
                support,
                reason,
            );
        }
    }
}

fn plan_memory(b: &mut Builder<'_>, desired: &VmConfig, observed: &Observed) {
    let have = &observed.config;
    if desired.max_memory != have.max_memory {
        b.push(
            Action::SetMaxMemory {
                from: have.max_memory,
                to: desired.max_memory,
            },
            Support::restart("the memory ceiling (maxMemory) is fixed while the VM runs"),
            "",
        );
    }
    let hotplug_absent = b
        .caps
        .memory_hotplug_min_boot
        .filter(|min| observed.boot_memory < *min)
        .map(|min| {
            format!(
                "the VM booted with {} and memory hotplug needs at least {} at boot",
                human_bytes(observed.boot_memory),
                human_bytes(min)
            )
        });
    let offline = observed.guest.as_ref().map_or(0, |g| g.memory_offline);
    if offline > 0 && b.running {
        b.push(
            Action::OnlineMemory { bytes: offline },
            Support::Live,
            "the guest holds memory it did not online: online it movable through the agent",
        );
    }
    use std::cmp::Ordering::*;
    match desired.memory.cmp(&have.memory) {
        Equal => {}
        Greater => {
            let support = if let Some(why) = hotplug_absent {
                Support::Restart(why)
            } else if desired.memory > have.max_memory {
                Support::restart(format!(
                    "{} exceeds the running VM's ceiling of {}",
                    human_bytes(desired.memory),
                    human_bytes(have.max_memory)
                ))
            } else {
                b.caps.memory_grow.clone()
            };
            b.push(
                Action::GrowMemory {
                    from: have.memory,
                    to: desired.memory,
                },
                support,
                "virtio-mem plugs 2 MiB blocks, onlined movable in the guest",
            );
        }
        Less => {
            let support = if let Some(why) = hotplug_absent {
                Support::Restart(why)
            } else if desired.memory < observed.boot_memory {
                Support::restart(format!(
                    "{} is below the boot size {}: only hot-plugged memory can be removed",
                    human_bytes(desired.memory),
                    human_bytes(observed.boot_memory)
                ))
            } else {
                b.caps.memory_shrink.clone()
            };
            b.push(
                Action::ShrinkMemory {
                    from: have.memory,
                    to: desired.memory,
                },
                support,
                "virtio-mem unplugs hot-plugged blocks",
            );
        }
    }
}

/// Refuses what is never done, whatever the backend: shrinking a disk, detaching the boot
/// disk, changing a disk's filesystem or storage after creation.
pub fn check_allowed(desired: &VmConfig, have: &VmConfig) -> Result<(), PlanError> {
    let mut errors = Vec::new();
    for (i, d) in desired.disks.iter().enumerate() {
        let Some(h) = have.disk(&d.name) else {
            continue;
        };
        let at = format!("spec.disks[{i}]");
        if d.size < h.size {
            errors.push(FieldError::not_allowed(
                format!("{at}.size"),
                format!(
                    "disk {} is {} and disks never shrink (asked for {})",
                    d.name,
                    Quantity::from_bytes(h.size),
                    Quantity::from_bytes(d.size)
                ),
            ));
        }
        if d.filesystem.is_some() && h.filesystem.is_some() && d.filesystem != h.filesystem {
            errors.push(FieldError::not_allowed(
                format!("{at}.filesystem"),
                format!(
                    "disk {} already has its filesystem; changing it would lose data",
                    d.name
                ),
            ));
        }
        if differs(&d.storage_class, &h.storage_class) || differs(&d.volume_mode, &h.volume_mode) {
            errors.push(FieldError::not_allowed(
                at.clone(),
                format!(
                    "storageClass and volumeMode of disk {} are fixed at creation",
                    d.name
                ),
            ));
        }
    }
    if let Some(boot) = have.boot_disk()
        && desired.disk(&boot.name).is_none()
    {
        errors.push(FieldError::not_allowed(
            "spec.disks",
            format!("{} is the boot disk and can never be detached", boot.name),
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(PlanError(FieldErrors(errors)))
    }
}

/// Both set and different (an unset desired value keeps what the disk has).
fn differs<T: PartialEq>(desired: &Option<T>, have: &Option<T>) -> bool {
    desired.is_some() && have.is_some() && desired != have
}

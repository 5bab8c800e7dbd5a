//! The effect each step has on a VM when a backend carries it out correctly. The engine uses it
//! to say what it expects; tests use it as a simulated VM.

use crate::observed::{GuestDiskView, GuestView, Observed};
use crate::plan::{Action, Mode, Step};

/// Applies one step's effect to `vm` (configuration and guest view alike).
pub fn apply(vm: &mut Observed, action: &Action) {
    let cfg = &mut vm.config;
    let mut guest = vm.guest.take();
    let g = guest.as_mut();
    match action {
        Action::AddVcpus { to, .. } | Action::RemoveVcpus { to, .. } => {
            cfg.cpu = *to;
            if let Some(g) = g {
                g.cpus_online = *to;
            }
        }
        Action::GrowMemory { from, to } | Action::ShrinkMemory { from, to } => {
            cfg.memory = *to;
            if let Some(g) = g {
                g.memory_total = (g.memory_total + to).saturating_sub(*from);
            }
        }
        Action::OnlineMemory { bytes } => {
            if let Some(g) = g {
                g.memory_total += bytes;
                g.memory_offline = 0;
            }
        }
        Action::GrowDisk { disk, to, .. } => {
            if let Some(d) = cfg.disks.iter_mut().find(|d| d.name == *disk) {
                d.size = *to;
            }
            if let Some(d) = g.and_then(|g| g.disks.get_mut(disk)) {
                d.size = *to;
            }
        }
        Action::GrowFilesystem { disk, size } => {
            if let Some(d) = g.and_then(|g| g.disks.get_mut(disk)) {
                d.filesystem_size = Some(size.saturating_sub(d.offset));
            }
        }
        Action::AttachDisk { disk } => {
            cfg.disks.push((**disk).clone());
            if let Some(g) = g {
                g.disks.insert(
                    disk.name.clone(),
                    GuestDiskView {
                        size: disk.size,
                        ..Default::default()
                    },
                );
            }
        }
        Action::CreateFilesystem { disk, filesystem } => {
            if let Some(d) = cfg.disks.iter_mut().find(|d| d.name == *disk) {
                d.filesystem = Some(filesystem.clone());
            }
            if let Some(d) = g.and_then(|g| g.disks.get_mut(disk)) {
                d.filesystem_size = Some(d.size);
            }
        }
        Action::DetachDisk { disk } => {
            cfg.disks.retain(|d| d.name != *disk);
            if let Some(g) = g {
                g.disks.remove(disk);
            }
        }
        Action::ChangeDisk { to, .. } => {
            if let Some(d) = cfg.disks.iter_mut().find(|d| d.name == to.name) {
                d.bus = to.bus;
                d.hotpluggable = to.hotpluggable;
            }
        }
        Action::AddNic { nic } => {
            cfg.networks.push(nic.clone());
            if let Some(g) = g {
                g.macs.push(nic.mac.clone());
            }
        }
        Action::RemoveNic { nic } => {
            cfg.networks.retain(|n| n.name != nic.name);
            if let Some(g) = g {
                g.macs.retain(|m| *m != nic.mac);
            }
        }
        Action::UpdateNic { from, to } => {
            if let Some(n) = cfg.networks.iter_mut().find(|n| n.name == to.name) {
                *n = to.clone();
            }
            if let Some(g) = g {
                g.macs.retain(|m| *m != from.mac);
                g.macs.push(to.mac.clone());
            }
        }
        Action::SetMaxCpu { to, .. } => cfg.max_cpu = *to,
        Action::SetMaxMemory { to, .. } => cfg.max_memory = *to,
        Action::SetBoot { to, .. } => cfg.boot = (**to).clone(),
        Action::SetCloudInit { to } => cfg.cloud_init = (**to).clone(),
        Action::Start => {
            vm.running = true;
            guest = Some(GuestView::matching(cfg));
        }
        Action::Stop => {
            vm.running = false;
            guest = None;
        }
    }
    vm.guest = guest;
}

/// Applies the restart-only steps by one restart: their effects, then a fresh boot (the boot
/// memory becomes the current memory).
pub fn apply_restart<'a>(vm: &mut Observed, steps: impl IntoIterator<Item = &'a Step>) {
    for s in steps.into_iter().filter(|s| s.mode == Mode::Restart) {
        apply(vm, &s.action);
    }
    vm.boot_memory = vm.config.memory;
    let mut fresh = GuestView::matching(&vm.config);
    if let Some(old) = &vm.guest {
        // Filesystems keep their size across a reboot; the guest re-reads block sizes.
        for (name, d) in &mut fresh.disks {
            d.filesystem_size = old.disks.get(name).and_then(|o| o.filesystem_size);
            d.partitioned = old.disks.get(name).is_some_and(|o| o.partitioned);
        }
    }
    vm.guest = Some(fresh);
}

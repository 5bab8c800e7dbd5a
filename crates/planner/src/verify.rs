//! What "verified in the guest" means, per step: the guest's own view before and after.
//!
//! CPU: the online vCPU count equals the target. Memory: MemTotal moved by the requested amount
//! within one memory block. Disk: the block device has the new size; its filesystem fills it
//! (≥ 95 %). NIC: an interface with the MAC exists (and is gone after removal). Every live
//! step also leaves the guest's boot id unchanged.

use crate::observed::GuestView;
use crate::plan::Action;
use wukong_api::quantity::{MIB, human_bytes};

/// Memory is onlined and offlined in blocks of this size (x86-64 Linux).
pub const MEMORY_BLOCK: u64 = 128 * MIB;

/// Checks that `after` shows the effect of `action` relative to `before`. The error says what
/// the guest shows instead.
pub fn verify(action: &Action, before: &GuestView, after: &GuestView) -> Result<(), String> {
    if !matches!(action, Action::Start | Action::Stop)
        && before.boot_id.is_some()
        && after.boot_id != before.boot_id
    {
        return Err("the guest rebooted (boot id changed)".into());
    }
    let disk = |name: &str| after.disks.get(name);
    match action {
        Action::AddVcpus { to, .. } | Action::RemoveVcpus { to, .. } => {
            if after.cpus_online == *to {
                Ok(())
            } else {
                Err(format!(
                    "the guest has {} vCPU(s) online, expected {to}",
                    after.cpus_online
                ))
            }
        }
        Action::GrowMemory { from, to } | Action::ShrinkMemory { from, to } => {
            let moved = i128::from(after.memory_total) - i128::from(before.memory_total);
            let asked = i128::from(*to) - i128::from(*from);
            if (moved - asked).unsigned_abs() <= u128::from(MEMORY_BLOCK) {
                Ok(())
            } else {
                Err(format!(
                    "the guest's memory moved by {} MiB, expected {} MiB (MemTotal now {})",
                    moved / i128::from(MIB),
                    asked / i128::from(MIB),
                    human_bytes(after.memory_total)
                ))
            }
        }
        Action::OnlineMemory { bytes } => {
            if after.memory_offline == 0 {
                Ok(())
            } else {
                Err(format!(
                    "the guest still has {} of memory offline (asked to online {})",
                    human_bytes(after.memory_offline),
                    human_bytes(*bytes)
                ))
            }
        }
        Action::GrowDisk { disk: name, to, .. } => match disk(name) {
            Some(d) if d.size == *to => Ok(()),
            Some(d) => Err(format!(
                "the guest sees disk {name} at {}, expected {}",
                human_bytes(d.size),
                human_bytes(*to)
            )),
            None => Err(format!("the guest does not see disk {name}")),
        },
        Action::GrowFilesystem { disk: name, .. } | Action::CreateFilesystem { disk: name, .. } => {
            let size = match action {
                Action::GrowFilesystem { size, .. } => *size,
                _ => disk(name).map_or(0, |d| d.size),
            };
            match disk(name).map(|d| (d, d.filesystem_size)) {
                Some((d, Some(_))) if d.filesystem_fills(size) => Ok(()),
                Some((d, Some(fs))) => Err(format!(
                    "the filesystem on {name} is {}, it should fill {}",
                    human_bytes(fs),
                    human_bytes(size.saturating_sub(d.offset))
                )),
                _ => Err(format!("no mounted filesystem on disk {name} in the guest")),
            }
        }
        Action::AttachDisk { disk: d } => match disk(&d.name) {
            Some(g) if g.size == d.size => Ok(()),
            Some(g) => Err(format!(
                "the guest sees disk {} at {}, expected {}",
                d.name,
                human_bytes(g.size),
                human_bytes(d.size)
            )),
            None => Err(format!(
                "the guest does not see disk {} (by serial)",
                d.name
            )),
        },
        Action::DetachDisk { disk: name } => match disk(name) {
            None => Ok(()),
            Some(_) => Err(format!("the guest still sees disk {name}")),
        },
        Action::AddNic { nic } => has_mac(after, &nic.mac, true),
        Action::RemoveNic { nic } => has_mac(after, &nic.mac, false),
        Action::UpdateNic { from, to } => {
            has_mac(after, &to.mac, true)?;
            if from.mac != to.mac {
                has_mac(after, &from.mac, false)?;
            }
            Ok(())
        }
        Action::SetMaxCpu { .. }
        | Action::SetMaxMemory { .. }
        | Action::SetBoot { .. }
        | Action::SetCloudInit { .. }
        | Action::ChangeDisk { .. }
        | Action::Start
        | Action::Stop => Ok(()),
    }
}

fn has_mac(g: &GuestView, mac: &str, present: bool) -> Result<(), String> {
    match (g.macs.iter().any(|m| m.eq_ignore_ascii_case(mac)), present) {
        (true, true) | (false, false) => Ok(()),
        (false, true) => Err(format!("no interface with MAC {mac} in the guest")),
        (true, false) => Err(format!("the guest still has an interface with MAC {mac}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observed::GuestDiskView;

    fn guest(cpus: u32, mem: u64) -> GuestView {
        GuestView {
            cpus_online: cpus,
            memory_total: mem,
            boot_id: Some("b1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn cpu_counts_online_vcpus() {
        let a = Action::AddVcpus { from: 1, to: 2 };
        assert!(verify(&a, &guest(1, 0), &guest(2, 0)).is_ok());
        assert_eq!(
            verify(&a, &guest(1, 0), &guest(1, 0)).unwrap_err(),
            "the guest has 1 vCPU(s) online, expected 2"
        );
    }

    #[test]
    fn memory_within_one_block_and_reboot_detected() {
        let a = Action::GrowMemory {
            from: 512 * MIB,
            to: 1024 * MIB,
        };
        let before = guest(1, 480 * MIB);
        assert!(verify(&a, &before, &guest(1, 990 * MIB)).is_ok());
        assert!(verify(&a, &before, &guest(1, 600 * MIB)).is_err());
        let mut rebooted = guest(1, 992 * MIB);
        rebooted.boot_id = Some("b2".into());
        assert_eq!(
            verify(&a, &before, &rebooted).unwrap_err(),
            "the guest rebooted (boot id changed)"
        );
    }

    #[test]
    fn filesystem_must_fill_the_disk() {
        let a = Action::GrowFilesystem {
            disk: "d".into(),
            size: 1000 * MIB,
        };
        let mut after = guest(1, 0);
        after.disks.insert(
            "d".into(),
            GuestDiskView {
                size: 1000 * MIB,
                filesystem_size: Some(940 * MIB),
                partitioned: true,
                ..Default::default()
            },
        );
        assert!(verify(&a, &guest(1, 0), &after).is_err());
        after.disks.get_mut("d").unwrap().filesystem_size = Some(960 * MIB);
        assert!(verify(&a, &guest(1, 0), &after).is_ok());
    }
}

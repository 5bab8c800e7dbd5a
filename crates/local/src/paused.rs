//! What the daemon does about a VM that QEMU paused on a failed disk write (the host's
//! filesystem full: see `backend/pause.rs`). Each worker looks before it acts; while the VM is
//! paused nothing talks to its guest (it cannot answer), status carries the condition
//! `Paused` (reason `HostDiskFull`, or `IOError` for another failure) with the figures, and once
//! the filesystem has room again QEMU is told to continue: it retries the write, and the guest
//! goes on as if nothing had happened. The condition is also kept in memory and laid over what
//! the API reads, because a full filesystem may refuse the database's write of it too.

use std::sync::Arc;

use wukong_engine::{VmRef, status};

use crate::backend::IoPause;
use crate::daemon::Daemon;
use crate::store::{StoreError, VmRecord};

/// The condition type.
pub const CONDITION: &str = "Paused";

/// Room that must be free on the host before a VM paused for lack of space is let go: enough
/// that the write QEMU retries (and the next few) fit, so the VM does not pause again at once.
pub const RESUME_ROOM: u64 = 64 << 20;

/// The live condition of a VM held paused: reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// `HostDiskFull` or `IOError`.
    pub reason: &'static str,
    /// What happened, with the figures, and what lets it go on.
    pub message: String,
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

/// The condition for `pause`, `free` bytes being free where the images are (unknown: `None`).
pub fn held(pause: &IoPause, dir: &std::path::Path, free: Option<u64>) -> Held {
    let disks = if pause.disks.is_empty() {
        "a disk".to_string()
    } else {
        let names: Vec<&str> = pause.disks.iter().map(|(n, _)| n.as_str()).collect();
        format!("disk {}", names.join(", "))
    };
    let free = free.map_or("unknown".to_string(), mib);
    if pause.no_space() {
        Held {
            reason: "HostDiskFull",
            message: format!(
                "QEMU paused the VM: a write to {disks} found no space left on the host filesystem holding {} ({free} free); it resumes by itself once {} are free",
                dir.display(),
                mib(RESUME_ROOM)
            ),
        }
    } else {
        Held {
            reason: "IOError",
            message: format!(
                "QEMU paused the VM: a write to {disks} failed on the host ({free} free where its images are); it stays paused until the cause is mended and the VM restarted"
            ),
        }
    }
}

/// Whether a VM paused as `pause` says may be let go, with `free` bytes free.
pub fn may_resume(pause: &IoPause, free: Option<u64>) -> bool {
    pause.no_space() && free.is_some_and(|f| f >= RESUME_ROOM)
}

impl Daemon {
    /// Looks at whether QEMU holds `vm` paused on a failed write; lets it go when its host
    /// filesystem has room again. Returns whether it stays paused (then the worker leaves the
    /// guest alone this round). A QEMU that does not answer counts as not paused: the
    /// operation that follows meets it and says so.
    pub(crate) async fn check_io_pause(self: &Arc<Self>, vm: &VmRef) -> bool {
        let Ok(mut pause) = self.backend.io_pause(vm).await else {
            return false;
        };
        if let Some(p) = &pause
            && may_resume(p, self.backend.host_free(vm))
            && self.backend.resume_after_io_error(vm).await.is_ok()
        {
            // QEMU retries the write on `cont`; if it fails again the VM is paused again.
            pause = self.backend.io_pause(vm).await.unwrap_or(None);
        }
        let now = pause
            .as_ref()
            .map(|p| held(p, &self.backend.dir(vm), self.backend.host_free(vm)));
        let before = {
            let mut map = self.paused.lock().expect("paused");
            match &now {
                Some(h) => map.insert(vm.clone(), h.clone()),
                None => map.remove(vm),
            }
        };
        match (&before, &now) {
            (None, Some(h)) => self.notice(vm, h.message.clone(), true),
            (Some(_), None) => self.notice(
                vm,
                "the VM runs again: QEMU retried the write that had paused it".into(),
                false,
            ),
            _ => {}
        }
        self.store_pause(vm, now.as_ref());
        now.is_some()
    }

    /// Writes the condition into the stored status when it differs (best effort: a full
    /// filesystem may refuse it; the API's reads lay the live one over it meanwhile). Nothing
    /// is written while the stored status already says it: a write moves resourceVersion.
    fn store_pause(&self, vm: &VmRef, now: Option<&Held>) {
        let store = self.backend.store();
        let Ok(Some(rec)) = store.get(vm) else { return };
        let stored = rec
            .object
            .status
            .as_ref()
            .and_then(|st| st.conditions.iter().find(|c| c.type_ == CONDITION));
        let paused_stored = stored.is_some_and(|c| c.status == "True");
        let current = match now {
            Some(h) => stored.is_some_and(|c| shows(c, h)),
            None => !paused_stored,
        };
        if current {
            return;
        }
        let _ = store.update::<StoreError>(vm, None, |r| {
            let generation = r.object.metadata.generation;
            let st = r.object.status.get_or_insert_with(Default::default);
            match now {
                Some(h) => lay(&mut st.conditions, h, generation),
                None => status::set_condition(
                    &mut st.conditions,
                    CONDITION,
                    false,
                    "Resumed",
                    "QEMU retried the write that had paused the VM, and it runs",
                    generation,
                ),
            }
            Ok(())
        });
    }

    /// `rec` as the API shows it: with the live `Paused` condition over the stored one.
    pub fn live(&self, mut rec: VmRecord) -> VmRecord {
        let vm = crate::store::record_ref(&rec);
        if let Some(h) = self.paused.lock().expect("paused").get(&vm) {
            let generation = rec.object.metadata.generation;
            let st = rec.object.status.get_or_insert_with(Default::default);
            if !st.conditions.iter().any(|c| shows(c, h)) {
                lay(&mut st.conditions, h, generation);
            }
        }
        rec
    }
}

/// Whether `c` is the condition `h` describes.
fn shows(c: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition, h: &Held) -> bool {
    c.type_ == CONDITION && c.status == "True" && c.reason == h.reason && c.message == h.message
}

/// Sets the condition `h` describes.
fn lay(
    conditions: &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    h: &Held,
    generation: Option<i64>,
) {
    status::set_condition(
        conditions, CONDITION, true, h.reason, &h.message, generation,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pause(why: &str) -> IoPause {
        IoPause {
            disks: vec![("data".into(), why.into())],
        }
    }

    #[test]
    fn a_vm_paused_for_space_goes_on_only_with_room_for_it() {
        let p = pause("nospace");
        assert!(!may_resume(&p, None), "unknown room is not room");
        assert!(!may_resume(&p, Some(RESUME_ROOM - 1)));
        assert!(may_resume(&p, Some(RESUME_ROOM)));
        assert!(
            !may_resume(&pause("failed"), Some(u64::MAX)),
            "room does not mend another failure"
        );
    }

    #[test]
    fn the_condition_names_the_disk_the_figures_and_the_cure() {
        let h = held(
            &pause("nospace"),
            std::path::Path::new("/var/lib/wukong/vms/default/a"),
            Some(3 << 20),
        );
        assert_eq!(h.reason, "HostDiskFull");
        for part in [
            "disk data",
            "/var/lib/wukong/vms/default/a",
            "3.0 MiB free",
            "once 64.0 MiB are free",
        ] {
            assert!(h.message.contains(part), "{part}: {}", h.message);
        }
        let h = held(&pause("failed"), std::path::Path::new("/x"), None);
        assert_eq!(h.reason, "IOError");
        assert!(h.message.contains("unknown free"), "{}", h.message);
    }
}

//! Memory admission: the memory committed on the host is the sum, over the VMs that are not
//! stopped, of their memory (the larger of what they run with and what they are asked to
//! have) plus QEMU's own share; a creation, a start or a grow that would take it past the
//! daemon's limit (`serve --memory-commit`, default 90 % of the host's memory) is refused with
//! the figures, and nothing changes.

use wukong_api::{Phase, Quantity, RunStrategy};

use crate::store::VmRecord;

/// What QEMU itself holds beside the guest's memory (its code, TCG's translation cache, device
/// buffers), counted per VM. `cargo bench -p wukong --bench autoscaler` prints the figure it
/// measures (QEMU's RSS beside a busybox guest's touched memory).
pub const QEMU_OVERHEAD: u64 = 192 << 20;

/// The default limit: this share of the host's memory, percent.
pub const DEFAULT_PERCENT: u64 = 90;

/// How much memory the daemon may commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitLimit {
    /// A share of the host's MemTotal, percent (1–100).
    Percent(u64),
    /// Bytes.
    Bytes(u64),
}

impl Default for CommitLimit {
    fn default() -> Self {
        CommitLimit::Percent(DEFAULT_PERCENT)
    }
}

impl std::str::FromStr for CommitLimit {
    type Err = String;

    /// `90%` or a quantity (`20Gi`).
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_suffix('%') {
            return match p.trim().parse::<u64>() {
                Ok(p) if (1..=100).contains(&p) => Ok(CommitLimit::Percent(p)),
                _ => Err(format!("'{s}': a share is 1% to 100%")),
            };
        }
        match wukong_api::quantity::parse_bytes(s) {
            Ok(b) if b > 0 => Ok(CommitLimit::Bytes(b)),
            Ok(_) => Err(format!("'{s}': the limit must be above 0")),
            Err(e) => Err(format!(
                "'{s}': neither a share (90%) nor a quantity (20Gi): {e}"
            )),
        }
    }
}

impl CommitLimit {
    /// The limit in bytes on a host with `host_memory` bytes.
    pub fn bytes(self, host_memory: u64) -> u64 {
        match self {
            CommitLimit::Percent(p) => (u128::from(host_memory) * u128::from(p) / 100) as u64,
            CommitLimit::Bytes(b) => b,
        }
    }

    /// How it reads in a message.
    fn describe(self, host_memory: u64) -> String {
        match self {
            CommitLimit::Percent(p) => format!(
                "{p} % of the host's {}",
                Quantity::from_bytes(host_memory - host_memory % (1 << 20))
            ),
            CommitLimit::Bytes(_) => "the daemon's --memory-commit".into(),
        }
    }
}

/// Whether `rec` holds memory now or will once its worker acts: every VM but one that is
/// stopped and stays stopped.
pub fn holds_memory(rec: &VmRecord) -> bool {
    let phase = rec.object.status.as_ref().and_then(|s| s.phase);
    let halted = rec.object.spec.run_strategy == Some(RunStrategy::Halted);
    !(phase == Some(Phase::Stopped) && (halted || rec.stopped_by_user))
}

/// The memory `rec` is asked to have: its effective desired configuration's (the autoscaler's
/// target included), else what it runs with.
pub fn desired_memory(rec: &VmRecord) -> u64 {
    crate::daemon::desired_config(rec).map_or(rec.definition.memory, |c| c.memory)
}

/// The memory `rec` counts for, QEMU's share included.
pub fn committed(rec: &VmRecord) -> u64 {
    desired_memory(rec)
        .max(rec.definition.memory)
        .saturating_add(QEMU_OVERHEAD)
}

/// Admits a VM asking for `memory` (the guest's) beside `others` (the committed memory of every
/// other VM that holds memory), or says why not.
pub fn check(
    limit: CommitLimit,
    host_memory: u64,
    others: &[u64],
    memory: u64,
) -> Result<(), String> {
    let held: u64 = others.iter().sum();
    let wanted = memory.saturating_add(QEMU_OVERHEAD);
    let max = limit.bytes(host_memory);
    if held.saturating_add(wanted) <= max {
        return Ok(());
    }
    let mib = |b: u64| Quantity::from_bytes(b - b % (1 << 20));
    Err(format!(
        "the host cannot commit it: {} other VMs hold {} (with QEMU's {} each), this VM needs {}, and the limit is {} ({})",
        others.len(),
        mib(held),
        Quantity::from_bytes(QEMU_OVERHEAD),
        mib(wanted),
        mib(max),
        limit.describe(host_memory)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;

    #[test]
    fn limits_parse_as_a_share_or_a_quantity() {
        assert_eq!("90%".parse(), Ok(CommitLimit::Percent(90)));
        assert_eq!("1200Mi".parse(), Ok(CommitLimit::Bytes(1200 * MI)));
        for bad in ["0%", "101%", "x%", "0", "lots"] {
            assert!(bad.parse::<CommitLimit>().is_err(), "{bad}");
        }
        assert_eq!(CommitLimit::Percent(50).bytes(8192 * MI), 4096 * MI);
    }

    #[test]
    fn the_limit_counts_every_holder_and_qemu() {
        let limit = CommitLimit::Bytes(2112 * MI);
        let one = 512 * MI + QEMU_OVERHEAD;
        assert!(check(limit, 0, &[], 1024 * MI).is_ok());
        assert!(
            check(limit, 0, &[one, one], 512 * MI).is_ok(),
            "3 × 704 Mi fit exactly"
        );
        let e = check(limit, 0, &[one, one, one], 512 * MI).unwrap_err();
        assert!(e.contains("3 other VMs hold 2112Mi"), "{e}");
        assert!(e.contains("this VM needs 704Mi"), "{e}");
        assert!(e.contains("the limit is 2112Mi"), "{e}");
        let e = check(CommitLimit::Percent(90), 4096 * MI, &[], 4096 * MI).unwrap_err();
        assert!(e.contains("90 % of the host's 4Gi"), "{e}");
    }
}

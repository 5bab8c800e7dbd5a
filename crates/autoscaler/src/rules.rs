//! The rule of each resource on one reading, before any window: what it should have now.

use wukong_api::autoscaling::{
    CpuPolicy, DISK_STEP_ALIGNMENT, DiskPolicy, MEMORY_STEP, MemoryPolicy,
};

/// No change while the measured/target ratio is within this of 1 (HPA's tolerance).
pub const TOLERANCE: f64 = 0.1;
/// After an OOM kill memory goes to at least used + this.
pub const OOM_HEADROOM: u64 = 100 << 20;
/// After an OOM kill memory goes to at least used × this.
pub const OOM_FACTOR: f64 = 1.2;
/// Memory never goes below used × this.
pub const MEMORY_MARGIN: f64 = 1.2;
/// Memory pressure (`some avg10`, percent) at or above which memory is short.
pub const PRESSURE_THRESHOLD: f64 = 10.0;

/// vCPUs for `utilization` (0–1 of the `online` vCPUs): ceil(online × utilisation / target),
/// unchanged within the tolerance, at most double `online`, within the policy and `ceiling`.
pub fn cpu(policy: &CpuPolicy, online: u32, utilization: f64, ceiling: u32) -> u32 {
    let target = f64::from(policy.target) / 100.0;
    let ratio = utilization / target;
    let raw = if (ratio - 1.0).abs() <= TOLERANCE {
        online
    } else {
        // A hair below the exact product so that float noise never adds a vCPU.
        ((f64::from(online) * ratio) - 1e-9).ceil().max(1.0) as u32
    };
    let hi = policy.max.min(ceiling).max(1);
    raw.min(online.saturating_mul(2))
        .clamp(policy.min.min(hi), hi)
}

/// Memory figures one rule needs, bytes.
#[derive(Clone, Copy, Debug)]
pub struct MemoryReading {
    /// The VM's memory now (what the config says; MemTotal is less by what the kernel keeps).
    pub current: u64,
    /// MemTotal.
    pub total: u64,
    /// Used (MemTotal − MemAvailable).
    pub used: u64,
    /// An OOM kill happened since the last reading.
    pub oom: bool,
    /// Pressure stayed at or above the threshold on the last two readings.
    pub pressure: bool,
}

/// Memory for a reading: enough that used stays at the target share, unchanged within the
/// tolerance; after an OOM kill at least max(used + 100Mi, used × 1.2), under sustained
/// pressure at least one step more; never below used + 20 %; moved in 128 MiB steps from the
/// current size; within the policy, at least `floor` (the boot size) and at most `ceiling`.
pub fn memory(policy: &MemoryPolicy, r: MemoryReading, floor: u64, ceiling: u64) -> u64 {
    // What the guest does not see of the VM's memory (kernel, firmware) comes on top.
    let hidden = r.current.saturating_sub(r.total);
    let need = |guest: f64| guest as u64 + hidden;
    let target = f64::from(policy.target) / 100.0;
    let share = if r.total == 0 {
        0.0
    } else {
        r.used as f64 / r.total as f64
    };
    let ratio = share / target;
    let mut want = if (ratio - 1.0).abs() <= TOLERANCE {
        r.current
    } else {
        need(r.used as f64 / target)
    };
    want = want.max(need(r.used as f64 * MEMORY_MARGIN));
    if r.oom {
        let after_oom = (r.used + OOM_HEADROOM).max((r.used as f64 * OOM_FACTOR) as u64);
        want = want.max(after_oom + hidden).max(r.current + MEMORY_STEP);
    }
    if r.pressure {
        want = want.max(r.current + MEMORY_STEP);
    }
    let stepped = if want >= r.current {
        r.current + (want - r.current).div_ceil(MEMORY_STEP) * MEMORY_STEP
    } else {
        r.current - (r.current - want) / MEMORY_STEP * MEMORY_STEP
    };
    let hi = policy.max.min(ceiling);
    let lo = policy.min.max(floor).min(hi);
    stepped.clamp(lo, hi)
}

/// Why and to what a disk grows, or nothing.
#[derive(Clone, Debug, PartialEq)]
pub enum DiskRule {
    /// Nothing to do.
    Keep,
    /// Grow to this size, for this reason.
    Grow(u64, String),
    /// It should grow but is at its maximum.
    AtMax(String),
}

/// A disk's filesystem on one reading.
#[derive(Clone, Copy, Debug)]
pub struct DiskReading {
    /// The disk's size now (config), bytes.
    pub size: u64,
    /// Filesystem size and used bytes.
    pub fs_size: u64,
    /// Used bytes.
    pub used: u64,
    /// Inodes used, percent, when known.
    pub inodes_percent: Option<f64>,
    /// Bytes per second written over the recent readings, when known.
    pub fill_rate: Option<f64>,
    /// Seconds until the next evaluation plus one grow.
    pub horizon: f64,
}

/// Grow when used (or inodes) ≥ growAtUsage, or when the fill rate says the filesystem is full
/// within the horizon; by stepPercent but at least minStep, to a multiple of 1 MiB, at most
/// maxSize. Never shrinks.
pub fn disk(policy: &DiskPolicy, r: DiskReading) -> DiskRule {
    let percent = if r.fs_size == 0 {
        0.0
    } else {
        r.used as f64 * 100.0 / r.fs_size as f64
    };
    let at = f64::from(policy.grow_at);
    let why = if percent >= at {
        format!("filesystem {percent:.0} % full (grow at {at:.0} %)")
    } else if let Some(i) = r.inodes_percent.filter(|i| *i >= at) {
        format!("inodes {i:.0} % used (grow at {at:.0} %)")
    } else if let Some(rate) = r.fill_rate.filter(|x| *x > 0.0)
        && (r.fs_size.saturating_sub(r.used) as f64) / rate < r.horizon
    {
        format!(
            "filling at {:.1} MB/s: full in {:.0} s, before the next evaluation and a grow",
            rate / 1e6,
            r.fs_size.saturating_sub(r.used) as f64 / rate
        )
    } else {
        return DiskRule::Keep;
    };
    if r.size >= policy.max_size {
        return DiskRule::AtMax(format!("{why}; at maxSize"));
    }
    let by_percent = (u128::from(r.size) * u128::from(policy.step_percent) / 100) as u64;
    let grown = r
        .size
        .saturating_add(by_percent.max(policy.min_step))
        .div_ceil(DISK_STEP_ALIGNMENT)
        .saturating_mul(DISK_STEP_ALIGNMENT);
    DiskRule::Grow(grown.min(policy.max_size), why)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;

    fn cpu_policy(min: u32, max: u32, target: u8) -> CpuPolicy {
        CpuPolicy { min, max, target }
    }

    #[test]
    fn cpu_table() {
        let p = cpu_policy(1, 8, 60);
        // (online, utilisation) → vCPUs
        for (online, util, want) in [
            (1, 1.0, 2),  // ceil(1 × 1.0 / 0.6) = 2
            (2, 0.6, 2),  // on target
            (2, 0.65, 2), // within the tolerance
            (4, 0.3, 2),  // ceil(4 × 0.5) = 2
            (1, 0.0, 1),  // never below min
            (2, 1.0, 4),  // ceil(3.33) = 4 = at most double
            (4, 1.0, 7),  // ceil(6.67) = 7
            (5, 1.0, 8),  // clamped to max
            (3, 0.2, 1),  // ceil(1.0) = 1
        ] {
            assert_eq!(cpu(&p, online, util, 64), want, "{online} at {util}");
        }
        assert_eq!(cpu(&p, 2, 1.0, 3), 3, "never above maxCpu");
        assert_eq!(cpu(&cpu_policy(2, 4, 50), 1, 0.0, 64), 2, "up to min");
    }

    fn mem_policy() -> MemoryPolicy {
        MemoryPolicy {
            min: 256 * MI,
            max: 2048 * MI,
            target: 75,
        }
    }

    fn reading(current: u64, used: u64) -> MemoryReading {
        MemoryReading {
            current,
            total: current - 32 * MI,
            used,
            oom: false,
            pressure: false,
        }
    }

    #[test]
    fn memory_table() {
        let p = mem_policy();
        let floor = 256 * MI;
        // On target (75 % of MemTotal): unchanged.
        assert_eq!(
            memory(&p, reading(512 * MI, 360 * MI), floor, 4096 * MI),
            512 * MI
        );
        // 90 % of MemTotal: up to at least used / 0.75 + hidden, in 128 MiB steps.
        let up = memory(&p, reading(512 * MI, 432 * MI), floor, 4096 * MI);
        assert_eq!(up, 640 * MI);
        assert!(up >= 432 * MI * 4 / 3 + 32 * MI);
        // Little used: down, in whole steps, never below used × 1.2 + hidden, nor the floor.
        let down = memory(&p, reading(1024 * MI, 100 * MI), floor, 4096 * MI);
        assert_eq!(down, 256 * MI);
        let down = memory(&p, reading(1024 * MI, 400 * MI), floor, 4096 * MI);
        assert_eq!(down, 640 * MI, "1024 - 3 steps; 400/0.75 + 32 = 565");
        assert_eq!(
            memory(&p, reading(1024 * MI, 100 * MI), 768 * MI, 4096 * MI),
            768 * MI
        );
        // Clamped to max and the ceiling.
        assert_eq!(
            memory(&p, reading(2048 * MI, 2000 * MI), floor, 4096 * MI),
            2048 * MI
        );
        assert_eq!(
            memory(&p, reading(512 * MI, 470 * MI), floor, 512 * MI),
            512 * MI
        );
    }

    #[test]
    fn an_oom_kill_or_pressure_raises_memory_at_once() {
        let p = mem_policy();
        let mut r = reading(512 * MI, 300 * MI);
        assert_eq!(memory(&p, r, 256 * MI, 4096 * MI), 512 * MI, "on target");
        r.oom = true;
        let after = memory(&p, r, 256 * MI, 4096 * MI);
        assert!(after >= 640 * MI, "at least one step: {after}");
        r.oom = false;
        r.pressure = true;
        assert_eq!(memory(&p, r, 256 * MI, 4096 * MI), 640 * MI);
    }

    fn disk_policy() -> DiskPolicy {
        DiskPolicy {
            name: "data".into(),
            max_size: 1024 * MI,
            grow_at: 70,
            step_percent: 50,
            min_step: 64 * MI,
        }
    }

    fn dr(size: u64, used: u64) -> DiskReading {
        DiskReading {
            size,
            fs_size: size - 8 * MI,
            used,
            inodes_percent: None,
            fill_rate: None,
            horizon: 30.0,
        }
    }

    #[test]
    fn disk_table() {
        let p = disk_policy();
        assert_eq!(disk(&p, dr(256 * MI, 100 * MI)), DiskRule::Keep);
        let DiskRule::Grow(to, why) = disk(&p, dr(256 * MI, 200 * MI)) else {
            panic!()
        };
        assert_eq!(to, 384 * MI, "by 50 %");
        assert!(why.contains("full"), "{why}");
        // 50 % of 100 Mi is less than minStep.
        let small = DiskPolicy {
            min_step: 128 * MI,
            ..disk_policy()
        };
        assert!(
            matches!(disk(&small, dr(100 * MI, 90 * MI)), DiskRule::Grow(s, _) if s == 228 * MI)
        );
        // Clamped to maxSize, then at maxSize.
        assert!(matches!(disk(&p, dr(900 * MI, 800 * MI)), DiskRule::Grow(s, _) if s == 1024 * MI));
        assert!(matches!(
            disk(&p, dr(1024 * MI, 1000 * MI)),
            DiskRule::AtMax(_)
        ));
    }

    #[test]
    fn inodes_and_the_fill_rate_grow_a_disk_early() {
        let p = disk_policy();
        let mut r = dr(256 * MI, 10 * MI);
        r.inodes_percent = Some(71.0);
        assert!(matches!(disk(&p, r), DiskRule::Grow(..)));
        r.inodes_percent = None;
        r.fill_rate = Some(5.0 * MI as f64);
        assert!(
            matches!(disk(&p, r), DiskRule::Keep),
            "238 Mi free: full in 48 s"
        );
        r.used = 100 * MI;
        assert!(matches!(disk(&p, r), DiskRule::Grow(_, w) if w.contains("filling")));
        r.fill_rate = Some(-5.0);
        assert!(matches!(disk(&p, r), DiskRule::Keep), "freeing never grows");
    }
}

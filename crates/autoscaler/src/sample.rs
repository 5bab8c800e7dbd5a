//! One reading of a guest's metrics, as the guest-operations layer collects it.

use std::collections::BTreeMap;

/// A reading taken at `at` seconds on the caller's monotonic clock.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// When, in seconds.
    pub at: f64,
    /// CPU counters, when the guest reported them.
    pub cpu: Option<CpuSample>,
    /// Memory figures, when the guest reported them.
    pub memory: Option<MemorySample>,
    /// The mounted filesystem of each disk, by disk name.
    pub filesystems: BTreeMap<String, FsSample>,
}

/// The guest's aggregate CPU counters (`/proc/stat`, in clock ticks since boot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuSample {
    /// vCPUs online.
    pub online: u32,
    /// Ticks spent busy (everything but idle and iowait), all CPUs together.
    pub busy: u64,
    /// All ticks, all CPUs together.
    pub total: u64,
}

/// The guest's memory (`/proc/meminfo`, `/proc/vmstat`, `/proc/pressure/memory`), bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MemorySample {
    /// MemTotal.
    pub total: u64,
    /// MemAvailable.
    pub available: u64,
    /// OOM kills since boot, when the kernel counts them.
    pub oom_kills: Option<u64>,
    /// `some avg10` of memory pressure, percent, when the kernel has PSI.
    pub pressure: Option<f64>,
}

impl MemorySample {
    /// Bytes in use: MemTotal − MemAvailable.
    pub fn used(&self) -> u64 {
        self.total.saturating_sub(self.available)
    }
}

/// One mounted filesystem.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsSample {
    /// Mount point.
    pub mount: String,
    /// The disk's block device size, bytes (what the guest sees).
    pub disk_size: u64,
    /// Filesystem size, bytes.
    pub size: u64,
    /// Used bytes.
    pub used: u64,
    /// Inodes: total and used, when the guest reported them.
    pub inodes: Option<(u64, u64)>,
}

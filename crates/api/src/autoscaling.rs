//! Automatic scaling: the spec's `autoscaling` (what the autoscaler owns and within which
//! bounds), its defaults resolved ([`Policy`]), the status it writes (`status.autoscaling`),
//! and the effective desired state: the spec with the owned fields taken from the
//! autoscaler's target ([`apply_target`]).
//!
//! The autoscaled values live in status, not in spec, so that a tool owning the spec (GitOps)
//! never fights the autoscaler: the spec's value of an owned field is only the starting point.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::quantity::{GIB, MIB, Quantity};

/// Default evaluation interval, seconds.
pub const DEFAULT_INTERVAL: u32 = 15;
/// Default down-window, seconds.
pub const DEFAULT_STABILIZATION: u32 = 300;
/// Default least time between two scale-downs of one resource, seconds.
pub const DEFAULT_COOLDOWN: u32 = 600;
/// Default CPU target utilisation, percent.
pub const DEFAULT_CPU_TARGET: u8 = 70;
/// Default memory target utilisation, percent.
pub const DEFAULT_MEMORY_TARGET: u8 = 75;
/// Default fullness at which a filesystem's disk grows, percent.
pub const DEFAULT_GROW_AT: u8 = 85;
/// Default growth step, percent of the current size.
pub const DEFAULT_STEP_PERCENT: u16 = 25;
/// Default least growth step, bytes.
pub const DEFAULT_MIN_STEP: u64 = GIB;
/// Memory moves in steps of Linux's memory block size on x86.
pub const MEMORY_STEP: u64 = 128 * MIB;
/// Disks grow to multiples of this.
pub const DISK_STEP_ALIGNMENT: u64 = MIB;

/// Bounds of the time fields (seconds): interval, down-window, up-window, cooldown.
pub const INTERVAL_RANGE: (u32, u32) = (5, 3600);
/// Bounds of `stabilizationSeconds` and `cooldownSeconds`.
pub const WINDOW_RANGE: (u32, u32) = (0, 86_400);
/// Bounds of `scaleUpStabilizationSeconds`.
pub const UP_WINDOW_RANGE: (u32, u32) = (0, 3600);

/// Whether the autoscaler acts or only recommends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum AutoscalingMode {
    /// Changes the VM (live; a restart only where the restart policy allows one).
    #[default]
    Auto,
    /// Writes the recommendation to status and changes nothing.
    Recommend,
}

/// Automatic scaling from guest metrics. The autoscaler owns exactly the resources named here;
/// the value it sets lives in `status.autoscaling.target`, not in spec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AutoscalingSpec {
    /// `Auto` (default) or `Recommend`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<AutoscalingMode>,
    /// vCPUs between `min` and `max` from CPU utilisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuAutoscaling>,
    /// Memory between `min` and `max` from memory utilisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryAutoscaling>,
    /// Disks grown when their filesystem fills (at most 16).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = HISTORY_DISKS))]
    pub disks: Vec<DiskAutoscaling>,
    /// Seconds between two evaluations (5–3600). Default 15.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 5, max = 3600))]
    pub interval_seconds: Option<u32>,
    /// The down-window: a resource is scaled down only when every recommendation of this many
    /// seconds agrees (0–86400). Default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 86400))]
    pub stabilization_seconds: Option<u32>,
    /// The up-window (0–3600). Default 0: scale up at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 3600))]
    pub scale_up_stabilization_seconds: Option<u32>,
    /// Least time between two scale-downs of one resource (0–86400). Default 600. Scale-ups
    /// and disk growth are not held by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 86400))]
    pub cooldown_seconds: Option<u32>,
}

/// CPU autoscaling bounds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.min <= self.max", "message": "min must not exceed max"}
]))]
pub struct CpuAutoscaling {
    /// Fewest vCPUs.
    #[schemars(range(min = 1, max = 512))]
    pub min: u32,
    /// Most vCPUs (at most maxCpu).
    #[schemars(range(min = 1, max = 512))]
    pub max: u32,
    /// Target utilisation in percent. Default 70.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub target_utilization: Option<u8>,
}

/// Memory autoscaling bounds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemoryAutoscaling {
    /// Least memory (never below the boot size: the floor of a live shrink).
    pub min: Quantity,
    /// Most memory (at most maxMemory).
    pub max: Quantity,
    /// Target utilisation in percent (used = MemTotal − MemAvailable). Default 75.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub target_utilization: Option<u8>,
}

/// Disk autoscaling: grow the disk when its filesystem fills. Never shrinks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskAutoscaling {
    /// The disk, by name.
    #[schemars(length(max = 63))]
    pub name: String,
    /// Never grow beyond this.
    pub max_size: Quantity,
    /// Grow when the filesystem's bytes or inodes are at least this full, in percent (1–99).
    /// Default 85.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 99))]
    pub grow_at_usage: Option<u8>,
    /// Grow by this percentage of the current size (1–1000). Default 25.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub step_percent: Option<u16>,
    /// Grow by at least this much. Default 1Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_step: Option<Quantity>,
}

/// The autoscaler's part of status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    /// The mode of the last evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<AutoscalingMode>,
    /// RFC 3339 time of the last evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_evaluation: Option<String>,
    /// What the last evaluation measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<GuestMetrics>,
    /// What the autoscaler recommends now (in `Recommend` mode: all it does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommendation: Option<Target>,
    /// The values in effect for the owned fields (`Auto` mode): the spec with these is the
    /// desired state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// The last change the autoscaler made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change: Option<ScalingChange>,
    /// Why the last evaluation took no action, when it did not (missing metrics, a change in
    /// progress, a bound reached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the recommender remembers between evaluations (its windows, cooldowns and fill
    /// rates), so that a restarted daemon or operator carries on where it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<AutoscalingHistory>,
}

/// Most runs of one recommendation series kept; beyond it the two oldest merge (keeping the
/// higher value, which only ever holds a scale-down back).
pub const HISTORY_RUNS: usize = 128;
/// Most used-bytes readings kept per filesystem for its fill rate.
pub const HISTORY_POINTS: usize = 32;
/// Most disks the history follows: as many as a spec may autoscale (`disks`, at most 16).
pub const HISTORY_DISKS: usize = 16;
/// Most scale-down times kept: one per resource, vCPUs and memory beside the disks.
pub const HISTORY_SCALED_DOWN: usize = HISTORY_DISKS + 2;

/// The recommender's memory. Times are seconds since the Unix epoch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingHistory {
    /// The counters of the last reading (CPU utilisation and OOM kills are differences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reading: Option<LastReading>,
    /// The vCPU recommendations of the windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<SeriesHistory>,
    /// The memory recommendations (bytes) of the windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<SeriesHistory>,
    /// The last reading showed memory pressure (two in a row act).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub memory_pressure: bool,
    /// When each resource was last scaled down (its cooldown runs from there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = HISTORY_SCALED_DOWN))]
    pub scaled_down: Vec<TimedValue>,
    /// Disks already reported at their maxSize (warned once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = HISTORY_DISKS))]
    pub at_max_size: Vec<String>,
    /// Each filesystem's recent used bytes, for its fill rate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = HISTORY_DISKS))]
    pub used: Vec<UsedHistory>,
}

/// The counters of a reading that the next one is compared with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastReading {
    /// When.
    pub at: f64,
    /// vCPUs online, busy and all clock ticks since the guest booted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuCounters>,
    /// OOM kills since the guest booted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<u64>,
}

/// A guest's aggregate CPU counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CpuCounters {
    /// vCPUs online.
    pub online: u32,
    /// Busy ticks.
    pub busy: u64,
    /// All ticks.
    pub total: u64,
}

/// One resource's recommendations over time, equal neighbours merged into runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeriesHistory {
    /// When the series began (a window is covered once it began that long ago).
    pub since: f64,
    /// Oldest first.
    #[serde(default)]
    #[schemars(length(max = HISTORY_RUNS))]
    pub runs: Vec<Run>,
}

/// The same recommendation from `from` to `to`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Run {
    /// First reading.
    pub from: f64,
    /// Last reading.
    pub to: f64,
    /// vCPUs or bytes.
    pub value: u64,
}

/// A resource and a time: when it was last scaled down.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TimedValue {
    /// `cpu`, `memory` or `disk/NAME`.
    pub resource: String,
    /// When.
    pub at: f64,
}

/// One filesystem's used bytes over the recent readings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UsedHistory {
    /// The disk.
    pub disk: String,
    /// (time, used bytes), oldest first.
    #[serde(default)]
    #[schemars(length(max = HISTORY_POINTS))]
    pub points: Vec<Point>,
}

/// Used bytes at a time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Point {
    /// When.
    pub at: f64,
    /// Bytes.
    pub used: u64,
}

/// Values of the owned fields.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// vCPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    /// Memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Disk sizes by disk name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub disks: BTreeMap<String, Quantity>,
}

/// One change made by the autoscaler.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingChange {
    /// RFC 3339 time.
    pub time: String,
    /// `cpu`, `memory` or `disk/NAME`.
    pub resource: String,
    /// The value before.
    pub from: String,
    /// The value after.
    pub to: String,
    /// Why, with the figures that caused it.
    pub reason: String,
}

/// Guest metrics as the autoscaler last read them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuestMetrics {
    /// CPU utilisation over the last interval, percent of the online vCPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_utilization: Option<f64>,
    /// vCPUs online.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus_online: Option<u32>,
    /// Memory in use (MemTotal − MemAvailable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_used: Option<Quantity>,
    /// MemTotal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_total: Option<Quantity>,
    /// OOM kills since boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<u64>,
    /// Memory pressure: share of time some task stalled on memory over 10 s, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_pressure: Option<f64>,
    /// Filesystems of the disks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filesystems: Vec<FilesystemMetrics>,
}

/// One disk's filesystem.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FilesystemMetrics {
    /// The disk.
    pub disk: String,
    /// Mount point in the guest.
    pub mount_path: String,
    /// Filesystem size.
    pub size: Quantity,
    /// Used bytes.
    pub used: Quantity,
    /// Inodes used, percent (absent when the guest does not report inodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inodes_used_percent: Option<f64>,
    /// Bytes written per second over the recent samples (negative: freed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill_rate: Option<f64>,
}

/// The policy with every default filled in and every quantity in bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Act or only recommend.
    pub mode: AutoscalingMode,
    /// Seconds between evaluations.
    pub interval: u32,
    /// Down-window, seconds.
    pub down_window: u32,
    /// Up-window, seconds.
    pub up_window: u32,
    /// Least time between two scale-downs of one resource, seconds.
    pub cooldown: u32,
    /// CPU: min, max, target percent.
    pub cpu: Option<CpuPolicy>,
    /// Memory.
    pub memory: Option<MemoryPolicy>,
    /// Disks, by name.
    pub disks: Vec<DiskPolicy>,
}

/// CPU bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuPolicy {
    /// Fewest vCPUs.
    pub min: u32,
    /// Most vCPUs.
    pub max: u32,
    /// Target utilisation, percent.
    pub target: u8,
}

/// Memory bounds, bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPolicy {
    /// Least memory.
    pub min: u64,
    /// Most memory.
    pub max: u64,
    /// Target utilisation, percent.
    pub target: u8,
}

/// One disk's growth rule, bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskPolicy {
    /// The disk.
    pub name: String,
    /// Never beyond.
    pub max_size: u64,
    /// Fullness that triggers growth, percent.
    pub grow_at: u8,
    /// Step, percent of the current size.
    pub step_percent: u16,
    /// Least step.
    pub min_step: u64,
}

impl Policy {
    /// The policy of a validated spec (values that do not parse fall back to the bound they
    /// break, which validation has refused already).
    pub fn of(spec: &AutoscalingSpec) -> Policy {
        let bytes = |q: &Quantity| q.bytes().unwrap_or(0);
        Policy {
            mode: spec.mode.unwrap_or_default(),
            interval: spec.interval_seconds.unwrap_or(DEFAULT_INTERVAL),
            down_window: spec.stabilization_seconds.unwrap_or(DEFAULT_STABILIZATION),
            up_window: spec.scale_up_stabilization_seconds.unwrap_or(0),
            cooldown: spec.cooldown_seconds.unwrap_or(DEFAULT_COOLDOWN),
            cpu: spec.cpu.as_ref().map(|c| CpuPolicy {
                min: c.min,
                max: c.max,
                target: c.target_utilization.unwrap_or(DEFAULT_CPU_TARGET),
            }),
            memory: spec.memory.as_ref().map(|m| MemoryPolicy {
                min: bytes(&m.min),
                max: bytes(&m.max),
                target: m.target_utilization.unwrap_or(DEFAULT_MEMORY_TARGET),
            }),
            disks: spec
                .disks
                .iter()
                .map(|d| DiskPolicy {
                    name: d.name.clone(),
                    max_size: bytes(&d.max_size),
                    grow_at: d.grow_at_usage.unwrap_or(DEFAULT_GROW_AT),
                    step_percent: d.step_percent.unwrap_or(DEFAULT_STEP_PERCENT),
                    min_step: d.min_step.as_ref().map_or(DEFAULT_MIN_STEP, bytes),
                })
                .collect(),
        }
    }
}

/// The effective desired configuration: `config` (from the spec) with each field the policy
/// owns taken from `target`, kept within the policy's bounds (which may have changed since
/// the target was set). A disk is never made smaller than the spec says.
pub fn apply_target(config: &mut VmConfig, policy: &Policy, target: &Target) {
    if let (Some(p), Some(cpu)) = (&policy.cpu, target.cpu) {
        config.cpu = cpu.clamp(p.min, p.max).min(config.max_cpu);
    }
    if let (Some(p), Some(memory)) = (
        &policy.memory,
        target.memory.as_ref().and_then(|q| q.bytes().ok()),
    ) {
        config.memory = memory.clamp(p.min, p.max).min(config.max_memory);
    }
    for d in &policy.disks {
        let Some(size) = target.disks.get(&d.name).and_then(|q| q.bytes().ok()) else {
            continue;
        };
        if let Some(disk) = config.disks.iter_mut().find(|x| x.name == d.name) {
            disk.size = disk.size.max(size.min(d.max_size));
        }
    }
}

/// Makes `config` (from the spec) the effective desired configuration of a VM whose status is
/// `status`: the owned fields from the autoscaler's target, in `Auto` mode only.
pub fn effective(config: &mut VmConfig, status: Option<&crate::types::WukongStatus>) {
    let target = status
        .and_then(|s| s.autoscaling.as_ref())
        .and_then(|a| a.target.as_ref());
    if let (Some(spec), Some(target)) = (&config.autoscaling, target) {
        let policy = Policy::of(spec);
        if policy.mode == AutoscalingMode::Auto {
            apply_target(config, &policy, target);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HostLimits, resolve_new};
    use crate::types::{BackendKind, WukongSpec};

    fn config() -> VmConfig {
        let spec: WukongSpec = serde_json::from_value(serde_json::json!({
            "cpu": 1, "memory": "1Gi", "maxCpu": 4, "maxMemory": "4Gi",
            "disks": [{"name": "root", "size": "2Gi"}]
        }))
        .unwrap();
        let limits = HostLimits {
            max_cpu: 8,
            max_memory: 16 * GIB,
        };
        resolve_new("vm", &spec, BackendKind::Local, limits)
            .unwrap()
            .0
    }

    fn policy() -> Policy {
        Policy::of(
            &serde_json::from_value(serde_json::json!({
                "cpu": {"min": 1, "max": 3},
                "memory": {"min": "1Gi", "max": "2Gi"},
                "disks": [{"name": "root", "maxSize": "8Gi"}]
            }))
            .unwrap(),
        )
    }

    #[test]
    fn defaults_are_filled() {
        let p = policy();
        assert_eq!((p.interval, p.down_window, p.up_window), (15, 300, 0));
        assert_eq!(p.cooldown, 600);
        assert_eq!(p.cpu.unwrap().target, 70);
        assert_eq!(p.memory.unwrap().target, 75);
        assert_eq!(p.disks[0].min_step, GIB);
        assert_eq!((p.disks[0].grow_at, p.disks[0].step_percent), (85, 25));
        assert_eq!(p.mode, AutoscalingMode::Auto);
    }

    #[test]
    fn the_target_overrides_owned_fields_within_bounds() {
        let mut c = config();
        let t = Target {
            cpu: Some(9),
            memory: Some("1536Mi".into()),
            disks: [("root".to_string(), Quantity::from("16Gi"))].into(),
        };
        apply_target(&mut c, &policy(), &t);
        assert_eq!(c.cpu, 3, "clamped to the policy's max");
        assert_eq!(c.memory, 1536 * MIB);
        assert_eq!(c.disks[0].size, 8 * GIB, "clamped to maxSize");
    }

    #[test]
    fn fields_not_owned_and_smaller_disks_stay_as_the_spec_says() {
        let mut c = config();
        let mut p = policy();
        p.cpu = None;
        let t = Target {
            cpu: Some(3),
            memory: None,
            disks: [("root".to_string(), Quantity::from("1Gi"))].into(),
        };
        apply_target(&mut c, &p, &t);
        assert_eq!((c.cpu, c.memory), (1, GIB));
        assert_eq!(c.disks[0].size, 2 * GIB, "a disk never shrinks");
    }
}

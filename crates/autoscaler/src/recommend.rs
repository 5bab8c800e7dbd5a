//! The recommender of one VM: the readings it has seen, the recommendations of each window,
//! and one evaluation per reading.
//!
//! Scale-up takes the lowest recommendation of the up-window (0 s: the current one), scale-down
//! the highest of the down-window and only once that window is covered, and never sooner than
//! the cooldown after the previous scale-down of the same resource. Disks grow on the
//! reading that asks for it. A missing reading, or one taken while a change is under way,
//! changes nothing and says why.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use wukong_api::Quantity;
use wukong_api::autoscaling::{
    AutoscalingHistory, CpuCounters, FilesystemMetrics, GuestMetrics, HISTORY_DISKS,
    HISTORY_POINTS, HISTORY_RUNS, HISTORY_SCALED_DOWN, LastReading, Point, Policy, Run,
    SeriesHistory, Target, TimedValue, UsedHistory,
};

use crate::rules::{self, DiskReading, DiskRule, MemoryReading, PRESSURE_THRESHOLD};
use crate::sample::{CpuSample, MemorySample, Sample};

/// What the VM has now, from the effective desired configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Current {
    /// vCPUs.
    pub cpu: u32,
    /// Memory, bytes.
    pub memory: u64,
    /// Memory it booted with: the floor of a live shrink.
    pub boot_memory: u64,
    /// The vCPU ceiling.
    pub max_cpu: u32,
    /// The memory ceiling, bytes.
    pub max_memory: u64,
    /// Disk sizes by name, bytes.
    pub disks: BTreeMap<String, u64>,
}

impl Current {
    /// What a VM whose effective desired configuration is `config` has, with the memory it
    /// booted with.
    pub fn of(config: &wukong_api::VmConfig, boot_memory: u64) -> Current {
        Current {
            cpu: config.cpu,
            memory: config.memory,
            boot_memory,
            max_cpu: config.max_cpu,
            max_memory: config.max_memory,
            disks: config
                .disks
                .iter()
                .map(|d| (d.name.clone(), d.size))
                .collect(),
        }
    }
}

/// A change the autoscaler decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// `cpu`, `memory` or `disk/NAME`.
    pub resource: String,
    /// Before (vCPUs or bytes).
    pub from: u64,
    /// After.
    pub to: u64,
    /// Why, with the figures.
    pub reason: String,
}

impl Change {
    /// A value of this change's resource as people read it.
    pub fn show(&self, v: u64) -> String {
        if self.resource == "cpu" {
            v.to_string()
        } else {
            Quantity::from_bytes(v).to_string()
        }
    }
}

/// The outcome of one evaluation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evaluation {
    /// What each owned resource should have now (after the windows).
    pub recommendation: Target,
    /// The owned resources whose recommendation differs from what they have.
    pub changes: Vec<Change>,
    /// Why an owned resource was left as it is, when not simply on target.
    pub reasons: Vec<String>,
    /// Conditions worth a Warning, said once when they begin (a disk at maxSize that should
    /// grow).
    pub warnings: Vec<String>,
    /// The figures of this reading.
    pub metrics: Option<GuestMetrics>,
    /// The reading was taken while a change was under way: it was not judged.
    pub busy: bool,
}

/// A series of recommendations over time, equal neighbours merged into runs.
#[derive(Clone, Debug, Default, PartialEq)]
struct Series {
    since: Option<f64>,
    runs: VecDeque<Run>,
}

impl Series {
    fn push(&mut self, at: f64, v: u64, keep: f64) {
        self.since.get_or_insert(at);
        match self.runs.back_mut() {
            Some(r) if r.value == v => r.to = r.to.max(at),
            _ => self.runs.push_back(Run {
                from: at,
                to: at,
                value: v,
            }),
        }
        while self.runs.front().is_some_and(|r| r.to < at - keep) {
            self.runs.pop_front();
        }
        // Bounded: the two oldest runs merge, keeping the higher value (a scale-down is only
        // held back by it).
        while self.runs.len() > HISTORY_RUNS {
            let a = self.runs.pop_front().expect("more than one run");
            let b = self.runs.front_mut().expect("more than one run");
            b.from = a.from;
            b.value = b.value.max(a.value);
        }
    }

    fn latest(&self) -> Option<u64> {
        self.runs.back().map(|r| r.value)
    }

    fn covers(&self, now: f64, window: f64) -> bool {
        self.since.is_some_and(|s| s <= now - window)
    }

    /// The values of the readings from `now − window` on.
    fn within(&self, now: f64, window: f64) -> impl Iterator<Item = u64> + '_ {
        self.runs
            .iter()
            .filter(move |r| r.to >= now - window)
            .map(|r| r.value)
    }

    fn history(&self) -> Option<SeriesHistory> {
        Some(SeriesHistory {
            since: self.since?,
            runs: self.runs.iter().copied().collect(),
        })
    }

    fn of(h: Option<&SeriesHistory>) -> Series {
        h.map(|h| Series {
            since: Some(h.since),
            runs: h.runs.iter().copied().take(HISTORY_RUNS).collect(),
        })
        .unwrap_or_default()
    }
}

/// One VM's recommender. Keep it for the VM's life (or its [`history`](Self::history)
/// across restarts); feed it every reading. Times are seconds on one clock: the backends use
/// the wall clock, so that a history outlives the process that wrote it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recommender {
    prev: Option<Sample>,
    cpu: Series,
    memory: Series,
    pressure: bool,
    used: BTreeMap<String, VecDeque<(f64, u64)>>,
    last_down: BTreeMap<String, f64>,
    at_max: BTreeSet<String>,
}

impl Recommender {
    /// A recommender that carries on from `history` (written by [`history`](Self::history),
    /// perhaps by another process).
    pub fn resume(history: Option<&AutoscalingHistory>) -> Recommender {
        let Some(h) = history else {
            return Recommender::default();
        };
        Recommender {
            prev: h.last_reading.map(|l| Sample {
                at: l.at,
                cpu: l.cpu.map(|c| CpuSample {
                    online: c.online,
                    busy: c.busy,
                    total: c.total,
                }),
                memory: l.oom_kills.map(|n| MemorySample {
                    oom_kills: Some(n),
                    ..Default::default()
                }),
                filesystems: Default::default(),
            }),
            cpu: Series::of(h.cpu.as_ref()),
            memory: Series::of(h.memory.as_ref()),
            pressure: h.memory_pressure,
            used: h
                .used
                .iter()
                .map(|u| {
                    let points = u.points.iter().map(|p| (p.at, p.used)).collect();
                    (u.disk.clone(), points)
                })
                .collect(),
            last_down: h
                .scaled_down
                .iter()
                .map(|t| (t.resource.clone(), t.at))
                .collect(),
            at_max: h.at_max_size.iter().cloned().collect(),
        }
    }

    /// What this recommender remembers, to be stored with the VM's status (within the
    /// status schema's bounds).
    pub fn history(&self) -> AutoscalingHistory {
        AutoscalingHistory {
            last_reading: self.prev.as_ref().map(|p| LastReading {
                at: p.at,
                cpu: p.cpu.map(|c| CpuCounters {
                    online: c.online,
                    busy: c.busy,
                    total: c.total,
                }),
                oom_kills: p.memory.and_then(|m| m.oom_kills),
            }),
            cpu: self.cpu.history(),
            memory: self.memory.history(),
            memory_pressure: self.pressure,
            scaled_down: self
                .last_down
                .iter()
                .map(|(resource, at)| TimedValue {
                    resource: resource.clone(),
                    at: *at,
                })
                .take(HISTORY_SCALED_DOWN)
                .collect(),
            at_max_size: self.at_max.iter().take(HISTORY_DISKS).cloned().collect(),
            used: self
                .used
                .iter()
                .take(HISTORY_DISKS)
                .map(|(disk, h)| UsedHistory {
                    disk: disk.clone(),
                    points: h
                        .iter()
                        .skip(h.len().saturating_sub(HISTORY_POINTS))
                        .map(|(at, used)| Point {
                            at: *at,
                            used: *used,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Evaluates one reading (`Err`: why there is none). `busy` says why the VM is not in a
    /// state to judge (a change under way): the reading then only becomes the base of the
    /// next one.
    pub fn evaluate(
        &mut self,
        policy: &Policy,
        current: &Current,
        reading: Result<Sample, String>,
        busy: Option<&str>,
    ) -> Evaluation {
        let mut ev = Evaluation {
            recommendation: self.hold(policy, current),
            ..Default::default()
        };
        let sample = match reading {
            Ok(s) => s,
            Err(e) => {
                ev.reasons.push(format!("no metrics: {e}; nothing changed"));
                return ev;
            }
        };
        let prev = self.prev.replace(sample.clone());
        let utilization = match (sample.cpu, prev.as_ref().and_then(|p| p.cpu)) {
            (Some(c), Some(p)) if c.online == p.online && c.total > p.total => {
                Some(c.busy.saturating_sub(p.busy) as f64 / (c.total - p.total) as f64)
            }
            _ => None,
        };
        let fill_rates = self.fill_rates(policy, &sample);
        ev.metrics = Some(metrics(&sample, utilization, &fill_rates));
        if let Some(why) = busy {
            ev.busy = true;
            ev.reasons.push(format!("{why}; waiting for it to finish"));
            return ev;
        }
        self.cpu_rule(policy, current, &sample, utilization, &mut ev);
        self.memory_rule(policy, current, &sample, prev.as_ref(), &mut ev);
        self.disk_rules(policy, current, &sample, &fill_rates, &mut ev);
        ev
    }

    /// The recommendation that changes nothing.
    fn hold(&self, policy: &Policy, current: &Current) -> Target {
        Target {
            cpu: policy.cpu.map(|_| current.cpu),
            memory: policy.memory.map(|_| Quantity::from_bytes(current.memory)),
            disks: policy
                .disks
                .iter()
                .filter_map(|d| {
                    let size = *current.disks.get(&d.name)?;
                    Some((d.name.clone(), Quantity::from_bytes(size)))
                })
                .collect(),
        }
    }

    fn cpu_rule(
        &mut self,
        policy: &Policy,
        current: &Current,
        sample: &Sample,
        utilization: Option<f64>,
        ev: &mut Evaluation,
    ) {
        let Some(p) = &policy.cpu else { return };
        let Some(c) = sample.cpu else {
            ev.reasons
                .push("cpu: the guest reported no CPU counters".into());
            return;
        };
        if c.online != current.cpu {
            ev.reasons.push(format!(
                "cpu: {} vCPUs online, {} desired: a change is under way",
                c.online, current.cpu
            ));
            return;
        }
        let Some(u) = utilization else {
            ev.reasons
                .push("cpu: utilisation needs two readings at the same vCPU count".into());
            return;
        };
        let raw = rules::cpu(p, c.online, u, current.max_cpu);
        let why = format!(
            "utilisation {:.0} % of {} vCPUs, target {} %",
            u * 100.0,
            c.online,
            p.target
        );
        self.cpu.push(sample.at, u64::from(raw), keep(policy));
        let to = self.decide("cpu", policy, u64::from(current.cpu), sample.at, ev);
        ev.recommendation.cpu = Some(to as u32);
        push_change(ev, "cpu", u64::from(current.cpu), to, why);
    }

    fn memory_rule(
        &mut self,
        policy: &Policy,
        current: &Current,
        sample: &Sample,
        prev: Option<&Sample>,
        ev: &mut Evaluation,
    ) {
        let Some(p) = &policy.memory else { return };
        let Some(m) = sample.memory.filter(|m| m.total > 0) else {
            ev.reasons
                .push("memory: the guest reported no MemTotal/MemAvailable".into());
            return;
        };
        let prev_kills = prev.and_then(|p| p.memory).and_then(|m| m.oom_kills);
        let oom = matches!((m.oom_kills, prev_kills), (Some(n), Some(o)) if n > o);
        let pressed = m.pressure.is_some_and(|x| x >= PRESSURE_THRESHOLD);
        let pressure = pressed && self.pressure;
        self.pressure = pressed;
        let reading = MemoryReading {
            current: current.memory,
            total: m.total,
            used: m.used(),
            oom,
            pressure,
        };
        let raw = rules::memory(p, reading, current.boot_memory, current.max_memory);
        let mut why = format!(
            "{} used of {} ({:.0} %), target {} %",
            Quantity::from_bytes(m.used()),
            Quantity::from_bytes(m.total),
            m.used() as f64 * 100.0 / m.total as f64,
            p.target
        );
        if oom {
            why.push_str(&format!(
                "; {} OOM kill(s) since the last reading",
                m.oom_kills.unwrap_or(0) - prev_kills.unwrap_or(0)
            ));
        }
        if pressure {
            why.push_str(&format!(
                "; memory pressure {:.0} %",
                m.pressure.unwrap_or(0.0)
            ));
        }
        let now = sample.at;
        self.memory.push(now, raw, keep(policy));
        // An OOM kill or pressure does not wait for the up-window.
        let to = if (oom || pressure) && raw > current.memory {
            raw
        } else {
            self.decide("memory", policy, current.memory, now, ev)
        };
        ev.recommendation.memory = Some(Quantity::from_bytes(to));
        push_change(ev, "memory", current.memory, to, why);
    }

    fn disk_rules(
        &mut self,
        policy: &Policy,
        current: &Current,
        sample: &Sample,
        fill_rates: &BTreeMap<String, f64>,
        ev: &mut Evaluation,
    ) {
        for d in &policy.disks {
            let resource = format!("disk/{}", d.name);
            let Some(&size) = current.disks.get(&d.name) else {
                ev.reasons.push(format!("{resource}: not a disk of the VM"));
                continue;
            };
            let Some(fs) = sample.filesystems.get(&d.name) else {
                ev.reasons.push(format!(
                    "{resource}: the guest reported no mounted filesystem on it"
                ));
                continue;
            };
            if fs.disk_size < size {
                ev.reasons.push(format!(
                    "{resource}: the guest sees {} of {}: a grow is under way",
                    Quantity::from_bytes(fs.disk_size),
                    Quantity::from_bytes(size)
                ));
                continue;
            }
            let reading = DiskReading {
                size,
                fs_size: fs.size,
                used: fs.used,
                inodes_percent: fs
                    .inodes
                    .filter(|(t, _)| *t > 0)
                    .map(|(t, u)| u as f64 * 100.0 / t as f64),
                fill_rate: fill_rates.get(&d.name).copied(),
                horizon: 2.0 * f64::from(policy.interval),
            };
            match rules::disk(d, reading) {
                DiskRule::Keep => {
                    self.at_max.remove(&d.name);
                }
                DiskRule::Grow(to, why) => {
                    self.at_max.remove(&d.name);
                    ev.recommendation
                        .disks
                        .insert(d.name.clone(), Quantity::from_bytes(to));
                    push_change(ev, &resource, size, to, why);
                }
                DiskRule::AtMax(why) => {
                    let msg = format!(
                        "{resource}: {why} {}: it is not grown further",
                        Quantity::from_bytes(d.max_size)
                    );
                    if self.at_max.insert(d.name.clone()) {
                        ev.warnings.push(msg.clone());
                    }
                    ev.reasons.push(msg);
                }
            }
        }
    }

    /// The windowed decision for a resource whose latest raw recommendation was just pushed.
    fn decide(
        &mut self,
        resource: &str,
        policy: &Policy,
        current: u64,
        now: f64,
        ev: &mut Evaluation,
    ) -> u64 {
        let series = if resource == "cpu" {
            &self.cpu
        } else {
            &self.memory
        };
        let (up_w, down_w) = (f64::from(policy.up_window), f64::from(policy.down_window));
        let up = if policy.up_window == 0 {
            series.latest().unwrap_or(current)
        } else if series.covers(now, up_w) {
            series.within(now, up_w).min().unwrap_or(current)
        } else {
            current
        };
        if up > current {
            return up;
        }
        let down = if series.covers(now, down_w) {
            series.within(now, down_w).max().unwrap_or(current)
        } else {
            current
        };
        let wants_down = series.latest().is_some_and(|v| v < current);
        if down >= current {
            if wants_down {
                ev.reasons.push(format!(
                    "{resource}: a lower value is held back by the {} s down-window",
                    policy.down_window
                ));
            }
            return current;
        }
        if let Some(last) = self.last_down.get(resource)
            && now - last < f64::from(policy.cooldown)
        {
            ev.reasons.push(format!(
                "{resource}: scaled down {:.0} s ago; the cooldown is {} s",
                now - last,
                policy.cooldown
            ));
            return current;
        }
        down
    }

    /// Tells the recommender that `changes` were made at `at` (a scale-down starts its
    /// resource's cooldown; a grown disk's fill rate starts again). Recommend mode never calls it.
    pub fn applied(&mut self, changes: &[Change], at: f64) {
        for c in changes {
            if c.to < c.from {
                self.last_down.insert(c.resource.clone(), at);
            }
            // A grown disk's fill rate is measured afresh: a rate from before the grow
            // (a one-off copy of a large file, say) already had its answer.
            if let Some(disk) = c.resource.strip_prefix("disk/") {
                self.used.remove(disk);
            }
        }
    }

    /// Bytes per second written into each filesystem over the recent readings.
    fn fill_rates(&mut self, policy: &Policy, sample: &Sample) -> BTreeMap<String, f64> {
        let span = (4.0 * f64::from(policy.interval)).max(60.0);
        let mut rates = BTreeMap::new();
        for (disk, fs) in &sample.filesystems {
            let h = self.used.entry(disk.clone()).or_default();
            h.push_back((sample.at, fs.used));
            while h.front().is_some_and(|(t, _)| *t < sample.at - span) || h.len() > HISTORY_POINTS
            {
                h.pop_front();
            }
            if let (Some((t0, u0)), Some((t1, u1))) = (h.front(), h.back())
                && t1 > t0
            {
                rates.insert(disk.clone(), (*u1 as f64 - *u0 as f64) / (t1 - t0));
            }
        }
        self.used.retain(|d, _| sample.filesystems.contains_key(d));
        rates
    }
}

/// How long recommendations are kept: the longer window.
fn keep(policy: &Policy) -> f64 {
    f64::from(policy.down_window.max(policy.up_window))
}

fn push_change(ev: &mut Evaluation, resource: &str, from: u64, to: u64, reason: String) {
    if from != to {
        ev.changes.push(Change {
            resource: resource.into(),
            from,
            to,
            reason,
        });
    }
}

fn metrics(s: &Sample, utilization: Option<f64>, rates: &BTreeMap<String, f64>) -> GuestMetrics {
    GuestMetrics {
        cpu_utilization: utilization.map(|u| (u * 1000.0).round() / 10.0),
        cpus_online: s.cpu.map(|c| c.online),
        memory_used: s.memory.map(|m| Quantity::from_bytes(m.used())),
        memory_total: s.memory.map(|m| Quantity::from_bytes(m.total)),
        oom_kills: s.memory.and_then(|m| m.oom_kills),
        memory_pressure: s.memory.and_then(|m| m.pressure),
        filesystems: s
            .filesystems
            .iter()
            .map(|(disk, fs)| FilesystemMetrics {
                disk: disk.clone(),
                mount_path: fs.mount.clone(),
                size: Quantity::from_bytes(fs.size),
                used: Quantity::from_bytes(fs.used),
                inodes_used_percent: fs
                    .inodes
                    .filter(|(t, _)| *t > 0)
                    .map(|(t, u)| (u as f64 * 1000.0 / t as f64).round() / 10.0),
                fill_rate: rates.get(disk).map(|r| r.round()),
            })
            .collect(),
    }
}

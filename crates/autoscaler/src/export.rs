//! The autoscaler's figures in Prometheus form, the same on both backends: per-VM gauges of
//! the last reading and the recommendation, counters of evaluations and of the changes made.
//!
//! A figure the last reading lacked is absent, never a stale or a zero value: each
//! observation replaces every gauge of its VM.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use wukong_api::autoscaling::{AutoscalingMode, Policy};

use crate::Evaluation;

type Labels = Vec<(String, String)>;
type FloatGauge = Family<Labels, Gauge<f64, AtomicU64>>;
/// A VM by namespace and name.
type VmKey = (String, String);

/// The registered families.
pub struct AutoscalerMetrics {
    /// One family per [`Which`], in its order.
    gauges: [FloatGauge; GAUGES.len()],
    evaluations: Family<Labels, Counter>,
    changes: Family<Labels, Counter>,
    /// The gauge label sets each VM has now, to replace or remove them.
    present: Mutex<HashMap<VmKey, Vec<(Which, Labels)>>>,
}

/// The gauges; `Which as usize` indexes [`GAUGES`] and `AutoscalerMetrics::gauges`.
#[derive(Clone, Copy, Debug)]
enum Which {
    CpuUtilization,
    CpusOnline,
    MemoryUsed,
    MemoryTotal,
    MemoryPressure,
    OomKills,
    FsSize,
    FsUsed,
    FsFillRate,
    Recommendation,
}

/// Name and help of each gauge, in [`Which`]'s order.
const GAUGES: [(&str, &str); 10] = [
    (
        "guest_cpu_utilization_percent",
        "CPU utilisation of the online vCPUs over the last interval, percent",
    ),
    ("guest_cpus_online", "vCPUs online in the guest"),
    (
        "guest_memory_used_bytes",
        "Memory in use in the guest (MemTotal - MemAvailable)",
    ),
    ("guest_memory_total_bytes", "MemTotal of the guest"),
    (
        "guest_memory_pressure_percent",
        "Share of the last 10 s some task stalled on memory, percent",
    ),
    ("guest_oom_kills", "OOM kills since the guest booted"),
    (
        "guest_filesystem_size_bytes",
        "Size of the filesystem on a disk",
    ),
    (
        "guest_filesystem_used_bytes",
        "Bytes used in the filesystem on a disk",
    ),
    (
        "guest_filesystem_fill_rate_bytes_per_second",
        "Bytes written per second into the filesystem over the recent readings",
    ),
    (
        "autoscaler_recommendation",
        "What the autoscaler recommends for an owned resource (vCPUs or bytes)",
    ),
];

fn vm_labels(namespace: &str, name: &str) -> Labels {
    vec![
        ("namespace".into(), namespace.into()),
        ("name".into(), name.into()),
    ]
}

fn with(mut labels: Labels, more: &[(&str, &str)]) -> Labels {
    labels.extend(more.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    labels
}

impl AutoscalerMetrics {
    /// Registers the families in `registry` (whose prefix, `wukong`, they share).
    pub fn register(registry: &mut Registry) -> AutoscalerMetrics {
        let m = AutoscalerMetrics {
            gauges: std::array::from_fn(|_| FloatGauge::default()),
            evaluations: Family::default(),
            changes: Family::default(),
            present: Mutex::new(HashMap::new()),
        };
        for ((name, help), family) in GAUGES.iter().zip(&m.gauges) {
            registry.register(*name, *help, family.clone());
        }
        registry.register(
            "autoscaler_evaluations",
            "Evaluations of a VM, by result (evaluated, no_metrics, busy)",
            m.evaluations.clone(),
        );
        registry.register(
            "autoscaler_changes",
            "Changes the autoscaler made to a VM (Auto mode), by resource and direction",
            m.changes.clone(),
        );
        m
    }

    fn family(&self, which: Which) -> &FloatGauge {
        &self.gauges[which as usize]
    }

    /// Records one evaluation of the VM `namespace/name`; `applied`: its changes were made.
    pub fn observe(
        &self,
        namespace: &str,
        name: &str,
        policy: &Policy,
        ev: &Evaluation,
        applied: bool,
    ) {
        let vm = vm_labels(namespace, name);
        let mut set: Vec<(Which, Labels, f64)> = Vec::new();
        let result = match &ev.metrics {
            None => "no_metrics",
            Some(_) if ev.busy => "busy",
            Some(_) => "evaluated",
        };
        if let Some(g) = &ev.metrics {
            let mut put = |w: Which, v: Option<f64>| {
                if let Some(v) = v {
                    set.push((w, vm.clone(), v));
                }
            };
            put(Which::CpuUtilization, g.cpu_utilization);
            put(Which::CpusOnline, g.cpus_online.map(f64::from));
            put(Which::MemoryUsed, bytes(g.memory_used.as_ref()));
            put(Which::MemoryTotal, bytes(g.memory_total.as_ref()));
            put(Which::MemoryPressure, g.memory_pressure);
            put(Which::OomKills, g.oom_kills.map(|k| k as f64));
            for fs in &g.filesystems {
                let l = with(
                    vm.clone(),
                    &[("disk", &fs.disk), ("mount_path", &fs.mount_path)],
                );
                let figures = [
                    (Which::FsSize, bytes(Some(&fs.size))),
                    (Which::FsUsed, bytes(Some(&fs.used))),
                    (Which::FsFillRate, fs.fill_rate),
                ];
                for (w, v) in figures {
                    if let Some(v) = v {
                        set.push((w, l.clone(), v));
                    }
                }
            }
        }
        let r = &ev.recommendation;
        let mut recommended: Vec<(String, f64)> = Vec::new();
        if let Some(c) = r.cpu {
            recommended.push(("cpu".into(), f64::from(c)));
        }
        if let Some(v) = bytes(r.memory.as_ref()) {
            recommended.push(("memory".into(), v));
        }
        for (disk, q) in &r.disks {
            if let Some(v) = bytes(Some(q)) {
                recommended.push((format!("disk/{disk}"), v));
            }
        }
        for (resource, v) in recommended {
            set.push((
                Which::Recommendation,
                with(vm.clone(), &[("resource", &resource)]),
                v,
            ));
        }
        let key = (namespace.to_string(), name.to_string());
        let mut present = self.present.lock().expect("autoscaler metrics");
        for (w, l) in present.remove(&key).unwrap_or_default() {
            self.family(w).remove(&l);
        }
        let mut now = Vec::with_capacity(set.len());
        for (w, l, v) in set {
            self.family(w).get_or_create(&l).set(v);
            now.push((w, l));
        }
        present.insert(key, now);
        drop(present);
        self.evaluations
            .get_or_create(&with(vm.clone(), &[("result", result)]))
            .inc();
        if applied && policy.mode == AutoscalingMode::Auto {
            for c in &ev.changes {
                let direction = if c.to > c.from { "up" } else { "down" };
                self.changes
                    .get_or_create(&with(
                        vm.clone(),
                        &[("resource", &c.resource), ("direction", direction)],
                    ))
                    .inc();
            }
        }
    }

    /// Removes every gauge of a VM that is gone (its counters stay, as counters do).
    pub fn forget(&self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        let gone = self
            .present
            .lock()
            .expect("autoscaler metrics")
            .remove(&key)
            .unwrap_or_default();
        for (w, l) in gone {
            self.family(w).remove(&l);
        }
    }
}

fn bytes(q: Option<&wukong_api::Quantity>) -> Option<f64> {
    q.and_then(|q| q.bytes().ok()).map(|b| b as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Change;
    use wukong_api::Quantity;
    use wukong_api::autoscaling::{AutoscalingSpec, FilesystemMetrics, GuestMetrics};

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    fn reading() -> Evaluation {
        let mut ev = Evaluation {
            metrics: Some(GuestMetrics {
                cpu_utilization: Some(87.5),
                cpus_online: Some(1),
                memory_used: Some(Quantity::from_bytes(300 << 20)),
                memory_total: Some(Quantity::from_bytes(480 << 20)),
                filesystems: vec![FilesystemMetrics {
                    disk: "data".into(),
                    mount_path: "/data".into(),
                    size: Quantity::from_bytes(250 << 20),
                    used: Quantity::from_bytes(200 << 20),
                    inodes_used_percent: None,
                    fill_rate: Some(5e6),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        ev.recommendation.cpu = Some(2);
        ev.changes.push(Change {
            resource: "cpu".into(),
            from: 1,
            to: 2,
            reason: "busy".into(),
        });
        ev
    }

    fn policy(mode: &str) -> Policy {
        let spec: AutoscalingSpec =
            serde_json::from_value(serde_json::json!({"mode": mode, "cpu": {"min": 1, "max": 2}}))
                .unwrap();
        Policy::of(&spec)
    }

    #[test]
    fn a_reading_becomes_gauges_and_a_made_change_a_counter() {
        let mut registry = Registry::with_prefix("wukong");
        let m = AutoscalerMetrics::register(&mut registry);
        m.observe("default", "web", &policy("Auto"), &reading(), true);
        let t = text(&registry);
        for line in [
            r#"wukong_guest_cpu_utilization_percent{namespace="default",name="web"} 87.5"#,
            r#"wukong_guest_memory_used_bytes{namespace="default",name="web"} 314572800"#,
            r#"wukong_guest_filesystem_fill_rate_bytes_per_second{namespace="default",name="web",disk="data",mount_path="/data"} 5000000"#,
            r#"wukong_autoscaler_recommendation{namespace="default",name="web",resource="cpu"} 2"#,
            r#"wukong_autoscaler_evaluations_total{namespace="default",name="web",result="evaluated"} 1"#,
            r#"wukong_autoscaler_changes_total{namespace="default",name="web",resource="cpu",direction="up"} 1"#,
        ] {
            assert!(t.contains(line), "{line} missing from\n{t}");
        }
        assert!(
            !t.contains("guest_memory_pressure_percent{"),
            "absent, not 0: {t}"
        );
    }

    #[test]
    fn recommend_mode_counts_no_change_and_a_missing_reading_removes_the_gauges() {
        let mut registry = Registry::with_prefix("wukong");
        let m = AutoscalerMetrics::register(&mut registry);
        m.observe("default", "web", &policy("Recommend"), &reading(), false);
        assert!(!text(&registry).contains("autoscaler_changes_total{"));
        let failed = Evaluation {
            reasons: vec!["no metrics: agent gone; nothing changed".into()],
            ..Default::default()
        };
        m.observe("default", "web", &policy("Recommend"), &failed, false);
        let t = text(&registry);
        assert!(!t.contains("wukong_guest_cpu_utilization_percent{"), "{t}");
        assert!(!t.contains("wukong_guest_filesystem_used_bytes{"), "{t}");
        assert!(
            t.contains(r#"wukong_autoscaler_evaluations_total{namespace="default",name="web",result="no_metrics"} 1"#),
            "{t}"
        );
        m.observe("default", "web", &policy("Auto"), &reading(), true);
        m.forget("default", "web");
        let t = text(&registry);
        assert!(!t.contains("wukong_guest_cpus_online{"), "{t}");
        assert!(!t.contains("wukong_autoscaler_recommendation{"), "{t}");
    }
}

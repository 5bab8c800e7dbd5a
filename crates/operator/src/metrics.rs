//! `/metrics` (Prometheus text format), `/healthz` and `/readyz`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use wukong_autoscaler::AutoscalerMetrics;
use wukong_engine::VmRef;

type Labels = Vec<(String, String)>;

fn step_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    operations: Family<Labels, Counter>,
    steps: Family<Labels, Histogram, fn() -> Histogram>,
    reconciles: Family<Labels, Counter>,
    pending: Gauge,
    pending_vms: Mutex<HashSet<VmRef>>,
    ready: AtomicBool,
    /// The autoscaler's per-VM gauges and counters.
    pub autoscaler: AutoscalerMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wukong");
        let operations = Family::<Labels, Counter>::default();
        let steps = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            step_histogram as fn() -> Histogram,
        );
        let reconciles = Family::<Labels, Counter>::default();
        let pending = Gauge::default();
        registry.register(
            "operations",
            "Operations that changed a VM, by result",
            operations.clone(),
        );
        registry.register(
            "step_duration_seconds",
            "Time from a step's start to its verification in the guest, by action and mode",
            steps.clone(),
        );
        registry.register("reconciles", "Reconciles, by result", reconciles.clone());
        registry.register(
            "pending_restarts",
            "VMs with changes waiting for a restart",
            pending.clone(),
        );
        let autoscaler = AutoscalerMetrics::register(&mut registry);
        Metrics {
            autoscaler,
            registry,
            operations,
            steps,
            reconciles,
            pending,
            pending_vms: Mutex::new(HashSet::new()),
            ready: AtomicBool::new(false),
        }
    }

    /// Counts an operation.
    pub fn operation(&self, result: &str) {
        self.operations
            .get_or_create(&vec![("result".into(), result.into())])
            .inc();
    }

    /// Records a verified step.
    pub fn step(&self, action: &str, mode: &str, seconds: f64) {
        self.steps
            .get_or_create(&vec![
                ("action".into(), action.into()),
                ("mode".into(), mode.into()),
            ])
            .observe(seconds);
    }

    /// Counts a reconcile.
    pub fn reconcile(&self, result: &str) {
        self.reconciles
            .get_or_create(&vec![("result".into(), result.into())])
            .inc();
    }

    /// Whether `vm` has changes waiting for a restart.
    pub fn pending(&self, vm: &VmRef, waiting: bool) {
        let mut set = self.pending_vms.lock().expect("pending");
        if waiting {
            set.insert(vm.clone());
        } else {
            set.remove(vm);
        }
        self.pending.set(set.len() as i64);
    }

    /// Marks the operator ready (its watches are up).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until the task is dropped.
pub async fn serve(metrics: Arc<Metrics>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let m = metrics.clone();
    let r = metrics.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let r = r.clone();
                async move {
                    if r.ready.load(Ordering::SeqCst) {
                        (axum::http::StatusCode::OK, "ready")
                    } else {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "starting")
                    }
                }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_operations_steps_and_pending_restarts() {
        let m = Metrics::new();
        m.operation("succeeded");
        m.step("addVcpus", "live", 0.3);
        m.pending(&VmRef::new("ns", "a"), true);
        m.pending(&VmRef::new("ns", "b"), true);
        m.pending(&VmRef::new("ns", "a"), false);
        let text = m.render();
        assert!(
            text.contains(r#"wukong_operations_total{result="succeeded"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"wukong_step_duration_seconds_count{action="addVcpus",mode="live"} 1"#),
            "{text}"
        );
        assert!(text.contains("wukong_pending_restarts 1"), "{text}");
    }
}

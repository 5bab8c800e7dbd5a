//! The daemon's `/metrics` (Prometheus text format): the autoscaler's per-VM gauges and
//! counters and the guest-agent commands sent, served on the API's own listeners — the unix
//! socket, and the loopback TCP listener with its bearer token when `serve --listen` turns it
//! on (Prometheus cannot scrape a unix socket; its `authorization.credentials_file` sends the
//! token).

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use wukong_autoscaler::AutoscalerMetrics;

/// The daemon's registry.
pub struct Metrics {
    registry: Registry,
    /// The autoscaler's gauges and counters.
    pub autoscaler: AutoscalerMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("wukong");
        let autoscaler = AutoscalerMetrics::register(&mut registry);
        registry.register(
            "agent_calls",
            "Guest-agent commands this daemon sent, by command",
            crate::qga::CALLS.clone(),
        );
        registry.register(
            "agent_connections",
            "Guest-agent connections this daemon opened",
            crate::qga::CONNECTIONS.clone(),
        );
        Metrics {
            registry,
            autoscaler,
        }
    }
}

impl Metrics {
    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

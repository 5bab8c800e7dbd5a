//! `wukong operator`: the Kubernetes operator (in a cluster, or against any API server).

use std::net::SocketAddr;
use std::time::Duration;

use crate::Failure;

/// Flags of `wukong operator`.
#[derive(clap::Args, Debug)]
pub struct OperatorArgs {
    /// Watch only this namespace (default: all).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Where /metrics, /healthz and /readyz listen.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// How long a guest may take to show a change.
    #[arg(long, default_value = "60s", value_parser = crate::parse_duration)]
    verify_timeout: Duration,
    /// How long a PVC may take to reach a new size.
    #[arg(long, default_value = "120s", value_parser = crate::parse_duration)]
    resize_timeout: Duration,
    /// Re-verify converged VMs this often.
    #[arg(long, default_value = "300s", value_parser = crate::parse_duration)]
    resync: Duration,
    /// API server URL, plain (e.g. a local test server); default: in-cluster or KUBECONFIG.
    #[arg(long)]
    api_server: Option<String>,
}

/// Runs the operator until SIGINT/SIGTERM.
pub async fn operator(a: OperatorArgs) -> Result<(), Failure> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    let client = match &a.api_server {
        Some(url) => {
            let uri = url
                .parse()
                .map_err(|e| Failure::Invalid(format!("--api-server: {e}")))?;
            kube::Client::try_from(kube::Config::new(uri))
        }
        None => kube::Client::try_default().await,
    }
    .map_err(|e| Failure::Failed(format!("cannot reach the Kubernetes API: {e}")))?;
    let opts = wukong_operator::Options {
        namespace: a.namespace,
        metrics_addr: Some(a.metrics_addr),
        verify_timeout: a.verify_timeout,
        kube: wukong_operator::backend::KubeTimeouts {
            resize: a.resize_timeout,
            ..Default::default()
        },
        resync: a.resync,
        ..Default::default()
    };
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    wukong_operator::run(client, opts, shutdown)
        .await
        .map_err(|e| Failure::Failed(e.to_string()))
}

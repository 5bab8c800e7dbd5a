//! `wukong-envtest`: a real control plane from the binaries in `KUBEBUILDER_ASSETS` (etcd,
//! kube-apiserver, kube-controller-manager if there) with the project's install from
//! `deploy/` (no operator Deployment), KubeVirt's CRDs and the simulated KubeVirt. Prints the
//! path of an admin kubeconfig, then serves until SIGINT or SIGTERM and removes everything.
//! For trying the operator on a real API server, and for the operator suite's `cluster`
//! target (`KUBECONFIG=$(that path) WUKONG_TEST_TARGET=cluster`). Not part of the product.
#![forbid(unsafe_code)]

use wukong_envtest::ControlPlane;

const ADMIN: &str = "envtest-admin-token-0123456789abcdef";

#[tokio::main]
async fn main() {
    let Some(assets) = std::env::var_os("KUBEBUILDER_ASSETS") else {
        eprintln!(
            "wukong-envtest: KUBEBUILDER_ASSETS must name a directory holding kube-apiserver and etcd"
        );
        std::process::exit(2);
    };
    let plane = ControlPlane::start(
        std::path::Path::new(&assets),
        &[(ADMIN, "admin", &["system:masters"])],
    );
    let admin = plane.client(ADMIN).await;
    wukong_envtest::install(&admin).await;
    let kubevirt = match wukong_kvsim::start(admin).await {
        Ok(k) => k,
        Err(e) => {
            eprintln!("wukong-envtest: starting the simulated KubeVirt: {e}");
            std::process::exit(1);
        }
    };
    println!("{}", plane.kubeconfig("admin", ADMIN).display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(kubevirt);
    drop(plane);
}

//! An in-process Kubernetes API server, strict enough to test the Wukong operator against
//! with the real kube client over real HTTP: the Wukong CRD's schema and CEL rules, KubeVirt
//! objects checked against KubeVirt's swagger and webhook rules, resourceVersion conflicts,
//! watch with bookmarks and 410 resync, the status subresource, finalizers and deletion
//! timestamps, JSON and merge patches, and a simulated KubeVirt (see [`kubevirt`]).
#![forbid(unsafe_code)]

pub mod auth;
pub mod crd_cost;
pub mod http;
pub mod kubevirt;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

pub use kubevirt::{Faults, Sim};
pub use store::{ApiError, Kind, Store, Sub};

/// A running fake API server.
pub struct FakeApi {
    /// Where it listens (plain HTTP on loopback).
    pub addr: SocketAddr,
    /// Its objects.
    pub store: Arc<Store>,
    /// The simulated KubeVirt.
    pub sim: Arc<Sim>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Knobs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Changes kept for watches to resume from.
    pub history: usize,
    /// Bookmark period for watches that ask for them.
    pub bookmark_every: Duration,
    /// Bearer tokens the server knows; with none, nothing is authenticated or authorized.
    pub tokens: Vec<auth::Token>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            history: 100_000,
            bookmark_every: Duration::from_secs(1),
            tokens: Vec::new(),
        }
    }
}

impl FakeApi {
    /// Starts a server on an ephemeral loopback port, with a `KubeVirt` CR (live updates on)
    /// and two StorageClasses (`expandable`, the default, and `fixed`).
    pub async fn start(opts: Options) -> std::io::Result<FakeApi> {
        Self::start_on("127.0.0.1:0".parse().expect("an address"), opts).await
    }

    /// Like [`FakeApi::start`] on a given address.
    pub async fn start_on(addr: SocketAddr, opts: Options) -> std::io::Result<FakeApi> {
        let store = Store::new(opts.history);
        let sim = Sim::new(store.clone());
        let server = Arc::new(http::Server {
            store: store.clone(),
            sim: sim.clone(),
            bookmark_every: opts.bookmark_every,
            requests: Default::default(),
            tokens: opts.tokens,
        });
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = http::router(server);
        let serve = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let simulate = tokio::spawn(sim.clone().run());
        let api = FakeApi {
            addr,
            store,
            sim,
            tasks: vec![serve, simulate],
        };
        api.seed();
        Ok(api)
    }

    fn seed(&self) {
        let kv = json!({"apiVersion": "kubevirt.io/v1", "kind": "KubeVirt",
            "metadata": {"name": "kubevirt", "namespace": "kubevirt"},
            "spec": {"workloadUpdateStrategy": {"workloadUpdateMethods": ["LiveMigrate"]},
                     "configuration": {"vmRolloutStrategy": "LiveUpdate",
                                       "developerConfiguration": {"featureGates": ["DeclarativeHotplugVolumes"]}}}});
        let _ = self
            .store
            .create(Kind::named("kubevirt.io", "KubeVirt"), "kubevirt", kv);
        for (name, expandable, default) in [("expandable", true, true), ("fixed", false, false)] {
            let mut sc = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                "metadata": {"name": name}, "provisioner": "csi.example.dev",
                "allowVolumeExpansion": expandable});
            if default {
                sc["metadata"]["annotations"] =
                    json!({"storageclass.kubernetes.io/is-default-class": "true"});
            }
            let _ = self
                .store
                .create(Kind::named("storage.k8s.io", "StorageClass"), "", sc);
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the injected faults.
    pub fn faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.sim.faults.lock().expect("faults"));
        // The controllers' periodic retries: what failed is tried again.
        self.sim.resync();
    }

    /// An object, if it exists.
    pub fn get(&self, group: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        self.store.get(Kind::named(group, kind), ns, name)
    }

    /// Stops the server.
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

//! An in-process Kubernetes API server, strict enough to test the Wukong operator against
//! with the real kube client over real HTTP: the Wukong CRD's schema and CEL rules, KubeVirt
//! objects checked against KubeVirt's swagger and webhook rules, resourceVersion conflicts,
//! watch with bookmarks and 410 resync, the status subresource, finalizers and deletion
//! timestamps, JSON and merge patches, bearer tokens and RBAC. Like a real server it serves
//! no KubeVirt itself: aggregated APIs and pod exec are passed on ([`proxy`]) to whatever
//! registered them (the simulator in `wukong-kvsim`, or nothing).
#![forbid(unsafe_code)]

pub mod auth;
pub mod crd_cost;
pub mod http;
pub mod proxy;
pub mod quantity;
pub mod schema;
pub mod store;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

pub use store::{ApiError, Kind, Store, Sub};

/// A running fake API server.
pub struct FakeApi {
    /// Where it listens (plain HTTP on loopback).
    pub addr: SocketAddr,
    /// Its objects.
    pub store: Arc<Store>,
    audit: Arc<http::Audit>,
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
    /// Keep an audit record of every write (user, method, request URI), as a real server's
    /// `--audit-log-path` does at level Metadata.
    pub audit: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            history: 100_000,
            bookmark_every: Duration::from_secs(1),
            tokens: Vec::new(),
            audit: false,
        }
    }
}

impl FakeApi {
    /// Starts a server on an ephemeral loopback port.
    pub async fn start(opts: Options) -> std::io::Result<FakeApi> {
        Self::start_on("127.0.0.1:0".parse().expect("an address"), opts).await
    }

    /// Like [`FakeApi::start`] on a given address.
    pub async fn start_on(addr: SocketAddr, opts: Options) -> std::io::Result<FakeApi> {
        let store = Store::new(opts.history);
        let server = Arc::new(http::Server {
            store: store.clone(),
            bookmark_every: opts.bookmark_every,
            requests: Default::default(),
            tokens: opts.tokens,
            audit: Arc::new(http::Audit::new(opts.audit)),
        });
        let audit = server.audit.clone();
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = http::router(server);
        let serve = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let api = FakeApi {
            addr,
            store,
            audit,
            tasks: vec![serve],
        };
        Ok(api)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An object, if it exists.
    pub fn get(&self, group: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        self.store.get(Kind::named(group, kind), ns, name)
    }

    /// The writes audited so far (with [`Options::audit`]), oldest first.
    pub fn audit(&self) -> Vec<http::AuditEntry> {
        self.audit.entries()
    }

    /// Stops the server.
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

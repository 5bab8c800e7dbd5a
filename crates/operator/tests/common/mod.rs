//! A cluster for the operator's tests: an API server, the simulated KubeVirt beside it
//! (`wukong-kvsim`, over HTTP), a kube client, and the operator running in-process
//! (restartable) as its ServiceAccount.
//!
//! `WUKONG_TEST_TARGET` picks the API server:
//! - `fake` (the default): the project's fake, with the simulator;
//! - `envtest`: a real kube-apiserver + etcd started from the binaries in `KUBEBUILDER_ASSETS`
//!   (`wukong_envtest::control_plane`) with KubeVirt's CRDs from its swagger, and the simulator;
//! - `cluster`: the cluster KUBECONFIG names, with its own KubeVirt and the install of
//!   `deploy/` applied (the deployed operator scaled to 0: the tests run their own, as its
//!   ServiceAccount by impersonation). Each test gets a namespace of its own, deleted after.
//!
//! `operator.rs` runs on all three; `operator_sim.rs` needs the simulator or a control plane
//! of its own (fake, envtest); `operator_fake.rs` the fake's fault injection.
#![allow(dead_code)]

use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, Config};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use wukong_api::Wukong;
use wukong_fakeapi::auth::Token;
use wukong_fakeapi::{FakeApi, Options as FakeOptions};
use wukong_operator::Options;

use wukong_envtest::ControlPlane;
pub use wukong_envtest::{
    RBAC, control_plane, create, deploy, dynamic, operator_user, resource_of, sa_groups,
};

/// The tests' namespace on a server of their own (on a shared cluster: one per test).
pub const NS: &str = "tenant";

/// The API server under the test.
pub enum Backend {
    Fake(FakeApi),
    Real(ControlPlane),
    /// A cluster of someone else's (KUBECONFIG).
    Cluster,
}

pub struct Cluster {
    /// The simulated KubeVirt (faults, exec count); none on a real cluster.
    kubevirt: Option<wukong_kvsim::Running>,
    /// The namespace the test works in.
    pub ns: String,
    pub client: Client,
    operator_client: Client,
    changes: watch::Receiver<u64>,
    watches: Vec<tokio::task::JoinHandle<()>>,
    operator: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    /// The running operator's metrics (what its `/metrics` serves).
    pub metrics: std::sync::Arc<wukong_operator::metrics::Metrics>,
    pub opts: Options,
    /// Last: fields drop in order, and the server must outlive everything that talks to it
    /// (a simulator or watch left facing a dead server hung the test's teardown).
    backend: Backend,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Backend::Cluster = self.backend {
            // On a shared cluster the test's Wukongs go while its operator still runs (their
            // finalizer would hold the namespace forever), then its namespace.
            let wukongs = self.wukongs();
            blocking(async {
                let _ = wukongs
                    .delete_collection(&DeleteParams::default(), &Default::default())
                    .await;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                while wukongs
                    .list(&Default::default())
                    .await
                    .is_ok_and(|l| !l.items.is_empty())
                    && tokio::time::Instant::now() < deadline
                {
                    let mut changes = self.changes.clone();
                    let _ = tokio::time::timeout_at(deadline, changes.changed()).await;
                }
            });
            let api = dynamic(&self.client, &resource_of("v1", "Namespace"), None);
            let _ = blocking(api.delete(&self.ns, &DeleteParams::background()));
        }
        for w in &self.watches {
            w.abort();
        }
        if let Some((_, task)) = self.operator.take() {
            task.abort();
        }
    }
}

/// The test's own token: group system:masters, it may do everything.
pub const ADMIN_TOKEN: &str = "test-admin-token";
/// The operator's: its ServiceAccount, allowed what `deploy/` grants and nothing more.
pub const OPERATOR_TOKEN: &str = "test-operator-token";

pub fn client_for(api: &FakeApi, token: &str) -> Client {
    let mut config = Config::new(api.url().parse().unwrap());
    config.auth_info.token = Some(token.to_string().into());
    Client::try_from(config).unwrap()
}

/// The objects of `deploy/FILE` put into the fake's store (namespaced ones without a
/// namespace of their own into `ns`).
pub fn install(api: &FakeApi, file: &str, ns: Option<&str>) {
    for object in deploy(file) {
        let kind = api_kind(&object);
        let ns = object["metadata"]["namespace"]
            .as_str()
            .or(ns)
            .unwrap_or_default()
            .to_string();
        api.store.create(kind, &ns, object).unwrap();
    }
}

fn api_kind(object: &Value) -> &'static wukong_fakeapi::Kind {
    let group = object["apiVersion"]
        .as_str()
        .unwrap()
        .rsplit_once('/')
        .map_or("", |(g, _)| g);
    wukong_fakeapi::Kind::named(group, object["kind"].as_str().unwrap())
}

/// Runs `f` to completion from synchronous code inside the test's (multi-threaded) runtime.
fn blocking<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// Which API server the tests run against.
pub fn target() -> String {
    std::env::var("WUKONG_TEST_TARGET").unwrap_or_else(|_| "fake".into())
}

impl Cluster {
    pub async fn start() -> Cluster {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Options)) -> Cluster {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let operator = operator_user();
        let (backend, client, operator_client) = match target().as_str() {
            "fake" => {
                let token = |token: &str, user: String, groups: Vec<String>| Token {
                    token: token.into(),
                    user,
                    groups,
                };
                let api = FakeApi::start(FakeOptions {
                    history: 100_000,
                    bookmark_every: Duration::from_millis(300),
                    audit: true,
                    tokens: vec![
                        token(
                            ADMIN_TOKEN,
                            "admin".into(),
                            vec!["system:masters".into(), "system:authenticated".into()],
                        ),
                        token(OPERATOR_TOKEN, operator.clone(), sa_groups(&operator)),
                    ],
                })
                .await
                .unwrap();
                for file in ["crd.yaml"].into_iter().chain(RBAC) {
                    install(&api, file, None);
                }
                let (admin, op) = (
                    client_for(&api, ADMIN_TOKEN),
                    client_for(&api, OPERATOR_TOKEN),
                );
                (Backend::Fake(api), admin, op)
            }
            "envtest" => {
                let groups = sa_groups(&operator);
                let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
                let cp = ControlPlane::start(
                    &control_plane::assets(),
                    &[
                        (ADMIN_TOKEN, "admin", &["system:masters"]),
                        (OPERATOR_TOKEN, &operator, &groups),
                    ],
                );
                let admin = cp.client(ADMIN_TOKEN).await;
                let op = cp.client(OPERATOR_TOKEN).await;
                wukong_envtest::install(&admin).await;
                (Backend::Real(cp), admin, op)
            }
            "cluster" => {
                let (admin, op) = cluster_clients(&operator).await;
                (Backend::Cluster, admin, op)
            }
            other => panic!("WUKONG_TEST_TARGET={other}: fake, envtest or cluster"),
        };
        let (kubevirt, ns) = match backend {
            Backend::Cluster => (None, format!("wukong-test-{:08x}", rand_u32())),
            _ => (
                Some(wukong_kvsim::start(client.clone()).await.unwrap()),
                NS.to_string(),
            ),
        };
        create(
            &client,
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await
        .unwrap();
        let (tx, changes) = watch::channel(0u64);
        let watches = watch_changes(&client, &ns, tx);
        let mut opts = Options {
            // Generous: a loaded CI machine must not turn a slow step into a failure.
            verify_timeout: Duration::from_secs(15),
            backoff: Duration::from_millis(200),
            metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
            ..Options::default()
        };
        opts.kube.resize = Duration::from_secs(15);
        opts.kube.restart = Duration::from_secs(30);
        f(&mut opts);
        let mut c = Cluster {
            backend,
            kubevirt,
            ns,
            client,
            operator_client,
            changes,
            watches,
            operator: None,
            metrics: Default::default(),
            opts,
        };
        c.start_operator();
        c
    }

    /// The operator's writes so far, `(method, request URI)`, from the server's audit record.
    pub fn operator_writes(&self) -> Vec<(String, String)> {
        let user = operator_user();
        let all: Vec<(String, String, String)> = match &self.backend {
            Backend::Fake(api) => api
                .audit()
                .into_iter()
                .map(|e| (e.user, e.method, e.uri))
                .collect(),
            Backend::Real(cp) => cp.audited_writes(),
            Backend::Cluster => {
                panic!("this test reads the server's audit record: not on a shared cluster")
            }
        };
        all.into_iter()
            .filter(|(u, _, _)| *u == user)
            .map(|(_, m, uri)| (m, uri))
            .collect()
    }

    /// The fake API server, for a test that needs its fault injection.
    pub fn fake(&self) -> &FakeApi {
        match &self.backend {
            Backend::Fake(api) => api,
            _ => panic!("this test needs the fake API server's fault injection"),
        }
    }

    /// The simulated KubeVirt, for a test that needs its faults or its exec count.
    pub fn kubevirt(&self) -> &wukong_kvsim::Running {
        self.kubevirt
            .as_ref()
            .expect("this test needs the simulated KubeVirt: not with WUKONG_TEST_TARGET=cluster")
    }

    pub fn start_operator(&mut self) {
        let (tx, rx) = oneshot::channel::<()>();
        // The operator runs as its ServiceAccount: a call deploy/ does not grant is a 403.
        let client = self.operator_client.clone();
        let opts = self.opts.clone();
        // A restarted operator starts its counts afresh, as a new process would.
        self.metrics = Default::default();
        let metrics = self.metrics.clone();
        let task = tokio::spawn(async move {
            wukong_operator::run_with(client, opts, metrics, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        self.operator = Some((tx, task));
    }

    /// Kills the operator as a crash would (no graceful shutdown).
    pub async fn kill_operator(&mut self) {
        if let Some((_, task)) = self.operator.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Takes guest exec away from the operator (the install without
    /// guest-exec-cluster.yaml), and waits until the authorizer says so.
    pub async fn revoke_guest_exec(&self) {
        assert!(
            !matches!(self.backend, Backend::Cluster),
            "this test changes the install's RBAC: not on a shared cluster"
        );
        let bindings: Api<DynamicObject> = dynamic(
            &self.client,
            &resource_of("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
            None,
        );
        bindings
            .delete("wukong-operator-guest-exec", &DeleteParams::default())
            .await
            .unwrap();
        if let Backend::Real(_) = self.backend {
            let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {"user": operator_user(), "groups": sa_groups(&operator_user()),
                         "resourceAttributes": {"namespace": self.ns, "resource": "pods",
                                                "subresource": "exec", "verb": "create"}}});
            let ar = resource_of("authorization.k8s.io/v1", "SubjectAccessReview");
            let api: Api<DynamicObject> = dynamic(&self.client, &ar, None);
            let review: DynamicObject = serde_json::from_value(review).unwrap();
            // The authorizer's RBAC cache follows the delete by a moment.
            for _ in 0..200 {
                let r = api.create(&PostParams::default(), &review).await.unwrap();
                if r.data["status"]["allowed"] != true {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("the authorizer still allows the operator pods/exec");
        }
    }

    pub fn wukongs(&self) -> Api<Wukong> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub async fn create(&self, name: &str, spec_yaml: &str) -> Wukong {
        let w: Wukong = serde_yaml::from_str(&format!(
            "apiVersion: vm.novasphere.dev/v1alpha1\nkind: Wukong\nmetadata:\n  name: {name}\nspec:\n{spec_yaml}"
        ))
        .unwrap();
        self.wukongs()
            .create(&PostParams::default(), &w)
            .await
            .unwrap()
    }

    /// Merge-patches the spec (as `kubectl patch --type merge`).
    pub async fn patch_spec(&self, name: &str, spec: Value) {
        self.wukongs()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await
            .unwrap();
    }

    pub async fn delete(&self, name: &str) {
        self.wukongs()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }

    /// An object as the server has it now (a fresh GET).
    pub fn get(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let api = dynamic(&self.client, &resource_of(api_version, kind), Some(ns));
        match blocking(api.get(name)) {
            Ok(o) => Some(serde_json::to_value(o).unwrap()),
            Err(kube::Error::Api(e)) if e.code == 404 => None,
            Err(e) => panic!("GET {kind} {ns}/{name}: {e}"),
        }
    }

    fn list(&self, api_version: &str, kind: &str, ns: &str) -> Vec<Value> {
        let api = dynamic(&self.client, &resource_of(api_version, kind), Some(ns));
        blocking(api.list(&Default::default()))
            .unwrap()
            .items
            .into_iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .collect()
    }

    pub fn wukong(&self, name: &str) -> Option<Value> {
        self.get("vm.novasphere.dev/v1alpha1", "Wukong", &self.ns, name)
    }
    pub fn vm(&self, name: &str) -> Option<Value> {
        self.get("kubevirt.io/v1", "VirtualMachine", &self.ns, name)
    }
    pub fn vmi(&self, name: &str) -> Option<Value> {
        self.get("kubevirt.io/v1", "VirtualMachineInstance", &self.ns, name)
    }
    pub fn pvc(&self, name: &str) -> Option<Value> {
        self.get("v1", "PersistentVolumeClaim", &self.ns, name)
    }
    /// What the guest agent of VMI `vmi` reports as its filesystems (virt-api's
    /// `filesystemlist`), if it runs.
    pub fn filesystems(&self, vmi: &str) -> Option<Vec<Value>> {
        let path = format!(
            "/apis/subresources.kubevirt.io/v1/namespaces/{}/virtualmachineinstances/{vmi}/filesystemlist",
            self.ns
        );
        let req = http::Request::get(path).body(Vec::new()).unwrap();
        let text = blocking(self.client.request_text(req)).ok()?;
        let list: Value = serde_json::from_str(&text).ok()?;
        list["items"].as_array().cloned()
    }

    /// PVC and VM creates the server was asked for (accepted or not): known to the fake only.
    pub fn create_attempts(&self) -> Option<u64> {
        match &self.backend {
            Backend::Fake(api) => Some(
                api.store.writes("persistentvolumeclaims", "create")
                    + api.store.writes("virtualmachines", "create"),
            ),
            _ => None,
        }
    }

    pub fn namespace(&self, name: &str) -> Option<Value> {
        self.get("v1", "Namespace", "", name)
    }

    /// Waits, change by change in the watched objects, until `f` holds; panics after
    /// `timeout`.
    pub async fn until(&self, what: &str, timeout: Duration, f: impl Fn(&Cluster) -> bool) {
        let mut changes = self.changes.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.borrow_and_update();
            if f(self) {
                return;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(_) => {}
                Err(_) => {
                    if f(self) {
                        return;
                    }
                    panic!(
                        "timed out waiting for {what}; wukong: {}",
                        serde_json::to_string_pretty(&self.wukongs_status()).unwrap()
                    );
                }
            }
        }
    }

    /// Waits for an Event with `reason` about `name`. The operator publishes its Events after
    /// the status they go with, so they are waited for, never looked up once.
    pub async fn event(&self, name: &str, reason: &str) {
        self.until(&format!("a {reason} event about {name}"), T, |c| {
            c.event_reasons(name).iter().any(|r| r == reason)
        })
        .await;
    }

    fn wukongs_status(&self) -> Value {
        Value::Array(
            self.list("vm.novasphere.dev/v1alpha1", "Wukong", &self.ns)
                .into_iter()
                .map(|w| json!({"name": w["metadata"]["name"], "status": w["status"]}))
                .collect(),
        )
    }

    /// Waits until the Wukong's status describes its current generation.
    pub async fn converged(&self, name: &str) -> Value {
        self.until(
            &format!("{name} to converge"),
            Duration::from_secs(60),
            |c| {
                c.wukong(name).is_some_and(|w| {
                    w["status"]["observedGeneration"] == w["metadata"]["generation"]
                        && w["status"]["phase"] == "Running"
                })
            },
        )
        .await;
        self.wukong(name).unwrap()
    }

    pub fn condition(&self, name: &str, kind: &str) -> Option<(String, String, String)> {
        let w = self.wukong(name)?;
        w["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == kind)
            .map(|c| {
                (
                    c["status"].as_str().unwrap_or_default().to_string(),
                    c["reason"].as_str().unwrap_or_default().to_string(),
                    c["message"].as_str().unwrap_or_default().to_string(),
                )
            })
    }

    /// The notes of the Events about `name` with `reason`.
    pub fn event_notes(&self, name: &str, reason: &str) -> Vec<String> {
        self.list("events.k8s.io/v1", "Event", &self.ns)
            .iter()
            .filter(|e| e["regarding"]["name"] == name && e["reason"] == reason)
            .filter_map(|e| e["note"].as_str().map(String::from))
            .collect()
    }

    /// Reasons of the Kubernetes Events about `name`.
    pub fn event_reasons(&self, name: &str) -> Vec<String> {
        self.list("events.k8s.io/v1", "Event", &self.ns)
            .iter()
            .filter(|e| e["regarding"]["name"] == name)
            .filter_map(|e| e["reason"].as_str().map(String::from))
            .collect()
    }
}

/// Watches what the tests look at and counts changes into `tx`.
fn watch_changes(
    client: &Client,
    ns: &str,
    tx: watch::Sender<u64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let tx = std::sync::Arc::new(tx);
    [
        ("vm.novasphere.dev/v1alpha1", "Wukong", Some(ns)),
        ("kubevirt.io/v1", "VirtualMachine", Some(ns)),
        ("kubevirt.io/v1", "VirtualMachineInstance", Some(ns)),
        ("v1", "PersistentVolumeClaim", Some(ns)),
        ("events.k8s.io/v1", "Event", Some(ns)),
        ("v1", "Namespace", None),
    ]
    .into_iter()
    .map(|(v, k, ns)| {
        let api = dynamic(client, &resource_of(v, k), ns);
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default()).boxed();
            while let Some(e) = events.next().await {
                if e.is_ok() {
                    tx.send_modify(|n| *n += 1);
                }
            }
        })
    })
    .collect()
}

/// The clients on a real cluster: KUBECONFIG's user, and the operator's ServiceAccount by
/// impersonation. The install must be there already.
async fn cluster_clients(operator: &str) -> (Client, Client) {
    let admin = Client::try_default()
        .await
        .expect("WUKONG_TEST_TARGET=cluster: a cluster from KUBECONFIG");
    let crds = dynamic(
        &admin,
        &resource_of("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
        None,
    );
    crds.get("wukongs.vm.novasphere.dev").await.expect(
        "WUKONG_TEST_TARGET=cluster needs the install: `kubectl apply -k deploy/` and \
         `kubectl -n wukong-system scale deployment wukong-operator --replicas=0`",
    );
    let mut config = Config::infer().await.unwrap();
    config.auth_info.impersonate = Some(operator.to_string());
    config.auth_info.impersonate_groups = Some(sa_groups(operator));
    (admin, Client::try_from(config).unwrap())
}

/// A random number from the OS (for a namespace name of one's own).
fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom");
    u32::from_le_bytes(b)
}

/// The size of the filesystem mounted at `mount`, as the guest agent reports it.
pub fn fs_total(c: &Cluster, vmi: &str, mount: &str) -> Option<u64> {
    c.filesystems(vmi)?
        .iter()
        .find(|f| f["mountPoint"] == mount)
        .and_then(|f| f["totalBytes"].as_u64())
}

/// How long a test waits for one thing to happen.
pub const T: Duration = Duration::from_secs(60);

/// The vCPU sockets of a VM's template.
pub fn sockets(vm: &Value) -> u64 {
    vm["spec"]["template"]["spec"]["domain"]["cpu"]["sockets"]
        .as_u64()
        .unwrap()
}

pub const BASIC: &str = "  cpu: 2\n  memory: 2Gi\n  maxCpu: 4\n  maxMemory: 4Gi\n  disks:\n  - {name: system, size: 10Gi}\n  - {name: data, size: 20Gi, filesystem: {type: ext4, mountPath: /data}}\n";

/// `crd` as a CRD of its own group `v{i}.fixture.novasphere.dev`, with the schema keyword at
/// `remove` (a JSON pointer into openAPIV3Schema) taken out: one variant of
/// `fixtures/crd-verdicts.json`.
pub fn crd_variant(crd: &Value, i: usize, remove: Option<&str>) -> Value {
    let mut variant = crd.clone();
    let group = format!("v{i}.fixture.novasphere.dev");
    variant["metadata"]["name"] = format!("wukongs.{group}").into();
    variant["spec"]["group"] = group.into();
    if let Some(pointer) = remove {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        variant["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .and_then(|o| o.remove(key))
            .unwrap_or_else(|| panic!("{pointer} is in the CRD"));
    }
    variant
}

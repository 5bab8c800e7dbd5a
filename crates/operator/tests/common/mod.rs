//! A cluster for the operator's tests: the fake API server with its simulated KubeVirt, a
//! kube client over real HTTP, and the operator running in-process (restartable).
#![allow(dead_code)]

use std::time::Duration;

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Config};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use wukong_api::Wukong;
use wukong_fakeapi::auth::Token;
use wukong_fakeapi::{FakeApi, Options as FakeOptions};
use wukong_operator::Options;

pub const NS: &str = "tenant";

pub struct Cluster {
    pub api: FakeApi,
    pub client: Client,
    operator: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    pub opts: Options,
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

/// The objects of `deploy/FILE`.
pub fn deploy(file: &str) -> Vec<Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy")
            .join(file),
    )
    .unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_json::to_value(serde_yaml::Value::deserialize(d).unwrap()).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
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

/// The operator's identity and grants, exactly as `kubectl apply -k deploy/` installs them.
fn install_rbac(api: &FakeApi) {
    for file in ["rbac.yaml", "guest-exec.yaml", "guest-exec-cluster.yaml"] {
        install(api, file, None);
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

/// The user name of the operator's ServiceAccount.
pub fn operator_user() -> String {
    let sa = deploy("rbac.yaml")
        .into_iter()
        .find(|d| d["kind"] == "ServiceAccount")
        .unwrap();
    format!(
        "system:serviceaccount:{}:{}",
        sa["metadata"]["namespace"].as_str().unwrap(),
        sa["metadata"]["name"].as_str().unwrap()
    )
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
        let token = |token: &str, user: String, groups: &[&str]| Token {
            token: token.into(),
            user,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        let api = FakeApi::start(FakeOptions {
            history: 100_000,
            bookmark_every: Duration::from_millis(300),
            tokens: vec![
                token(
                    ADMIN_TOKEN,
                    "admin".into(),
                    &["system:masters", "system:authenticated"],
                ),
                token(
                    OPERATOR_TOKEN,
                    operator_user(),
                    &["system:serviceaccounts", "system:authenticated"],
                ),
            ],
        })
        .await
        .unwrap();
        install_rbac(&api);
        let client = client_for(&api, ADMIN_TOKEN);
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
            api,
            client,
            operator: None,
            opts,
        };
        c.start_operator();
        c
    }

    pub fn start_operator(&mut self) {
        let (tx, rx) = oneshot::channel::<()>();
        // The operator runs as its ServiceAccount: a call deploy/ does not grant is a 403.
        let client = client_for(&self.api, OPERATOR_TOKEN);
        let opts = self.opts.clone();
        let task = tokio::spawn(async move {
            wukong_operator::run(client, opts, async {
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

    pub fn wukongs(&self) -> Api<Wukong> {
        Api::namespaced(self.client.clone(), NS)
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

    pub fn wukong(&self, name: &str) -> Option<Value> {
        self.api.get("vm.novasphere.dev", "Wukong", NS, name)
    }
    pub fn vm(&self, name: &str) -> Option<Value> {
        self.api.get("kubevirt.io", "VirtualMachine", NS, name)
    }
    pub fn vmi(&self, name: &str) -> Option<Value> {
        self.api
            .get("kubevirt.io", "VirtualMachineInstance", NS, name)
    }
    pub fn pvc(&self, name: &str) -> Option<Value> {
        self.api.get("", "PersistentVolumeClaim", NS, name)
    }

    /// Waits, change by change in the store, until `f` holds; panics after `timeout`.
    pub async fn until(&self, what: &str, timeout: Duration, f: impl Fn(&Cluster) -> bool) {
        let mut changes = self.api.store.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if f(self) {
                return;
            }
            match tokio::time::timeout_at(deadline, changes.recv()).await {
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

    fn wukongs_status(&self) -> Value {
        let (items, _) = self.api.store.list(
            wukong_fakeapi::Kind::named("vm.novasphere.dev", "Wukong"),
            None,
        );
        Value::Array(
            items
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

    /// Reasons of the Kubernetes Events about `name`.
    pub fn event_reasons(&self, name: &str) -> Vec<String> {
        let (items, _) = self.api.store.list(
            wukong_fakeapi::Kind::named("events.k8s.io", "Event"),
            Some(NS),
        );
        items
            .iter()
            .filter(|e| e["regarding"]["name"] == name)
            .filter_map(|e| e["reason"].as_str().map(String::from))
            .collect()
    }
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

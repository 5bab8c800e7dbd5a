//! Test support for the operator's tests and benchmarks on a real control plane: etcd,
//! kube-apiserver and kube-controller-manager started from the binaries in
//! `KUBEBUILDER_ASSETS` ([`control_plane`], the envtest convention; nothing here builds
//! them), KubeVirt's CRDs from its swagger ([`kubevirt_crds`]), and the project's install
//! from `deploy/`. Not part of any shipped binary.
#![forbid(unsafe_code)]

pub mod control_plane;
pub mod kubevirt_crds;

use futures_util::StreamExt;
use kube::Client;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::watcher;
use serde_json::Value;

pub use control_plane::ControlPlane;

/// The objects of `deploy/FILE`.
pub fn deploy(file: &str) -> Vec<Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy")
            .join(file),
    )
    .unwrap_or_else(|e| panic!("deploy/{file}: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_json::to_value(serde_yaml::Value::deserialize(d).unwrap()).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The operator's identity and grants, exactly as `kubectl apply -k deploy/` installs them.
pub const RBAC: [&str; 3] = ["rbac.yaml", "guest-exec.yaml", "guest-exec-cluster.yaml"];

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

/// The groups of a ServiceAccount of namespace `ns`.
pub fn sa_groups(user: &str) -> Vec<String> {
    let ns = user.split(':').nth(2).unwrap_or_default();
    vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{ns}"),
        "system:authenticated".into(),
    ]
}

/// The API resource of `object` (plural: the kind in lower case plus `s`, true of every
/// kind the tests create).
pub fn resource_of(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let plural = format!("{}s", kind.to_lowercase());
    ApiResource::from_gvk_with_plural(&gvk, &plural)
}

/// A dynamic API of `ar`, in `ns` (or cluster-wide with none).
pub fn dynamic(client: &Client, ar: &ApiResource, ns: Option<&str>) -> Api<DynamicObject> {
    match ns {
        Some(ns) if !ns.is_empty() => Api::namespaced_with(client.clone(), ns, ar),
        _ => Api::all_with(client.clone(), ar),
    }
}

/// Creates `object` through the API.
pub async fn create(client: &Client, object: &Value) -> Result<(), kube::Error> {
    let ar = resource_of(
        object["apiVersion"].as_str().unwrap(),
        object["kind"].as_str().unwrap(),
    );
    let obj: DynamicObject = serde_json::from_value(object.clone()).unwrap();
    dynamic(client, &ar, object["metadata"]["namespace"].as_str())
        .create(&PostParams::default(), &obj)
        .await
        .map(|_| ())
}

/// The install on a real server: the project's namespace, CRD and RBAC from `deploy/`, and
/// KubeVirt's CRDs; returns once every CRD is Established (served).
pub async fn install(client: &Client) {
    let objects: Vec<Value> = ["namespace.yaml", "crd.yaml"]
        .into_iter()
        .chain(RBAC)
        .flat_map(deploy)
        .chain(kubevirt_crds::crds())
        .collect();
    for object in &objects {
        create(client, object)
            .await
            .unwrap_or_else(|e| panic!("{} {}: {e}", object["kind"], object["metadata"]["name"]));
    }
    // A CRD is served once Established.
    for crd in objects
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
    {
        let name = crd["metadata"]["name"].as_str().unwrap();
        let api = dynamic(
            client,
            &resource_of("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
            None,
        );
        let established = |o: &DynamicObject| {
            o.data["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Established" && c["status"] == "True")
            })
        };
        let mut events = watcher(
            api,
            watcher::Config::default().fields(&format!("metadata.name={name}")),
        )
        .boxed();
        let wait = async {
            while let Some(e) = events.next().await {
                if let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = e
                    && established(&o)
                {
                    return;
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| panic!("CRD {name} not Established within 60 s"));
    }
}

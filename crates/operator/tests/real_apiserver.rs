//! The install checked by a real control plane: a kube-apiserver and etcd started from the
//! binaries in `KUBEBUILDER_ASSETS` (the envtest convention), with the RBAC authorizer on.
//! The CRD must be accepted by the server's own CEL cost estimator (and an unbounded variant
//! refused, so the check can fail), and the operator's ServiceAccount must be allowed exactly
//! what it uses, pods/exec over a WebSocket (`get`) included — decided by the real authorizer.
//!
//! Needs KUBEBUILDER_ASSETS: `KUBEBUILDER_ASSETS=/path cargo nextest run -p wukong-operator
//! --run-ignored only -E 'binary(real_apiserver)'` (scripts/test.sh runs it when it is set).

mod common;

use std::time::{Duration, Instant};

use common::control_plane::ControlPlane;
use common::create;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::Value;

const TOKEN: &str = "wukong-test-admin-token";

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a kube-apiserver and etcd in KUBEBUILDER_ASSETS"]
async fn the_install_is_accepted_and_rbac_allows_what_the_operator_uses() {
    let cp = ControlPlane::start(
        &common::control_plane::assets(),
        &[(TOKEN, "admin", &["system:masters"])],
    );
    let client = cp.client(TOKEN).await;

    // The CRD as shipped is accepted; without its list bound the server's CEL cost
    // estimate refuses it (so this check can fail).
    let crd = common::deploy("crd.yaml").remove(0);
    let mut unbounded = crd.clone();
    unbounded["metadata"]["name"] = "wukongs.unbounded.novasphere.dev".into();
    unbounded["spec"]["group"] = "unbounded.novasphere.dev".into();
    let spec = &mut unbounded["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"];
    spec["disks"].as_object_mut().unwrap().remove("maxItems");
    match create(&client, &unbounded).await {
        Err(kube::Error::Api(e)) => assert!(
            e.message.contains("estimated rule cost exceeds budget"),
            "{}",
            e.message
        ),
        other => panic!("an unbounded disk list must be refused, got {other:?}"),
    }
    crd_verdicts_are_the_servers(&client, &crd).await;
    create(&client, &crd)
        .await
        .expect("deploy/crd.yaml is accepted");
    names_are_judged_by_the_server_as_by_the_cli(&client).await;
    mount_paths_are_judged_by_the_server_as_by_the_cli(&client).await;

    let mut tenant = common::deploy("namespace.yaml").remove(0);
    tenant["metadata"]["name"] = "tenant".into();
    let mut exec_in_tenant = common::deploy("guest-exec-namespace.yaml").remove(0);
    exec_in_tenant["metadata"]["namespace"] = "tenant".into();
    for object in common::deploy("namespace.yaml")
        .iter()
        .chain(common::deploy("rbac.yaml").iter())
        .chain(common::deploy("guest-exec.yaml").iter())
        .chain([tenant, exec_in_tenant].iter())
    {
        create(&client, object)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", object["kind"]));
    }
    let sa = common::deploy("rbac.yaml")
        .into_iter()
        .find(|d| d["kind"] == "ServiceAccount")
        .unwrap();
    let user = format!(
        "system:serviceaccount:{}:{}",
        sa["metadata"]["namespace"].as_str().unwrap(),
        sa["metadata"]["name"].as_str().unwrap()
    );
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let allowed = |case: &Value| {
        let text = |k: &str| case[k].as_str().map(String::from);
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.clone()),
                groups: Some(vec![
                    "system:serviceaccounts".into(),
                    "system:authenticated".into(),
                ]),
                resource_attributes: Some(ResourceAttributes {
                    group: text("group"),
                    resource: text("resource"),
                    subresource: text("subresource"),
                    verb: text("verb"),
                    namespace: text("namespace"),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviews = reviews.clone();
        async move {
            reviews
                .create(&PostParams::default(), &review)
                .await
                .unwrap()
                .status
                .is_some_and(|s| s.allowed)
        }
    };
    // The recorded verdicts (which the fake's authorizer must give too) are the server's.
    let verdicts: Value =
        serde_json::from_str(include_str!("fixtures/rbac-verdicts.json")).unwrap();
    for case in verdicts["cases"].as_array().unwrap() {
        let want = case["allowed"].as_bool().unwrap();
        // The authorizer reads RBAC objects from a cache a moment behind their creation.
        let got = if want {
            eventually(|| allowed(case)).await
        } else {
            allowed(case).await
        };
        assert_eq!(got, want, "{case}");
    }
    // With the default binding (guest-exec-cluster.yaml), guest exec is allowed everywhere.
    create(
        &client,
        &common::deploy("guest-exec-cluster.yaml").remove(0),
    )
    .await
    .unwrap();
    for verb in ["get", "create"] {
        let case = serde_json::json!({"namespace": "default", "group": "", "resource": "pods",
                                      "subresource": "exec", "verb": verb});
        assert!(eventually(|| allowed(&case)).await, "pods/exec {verb}");
    }
}

/// Whether `check` comes true within 20 s: the authorizer reads RBAC objects from a cache that
/// follows their creation by a moment.
async fn eventually<F: std::future::Future<Output = bool>>(check: impl Fn() -> F) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The CRD's name rule, run by the real server, refuses what `wukong validate` refuses.
async fn names_are_judged_by_the_server_as_by_the_cli(client: &Client) {
    let wukong = |name: &str| -> Value {
        serde_json::json!({
            "apiVersion": "vm.novasphere.dev/v1alpha1", "kind": "Wukong",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"cpu": 1, "memory": "1Gi", "disks": [{"name": "system", "size": "10Gi"}]},
        })
    };
    // The server serves the new kind once the CRD is established: until then a create is 404.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match create(client, &wukong("my-vm")).await {
            Ok(()) => break,
            Err(kube::Error::Api(e)) if e.code == 404 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("a valid Wukong must be accepted: {e}"),
        }
    }
    for bad in ["my.vm", &"a".repeat(64)] {
        assert!(
            wukong_api::document::check_object_name(bad).is_err(),
            "the CLI refuses {bad}"
        );
        match create(client, &wukong(bad)).await {
            Err(kube::Error::Api(e)) => assert!(
                e.code == 422 && e.message.contains("metadata.name"),
                "{bad}: {} {}",
                e.code,
                e.message
            ),
            other => panic!("{bad} must be refused by the server, got {other:?}"),
        }
    }
}

/// The CRD's mount path rules, run by the real server, refuse what `wukong validate` refuses.
async fn mount_paths_are_judged_by_the_server_as_by_the_cli(client: &Client) {
    let paths = include_str!("../../api/tests/mount-paths.txt");
    for (i, path) in paths.lines().enumerate() {
        let object = serde_json::json!({
            "apiVersion": "vm.novasphere.dev/v1alpha1", "kind": "Wukong",
            "metadata": {"name": format!("mount-{i}"), "namespace": "default"},
            "spec": {"cpu": 1, "memory": "1Gi", "disks": [
                {"name": "system", "size": "10Gi"},
                {"name": "data", "size": "1Gi", "filesystem": {"type": "ext4", "mountPath": path}}
            ]},
        });
        let cli = wukong_api::validate::check_mount_path(path);
        match (create(client, &object).await, &cli) {
            (Ok(()), Ok(())) => {}
            (Err(kube::Error::Api(e)), Err(_)) => assert!(
                e.code == 422 && e.message.contains("mountPath"),
                "{path}: {} {}",
                e.code,
                e.message
            ),
            (server, cli) => panic!("{path}: the server says {server:?}, the CLI {cli:?}"),
        }
    }
}

/// The recorded CRD verdicts (which the fake's cost estimator must give too) are the server's.
async fn crd_verdicts_are_the_servers(client: &Client, crd: &Value) {
    let fixture: Value = serde_json::from_str(include_str!("fixtures/crd-verdicts.json")).unwrap();
    let mut seen = Vec::new();
    for (i, v) in fixture["variants"].as_array().unwrap().iter().enumerate() {
        let variant = common::crd_variant(crd, i, v["remove"].as_str());
        let accepted = match create(client, &variant).await {
            Ok(()) => true,
            Err(kube::Error::Api(e))
                if e.message.contains("estimated rule cost exceeds budget") =>
            {
                false
            }
            Err(e) => panic!("{}: {e}", v["remove"]),
        };
        seen.push(format!("{}: {accepted}", v["remove"]));
        if let Some(want) = v["accepted"].as_bool() {
            assert_eq!(accepted, want, "{}", v["remove"]);
        }
    }
    eprintln!("CRD verdicts of the real server:\n{}", seen.join("\n"));
}

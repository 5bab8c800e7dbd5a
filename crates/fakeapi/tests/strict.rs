//! The fake API server refuses what a real one would, over real HTTP with the kube client.

use futures_util::StreamExt;
use kube::Client;
use kube::core::DynamicObject;
use kube::core::WatchEvent;
use serde_json::{Value, json};
use wukong_fakeapi::{FakeApi, Options};

/// The Wukong CRD as deploy/ ships it: the server checks Wukongs by it.
fn install_crd(api: &FakeApi) {
    let crd = wukong_envtest::deploy("crd.yaml").remove(0);
    api.store
        .create(
            wukong_fakeapi::Kind::named("apiextensions.k8s.io", "CustomResourceDefinition"),
            "",
            crd,
        )
        .unwrap();
}

async fn start() -> (FakeApi, Client) {
    let api = FakeApi::start(Options {
        history: 100,
        bookmark_every: std::time::Duration::from_millis(100),
        ..Options::default()
    })
    .await
    .unwrap();
    install_crd(&api);
    let client = Client::try_from(kube::Config::new(api.url().parse().unwrap())).unwrap();
    (api, client)
}

const WUKONGS: &str = "/apis/vm.novasphere.dev/v1alpha1/namespaces/ns/wukongs";
const VMS: &str = "/apis/kubevirt.io/v1/namespaces/ns/virtualmachines";
const PVCS: &str = "/api/v1/namespaces/ns/persistentvolumeclaims";

async fn call(
    c: &Client,
    method: &str,
    url: &str,
    ct: &str,
    body: Value,
) -> Result<Value, (u16, String)> {
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("Content-Type", ct)
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap();
    match c.request_text(req).await {
        Ok(t) => Ok(serde_json::from_str(&t).unwrap()),
        Err(kube::Error::Api(s)) => Err((s.code, s.message)),
        Err(e) => panic!("{e}"),
    }
}

async fn get(c: &Client, url: &str) -> Result<Value, (u16, String)> {
    call(c, "GET", url, "application/json", Value::Null).await
}

async fn post(c: &Client, url: &str, body: Value) -> Result<Value, (u16, String)> {
    call(c, "POST", url, "application/json", body).await
}

fn wukong(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "vm.novasphere.dev/v1alpha1", "kind": "Wukong", "metadata": {"name": name}, "spec": spec})
}

#[tokio::test]
async fn the_crd_schema_and_cel_rules_are_enforced() {
    let (_api, c) = start().await;
    let (code, msg) = post(&c, WUKONGS, wukong("a", json!({"cpu": 8, "maxCpu": 4})))
        .await
        .unwrap_err();
    assert_eq!(code, 422);
    assert!(msg.contains("cpu must not exceed maxCpu"), "{msg}");
    let strict = format!("{WUKONGS}?fieldValidation=Strict");
    let (code, msg) = post(&c, &strict, wukong("b", json!({"cpus": 2})))
        .await
        .unwrap_err();
    assert_eq!(code, 400);
    assert!(
        msg.contains(r#"strict decoding error: unknown field "spec.cpus""#),
        "{msg}"
    );
    let (code, msg) = post(
        &c,
        WUKONGS,
        wukong(
            "d",
            json!({"disks": [{"name": "a", "size": "1Gi"}, {"name": "a", "size": "2Gi"}]}),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(code, 422);
    assert!(msg.contains("Duplicate value"), "{msg}");
    let (code, msg) = post(
        &c,
        WUKONGS,
        wukong("e", json!({"disks": [{"name": "Data", "size": "1Gi"}]})),
    )
    .await
    .unwrap_err();
    assert_eq!(code, 422);
    assert!(msg.contains("does not match"), "{msg}");
    let created = post(
        &c,
        WUKONGS,
        wukong(
            "c",
            json!({"cpu": 2, "disks": [{"name": "system", "size": "10Gi"}]}),
        ),
    )
    .await
    .unwrap();
    assert_eq!(created["metadata"]["generation"], 1);
    // A transition rule: a disk never shrinks.
    let (code, msg) = call(
        &c,
        "PATCH",
        &format!("{WUKONGS}/c"),
        "application/merge-patch+json",
        json!({"spec": {"disks": [{"name": "system", "size": "5Gi"}]}}),
    )
    .await
    .unwrap_err();
    assert_eq!(code, 422, "{msg}");
    // Strategic merge patches do not apply to custom resources.
    let (code, _) = call(
        &c,
        "PATCH",
        &format!("{WUKONGS}/c"),
        "application/strategic-merge-patch+json",
        json!({"spec": {"cpu": 3}}),
    )
    .await
    .unwrap_err();
    assert_eq!(code, 415);
}

/// As kube-apiserver v1.32 answers (recorded against it): unknown fields are dropped with a
/// `Warning` header by default, dropped silently with `fieldValidation=Ignore`, refused with
/// `Strict`; `dryRun=All` runs every check and stores nothing.
#[tokio::test]
async fn unknown_fields_warn_unless_strict_and_dry_runs_validate_without_storing() {
    let (_api, c) = start().await;
    let w = |name: &str| {
        wukong(
            name,
            json!({"cpu": 1, "memory": "1Gi", "bogus": 1,
                   "disks": [{"name": "system", "size": "10Gi", "extra": "x"}]}),
        )
    };
    let send = |url: String, body: Value| {
        let c = c.clone();
        async move {
            let req = http::Request::post(url)
                .header("Content-Type", "application/json")
                .body(serde_json::to_vec(&body).unwrap())
                .unwrap();
            let res = c.send(req.map(Into::into)).await.unwrap();
            let warnings: Vec<String> = res
                .headers()
                .get_all("warning")
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect();
            (res.status().as_u16(), warnings)
        }
    };
    let (code, warnings) = send(WUKONGS.to_string(), w("warned")).await;
    assert_eq!(code, 201);
    assert_eq!(
        warnings,
        [
            r#"299 - "unknown field \"spec.bogus\"""#,
            r#"299 - "unknown field \"spec.disks[0].extra\"""#
        ]
    );
    let stored = get(&c, &format!("{WUKONGS}/warned")).await.unwrap();
    assert!(stored["spec"].get("bogus").is_none(), "dropped: {stored}");
    assert!(stored["spec"]["disks"][0].get("extra").is_none());
    let (code, warnings) = send(format!("{WUKONGS}?fieldValidation=Ignore"), w("quiet")).await;
    assert_eq!((code, warnings.len()), (201, 0));
    let (code, _) = send(format!("{WUKONGS}?fieldValidation=Strict"), w("strict")).await;
    assert_eq!(code, 400);
    assert_eq!(
        get(&c, &format!("{WUKONGS}/strict")).await.unwrap_err().0,
        404
    );

    let dry = format!("{WUKONGS}?dryRun=All");
    let (code, msg) = post(
        &c,
        &dry,
        wukong(
            "dry",
            json!({"cpu": 3, "maxCpu": 2, "memory": "1Gi",
        "disks": [{"name": "system", "size": "10Gi"}]}),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(code, 422);
    assert!(msg.contains("cpu must not exceed maxCpu"), "{msg}");
    post(
        &c,
        &dry,
        wukong(
            "dry",
            json!({"cpu": 1, "memory": "1Gi",
        "disks": [{"name": "system", "size": "10Gi"}]}),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        get(&c, &format!("{WUKONGS}/dry")).await.unwrap_err().0,
        404,
        "nothing stored"
    );
}

/// Deletes follow `propagationPolicy` as the garbage collector does: Background removes the
/// owner at once and its dependents after, Foreground keeps the owner (finalizer
/// `foregroundDeletion`) until its blocking dependents are gone, Orphan leaves them ownerless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_propagate_as_the_garbage_collector_does() {
    let (api, c) = start().await;
    let sas = "/api/v1/namespaces/ns/serviceaccounts";
    let pods = "/api/v1/namespaces/ns/pods";
    let owned = |owner: &Value, name: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name,
            "ownerReferences": [{"apiVersion": "v1", "kind": "ServiceAccount", "name": owner["metadata"]["name"],
                                 "uid": owner["metadata"]["uid"], "blockOwnerDeletion": true}]},
            "spec": {"containers": [{"name": "c", "image": "i"}]}})
    };
    let until = |what: &'static str, f: Box<dyn Fn() -> bool + Send>| {
        let mut changes = api.store.subscribe();
        async move {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
            while !f() {
                tokio::time::timeout_at(deadline, changes.recv())
                    .await
                    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                    .unwrap();
            }
        }
    };
    let exists = |kind: &'static str, name: &'static str| {
        let store = api.store.clone();
        move || {
            store
                .get(wukong_fakeapi::Kind::named("", kind), "ns", name)
                .is_some()
        }
    };
    for (policy, owner, pod) in [
        ("Foreground", "fg", "fg-pod"),
        ("Background", "bg", "bg-pod"),
        ("Orphan", "or", "or-pod"),
    ] {
        let o = post(
            &c,
            sas,
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": owner}}),
        )
        .await
        .unwrap();
        post(&c, pods, owned(&o, pod)).await.unwrap();
        let gone = call(
            &c,
            "DELETE",
            &format!("{sas}/{owner}"),
            "application/json",
            json!({"propagationPolicy": policy}),
        )
        .await
        .unwrap();
        match policy {
            "Foreground" => {
                assert!(gone["metadata"]["deletionTimestamp"].is_string(), "{gone}");
                assert_eq!(
                    gone["metadata"]["finalizers"],
                    json!(["foregroundDeletion"])
                );
                let (p, o) = (exists("Pod", "fg-pod"), exists("ServiceAccount", "fg"));
                until("the pod, then its owner", Box::new(move || !p() && !o())).await;
            }
            "Background" => {
                assert!(!exists("ServiceAccount", "bg")(), "the owner goes at once");
                let p = exists("Pod", "bg-pod");
                until("the dependent", Box::new(move || !p())).await;
            }
            _ => {
                let pod = get(&c, &format!("{pods}/{pod}")).await.unwrap();
                assert!(
                    pod["metadata"]["ownerReferences"]
                        .as_array()
                        .is_none_or(|r| r.is_empty()),
                    "{pod}"
                );
            }
        }
    }
}

#[tokio::test]
async fn resource_versions_status_and_generation_behave() {
    let (_api, c) = start().await;
    let w = post(&c, WUKONGS, wukong("w", json!({"cpu": 2})))
        .await
        .unwrap();
    let mut stale = w.clone();
    // A write moves the version on...
    let mut upd = w.clone();
    upd["spec"]["cpu"] = json!(3);
    upd["status"] = json!({"phase": "Running"});
    let after = call(&c, "PUT", &format!("{WUKONGS}/w"), "application/json", upd)
        .await
        .unwrap();
    assert_eq!(
        after["metadata"]["generation"], 2,
        "a spec change bumps the generation"
    );
    assert!(
        after.get("status").is_none(),
        "the main resource does not write status"
    );
    // ...so a write from the old version conflicts.
    stale["spec"]["cpu"] = json!(4);
    let (code, _) = call(
        &c,
        "PUT",
        &format!("{WUKONGS}/w"),
        "application/json",
        stale,
    )
    .await
    .unwrap_err();
    assert_eq!(code, 409);
    let st = call(
        &c,
        "PATCH",
        &format!("{WUKONGS}/w/status"),
        "application/merge-patch+json",
        json!({"status": {"phase": "Running"}, "spec": {"cpu": 9}}),
    )
    .await
    .unwrap();
    assert_eq!(st["status"]["phase"], "Running");
    assert_eq!(
        st["spec"]["cpu"], 3,
        "the status subresource writes only status"
    );
    assert_eq!(st["metadata"]["generation"], 2);
}

#[tokio::test]
async fn finalizers_hold_deletion() {
    let (_api, c) = start().await;
    let mut w = wukong("f", json!({"cpu": 1}));
    w["metadata"]["finalizers"] = json!(["x/y"]);
    post(&c, WUKONGS, w).await.unwrap();
    let marked = call(
        &c,
        "DELETE",
        &format!("{WUKONGS}/f"),
        "application/json",
        json!({}),
    )
    .await
    .unwrap();
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    let (code, _) = call(
        &c,
        "PATCH",
        &format!("{WUKONGS}/f"),
        "application/merge-patch+json",
        json!({"metadata": {"finalizers": ["x/y", "x/z"]}}),
    )
    .await
    .unwrap_err();
    assert_eq!(code, 422, "no new finalizers while deleting");
    call(
        &c,
        "PATCH",
        &format!("{WUKONGS}/f"),
        "application/json-patch+json",
        json!([{"op": "remove", "path": "/metadata/finalizers/0"}]),
    )
    .await
    .unwrap();
    let (code, _) = call(
        &c,
        "GET",
        &format!("{WUKONGS}/f"),
        "application/json",
        json!(null),
    )
    .await
    .unwrap_err();
    assert_eq!(code, 404, "gone once the last finalizer is");
}

#[tokio::test]
async fn kubevirt_objects_follow_the_swagger_and_the_webhook() {
    let (_api, c) = start().await;
    let vm = |extra: Value| {
        let mut v = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "v"},
            "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"cpu": {"sockets": 2, "maxSockets": 4},
                "memory": {"guest": "1Gi"}, "devices": {}}}}}});
        if let Value::Object(m) = extra {
            for (k, x) in m {
                v["spec"]["template"]["spec"]["domain"][k] = x;
            }
        }
        v
    };
    let (code, msg) = post(&c, VMS, vm(json!({"cpu": {"sockets": 8, "maxSockets": 4}})))
        .await
        .unwrap_err();
    assert_eq!(code, 422);
    assert!(msg.contains("exceeds maxSockets"), "{msg}");
    let strict = format!("{VMS}?fieldValidation=Strict");
    let (code, msg) = post(&c, &strict, vm(json!({"cpus": 2}))).await.unwrap_err();
    assert_eq!(code, 400);
    assert!(
        msg.contains(r#"unknown field "spec.template.spec.domain.cpus""#),
        "{msg}"
    );
    post(&c, VMS, vm(json!({}))).await.unwrap();
}

#[tokio::test]
async fn pvcs_only_grow_and_only_where_the_class_allows() {
    let (_api, c) = start().await;
    let pvc = |name: &str, class: &str| {
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": class, "resources": {"requests": {"storage": "10Gi"}}}})
    };
    for (name, expandable) in [("expandable", true), ("fixed", false)] {
        post(
            &c,
            "/apis/storage.k8s.io/v1/storageclasses",
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
                   "provisioner": "csi.example.dev", "allowVolumeExpansion": expandable}),
        )
        .await
        .unwrap();
    }
    post(&c, PVCS, pvc("a", "expandable")).await.unwrap();
    post(&c, PVCS, pvc("b", "fixed")).await.unwrap();
    // Only a bound claim may grow: bind them as a provisioner would, through /status.
    for name in ["a", "b"] {
        let mut p = get(&c, &format!("{PVCS}/{name}")).await.unwrap();
        p["status"] = json!({"phase": "Bound", "capacity": {"storage": "10Gi"}});
        call(
            &c,
            "PUT",
            &format!("{PVCS}/{name}/status"),
            "application/json",
            p,
        )
        .await
        .unwrap();
    }
    let size = |s: &str| json!({"spec": {"resources": {"requests": {"storage": s}}}});
    let merge = "application/merge-patch+json";
    let (code, msg) = call(&c, "PATCH", &format!("{PVCS}/a"), merge, size("5Gi"))
        .await
        .unwrap_err();
    assert_eq!(code, 422);
    assert!(msg.contains("can not be less than"), "{msg}");
    let (code, msg) = call(&c, "PATCH", &format!("{PVCS}/b"), merge, size("20Gi"))
        .await
        .unwrap_err();
    assert_eq!(code, 403, "admission, as a real server answers");
    assert!(msg.contains("must support resize"), "{msg}");
    call(&c, "PATCH", &format!("{PVCS}/a"), merge, size("20Gi"))
        .await
        .unwrap();
}

#[tokio::test]
async fn watches_resume_bookmark_and_expire_with_410() {
    let (api, c) = start().await;
    let first = post(&c, WUKONGS, wukong("w1", json!({"cpu": 1})))
        .await
        .unwrap();
    let rv = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    post(&c, WUKONGS, wukong("w2", json!({"cpu": 1})))
        .await
        .unwrap();
    let watch = |rv: String| {
        let req = http::Request::get(format!(
            "{WUKONGS}?watch=true&resourceVersion={rv}&allowWatchBookmarks=true"
        ))
        .body(Vec::new())
        .unwrap();
        let c = c.clone();
        async move {
            c.request_events::<DynamicObject>(req)
                .await
                .unwrap()
                .boxed()
        }
    };
    // From w1's version: w2 is replayed, then a bookmark comes.
    let mut events = watch(rv.clone()).await;
    match events.next().await.unwrap().unwrap() {
        WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("w2")),
        e => panic!("{e:?}"),
    }
    assert!(matches!(
        events.next().await.unwrap().unwrap(),
        WatchEvent::Bookmark(_)
    ));
    // Once the history is compacted, the old version is gone: 410.
    api.store.compact();
    let mut events = watch(rv).await;
    match events.next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!(e.code, 410),
        e => panic!("{e:?}"),
    }
    // Lists page with limit/continue.
    let page = call(
        &c,
        "GET",
        &format!("{WUKONGS}?limit=1"),
        "application/json",
        json!(null),
    )
    .await
    .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let token = page["metadata"]["continue"].as_str().unwrap();
    let rest = call(
        &c,
        "GET",
        &format!("{WUKONGS}?limit=1&continue={token}"),
        "application/json",
        json!(null),
    )
    .await
    .unwrap();
    assert_eq!(rest["items"][0]["metadata"]["name"], "w2");
}

#[tokio::test]
async fn requests_are_authenticated_and_authorized_by_rbac() {
    use wukong_fakeapi::auth::Token;
    let token = |t: &str, user: &str, groups: &[&str]| Token {
        token: t.into(),
        user: user.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    };
    let api = FakeApi::start(Options {
        tokens: vec![
            token("admin", "admin", &["system:masters"]),
            token("bob", "bob", &["system:authenticated"]),
        ],
        ..Options::default()
    })
    .await
    .unwrap();
    install_crd(&api);
    let as_user = |t: Option<&str>| {
        let mut config = kube::Config::new(api.url().parse().unwrap());
        config.auth_info.token = t.map(|t| t.to_string().into());
        Client::try_from(config).unwrap()
    };
    let (admin, bob, nobody) = (as_user(Some("admin")), as_user(Some("bob")), as_user(None));
    let wukongs = "/apis/vm.novasphere.dev/v1alpha1/namespaces/ns/wukongs";
    assert_eq!(get(&nobody, wukongs).await.unwrap_err().0, 401);
    get(&admin, wukongs).await.unwrap();
    let (code, msg) = get(&bob, wukongs).await.unwrap_err();
    assert_eq!(code, 403);
    assert_eq!(
        msg,
        r#"wukongs.vm.novasphere.dev is forbidden: User "bob" cannot list resource "wukongs" in API group "vm.novasphere.dev" in the namespace "ns""#,
        "worded as a kube-apiserver words it"
    );
    // A Role granting exec `get` only: a WebSocket exec (a GET) needs `create` as well.
    let rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces/ns";
    post(&admin, &format!("{rbac}/roles"), json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "exec"}, "rules": [{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get"]},
                                                {"apiGroups": ["vm.novasphere.dev"], "resources": ["wukongs"], "verbs": ["list"]}]}))
        .await
        .unwrap();
    post(&admin, &format!("{rbac}/rolebindings"), json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "exec"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "exec"},
        "subjects": [{"kind": "User", "name": "bob"}]}))
        .await
        .unwrap();
    get(&bob, wukongs).await.unwrap();
    let other = "/apis/vm.novasphere.dev/v1alpha1/namespaces/other/wukongs";
    assert_eq!(
        get(&bob, other).await.unwrap_err().0,
        403,
        "only where bound"
    );
    let (code, msg) = get(
        &bob,
        "/api/v1/namespaces/ns/pods/virt-launcher-x/exec?command=true",
    )
    .await
    .unwrap_err();
    assert_eq!(code, 403);
    assert!(
        msg.contains(r#"cannot create resource "pods/exec""#),
        "{msg}"
    );
}

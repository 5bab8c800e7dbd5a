//! `deploy/` is complete and least-privilege: what `kubectl apply -k deploy/` installs.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

fn docs(file: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_json::to_value(serde_yaml::Value::deserialize(d).unwrap()).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

#[test]
fn kustomization_lists_every_manifest() {
    let k = &docs("kustomization.yaml")[0];
    let listed: BTreeSet<&str> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for f in [
        "namespace.yaml",
        "crd.yaml",
        "rbac.yaml",
        "guest-exec.yaml",
        "guest-exec-cluster.yaml",
        "deployment.yaml",
    ] {
        assert!(listed.contains(f), "{f} missing from kustomization");
        assert!(!docs(f).is_empty());
    }
    // The per-namespace alternative is applied by hand, namespace by namespace.
    assert!(!listed.contains("guest-exec-namespace.yaml"));
}

/// `group/resource:verb` of every rule of a role, refusing wildcards.
fn grants(role: &Value) -> BTreeSet<String> {
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for g in rule["apiGroups"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                for v in rule["verbs"].as_array().unwrap() {
                    let (g, r, v) = (
                        g.as_str().unwrap(),
                        r.as_str().unwrap(),
                        v.as_str().unwrap(),
                    );
                    assert!(g != "*" && r != "*" && v != "*", "no wildcards");
                    granted.insert(format!("{g}/{r}:{v}"));
                }
            }
        }
    }
    granted
}

#[test]
fn guest_exec_is_granted_apart_cluster_wide_or_per_namespace() {
    let role = &docs("guest-exec.yaml")[0];
    assert_eq!(role["kind"], "ClusterRole");
    let want: BTreeSet<String> = ["/pods/exec:get", "/pods/exec:create"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(grants(role), want);
    let sa = docs("rbac.yaml")
        .into_iter()
        .find(|d| d["kind"] == "ServiceAccount")
        .unwrap();
    for (file, kind) in [
        ("guest-exec-cluster.yaml", "ClusterRoleBinding"),
        ("guest-exec-namespace.yaml", "RoleBinding"),
    ] {
        let b = &docs(file)[0];
        assert_eq!(b["kind"], kind, "{file}");
        assert_eq!(b["roleRef"]["name"], role["metadata"]["name"], "{file}");
        assert_eq!(b["subjects"][0]["name"], sa["metadata"]["name"], "{file}");
        assert_eq!(
            b["subjects"][0]["namespace"], sa["metadata"]["namespace"],
            "{file}"
        );
        assert!(
            b["metadata"].get("namespace").is_none(),
            "{file}: the namespace comes from the install"
        );
    }
}

#[test]
fn rbac_grants_exactly_what_the_operator_uses() {
    let rbac = docs("rbac.yaml");
    let role = rbac.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    let granted = grants(role);
    // Every call the operator makes (controller.rs, backend.rs, guest.rs) but guest exec
    // (granted apart), and nothing else.
    let used: BTreeSet<String> = [
        "vm.novasphere.dev/wukongs:get",
        "vm.novasphere.dev/wukongs:list",
        "vm.novasphere.dev/wukongs:watch",
        "vm.novasphere.dev/wukongs:patch",
        "vm.novasphere.dev/wukongs/status:get",
        "vm.novasphere.dev/wukongs/status:patch",
        "vm.novasphere.dev/wukongs/finalizers:update",
        "kubevirt.io/virtualmachines:get",
        "kubevirt.io/virtualmachines:list",
        "kubevirt.io/virtualmachines:watch",
        "kubevirt.io/virtualmachines:create",
        "kubevirt.io/virtualmachines:patch",
        "kubevirt.io/virtualmachines:delete",
        "kubevirt.io/virtualmachineinstances:get",
        "kubevirt.io/virtualmachineinstances:list",
        "kubevirt.io/virtualmachineinstances:watch",
        "kubevirt.io/kubevirts:get",
        "kubevirt.io/kubevirts:list",
        "subresources.kubevirt.io/virtualmachines/restart:update",
        "subresources.kubevirt.io/virtualmachines/addvolume:update",
        "subresources.kubevirt.io/virtualmachines/removevolume:update",
        "subresources.kubevirt.io/virtualmachineinstances/filesystemlist:get",
        "cdi.kubevirt.io/datavolumes:get",
        "cdi.kubevirt.io/datavolumes:create",
        "/persistentvolumeclaims:get",
        "/persistentvolumeclaims:list",
        "/persistentvolumeclaims:watch",
        "/persistentvolumeclaims:create",
        "/persistentvolumeclaims:patch",
        "/persistentvolumeclaims:delete",
        "/pods:get",
        "/pods:list",
        "storage.k8s.io/storageclasses:get",
        "storage.k8s.io/storageclasses:list",
        "events.k8s.io/events:create",
        "events.k8s.io/events:patch",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(granted, used);
    let binding = rbac
        .iter()
        .find(|d| d["kind"] == "ClusterRoleBinding")
        .unwrap();
    let sa = rbac.iter().find(|d| d["kind"] == "ServiceAccount").unwrap();
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
}

#[test]
fn the_deployment_runs_one_unprivileged_operator() {
    let d = docs("deployment.yaml");
    let dep = d.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(
        dep["spec"]["replicas"], 1,
        "no leader election: one replica"
    );
    assert_eq!(dep["spec"]["strategy"]["type"], "Recreate");
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "wukong-operator");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["args"][0], "operator");
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
}

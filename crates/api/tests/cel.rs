//! The CRD's CEL rules, evaluated as an API server would, agree with the Rust validation.

use serde_json::{Value, json};
use wukong_api::crd::check_cel;

fn object(spec: Value) -> Value {
    json!({
        "apiVersion": "vm.novasphere.dev/v1alpha1",
        "kind": "Wukong",
        "metadata": {"name": "my-vm"},
        "spec": spec,
    })
}

fn messages(new: Value, old: Option<Value>) -> Vec<String> {
    check_cel(&new, old.as_ref())
        .into_iter()
        .map(|v| v.message)
        .collect()
}

fn full() -> Value {
    json!({
        "cpu": 2, "memory": "8Gi", "maxCpu": 8, "maxMemory": "32Gi",
        "disks": [
            {"name": "system", "size": "20Gi", "boot": true},
            {"name": "data", "size": "100Gi", "filesystem": {"type": "ext4", "mountPath": "/data"}}
        ],
        "networks": [{"name": "default", "pod": {}}, {"name": "lan", "multus": {"networkName": "lan"}, "mac": "52:54:00:00:00:01"}],
        "restartPolicy": "Window",
        "maintenanceWindow": {"days": ["Sat"], "start": "02:00", "duration": "3h"}
    })
}

#[test]
fn a_valid_object_passes_every_rule() {
    assert_eq!(messages(object(full()), None), Vec::<String>::new());
    assert_eq!(
        messages(object(full()), Some(object(full()))),
        Vec::<String>::new()
    );
}

#[test]
fn memory_must_be_2mi_aligned() {
    let mut spec = full();
    spec["memory"] = json!("1G");
    assert_eq!(
        messages(object(spec), None),
        vec!["must be a positive multiple of 2Mi"]
    );
}

#[test]
fn cpu_and_memory_within_their_maxima() {
    let mut spec = full();
    spec["cpu"] = json!(9);
    spec["memory"] = json!("64Gi");
    let m = messages(object(spec), None);
    assert!(
        m.contains(&"cpu must not exceed maxCpu".to_string()),
        "{m:?}"
    );
    assert!(
        m.contains(&"memory must not exceed maxMemory".to_string()),
        "{m:?}"
    );
}

#[test]
fn a_disk_never_shrinks_even_when_the_list_is_reordered() {
    let old = object(full());
    let mut spec = full();
    spec["disks"] = json!([
        {"name": "data", "size": "50Gi"},
        {"name": "system", "size": "20Gi", "boot": true}
    ]);
    assert_eq!(
        messages(object(spec), Some(old.clone())),
        vec!["a disk's size can never decrease"]
    );
    let mut grown = full();
    grown["disks"][1]["size"] = json!("200Gi");
    assert!(messages(object(grown), Some(old)).is_empty());
}

#[test]
fn the_boot_disk_cannot_be_detached() {
    let mut obj = object(json!({"disks": [{"name": "data", "size": "1Gi"}]}));
    obj["status"] = json!({"bootDisk": "system"});
    assert_eq!(
        messages(obj, None),
        vec!["the boot disk can never be detached"]
    );
}

#[test]
fn a_network_has_exactly_one_source_and_a_proper_mac() {
    let spec = json!({"networks": [
        {"name": "a"},
        {"name": "b", "pod": {}, "multus": {"networkName": "x"}},
        {"name": "c", "pod": {}, "mac": "52:54:00:00:00:0G"}
    ]});
    let m = messages(object(spec), None);
    assert_eq!(
        m.iter()
            .filter(|m| m.starts_with("exactly one network source"))
            .count(),
        2,
        "{m:?}"
    );
    assert!(m.iter().any(|m| m.starts_with("mac must be")), "{m:?}");
}

#[test]
fn at_most_one_boot_disk_and_window_needs_its_schedule() {
    let spec = json!({
        "disks": [{"name": "a", "size": "1Gi", "boot": true}, {"name": "b", "size": "1Gi", "boot": true}],
        "restartPolicy": "Window"
    });
    let m = messages(object(spec), None);
    assert!(
        m.contains(&"at most one disk can be the boot disk".to_string()),
        "{m:?}"
    );
    assert!(
        m.contains(&"restartPolicy Window needs maintenanceWindow".to_string()),
        "{m:?}"
    );
}

#[test]
fn committed_crd_matches_the_types() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/crd.yaml"
    ))
    .expect("deploy/crd.yaml exists (regenerate with `wukong crd > deploy/crd.yaml`)");
    assert!(
        committed == wukong_api::crd::crd_yaml(),
        "deploy/crd.yaml has drifted from the types: run `wukong crd > deploy/crd.yaml`"
    );
}

#[test]
fn the_name_is_a_dns_label_that_fits_a_label_value() {
    let named = |name: &str| {
        let mut o = object(full());
        o["metadata"]["name"] = name.into();
        messages(o, None)
    };
    assert_eq!(named("vm-1"), Vec::<String>::new());
    assert_eq!(named(&"a".repeat(63)), Vec::<String>::new());
    for bad in ["my.vm", "My-vm", "-vm", "vm-", &"a".repeat(64)] {
        let m = named(bad);
        assert_eq!(m.len(), 1, "{bad}: {m:?}");
        assert!(m[0].contains("metadata.name"), "{bad}: {m:?}");
        // The same verdict as the Rust validation the CLI and the operator use.
        assert!(
            wukong_api::document::check_object_name(bad).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn boot_sources_and_cloud_init_agree_with_the_rust_rules() {
    let mut spec = full();
    spec["boot"] = json!({"firmware": "uefi"});
    spec["disks"][0]["source"] = json!({"http": {"url": "https://h/x.qcow2"}});
    spec["cloudInit"] = json!({"userData": "#cloud-config\n"});
    assert_eq!(messages(object(spec.clone()), None), Vec::<String>::new());
    let mut bad = spec.clone();
    bad["boot"]["kernel"] = json!({"path": "/k"});
    bad["disks"][0]["source"]["pvc"] = json!({"name": "golden"});
    bad["cloudInit"]["secretRef"] = json!({"name": "ud"});
    bad["disks"][1]["source"] = json!({});
    let mut m = messages(object(bad.clone()), None);
    m.sort();
    assert_eq!(
        m,
        vec![
            "exactly one disk source (image, http, registry, pvc) must be set",
            "exactly one disk source (image, http, registry, pvc) must be set",
            "firmware and kernel exclude each other",
            "userData and secretRef exclude each other",
        ]
    );
    // The Rust validation refuses the same fields.
    let spec: wukong_api::WukongSpec = serde_json::from_value(bad).unwrap();
    let errors = wukong_api::validate::validate_spec(&spec).unwrap_err();
    let mut fields: Vec<&str> = errors.0.iter().map(|e| e.field.as_str()).collect();
    fields.sort();
    assert_eq!(
        fields,
        vec![
            "spec.boot",
            "spec.cloudInit.secretRef",
            "spec.disks[0].source",
            "spec.disks[1].source"
        ]
    );
}

/// Mount paths, good and bad, that every judge of them must agree on (one per line).
pub const MOUNT_PATHS: &str = include_str!("mount-paths.txt");

#[test]
fn mount_paths_are_judged_by_the_crd_as_by_validation() {
    for path in MOUNT_PATHS.lines() {
        let mut spec = full();
        spec["disks"][1]["filesystem"]["mountPath"] = json!(path);
        let cel = messages(object(spec), None);
        let rust = wukong_api::validate::check_mount_path(path);
        assert_eq!(
            cel.is_empty(),
            rust.is_ok(),
            "{path}: CEL {cel:?}, Rust {rust:?}"
        );
    }
}

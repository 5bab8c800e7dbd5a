//! Render, schema and webhook validation, preflight and edits for KubeVirt, without a cluster.

use serde_json::{Value, json};
use wukong_api::config::{HostLimits, resolve_new};
use wukong_api::document::parse_documents;
use wukong_api::merge::merge_spec;
use wukong_api::{BackendKind, Pinned, VmConfig, resolve};
use wukong_fakeapi::schema::Swagger;
use wukong_kubevirt::{
    ClusterFacts, Edit, apply_patches, edits, expected_guest_size, preflight, render,
};
use wukong_planner::{Action, Mode, Observed, plan};

fn swagger() -> Swagger {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/kubevirt-v1.9.0-swagger.json"
    ))
    .unwrap();
    Swagger::new(&serde_json::from_str(&text).unwrap()).unwrap()
}

/// Every problem of a rendered or patched VM: schema and webhook rules.
fn vm_problems(s: &Swagger, vm: &Value) -> Vec<String> {
    let mut p = s.validate("v1.VirtualMachine", vm);
    p.extend(wukong_fakeapi::webhook::check_vm(vm));
    p
}

fn pvc_problems(s: &Swagger, pvc: &Value) -> Vec<String> {
    let mut p = s.validate(
        "k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        &pvc["metadata"],
    );
    p.extend(s.validate("k8s.io.api.core.v1.PersistentVolumeClaimSpec", &pvc["spec"]));
    p
}

/// The VM the examples start from (cpu 2, 8Gi, a 20Gi system disk), as a cluster would have it.
fn base() -> (VmConfig, Pinned) {
    let spec = serde_json::from_value(
        json!({"cpu": 2, "memory": "8Gi", "disks": [{"name": "system", "size": "20Gi"}]}),
    )
    .unwrap();
    resolve_new("my-vm", &spec, BackendKind::Kubevirt, HostLimits::UNLIMITED).unwrap()
}

fn example(file: &str) -> VmConfig {
    let (have, pinned) = base();
    let text = std::fs::read_to_string(format!(
        "{}/../../examples/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let doc = parse_documents(&text).unwrap().remove(0);
    resolve(
        "my-vm",
        &merge_spec(&have.to_spec(), &doc.raw_spec).unwrap(),
        &pinned,
    )
    .unwrap()
}

fn yaml(v: &Value) -> String {
    serde_yaml::to_string(v).unwrap()
}

#[test]
fn the_examples_render_to_valid_objects() {
    let s = swagger();
    for file in [
        "cpu-2-to-4.yaml",
        "grow-system-disk.yaml",
        "attach-data-disk.yaml",
    ] {
        let r = render("my-vm", "default", &example(file));
        assert_eq!(vm_problems(&s, &r.vm), Vec::<String>::new(), "{file}");
        for p in &r.pvcs {
            assert_eq!(pvc_problems(&s, p), Vec::<String>::new(), "{file}");
        }
        insta::assert_snapshot!(
            file,
            format!(
                "{}---\n{}",
                yaml(&r.vm),
                r.pvcs.iter().map(yaml).collect::<Vec<_>>().join("---\n")
            )
        );
    }
}

#[test]
fn a_guest_below_1gi_gets_no_max_guest_and_a_filesystem_pvc_shows_less() {
    let s = swagger();
    let spec = serde_json::from_value(json!({"cpu": 1, "memory": "512Mi", "disks": [{"name": "system", "size": "10Gi", "volumeMode": "Filesystem", "storageClass": "fast"}]})).unwrap();
    let (c, _) = resolve_new("small", &spec, BackendKind::Kubevirt, HostLimits::UNLIMITED).unwrap();
    let r = render("small", "ns1", &c);
    assert!(
        r.vm["spec"]["template"]["spec"]["domain"]["memory"]
            .get("maxGuest")
            .is_none()
    );
    assert_eq!(
        r.vm["spec"]["template"]["spec"]["domain"]["cpu"]["maxSockets"],
        4
    );
    assert_eq!(vm_problems(&s, &r.vm), Vec::<String>::new());
    assert_eq!(r.pvcs[0]["spec"]["storageClassName"], "fast");
    assert_eq!(r.pvcs[0]["spec"]["volumeMode"], "Filesystem");
    assert_eq!(pvc_problems(&s, &r.pvcs[0]), Vec::<String>::new());
    insta::assert_snapshot!(
        "small-vm-filesystem-pvc",
        format!("{}---\n{}", yaml(&r.vm), yaml(&r.pvcs[0]))
    );
    let guest = expected_guest_size(10 << 30, wukong_api::VolumeMode::Filesystem, 0.055);
    assert!(guest < 10 << 30 && guest.is_multiple_of(1 << 20));
    assert_eq!(
        expected_guest_size(10 << 30, wukong_api::VolumeMode::Block, 0.055),
        10 << 30
    );
    // No resources derived from the spec, no removed fields.
    assert!(
        r.vm["spec"]["template"]["spec"]["domain"]
            .get("resources")
            .is_none()
    );
    assert!(r.vm["spec"].get("liveUpdateFeatures").is_none());
}

#[test]
fn the_validators_refuse_what_a_cluster_would() {
    let s = swagger();
    let mut vm = render("my-vm", "default", &base().0).vm;
    vm["spec"]["template"]["spec"]["domain"]["cpu"]["colour"] = json!("red");
    vm["spec"]["template"]["spec"]["domain"]["cpu"]["sockets"] = json!("two");
    let p = vm_problems(&s, &vm);
    assert!(
        p.iter().any(|e| e.contains("cpu.colour: unknown field")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|e| e.contains("cpu.sockets: expected an integer")),
        "{p:?}"
    );
    let mut vm = render("my-vm", "default", &base().0).vm;
    vm["spec"]["template"]["spec"]["domain"]["cpu"]["sockets"] = json!(9);
    vm["spec"]["template"]["spec"]["domain"]["memory"] =
        json!({"guest": "512Mi", "maxGuest": "2Gi"});
    vm["spec"]["liveUpdateFeatures"] = json!({});
    vm["spec"]["template"]["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "cloudinit", "cloudInitNoCloud": {"userData": "#".repeat(2049)}}));
    vm["spec"]["template"]["spec"]["domain"]["devices"]["disks"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "cloudinit", "cdrom": {"bus": "sata"}}));
    let p = wukong_fakeapi::webhook::check_vm(&vm);
    assert_eq!(p.len(), 4, "{p:?}");
    assert!(
        p.iter().any(|e| e.contains("cloudInitNoCloud.userData")),
        "{p:?}"
    );
    assert!(
        s.validate("v1.VirtualMachine", &json!({"kind": "VirtualMachine"}))
            .iter()
            .any(|e| e.contains("missing required field spec"))
    );
}

fn facts(kubevirt: Value, extra: Vec<Value>) -> ClusterFacts {
    let mut objects = vec![kubevirt];
    objects.extend(extra);
    ClusterFacts::from_objects(objects)
}

fn kubevirt_cr(methods: &[&str], gates: &[&str]) -> Value {
    json!({"kind": "KubeVirt", "spec": {
        "workloadUpdateStrategy": {"workloadUpdateMethods": methods},
        "configuration": {"vmRolloutStrategy": "LiveUpdate", "developerConfiguration": {"featureGates": gates}}}})
}

fn vmi(migratable: bool, agent: bool, guest_at_boot: &str) -> Value {
    json!({"kind": "VirtualMachineInstance", "status": {
    "memory": {"guestAtBoot": guest_at_boot},
    "conditions": [
        {"type": "LiveMigratable", "status": if migratable { "True" } else { "False" }, "message": "cannot migrate VMI: PVC my-vm-system is not shared"},
        {"type": "AgentConnected", "status": if agent { "True" } else { "False" }},
    ]}})
}

/// (change, cluster) -> the plan's (action, mode, reason) for its first step.
fn first_step(want: &VmConfig, f: &ClusterFacts) -> (String, Mode, String) {
    let (have, _) = base();
    let disks: Vec<(String, Option<String>)> = want
        .disks
        .iter()
        .map(|d| (d.name.clone(), d.storage_class.clone()))
        .collect();
    let pf = preflight("my-vm", f, &disks);
    let mut observed = Observed::running(have);
    if let Some(b) = pf.guest_at_boot {
        observed.boot_memory = b;
    }
    let p = plan(
        want,
        &observed,
        &pf.capabilities,
        "2026-11-25T12:00:00Z".parse().unwrap(),
    )
    .unwrap();
    let s = &p.steps[0];
    (
        serde_json::to_value(&s.action).unwrap()["action"]
            .as_str()
            .unwrap()
            .to_string(),
        s.mode,
        s.reason.clone(),
    )
}

#[test]
fn preflight_says_what_is_live_on_this_cluster() {
    let cpu4 = example("cpu-2-to-4.yaml");
    // Live migration available: CPU hot-add is live.
    let ok = facts(
        kubevirt_cr(&["LiveMigrate"], &[]),
        vec![vmi(true, true, "8Gi")],
    );
    assert_eq!(first_step(&cpu4, &ok).1, Mode::Live);
    // No LiveMigrate in the workload update methods.
    let (_, mode, why) = first_step(
        &cpu4,
        &facts(kubevirt_cr(&["Evict"], &[]), vec![vmi(true, true, "8Gi")]),
    );
    assert_eq!(mode, Mode::Restart);
    assert!(
        why.contains("LiveMigrate is not in the cluster's workloadUpdateMethods"),
        "{why}"
    );
    // An RWO volume: not migratable.
    let rwo = json!({"kind": "PersistentVolumeClaim", "metadata": {"name": "my-vm-system"}, "spec": {"accessModes": ["ReadWriteOnce"]}});
    let (_, mode, why) = first_step(&cpu4, &facts(kubevirt_cr(&["LiveMigrate"], &[]), vec![rwo]));
    assert_eq!(mode, Mode::Restart);
    assert_eq!(
        why,
        "CPU and memory changes will restart: the VM is not live-migratable (RWO volume system)"
    );
    // The VMI says it is not migratable.
    let (_, _, why) = first_step(
        &cpu4,
        &facts(
            kubevirt_cr(&["LiveMigrate"], &[]),
            vec![vmi(false, true, "8Gi")],
        ),
    );
    assert!(why.contains("cannot migrate VMI"), "{why}");
    // Stage rollout: everything restarts.
    let stage = json!({"kind": "KubeVirt", "spec": {"configuration": {"vmRolloutStrategy": "Stage"}, "workloadUpdateStrategy": {"workloadUpdateMethods": ["LiveMigrate"]}}});
    assert_eq!(first_step(&cpu4, &facts(stage, vec![])).1, Mode::Restart);
}

#[test]
fn preflight_storage_gates_and_agent() {
    let grow = example("grow-system-disk.yaml");
    let mut want = grow.clone();
    want.disks[0].storage_class = Some("slow".into());
    let sc = json!({"kind": "StorageClass", "metadata": {"name": "slow"}, "allowVolumeExpansion": false});
    let (_, mode, why) = first_step(&want, &facts(kubevirt_cr(&["LiveMigrate"], &[]), vec![sc]));
    assert_eq!(mode, Mode::Restart);
    assert!(
        why.contains("StorageClass slow does not allow volume expansion"),
        "{why}"
    );
    let pf = preflight(
        "my-vm",
        &facts(kubevirt_cr(&["LiveMigrate"], &["HotplugVolumes"]), vec![]),
        &[],
    );
    assert!(!pf.declarative_hotplug);
    let pf = preflight(
        "my-vm",
        &facts(
            kubevirt_cr(&["LiveMigrate"], &[]),
            vec![vmi(true, false, "8Gi")],
        ),
        &[],
    );
    assert!(!pf.capabilities.filesystem_grow.is_live());
    assert_eq!(pf.guest_at_boot, Some(8 << 30));
}

/// Plans `want` against the rendered base VM and returns its edits and the patched VM.
fn edits_for(want: &VmConfig, declarative: bool, automatic: bool) -> (Vec<Edit>, Value) {
    let (have, _) = base();
    let current = render("my-vm", "default", &have).vm;
    let mut want = want.clone();
    if automatic {
        want.restart_policy = wukong_api::RestartPolicy::Automatic;
    }
    let caps = wukong_planner::Capabilities::kubevirt();
    let p = plan(
        &want,
        &Observed::running(have),
        &caps,
        "2026-11-25T12:00:00Z".parse().unwrap(),
    )
    .unwrap();
    let e = edits("my-vm", "default", &p, &want, &current, declarative);
    let patched = apply_patches(&current, &e).expect("every patch applies, its test ops hold");
    (e, patched)
}

#[test]
fn edits_apply_cleanly_and_their_results_validate() {
    let s = swagger();
    // CPU 2 -> 4: a guarded replace of sockets.
    let (e, vm) = edits_for(&example("cpu-2-to-4.yaml"), true, false);
    assert_eq!(
        e,
        vec![Edit::PatchVm(vec![
            json!({"op": "test", "path": "/spec/template/spec/domain/cpu/sockets", "value": 2}),
            json!({"op": "replace", "path": "/spec/template/spec/domain/cpu/sockets", "value": 4}),
        ])]
    );
    assert_eq!(vm_problems(&s, &vm), Vec::<String>::new());
    // Disk grow: a PVC size raise, then the filesystem in the guest.
    let (e, _) = edits_for(&example("grow-system-disk.yaml"), true, false);
    assert_eq!(
        e[0],
        Edit::PatchPvc {
            name: "my-vm-system".into(),
            patch: json!({"spec": {"resources": {"requests": {"storage": "50Gi"}}}})
        }
    );
    // Attach, declarative: PVC + disk and volume entries; the result validates.
    let (e, vm) = edits_for(&example("attach-data-disk.yaml"), true, false);
    assert!(matches!(&e[0], Edit::CreatePvc(p) if p["metadata"]["name"] == "my-vm-data"));
    assert_eq!(
        vm["spec"]["template"]["spec"]["volumes"][1]["persistentVolumeClaim"]["hotpluggable"],
        true
    );
    assert_eq!(vm_problems(&s, &vm), Vec::<String>::new());
    // Attach, imperative: the addvolume body validates.
    let (e, _) = edits_for(&example("attach-data-disk.yaml"), false, false);
    let Edit::AddVolume(body) = &e[1] else {
        panic!("{e:?}")
    };
    assert_eq!(
        s.validate("v1.AddVolumeOptions", body),
        Vec::<String>::new()
    );
}

#[test]
fn nic_unplug_and_held_back_restart_edits() {
    let s = swagger();
    let (mut have, pinned) = base();
    have.networks.push(wukong_api::NicConfig {
        name: "lan".into(),
        source: wukong_api::NetworkSource::Multus("lan".into()),
        mac: "52:54:00:00:00:02".into(),
        model: wukong_api::NicModel::Virtio,
    });
    let current = render("my-vm", "default", &have).vm;
    let mut want = have.clone();
    want.networks.pop();
    want.cpu = 1; // a decrease: restart-only on KubeVirt
    let caps = wukong_planner::Capabilities::kubevirt();
    let now = "2026-11-25T12:00:00Z".parse().unwrap();
    // Under Never the restart-only CPU change is held back: only the NIC unplug is written.
    let p = plan(&want, &Observed::running(have.clone()), &caps, now).unwrap();
    let e = edits("my-vm", "default", &p, &want, &current, true);
    assert_eq!(e.len(), 1, "{e:?}");
    let vm = apply_patches(&current, &e).unwrap();
    assert_eq!(
        vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][1]["state"],
        "absent"
    );
    assert_eq!(
        vm["spec"]["template"]["spec"]["domain"]["cpu"]["sockets"], 2,
        "held back"
    );
    assert_eq!(vm_problems(&s, &vm), Vec::<String>::new());
    // Under Automatic the restart writes the whole desired template together with the call.
    want.restart_policy = wukong_api::RestartPolicy::Automatic;
    let p = plan(&want, &Observed::running(have), &caps, now).unwrap();
    assert!(
        p.steps
            .iter()
            .any(|s| matches!(s.action, Action::RemoveVcpus { .. }) && s.mode == Mode::Restart)
    );
    let e = edits("my-vm", "default", &p, &want, &current, true);
    let Some(Edit::Restart { body, .. }) = e.last() else {
        panic!("{e:?}")
    };
    assert_eq!(s.validate("v1.RestartOptions", body), Vec::<String>::new());
    let vm = apply_patches(&current, &e).unwrap();
    assert_eq!(
        vm["spec"]["template"]["spec"]["domain"]["cpu"]["sockets"],
        1
    );
    assert_eq!(vm_problems(&s, &vm), Vec::<String>::new());
    let _ = pinned;
    // A stale observation fails the guarded patch instead of clobbering.
    let mut stale = current.clone();
    stale["spec"]["template"]["spec"]["domain"]["cpu"]["sockets"] = json!(3);
    assert!(apply_patches(&stale, &e).is_err());
}

#[test]
fn a_cloud_image_renders_to_a_data_volume_cloud_init_and_efi_that_kubevirt_accepts() {
    let s = swagger();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/cloud-image-kubevirt.yaml"
    ))
    .unwrap();
    let doc = parse_documents(&text).unwrap().remove(0);
    let spec: wukong_api::WukongSpec = serde_json::from_value(doc.raw_spec.clone()).unwrap();
    wukong_api::validate::validate_for_backend(&spec, BackendKind::Kubevirt).unwrap();
    let (config, _) = resolve_new(
        "debian-cloud",
        &spec,
        BackendKind::Kubevirt,
        HostLimits::UNLIMITED,
    )
    .unwrap();
    let r = render("debian-cloud", "default", &config);
    assert_eq!(vm_problems(&s, &r.vm), Vec::<String>::new());
    // The disk comes from its DataVolume (CDI makes the PVC), nothing else makes one.
    assert!(r.pvcs.is_empty(), "{:?}", r.pvcs);
    let dv = &r.vm["spec"]["dataVolumeTemplates"][0];
    assert_eq!(dv["metadata"]["name"], "debian-cloud-system");
    assert_eq!(
        dv["spec"]["source"]["http"]["url"],
        spec.disks.as_ref().unwrap()[0]
            .source
            .as_ref()
            .unwrap()
            .http
            .as_ref()
            .unwrap()
            .url
    );
    assert_eq!(
        dv["spec"]["storage"]["resources"]["requests"]["storage"],
        "10Gi"
    );
    let t = &r.vm["spec"]["template"]["spec"];
    assert_eq!(t["volumes"][0]["dataVolume"]["name"], "debian-cloud-system");
    assert_eq!(
        t["domain"]["firmware"]["bootloader"]["efi"]["secureBoot"], false,
        "KubeVirt's default secure boot needs SMM and a signed loader"
    );
    let ci = t["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v.get("cloudInitNoCloud").is_some())
        .expect("a cloud-init volume");
    assert!(
        ci["cloudInitNoCloud"]["userData"]
            .as_str()
            .unwrap()
            .starts_with("#cloud-config")
    );
    // Its disk is a CD-ROM, not one of the user's disks.
    let disks = t["domain"]["devices"]["disks"].as_array().unwrap();
    assert!(
        disks
            .iter()
            .any(|d| d["name"] == ci["name"] && d.get("cdrom").is_some())
    );
    insta::assert_snapshot!("cloud-image-kubevirt.yaml", yaml(&r.vm));
}

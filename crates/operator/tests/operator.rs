//! The operator against an API server and KubeVirt, over real HTTP with the real kube client
//! and Controller: the fake API server and the simulated KubeVirt by default, a real
//! kube-apiserver with `WUKONG_TEST_TARGET=envtest`, a real cluster with real KubeVirt with
//! `WUKONG_TEST_TARGET=cluster` (see `common`). Tests that need the simulator's faults or a
//! control plane of their own are in `operator_sim.rs`, the fake's fault injection in
//! `operator_fake.rs`.

mod common;

use common::{BASIC, Cluster, T, fs_total, sockets};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_the_vm_and_disks_formats_the_data_disk_and_reports_ready() {
    let c = Cluster::start().await;
    c.create("w", BASIC).await;
    let w = c.converged("w").await;
    let vm = c.vm("w").expect("the VirtualMachine exists");
    assert_eq!(sockets(&vm), 2);
    assert_eq!(
        vm["metadata"]["ownerReferences"][0]["kind"], "Wukong",
        "the VM goes with its Wukong"
    );
    let data = c.pvc("w-data").expect("a PVC per disk");
    assert!(
        data["metadata"].get("ownerReferences").is_none(),
        "disks are not garbage-collected"
    );
    assert_eq!(data["spec"]["resources"]["requests"]["storage"], "20Gi");
    assert!(c.vmi("w").is_some(), "KubeVirt runs it");
    assert_eq!(w["metadata"]["finalizers"][0], wukong_operator::FINALIZER);
    assert_eq!(w["status"]["maxCpu"], 4, "the ceiling is pinned");
    assert_eq!(c.condition("w", "Ready").unwrap().0, "True");
    // The blank data disk got its filesystem through the guest agent, mounted at /data.
    assert_eq!(fs_total(&c, "w", "/data"), Some(20 << 30));
    c.event("w", "Created").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_and_memory_grow_live_verified_from_the_vmi_and_counted_in_metrics() {
    let c = Cluster::start().await;
    c.create("w", BASIC).await;
    c.converged("w").await;
    let boot = c.vmi("w").unwrap()["metadata"]["uid"].clone();
    c.patch_spec("w", json!({"cpu": 3, "memory": "3Gi"})).await;
    let w = c.converged("w").await;
    let vmi = c.vmi("w").unwrap();
    assert_eq!(vmi["metadata"]["uid"], boot, "no restart");
    assert_eq!(vmi["status"]["currentCPUTopology"]["sockets"], 3);
    assert_eq!(vmi["status"]["memory"]["guestCurrent"], "3Gi");
    let op = &w["status"]["lastOperation"];
    assert_eq!(op["phase"], "Succeeded");
    let steps = op["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{op}");
    assert!(
        steps
            .iter()
            .all(|s| s["mode"] == "live" && s["state"] == "Done"),
        "{op}"
    );
    assert_eq!(w["status"]["guest"]["cpusOnline"], 3);
    c.event("w", "StepDone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_grows_its_pvc_then_its_filesystem_in_the_guest() {
    let c = Cluster::start().await;
    c.create("w", BASIC).await;
    c.converged("w").await;
    c.patch_spec(
        "w",
        json!({"disks": [{"name": "system", "size": "10Gi"},
                         {"name": "data", "size": "30Gi", "filesystem": {"type": "ext4", "mountPath": "/data"}}]}),
    )
    .await;
    let w = c.converged("w").await;
    let pvc = c.pvc("w-data").unwrap();
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "30Gi");
    assert_eq!(pvc["status"]["capacity"]["storage"], "30Gi");
    assert_eq!(
        fs_total(&c, "w", "/data"),
        Some(30 << 30),
        "the filesystem fills the grown disk"
    );
    let steps: Vec<String> = w["status"]["lastOperation"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["description"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(steps.len(), 2, "disk, then filesystem: {steps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disks_and_nics_attach_and_detach_live() {
    let c = Cluster::start().await;
    c.create("w", BASIC).await;
    c.converged("w").await;
    let boot = c.vmi("w").unwrap()["metadata"]["uid"].clone();
    c.patch_spec(
        "w",
        json!({"disks": [{"name": "system", "size": "10Gi"},
                         {"name": "data", "size": "20Gi", "filesystem": {"type": "ext4", "mountPath": "/data"}},
                         {"name": "logs", "size": "5Gi", "filesystem": {"type": "xfs", "mountPath": "/logs"}}],
               "networks": [{"name": "default", "pod": {}}, {"name": "lan", "multus": {"networkName": "tenant/lan"}}]}),
    )
    .await;
    c.converged("w").await;
    let vmi = c.vmi("w").unwrap();
    assert_eq!(vmi["metadata"]["uid"], boot, "no restart");
    let volumes: Vec<&str> = vmi["status"]["volumeStatus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(volumes.contains(&"logs"), "{volumes:?}");
    assert!(c.pvc("w-logs").is_some());
    assert_eq!(fs_total(&c, "w", "/logs"), Some(5 << 30));
    let nics: Vec<&str> = vmi["status"]["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(nics, ["default", "lan"]);
    // Now take both away again.
    c.patch_spec(
        "w",
        json!({"disks": [{"name": "system", "size": "10Gi"},
                         {"name": "data", "size": "20Gi", "filesystem": {"type": "ext4", "mountPath": "/data"}}],
               "networks": [{"name": "default", "pod": {}}]}),
    )
    .await;
    c.converged("w").await;
    let vmi = c.vmi("w").unwrap();
    assert_eq!(vmi["metadata"]["uid"], boot, "no restart");
    assert_eq!(vmi["status"]["volumeStatus"].as_array().unwrap().len(), 2);
    assert_eq!(vmi["status"]["interfaces"].as_array().unwrap().len(), 1);
    let lan = &c.vm("w").unwrap()["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][1];
    assert_eq!(lan["state"], "absent", "unplugged the KubeVirt way");
    assert!(c.pvc("w-logs").is_some(), "a detached disk keeps its data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_only_change_waits_under_never_and_restarts_under_automatic() {
    let c = Cluster::start().await;
    c.create("w", &format!("{BASIC}  restartPolicy: Never\n"))
        .await;
    c.converged("w").await;
    let boot = c.vmi("w").unwrap()["metadata"]["uid"].clone();
    // KubeVirt refuses vCPU hot-unplug: 2 → 1 needs a restart.
    c.patch_spec("w", json!({"cpu": 1})).await;
    c.until("the restart to be pending", T, |c| {
        c.condition("w", "RestartRequired")
            .is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    let w = c.wukong("w").unwrap();
    assert_eq!(w["status"]["restartPending"], true);
    assert_eq!(
        w["status"]["pendingChanges"][0]["resource"], "cpu",
        "{}",
        w["status"]
    );
    assert_eq!(
        sockets(&c.vm("w").unwrap()),
        2,
        "nothing restart-only is written before the restart"
    );
    assert_eq!(c.vmi("w").unwrap()["metadata"]["uid"], boot);
    c.patch_spec("w", json!({"restartPolicy": "Automatic"}))
        .await;
    c.converged("w").await;
    c.until("the pending restart to clear", T, |c| {
        c.condition("w", "RestartRequired")
            .is_some_and(|(s, _, _)| s == "False")
    })
    .await;
    let vmi = c.vmi("w").unwrap();
    assert_ne!(vmi["metadata"]["uid"], boot, "restarted");
    assert_eq!(vmi["status"]["currentCPUTopology"]["sockets"], 1);
    c.event("w", "Restarted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_keeps_disks_unless_the_wukong_asks_otherwise() {
    let c = Cluster::start().await;
    c.create("keep", BASIC).await;
    c.converged("keep").await;
    c.delete("keep").await;
    c.until("keep to go", T, |c| {
        c.wukong("keep").is_none() && c.vm("keep").is_none() && c.vmi("keep").is_none()
    })
    .await;
    assert!(
        c.pvc("keep-data").is_some() && c.pvc("keep-system").is_some(),
        "disks kept"
    );
    // One cleanup: the VM's deletion (and the lagging cache) brings more reconciles of the
    // deleted object, and none of them cleans up again.
    c.event("keep", "Deleted").await;
    let deleted = |c: &Cluster| {
        c.event_reasons("keep")
            .iter()
            .filter(|r| *r == "Deleted")
            .count()
    };
    // The next Wukong's whole life is the time the operator had to repeat it.

    c.create("gone", BASIC).await;
    c.converged("gone").await;
    c.wukongs()
        .patch(
            "gone",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"annotations": {wukong_operator::DELETE_DISKS: "true"}}}),
            ),
        )
        .await
        .unwrap();
    c.delete("gone").await;
    c.until("gone to go with its disks", T, |c| {
        c.wukong("gone").is_none() && c.pvc("gone-data").is_none() && c.pvc("gone-system").is_none()
    })
    .await;
    assert_eq!(deleted(&c), 1, "{:?}", c.event_reasons("keep"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_killed_mid_operation_converges_after_restart() {
    let mut c = Cluster::start().await;
    c.create("w", BASIC).await;
    c.converged("w").await;
    let boot = c.vmi("w").unwrap()["metadata"]["uid"].clone();
    c.patch_spec(
        "w",
        json!({"cpu": 3, "memory": "3Gi",
               "disks": [{"name": "system", "size": "10Gi"},
                         {"name": "data", "size": "25Gi", "filesystem": {"type": "ext4", "mountPath": "/data"}}]}),
    )
    .await;
    c.until("the first step done", T, |c| {
        c.wukong("w").is_some_and(|w| {
            w["status"]["operation"]["steps"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["state"] == "Done"))
        })
    })
    .await;
    c.kill_operator().await;
    c.start_operator();
    c.converged("w").await;
    let vmi = c.vmi("w").unwrap();
    assert_eq!(vmi["metadata"]["uid"], boot, "no restart");
    assert_eq!(vmi["status"]["currentCPUTopology"]["sockets"], 3);
    assert_eq!(vmi["status"]["memory"]["guestCurrent"], "3Gi");
    assert_eq!(fs_total(&c, "w", "/data"), Some(25 << 30));
    let w = c.wukong("w").unwrap();
    assert!(w["status"]["operation"].is_null(), "nothing left in flight");
    assert_eq!(
        c.condition("w", "Resizing").map(|(s, _, _)| s).as_deref(),
        Some("False")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_object_is_reported_and_blocks_no_other() {
    let c = Cluster::start().await;
    // Valid for the API server, not for a cluster: a disk image path is a local-backend field.
    c.create(
        "bad",
        "  cpu: 1\n  memory: 1Gi\n  disks:\n  - {name: system, size: 10Gi, source: {image: /images/base.qcow2}}\n",
    )
    .await;
    c.create("good", BASIC).await;
    c.converged("good").await;
    c.until("bad to be reported", T, |c| {
        c.condition("bad", "Degraded")
            .is_some_and(|(s, r, _)| s == "True" && r == "InvalidSpec")
    })
    .await;
    let (_, _, message) = c.condition("bad", "Degraded").unwrap();
    assert!(message.contains("spec.disks[0].source"), "{message}");
    assert!(c.vm("bad").is_none(), "nothing was created for it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_being_deleted_gets_nothing_new_and_its_wukongs_go() {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::Api;
    let c = Cluster::start().await;
    let namespaces: Api<Namespace> = Api::all(c.client.clone());
    for name in ["a", "b", "c"] {
        c.create(name, BASIC).await;
    }
    for name in ["a", "b", "c"] {
        c.converged(name).await;
    }
    let before = c.create_attempts();
    // The namespace controller deletes the VMs first: the operator must not take the
    // missing VMs for new Wukongs and make them again.
    namespaces
        .delete(&c.ns, &kube::api::DeleteParams::default())
        .await
        .unwrap();
    c.until("the namespace to be gone", T, |c| {
        c.namespace(&c.ns).is_none()
    })
    .await;
    for name in ["a", "b", "c"] {
        assert!(c.wukong(name).is_none() && c.vm(name).is_none());
        assert!(c.pvc(&format!("{name}-system")).is_none());
    }
    // Creates the server refused are counted by the fake only.
    if let (Some(before), Some(after)) = (before, c.create_attempts()) {
        let attempts = after - before;
        assert!(
            attempts <= 3,
            "at most one refused create per Wukong, no retries: {attempts}"
        );
    }
}

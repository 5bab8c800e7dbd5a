//! Operator tests that need the simulated KubeVirt (its faults: a PVC that will not grow, a
//! guest that leaves vCPUs offline, a refused restart…) or a control plane of their own (its
//! audit record, RBAC changed under the operator): they run on the fake and on envtest, not
//! on a shared cluster (`common` says how the targets are picked).

mod common;

use std::time::Duration;

use common::{BASIC, Cluster, T, fs_total, sockets};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_writes_its_objects_with_strict_field_validation() {
    let c = Cluster::start().await;
    c.create("w", BASIC).await;
    c.converged("w").await;
    c.patch_spec(
        "w",
        json!({"disks": [{"name": "system", "size": "10Gi"},
                         {"name": "data", "size": "30Gi", "filesystem": {"type": "ext4", "mountPath": "/data"}}]}),
    )
    .await;
    c.converged("w").await;
    // Every VM, PVC and status write of the operator asks for strict field validation, so a
    // field the server does not know is refused, not dropped.
    let writes = c.operator_writes();
    for (method, what) in [
        ("POST", "/virtualmachines?"),
        ("POST", "/persistentvolumeclaims?"),
        ("PATCH", "/persistentvolumeclaims/w-data?"),
        ("PATCH", "/wukongs/w/status?"),
    ] {
        assert!(
            writes.iter().any(|(m, u)| m == method && u.contains(what)),
            "no {method} {what} among {writes:#?}"
        );
    }
    let lax: Vec<_> = writes
        .iter()
        .filter(|(_, u)| {
            !u.starts_with("/apis/subresources.kubevirt.io/")
                && (u.contains("/virtualmachines")
                    || u.contains("/persistentvolumeclaims")
                    || u.contains("/status"))
                && !u.contains("fieldValidation=Strict")
        })
        .collect();
    assert!(
        lax.is_empty(),
        "written without strict validation: {lax:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pvc_resize_that_fails_degrades_with_the_reason() {
    let c = Cluster::start().await;
    c.create("w", BASIC).await;
    c.converged("w").await;
    c.kubevirt().faults(|f| {
        f.fail_resize.insert("w-data".into());
    });
    c.patch_spec(
        "w",
        json!({"disks": [{"name": "system", "size": "10Gi"},
                         {"name": "data", "size": "40Gi", "filesystem": {"type": "ext4", "mountPath": "/data"}}]}),
    )
    .await;
    c.until("Degraded", T, |c| {
        c.condition("w", "Degraded")
            .is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    let (_, _, message) = c.condition("w", "Degraded").unwrap();
    assert!(message.contains("could not be resized"), "{message}");
    let w = c.wukong("w").unwrap();
    assert_ne!(
        w["status"]["observedGeneration"], w["metadata"]["generation"],
        "not claimed converged"
    );
    assert_eq!(fs_total(&c, "w", "/data"), Some(20 << 30));
    // Once the storage recovers, the retry completes it.
    c.kubevirt().faults(|f| f.fail_resize.clear());
    c.until("the resize to complete", T, |c| {
        fs_total(c, "w", "/data") == Some(40 << 30)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmi_that_never_shows_the_new_cpu_count_times_out_into_a_condition() {
    let c = Cluster::start_with(|o| o.verify_timeout = Duration::from_secs(2)).await;
    c.create("w", BASIC).await;
    c.converged("w").await;
    c.kubevirt().faults(|f| {
        f.freeze_cpu.insert("w".into());
    });
    c.patch_spec("w", json!({"cpu": 3})).await;
    c.until("Degraded", T, |c| {
        c.condition("w", "Degraded")
            .is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    let w = c.wukong("w").unwrap();
    assert_eq!(
        w["status"]["lastOperation"]["phase"], "Failed",
        "{}",
        w["status"]
    );
    let (_, _, message) = c.condition("w", "Degraded").unwrap();
    assert!(
        message.contains("cpu") || message.contains("vCPU"),
        "{message}"
    );
    assert_eq!(
        w["status"]["guest"]["cpusOnline"], 2,
        "status tells what the guest has"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pod_exec_the_status_says_the_guest_cannot_be_reached() {
    let c = Cluster::start().await;
    // Guest exec left out of the install (as guest-exec-cluster.yaml describes).
    c.revoke_guest_exec().await;
    c.create("w", BASIC).await;
    c.until("Degraded", T, |c| {
        c.condition("w", "Degraded")
            .is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    let (_, _, message) = c.condition("w", "Degraded").unwrap();
    assert!(message.contains("pods/exec"), "{message}");
    assert!(c.vmi("w").is_some(), "the VM itself runs");
    // The phase is the VMI's (Running) while its steps keep failing, not what it was when
    // the VM was created.
    c.until("phase Running", T, |c| {
        c.wukong("w")
            .is_some_and(|w| w["status"]["phase"] == "Running")
    })
    .await;
    assert_eq!(c.condition("w", "Degraded").unwrap().0, "True");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcpus_the_guest_leaves_offline_are_caught_by_asking_the_guest() {
    let c = Cluster::start_with(|o| o.verify_timeout = Duration::from_secs(2)).await;
    c.create("w", BASIC).await;
    c.converged("w").await;
    // KubeVirt adds the vCPU to the domain, but the guest does not online it.
    c.kubevirt().faults(|f| {
        f.offline_cpus.insert("w".into());
    });
    c.patch_spec("w", json!({"cpu": 3})).await;
    c.until("Degraded", T, |c| {
        c.condition("w", "Degraded")
            .is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    assert_eq!(
        c.vmi("w").unwrap()["status"]["currentCPUTopology"]["sockets"],
        3,
        "the API says OK"
    );
    let (_, _, message) = c.condition("w", "Degraded").unwrap();
    assert!(
        message.contains("2 vCPU(s) online"),
        "the guest does not: {message}"
    );
    // The retries keep asking the guest: never claimed converged while it lacks the vCPU.
    let failures = |c: &Cluster| {
        c.event_reasons("w")
            .iter()
            .filter(|r| *r == "StepFailed")
            .count()
    };
    c.until("a retry", T, |c| failures(c) >= 2).await;
    let w = c.wukong("w").unwrap();
    assert_ne!(
        w["status"]["observedGeneration"], w["metadata"]["generation"],
        "{}",
        w["status"]
    );
    assert_eq!(c.condition("w", "Degraded").unwrap().0, "True");
    // Once the guest onlines it, the next retry converges.
    c.kubevirt().faults(|f| f.offline_cpus.clear());
    c.converged("w").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_kubevirt_has_not_started_takes_changes_in_its_template_and_its_run_strategy() {
    let c = Cluster::start().await;
    // No provisioner binds the system disk: KubeVirt cannot start the VM (no VMI).
    c.kubevirt().faults(|f| {
        f.unbound.insert("w-system".into());
    });
    c.create("w", BASIC).await;
    c.until("the VM waiting for its disks", T, |c| {
        c.vm("w")
            .is_some_and(|vm| vm["status"]["printableStatus"] == "WaitingForVolumeBinding")
    })
    .await;
    c.patch_spec("w", json!({"cpu": 3, "memory": "3Gi"})).await;
    let template = |c: &Cluster| {
        c.vm("w").map(|vm| {
            (
                sockets(&vm),
                vm["spec"]["template"]["spec"]["domain"]["memory"]["guest"].clone(),
            )
        })
    };
    c.until("the change in the template", T, |c| {
        template(c) == Some((3, json!("3Gi")))
    })
    .await;
    c.until("the status to say so", T, |c| {
        c.wukong("w").is_some_and(|w| {
            w["status"]["observedGeneration"] == w["metadata"]["generation"]
                && w["status"]["phase"] == "Starting"
        })
    })
    .await;
    assert!(c.vmi("w").is_none(), "still not started");

    // Halted reaches the VM itself: with a real KubeVirt it would otherwise start it.
    c.patch_spec("w", json!({"runStrategy": "Halted"})).await;
    c.until("runStrategy Halted on the VM", T, |c| {
        c.vm("w")
            .is_some_and(|vm| vm["spec"]["runStrategy"] == "Halted")
    })
    .await;
    c.until("phase Stopped", T, |c| {
        c.wukong("w")
            .is_some_and(|w| w["status"]["phase"] == "Stopped")
    })
    .await;

    // Once the disk binds and the VM may run, it starts with what was asked meanwhile.
    c.kubevirt().faults(|f| f.unbound.clear());
    c.patch_spec("w", json!({"runStrategy": "Always"})).await;
    let w = c.converged("w").await;
    assert_eq!(c.vm("w").unwrap()["spec"]["runStrategy"], "Always");
    let vmi = c.vmi("w").unwrap();
    assert_eq!(vmi["status"]["currentCPUTopology"]["sockets"], 3);
    assert_eq!(vmi["status"]["memory"]["guestCurrent"], "3Gi");
    assert_eq!(w["status"]["phase"], "Running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_fails_leaves_the_template_as_it_was_and_says_why() {
    let c = Cluster::start().await;
    c.create("w", &format!("{BASIC}  restartPolicy: Automatic\n"))
        .await;
    c.converged("w").await;
    let boot = c.vmi("w").unwrap()["metadata"]["uid"].clone();
    c.kubevirt().faults(|f| f.refuse_restart = true);
    // 2 → 1 vCPUs needs a restart on KubeVirt.
    c.patch_spec("w", json!({"cpu": 1})).await;
    c.until("Degraded", T, |c| {
        c.condition("w", "Degraded")
            .is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    let (_, _, message) = c.condition("w", "Degraded").unwrap();
    assert!(
        message.contains("restart") && message.contains("taken back out of the template"),
        "{message}"
    );
    assert_eq!(
        sockets(&c.vm("w").unwrap()),
        2,
        "a restart-only change is not left in the template when the restart fails"
    );
    let w = c.wukong("w").unwrap();
    let steps = w["status"]["lastOperation"]["steps"].as_array().unwrap();
    assert!(
        steps.iter().all(|s| s["state"] != "Running"),
        "no step stays Running: {}",
        w["status"]
    );
    assert_eq!(
        w["status"]["restartPending"], true,
        "the change still waits for a restart: {}",
        w["status"]
    );
    assert_eq!(
        c.vmi("w").unwrap()["metadata"]["uid"],
        boot,
        "not restarted"
    );
    // Once the restart is allowed, a retry does it.
    c.kubevirt().faults(|f| f.refuse_restart = false);
    c.until("the restart", T, |c| {
        c.vmi("w").is_some_and(|v| {
            v["metadata"]["uid"] != boot && v["status"]["currentCPUTopology"]["sockets"] == 1
        })
    })
    .await;
    c.converged("w").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_verified_in_the_guest_not_taken_from_the_vmi() {
    let c = Cluster::start_with(|o| o.verify_timeout = Duration::from_secs(2)).await;
    c.create("w", BASIC).await;
    c.converged("w").await;
    // KubeVirt plugs the memory and the VMI says so; the guest (no virtio-mem driver) never
    // takes it.
    c.kubevirt().faults(|f| {
        f.memory_unseen.insert("w".into());
    });
    c.patch_spec("w", json!({"memory": "3Gi"})).await;
    c.until("Degraded", T, |c| {
        c.condition("w", "Degraded")
            .is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    assert_eq!(
        c.vmi("w").unwrap()["status"]["memory"]["guestCurrent"],
        "3Gi",
        "the VMI says done"
    );
    let (_, _, message) = c.condition("w", "Degraded").unwrap();
    assert!(message.contains("memory"), "{message}");
    let w = c.wukong("w").unwrap();
    assert_ne!(
        w["status"]["observedGeneration"], w["metadata"]["generation"],
        "not claimed converged: {}",
        w["status"]
    );
    assert_eq!(
        w["status"]["guest"]["memory"], "2Gi",
        "status tells what the guest has"
    );
    // Once the guest takes it, a retry converges.
    c.kubevirt().faults(|f| f.memory_unseen.clear());
    c.converged("w").await;
}

const CLOUD_IMAGE: &str = "  cpu: 1\n  memory: 1Gi\n  boot: {firmware: uefi}\n  disks:\n  - name: system\n    size: 10Gi\n    source: {http: {url: 'https://images.example/debian-12-genericcloud-amd64.qcow2'}}\n  cloudInit:\n    userData: \"#cloud-config\\nhostname: web\\n\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_image_is_imported_first_its_progress_shown_then_it_boots() {
    let c = Cluster::start().await;
    c.kubevirt().faults(|f| {
        f.import_held.insert("w-system".into());
    });
    c.create("w", CLOUD_IMAGE).await;
    // Halfway through the import: the status says so, the VM is not started.
    c.until("the import progress in status", T, |c| {
        c.condition("w", "Ready")
            .is_some_and(|(s, r, m)| s == "False" && r == "Importing" && m.contains("47.00%"))
    })
    .await;
    assert!(c.vmi("w").is_none(), "KubeVirt waits for its disks");
    assert_eq!(c.wukong("w").unwrap()["status"]["phase"], "Pending");
    c.event("w", "Importing").await;
    // What the operator made: a DataVolume template (CDI makes the PVC), cloud-init and EFI.
    let vm = c.vm("w").unwrap();
    assert_eq!(
        vm["spec"]["dataVolumeTemplates"][0]["spec"]["source"]["http"]["url"],
        "https://images.example/debian-12-genericcloud-amd64.qcow2"
    );
    let t = &vm["spec"]["template"]["spec"];
    assert_eq!(
        t["domain"]["firmware"]["bootloader"]["efi"]["secureBoot"],
        false
    );
    assert!(t["volumes"].to_string().contains("cloudInitNoCloud"));
    c.kubevirt().faults(|f| {
        f.import_held.clear();
    });
    let w = c.converged("w").await;
    assert_eq!(w["status"]["phase"], "Running");
    let pvc = c.pvc("w-system").expect("CDI made the disk's PVC");
    assert_eq!(pvc["metadata"]["ownerReferences"][0]["kind"], "DataVolume");
    // The imported disk grows through its PVC as any other.
    c.patch_spec(
        "w",
        json!({"disks": [{"name": "system", "size": "12Gi",
                          "source": {"http": {"url": "https://images.example/debian-12-genericcloud-amd64.qcow2"}}}]}),
    )
    .await;
    c.converged("w").await;
    assert_eq!(
        c.pvc("w-system").unwrap()["status"]["capacity"]["storage"],
        "12Gi"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_that_gets_nowhere_is_reported_as_failed_with_its_reason() {
    let c = Cluster::start().await;
    // A URL that does not answer: CDI restarts its importer with progress N/A, for ever.
    c.kubevirt().faults(|f| {
        f.import_stuck.insert("w-system".into());
    });
    c.create("w", CLOUD_IMAGE).await;
    c.until("the import to be reported failed", T, |c| {
        c.condition("w", "Degraded")
            .is_some_and(|(s, r, _)| s == "True" && r == "ImportFailed")
    })
    .await;
    let (_, _, message) = c.condition("w", "Degraded").unwrap();
    assert!(
        message.contains("disk system") && message.contains("Unable to connect"),
        "{message}"
    );
    assert_eq!(c.wukong("w").unwrap()["status"]["phase"], "Failed");
    c.event("w", "ImportFailed").await;
    assert!(c.vmi("w").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_with_a_source_added_later_is_imported_then_hot_plugged() {
    let c = Cluster::start().await;
    c.create("w", BASIC).await;
    c.converged("w").await;
    let url = "https://images.example/tools.qcow2";
    c.kubevirt().faults(|f| {
        f.import_held.insert("w-tools".into());
    });
    c.patch_spec(
        "w",
        json!({"disks": [{"name": "system", "size": "10Gi"},
                         {"name": "data", "size": "20Gi", "filesystem": {"type": "ext4", "mountPath": "/data"}},
                         {"name": "tools", "size": "5Gi", "source": {"http": {"url": url}}}]}),
    )
    .await;
    // Halfway through the import: the attach step shows CDI's progress; the VM does not have
    // the disk yet.
    c.until("the import progress on the attach step", T, |c| {
        attach_step(c, "tools").is_some_and(|s| {
            s["state"] == "Running"
                && s["progress"] == 47
                && s["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("ImportInProgress 47.00%"))
        })
    })
    .await;
    assert!(
        !c.vmi("w").unwrap()["spec"]["volumes"]
            .to_string()
            .contains("w-tools"),
        "not hot-plugged before it is imported"
    );
    c.kubevirt().faults(|f| {
        f.import_held.clear();
    });
    c.converged("w").await;
    // Not a blank PVC: a DataVolume of the source, whose PVC CDI made.
    let dv = c
        .get("cdi.kubevirt.io/v1beta1", "DataVolume", &c.ns, "w-tools")
        .expect("a DataVolume for the new disk");
    assert_eq!(dv["spec"]["source"]["http"]["url"], url);
    let pvc = c.pvc("w-tools").unwrap();
    assert_eq!(pvc["metadata"]["ownerReferences"][0]["kind"], "DataVolume");
    let vmi = c.vmi("w").unwrap();
    assert!(
        vmi["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "tools" && v["dataVolume"]["name"] == "w-tools"),
        "{}",
        vmi["spec"]["volumes"]
    );

    // An import that gets nowhere fails the step with CDI's reason; nothing is hot-plugged.
    c.kubevirt().faults(|f| {
        f.import_stuck.insert("w-more".into());
    });
    c.patch_spec(
        "w",
        json!({"disks": [{"name": "system", "size": "10Gi"},
                         {"name": "data", "size": "20Gi", "filesystem": {"type": "ext4", "mountPath": "/data"}},
                         {"name": "tools", "size": "5Gi", "source": {"http": {"url": url}}},
                         {"name": "more", "size": "5Gi", "source": {"http": {"url": "https://nowhere.example/x.qcow2"}}}]}),
    )
    .await;
    c.until("the attach step failed", T, |c| {
        attach_step(c, "more").is_some_and(|s| s["state"] == "Failed")
    })
    .await;
    let step = attach_step(&c, "more").unwrap();
    let message = step["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("not getting anywhere")
            && message.contains("nowhere.example")
            && message.contains("Unable to connect"),
        "{step}"
    );
    assert!(
        !c.vmi("w").unwrap()["spec"]["volumes"]
            .to_string()
            .contains("w-more")
    );
}

/// The step that attaches disk `disk`, of the running operation, else of the last one.
fn attach_step(c: &Cluster, disk: &str) -> Option<Value> {
    let w = c.wukong("w")?;
    ["operation", "lastOperation"]
        .iter()
        .filter_map(|o| w["status"][o]["steps"].as_array())
        .flatten()
        .find(|s| {
            s["description"]
                .as_str()
                .is_some_and(|d| d.contains("attach") && d.contains(&format!("disk {disk}")))
        })
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscaler_raises_sockets_from_cpu_load_and_grows_a_filling_disk() {
    let mut c = Cluster::start().await;
    c.create(
        "w",
        "  cpu: 1\n  memory: 2Gi\n  maxCpu: 4\n  maxMemory: 4Gi\n  disks:\n  - {name: system, size: 10Gi}\n  - {name: data, size: 20Gi, filesystem: {type: ext4, mountPath: /data}}\n  autoscaling:\n    cpu: {min: 1, max: 2, targetUtilization: 60}\n    disks:\n    - {name: data, maxSize: 40Gi, growAtUsage: 80, minStep: 1Gi}\n    intervalSeconds: 5\n",
    )
    .await;
    c.converged("w").await;
    c.until("a first reading", T, |c| {
        c.wukong("w")
            .is_some_and(|w| w["status"]["autoscaling"]["metrics"]["memoryTotal"].is_string())
    })
    .await;
    let w = c.wukong("w").unwrap();
    assert!(
        w["status"]["autoscaling"]["lastChange"].is_null(),
        "idle: nothing to do: {}",
        w["status"]["autoscaling"]
    );
    // Two vCPUs' worth of work on one, and the data filesystem 85 % full.
    c.kubevirt().faults(|f| {
        f.cpu_load.insert("w".into(), 2.0);
        f.fs_used.insert("w-data".into(), 17 << 30);
    });
    c.until("2 sockets and the data filesystem grown", 3 * T, |c| {
        c.vm("w").is_some_and(|vm| sockets(&vm) == 2)
            && fs_total(c, "w", "/data").is_some_and(|t| t >= 25 << 30)
    })
    .await;
    assert_eq!(
        c.pvc("w-data").unwrap()["spec"]["resources"]["requests"]["storage"],
        "25Gi",
        "raised by stepPercent (25 %) once: 17Gi of 25Gi is below growAtUsage"
    );
    let w = c.wukong("w").unwrap();
    let a = &w["status"]["autoscaling"];
    assert_eq!(a["target"]["cpu"], 2, "{a}");
    assert_eq!(a["target"]["disks"]["data"], "25Gi", "{a}");
    assert_eq!(w["spec"]["cpu"], 1, "the spec stays the user's");
    c.until("the Autoscaled events of both changes", T, |c| {
        let notes = c.event_notes("w", "Autoscaled").join("\n");
        notes.contains("autoscaler: cpu 1 -> 2: ")
            && notes.contains("autoscaler: disk/data 20Gi -> 25Gi: filesystem 85 % full")
    })
    .await;
    let text = c.metrics.render();
    let ns = &c.ns;
    for line in [
        format!(
            r#"wukong_autoscaler_changes_total{{namespace="{ns}",name="w",resource="cpu",direction="up"}} 1"#
        ),
        format!(
            r#"wukong_autoscaler_changes_total{{namespace="{ns}",name="w",resource="disk/data",direction="up"}} 1"#
        ),
        format!(
            r#"wukong_guest_filesystem_used_bytes{{namespace="{ns}",name="w",disk="data",mount_path="/data"}} "#
        ),
    ] {
        assert!(text.contains(&line), "{line} not in /metrics:\n{text}");
    }
    // A crashed operator's successor carries on from the history in status: the same
    // windows, the same cooldowns.
    let a = c.wukong("w").unwrap()["status"]["autoscaling"].clone();
    assert!(a["history"]["cpu"]["since"].is_f64(), "{a}");
    c.kill_operator().await;
    c.start_operator();
    c.until("an evaluation by the new operator", T, |c| {
        c.wukong("w")
            .is_some_and(|w| w["status"]["autoscaling"]["lastEvaluation"] != a["lastEvaluation"])
    })
    .await;
    let b = c.wukong("w").unwrap()["status"]["autoscaling"].clone();
    assert_eq!(
        b["history"]["cpu"]["since"], a["history"]["cpu"]["since"],
        "{b}"
    );
    assert_eq!(b["target"], a["target"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscaler_adds_memory_live_when_the_guest_uses_most_of_it() {
    let c = Cluster::start().await;
    c.create(
        "w",
        "  cpu: 1\n  memory: 2Gi\n  maxMemory: 4Gi\n  disks:\n  - {name: system, size: 10Gi}\n  autoscaling:\n    memory: {min: 2Gi, max: 4Gi, targetUtilization: 75}\n    intervalSeconds: 5\n",
    )
    .await;
    c.converged("w").await;
    let boot = c.vmi("w").unwrap()["metadata"]["uid"].clone();
    c.until("a first reading", T, |c| {
        c.wukong("w")
            .is_some_and(|w| w["status"]["autoscaling"]["metrics"]["memoryTotal"].is_string())
    })
    .await;
    assert!(
        c.wukong("w").unwrap()["status"]["autoscaling"]["lastChange"].is_null(),
        "30 % used, at the boot size: nothing to do"
    );
    // 1.9Gi of 2Gi in use: above the 75 % target.
    c.kubevirt().faults(|f| {
        f.mem_used.insert("w".into(), 1946 << 20);
    });
    c.until("memory added in the guest", 3 * T, |c| {
        c.vmi("w").is_some_and(|vmi| {
            vmi["status"]["memory"]["guestCurrent"]
                .as_str()
                .and_then(|q| wukong_api::quantity::parse_bytes(q).ok())
                .is_some_and(|b| b > 2 << 30)
        })
    })
    .await;
    let w = c.converged("w").await;
    let a = &w["status"]["autoscaling"];
    let target = a["target"]["memory"].as_str().unwrap().to_string();
    let bytes = wukong_api::quantity::parse_bytes(&target).unwrap();
    assert!(
        bytes as f64 >= 1946.0 * 1024.0 * 1024.0 / 0.75 && bytes <= 4 << 30,
        "used / target, within max: {a}"
    );
    assert_eq!(bytes % (128 << 20), 0, "in 128Mi steps: {target}");
    assert_eq!(
        c.vmi("w").unwrap()["status"]["memory"]["guestCurrent"]
            .as_str()
            .and_then(|q| wukong_api::quantity::parse_bytes(q).ok()),
        Some(bytes),
        "the guest has the target"
    );
    assert_eq!(
        c.vmi("w").unwrap()["metadata"]["uid"],
        boot,
        "live: no restart"
    );
    assert_eq!(w["spec"]["memory"], "2Gi", "the spec stays the user's");
    assert!(
        a["lastChange"]["reason"].as_str().unwrap().contains('%'),
        "the reason carries the figures: {a}"
    );
}

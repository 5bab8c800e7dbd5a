//! The operator's fault suite: the operator dies at a step boundary or in the middle of a
//! step (a failpoint armed in the test process panics its task there, and the test aborts
//! what is left of it, as a `kill -9` ends a process); a new operator then takes over. It must
//! end where the spec says: the change in the VM, its PVCs and the guest, no operation left in
//! flight, nothing left Resizing, no volume or disk twice. (Issue: reliability and security,
//! §2.) Runs on the fake API server, or on a real kube-apiserver with
//! `WUKONG_TEST_TARGET=envtest`.
//!
//! By default one point per kind of change, drawn with a seed (printed);
//! `WUKONG_FAULT_POINTS=all` runs every point, `WUKONG_FAULT_SEED` picks the draw.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{BASIC, Cluster, T, fs_total, sockets};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    CpuUp,
    MemoryUp,
    DiskGrow,
    Attach,
    Restart,
}

/// Every failpoint a change passes, in order.
const POINTS: &[(Change, &str)] = &[
    (Change::CpuUp, "step.started.addVcpus"),
    (Change::CpuUp, "kubevirt.edited"),
    (Change::CpuUp, "step.applied.addVcpus"),
    (Change::CpuUp, "step.done.addVcpus"),
    (Change::MemoryUp, "step.started.growMemory"),
    (Change::MemoryUp, "kubevirt.edited"),
    (Change::MemoryUp, "step.done.growMemory"),
    (Change::DiskGrow, "step.started.growDisk"),
    (Change::DiskGrow, "kubevirt.edited"),
    (Change::DiskGrow, "step.done.growDisk"),
    (Change::DiskGrow, "step.started.growFilesystem"),
    (Change::Attach, "step.started.attachDisk"),
    (Change::Attach, "kubevirt.edited"),
    (Change::Attach, "step.done.attachDisk"),
    (Change::Attach, "step.started.createFilesystem"),
    (Change::Restart, "restart.started"),
    (Change::Restart, "kubevirt.restart-requested"),
    (Change::Restart, "restart.done"),
];

const DATA_30: &str =
    r#"{"name": "data", "size": "30Gi", "filesystem": {"type": "ext4", "mountPath": "/data"}}"#;

impl Change {
    /// The spec patch that makes the change from BASIC.
    fn patch(self) -> Value {
        let system = json!({"name": "system", "size": "10Gi"});
        let data = json!({"name": "data", "size": "20Gi", "filesystem": {"type": "ext4", "mountPath": "/data"}});
        match self {
            Change::CpuUp => json!({"cpu": 3}),
            Change::MemoryUp => json!({"memory": "3Gi"}),
            Change::DiskGrow => {
                json!({"disks": [system, serde_json::from_str::<Value>(DATA_30).unwrap()]})
            }
            Change::Attach => json!({"disks": [system, data,
                {"name": "extra", "size": "5Gi", "filesystem": {"type": "ext4", "mountPath": "/extra"}}]}),
            // 2 → 1 vCPUs takes a restart on KubeVirt.
            Change::Restart => json!({"cpu": 1}),
        }
    }

    /// Whether the cluster shows the change done.
    fn done(self, c: &Cluster) -> bool {
        let (Some(vm), Some(vmi)) = (c.vm("w"), c.vmi("w")) else {
            return false;
        };
        let topology = vmi["status"]["currentCPUTopology"]["sockets"].as_u64();
        match self {
            Change::CpuUp => sockets(&vm) == 3 && topology == Some(3),
            Change::MemoryUp => vmi["status"]["memory"]["guestCurrent"] == "3Gi",
            Change::DiskGrow => {
                c.pvc("w-data")
                    .is_some_and(|p| p["status"]["capacity"]["storage"] == "30Gi")
                    && fs_total(c, "w", "/data") == Some(30 << 30)
            }
            Change::Attach => fs_total(c, "w", "/extra") == Some(5 << 30),
            Change::Restart => sockets(&vm) == 1 && topology == Some(1),
        }
    }
}

/// Names that appear more than once in a list of objects with a `name`.
fn twice(list: &Value) -> Vec<String> {
    let mut seen = BTreeMap::new();
    for v in list.as_array().into_iter().flatten() {
        *seen
            .entry(v["name"].as_str().unwrap_or("").to_string())
            .or_insert(0) += 1;
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(k, _)| k)
        .collect()
}

fn schedule() -> Vec<(Change, &'static str)> {
    if std::env::var("WUKONG_FAULT_POINTS").as_deref() == Ok("all") {
        return POINTS.to_vec();
    }
    let seed: u64 = std::env::var("WUKONG_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        });
    println!("operator fault schedule: WUKONG_FAULT_SEED={seed}");
    let mut by_change: BTreeMap<Change, Vec<&'static str>> = BTreeMap::new();
    for (c, p) in POINTS {
        by_change.entry(*c).or_default().push(p);
    }
    by_change
        .into_iter()
        .enumerate()
        .map(|(i, (c, points))| {
            // A small mix of the seed and the change's place, one point per change.
            let k = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407u64.wrapping_mul(i as u64 + 1));
            (c, points[((k >> 33) % points.len() as u64) as usize])
        })
        .collect()
}

/// One point: the change starts, the operator dies at `point`, a new one finishes it.
async fn one(change: Change, point: &str) -> Duration {
    let mut c = Cluster::start().await;
    let restart = if change == Change::Restart {
        "  restartPolicy: Automatic\n"
    } else {
        ""
    };
    c.create("w", &format!("{BASIC}{restart}")).await;
    c.converged("w").await;
    let boot = c.vmi("w").unwrap()["metadata"]["uid"].clone();

    c.kill_operator().await;
    let fired = wukong_engine::failpoint::arm_in_process(point);
    c.start_operator();
    c.patch_spec("w", change.patch()).await;
    let reached = tokio::task::spawn_blocking(move || fired.recv_timeout(T))
        .await
        .unwrap();
    assert!(
        reached.is_ok(),
        "{change:?}: the operator never reached {point}"
    );
    c.kill_operator().await;
    wukong_engine::failpoint::disarm_in_process();

    let started = std::time::Instant::now();
    c.start_operator();
    // Done, and settled: no operation in flight, not Resizing, Ready.
    c.until(
        &format!("{change:?} done after a death at {point}"),
        T,
        |c| {
            change.done(c)
                && c.wukong("w").is_some_and(|w| {
                    w["status"]["operation"].is_null()
                        && w["status"]["observedGeneration"] == w["metadata"]["generation"]
                })
                && c.condition("w", "Resizing").is_some_and(|r| r.0 == "False")
                && c.condition("w", "Ready").is_some_and(|r| r.0 == "True")
        },
    )
    .await;
    let w = c.converged("w").await;
    let took = started.elapsed();
    let vm = c.vm("w").unwrap();
    let template = &vm["spec"]["template"]["spec"];
    for list in [
        &template["volumes"],
        &template["domain"]["devices"]["disks"],
    ] {
        assert!(
            twice(list).is_empty(),
            "{change:?} at {point}: twice in the VM: {:?}",
            twice(list)
        );
    }
    assert!(
        w["status"]["operation"].is_null(),
        "{change:?} at {point}: an operation left in flight: {}",
        w["status"]["operation"]
    );
    let resizing = c.condition("w", "Resizing").map(|r| r.0);
    assert_ne!(
        resizing.as_deref(),
        Some("True"),
        "{change:?} at {point}: left Resizing"
    );
    assert_eq!(
        c.condition("w", "Ready").map(|r| r.0).as_deref(),
        Some("True"),
        "{change:?} at {point}"
    );
    let now = c.vmi("w").unwrap()["metadata"]["uid"].clone();
    if change == Change::Restart {
        assert_ne!(now, boot, "{point}: restarted");
    } else {
        assert_eq!(now, boot, "{change:?} at {point}: live, no restart");
    }
    let op = &w["status"]["lastOperation"];
    let steps: Vec<String> = op["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            format!(
                "{} [{}]",
                s["description"].as_str().unwrap_or("?"),
                s["state"].as_str().unwrap_or("?")
            )
        })
        .collect();
    println!(
        "{change:?} at {point}: last operation {} {}: {}",
        op["id"],
        op["phase"],
        steps.join("; ")
    );
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_killed_at_a_step_boundary_or_inside_a_step_is_succeeded_by_one_that_finishes_it()
 {
    let points = schedule();
    let mut report = Vec::new();
    for (change, point) in &points {
        let took = one(*change, point).await;
        report.push(format!(
            "{change:?} at {point}: converged {:.1} s after the new operator started",
            took.as_secs_f64()
        ));
    }
    println!(
        "operator faults: {} points, {} converged, 0 lost\n{}",
        points.len(),
        report.len(),
        report.join("\n")
    );
}

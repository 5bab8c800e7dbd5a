//! Live vCPUs and memory on the local backend, verified in the guest, boot id unchanged.
//! (Issue: live CPU and memory.)

mod common;

use std::time::Duration;

use common::{Daemon, doc};

fn cpu_dirs(d: &Daemon, vm: &str) -> usize {
    d.exec(vm, &["ls", "/sys/devices/system/cpu"])
        .split_whitespace()
        .filter(|n| n.starts_with("cpu") && n[3..].chars().all(|c| c.is_ascii_digit()))
        .count()
}

#[test]
fn cpu_1_2_4_2_1_live_with_real_unplug() {
    let d = Daemon::start(&[]);
    d.apply(&doc(
        "c1",
        "  cpu: 1\n  memory: 512Mi\n  maxCpu: 8\n  disks:\n  - {name: system, size: 256Mi}\n",
    ));
    let boot = d.boot_id("c1");
    for n in [2u32, 4, 2, 1] {
        let out = d.apply(&doc("c1", &format!("  cpu: {n}\n")));
        assert!(out.contains("[live]"), "{out}");
        assert_eq!(d.online_cpus("c1"), n, "after cpu: {n}");
        assert_eq!(d.get("c1")["status"]["guest"]["cpusOnline"], n);
        assert_eq!(d.boot_id("c1"), boot, "no reboot");
    }
    // QEMU 10 re-adds safely: going down unplugged the hot-added vCPUs for real.
    assert_eq!(cpu_dirs(&d, "c1"), 1);
    d.apply(&doc("c1", "  cpu: 3\n"));
    assert_eq!(d.online_cpus("c1"), 3);
    assert_eq!(d.boot_id("c1"), boot);
}

#[test]
fn cpu_down_by_guest_offline_keeps_the_vcpu_plugged() {
    // The strategy for QEMU before 10 (and once TCG's vCPU slots run out).
    let d = Daemon::start(&["--guest-offline-cpus"]);
    d.apply(&doc(
        "c2",
        "  cpu: 2\n  memory: 512Mi\n  maxCpu: 4\n  disks:\n  - {name: system, size: 256Mi}\n",
    ));
    let boot = d.boot_id("c2");
    let out = d.apply(&doc("c2", "  cpu: 1\n"));
    assert!(out.contains("offline in guest"), "{out}");
    assert_eq!(d.online_cpus("c2"), 1);
    assert_eq!(cpu_dirs(&d, "c2"), 2, "still plugged, only offline");
    d.apply(&doc("c2", "  cpu: 2\n"));
    assert_eq!(d.online_cpus("c2"), 2);
    assert_eq!(
        cpu_dirs(&d, "c2"),
        2,
        "brought back online, nothing created"
    );
    assert_eq!(d.boot_id("c2"), boot);
}

#[test]
fn memory_up_and_down_live_then_below_boot_waits_for_a_restart() {
    let d = Daemon::start(&[]);
    d.apply(&doc(
        "m1",
        "  cpu: 1\n  memory: 512Mi\n  maxMemory: 2Gi\n  disks:\n  - {name: system, size: 256Mi}\n",
    ));
    let boot = d.boot_id("m1");
    let base = d.mem_total_kib("m1") as i64;
    for (spec, delta_mib) in [
        ("1Gi", 512i64),
        ("1536Mi", 1024),
        ("768Mi", 256),
        ("512Mi", 0),
    ] {
        let out = d.apply(&doc("m1", &format!("  memory: {spec}\n")));
        assert!(out.contains("[live]"), "{out}");
        let moved_mib = (d.mem_total_kib("m1") as i64 - base) / 1024;
        assert!(
            (moved_mib - delta_mib).abs() <= 128,
            "memory {spec}: MemTotal moved {moved_mib} MiB, expected {delta_mib}"
        );
        assert_eq!(d.boot_id("m1"), boot);
    }
    // Below the boot size only a restart can do it: it waits under the default policy.
    let out = d.apply(&doc("m1", "  memory: 256Mi\n"));
    assert!(out.contains("below the boot size"), "{out}");
    let (status, message) = d.condition("m1", "RestartRequired").unwrap();
    assert_eq!(status, "True");
    assert!(message.contains("memory"), "{message}");
    assert_eq!(d.boot_id("m1"), boot);
}

/// Detaches the guest's virtio-mem driver from its device: the guest takes no memory.
const UNBIND_VIRTIO_MEM: &str = "d=/sys/bus/virtio/drivers/virtio_mem; for v in $d/virtio*; do \
     echo ${v##*/} > /var/virtio-mem; echo ${v##*/} > $d/unbind; done";
/// Gives the device back to the driver.
const BIND_VIRTIO_MEM: &str =
    "echo $(cat /var/virtio-mem) > /sys/bus/virtio/drivers/virtio_mem/bind";

#[test]
fn a_guest_that_does_not_take_the_memory_is_reported_not_called_done() {
    let d = Daemon::start(&["--verify-timeout", "4s"]);
    d.apply(&doc(
        "m2",
        "  cpu: 1\n  memory: 512Mi\n  maxMemory: 1Gi\n  disks:\n  - {name: system, size: 256Mi}\n",
    ));
    // The guest stops taking hot-plugged memory (Wukong onlines what a guest leaves
    // offline, so the guest's driver lets go of the device instead).
    d.sh("m2", UNBIND_VIRTIO_MEM);
    let out = d.wk_in(&["apply", "-f", "-"], &doc("m2", "  memory: 1Gi\n"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("memory"), "{text}");
    let (degraded, why) = d.condition("m2", "Degraded").unwrap();
    assert_eq!(degraded, "True", "{why}");
    let o = d.get("m2");
    assert_eq!(o["status"]["lastOperation"]["phase"], "Failed");
    assert_ne!(
        o["status"]["observedGeneration"], o["metadata"]["generation"],
        "not converged, not claimed"
    );
}

#[test]
fn a_vm_stuck_in_verification_does_not_hold_back_the_others() {
    // p1's guest stops onlining memory, so its operation waits in verification until the test
    // onlines the memory by hand; p2 and p3 must converge meanwhile.
    let d = Daemon::start(&["--verify-timeout", "120s"]);
    let names = ["p1", "p2", "p3"];
    let create: Vec<String> = names
        .iter()
        .map(|n| doc(n, "  cpu: 1\n  memory: 384Mi\n  maxCpu: 4\n  maxMemory: 1Gi\n  disks:\n  - {name: system, size: 128Mi}\n"))
        .collect();
    d.apply(&create.join("---\n"));
    d.sh("p1", UNBIND_VIRTIO_MEM);
    let change: Vec<String> = names
        .iter()
        .map(|n| doc(n, "  cpu: 2\n  memory: 768Mi\n"))
        .collect();
    let out = d.wk_in(&["apply", "--no-wait", "-f", "-"], &change.join("---\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let converged = |o: &serde_json::Value| {
        o["status"]["observedGeneration"] == o["metadata"]["generation"]
            && o["status"]["guest"]["cpusOnline"] == 2
    };
    d.wait_for(
        "p1",
        "p1's operation to start",
        Duration::from_secs(60),
        |o| o["status"]["operation"]["phase"] == "Running",
    );
    for n in ["p2", "p3"] {
        d.wait_for(n, "converged", Duration::from_secs(90), converged);
        assert_eq!(d.online_cpus(n), 2);
    }
    let p1 = d.get("p1");
    assert_eq!(
        p1["status"]["operation"]["phase"], "Running",
        "p1 still waits for its memory: {}",
        p1["status"]
    );
    assert_ne!(
        p1["status"]["observedGeneration"],
        p1["metadata"]["generation"]
    );
    // The guest's driver takes the device again: p1's operation completes.
    d.sh("p1", BIND_VIRTIO_MEM);
    let o = d.wait_for("p1", "converged", Duration::from_secs(90), converged);
    assert_eq!(o["status"]["lastOperation"]["phase"], "Succeeded");
    assert_eq!(d.online_cpus("p1"), 2);
}

#[test]
fn a_daemon_killed_mid_operation_converges_after_restart() {
    let mut d = Daemon::start(&[]);
    d.apply(&doc("k1", "  cpu: 1\n  memory: 512Mi\n  maxCpu: 4\n  maxMemory: 2Gi\n  disks:\n  - {name: system, size: 256Mi}\n"));
    let boot = d.boot_id("k1");
    let out = d.wk_in(
        &["apply", "--no-wait", "-f", "-"],
        &doc("k1", "  cpu: 3\n  memory: 1536Mi\n  disks:\n  - {name: system, size: 256Mi}\n  - {name: data, size: 128Mi, filesystem: {type: ext4, mountPath: /data}}\n"),
    );
    assert!(out.status.success());
    // Kill it as soon as the first step is done.
    d.wait_for("k1", "the first step done", Duration::from_secs(60), |o| {
        o["status"]["operation"]["steps"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["state"] == "Done"))
    });
    d.kill();
    d.spawn();
    let o = d.wait_for(
        "k1",
        "converged after the restart",
        Duration::from_secs(120),
        |o| {
            o["status"]["observedGeneration"] == o["metadata"]["generation"]
                && o["status"]["lastOperation"]["phase"] == "Succeeded"
                && o["status"]["guest"]["cpusOnline"] == 3
        },
    );
    assert_eq!(d.online_cpus("k1"), 3);
    assert!(d.mem_total_kib("k1") > 1_300_000);
    assert!(d.exec("k1", &["df", "-k", "/data"]).contains("/data"));
    assert_eq!(d.boot_id("k1"), boot, "converged live, no reboot");
    // The journal kept the interrupted operation.
    let ev = d.wk(&["describe", "k1"]);
    assert!(
        String::from_utf8_lossy(&ev.stdout).contains("started"),
        "{}",
        String::from_utf8_lossy(&ev.stdout)
    );
    let _ = o;
}

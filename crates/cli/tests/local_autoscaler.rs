//! The autoscaler on real VMs of the local daemon (busybox guest, and the stock Debian guest
//! that onlines nothing by itself and has the cloud-image disk layout): load in the guest leads to
//! a decision, then to the change verified in the guest; the windows hold scale-downs back.
//! Only the real clock of a real guest is used, and no assertion is on how fast anything is:
//! each wait has a generous failure timeout, and the one bound on time that is asserted
//! (no scale-down before the down-window) is a lower bound the rules guarantee.

mod common;

use std::time::Duration;

use common::{Daemon, doc, fs_bytes, stock_image};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const LONG: Duration = Duration::from_secs(240);

/// Lines of `wukong describe`'s event list.
fn events(d: &Daemon, vm: &str) -> Vec<String> {
    let out = d.wk(&["describe", vm]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_once("Events:")
        .map(|(_, e)| e.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

fn autoscaling(o: &Value) -> &Value {
    &o["status"]["autoscaling"]
}

fn time_of(v: &Value) -> jiff::Timestamp {
    v.as_str().unwrap().parse().unwrap()
}

/// Starts `n` busy loops in the guest, in the background, their pids in /tmp/load.
fn load(d: &Daemon, vm: &str, n: u32) {
    d.sh(
        vm,
        &format!(
            "for i in $(seq {n}); do (while :; do :; done) </dev/null >/dev/null 2>&1 & echo $! >> /tmp/load; done"
        ),
    );
}

fn unload(d: &Daemon, vm: &str) {
    d.sh(vm, "kill $(cat /tmp/load); rm /tmp/load");
}

#[test]
fn cpu_load_scales_vcpus_up_then_down_after_the_window_and_recommend_changes_nothing() {
    let mut d = Daemon::start(&[]);
    d.apply(&doc(
        "as-cpu",
        "  cpu: 1\n  memory: 512Mi\n  maxCpu: 2\n  disks:\n  - {name: system, size: 256Mi}\n  autoscaling:\n    mode: Recommend\n    cpu: {min: 1, max: 2, targetUtilization: 60}\n    intervalSeconds: 5\n    stabilizationSeconds: 20\n    cooldownSeconds: 0\n",
    ));
    let boot = d.boot_id("as-cpu");
    load(&d, "as-cpu", 2);
    // Recommend: the recommendation says 2, nothing changes.
    let o = d.wait_for("as-cpu", "a recommendation of 2 vCPUs", LONG, |o| {
        autoscaling(o)["recommendation"]["cpu"] == 2
    });
    let a = autoscaling(&o);
    assert_eq!(a["mode"], "Recommend");
    assert!(a["target"].is_null() && a["lastChange"].is_null(), "{a}");
    assert!(
        a["metrics"]["cpuUtilization"].as_f64().unwrap() > 66.0,
        "{a}"
    );
    assert_eq!(d.online_cpus("as-cpu"), 1, "Recommend changes nothing");
    assert_eq!(o["spec"]["cpu"], 1);

    // Auto: the decision, then 2 vCPUs online in the guest.
    d.apply(&doc("as-cpu", "  autoscaling:\n    mode: Auto\n"));
    let o = d.wait_for("as-cpu", "the scale-up decision", LONG, |o| {
        autoscaling(o)["lastChange"]["to"] == "2"
    });
    let change = &autoscaling(&o)["lastChange"];
    assert_eq!(change["resource"], "cpu");
    assert!(
        change["reason"].as_str().unwrap().contains("utilisation"),
        "{change}"
    );
    d.wait_for("as-cpu", "2 vCPUs online", LONG, |o| {
        o["status"]["guest"]["cpusOnline"] == 2 && o["status"]["operation"].is_null()
    });
    assert_eq!(d.online_cpus("as-cpu"), 2);
    assert_eq!(d.boot_id("as-cpu"), boot, "live");
    let ev = events(&d, "as-cpu");
    let decided = ev
        .iter()
        .position(|l| l.contains("autoscaler: cpu 1 -> 2"))
        .unwrap_or_else(|| panic!("no decision event: {ev:#?}"));
    assert!(
        ev[decided..].iter().any(|l| l.contains("verified in")),
        "the change is verified after the decision: {ev:#?}"
    );
    let o = d.get("as-cpu");
    assert_eq!(o["spec"]["cpu"], 1, "the spec is not the autoscaler's");
    assert_eq!(autoscaling(&o)["target"]["cpu"], 2);
    let get = String::from_utf8_lossy(&d.wk(&["get", "as-cpu"]).stdout).into_owned();
    assert!(get.contains("2 (spec 1, autoscaled)"), "{get}");
    let top = String::from_utf8_lossy(&d.wk(&["top"]).stdout).into_owned();
    let row = top
        .lines()
        .find(|l| l.starts_with("as-cpu"))
        .unwrap_or_else(|| panic!("{top}"));
    assert!(row.contains("cpu=2"), "the recommendation in top: {top}");
    let metrics = String::from_utf8_lossy(&d.wk(&["metrics"]).stdout).into_owned();
    for line in [
        r#"wukong_autoscaler_changes_total{namespace="default",name="as-cpu",resource="cpu",direction="up"} 1"#,
        r#"wukong_autoscaler_recommendation{namespace="default",name="as-cpu",resource="cpu"} 2"#,
        r#"wukong_guest_cpu_utilization_percent{namespace="default",name="as-cpu"} "#,
    ] {
        assert!(metrics.contains(line), "{line} not in /metrics:\n{metrics}");
    }

    // Load stopped: no scale-down before the down-window, then back to 1 — across a daemon
    // killed inside the window: the restarted one carries on from the history in status.
    let stopped = jiff::Timestamp::now();
    unload(&d, "as-cpu");
    let o = d.wait_for(
        "as-cpu",
        "a scale-down held back by the window",
        LONG,
        |o| {
            autoscaling(o)["reason"]
                .as_str()
                .is_some_and(|r| r.contains("held back by the 20 s down-window"))
        },
    );
    let series = autoscaling(&o)["history"]["cpu"]["since"].clone();
    assert!(series.is_f64(), "{}", autoscaling(&o));
    d.kill();
    d.spawn();
    let o = d.wait_for("as-cpu", "the scale-down decision", LONG, |o| {
        autoscaling(o)["lastChange"]["to"] == "1"
    });
    assert_eq!(
        autoscaling(&o)["history"]["cpu"]["since"],
        series,
        "the restarted daemon went on with the same window"
    );
    let down = time_of(&autoscaling(&o)["lastChange"]["time"]);
    let after = down.duration_since(stopped).as_secs_f64();
    // The last busy reading may be one interval (5 s) after the stop: 20 s − 5 s at least.
    assert!(
        after >= 15.0,
        "scaled down {after:.1} s after the load stopped"
    );
    d.wait_for("as-cpu", "1 vCPU online", LONG, |o| {
        o["status"]["guest"]["cpusOnline"] == 1 && o["status"]["operation"].is_null()
    });
    assert_eq!(d.online_cpus("as-cpu"), 1);
    assert_eq!(d.boot_id("as-cpu"), boot);
}

#[test]
fn a_steady_writer_grows_the_disk_up_to_max_size_without_enospc_then_a_warning() {
    let d = Daemon::start(&[]);
    d.apply(&doc(
        "as-disk",
        "  cpu: 1\n  memory: 512Mi\n  disks:\n  - {name: system, size: 256Mi}\n  - name: data\n    size: 256Mi\n    filesystem: {type: ext4, mountPath: /data}\n  autoscaling:\n    disks:\n    - {name: data, maxSize: 1Gi, growAtUsage: 70, stepPercent: 50, minStep: 64Mi}\n    intervalSeconds: 5\n",
    ));
    let boot = d.boot_id("as-disk");
    // 5 MB/s in 1 MiB writes; a failed write (ENOSPC) leaves the size it had reached.
    d.sh(
        "as-disk",
        "(i=0; while :; do dd if=/dev/zero of=/data/fill bs=1M count=1 seek=$i conv=notrunc,fsync 2>/dev/null || { df -k /data | tail -1 > /tmp/enospc; break; }; i=$((i+1)); usleep 200000; done) </dev/null >/dev/null 2>&1 &",
    );
    let o = d.wait_for(
        "as-disk",
        "the disk at maxSize and the writer stopped",
        LONG,
        |o| {
            o["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "AutoscalingLimited" && c["status"] == "True")
            })
        },
    );
    let size = d.disk_bytes("as-disk", "data").unwrap();
    assert_eq!(size, 1024 * MIB, "grown to maxSize");
    let ev = events(&d, "as-disk");
    let grows: Vec<&String> = ev
        .iter()
        .filter(|l| l.contains("autoscaler: disk/data"))
        .collect();
    assert!(grows.len() >= 3, "grown several times: {ev:#?}");
    assert!(
        ev.iter()
            .any(|l| l.contains("warning: autoscaler: disk/data") && l.contains("maxSize")),
        "the Warning at maxSize: {ev:#?}"
    );
    let msg = o["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "AutoscalingLimited")
        .unwrap()["message"]
        .to_string();
    assert!(msg.contains("disk/data"), "{msg}");
    // The writer may only have met ENOSPC once the filesystem had its full size.
    let fs_kib: u64 = d
        .sh("as-disk", "df -k /data | tail -1")
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        fs_kib * 1024 > 900 * MIB,
        "the filesystem fills the grown disk: {fs_kib} KiB"
    );
    let enospc = d.sh("as-disk", "cat /tmp/enospc 2>/dev/null || true");
    if let Some(total) = enospc.split_whitespace().nth(1) {
        assert_eq!(
            total.parse::<u64>().unwrap(),
            fs_kib,
            "the writer met a full filesystem before maxSize: {enospc}"
        );
    }
    assert_eq!(d.boot_id("as-disk"), boot, "live");
}

#[test]
fn memory_is_added_before_the_guest_runs_out_and_given_back_after_the_window() {
    let d = Daemon::start(&[]);
    d.apply(&doc(
        "as-mem",
        "  cpu: 1\n  memory: 512Mi\n  maxMemory: 2Gi\n  disks:\n  - {name: system, size: 256Mi}\n  autoscaling:\n    memory: {min: 512Mi, max: 1Gi, targetUtilization: 60}\n    intervalSeconds: 5\n    stabilizationSeconds: 20\n    cooldownSeconds: 0\n",
    ));
    let boot = d.boot_id("as-mem");
    let before = d.mem_total_kib("as-mem");
    // Memory in use that the kernel cannot reclaim: a file in a tmpfs (no swap).
    d.sh(
        "as-mem",
        "mkdir -p /mnt/hog && mount -t tmpfs -o size=900m hog /mnt/hog && dd if=/dev/zero of=/mnt/hog/a bs=1M count=300 2>/dev/null",
    );
    let o = d.wait_for("as-mem", "the decision to add memory", LONG, |o| {
        autoscaling(o)["lastChange"]["resource"] == "memory"
    });
    let change = &autoscaling(&o)["lastChange"];
    assert_eq!(change["from"], "512Mi", "{change}");
    assert!(
        change["reason"].as_str().unwrap().contains("used of"),
        "{change}"
    );
    d.wait_for("as-mem", "the memory in the guest", LONG, |_| {
        d.mem_total_kib("as-mem") > before + 100 * 1024
    });
    let grown = d.mem_total_kib("as-mem");
    assert_eq!(
        d.sh("as-mem", "dmesg | grep -c 'Out of memory' || true")
            .trim(),
        "0",
        "no OOM kill"
    );
    // Freed: given back after the down-window, never below the boot size.
    let freed = jiff::Timestamp::now();
    d.sh("as-mem", "rm /mnt/hog/a");
    let o = d.wait_for("as-mem", "memory given back", LONG, |o| {
        autoscaling(o)["lastChange"]["to"] == "512Mi"
    });
    let down = time_of(&autoscaling(&o)["lastChange"]["time"]);
    assert!(
        down.duration_since(freed).as_secs_f64() >= 15.0,
        "given back before the down-window"
    );
    d.wait_for("as-mem", "the shrink in the guest", LONG, |_| {
        d.mem_total_kib("as-mem") < grown
    });
    let after = d.mem_total_kib("as-mem");
    assert!(after < grown, "MemTotal {grown} -> {after} KiB");
    assert_eq!(d.boot_id("as-mem"), boot);
}

#[test]
fn the_stock_guest_gets_vcpus_memory_and_a_grown_root_filesystem_from_its_own_metrics() {
    let img = stock_image();
    let args = img.serve_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = Daemon::start(&args);
    d.apply(&doc(
        "as-deb",
        &format!(
            "  cpu: 1\n  memory: 1Gi\n  maxCpu: 2\n  maxMemory: 2Gi\n  disks:\n  - {{name: system, size: 2Gi, boot: true, source: {{image: {}}}}}\n  autoscaling:\n    cpu: {{min: 1, max: 2, targetUtilization: 60}}\n    memory: {{min: 1Gi, max: 2Gi, targetUtilization: 60}}\n    disks:\n    - {{name: system, maxSize: 3Gi, growAtUsage: 90, stepPercent: 10, minStep: 256Mi}}\n    intervalSeconds: 5\n    stabilizationSeconds: 20\n    cooldownSeconds: 0\n",
            img.disk()
        ),
    ));
    let boot = d.boot_id("as-deb");
    // The root filesystem read as the guest's df sees it, mapped to the system disk through
    // its partition (p1, last on the disk; p15 is the EFI partition).
    let o = d.wait_for("as-deb", "a reading of /", LONG, |o| {
        autoscaling(o)["metrics"]["filesystems"]
            .as_array()
            .is_some_and(|f| {
                f.iter()
                    .any(|f| f["disk"] == "system" && f["mountPath"] == "/")
            })
    });
    assert!(autoscaling(&o)["lastChange"].is_null(), "nothing to do yet");
    let root = fs_bytes(&d, "as-deb", "/");
    let used: u64 = d
        .sh("as-deb", "df -k / | tail -1")
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024;
    // Fill / past 90 %.
    let fill = (root * 92 / 100).saturating_sub(used) / MIB + 1;
    d.exec("as-deb", &["fallocate", "-l", &format!("{fill}M"), "/fill"]);
    load(&d, "as-deb", 2);
    // Memory the kernel cannot reclaim (no swap): 600 MiB in a tmpfs, ~70 % of 1 GiB in use.
    let before = d.mem_total_kib("as-deb");
    d.sh(
        "as-deb",
        "mkdir -p /mnt/hog && mount -t tmpfs -o size=900m hog /mnt/hog && dd if=/dev/zero of=/mnt/hog/a bs=1M count=600 2>/dev/null",
    );
    d.wait_for(
        "as-deb",
        "2 vCPUs, more memory and the grown disk",
        LONG,
        |o| {
            o["status"]["guest"]["cpusOnline"] == 2
                && autoscaling(o)["target"]["disks"]["system"] == "2304Mi"
                && autoscaling(o)["target"]["memory"].is_string()
                && o["status"]["operation"].is_null()
        },
    );
    // The stock guest onlines no hot-added memory by itself: the agent did.
    d.wait_for("as-deb", "the memory in the guest", LONG, |_| {
        d.mem_total_kib("as-deb") > before + 100 * 1024
    });
    d.wait_for("as-deb", "/ grown in the guest", LONG, |_| {
        fs_bytes(&d, "as-deb", "/") > root + 200 * MIB
    });
    assert_eq!(d.online_cpus("as-deb"), 2, "onlined through the agent");
    assert_eq!(d.disk_bytes("as-deb", "system"), Some(2304 * MIB));
    let ev = events(&d, "as-deb");
    assert!(
        ev.iter()
            .any(|l| l.contains("autoscaler: disk/system 2Gi -> 2304Mi")),
        "{ev:#?}"
    );
    assert!(
        ev.iter().any(|l| l.contains("autoscaler: memory 1Gi -> ")),
        "{ev:#?}"
    );
    assert_eq!(
        d.sh("as-deb", "dmesg | grep -c 'Out of memory' || true")
            .trim(),
        "0",
        "no OOM kill"
    );
    // Freed: the memory is given back after the down-window (the hot-added blocks offlined
    // and unplugged), never below the boot size.
    d.sh("as-deb", "rm /mnt/hog/a");
    unload(&d, "as-deb");
    d.wait_for("as-deb", "memory given back", LONG, |o| {
        autoscaling(o)["target"]["memory"] == "1Gi"
    });
    // Back to the boot size in the guest (what the kernel counts may differ by a few pages).
    d.wait_for("as-deb", "the shrink in the guest", LONG, |_| {
        d.mem_total_kib("as-deb").abs_diff(before) < 32 * 1024
    });
    assert_eq!(d.boot_id("as-deb"), boot, "live");
}

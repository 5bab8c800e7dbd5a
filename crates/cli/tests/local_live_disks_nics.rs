//! Live disks and NICs on the local backend, verified in the guest, data kept, failures rolled
//! back. (Issue: live disks and NICs.)

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, doc, fs_bytes, guest_dev};

const MIB: u64 = 1 << 20;

/// QEMU's own view, through HMP (`info network`, `info qtree`…).
fn hmp(d: &Daemon, vm: &str, command: &str) -> String {
    let sock = d.home.join("vms/default").join(vm).join("qmp.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let qmp = wukong_local::qmp::Qmp::connect(&sock, Duration::from_secs(5))
            .await
            .unwrap();
        qmp.hmp(command).await.unwrap()
    })
}

#[test]
fn a_disk_grows_with_its_filesystem_live_after_a_snapshot_and_data_reads_back() {
    let d = Daemon::start(&[]);
    d.apply(&doc("g1", "  cpu: 1\n  memory: 512Mi\n  disks:\n  - {name: system, size: 128Mi}\n  - {name: data, size: 256Mi, snapshotBeforeGrow: true, filesystem: {type: ext4, mountPath: /data}}\n"));
    d.sh(
        "g1",
        "dd if=/dev/urandom of=/data/blob bs=1M count=16 2>/dev/null; sync",
    );
    let sum = d.exec("g1", &["md5sum", "/data/blob"]);
    let boot = d.boot_id("g1");
    let out = d.apply(&doc("g1", "  disks:\n  - {name: system, size: 128Mi}\n  - {name: data, size: 1Gi, snapshotBeforeGrow: true, filesystem: {type: ext4, mountPath: /data}}\n"));
    assert!(
        out.contains("grow disk data") && out.contains("grow partition and filesystem on data"),
        "{out}"
    );
    assert_eq!(d.disk_bytes("g1", "data"), Some(1024 * MIB));
    assert!(
        (fs_bytes(&d, "g1", "/data") / 1024) * 1024 > 900 * MIB,
        "filesystem fills the disk"
    );
    assert_eq!(
        d.exec("g1", &["md5sum", "/data/blob"]),
        sum,
        "data written before reads back the same"
    );
    assert_eq!(d.boot_id("g1"), boot);
    let snaps = std::process::Command::new("qemu-img")
        .args(["snapshot", "-U", "-l"])
        .arg(d.home.join("vms/default/g1/disks/data.qcow2"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&snaps.stdout).contains("wukong-pre-grow-"),
        "{}",
        String::from_utf8_lossy(&snaps.stdout)
    );
}

#[test]
fn a_partitioned_disk_grows_its_last_partition_and_filesystem() {
    let d = Daemon::start(&[]);
    d.apply(&doc("g2", "  cpu: 1\n  memory: 512Mi\n  disks:\n  - {name: system, size: 128Mi}\n  - {name: part, size: 256Mi}\n"));
    let v = guest_dev(&d, "g2", "part");
    d.sh("g2", &format!("printf 'label: gpt\\n,,L\\n' | sfdisk -q /dev/{v} && partx -a /dev/{v} 2>/dev/null; /sbin/mke2fs -q -t ext4 /dev/{v}1 && mkdir -p /part && mount /dev/{v}1 /part && dd if=/dev/urandom of=/part/blob bs=1M count=8 2>/dev/null && sync"));
    let sum = d.exec("g2", &["md5sum", "/part/blob"]);
    let boot = d.boot_id("g2");
    let out = d.apply(&doc(
        "g2",
        "  disks:\n  - {name: system, size: 128Mi}\n  - {name: part, size: 768Mi}\n",
    ));
    assert!(
        out.contains("grow partition and filesystem on part"),
        "{out}"
    );
    let part_bytes: u64 = d
        .exec("g2", &["cat", &format!("/sys/block/{v}/{v}1/size")])
        .trim()
        .parse::<u64>()
        .unwrap()
        * 512;
    assert!(part_bytes > 760 * MIB, "partition grown: {part_bytes}");
    assert!((fs_bytes(&d, "g2", "/part") / 1024) * 1024 > 700 * MIB);
    assert_eq!(d.exec("g2", &["md5sum", "/part/blob"]), sum);
    let verify = d.exec("g2", &["sfdisk", "--verify", &format!("/dev/{v}")]);
    assert!(verify.contains("No errors detected"), "{verify}");
    assert_eq!(d.boot_id("g2"), boot);
}

#[test]
fn attach_and_detach_live_keep_the_image_and_its_data() {
    let d = Daemon::start(&[]);
    let base = "  cpu: 1\n  memory: 512Mi\n  disks:\n  - {name: system, size: 128Mi}\n";
    d.apply(&doc("a1", base));
    let boot = d.boot_id("a1");
    let with = format!(
        "{base}  - {{name: data, size: 128Mi, filesystem: {{type: ext4, mountPath: /data}}}}\n"
    );
    let out = d.apply(&doc("a1", &with));
    assert!(
        out.contains("attach disk data") && out.contains("format data as ext4 if blank"),
        "{out}"
    );
    assert_eq!(d.disk_bytes("a1", "data"), Some(128 * MIB));
    d.sh("a1", "echo kept > /data/f; sync");
    let out = d.apply(&doc("a1", base));
    assert!(out.contains("detach disk data"), "{out}");
    assert_eq!(d.disk_bytes("a1", "data"), None);
    assert!(
        !hmp(&d, "a1", "info block").contains("node-data"),
        "no block node left"
    );
    assert!(
        d.home.join("vms/default/a1/disks/data.qcow2").exists(),
        "image kept"
    );
    // Attached again, the same image comes back with its data (it is not formatted again).
    d.apply(&doc("a1", &with));
    assert_eq!(d.exec("a1", &["cat", "/data/f"]), "kept\n");
    assert_eq!(d.boot_id("a1"), boot);
}

#[test]
fn a_busy_disk_is_not_detached() {
    let d = Daemon::start(&[]);
    let base = "  cpu: 1\n  memory: 512Mi\n  disks:\n  - {name: system, size: 128Mi}\n";
    d.apply(&doc(
        "b1",
        &format!(
            "{base}  - {{name: data, size: 128Mi, filesystem: {{type: ext4, mountPath: /data}}}}\n"
        ),
    ));
    d.sh(
        "b1",
        "(cd /data && exec sleep 600) </dev/null >/dev/null 2>&1 &",
    );
    let out = d.wk_in(&["apply", "-f", "-"], &doc("b1", base));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("busy"), "{text}");
    assert_eq!(
        d.disk_bytes("b1", "data"),
        Some(128 * MIB),
        "still attached"
    );
    assert!(
        d.exec("b1", &["df", "-k", "/data"]).contains("/data"),
        "still mounted"
    );
    // Forced (an annotation; applying again retries at once): the filesystem is detached
    // lazily and the disk goes.
    let forced = doc("b1", base).replace(
        "metadata: {name: b1}",
        "metadata: {name: b1, annotations: {vm.novasphere.dev/force-detach: \"true\"}}",
    );
    d.apply(&forced);
    assert_eq!(d.disk_bytes("b1", "data"), None, "detached when forced");
}

#[test]
fn an_attach_the_guest_never_sees_is_rolled_back() {
    let d = Daemon::start(&["--verify-timeout", "3s"]);
    let base = "  cpu: 1\n  memory: 512Mi\n  disks:\n  - {name: system, size: 128Mi}\n";
    d.apply(&doc("r1", base));
    // New virtio devices stay unbound: the guest never gets a block device.
    d.sh("r1", "echo 0 > /sys/bus/virtio/drivers_autoprobe");
    let out = d.wk_in(
        &["apply", "-f", "-"],
        &doc("r1", &format!("{base}  - {{name: ghost, size: 64Mi}}\n")),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("does not see disk ghost") && text.contains("undone"),
        "{text}"
    );
    assert!(
        !hmp(&d, "r1", "info qtree").contains("disk-ghost"),
        "the device was unplugged again"
    );
    let o = d.get("r1");
    assert_eq!(o["status"]["lastOperation"]["phase"], "Failed");
    assert_eq!(d.condition("r1", "Degraded").unwrap().0, "True");
}

#[test]
fn a_nic_added_then_removed_leaves_no_device_behind() {
    let d = Daemon::start(&[]);
    let base = "  cpu: 1\n  memory: 512Mi\n  disks:\n  - {name: system, size: 128Mi}\n  networks:\n  - {name: default, user: {}}\n";
    d.apply(&doc("n1", base));
    let boot = d.boot_id("n1");
    let macs = |d: &Daemon| {
        d.sh(
            "n1",
            "for n in /sys/class/net/*; do [ ${n##*/} = lo ] || cat $n/address; done",
        )
    };
    let out = d.apply(&doc(
        "n1",
        &format!("{base}  - {{name: extra, user: {{}}, mac: '52:54:00:12:34:99'}}\n"),
    ));
    assert!(out.contains("add NIC extra"), "{out}");
    assert!(macs(&d).contains("52:54:00:12:34:99"));
    assert!(hmp(&d, "n1", "info network").contains("net-extra"));
    let out = d.apply(&doc("n1", base));
    assert!(out.contains("remove NIC extra"), "{out}");
    assert!(!macs(&d).contains("52:54:00:12:34:99"));
    let net = hmp(&d, "n1", "info network");
    assert!(
        !net.contains("net-extra") && !net.contains("nic-extra"),
        "{net}"
    );
    assert!(!hmp(&d, "n1", "info qtree").contains("nic-extra"));
    // networks: [] removes every NIC.
    d.apply(&doc("n1", "  networks: []\n"));
    assert_eq!(macs(&d).trim(), "");
    assert_eq!(d.boot_id("n1"), boot);
}

#[test]
fn a_stopped_guest_agent_fails_the_operation_in_time_and_rolls_back() {
    let d = Daemon::start(&["--verify-timeout", "3s", "--agent-timeout", "2s"]);
    let base = "  cpu: 1\n  memory: 512Mi\n  disks:\n  - {name: system, size: 128Mi}\n";
    d.apply(&doc("s1", base));
    // Freeze the agent once this command has returned, then wait until it no longer answers.
    // It thaws when the host takes the NIC's link down (the guest sees the carrier go): the
    // host decides when, no timer does.
    let nic = d
        .sh("s1", "ls /sys/class/net | grep -v '^lo$' | head -n 1")
        .trim()
        .to_string();
    d.sh(
        "s1",
        &format!(
            "(sleep 0.5; kill -STOP $(pidof qemu-ga); while [ \"$(cat /sys/class/net/{nic}/carrier)\" = 1 ]; do usleep 100000; done; kill -CONT $(pidof qemu-ga)) </dev/null >/dev/null 2>&1 &"
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.wk(&["exec", "s1", "--", "true"]).status.success() {
        assert!(Instant::now() < deadline, "the agent kept answering");
    }
    let t0 = Instant::now();
    let out = d.wk_in(
        &["apply", "-f", "-"],
        &doc("s1", &format!("{base}  - {{name: late, size: 64Mi}}\n")),
    );
    let took = t0.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("guest agent"), "{text}");
    assert!(
        took < Duration::from_secs(60),
        "failed within its timeouts, took {took:?}"
    );
    assert!(
        !hmp(&d, "s1", "info qtree").contains("disk-late"),
        "the attach was undone"
    );
    d.wait_for("s1", "Ready false", Duration::from_secs(30), |o| {
        o["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "False")
        })
    });
    // The agent comes back: the same apply now works, and nothing was lost on the way.
    hmp(&d, "s1", "set_link nic-default off");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d.wk(&["exec", "s1", "--", "true"]).status.success() {
        assert!(Instant::now() < deadline, "the agent did not come back");
    }
    hmp(&d, "s1", "set_link nic-default on");
    d.apply(&doc(
        "s1",
        &format!("{base}  - {{name: late, size: 64Mi}}\n"),
    ));
    assert_eq!(d.disk_bytes("s1", "late"), Some(64 * MIB));
    assert!(
        hmp(&d, "s1", "info qtree").matches("disk-late").count() == 1,
        "one device for the disk"
    );
}

#[test]
fn rollback_returns_to_the_last_converged_spec_and_disks_stay_grown() {
    let d = Daemon::start(&["--verify-timeout", "3s"]);
    let base = "  cpu: 1\n  memory: 512Mi\n  disks:\n  - {name: system, size: 128Mi}\n  - {name: data, size: 128Mi, filesystem: {type: ext4, mountPath: /data}}\n";
    d.apply(&doc("rb", base));
    d.sh("rb", "echo 0 > /sys/bus/virtio/drivers_autoprobe");
    // Grows data (live, works), then attaches a disk the guest never sees (fails).
    let out = d.wk_in(&["apply", "-f", "-"], &doc("rb", "  cpu: 1\n  memory: 512Mi\n  disks:\n  - {name: system, size: 128Mi}\n  - {name: data, size: 256Mi, filesystem: {type: ext4, mountPath: /data}}\n  - {name: ghost, size: 64Mi}\n"));
    assert!(!out.status.success());
    assert_eq!(d.disk_bytes("rb", "data"), Some(256 * MIB));
    let out = d.wk(&["rollback", "rb"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("disk data stays at 256Mi"), "{text}");
    let o = d.get("rb");
    let disks = o["spec"]["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2, "the failed disk is gone from the spec");
    assert_eq!(disks[1]["size"], "256Mi");
    assert_eq!(d.disk_bytes("rb", "data"), Some(256 * MIB));
}

#[test]
fn a_failing_filesystem_grow_holds_back_nothing_else() {
    let d = Daemon::start(&[]);
    let spec = |cpu: u32, memory: &str, data: &str, nic: bool| {
        let mut s = format!(
            "  cpu: {cpu}\n  memory: {memory}\n  maxCpu: 4\n  maxMemory: 1Gi\n  disks:\n  - {{name: system, size: 128Mi}}\n  - {{name: data, size: {data}, filesystem: {{type: ext4, mountPath: /data}}}}\n  networks:\n  - {{name: default, user: {{}}}}\n"
        );
        if nic {
            s += "  - {name: extra, user: {}, mac: '52:54:00:12:34:55'}\n";
        }
        doc("f1", &s)
    };
    d.apply(&spec(1, "512Mi", "256Mi", false));
    let boot = d.boot_id("f1");
    // The guest's resize tool now exits non-zero.
    d.sh(
        "f1",
        "printf '#!/bin/sh\\nexit 1\\n' > /tmp/fail && chmod +x /tmp/fail && mount --bind /tmp/fail /sbin/resize2fs",
    );
    let fs_before = fs_bytes(&d, "f1", "/data");
    let out = d.wk_in(&["apply", "-f", "-"], &spec(2, "512Mi", "384Mi", true));
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    // The vCPU, the block device and the NIC changed; only the filesystem did not.
    assert_eq!(d.online_cpus("f1"), 2, "{text}");
    assert_eq!(d.disk_bytes("f1", "data"), Some(384 * MIB));
    assert!(
        d.sh("f1", "cat /sys/class/net/*/address")
            .contains("52:54:00:12:34:55")
    );
    assert_eq!(fs_bytes(&d, "f1", "/data"), fs_before);
    let (degraded, why) = d.condition("f1", "Degraded").unwrap();
    assert_eq!(degraded, "True");
    assert!(why.contains("filesystem on data"), "{why}");
    // An unrelated change is not held behind the failing step.
    let kib = d.mem_total_kib("f1");
    let out = d.wk_in(&["apply", "-f", "-"], &spec(2, "1Gi", "384Mi", true));
    assert!(!out.status.success(), "the filesystem still cannot grow");
    assert!(
        d.mem_total_kib("f1") >= kib + 384 * 1024,
        "memory grew anyway"
    );
    // Once the tool works again, the filesystem catches up.
    d.exec("f1", &["umount", "/sbin/resize2fs"]);
    d.apply(&spec(2, "1Gi", "384Mi", true));
    assert!(fs_bytes(&d, "f1", "/data") > fs_before + 100 * MIB);
    assert_eq!(d.boot_id("f1"), boot);
}

#[test]
fn a_filesystem_on_a_partition_that_is_not_last_is_left_as_it_is_and_the_plan_says_why() {
    let d = Daemon::start(&[]);
    let base = "  cpu: 1\n  memory: 512Mi\n  disks:\n  - {name: system, size: 128Mi}\n";
    d.apply(&doc(
        "g3",
        &format!("{base}  - {{name: two, size: 256Mi}}\n"),
    ));
    let v = guest_dev(&d, "g3", "two");
    // p1 holds the mounted filesystem; p2 (unmounted, like a swap partition) lies after it.
    d.sh("g3", &format!("printf 'label: gpt\\nsize=100MiB\\n,,L\\n' | sfdisk -q /dev/{v} && partx -a /dev/{v} 2>/dev/null; /sbin/mke2fs -q -t ext4 /dev/{v}1 && mkdir -p /two && mount /dev/{v}1 /two"));
    let table = d.exec("g3", &["sfdisk", "-d", &format!("/dev/{v}")]);
    let fs = fs_bytes(&d, "g3", "/two");
    let out = d.apply(&doc(
        "g3",
        &format!("{base}  - {{name: two, size: 512Mi}}\n"),
    ));
    assert!(out.contains("grow disk two"), "{out}");
    assert!(
        out.contains("left as it is") && out.contains(&format!("{v}2 lies after it")),
        "the plan says why: {out}"
    );
    assert!(!out.contains("grow partition and filesystem"), "{out}");
    assert_eq!(d.disk_bytes("g3", "two"), Some(512 * MIB), "the disk grew");
    let after = d.exec("g3", &["sfdisk", "-d", &format!("/dev/{v}")]);
    let partitions = |t: &str| {
        t.lines()
            .filter(|l| l.starts_with("/dev/"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        partitions(&after),
        partitions(&table),
        "no partition changed"
    );
    assert_eq!(
        fs_bytes(&d, "g3", "/two"),
        fs,
        "the filesystem was left as it is"
    );
}

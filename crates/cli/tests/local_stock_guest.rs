//! The whole live story on a stock Debian 12 guest that no one here wrote the behaviour of:
//! systemd, udev and qemu-guest-agent from Debian's packages, no rule that onlines hot-added
//! CPUs or memory, the disk laid out like Debian's cloud images (p14 BIOS boot and p15 EFI at
//! the front, p1 root last). One boot walks every step (a boot costs ~30 s under TCG).

mod common;

use common::{Daemon, StockImage, doc, fs_bytes, guest_dev, stock_image};

const MIB: u64 = 1 << 20;

/// The spec with the system disk from the stock image and `extra` disks after it.
fn spec(img: &StockImage, cpu: u32, memory: &str, system: &str, extra: &str) -> String {
    doc(
        "deb",
        &format!(
            "  cpu: {cpu}\n  memory: {memory}\n  maxCpu: 4\n  maxMemory: 4Gi\n  disks:\n  - {{name: system, size: {system}, boot: true, source: {{image: {}}}}}\n{extra}",
            img.disk()
        ),
    )
}

/// `start size` of each partition of `dev`, by partition device name.
fn partitions(d: &Daemon, dev: &str) -> Vec<(String, String)> {
    d.exec("deb", &["sfdisk", "-d", &format!("/dev/{dev}")])
        .lines()
        .filter(|l| l.starts_with("/dev/"))
        .map(|l| {
            let (name, rest) = l.split_once(" : ").unwrap();
            let field = |k: &str| {
                rest.split(',')
                    .map(str::trim)
                    .find_map(|f| f.strip_prefix(k))
                    .unwrap()
                    .trim()
                    .to_string()
            };
            (
                name.trim().to_string(),
                format!("{} {}", field("start="), field("size=")),
            )
        })
        .collect()
}

/// The note of the last operation's first step in the status.
fn last_step_note(d: &Daemon) -> String {
    d.get("deb")["status"]["lastOperation"]["steps"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn mounted(d: &Daemon, path: &str) -> Option<String> {
    d.exec("deb", &["cat", "/proc/mounts"])
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(path))
        .map(String::from)
}

#[test]
fn the_live_story_on_a_stock_debian_guest() {
    let img = stock_image();
    let args = img.serve_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = Daemon::start(&args);
    d.apply(&spec(&img, 1, "1Gi", "2Gi", ""));
    assert_eq!(
        d.exec(
            "deb",
            &["cat", "/sys/devices/system/memory/auto_online_blocks"]
        )
        .trim(),
        "offline",
        "the stock guest onlines no memory by itself"
    );
    let boot = d.boot_id("deb");
    d.sh(
        "deb",
        "dd if=/dev/urandom of=/var/canary bs=1M count=20 status=none && sync",
    );
    let canary = d.exec("deb", &["sha256sum", "/var/canary"]);

    // vCPUs 1 → 2 → 4 → 1: the guest leaves hot-added vCPUs offline, Wukong onlines them.
    for cpu in [2, 4, 1] {
        d.apply(&spec(&img, cpu, "1Gi", "2Gi", ""));
        assert_eq!(d.online_cpus("deb"), cpu);
        if cpu == 2 {
            assert_eq!(
                last_step_note(&d),
                "onlined through the agent",
                "the status says which way it went"
            );
        }
    }

    // Memory 1Gi → 2Gi → 1Gi: the guest's blocks would stay offline without Wukong.
    let kib = d.mem_total_kib("deb");
    d.apply(&spec(&img, 1, "2Gi", "2Gi", ""));
    assert!(
        last_step_note(&d).contains("onlined through the agent"),
        "{}",
        last_step_note(&d)
    );
    let grown = d.mem_total_kib("deb");
    assert!(
        grown >= kib + 1024 * 1024 - 128 * 1024,
        "MemTotal {kib} KiB -> {grown} KiB"
    );
    d.apply(&spec(&img, 1, "1Gi", "2Gi", ""));
    let shrunk = d.mem_total_kib("deb");
    assert!(
        shrunk.abs_diff(kib) <= 128 * 1024,
        "MemTotal {kib} KiB -> {shrunk} KiB"
    );

    // The root disk 2Gi → 3Gi: p1 (last by start, first by number) and / grow; p14 and p15
    // keep their start and size.
    let sys = guest_dev(&d, "deb", "system");
    let before = partitions(&d, &sys);
    let root_before = fs_bytes(&d, "deb", "/");
    d.apply(&spec(&img, 1, "1Gi", "3Gi", ""));
    let after = partitions(&d, &sys);
    let root_after = fs_bytes(&d, "deb", "/");
    assert!(
        root_after >= root_before + 900 * MIB,
        "/ {root_before} -> {root_after}"
    );
    for (name, layout) in &before {
        let now = &after.iter().find(|(n, _)| n == name).unwrap().1;
        if name.ends_with("14") || name.ends_with("15") {
            assert_eq!(layout, now, "{name} must not change");
        } else {
            assert_eq!(
                layout.split(' ').next(),
                now.split(' ').next(),
                "{name} keeps its start"
            );
            assert_ne!(layout, now, "{name} grew");
        }
    }

    // A data disk attached as xfs, then detached.
    let xfs = "  - {name: data, size: 320Mi, filesystem: {type: xfs, mountPath: /data}}\n";
    d.apply(&spec(&img, 1, "1Gi", "3Gi", xfs));
    let m = mounted(&d, "/data").expect("/data mounted");
    assert!(m.contains(" xfs "), "{m}");
    d.apply(&spec(&img, 1, "1Gi", "3Gi", ""));
    assert_eq!(mounted(&d, "/data"), None);

    // An LVM data disk made in the guest (PV on the disk, one LV with xfs), grown by Wukong
    // through pvresize + lvextend + xfs_growfs.
    d.apply(&spec(
        &img,
        1,
        "1Gi",
        "3Gi",
        "  - {name: lvm, size: 320Mi}\n",
    ));
    let lvm = format!("/dev/{}", guest_dev(&d, "deb", "lvm"));
    for argv in [
        vec!["pvcreate", "-y", lvm.as_str()],
        vec!["vgcreate", "vgdata", lvm.as_str()],
        vec!["lvcreate", "-y", "-l", "100%FREE", "-n", "lv", "vgdata"],
        vec!["mkfs.xfs", "-q", "/dev/vgdata/lv"],
        vec!["mkdir", "-p", "/srv/lvm"],
        vec!["mount", "/dev/vgdata/lv", "/srv/lvm"],
    ] {
        d.exec("deb", &argv);
    }
    let lv_before = fs_bytes(&d, "deb", "/srv/lvm");
    d.apply(&spec(
        &img,
        1,
        "1Gi",
        "3Gi",
        "  - {name: lvm, size: 640Mi}\n",
    ));
    let lv_after = fs_bytes(&d, "deb", "/srv/lvm");
    assert!(
        lv_after >= lv_before + 280 * MIB,
        "xfs on the LV {lv_before} -> {lv_after}"
    );

    // A NIC added and removed.
    let nets = "  networks:\n  - {name: default, user: {}}\n";
    let lvm_disk = "  - {name: lvm, size: 640Mi}\n";
    d.apply(&spec(&img, 1, "1Gi", "3Gi", &format!("{lvm_disk}{nets}")));
    d.apply(&spec(
        &img,
        1,
        "1Gi",
        "3Gi",
        &format!("{lvm_disk}{nets}  - {{name: extra, user: {{}}, mac: '52:54:00:12:34:77'}}\n"),
    ));
    let macs = || d.sh("deb", "cat /sys/class/net/*/address");
    assert!(macs().contains("52:54:00:12:34:77"));
    d.apply(&spec(&img, 1, "1Gi", "3Gi", &format!("{lvm_disk}{nets}")));
    assert!(!macs().contains("52:54:00:12:34:77"));

    assert_eq!(d.exec("deb", &["sha256sum", "/var/canary"]), canary);
    assert_eq!(d.boot_id("deb"), boot, "everything was live");
}

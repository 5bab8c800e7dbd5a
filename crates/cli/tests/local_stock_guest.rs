//! The whole live story on a stock Debian 12 guest that no one here wrote the behaviour of:
//! systemd, udev and qemu-guest-agent from Debian's packages, no rule that onlines hot-added
//! CPUs or memory, the disk laid out like Debian's cloud images (p14 BIOS boot and p15 EFI at
//! the front, p1 root last). One boot walks every step (a boot costs ~30 s under TCG).

mod common;

use std::time::{Duration, Instant};

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

    // Two logical volumes on one disk, both mounted: which one to grow is the user's call.
    // The disk grows, neither volume changes, and the status names both.
    let lvm_disk = "  - {name: lvm, size: 640Mi}\n";
    d.apply(&spec(
        &img,
        1,
        "1Gi",
        "3Gi",
        &format!("{lvm_disk}  - {{name: two, size: 320Mi}}\n"),
    ));
    let two = format!("/dev/{}", guest_dev(&d, "deb", "two"));
    for argv in [
        vec!["pvcreate", "-y", two.as_str()],
        vec!["vgcreate", "vgtwo", two.as_str()],
        vec!["lvcreate", "-y", "-L", "100M", "-n", "a", "vgtwo"],
        vec!["lvcreate", "-y", "-L", "100M", "-n", "b", "vgtwo"],
        vec!["mkfs.ext4", "-q", "/dev/vgtwo/a"],
        vec!["mkfs.ext4", "-q", "/dev/vgtwo/b"],
        vec!["mkdir", "-p", "/srv/a", "/srv/b"],
        vec!["mount", "/dev/vgtwo/a", "/srv/a"],
        vec!["mount", "/dev/vgtwo/b", "/srv/b"],
    ] {
        d.exec("deb", &argv);
    }
    let lvs = || {
        d.exec(
            "deb",
            &[
                "lvs",
                "--noheadings",
                "--units",
                "b",
                "-o",
                "lv_name,lv_size",
                "vgtwo",
            ],
        )
    };
    let (lvs_before, a_before, b_before) = (
        lvs(),
        fs_bytes(&d, "deb", "/srv/a"),
        fs_bytes(&d, "deb", "/srv/b"),
    );
    d.apply(&spec(
        &img,
        1,
        "1Gi",
        "3Gi",
        &format!("{lvm_disk}  - {{name: two, size: 480Mi}}\n"),
    ));
    assert_eq!(
        d.exec("deb", &["blockdev", "--getsize64", two.as_str()])
            .trim(),
        (480 * MIB).to_string(),
        "the disk grew"
    );
    assert_eq!(lvs(), lvs_before, "no volume changed");
    assert_eq!(fs_bytes(&d, "deb", "/srv/a"), a_before);
    assert_eq!(fs_bytes(&d, "deb", "/srv/b"), b_before);
    let o = d.get("deb");
    let not_grown = o["status"]["guest"]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "two")
        .and_then(|x| x["notGrown"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        not_grown.contains("vgtwo-a") && not_grown.contains("vgtwo-b"),
        "{}",
        o["status"]
    );
    let (state, message) = d.condition("deb", "FilesystemsGrowable").unwrap();
    assert_eq!(state, "False", "a warning: {message}");
    assert!(message.contains("disk two"), "{message}");
    // Given back by hand before it is detached.
    d.exec("deb", &["umount", "/srv/a", "/srv/b"]);
    d.exec("deb", &["vgchange", "-an", "vgtwo"]);

    // A NIC added and removed.
    let nets = "  networks:\n  - {name: default, user: {}}\n";
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

    // Last, as it ends this guest's agent: the agent falls silent. An attach with a
    // filesystem fails within its timeouts, is undone, and nothing is formatted.
    d.sh(
        "deb",
        "(sleep 0.5; kill -STOP $(pidof qemu-ga)) </dev/null >/dev/null 2>&1 &",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.wk(&["exec", "deb", "--", "true"]).status.success() {
        assert!(Instant::now() < deadline, "the agent kept answering");
    }
    let out = d.wk_in(
        &["apply", "-f", "-"],
        &spec(
            &img,
            1,
            "1Gi",
            "3Gi",
            &format!("{lvm_disk}  - {{name: late, size: 320Mi, filesystem: {{type: xfs, mountPath: /late}}}}\n{nets}"),
        ),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    // Ended by the verify timeout (no duration asserted: a loaded machine is slow).
    assert!(
        text.contains("guest agent") && text.contains("not verified within"),
        "{text}"
    );
    let image = d.home.join("vms/default/deb/disks/late.qcow2");
    assert!(image.exists(), "the attach was tried: {text}");
    let raw = d.home.join("late.raw");
    let convert = std::process::Command::new("qemu-img")
        .args(["convert", "-U", "-O", "raw"])
        .arg(&image)
        .arg(&raw)
        .status()
        .unwrap();
    assert!(convert.success(), "{}", image.display());
    let head = std::fs::read(&raw).unwrap();
    assert!(
        head.iter().take(1 << 20).all(|b| *b == 0),
        "the disk was never written: nothing was formatted"
    );
}

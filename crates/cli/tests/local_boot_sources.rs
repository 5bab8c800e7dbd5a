//! Per-VM boot settings and cloud-init on the stock Debian guest (its image carries
//! cloud-init and a standalone GRUB at the EFI removable-media path, nothing else of ours):
//! one daemon runs a VM that boots its image by UEFI alone and one that boots a kernel from
//! the host; cloud-init configures each from its NoCloud seed; the root filesystem grows live;
//! a cloud-init change waits for the next boot and a boot change for a restart, which then
//! boots the same image by BIOS with the new cloud-init data under the same instance-id.

mod common;

use std::time::Duration;

use common::{Daemon, StockImage, doc, fs_bytes, stock_image};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheTestOnlyWukong0000000000000 test@wukong";
const BOOT: Duration = Duration::from_secs(300);

fn user_data(hostname: &str) -> String {
    format!(
        "#cloud-config\nhostname: {hostname}\nssh_genkeytypes: [ed25519]\nssh_authorized_keys:\n  - {KEY}\nwrite_files:\n  - path: /etc/wukong-test\n    content: written by cloud-init for {hostname}\n"
    )
}

/// A Wukong of the stock image with `boot` (YAML flow or empty) and `user_data`.
fn spec(name: &str, img: &StockImage, boot: &str, user_data: &str) -> String {
    let indented: String = user_data.lines().map(|l| format!("      {l}\n")).collect();
    doc(
        name,
        &format!(
            "  cpu: 1\n  memory: 1Gi\n  maxCpu: 2\n  maxMemory: 2Gi\n{boot}  disks:\n  - {{name: system, size: 3Gi, boot: true, source: {{image: {}}}}}\n  cloudInit:\n    userData: |\n{indented}",
            img.disk()
        ),
    )
}

/// Waits until cloud-init has finished in the guest (it says so itself), and returns its
/// verdict.
fn cloud_init_done(d: &Daemon, vm: &str) -> String {
    let out = d.wk(&[
        "exec",
        vm,
        "--timeout",
        "600",
        "--",
        "cloud-init",
        "status",
        "--wait",
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn two_vms_boot_their_own_way_and_cloud_init_configures_each() {
    let img = stock_image();
    // The daemon's own default (the busybox guest) is what neither VM uses.
    let d = Daemon::start(&[]);
    let kernel = img.serve_args();
    let uefi = spec(
        "deb-uefi",
        &img,
        "  boot: {firmware: uefi}\n",
        &user_data("uefi-one"),
    );
    let direct = spec(
        "deb-kernel",
        &img,
        &format!(
            "  boot:\n    kernel: {{path: {}, initrd: {}, cmdline: '{}'}}\n",
            kernel[1], kernel[3], kernel[5]
        ),
        "#cloud-config\nssh_genkeytypes: [ed25519]\n",
    );
    d.apply(&uefi);
    d.apply(&direct);
    for vm in ["deb-uefi", "deb-kernel"] {
        d.wait_for(vm, "the VM to run", BOOT, |o| {
            o["status"]["phase"] == "Running"
        });
        let status = cloud_init_done(&d, vm);
        assert!(status.contains("done"), "{vm}: cloud-init {status}");
    }

    // The UEFI VM booted by its image's loader alone; the other took the host's kernel.
    assert!(
        d.wk(&["exec", "deb-uefi", "--", "test", "-d", "/sys/firmware/efi"])
            .status
            .success(),
        "booted by UEFI"
    );
    assert!(
        !d.wk(&[
            "exec",
            "deb-kernel",
            "--",
            "test",
            "-d",
            "/sys/firmware/efi"
        ])
        .status
        .success(),
        "booted without firmware"
    );
    // cloud-init: the file, the hostname and the key of the user-data; the hostname of the
    // meta-data (the VM's name) where the user-data names none; the instance-id is the uid.
    assert_eq!(
        d.exec("deb-uefi", &["cat", "/etc/wukong-test"]).trim(),
        "written by cloud-init for uefi-one"
    );
    assert_eq!(d.exec("deb-uefi", &["hostname"]).trim(), "uefi-one");
    assert_eq!(d.exec("deb-kernel", &["hostname"]).trim(), "deb-kernel");
    let keys = d.exec("deb-uefi", &["cat", "/home/debian/.ssh/authorized_keys"]);
    assert!(keys.contains(KEY), "{keys}");
    let uid = d.get("deb-uefi")["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        d.exec("deb-uefi", &["cat", "/var/lib/cloud/data/instance-id"])
            .trim(),
        uid
    );
    // The seed is no disk of the user's: not in the status, not a virtio disk.
    let disks = d.get("deb-uefi")["status"]["guest"]["disks"].clone();
    assert_eq!(disks.as_array().map(Vec::len), Some(1), "{disks}");

    // The root filesystem (cloud-image layout, p1 last) grows live under UEFI.
    let boot_id = d.boot_id("deb-uefi");
    let before = fs_bytes(&d, "deb-uefi", "/");
    d.apply(
        &spec(
            "deb-uefi",
            &img,
            "  boot: {firmware: uefi}\n",
            &user_data("uefi-one"),
        )
        .replace("size: 3Gi", "size: 4Gi"),
    );
    let after = fs_bytes(&d, "deb-uefi", "/");
    assert!(
        after >= before + (900 << 20),
        "/ grew by {} bytes",
        after - before
    );
    assert_eq!(d.boot_id("deb-uefi"), boot_id, "live, no restart");

    // New cloud-init data is written for the next boot; the running guest is left alone.
    let out = d.apply(
        &spec(
            "deb-uefi",
            &img,
            "  boot: {firmware: uefi}\n",
            &user_data("uefi-two"),
        )
        .replace("size: 3Gi", "size: 4Gi"),
    );
    assert!(out.contains("cloud-init"), "{out}");
    let o = d.get("deb-uefi");
    let steps = o["status"]["lastOperation"]["steps"].to_string();
    assert!(steps.contains("next boot"), "{steps}");
    assert_eq!(
        d.boot_id("deb-uefi"),
        boot_id,
        "no restart for cloud-init data"
    );
    assert_eq!(d.exec("deb-uefi", &["hostname"]).trim(), "uefi-one");

    // A boot change waits for a restart the policy (Never) does not allow.
    let out = d.wk_in(
        &["apply", "-f", "-"],
        &spec(
            "deb-uefi",
            &img,
            "  boot: {firmware: bios}\n",
            &user_data("uefi-two"),
        )
        .replace("size: 3Gi", "size: 4Gi"),
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let o = d.wait_for(
        "deb-uefi",
        "the restart to be pending",
        Duration::from_secs(60),
        |o| o["status"]["restartPending"] == true,
    );
    assert!(
        o["status"]["pendingChanges"].to_string().contains("boot"),
        "{text}\n{}",
        o["status"]
    );
    assert_eq!(d.boot_id("deb-uefi"), boot_id);

    // The restart applies it: the same image boots by BIOS now (GRUB in the MBR, its core in
    // the BIOS boot partition), and cloud-init takes the new data under the same instance-id,
    // so the VM is the same machine to it (its host key kept).
    let host_key = d.exec("deb-uefi", &["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]);
    assert!(d.wk(&["restart", "deb-uefi"]).status.success());
    d.wait_for("deb-uefi", "the boot change applied", BOOT, |o| {
        o["status"]["restartPending"] == false && o["status"]["phase"] == "Running"
    });
    assert_ne!(d.boot_id("deb-uefi"), boot_id, "restarted");
    let status = cloud_init_done(&d, "deb-uefi");
    assert!(
        status.contains("done"),
        "after the restart: cloud-init {status}"
    );
    assert!(
        !d.wk(&["exec", "deb-uefi", "--", "test", "-d", "/sys/firmware/efi"])
            .status
            .success(),
        "booted by BIOS"
    );
    assert_eq!(d.exec("deb-uefi", &["hostname"]).trim(), "uefi-two");
    assert_eq!(
        d.exec("deb-uefi", &["cat", "/var/lib/cloud/data/instance-id"])
            .trim(),
        uid
    );
    assert_eq!(
        d.exec("deb-uefi", &["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]),
        host_key
    );
    assert!(
        fs_bytes(&d, "deb-uefi", "/") >= after,
        "the grown / is kept"
    );
}

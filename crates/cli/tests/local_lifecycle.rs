//! Local backend, real QEMU and a real guest: boot, inspect in the guest, cold changes by
//! restart, daemon restart, bad input. (Issue: local backend.)

mod common;

use std::time::Duration;

use common::{Daemon, doc};

const GIB: u64 = 1 << 30;

#[test]
fn boots_from_a_spec_and_the_guest_has_what_it_says() {
    let d = Daemon::start(&[]);
    d.apply(&doc("vm1", "  cpu: 2\n  memory: 512Mi\n  maxCpu: 4\n  disks:\n  - {name: system, size: 1Gi, filesystem: {type: ext4, mountPath: /mnt/system}}\n  - {name: scratch, size: 256Mi}\n"));
    let o = d.get("vm1");
    assert_eq!(o["status"]["phase"], "Running");
    assert_eq!(d.condition("vm1", "Ready").unwrap().0, "True");
    assert_eq!(d.online_cpus("vm1"), 2);
    let mem = d.mem_total_kib("vm1");
    assert!(
        (400_000..524_288).contains(&mem),
        "MemTotal {mem} KiB for 512Mi"
    );
    assert_eq!(d.disk_bytes("vm1", "system"), Some(GIB));
    assert_eq!(d.disk_bytes("vm1", "scratch"), Some(256 << 20));
    let df = d.exec("vm1", &["df", "-k", "/mnt/system"]);
    assert!(df.contains("/dev/vda"), "{df}");
    // The format and the mount are steps of the operation that booted it, planned once the
    // guest ran (not hidden in the boot).
    let steps: Vec<String> = o["status"]["lastOperation"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{} {}", s["description"], s["state"]))
        .collect();
    assert!(
        steps
            .iter()
            .any(|s| s.contains("start") && s.contains("Done"))
            && steps
                .iter()
                .any(|s| s.contains("format system as ext4 if blank") && s.contains("Done")),
        "{steps:?}"
    );
    // Pinned at creation: maxMemory 4x.
    assert_eq!(o["status"]["maxMemory"], "2Gi");
    assert_eq!(o["status"]["bootDisk"], "system");
    // The serial console is kept.
    let logs = d.wk(&["logs", "vm1", "--tail", "50"]);
    assert!(String::from_utf8_lossy(&logs.stdout).contains("wukong-guest: up"));
    // Files are private.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(d.home.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("api.sock"), 0o600);
    assert_eq!(mode("vms/default/vm1"), 0o700);
    assert_eq!(mode("vms/default/vm1/qmp.sock"), 0o600);
    assert_eq!(mode("vms/default/vm1/qga.sock"), 0o600);
    // exec passes argv untouched and returns the guest's exit code.
    let out = d.wk(&[
        "exec",
        "vm1",
        "--",
        "/bin/sh",
        "-c",
        "echo \"$1\"; exit 7",
        "sh",
        "a b;c",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a b;c\n");
    // A command that runs past its timeout fails, saying so, and does not outlive it.
    let out = d.wk(&["exec", "vm1", "--timeout", "2", "--", "sleep", "987"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("timed out") && err.contains("sleep 987"),
        "{err}"
    );
    assert!(!err.contains("may still run"), "{err}");
    let ps = d.exec("vm1", &["ps", "-o", "args"]);
    assert!(
        !ps.contains("sleep 987"),
        "still running after its timeout:\n{ps}"
    );
    // Delete stops it and keeps the disks unless asked.
    let pid = d.qemu_pid("vm1").expect("running");
    assert!(d.wk(&["delete", "vm1"]).status.success());
    assert!(!common::alive(pid), "QEMU stopped");
    assert!(d.home.join("vms/default/vm1/disks/system.qcow2").exists());
    assert!(
        d.wk(&["delete", "vm1"]).status.success(),
        "delete is idempotent"
    );
}

#[test]
fn a_change_that_needs_a_restart_is_applied_by_one_restart_and_data_survives() {
    let d = Daemon::start(&[]);
    d.apply(&doc("vm2", "  cpu: 1\n  memory: 512Mi\n  maxCpu: 2\n  maxMemory: 1Gi\n  restartPolicy: Automatic\n  disks:\n  - {name: system, size: 1Gi, filesystem: {type: ext4, mountPath: /mnt/system}}\n"));
    d.sh(
        "vm2",
        "dd if=/dev/urandom of=/mnt/system/blob bs=1M count=8 2>/dev/null; sync",
    );
    let sum = d.exec("vm2", &["md5sum", "/mnt/system/blob"]);
    let boot = d.boot_id("vm2");
    // maxCpu and maxMemory up are restart-only; so are CPU and memory beyond the old ceilings.
    let out = d.apply(&doc("vm2", "  cpu: 4\n  maxCpu: 4\n  memory: 2Gi\n  maxMemory: 2Gi\n  disks:\n  - {name: system, size: 2Gi, filesystem: {type: ext4, mountPath: /mnt/system}}\n  - {name: extra, size: 512Mi, hotpluggable: false}\n"));
    assert!(out.contains("restart"), "{out}");
    assert_ne!(d.boot_id("vm2"), boot, "it restarted");
    assert_eq!(d.online_cpus("vm2"), 4);
    assert!(d.mem_total_kib("vm2") > 1_800_000);
    assert_eq!(d.disk_bytes("vm2", "system"), Some(2 * GIB));
    assert_eq!(d.disk_bytes("vm2", "extra"), Some(512 << 20));
    let fs = d.exec("vm2", &["df", "-k", "/mnt/system"]);
    let blocks: u64 = fs
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(blocks > 1_800_000, "filesystem grown with its disk: {fs}");
    assert_eq!(
        d.exec("vm2", &["md5sum", "/mnt/system/blob"]),
        sum,
        "data intact"
    );
    assert_eq!(d.condition("vm2", "RestartRequired").unwrap().0, "False");
}

#[test]
fn restart_only_changes_wait_under_never_until_wukong_restart() {
    let d = Daemon::start(&[]);
    d.apply(&doc(
        "vm3",
        "  cpu: 1\n  memory: 512Mi\n  maxCpu: 2\n  disks:\n  - {name: system, size: 1Gi}\n",
    ));
    let boot = d.boot_id("vm3");
    let out = d.apply(&doc("vm3", "  maxCpu: 4\n  cpu: 2\n"));
    assert!(
        out.contains("needs a restart") || out.contains("restart"),
        "{out}"
    );
    assert_eq!(d.boot_id("vm3"), boot, "no restart under Never");
    // The live part happened at once; the ceiling waits.
    assert_eq!(d.online_cpus("vm3"), 2);
    let (status, message) = d.condition("vm3", "RestartRequired").unwrap();
    assert_eq!(status, "True");
    assert!(message.contains("maxCpu"), "{message}");
    let o = d.get("vm3");
    assert_eq!(o["status"]["pendingChanges"][0]["resource"], "cpu");
    assert_eq!(o["status"]["restartPending"], true);
    // An unrelated apply does not cancel it.
    d.apply(&doc("vm3", "  runStrategy: Always\n"));
    assert_eq!(d.condition("vm3", "RestartRequired").unwrap().0, "True");
    assert!(d.wk(&["restart", "vm3"]).status.success());
    d.wait_for(
        "vm3",
        "the pending change applied",
        Duration::from_secs(60),
        |o| o["status"]["restartPending"] == false,
    );
    assert_ne!(d.boot_id("vm3"), boot);
    assert_eq!(d.get("vm3")["status"]["maxCpu"], 4);
}

#[test]
fn a_restarted_daemon_reattaches_without_restarting_the_vm() {
    let mut d = Daemon::start(&[]);
    d.apply(&doc(
        "vm4",
        "  cpu: 1\n  memory: 512Mi\n  disks:\n  - {name: system, size: 1Gi}\n",
    ));
    let pid = d.qemu_pid("vm4").unwrap();
    let boot = d.boot_id("vm4");
    d.kill();
    d.spawn();
    assert_eq!(d.qemu_pid("vm4"), Some(pid), "QEMU outlived the daemon");
    assert_eq!(d.boot_id("vm4"), boot);
    let o = d.wait_for("vm4", "status refreshed", Duration::from_secs(30), |o| {
        o["status"]["phase"] == "Running"
    });
    assert_eq!(o["status"]["guest"]["cpusOnline"], 1);
    // A VM whose QEMU died is started again under runStrategy Always.
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    d.wait_for(
        "vm4",
        "restarted after QEMU died",
        Duration::from_secs(60),
        |o| o["status"]["phase"] == "Running",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while d.qemu_pid("vm4").is_none_or(|p| p == pid) {
        assert!(std::time::Instant::now() < deadline, "not restarted");
        std::thread::sleep(Duration::from_millis(200));
    }
    let events = String::from_utf8_lossy(&d.wk(&["describe", "vm4"]).stdout).into_owned();
    assert!(events.contains("QEMU exited unexpectedly"), "{events}");
}

#[test]
fn bad_input_is_refused_with_the_field_and_changes_nothing() {
    let d = Daemon::start(&[]);
    d.apply(&doc(
        "vm5",
        "  cpu: 1\n  memory: 512Mi\n  disks:\n  - {name: system, size: 1Gi}\n",
    ));
    let before = d.get("vm5");
    let boot = d.boot_id("vm5");
    for (spec, code, needle) in [
        (
            "  disks:\n  - {name: system, size: 512Mi}\n",
            2,
            "disks never shrink",
        ),
        ("  disks: []\n", 2, "boot disk"),
        (
            "  memory: 1G\n",
            1,
            "spec.memory: '1G' is not a multiple of 2Mi",
        ),
        ("  cpu: 64\n", 1, "exceeds maxCpu"),
        ("  colour: red\n", 1, "unknown field `colour`"),
        (
            "  networks: [{name: a, user: {}}, {name: a, user: {}}]\n",
            1,
            "duplicate network name",
        ),
        (
            "  networks: [{name: p, pod: {}}]\n",
            1,
            "cannot be used by the local backend",
        ),
    ] {
        let out = d.wk_in(&["apply", "-f", "-"], &doc("vm5", spec));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{spec}: {err}");
        assert!(err.contains(needle), "{spec}: expected '{needle}' in {err}");
    }
    let after = d.get("vm5");
    assert_eq!(after["spec"], before["spec"]);
    assert_eq!(
        after["metadata"]["generation"],
        before["metadata"]["generation"]
    );
    assert_eq!(d.boot_id("vm5"), boot);
    // Stale resourceVersion: a conflict, nothing changed.
    let out = d.wk_in(&["apply", "-f", "-"], "apiVersion: vm.novasphere.dev/v1alpha1\nkind: Wukong\nmetadata: {name: vm5, resourceVersion: \"1\"}\nspec: {cpu: 2}\n");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("conflict"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(d.get("vm5")["spec"]["cpu"], 1);
}

#[test]
fn without_qemu_the_daemon_refuses_to_start_and_says_how_to_install_it() {
    common::prerequisites();
    let home = tempfile::Builder::new()
        .prefix("wk")
        .tempdir_in("/tmp")
        .unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["serve"])
        .env("WUKONG_HOME", home.path())
        .env("WUKONG_IMAGE_DIR", common::image_dir())
        .env("WUKONG_QEMU", "/nonexistent/qemu-system-x86_64")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("scripts/setup.sh"), "{err}");
}

#[test]
fn a_disk_created_from_a_host_image_keeps_its_content_and_the_source_is_untouched() {
    let d = Daemon::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("content")).unwrap();
    std::fs::write(dir.path().join("content/hello.txt"), "from the host\n").unwrap();
    let image = dir.path().join("seed.raw");
    let made = std::process::Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(dir.path().join("content"))
        .arg(&image)
        .arg("64M")
        .status()
        .unwrap();
    assert!(made.success());
    let before = std::fs::read(&image).unwrap();
    d.apply(&doc(
        "img",
        &format!("  cpu: 1\n  memory: 512Mi\n  disks:\n  - {{name: system, size: 128Mi}}\n  - {{name: seed, size: 128Mi, source: {{image: '{}'}}, filesystem: {{type: ext4, mountPath: /seed}}}}\n", image.display()),
    ));
    assert_eq!(
        d.exec("img", &["cat", "/seed/hello.txt"]),
        "from the host\n",
        "not formatted again"
    );
    let df = d.exec("img", &["df", "-k", "/seed"]);
    let kib: u64 = df
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(kib > 100_000, "the filesystem was grown to the disk: {df}");
    assert!(
        std::fs::read(&image).unwrap() == before,
        "the source image is never modified"
    );
    // A source larger than the disk is refused.
    let out = d.wk_in(
        &["apply", "-f", "-"],
        &doc(
            "img2",
            &format!(
                "  disks:\n  - {{name: system, size: 32Mi, source: {{image: '{}'}}}}\n",
                image.display()
            ),
        ),
    );
    assert!(!out.status.success());
}

#[test]
fn memory_beyond_what_the_host_may_commit_is_refused_and_changes_nothing() {
    // 1400Mi to commit; each VM counts its memory plus QEMU's 192Mi.
    let d = Daemon::start(&["--memory-commit", "1400Mi"]);
    let vm = |name: &str, memory: &str| {
        doc(
            name,
            &format!(
                "  cpu: 1\n  memory: {memory}\n  maxMemory: 2Gi\n  disks:\n  - {{name: system, size: 256Mi}}\n"
            ),
        )
    };
    d.apply(&vm("a", "512Mi"));
    let refused = |out: std::process::Output, what: &str| {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{what} was admitted");
        assert!(
            err.contains("spec.memory: the host cannot commit it"),
            "{what}: {err}"
        );
        err
    };
    // A second VM: 704Mi + 704Mi > 1400Mi.
    let err = refused(d.wk_in(&["apply", "-f", "-"], &vm("b", "512Mi")), "b");
    assert!(err.contains("1 other VMs hold 704Mi"), "{err}");
    assert!(err.contains("the limit is 1400Mi"), "{err}");
    assert!(!d.wk(&["get", "b"]).status.success(), "b was not created");
    // A grow beyond it is refused, one within it is made live.
    let before = d.get("a");
    refused(
        d.wk_in(&["apply", "-f", "-"], &vm("a", "1280Mi")),
        "a at 1280Mi",
    );
    assert_eq!(
        d.get("a")["metadata"]["generation"],
        before["metadata"]["generation"]
    );
    let boot = d.boot_id("a");
    d.apply(&vm("a", "1Gi"));
    assert!(d.mem_total_kib("a") > 900 * 1024, "grown in the guest");
    assert_eq!(d.boot_id("a"), boot);
    // A stopped VM holds nothing: b fits, and then a cannot start again.
    assert!(d.wk(&["stop", "a"]).status.success());
    d.wait_for("a", "stopped", Duration::from_secs(120), |o| {
        o["status"]["phase"] == "Stopped"
    });
    d.apply(&vm("b", "512Mi"));
    refused(d.wk(&["start", "a"]), "starting a");
    assert_eq!(
        d.get("a")["spec"]["runStrategy"],
        "Halted",
        "a stays stopped"
    );
}

/// The daemon's `wukong_agent_connections_total`.
fn agent_connections(d: &Daemon) -> u64 {
    let text = String::from_utf8_lossy(&d.wk(&["metrics"]).stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("wukong_agent_connections_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no agent connection count in: {text}"))
}

#[test]
fn the_agent_connection_is_kept_between_callers_and_a_stop_still_shuts_the_guest_down() {
    let d = Daemon::start(&[]);
    d.apply(&doc(
        "keep",
        "  cpu: 1\n  maxCpu: 2\n  memory: 512Mi\n  disks:\n  - {name: system, size: 256Mi}\n",
    ));
    d.wait_for("keep", "running", Duration::from_secs(120), |o| {
        o["status"]["phase"] == "Running"
            && o["status"]["observedGeneration"] == o["metadata"]["generation"]
    });
    d.exec("keep", &["true"]);
    let kept = agent_connections(&d);
    for i in 0..3 {
        assert_eq!(
            d.exec("keep", &["echo", &i.to_string()]).trim(),
            i.to_string()
        );
    }
    d.apply(&doc(
        "keep",
        "  cpu: 2\n  maxCpu: 2\n  memory: 512Mi\n  disks:\n  - {name: system, size: 256Mi}\n",
    ));
    assert_eq!(d.online_cpus("keep"), 2);
    assert_eq!(
        agent_connections(&d),
        kept,
        "guest commands and a live change reuse the kept connection"
    );
    // The kept connection is closed for the guest's own shutdown, not forced past it.
    assert!(d.wk(&["stop", "keep"]).status.success());
    d.wait_for("keep", "stopped", Duration::from_secs(120), |o| {
        o["status"]["phase"] == "Stopped"
    });
    // The guest's console: its kernel powered off (a QMP quit or a kill would not say so).
    let console = String::from_utf8_lossy(&d.wk(&["logs", "keep"]).stdout).into_owned();
    assert!(
        console.contains("reboot: Power down"),
        "stopped by the guest: {console}"
    );
    assert!(d.wk(&["start", "keep"]).status.success());
    d.wait_for("keep", "running again", Duration::from_secs(120), |o| {
        o["status"]["phase"] == "Running"
    });
    let boot = d.boot_id("keep");
    assert!(!boot.is_empty());
    assert!(
        agent_connections(&d) > kept,
        "the new QEMU gets a new connection"
    );
}

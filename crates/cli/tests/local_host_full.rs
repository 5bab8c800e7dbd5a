//! The host filesystem fills up under a running VM: WUKONG_HOME is a size-limited tmpfs, the
//! host takes nearly all of it, and the guest writes more into its disk than is left. QEMU
//! pauses the VM on the failed write (`werror=enospc`); status says so with the figures; once
//! the host frees space the VM goes on by itself, the guest's write completes with nothing
//! lost, and the next apply works. The daemon's own database lives on the same full
//! filesystem. (Issue: reliability and security, §2.)
//!
//! Mounting a tmpfs needs root or passwordless sudo; without either the test fails and says so.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, doc};

const VM: &str = "full";
/// Size of the guest's write (the host keeps less than this free).
const CANARY: u64 = 64 << 20;

/// A size-limited tmpfs, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
    sudo: bool,
}

impl Tmpfs {
    fn mount(mib: u64) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("wkf")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        let id = |flag: &str| {
            String::from_utf8_lossy(&Command::new("id").arg(flag).output().unwrap().stdout)
                .trim()
                .to_string()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        let root = uid == "0";
        let sudo = !root;
        let mut cmd = if sudo {
            let mut c = Command::new("sudo");
            c.args(["-n", "mount"]);
            c
        } else {
            Command::new("mount")
        };
        let out = cmd
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700,uid={uid},gid={gid}"),
                "tmpfs",
            ])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test needs a size-limited tmpfs as WUKONG_HOME, and mounting one needs root or passwordless sudo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir, sudo }
    }

    fn free(&self) -> u64 {
        wukong_local::backend::free_bytes(&self.dir).expect("statvfs of the tmpfs")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let mut cmd = if self.sudo {
            let mut c = Command::new("sudo");
            c.args(["-n", "umount", "-l"]);
            c
        } else {
            let mut c = Command::new("umount");
            c.arg("-l");
            c
        };
        let _ = cmd.arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The sha256 of the guest's canary, computed on the host from the same pattern.
fn expected_sum() -> String {
    let out = Command::new("bash")
        .args([
            "-c",
            &format!("yes wukong-canary | head -c {CANARY} | sha256sum"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn paused(o: &serde_json::Value) -> Option<(String, String, String)> {
    o["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Paused")
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
            (s("status"), s("reason"), s("message"))
        })
}

fn fill(path: &Path, bytes: u64) {
    let out = Command::new("fallocate")
        .args(["-l", &bytes.to_string()])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fallocate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_full_host_filesystem_pauses_the_vm_which_goes_on_once_space_is_free_with_nothing_lost() {
    let fs = Tmpfs::mount(320);
    let d = Daemon::start_in(fs.dir.clone(), &[]);
    let spec = |memory: &str| {
        doc(
            VM,
            &format!(
                "  cpu: 1\n  memory: {memory}\n  maxMemory: 1Gi\n  disks:\n  - {{name: system, size: 128Mi}}\n  - {{name: data, size: 512Mi, filesystem: {{type: ext4, mountPath: /data}}}}\n"
            ),
        )
    };
    d.apply(&spec("256Mi"));

    // The host takes all but 16 MiB; the guest then writes 64 MiB and syncs.
    let filler = fs.dir.join("filler");
    fill(&filler, fs.free().saturating_sub(16 << 20));
    let free_before = fs.free();
    assert!(free_before < CANARY, "{free_before} bytes are still free");
    d.sh(
        VM,
        &format!(
            "(yes wukong-canary | head -c {CANARY} > /data/canary && sync && echo done > /tmp/written) </dev/null >/dev/null 2>&1 &"
        ),
    );

    let o = d.wait_for(VM, "the Paused condition", Duration::from_secs(120), |o| {
        paused(o).is_some_and(|(s, _, _)| s == "True")
    });
    let (_, reason, message) = paused(&o).unwrap();
    assert_eq!(reason, "HostDiskFull", "{message}");
    for part in ["disk data", "no space left", "resumes by itself"] {
        assert!(message.contains(part), "{part:?} not in {message:?}");
    }
    assert!(d.qemu_pid(VM).is_some(), "QEMU is still there, paused");
    let events = String::from_utf8_lossy(&d.wk(&["describe", VM]).stdout).into_owned();
    let warned = events.contains("no space left");

    // Space comes back: the VM goes on by itself and the write completes.
    let resumed_at = Instant::now();
    std::fs::remove_file(&filler).unwrap();
    let o = d.wait_for(VM, "the VM to run again", Duration::from_secs(60), |o| {
        paused(o).is_some_and(|(s, _, _)| s == "False")
    });
    let ran_again = resumed_at.elapsed();
    let (_, reason, _) = paused(&o).unwrap();
    assert_eq!(reason, "Resumed");
    let deadline = Instant::now() + Duration::from_secs(120);
    while d.sh(VM, "cat /tmp/written 2>/dev/null || true").trim() != "done" {
        assert!(
            Instant::now() < deadline,
            "the guest's write did not complete after the VM ran again"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "host full: {free_before} bytes free when the guest wrote {CANARY}; running again {:.1} s after the space was freed, the write done after {:.1} s",
        ran_again.as_secs_f64(),
        resumed_at.elapsed().as_secs_f64()
    );
    let sum = d.sh(
        VM,
        "echo 3 > /proc/sys/vm/drop_caches; sha256sum /data/canary",
    );
    assert_eq!(
        sum.split_whitespace().next(),
        Some(expected_sum().as_str()),
        "the canary reads back as written"
    );

    // The daemon's database (on the same filesystem) still takes writes: the next apply works.
    d.apply(&spec("384Mi"));
    let kib = d.mem_total_kib(VM);
    assert!(kib > 300 * 1024, "memory grew live: MemTotal {kib} KiB");
    assert!(
        warned
            || String::from_utf8_lossy(&d.wk(&["describe", VM]).stdout).contains("no space left"),
        "an event says the VM was paused for lack of space"
    );
    drop(d);
}

//! Real-VM test harness: a private daemon (its own WUKONG_HOME) per test, the default guest
//! image built once (under a file lock), VMs killed and files removed on drop. QEMU missing is
//! a failure with the install line, never a skip.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_wukong");

/// The shared guest image directory (WUKONG_IMAGE_DIR, else under the target dir).
pub fn image_dir() -> PathBuf {
    std::env::var_os("WUKONG_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("guest"))
}

/// Runs the build `command` gives (if any) into `dir`, one test process at a time (a file
/// lock beside `dir`); panics with `failure` and the build's output when it fails.
fn build_once(dir: &std::path::Path, failure: &str, command: impl FnOnce() -> Option<Command>) {
    std::fs::create_dir_all(dir).unwrap();
    let lock = std::fs::File::create(dir.with_extension("lock")).unwrap();
    lock.lock().unwrap();
    if let Some(mut c) = command() {
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{failure}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(lock);
}

/// Fails (never skips) when QEMU is not installed; builds the guest image once.
pub fn prerequisites() -> PathBuf {
    let qemu = Command::new("qemu-system-x86_64").arg("--version").output();
    assert!(
        qemu.is_ok_and(|o| o.status.success()),
        "QEMU is not installed: run `bash scripts/setup.sh` (installs qemu-system-x86 from bookworm-backports, busybox-static, cpio, kmod)"
    );
    let dir = image_dir();
    build_once(&dir, "image build failed", || {
        (!dir.join("vmlinux").exists() || !dir.join("initramfs.cpio.gz").exists()).then(|| {
            let mut c = Command::new(BIN);
            c.args(["image", "build", "--dir"]).arg(&dir);
            c
        })
    });
    dir
}

/// A daemon with its own state directory.
pub struct Daemon {
    pub home: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
    /// The failpoint the next spawn arms (`WUKONG_FAILPOINT`), if any.
    pub failpoint: Option<String>,
}

impl Daemon {
    /// Starts `wukong serve` in a fresh home (short path: unix sockets live there).
    pub fn start(extra: &[&str]) -> Daemon {
        let home = tempfile::Builder::new()
            .prefix("wk")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        Daemon::start_in(home, extra)
    }

    /// Starts `wukong serve` with `home` as its WUKONG_HOME (a short path: unix sockets live
    /// there).
    pub fn start_in(home: PathBuf, extra: &[&str]) -> Daemon {
        prerequisites();
        let mut d = Daemon {
            home,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            failpoint: None,
        };
        d.spawn();
        d
    }

    /// (Re)starts the daemon process on the same home.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.join("daemon.log"))
            .unwrap();
        let mut command = Command::new(BIN);
        command.env_remove("WUKONG_FAILPOINT");
        if let Some(f) = &self.failpoint {
            command.env("WUKONG_FAILPOINT", f);
        }
        let child = command
            .arg("serve")
            .args(&self.extra)
            .env("WUKONG_HOME", &self.home)
            .env("WUKONG_IMAGE_DIR", image_dir())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.home.join("api.sock").exists() || !self.wk(&["get"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "daemon did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits until the daemon process ends by itself (e.g. at an armed failpoint); false if
    /// it still runs after `timeout`.
    pub fn wait_died(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let Some(c) = self.child.as_mut() else {
            return true;
        };
        loop {
            if c.try_wait().unwrap().is_some() {
                self.child = None;
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the daemon hard (SIGKILL), leaving its VMs running.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("daemon.log")).unwrap_or_default()
    }

    /// Runs the CLI against this daemon.
    pub fn wk(&self, args: &[&str]) -> Output {
        self.wk_in(args, "")
    }

    /// Runs the CLI with `stdin`.
    pub fn wk_in(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(BIN)
            .args(args)
            .env("WUKONG_HOME", &self.home)
            .env("WUKONG_NO_AUTOSTART", "true")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// `wukong apply -f -` of `yaml`; panics with the output unless it succeeds.
    pub fn apply(&self, yaml: &str) -> String {
        let out = self.wk_in(&["apply", "-f", "-"], yaml);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "apply failed:\n{text}\n--- daemon log ---\n{}",
            self.log()
        );
        text
    }

    /// The object as JSON.
    pub fn get(&self, name: &str) -> Value {
        let out = self.wk(&["get", name, "-o", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Runs argv in the guest; returns stdout, panics unless it exits 0.
    pub fn exec(&self, name: &str, argv: &[&str]) -> String {
        let mut args = vec!["exec", name, "--"];
        args.extend_from_slice(argv);
        let out = self.wk(&args);
        assert!(
            out.status.success(),
            "exec {argv:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a fixed shell snippet in the guest.
    pub fn sh(&self, name: &str, script: &str) -> String {
        self.exec(name, &["/bin/sh", "-c", script])
    }

    pub fn boot_id(&self, name: &str) -> String {
        self.exec(name, &["cat", "/proc/sys/kernel/random/boot_id"])
            .trim()
            .to_string()
    }

    pub fn online_cpus(&self, name: &str) -> u32 {
        let s = self.exec(name, &["cat", "/sys/devices/system/cpu/online"]);
        s.trim()
            .split(',')
            .map(|p| match p.split_once('-') {
                Some((a, b)) => b.parse::<u32>().unwrap() - a.parse::<u32>().unwrap() + 1,
                None => 1,
            })
            .sum()
    }

    pub fn mem_total_kib(&self, name: &str) -> u64 {
        let s = self.exec(name, &["cat", "/proc/meminfo"]);
        s.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Bytes of the block device whose serial is `disk`.
    pub fn disk_bytes(&self, name: &str, disk: &str) -> Option<u64> {
        let out = self.sh(name, "for b in /sys/block/*; do [ -f $b/serial ] && echo \"$(cat $b/serial) $(cat $b/size)\"; done");
        out.lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(s, _)| *s == disk)
            .map(|(_, n)| n.trim().parse::<u64>().unwrap() * 512)
    }

    /// The condition's status.
    pub fn condition(&self, name: &str, kind: &str) -> Option<(String, String)> {
        let o = self.get(name);
        o["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == kind)
            .map(|c| {
                (
                    c["status"].as_str().unwrap_or("").to_string(),
                    c["message"].as_str().unwrap_or("").to_string(),
                )
            })
    }

    /// Waits (polling the API) until `f` holds for the object.
    pub fn wait_for(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let o = self.get(name);
            if f(&o) {
                return o;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {}",
                serde_json::to_string_pretty(&o["status"]).unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The QEMU pid of a VM.
    pub fn qemu_pid(&self, name: &str) -> Option<i32> {
        wukong_local::process::running_pid(&self.home.join("vms/default").join(name))
            .map(|p| p.as_raw())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        // Kill every QEMU this home started, then remove it.
        if let Ok(namespaces) = std::fs::read_dir(self.home.join("vms")) {
            for ns in namespaces.flatten() {
                for vm in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                    // Only a QEMU of this VM: a pid file outlives its process, and the pid may
                    // belong to anything by now (pids are reused within minutes on a busy host).
                    if let Some(pid) = wukong_local::process::running_pid(&vm.path()) {
                        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// A Wukong document.
pub fn doc(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: vm.novasphere.dev/v1alpha1\nkind: Wukong\nmetadata: {{name: {name}}}\nspec:\n{spec}"
    )
}

/// Whether a process runs (a zombie awaiting its reaper does not).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// The stock Debian 12 test guest (`scripts/build-stock-guest.sh`: debootstrap, systemd, udev,
/// qemu-guest-agent, the cloud-image disk layout), built once and cached like the default
/// image (WUKONG_STOCK_IMAGE_DIR, else under the target dir). A failed build fails the test
/// with what to install; it is never skipped.
pub struct StockImage {
    pub dir: PathBuf,
}

impl StockImage {
    pub fn disk(&self) -> String {
        self.dir.join("disk.qcow2").display().to_string()
    }

    /// `wukong serve` flags that boot it.
    pub fn serve_args(&self) -> Vec<String> {
        let cmdline = std::fs::read_to_string(self.dir.join("cmdline")).unwrap();
        vec![
            "--kernel".into(),
            self.dir.join("vmlinux").display().to_string(),
            "--initrd".into(),
            self.dir.join("initrd.img").display().to_string(),
            "--cmdline".into(),
            cmdline.trim().to_string(),
        ]
    }
}

pub fn stock_image() -> StockImage {
    prerequisites();
    let dir = std::env::var_os("WUKONG_STOCK_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("stock-guest"));
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-stock-guest.sh");
    // The script itself skips a build whose inputs did not change.
    build_once(
        &dir,
        "the stock guest build failed (it needs root, debootstrap, dosfstools, fdisk: `bash scripts/setup.sh` installs them)",
        || {
            let mut c = Command::new("bash");
            c.arg(&script).arg(&dir);
            Some(c)
        },
    );
    StockImage { dir }
}

/// The guest device (vdX) whose serial is `disk`.
pub fn guest_dev(d: &Daemon, vm: &str, disk: &str) -> String {
    let out = d.sh(
        vm,
        "for b in /sys/block/*; do [ -f $b/serial ] && echo \"$(cat $b/serial) ${b##*/}\"; done",
    );
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(s, _)| *s == disk)
        .map(|(_, dev)| dev.to_string())
        .unwrap_or_else(|| panic!("no disk {disk} in the guest: {out}"))
}

/// Size in bytes of the filesystem mounted at `mount` (df).
pub fn fs_bytes(d: &Daemon, vm: &str, mount: &str) -> u64 {
    let out = d.exec(vm, &["df", "-k", mount]);
    out.lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

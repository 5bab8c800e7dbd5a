//! The QEMU process of a VM: start it (daemonized, so it outlives the daemon), find it again
//! from its pid file, stop it (guest shutdown, then QMP quit, then kill).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use wukong_engine::BackendError;

use crate::machine::VmFiles;
use crate::qga::Qga;
use crate::qmp::Qmp;

/// The QEMU binary: `WUKONG_QEMU`, else `qemu-system-x86_64` on PATH.
pub fn qemu_binary() -> PathBuf {
    std::env::var_os("WUKONG_QEMU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"))
}

/// The one line that installs what the local backend needs on Debian 12.
pub const INSTALL_HINT: &str = "install QEMU 10 and the image tools: `bash scripts/setup.sh` (adds bookworm-backports, installs qemu-system-x86 qemu-utils busybox-static cpio kmod)";

/// Checks that QEMU and qemu-img can run, with the install line when not.
pub fn check_tools() -> Result<(), BackendError> {
    for tool in [qemu_binary(), PathBuf::from("qemu-img")] {
        let ok = std::process::Command::new(&tool)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(BackendError::Failed(format!(
                "{} is not installed: {INSTALL_HINT}",
                tool.display()
            )));
        }
    }
    Ok(())
}

/// The pid of the VM's QEMU, if it runs (pid file present, process alive, and it is QEMU
/// with this VM's directory on its command line, not a recycled pid).
pub fn running_pid(dir: &Path) -> Option<Pid> {
    let text = std::fs::read_to_string(VmFiles::pid(dir)).ok()?;
    let pid = Pid::from_raw(text.trim().parse().ok()?);
    is_qemu_of(dir, pid).then_some(pid)
}

/// Whether `pid` is a live QEMU of this VM's directory. It does not look at the pid file: a
/// QEMU that is exiting removes that file before it has let go of the disk images and
/// sockets, and, when a new QEMU has already written it, removes the new one's.
fn is_qemu_of(dir: &Path, pid: Pid) -> bool {
    // A zombie's cmdline is empty: it has closed its files, so it counts as gone.
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = VmFiles::qmp(dir);
    String::from_utf8_lossy(&cmdline).contains(needle.to_string_lossy().as_ref())
}

/// Starts QEMU with `args` (which daemonize it). Errors carry QEMU's own message.
pub async fn spawn(dir: &Path, args: &[String]) -> Result<Pid, BackendError> {
    for f in [VmFiles::qmp(dir), VmFiles::qga(dir), VmFiles::pid(dir)] {
        let _ = std::fs::remove_file(f);
    }
    let log = std::fs::File::create(VmFiles::qemu_log(dir))
        .map_err(|e| BackendError::Failed(format!("{}: {e}", dir.display())))?;
    let out = tokio::process::Command::new(qemu_binary())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(std::process::Stdio::piped())
        .output()
        .await
        .map_err(|e| {
            BackendError::Failed(format!(
                "cannot run {}: {e}; {INSTALL_HINT}",
                qemu_binary().display()
            ))
        })?;
    if !out.status.success() {
        return Err(BackendError::Failed(format!(
            "QEMU did not start: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    for f in [VmFiles::qmp(dir), VmFiles::qga(dir)] {
        let _ = crate::paths::owner_only(&f);
    }
    running_pid(dir).ok_or_else(|| BackendError::Failed("QEMU started but left no pid".into()))
}

/// Waits until the guest agent of the QEMU `pid` answers, up to `timeout`.
pub async fn wait_for_agent(
    dir: &Path,
    pid: Pid,
    timeout: Duration,
) -> Result<(Duration, Qga), BackendError> {
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        if !is_qemu_of(dir, pid) {
            return Err(BackendError::Failed(format!(
                "QEMU exited while booting; see `wukong logs` ({})",
                VmFiles::console(dir).display()
            )));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(BackendError::Timeout {
                what: "the guest agent after boot".into(),
                after: timeout,
            });
        }
        // Each attempt is itself bounded: an agent that is not up yet leaves the sync
        // unanswered.
        let attempt = left.min(Duration::from_secs(2));
        match Qga::connect(&VmFiles::qga(dir), attempt).await {
            Ok(qga) => return Ok((started.elapsed(), qga)),
            Err(BackendError::Unreachable(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(_) => {}
        }
    }
}

/// Waits for the process itself to exit (not only its pid file to go), up to `timeout`.
async fn wait_exit(dir: &Path, pid: Pid, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !is_qemu_of(dir, pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    !is_qemu_of(dir, pid)
}

/// How a stop went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopPath {
    /// It was not running.
    NotRunning,
    /// The guest powered off when asked through its agent.
    GuestShutdown,
    /// QEMU quit when told through QMP.
    Quit,
    /// QEMU was killed.
    Killed,
}

impl StopPath {
    /// In words, for the stop step's note.
    pub fn describe(self) -> &'static str {
        match self {
            StopPath::NotRunning => "it was not running",
            StopPath::GuestShutdown => "the guest shut down when asked",
            StopPath::Quit => "the guest did not shut down in time: QEMU was told to quit",
            StopPath::Killed => "QEMU did not quit: it was killed",
        }
    }
}

/// Stops the VM: the guest agent's shutdown (`grace`), then QMP `quit`, then SIGKILL.
pub async fn stop(dir: &Path, grace: Duration) -> Result<StopPath, BackendError> {
    let Some(pid) = running_pid(dir) else {
        return Ok(StopPath::NotRunning);
    };
    if !grace.is_zero()
        && let Ok(qga) = Qga::connect(&VmFiles::qga(dir), Duration::from_secs(2)).await
    {
        let _ = qga.shutdown(Duration::from_secs(2)).await;
        drop(qga);
        if wait_exit(dir, pid, grace).await {
            return Ok(StopPath::GuestShutdown);
        }
    }
    if let Ok(qmp) = Qmp::connect(&VmFiles::qmp(dir), Duration::from_secs(2)).await {
        let _ = qmp.quit().await;
        drop(qmp);
        if wait_exit(dir, pid, Duration::from_secs(5)).await {
            return Ok(StopPath::Quit);
        }
    }
    let _ = kill(pid, Signal::SIGKILL);
    if wait_exit(dir, pid, Duration::from_secs(5)).await {
        Ok(StopPath::Killed)
    } else {
        Err(BackendError::Failed(format!(
            "QEMU (pid {pid}) does not exit"
        )))
    }
}

/// Creates the disk's qcow2 image of `size` bytes (sparse and blank, or a flattened copy of
/// `source`, read by its own format and only from `roots` when there are any), or grows an
/// existing one to it (never shrinks). A source larger than `size` is refused.
pub async fn ensure_disk_image(
    path: &Path,
    size: u64,
    source: Option<&Path>,
    roots: &[std::path::PathBuf],
) -> Result<(), BackendError> {
    if let Some(parent) = path.parent() {
        crate::paths::private_dir(parent).map_err(|e| BackendError::Failed(e.to_string()))?;
    }
    if !path.exists()
        && let Some(src) = source
    {
        // Checked again here, where it is read (the file may have changed since the
        // request), and held open from the check to the read.
        let real = crate::trusted::check_source(&src.to_string_lossy(), roots, false)
            .map_err(BackendError::Failed)?;
        let pinned = crate::trusted::Pinned::open(&real, roots).map_err(BackendError::Failed)?;
        let (format, src_size) = crate::trusted::inspect(&pinned, &real, roots).await?;
        if src_size > size {
            return Err(BackendError::Failed(format!(
                "the source image {} is {src_size} bytes, more than the disk's size {size}",
                src.display()
            )));
        }
        let tmp = path.with_extension("qcow2.part");
        qemu_img(&[
            "convert".into(),
            "-f".into(),
            format,
            "-O".into(),
            "qcow2".into(),
            pinned.path().to_string_lossy().into(),
            tmp.to_string_lossy().into(),
        ])
        .await?;
        drop(pinned);
        std::fs::rename(&tmp, path).map_err(|e| BackendError::Failed(e.to_string()))?;
    }
    let args: Vec<String> = if path.exists() {
        if image_size(path).await? >= size {
            return Ok(());
        }
        vec![
            "resize".into(),
            "-f".into(),
            "qcow2".into(),
            path.to_string_lossy().into(),
            size.to_string(),
        ]
    } else {
        vec![
            "create".into(),
            "-q".into(),
            "-f".into(),
            "qcow2".into(),
            path.to_string_lossy().into(),
            size.to_string(),
        ]
    };
    qemu_img(&args).await
}

async fn qemu_img(args: &[String]) -> Result<(), BackendError> {
    let out = tokio::process::Command::new("qemu-img")
        .args(args)
        .output()
        .await
        .map_err(|e| BackendError::Failed(format!("qemu-img: {e}; {INSTALL_HINT}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BackendError::Failed(format!(
            "qemu-img {}: {}",
            args[0],
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The virtual size of an image.
pub async fn image_size(path: &Path) -> Result<u64, BackendError> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(path)
        .output()
        .await
        .map_err(|e| BackendError::Failed(format!("qemu-img: {e}")))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|_| {
        BackendError::Failed(format!(
            "qemu-img info {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    })?;
    v["virtual-size"].as_u64().ok_or_else(|| {
        BackendError::Failed(format!("qemu-img info {}: no virtual-size", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for an exiting QEMU: a process with the VM's QMP path on its command line
    /// whose pid file has already gone.
    #[tokio::test]
    async fn a_process_counts_as_exited_only_when_it_is_gone_not_when_its_pid_file_is() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("read _")
            .arg(VmFiles::qmp(dir.path()))
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        std::fs::write(VmFiles::pid(dir.path()), pid.to_string()).unwrap();
        // Until the child has exec'd, its command line is still the parent's.
        let deadline = Instant::now() + Duration::from_secs(30);
        while running_pid(dir.path()) != Some(pid) {
            assert!(Instant::now() < deadline, "the stand-in never ran");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        std::fs::remove_file(VmFiles::pid(dir.path())).unwrap();
        assert_eq!(running_pid(dir.path()), None);
        assert!(
            !wait_exit(dir.path(), pid, Duration::from_millis(200)).await,
            "the process still runs"
        );
        drop(child.stdin.take());
        child.wait().unwrap();
        assert!(wait_exit(dir.path(), pid, Duration::from_secs(30)).await);
    }
}

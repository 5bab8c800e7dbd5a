//! Failpoints: named places in an operation where a test build can die as a `kill -9` would
//! kill it, so that the fault suite stops the daemon in the middle of a step without guessing
//! at timing. Only a build with the `failpoints` feature has them; in any other build `hit`
//! does nothing, and a daemon asked for one refuses to start (`check`).
//!
//! `WUKONG_FAILPOINT=NAME` arms one: the process kills itself (SIGKILL) the first time it
//! reaches NAME, after a line on stderr saying so. `WUKONG_FAILPOINT=qemu:NAME` kills the
//! daemon's QEMUs instead (every `qemu-system` process whose command line holds
//! `WUKONG_HOME`), the first time NAME is reached, and the daemon carries on. The names are `step.PHASE.ACTION` for the
//! engine's step boundaries (PHASE `started`, `applied` or `done`; ACTION the step's `action`
//! as the API spells it, e.g. `addVcpus`), `restart.started` and `restart.done`, and
//! `RESOURCE.WHAT` inside a backend's step (e.g. `memory.requested`).
//!
//! A component that runs as a task of a test (the operator) is armed in the process instead
//! ([`arm_in_process`]): the task panics at the point and the test aborts the rest of it.

use wukong_planner::Step;

/// The variable that arms a failpoint.
pub const ENV: &str = "WUKONG_FAILPOINT";

/// Whether this build has failpoints.
pub const COMPILED: bool = cfg!(feature = "failpoints");

/// Refuses a failpoint this build cannot honour, so that a test never passes by not dying.
pub fn check() -> Result<(), String> {
    match std::env::var(ENV) {
        Ok(name) if !name.is_empty() && !COMPILED => Err(format!(
            "{ENV}={name} is set, but this build has no failpoints (build with `--features failpoints`)"
        )),
        _ => Ok(()),
    }
}

/// A failpoint armed inside this process, for a component that runs as a task of a test (the
/// operator): reaching it panics the task there, and the sender tells the test, which then
/// aborts what is left of the component, as a `kill -9` would end it.
#[cfg(feature = "failpoints")]
static IN_PROCESS: std::sync::Mutex<Option<(String, std::sync::mpsc::Sender<()>)>> =
    std::sync::Mutex::new(None);

/// Arms `name` in this process (replacing one armed before): the first task to reach it
/// panics there and the receiver gets word of it. Failpoints builds only.
#[cfg(feature = "failpoints")]
pub fn arm_in_process(name: &str) -> std::sync::mpsc::Receiver<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    *IN_PROCESS.lock().expect("failpoint") = Some((name.to_string(), tx));
    rx
}

/// Disarms the failpoint armed in this process, if it has not fired.
#[cfg(feature = "failpoints")]
pub fn disarm_in_process() {
    *IN_PROCESS.lock().expect("failpoint") = None;
}

/// Dies here if the failpoint `name` is armed.
#[inline]
pub fn hit(name: &str) {
    #[cfg(feature = "failpoints")]
    {
        let fired = {
            let mut armed = IN_PROCESS.lock().expect("failpoint");
            match armed.as_ref() {
                Some((n, _)) if n == name => armed.take(),
                _ => None,
            }
        };
        if let Some((_, tx)) = fired {
            let _ = tx.send(());
            panic!("failpoint {name} reached: this task dies here");
        }
    }
    #[cfg(feature = "failpoints")]
    if let Ok(armed) = std::env::var(ENV) {
        if armed == name {
            die(name);
        }
        if armed.strip_prefix("qemu:") == Some(name) {
            kill_qemus(name);
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Dies here if the failpoint of `phase` of this step is armed (`step.PHASE.ACTION`).
#[inline]
pub fn hit_step(phase: &str, step: &Step) {
    #[cfg(feature = "failpoints")]
    if std::env::var(ENV).is_ok() || IN_PROCESS.lock().expect("failpoint").is_some() {
        let value = serde_json::to_value(&step.action).unwrap_or_default();
        let action = value["action"].as_str().unwrap_or("unknown");
        hit(&format!("step.{phase}.{action}"));
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = (phase, step);
}

/// SIGKILLs this daemon's QEMUs, once per process.
#[cfg(feature = "failpoints")]
fn kill_qemus(name: &str) {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    static FIRED: AtomicBool = AtomicBool::new(false);
    if FIRED.swap(true, Ordering::SeqCst) {
        return;
    }
    let home = std::env::var("WUKONG_HOME").unwrap_or_default();
    let mut killed = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if !home.is_empty() && cmdline.contains("qemu-system") && cmdline.contains(&home) {
            let pid = nix::unistd::Pid::from_raw(pid);
            if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).is_ok() {
                killed.push(pid.to_string());
            }
        }
    }
    let _ = writeln!(
        std::io::stderr(),
        "failpoint qemu:{name} reached: killed QEMU {}",
        killed.join(", ")
    );
}

#[cfg(feature = "failpoints")]
fn die(name: &str) -> ! {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "failpoint {name} reached: killing the process"
    );
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    // SIGKILL cannot be caught; should it somehow return, end without any clean-up anyway.
    std::process::abort()
}

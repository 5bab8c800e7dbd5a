//! The fault suite on a real guest: the daemon dies as `kill -9` kills it at a step boundary
//! or in the middle of a step (failpoints compiled into test builds: `--features
//! failpoints`), is started again, and the VM must end where its spec says, with nothing lost:
//! the canary data unchanged, one QEMU, no device twice or left behind, nothing left
//! Resizing. (Issue: reliability and security, §2.)
//!
//! CI runs one seeded point per kind of change; `WUKONG_FAULT_POINTS=N` runs N points drawn
//! from every failpoint instead, `WUKONG_FAULT_SEED` picks the schedule (printed either way).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Daemon, doc};

const VM: &str = "fault";
const MAC: &str = "52:54:00:12:34:77";

/// What the VM's spec says; each change of the suite moves one field.
#[derive(Clone, Debug)]
struct State {
    cpu: u32,
    memory_mib: u64,
    max_cpu: u32,
    data_mib: u64,
    /// The extra disk `xN`, if attached (a new one per attach, so each is formatted).
    extra: Option<u32>,
    nic: bool,
    attaches: u32,
}

impl State {
    fn yaml(&self) -> String {
        let mut s = format!(
            "  cpu: {}\n  memory: {}Mi\n  maxCpu: {}\n  maxMemory: 2Gi\n  restartPolicy: Automatic\n  disks:\n  - {{name: system, size: 128Mi}}\n  - {{name: data, size: {}Mi, filesystem: {{type: ext4, mountPath: /data}}}}\n",
            self.cpu, self.memory_mib, self.max_cpu, self.data_mib
        );
        if let Some(n) = self.extra {
            s += &format!(
                "  - {{name: x{n}, size: 64Mi, filesystem: {{type: ext4, mountPath: /x{n}}}}}\n"
            );
        }
        s += "  networks:\n  - {name: default, user: {}}\n";
        if self.nic {
            s += &format!("  - {{name: second, user: {{}}, mac: '{MAC}'}}\n");
        }
        doc(VM, &s)
    }
}

/// The kinds of change, each with what must hold before it and what it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    CpuUp,
    CpuDown,
    MemoryUp,
    MemoryDown,
    DiskGrow,
    Attach,
    Detach,
    NicAdd,
    NicRemove,
    Restart,
}

impl Change {
    /// The state the change starts from (brought about by an ordinary apply first).
    fn prepare(self, s: &State) -> State {
        let mut p = s.clone();
        match self {
            Change::CpuUp => p.cpu = 1,
            Change::CpuDown => p.cpu = 2,
            Change::MemoryUp => p.memory_mib = 512,
            Change::MemoryDown => p.memory_mib = 640,
            Change::Attach => p.extra = None,
            Change::Detach if p.extra.is_none() => {
                p.attaches += 1;
                p.extra = Some(p.attaches);
            }
            Change::NicAdd => p.nic = false,
            Change::NicRemove => p.nic = true,
            // The boot size becomes the live floor: restart at the smallest CPU and memory,
            // so that the later removals stay live unplugs.
            Change::Restart => {
                p.cpu = 1;
                p.memory_mib = 512;
            }
            Change::Detach | Change::DiskGrow => {}
        }
        p
    }

    fn apply(self, s: &State) -> State {
        let mut n = s.clone();
        match self {
            Change::CpuUp => n.cpu = 2,
            Change::CpuDown => n.cpu = 1,
            Change::MemoryUp => n.memory_mib = 640,
            Change::MemoryDown => n.memory_mib = 512,
            Change::DiskGrow => n.data_mib += 64,
            Change::Attach => {
                n.attaches += 1;
                n.extra = Some(n.attaches);
            }
            Change::Detach => n.extra = None,
            Change::NicAdd => n.nic = true,
            Change::NicRemove => n.nic = false,
            Change::Restart => n.max_cpu = if s.max_cpu == 3 { 4 } else { 3 },
        }
        n
    }
}

/// Every failpoint a change of the busybox guest passes, by change.
const POINTS: &[(Change, &str)] = &[
    (Change::CpuUp, "step.started.addVcpus"),
    (Change::CpuUp, "cpu.plugged"),
    (Change::CpuUp, "step.applied.addVcpus"),
    (Change::CpuUp, "step.done.addVcpus"),
    (Change::CpuDown, "step.started.removeVcpus"),
    (Change::CpuDown, "cpu.unplug-requested"),
    (Change::CpuDown, "step.applied.removeVcpus"),
    (Change::MemoryUp, "step.started.growMemory"),
    (Change::MemoryUp, "memory.requested"),
    (Change::MemoryUp, "step.applied.growMemory"),
    (Change::MemoryDown, "step.started.shrinkMemory"),
    (Change::MemoryDown, "memory.requested"),
    (Change::MemoryDown, "step.done.shrinkMemory"),
    (Change::DiskGrow, "step.started.growDisk"),
    (Change::DiskGrow, "disk.resized"),
    (Change::DiskGrow, "step.done.growDisk"),
    (Change::DiskGrow, "step.started.growFilesystem"),
    (Change::DiskGrow, "step.applied.growFilesystem"),
    (Change::Attach, "step.started.attachDisk"),
    (Change::Attach, "disk.image-created"),
    (Change::Attach, "disk.node-added"),
    (Change::Attach, "disk.device-added"),
    (Change::Attach, "step.done.attachDisk"),
    (Change::Attach, "step.started.createFilesystem"),
    (Change::Attach, "filesystem.formatted"),
    (Change::Attach, "step.applied.createFilesystem"),
    (Change::Detach, "step.started.detachDisk"),
    (Change::Detach, "disk.unmounted"),
    (Change::Detach, "disk.device-removed"),
    (Change::Detach, "step.applied.detachDisk"),
    (Change::NicAdd, "step.started.addNic"),
    (Change::NicAdd, "nic.netdev-added"),
    (Change::NicAdd, "step.applied.addNic"),
    (Change::NicRemove, "step.started.removeNic"),
    (Change::NicRemove, "nic.device-removed"),
    (Change::Restart, "restart.started"),
    (Change::Restart, "restart.done"),
];

/// splitmix64: a seeded schedule without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

/// The points to run: one per kind of change (CI), or `count` drawn from all of them.
fn schedule(seed: u64, count: Option<usize>) -> Vec<(Change, &'static str)> {
    let mut rng = Rng(seed);
    match count {
        Some(n) => (0..n).map(|_| POINTS[rng.below(POINTS.len())]).collect(),
        None => {
            let mut by_kind: BTreeMap<Change, Vec<&'static str>> = BTreeMap::new();
            for (c, p) in POINTS {
                by_kind.entry(*c).or_default().push(p);
            }
            // The restart is the slowest; CI leaves it to the full run (restarts have their
            // own kill test in local_lifecycle).
            by_kind.remove(&Change::Restart);
            by_kind
                .into_iter()
                .map(|(c, ps)| (c, ps[rng.below(ps.len())]))
                .collect()
        }
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

/// Whether the change to `target` cannot pass `point` in the VM as it is: under TCG a vCPU
/// slot is used up by each hot-add for good, so after a few add/remove rounds the planner
/// turns a vCPU change into a restart, or a removal into offlining in the guest. A fresh boot
/// gives the slots back. A vCPU the guest took offline stays plugged, and adding it back
/// onlines it without a hot-add.
fn needs_fresh_boot(d: &Daemon, target: &State, point: &str) -> bool {
    let out = d.wk_in(&["plan", "-f", "-", "-o", "json"], &target.yaml());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plans: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps = plans[0]["steps"].as_array().cloned().unwrap_or_default();
    let restart = plans[0]["summary"]["restart"].as_u64().unwrap_or(0) > 0;
    let unplug = steps.iter().any(|s| {
        s["action"] == "removeVcpus"
            && s["description"]
                .as_str()
                .is_some_and(|t| t.contains("(unplug)"))
    });
    let plugged = d
        .sh(VM, "ls -d /sys/devices/system/cpu/cpu[0-9]* | wc -l")
        .trim()
        .parse::<u32>()
        .unwrap();
    restart
        || (point == "cpu.unplug-requested" && !unplug)
        || (point == "cpu.plugged" && plugged >= target.cpu)
}

/// Applies `state` and waits until the VM has it.
fn converge_to(d: &Daemon, state: &State) {
    d.apply(&state.yaml());
}

/// The VM after the operation that the kill interrupted: settled (this generation observed,
/// no operation in flight, nothing Resizing). Returns whether the last operation did not fail
/// (it succeeded, or it was the interrupted one and nothing was left to do), with its message.
fn settled(d: &Daemon) -> (bool, String) {
    let o = d.wait_for(
        VM,
        "the interrupted operation to end after the restart",
        Duration::from_secs(240),
        |o| {
            let conditions = o["status"]["conditions"].as_array().cloned();
            let resizing = conditions.is_none_or(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Resizing" && c["status"] == "True")
            });
            o["status"]["observedGeneration"] == o["metadata"]["generation"]
                && o["status"]["operation"].is_null()
                && matches!(
                    o["status"]["lastOperation"]["phase"].as_str(),
                    Some("Succeeded" | "Failed" | "Interrupted")
                )
                && !resizing
        },
    );
    let op = &o["status"]["lastOperation"];
    (
        op["phase"] != "Failed",
        op["message"].as_str().unwrap_or("").to_string(),
    )
}

/// Processes whose command line holds the VM's QMP socket: its QEMUs.
fn qemus(d: &Daemon) -> usize {
    let needle = d.home.join("vms/default").join(VM).join("qmp.sock");
    let needle = needle.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .count()
}

/// Waits for the interrupted operation to end, then checks that the VM has `target`: at once,
/// or — after a failure, which must say why — once the same spec is applied again. Returns the
/// failure's message, if there was one.
fn ends_at(d: &Daemon, target: &State, canary: &str, point: &str) -> Option<String> {
    let (ok, message) = settled(d);
    let failed = (!ok).then(|| {
        assert!(!message.is_empty(), "{point}: a failure says why");
        converge_to(d, target);
        message
    });
    check(d, target, canary, point);
    failed
}

/// Everything that must hold once the VM has `state`.
fn check(d: &Daemon, state: &State, canary: &str, point: &str) {
    assert_eq!(qemus(d), 1, "{point}: one QEMU for the VM");
    assert_eq!(d.online_cpus(VM), state.cpu, "{point}: vCPUs online");
    let kib = d.mem_total_kib(VM);
    assert!(
        kib <= state.memory_mib * 1024 && kib + 160 * 1024 >= state.memory_mib * 1024,
        "{point}: MemTotal {kib} KiB for {} MiB",
        state.memory_mib
    );
    let mut serials: Vec<String> = d
        .sh(
            VM,
            "for b in /sys/block/*; do [ -f $b/serial ] && echo \"$(cat $b/serial)\"; done; true",
        )
        .lines()
        .map(str::to_string)
        .collect();
    serials.sort();
    let mut want = vec!["data".to_string(), "system".to_string()];
    want.extend(state.extra.map(|n| format!("x{n}")));
    want.sort();
    assert_eq!(serials, want, "{point}: each disk once, none left behind");
    assert_eq!(
        d.disk_bytes(VM, "data"),
        Some(state.data_mib << 20),
        "{point}: the data disk's size"
    );
    let mounts = d.exec(VM, &["cat", "/proc/mounts"]);
    assert!(mounts.contains(" /data ext4 "), "{point}: {mounts}");
    if let Some(n) = state.extra {
        assert!(
            mounts.contains(&format!(" /x{n} ext4 ")),
            "{point}: {mounts}"
        );
    }
    let macs = d.sh(
        VM,
        "for n in /sys/class/net/*; do [ ${n##*/} = lo ] || cat $n/address; done",
    );
    let second = macs.lines().filter(|m| m.trim() == MAC).count();
    assert_eq!(
        second,
        usize::from(state.nic),
        "{point}: the second NIC: {macs}"
    );
    assert_eq!(macs.lines().count(), 1 + usize::from(state.nic), "{point}");
    assert_eq!(
        d.exec(VM, &["md5sum", "/data/canary"]),
        canary,
        "{point}: the canary data"
    );
}

/// The suite's VM in its first state, with 8 MiB of canary data on /data; returns the state
/// and the canary's checksum.
fn first_vm(d: &Daemon) -> (State, String) {
    let state = State {
        cpu: 1,
        memory_mib: 512,
        max_cpu: 3,
        data_mib: 256,
        extra: None,
        nic: false,
        attaches: 0,
    };
    converge_to(d, &state);
    d.sh(
        VM,
        "dd if=/dev/urandom of=/data/canary bs=1M count=8 2>/dev/null; sync",
    );
    let canary = d.exec(VM, &["md5sum", "/data/canary"]);
    (state, canary)
}

#[test]
fn a_daemon_killed_at_any_step_point_ends_where_the_spec_says_with_nothing_lost() {
    let seed = env_number("WUKONG_FAULT_SEED").unwrap_or(20261202);
    let count = env_number("WUKONG_FAULT_POINTS").map(|n| n as usize);
    let points = schedule(seed, count);
    println!(
        "fault schedule: seed {seed}, {} points (WUKONG_FAULT_SEED, WUKONG_FAULT_POINTS)",
        points.len()
    );
    let mut d = Daemon::start(&[]);
    let (mut state, canary) = first_vm(&d);
    let (mut converged, mut rolled_back, mut fresh_boots) = (0, 0, 0);
    for (i, (change, point)) in points.iter().enumerate() {
        let mut ready = change.prepare(&state);
        converge_to(&d, &ready);
        if *change != Change::Restart && needs_fresh_boot(&d, &change.apply(&ready), point) {
            let before = Change::Restart.prepare(&ready);
            converge_to(&d, &before);
            let fresh = Change::Restart.apply(&before);
            converge_to(&d, &fresh);
            ready = change.prepare(&fresh);
            converge_to(&d, &ready);
            fresh_boots += 1;
        }
        let target = change.apply(&ready);
        d.failpoint = Some(point.to_string());
        d.kill();
        d.spawn();
        let out = d.wk_in(&["apply", "--no-wait", "-f", "-"], &target.yaml());
        assert!(
            out.status.success(),
            "{point}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            d.wait_died(Duration::from_secs(180)),
            "{point}: the daemon never reached the failpoint ({change:?})\n{}",
            d.log()
        );
        assert!(
            d.log()
                .contains(&format!("failpoint {point} reached: killing")),
            "{point}: {}",
            d.log()
        );
        d.failpoint = None;
        d.spawn();
        let failed = ends_at(&d, &target, &canary, point);
        match failed {
            None => converged += 1,
            Some(_) => rolled_back += 1,
        }
        println!(
            "{:>3} {:<32} {:<11} {}",
            i + 1,
            point,
            format!("{change:?}"),
            match failed {
                None => "converged".to_string(),
                Some(message) => format!("rolled back ({message}), then converged"),
            }
        );
        state = target;
    }
    println!(
        "points tried {}, converged {converged}, rolled back {rolled_back}, lost 0 (canary intact, one QEMU, no device twice); fresh boots to get vCPU slots back: {fresh_boots}",
        points.len()
    );
}

/// Mid-step points of each kind of hot-plug where QEMU itself dies.
const QEMU_POINTS: &[(Change, &str)] = &[
    (Change::CpuUp, "cpu.plugged"),
    (Change::MemoryUp, "memory.requested"),
    (Change::DiskGrow, "disk.resized"),
    (Change::Attach, "disk.device-added"),
    (Change::NicAdd, "nic.netdev-added"),
];

#[test]
fn qemu_killed_in_the_middle_of_a_step_ends_where_the_spec_says_with_nothing_lost() {
    let mut d = Daemon::start(&[]);
    let (mut state, canary) = first_vm(&d);
    let (mut converged, mut rolled_back) = (0, 0);
    for (change, point) in QEMU_POINTS {
        let ready = change.prepare(&state);
        converge_to(&d, &ready);
        let target = change.apply(&ready);
        let pid = d.qemu_pid(VM);
        d.failpoint = Some(format!("qemu:{point}"));
        d.kill();
        d.spawn();
        let out = d.wk_in(&["apply", "--no-wait", "-f", "-"], &target.yaml());
        assert!(
            out.status.success(),
            "{point}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let killed = format!("failpoint qemu:{point} reached: killed QEMU");
        d.wait_for(
            VM,
            "QEMU killed at the failpoint",
            Duration::from_secs(180),
            |_| d.log().contains(&killed),
        );
        // The VM came back in a new QEMU (runStrategy Always) and settled.
        let failed = ends_at(&d, &target, &canary, point);
        assert_ne!(d.qemu_pid(VM), pid, "{point}: a new QEMU");
        match failed {
            None => converged += 1,
            Some(_) => rolled_back += 1,
        }
        println!(
            "QEMU killed at {point:<20} {change:<9?} {}",
            match failed {
                None => "converged".to_string(),
                Some(message) => format!("failed ({message}), then converged"),
            }
        );
        d.failpoint = None;
        state = target;
    }
    println!(
        "QEMU killed at {} points: converged {converged}, failed then converged on the next apply {rolled_back}, lost 0",
        QEMU_POINTS.len()
    );
}

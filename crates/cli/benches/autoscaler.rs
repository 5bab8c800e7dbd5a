//! The autoscaler's figures. Run: `cargo bench -p wukong --bench autoscaler`.
//!
//! 1. The recommender's cost per evaluation at 10,000 VMs (pure, in this process): every VM
//!    owns CPU, memory and two disks, and gets a reading per round; each evaluation includes
//!    serialising the history the backends store with status.
//! 2. Reaction time on a real busybox VM of the local daemon: two busy loops on 1 vCPU →
//!    the operation that brings 2 vCPUs online has finished (verified in the guest), and the
//!    load stopped → back to 1 vCPU, over `BENCH_REPS` runs (default 10). The decision's own
//!    share (load start → the autoscaler's event) is shown beside it.
//! 3. The cost per VM at `BENCH_VMS` VMs (default 20) at the default 15 s interval: the
//!    daemon's CPU and its guest-agent calls per minute, for `BENCH_SECONDS` (default 120)
//!    without autoscaling and as long with it; the difference is the autoscaler's.
//!
//! `BENCH_PARTS` (default `recommender,reaction,cost`) picks the parts.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "shared/proc.rs"]
mod proc;

use std::time::{Duration, Instant};

use common::Daemon;
use hyper::Method;
use proc::{cpu_seconds, proc_status_kib};
use serde_json::json;
use wukong_api::autoscaling::{AutoscalingSpec, Policy};
use wukong_autoscaler::{CpuSample, Current, FsSample, MemorySample, Recommender, Sample};
use wukong_local::client::Client;
use wukong_local::store::StoredEvent;

const MI: u64 = 1 << 20;
const BASE: &str = "/apis/vm.novasphere.dev/v1alpha1/namespaces/default/wukongs";
const LONG: Duration = Duration::from_secs(300);

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

fn summary(v: &[f64]) -> String {
    format!(
        "min {:.1} s, median {:.1} s, p90 {:.1} s, max {:.1} s",
        percentile(v, 0.0),
        percentile(v, 0.5),
        percentile(v, 0.9),
        percentile(v, 1.0)
    )
}

/// Part 1: 10,000 recommenders, one reading each per round.
fn recommender() {
    const VMS: usize = 10_000;
    const ROUNDS: usize = 30;
    let spec: AutoscalingSpec = serde_json::from_value(json!({
        "cpu": {"min": 1, "max": 8, "targetUtilization": 60},
        "memory": {"min": "512Mi", "max": "8Gi"},
        "disks": [{"name": "system", "maxSize": "64Gi"}, {"name": "data", "maxSize": "256Gi"}],
        "intervalSeconds": 15
    }))
    .unwrap();
    let policy = Policy::of(&spec);
    let current = Current {
        cpu: 2,
        memory: 2048 * MI,
        boot_memory: 1024 * MI,
        max_cpu: 8,
        max_memory: 8192 * MI,
        disks: [
            ("system".to_string(), 10240 * MI),
            ("data".to_string(), 20480 * MI),
        ]
        .into(),
    };
    let rss_before = rss_kib();
    let mut recs: Vec<Recommender> = (0..VMS).map(|_| Recommender::default()).collect();
    let mut per_round = Vec::new();
    let mut changes = 0usize;
    let mut history_bytes = 0;
    for round in 0..ROUNDS {
        let at = round as f64 * 15.0;
        let t0 = Instant::now();
        for (i, r) in recs.iter_mut().enumerate() {
            // A load that differs per VM and moves per round.
            let load = ((i * 7 + round * 3) % 100) as u64;
            let s = Sample {
                at,
                cpu: Some(CpuSample {
                    online: 2,
                    busy: (round as u64) * 15 * 2 * load,
                    total: (round as u64) * 15 * 2 * 100,
                }),
                memory: Some(MemorySample {
                    total: 2000 * MI,
                    available: (2000 - 10 * load) * MI,
                    oom_kills: Some(0),
                    pressure: Some(0.0),
                }),
                filesystems: [
                    (
                        "system".to_string(),
                        FsSample {
                            mount: "/".into(),
                            disk_size: 10240 * MI,
                            size: 10000 * MI,
                            used: 4000 * MI,
                            inodes: Some((655_360, 40_000)),
                        },
                    ),
                    (
                        "data".to_string(),
                        FsSample {
                            mount: "/data".into(),
                            disk_size: 20480 * MI,
                            size: 20000 * MI,
                            used: (5000 + 10 * round as u64) * MI,
                            inodes: None,
                        },
                    ),
                ]
                .into(),
            };
            let ev = r.evaluate(&policy, &current, Ok(s), None);
            changes += ev.changes.len();
            // What the backends store with status after each evaluation.
            history_bytes = serde_json::to_vec(&r.history()).expect("history").len();
        }
        per_round.push(t0.elapsed());
    }
    let rss_after = rss_kib();
    let mut us: Vec<f64> = per_round
        .iter()
        .map(|d| d.as_secs_f64() * 1e6 / VMS as f64)
        .collect();
    us.sort_by(f64::total_cmp);
    println!("\n## 1. The recommender at {VMS} VMs ({ROUNDS} rounds, one reading per VM each)\n");
    println!(
        "per evaluation: median {:.2} µs, max {:.2} µs; a round of {VMS}: median {:.1} ms; {} changes decided",
        us[us.len() / 2],
        us[us.len() - 1],
        us[us.len() / 2] * VMS as f64 / 1000.0,
        changes
    );
    println!(
        "memory of {VMS} recommenders after {ROUNDS} rounds: {} KiB ({:.1} KiB per VM)",
        rss_after.saturating_sub(rss_before),
        rss_after.saturating_sub(rss_before) as f64 / VMS as f64
    );
    println!(
        "status.autoscaling.history, serialised with each evaluation: {history_bytes} bytes per VM after {ROUNDS} rounds"
    );
    drop(recs);
}

fn rss_kib() -> u64 {
    proc_status_kib(std::process::id(), "VmRSS:")
}

/// The resident KiB of `pid`'s mappings of exactly `size_kib` (the guest's RAM).
fn guest_ram_rss_kib(pid: u32, size_kib: u64) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut total = 0;
    let mut in_ram = false;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        match (f.next(), f.next()) {
            (Some("Size:"), Some(v)) => in_ram = v.parse::<u64>() == Ok(size_kib),
            (Some("Rss:"), Some(v)) if in_ram => total += v.parse::<u64>().unwrap_or(0),
            _ => {}
        }
    }
    total
}

/// The event sequence the daemon has reached.
async fn seq(client: &Client, name: &str) -> u64 {
    client
        .call(Method::GET, &format!("{BASE}/{name}"), None)
        .await
        .expect("get")
        .1
}

/// Waits, from event `since` on, for a succeeded operation; returns (seconds from `t0` to the
/// first event whose message contains `decision`, seconds from `t0` to the operation's end).
async fn until_done(
    client: &Client,
    name: &str,
    since: u64,
    t0: Instant,
    decision: &str,
) -> (f64, f64) {
    let mut lines = client
        .stream(&format!("{BASE}/{name}/events?watch=true&since={since}"))
        .await
        .expect("watch");
    let mut decided = None;
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next())
            .await
            .expect("no operation within the timeout")
            .expect("the event stream ended");
        let Ok(e) = serde_json::from_str::<StoredEvent>(&line) else {
            continue;
        };
        match e.event {
            wukong_engine::Event::Notice { message, .. } if message.contains(decision) => {
                decided.get_or_insert(t0.elapsed().as_secs_f64());
            }
            wukong_engine::Event::Finished { succeeded, .. } if decided.is_some() => {
                assert!(succeeded, "the autoscaler's operation failed");
                return (decided.unwrap(), t0.elapsed().as_secs_f64());
            }
            _ => {}
        }
    }
}

/// Part 2: load → 2 vCPUs verified, unload → 1, `reps` times.
async fn reaction(reps: usize) {
    let d = Daemon::start(&[]);
    let client = Client::new(&d.home.join("api.sock"));
    let vm = json!({"apiVersion": "vm.novasphere.dev/v1alpha1", "kind": "Wukong",
        "metadata": {"name": "react"},
        "spec": {"cpu": 1, "memory": "512Mi", "maxCpu": 2,
                 "disks": [{"name": "system", "size": "256Mi"}],
                 "autoscaling": {"cpu": {"min": 1, "max": 2, "targetUtilization": 60},
                                 "intervalSeconds": 5, "stabilizationSeconds": 10,
                                 "cooldownSeconds": 0}}});
    client
        .call(Method::POST, BASE, Some(&vm))
        .await
        .expect("create");
    d.wait_for("react", "running", LONG, |o| {
        o["status"]["guest"]["cpusOnline"] == 1 && o["status"]["operation"].is_null()
    });
    let (mut up, mut up_decided, mut down, mut down_decided) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        let since = seq(&client, "react").await;
        let t0 = Instant::now();
        d.sh(
            "react",
            "for i in 1 2; do (while :; do :; done) </dev/null >/dev/null 2>&1 & echo $! >> /tmp/load; done",
        );
        let (decided, done) =
            until_done(&client, "react", since, t0, "autoscaler: cpu 1 -> 2").await;
        assert_eq!(d.online_cpus("react"), 2, "2 vCPUs online in the guest");
        up_decided.push(decided);
        up.push(done);
        let since = seq(&client, "react").await;
        let t0 = Instant::now();
        d.sh("react", "kill $(cat /tmp/load); rm /tmp/load");
        let (decided, done) =
            until_done(&client, "react", since, t0, "autoscaler: cpu 2 -> 1").await;
        assert_eq!(d.online_cpus("react"), 1, "back to 1 vCPU in the guest");
        down_decided.push(decided);
        down.push(done);
    }
    println!(
        "\n## 2. Reaction time, busybox guest, interval 5 s, down-window 10 s ({reps} runs)\n"
    );
    println!("| | load change → decision | load change → verified in the guest |");
    println!("|---|---|---|");
    println!(
        "| scale up 1 → 2 vCPUs | {} | {} |",
        summary(&up_decided),
        summary(&up)
    );
    println!(
        "| scale down 2 → 1 vCPUs | {} | {} |",
        summary(&down_decided),
        summary(&down)
    );
}

/// The daemon's guest-agent calls so far.
fn agent_calls(d: &Daemon) -> f64 {
    let out = d.wk(&["metrics"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("wukong_agent_calls_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// CPU % of one core and agent calls per minute over `secs`, for the whole daemon.
fn measure(d: &Daemon, secs: u64) -> (f64, f64) {
    let pid = d.pid().expect("daemon pid");
    let (c0, a0, t0) = (cpu_seconds(pid), agent_calls(d), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let (c1, a1, t) = (cpu_seconds(pid), agent_calls(d), t0.elapsed());
    let s = t.as_secs_f64();
    ((c1 - c0) * 100.0 / s, (a1 - a0) * 60.0 / s)
}

/// Part 3: `n` idle VMs, without and then with autoscaling.
async fn cost(n: usize, secs: u64) {
    let d = Daemon::start(&[]);
    let client = Client::new(&d.home.join("api.sock"));
    let names: Vec<String> = (0..n).map(|i| format!("c{i:02}")).collect();
    for name in &names {
        let vm = json!({"apiVersion": "vm.novasphere.dev/v1alpha1", "kind": "Wukong",
            "metadata": {"name": name},
            "spec": {"cpu": 1, "memory": "256Mi", "maxCpu": 2,
                     "disks": [{"name": "system", "size": "128Mi"},
                               {"name": "data", "size": "128Mi",
                                "filesystem": {"type": "ext4", "mountPath": "/data"}}]}});
        client
            .call(Method::POST, BASE, Some(&vm))
            .await
            .expect("create");
    }
    for name in &names {
        d.wait_for(name, "converged", Duration::from_secs(900), |o| {
            o["status"]["phase"] == "Running"
                && o["status"]["observedGeneration"] == o["metadata"]["generation"]
                && o["status"]["operation"].is_null()
        });
    }
    let (cpu0, calls0) = measure(&d, secs);
    let policy = json!({"spec": {"autoscaling": {
        "cpu": {"min": 1, "max": 2, "targetUtilization": 60},
        "memory": {"min": "256Mi", "max": "512Mi"},
        "disks": [{"name": "data", "maxSize": "1Gi"}]}}});
    for name in &names {
        client
            .call(Method::PATCH, &format!("{BASE}/{name}"), Some(&policy))
            .await
            .expect("autoscaling on");
    }
    for name in &names {
        d.wait_for(name, "a first reading", LONG, |o| {
            o["status"]["autoscaling"]["metrics"]["memoryTotal"].is_string()
        });
    }
    let (cpu1, calls1) = measure(&d, secs);
    let pid = d.pid().unwrap();
    let evaluations: f64 = String::from_utf8_lossy(&d.wk(&["metrics"]).stdout)
        .lines()
        .filter(|l| l.starts_with("wukong_autoscaler_evaluations_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    // QEMU's own share: its RSS beside the resident part of the guest's RAM (the mapping of
    // exactly the guest's memory size).
    let mut rss = Vec::new();
    let mut beside = Vec::new();
    for name in &names {
        let Some(qemu) = d.qemu_pid(name) else {
            continue;
        };
        let r = proc_status_kib(qemu as u32, "VmRSS:") as f64 / 1024.0;
        let ram = guest_ram_rss_kib(qemu as u32, 256 * 1024) as f64 / 1024.0;
        rss.push(r);
        beside.push(r - ram);
    }
    let per_vm = (cpu1 - cpu0) / n as f64;
    println!("\n## 3. Cost at {n} idle busybox VMs, default interval (15 s), {secs} s each way\n");
    println!("| | daemon CPU (% of one core) | agent calls / min |");
    println!("|---|---|---|");
    println!("| without autoscaling | {cpu0:.2} % | {calls0:.0} |");
    println!("| with autoscaling (cpu, memory, one disk) | {cpu1:.2} % | {calls1:.0} |");
    println!(
        "| the autoscaler, per VM | {per_vm:.3} % (target < 0.5 %: {}) | {:.1} |",
        if per_vm < 0.5 { "met" } else { "NOT met" },
        (calls1 - calls0) / n as f64
    );
    println!(
        "\n{evaluations:.0} evaluations in all; daemon RSS {} KiB",
        proc_status_kib(pid, "VmRSS:")
    );
    if !rss.is_empty() {
        println!(
            "QEMU RSS per VM (256Mi guests): median {:.0} MiB, of which beside the guest's RAM: median {:.0} MiB, max {:.0} MiB (admission counts {} MiB)",
            percentile(&rss, 0.5),
            percentile(&beside, 0.5),
            percentile(&beside, 1.0),
            wukong_local::admission::QEMU_OVERHEAD >> 20
        );
    }
}

fn main() {
    let parts = std::env::var("BENCH_PARTS").unwrap_or("recommender,reaction,cost".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for part in parts.split(',') {
        match part.trim() {
            "recommender" => recommender(),
            "reaction" => rt.block_on(reaction(env_num("BENCH_REPS", 10) as usize)),
            "cost" => rt.block_on(cost(
                env_num("BENCH_VMS", 20) as usize,
                env_num("BENCH_SECONDS", 120),
            )),
            other => panic!("BENCH_PARTS: unknown part {other:?}"),
        }
    }
}

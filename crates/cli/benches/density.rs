//! Scale on one host: N busybox VMs (256Mi, 1 vCPU; default 20) on one daemon, all resized at
//! once (1 -> 2 vCPUs, 256Mi -> 512Mi, data disk + filesystem 128Mi -> 192Mi), each change
//! verified in its guest. Prints the total time (first PATCH -> last VM verified), the
//! slowest and the median VM, the daemon's RSS, and the daemon's CPU while the N VMs sit idle
//! (over BENCH_IDLE_SECS, default 60), per VM. Targets: all verified < 10 s; idle < 1 % of a
//! core per VM.
//!
//! Run: `cargo bench -p wukong --bench density` (BENCH_VMS=N).

#[path = "../tests/common/mod.rs"]
mod common;
// This benchmark uses the timing half of the shared module, not its operation sequence.
#[allow(dead_code)]
#[path = "shared/ops.rs"]
mod ops;
#[path = "shared/proc.rs"]
mod proc;

use std::time::{Duration, Instant};

use common::Daemon;
use hyper::Method;
use ops::{PATH, env_count, median, ms, timed};
use proc::{cpu_seconds, proc_status_kib};
use serde_json::{Value, json};
use wukong_local::client::Client;

fn spec(name: &str, cpu: u32, memory: &str, data: &str) -> Value {
    json!({"apiVersion": "vm.novasphere.dev/v1alpha1", "kind": "Wukong", "metadata": {"name": name},
           "spec": {"cpu": cpu, "memory": memory, "maxCpu": 2, "maxMemory": "512Mi",
                    "disks": [{"name": "system", "size": "128Mi"},
                              {"name": "data", "size": data, "filesystem": {"type": "ext4", "mountPath": "/data"}}],
                    "networks": [{"name": "default", "user": {}}]}})
}

fn main() {
    let n = env_count("BENCH_VMS", 20);
    let idle = Duration::from_secs(env_count("BENCH_IDLE_SECS", 60) as u64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let d = Daemon::start(&[]);
    let pid = d.pid().expect("the daemon's pid");
    let names: Vec<String> = (0..n).map(|i| format!("d{i:02}")).collect();
    let client = Client::new(&d.home.join("api.sock"));

    let booted = Instant::now();
    rt.block_on(async {
        for name in &names {
            client
                .call(Method::POST, PATH, Some(&spec(name, 1, "256Mi", "128Mi")))
                .await
                .expect("create");
        }
    });
    for name in &names {
        d.wait_for(name, "running", Duration::from_secs(900), |o| {
            o["status"]["phase"] == "Running"
                && o["status"]["observedGeneration"] == o["metadata"]["generation"]
        });
    }
    let booted = booted.elapsed();
    let rss_idle = proc_status_kib(pid, "VmRSS:");

    let c0 = cpu_seconds(pid);
    std::thread::sleep(idle);
    let idle_core = (cpu_seconds(pid) - c0) / idle.as_secs_f64();

    let started = Instant::now();
    let results: Vec<(Duration, bool)> = rt.block_on(async {
        let runs = names.iter().map(|name| {
            let client = Client::new(&d.home.join("api.sock"));
            let body = spec(name, 2, "512Mi", "192Mi");
            async move { timed(&client, name, &body).await }
        });
        futures_util::future::join_all(runs).await
    });
    let total = started.elapsed();
    let rss_after = proc_status_kib(pid, "VmRSS:");
    let failed: Vec<&String> = names
        .iter()
        .zip(&results)
        .filter(|(_, (_, ok))| !ok)
        .map(|(n, _)| n)
        .collect();
    assert!(failed.is_empty(), "not verified: {failed:?}: {}", d.log());
    // What the guests show, not only what the daemon said.
    for name in &names {
        assert_eq!(d.online_cpus(name), 2, "{name}");
    }
    let times: Vec<Duration> = results.iter().map(|(t, _)| *t).collect();
    let slowest = *times.iter().max().unwrap();

    println!("\n{n} busybox VMs on one daemon, this machine (2 cores, TCG)\n");
    println!("| figure | value | target |");
    println!("| --- | --- | --- |");
    println!(
        "| all {n} booted (created at once) | {:.1} s | - |",
        booted.as_secs_f64()
    );
    println!(
        "| all resized at once (vCPU + memory + disk), first PATCH -> last verified | {} | < 10 s: {} |",
        ms(total),
        if total < Duration::from_secs(10) {
            "met"
        } else {
            "NOT met"
        }
    );
    println!("| slowest VM | {} | - |", ms(slowest));
    println!("| median VM | {} | - |", ms(median(&times)));
    println!(
        "| daemon RSS, {n} VMs idle / after the resize | {} MiB / {} MiB | - |",
        rss_idle / 1024,
        rss_after / 1024
    );
    println!(
        "| daemon CPU, {n} VMs idle for {} s | {:.2} % of a core, {:.3} % per VM | < 1 % per VM: {} |",
        idle.as_secs(),
        idle_core * 100.0,
        idle_core * 100.0 / n as f64,
        if idle_core * 100.0 / (n as f64) < 1.0 {
            "met"
        } else {
            "NOT met"
        }
    );
}

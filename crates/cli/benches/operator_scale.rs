//! The operator at scale: a fake API server in its own process holding N Wukongs (10,000 by
//! default, `WUKONG_BENCH_VMS` to change), the operator in another (`wukong operator`).
//! Prints the time to reconcile them all from the operator's start, the reaction time to one
//! change among them (until the change is verified and in status), and the operator's peak
//! RSS, then deletes the namespace and times until every Wukong is gone. Targets: < 60 s,
//! < 1 s, < 300 MB. Run: `cargo bench -p wukong --bench operator_scale`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_wukong");
const NS: &str = "bench";

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http(url: &str, method: &str, ct: &str, body: Option<&Value>) -> Value {
    // A tiny HTTP/1.1 client over std (the fake server speaks plain HTTP on loopback).
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = std::net::TcpStream::connect(host).unwrap();
    let body = body
        .map(|b| serde_json::to_vec(b).unwrap())
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut rest = body;
        let mut joined = String::new();
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            joined.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        joined
    } else {
        body.to_string()
    };
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU seconds a process has used (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of /proc/PID/stat; 100 ticks per second on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// The fake API server's own binary (not part of `wukong`), built next to it in the
/// benchmark's profile.
fn fake_apiserver() -> std::path::PathBuf {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "-q",
            "-p",
            "wukong-kvsim",
            "--bin",
            "wukong-fake-apiserver",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "building wukong-fake-apiserver");
    std::path::Path::new(BIN).with_file_name("wukong-fake-apiserver")
}

fn main() {
    let n: usize = std::env::var("WUKONG_BENCH_VMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut api = Command::new(fake_apiserver())
        .arg("127.0.0.1:0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(api.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let api_pid = api.id();
    let _api = Killed(api);
    let base = line.trim().to_string();
    let namespace = format!("{base}/api/v1/namespaces/{NS}");
    // The install: the Wukong CRD as deploy/ ships it.
    let crd: Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/crd.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    http(
        &format!("{base}/apis/apiextensions.k8s.io/v1/customresourcedefinitions"),
        "POST",
        "application/json",
        Some(&crd),
    );
    http(
        &format!("{base}/api/v1/namespaces"),
        "POST",
        "application/json",
        Some(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})),
    );
    let wukongs = format!("{base}/apis/vm.novasphere.dev/v1alpha1/namespaces/{NS}/wukongs");
    let created = Instant::now();
    for i in 0..n {
        let w = json!({"apiVersion": "vm.novasphere.dev/v1alpha1", "kind": "Wukong",
            "metadata": {"name": format!("vm-{i:05}")},
            "spec": {"cpu": 1, "memory": "1Gi", "maxCpu": 4, "maxMemory": "2Gi",
                     "disks": [{"name": "system", "size": "1Gi"}]}});
        http(&wukongs, "POST", "application/json", Some(&w));
    }
    eprintln!(
        "{n} Wukongs created in {:.1} s",
        created.elapsed().as_secs_f64()
    );

    let start = Instant::now();
    let op = Command::new(BIN)
        .args([
            "operator",
            "--api-server",
            &base,
            "--metrics-addr",
            "127.0.0.1:0",
            "--namespace",
            NS,
        ])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let pid = op.id();
    let _op = Killed(op);
    let deadline = start + Duration::from_secs(600);
    loop {
        let c = http(
            &format!("{base}/fake/converged"),
            "GET",
            "application/json",
            None,
        );
        if c["converged"].as_u64() == Some(n as u64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all converged after 10 minutes: {c}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let all = start.elapsed();
    let stats = http(
        &format!("{base}/fake/converged"),
        "GET",
        "application/json",
        None,
    );
    let (op_cpu, api_cpu) = (cpu_seconds(pid), cpu_seconds(api_pid));

    // One change among them.
    let one = format!("{wukongs}/vm-{:05}", n / 2);
    let changed = Instant::now();
    let w = http(
        &one,
        "PATCH",
        "application/merge-patch+json",
        Some(&json!({"spec": {"cpu": 2}})),
    );
    let generation = w["metadata"]["generation"].clone();
    loop {
        let w = http(&one, "GET", "application/json", None);
        if w["status"]["observedGeneration"] == generation
            && w["status"]["guest"]["cpusOnline"] == 2
        {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(120),
            "the change never landed: {}",
            w["status"]
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let reaction = changed.elapsed();

    // Deleting them all, as `kubectl delete namespace` does: every cleanup runs once and the
    // operator makes nothing new in the terminating namespace.
    let tally = |what: &str| {
        http(
            &format!("{base}/fake/converged"),
            "GET",
            "application/json",
            None,
        )[what]
            .as_u64()
            .unwrap_or(0)
    };
    let creates_before = tally("creates");
    let deleting = Instant::now();
    http(&namespace, "DELETE", "application/json", None);
    loop {
        let left = tally("total");
        if left == 0 && http(&namespace, "GET", "application/json", None)["code"] == 404 {
            break;
        }
        assert!(
            deleting.elapsed() < Duration::from_secs(600),
            "{left} Wukongs still there after 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let deleted = deleting.elapsed();
    let creates_while_deleting = tally("creates") - creates_before;
    let rss = peak_rss_mb(pid);
    println!("operator at scale ({n} Wukongs, fake API server in its own process)");
    println!(
        "  reconcile all from start : {:>8.1} s   (target < 60 s)",
        all.as_secs_f64()
    );
    println!(
        "  reaction to one change   : {:>8.0} ms  (target < 1000 ms)",
        reaction.as_secs_f64() * 1000.0
    );
    println!(
        "  operator peak RSS        : {:>8.0} MB  (target < 300 MB)",
        rss
    );
    println!(
        "  delete the namespace     : {:>8.1} s   until every Wukong and the namespace are gone; {creates_while_deleting} create(s) tried meanwhile",
        deleted.as_secs_f64()
    );
    println!(
        "  to converge all: {} API requests; CPU: operator {op_cpu:.1} s, API server {api_cpu:.1} s",
        stats["requests"]
    );
}

//! The operator at scale: N Wukongs (10,000 by default, `WUKONG_BENCH_VMS` to change) on an
//! API server with the simulated KubeVirt beside it, the operator in its own process
//! (`wukong operator`, as its ServiceAccount on the real server). Prints the time to reconcile
//! them all from the operator's start, the reaction time to one change among them (until the
//! change is verified and in status), the operator's peak RSS, the requests and CPU it took,
//! then deletes the namespace and times until every Wukong is gone.
//!
//! Runs on the fake API server (`wukong-fake-apiserver`: fake + simulator in a process of
//! their own) and, when `KUBEBUILDER_ASSETS` names a directory with kube-apiserver and etcd
//! (and kube-controller-manager, which the namespace deletion needs), also on a real control
//! plane with the simulator in this process; the figures are printed side by side.
//! Targets (fake): < 60 s, < 1 s, < 300 MB; aims on the real server: < 120 s, < 1 s,
//! < 300 MB. Run: `cargo bench -p wukong --bench operator_scale`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, Config};
use serde_json::{Value, json};
use tokio::sync::watch;
use wukong_envtest::ControlPlane;

const BIN: &str = env!("CARGO_BIN_EXE_wukong");
const NS: &str = "bench";
const ADMIN: &str = "bench-admin-token-0123456789abcdef";
const OPERATOR: &str = "bench-operator-token-0123456789abcdef";

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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

/// The API server under the run, with what runs beside it.
enum Server {
    /// `wukong-fake-apiserver` (fake + simulator) in its own process.
    Fake { process: Killed },
    /// etcd + kube-apiserver (+ kube-controller-manager); the simulator in this process.
    Real {
        plane: ControlPlane,
        _kubevirt: wukong_kvsim::Running,
    },
}

impl Server {
    fn name(&self) -> &'static str {
        match self {
            Server::Fake { .. } => "fake API server + simulator, one process of their own",
            Server::Real { .. } => {
                "real kube-apiserver v1.32 + etcd; simulator in the bench's process"
            }
        }
    }

    /// Processes whose CPU counts as the server's.
    fn pids(&self) -> Vec<u32> {
        match self {
            Server::Fake { process, .. } => vec![process.0.id()],
            Server::Real { plane, .. } => plane.pids(),
        }
    }

    /// Requests the server has served, and how many VM and PVC creates it was asked for
    /// (made or refused).
    async fn tally(&self, admin: &Client) -> (u64, u64) {
        let text = |path: &str| {
            let req = http::Request::get(path).body(Vec::new()).unwrap();
            admin.request_text(req)
        };
        match self {
            Server::Fake { .. } => {
                let v: Value = serde_json::from_str(&text("/fake/converged").await.unwrap())
                    .unwrap_or_default();
                (
                    v["requests"].as_u64().unwrap_or(0),
                    v["creates"].as_u64().unwrap_or(0),
                )
            }
            Server::Real { .. } => {
                let metrics = text("/metrics").await.unwrap_or_default();
                let mut requests = 0.0;
                let mut creates = 0.0;
                for line in metrics.lines() {
                    let Some(labels) = line.strip_prefix("apiserver_request_total{") else {
                        continue;
                    };
                    let value: f64 = line
                        .rsplit_once(' ')
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0.0);
                    requests += value;
                    if labels.contains("verb=\"POST\"")
                        && (labels.contains("resource=\"persistentvolumeclaims\"")
                            || labels.contains("resource=\"virtualmachines\""))
                    {
                        creates += value;
                    }
                }
                (requests as u64, creates as u64)
            }
        }
    }
}

/// Starts the fake: returns it with an admin client and the operator's arguments/env.
async fn fake() -> (Server, Client, Vec<String>, Vec<(String, String)>) {
    let mut api = Command::new(fake_apiserver())
        .arg("127.0.0.1:0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(api.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().to_string();
    let admin = Client::try_from(Config::new(url.parse().unwrap())).unwrap();
    let objects = [
        wukong_envtest::deploy("crd.yaml"),
        vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})],
    ];
    for o in objects.iter().flatten() {
        wukong_envtest::create(&admin, o).await.unwrap();
    }
    let args = vec!["--api-server".to_string(), url.clone()];
    let server = Server::Fake {
        process: Killed(api),
    };
    (server, admin, args, Vec::new())
}

/// Starts a real control plane with the install and the simulator.
async fn real(assets: &std::path::Path) -> (Server, Client, Vec<String>, Vec<(String, String)>) {
    let operator = wukong_envtest::operator_user();
    let groups = wukong_envtest::sa_groups(&operator);
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    let plane = ControlPlane::start(
        assets,
        &[
            (ADMIN, "admin", &["system:masters"]),
            (OPERATOR, &operator, &groups),
        ],
    );
    let admin = plane.client(ADMIN).await;
    wukong_envtest::install(&admin).await;
    wukong_envtest::create(
        &admin,
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
    )
    .await
    .unwrap();
    // KubeVirt's controllers resync rarely; the watches do the work.
    let kubevirt = wukong_kvsim::start_with(
        admin.clone(),
        wukong_kvsim::Options {
            resync: Some(Duration::from_secs(300)),
        },
    )
    .await
    .unwrap();
    let kubeconfig = plane.kubeconfig("operator", OPERATOR);
    let env = vec![("KUBECONFIG".to_string(), kubeconfig.display().to_string())];
    let server = Server::Real {
        plane,
        _kubevirt: kubevirt,
    };
    (server, admin, Vec::new(), env)
}

/// The Wukongs of the namespace as a watch sees them, and a tick on every change.
struct Seen {
    objects: Arc<Mutex<HashMap<String, Value>>>,
    tick: watch::Receiver<u64>,
    _task: tokio::task::JoinHandle<()>,
}

impl Seen {
    fn start(client: &Client) -> Seen {
        let api: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            NS,
            &wukong_envtest::resource_of("vm.novasphere.dev/v1alpha1", "Wukong"),
        );
        let objects: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
        let (tx, tick) = watch::channel(0u64);
        let seen = objects.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default()).boxed();
            while let Some(e) = events.next().await {
                let mut map = seen.lock().unwrap();
                match e {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                        let name = o.metadata.name.clone().unwrap_or_default();
                        map.insert(name, serde_json::to_value(o).unwrap());
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        map.remove(o.metadata.name.as_deref().unwrap_or_default());
                    }
                    Ok(watcher::Event::Init) => map.clear(),
                    _ => {}
                }
                drop(map);
                tx.send_modify(|t| *t += 1);
            }
        });
        Seen {
            objects,
            tick,
            _task: task,
        }
    }

    /// Waits until `done` holds of what the watch has seen; false after `limit`.
    async fn until(
        &mut self,
        limit: Duration,
        done: impl Fn(&HashMap<String, Value>) -> bool,
    ) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if done(&self.objects.lock().unwrap()) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, self.tick.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    /// How many of the Wukongs seen are converged.
    fn converged(&self) -> usize {
        self.objects
            .lock()
            .unwrap()
            .values()
            .filter(|w| converged(w))
            .count()
    }
}

fn converged(w: &Value) -> bool {
    w["status"]["observedGeneration"] == w["metadata"]["generation"]
        && w["status"]["phase"] == "Running"
}

/// One run of the benchmark against `server`.
async fn run(
    server: Server,
    admin: Client,
    args: Vec<String>,
    env: Vec<(String, String)>,
    n: usize,
) {
    let wukongs: Api<DynamicObject> = Api::namespaced_with(
        admin.clone(),
        NS,
        &wukong_envtest::resource_of("vm.novasphere.dev/v1alpha1", "Wukong"),
    );
    let created = Instant::now();
    futures_util::stream::iter(0..n)
        .map(|i| {
            let wukongs = wukongs.clone();
            async move {
                let w: DynamicObject = serde_json::from_value(json!({
                    "apiVersion": "vm.novasphere.dev/v1alpha1", "kind": "Wukong",
                    "metadata": {"name": format!("vm-{i:05}")},
                    "spec": {"cpu": 1, "memory": "1Gi", "maxCpu": 4, "maxMemory": "2Gi",
                             "disks": [{"name": "system", "size": "1Gi"}]}}))
                .unwrap();
                wukongs.create(&PostParams::default(), &w).await.map(|_| ())
            }
        })
        .buffer_unordered(8)
        .try_collect::<()>()
        .await
        .unwrap();
    eprintln!(
        "{n} Wukongs created in {:.1} s",
        created.elapsed().as_secs_f64()
    );
    let mut seen = Seen::start(&admin);
    let (requests_before, _) = server.tally(&admin).await;
    let cpu_before: f64 = server.pids().into_iter().map(cpu_seconds).sum();
    let self_before = cpu_seconds(std::process::id());

    let start = Instant::now();
    let op = Command::new(BIN)
        .arg("operator")
        .args(&args)
        .args(["--metrics-addr", "127.0.0.1:0", "--namespace", NS])
        .envs(env)
        // The server's self-signed certificate is not verified: said once here, not per connection.
        .env("RUST_LOG", "warn,kube_client::client::tls=error")
        .spawn()
        .unwrap();
    let pid = op.id();
    let _op = Killed(op);
    // Progress once a minute; after the limit the figures so far, not a panic (a loaded
    // 2-core machine may be far from the aims, and how far is the figure).
    let limit = Duration::from_secs(
        std::env::var("WUKONG_BENCH_LIMIT_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1800),
    );
    while !seen
        .until(Duration::from_secs(60), |m| {
            m.len() == n && m.values().all(converged)
        })
        .await
    {
        let done = seen.converged();
        eprintln!(
            "  … {done} of {n} converged after {:.0} s",
            start.elapsed().as_secs_f64()
        );
        if start.elapsed() >= limit {
            println!(
                "operator at scale: {n} Wukongs, {}: NOT all converged — {done} of {n} after {:.0} s (limit); CPU so far: operator {:.1} s, API server {:.1} s",
                server.name(),
                start.elapsed().as_secs_f64(),
                cpu_seconds(pid),
                server.pids().into_iter().map(cpu_seconds).sum::<f64>() - cpu_before,
            );
            return;
        }
    }
    let all = start.elapsed();
    let (requests, _) = server.tally(&admin).await;
    let op_cpu = cpu_seconds(pid);
    let api_cpu: f64 = server.pids().into_iter().map(cpu_seconds).sum::<f64>() - cpu_before;
    let self_cpu = cpu_seconds(std::process::id()) - self_before;
    // Said at once too: a later phase that fails must not take these figures with it.
    eprintln!(
        "  all {n} converged in {:.1} s: {} requests; CPU operator {op_cpu:.1} s, API server {api_cpu:.1} s, this process {self_cpu:.1} s",
        all.as_secs_f64(),
        requests - requests_before
    );

    // One change among them.
    let one = format!("vm-{:05}", n / 2);
    let changed = Instant::now();
    let w = wukongs
        .patch(
            &one,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"cpu": 2}})),
        )
        .await
        .unwrap();
    let generation = json!(w.metadata.generation);
    let landed = seen
        .until(Duration::from_secs(120), |m| {
            m.get(&one).is_some_and(|w| {
                w["status"]["observedGeneration"] == generation
                    && w["status"]["guest"]["cpusOnline"] == 2
            })
        })
        .await;
    assert!(landed, "the change to {one} never landed");
    let reaction = changed.elapsed();
    eprintln!(
        "  one change landed in {:.0} ms",
        reaction.as_secs_f64() * 1000.0
    );

    // Deleting them all, as `kubectl delete namespace` does: every cleanup runs once and the
    // operator makes nothing new in the terminating namespace.
    let namespaces: Api<DynamicObject> = Api::all_with(
        admin.clone(),
        &wukong_envtest::resource_of("v1", "Namespace"),
    );
    let deletion = match &server {
        Server::Real { plane, .. } if !plane.controllers => None,
        _ => {
            let (_, creates_before) = server.tally(&admin).await;
            let deleting = Instant::now();
            namespaces.delete(NS, &Default::default()).await.unwrap();
            let gone = seen
                .until(Duration::from_secs(1200), |m| m.is_empty())
                .await;
            assert!(
                gone,
                "Wukongs left 20 minutes after the namespace was deleted"
            );
            let deadline = Instant::now() + Duration::from_secs(600);
            // The namespace itself goes once its last objects are gone: a watch on it.
            let mut gone = watcher(
                namespaces.clone(),
                watcher::Config::default().fields(&format!("metadata.name={NS}")),
            )
            .boxed();
            while namespaces.get_opt(NS).await.unwrap().is_some() {
                assert!(
                    Instant::now() < deadline,
                    "namespace {NS} still there after 10 minutes"
                );
                let _ = tokio::time::timeout(Duration::from_secs(5), gone.next()).await;
            }
            let (_, creates_after) = server.tally(&admin).await;
            Some((deleting.elapsed(), creates_after - creates_before))
        }
    };
    let rss = peak_rss_mb(pid);
    let real = matches!(server, Server::Real { .. });
    let aim = if real { "aim" } else { "target" };
    println!("operator at scale: {n} Wukongs, {}", server.name());
    println!(
        "  reconcile all from start : {:>8.1} s   ({aim} < {} s)",
        all.as_secs_f64(),
        if real { 120 } else { 60 }
    );
    println!(
        "  reaction to one change   : {:>8.0} ms  ({aim} < 1000 ms)",
        reaction.as_secs_f64() * 1000.0
    );
    println!("  operator peak RSS        : {rss:>8.0} MB  ({aim} < 300 MB)");
    match deletion {
        Some((took, creates)) => println!(
            "  delete the namespace     : {:>8.1} s   until every Wukong and the namespace are gone; {creates} VM/PVC create(s) asked for meanwhile",
            took.as_secs_f64()
        ),
        None => println!(
            "  delete the namespace     : not measured (no kube-controller-manager in KUBEBUILDER_ASSETS: a namespace is never emptied)"
        ),
    }
    println!(
        "  to converge all          : {} API requests ({:.1} per Wukong); CPU: operator {op_cpu:.1} s, API server {api_cpu:.1} s{}",
        requests - requests_before,
        (requests - requests_before) as f64 / n as f64,
        if real {
            format!(", bench process (simulator + watch) {self_cpu:.1} s")
        } else {
            String::new()
        }
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("WUKONG_BENCH_VMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let (server, admin, args, env) = fake().await;
    run(server, admin, args, env, n).await;
    match std::env::var_os("KUBEBUILDER_ASSETS") {
        Some(assets) => {
            let (server, admin, args, env) = real(std::path::Path::new(&assets)).await;
            run(server, admin, args, env, n).await;
        }
        None => println!(
            "KUBEBUILDER_ASSETS is not set: the run on a real kube-apiserver did not take place"
        ),
    }
}

//! Live vs restart, on real QEMU guests: for each operation, the time from the apply request
//! to the change verified in the guest (median and max of repeated runs), next to the same
//! change made by a restart (`wukong serve --no-live`), and the longest gap of a 10 ms
//! heartbeat in the live guest. Run: `cargo bench -p wukong --bench live_vs_restart`
//! (BENCH_REPS=N repetitions, default 5; the restart way runs min(N, 3)).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::Daemon;
use hyper::Method;
use serde_json::{Value, json};
use wukong_local::client::Client;
use wukong_local::store::StoredEvent;

const PATH: &str = "/apis/vm.novasphere.dev/v1alpha1/namespaces/default/wukongs";

#[derive(Clone)]
struct State {
    cpu: u32,
    memory: &'static str,
    data: u64,
    extra_disk: bool,
    extra_nic: bool,
}

impl State {
    fn spec(&self) -> Value {
        let mut disks = vec![
            json!({"name": "system", "size": "128Mi"}),
            json!({"name": "data", "size": format!("{}Mi", self.data), "filesystem": {"type": "ext4", "mountPath": "/data"}}),
        ];
        if self.extra_disk {
            disks.push(json!({"name": "extra", "size": "64Mi"}));
        }
        let mut nets = vec![json!({"name": "default", "user": {}})];
        if self.extra_nic {
            nets.push(json!({"name": "extra", "user": {}, "mac": "52:54:00:00:be:01"}));
        }
        json!({"apiVersion": "vm.novasphere.dev/v1alpha1", "kind": "Wukong", "metadata": {"name": "bench"},
               "spec": {"cpu": self.cpu, "memory": self.memory, "maxCpu": 8, "maxMemory": "2Gi",
                        "restartPolicy": "Automatic", "disks": disks, "networks": nets}})
    }
}

/// PATCHes the spec and waits for the operation's end: (elapsed, succeeded).
async fn timed(client: &Client, body: &Value) -> (Duration, bool) {
    let t0 = Instant::now();
    let (_, seq) = client
        .call(Method::PATCH, &format!("{PATH}/bench"), Some(body))
        .await
        .expect("patch");
    let mut lines = client
        .stream(&format!("{PATH}/bench/events?watch=true&since={seq}"))
        .await
        .expect("watch");
    while let Some(line) = lines.next().await {
        if let Ok(e) = serde_json::from_str::<StoredEvent>(&line)
            && let wukong_engine::Event::Finished { succeeded, .. } = e.event
        {
            return (t0.elapsed(), succeeded);
        }
    }
    (t0.elapsed(), false)
}

type Step = (&'static str, fn(&mut State));

fn steps() -> Vec<Step> {
    vec![
        ("CPU add (1 -> 2)", |s| s.cpu = 2),
        ("CPU remove (2 -> 1)", |s| s.cpu = 1),
        ("memory grow (512Mi -> 1Gi)", |s| s.memory = "1Gi"),
        ("memory shrink (1Gi -> 512Mi)", |s| s.memory = "512Mi"),
        ("disk grow + filesystem (+64Mi)", |s| s.data += 64),
        ("disk attach (64Mi)", |s| s.extra_disk = true),
        ("disk detach", |s| s.extra_disk = false),
        ("NIC add", |s| s.extra_nic = true),
        ("NIC remove", |s| s.extra_nic = false),
    ]
}

/// Creates the VM, optionally starts the heartbeat, then runs every step `reps` times.
async fn run(d: &Daemon, reps: usize, heartbeat: bool) -> Vec<Vec<Duration>> {
    let client = Client::new(&d.home.join("api.sock"));
    let mut state = State {
        cpu: 1,
        memory: "512Mi",
        data: 128,
        extra_disk: false,
        extra_nic: false,
    };
    client
        .call(Method::POST, PATH, Some(&state.spec()))
        .await
        .expect("create");
    d.wait_for("bench", "ready", Duration::from_secs(120), |o| {
        o["status"]["phase"] == "Running"
            && o["status"]["observedGeneration"] == o["metadata"]["generation"]
    });
    if heartbeat {
        d.sh("bench", "(while :; do read u i < /proc/uptime; echo $u >> /run/heartbeat; usleep 10000; done) </dev/null >/dev/null 2>&1 &");
    }
    let mut times = vec![Vec::new(); steps().len()];
    for _ in 0..reps {
        for (i, (name, change)) in steps().into_iter().enumerate() {
            change(&mut state);
            let (t, ok) = timed(&client, &state.spec()).await;
            assert!(ok, "{name} failed: {}", d.log());
            times[i].push(t);
        }
    }
    times
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn main() {
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let live = Daemon::start(&[]);
    let cold = Daemon::start(&["--no-live"]);
    let live_times = rt.block_on(run(&live, reps, true));
    let beats = live.exec("bench", &["cat", "/run/heartbeat"]);
    let ticks: Vec<f64> = beats
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let gap = ticks
        .windows(2)
        .map(|w| ((w[1] - w[0]) * 1000.0).round() as u64)
        .max()
        .unwrap_or(0);
    let cold_times = rt.block_on(run(&cold, reps.min(3), false));

    let targets: [Option<u64>; 9] = [
        Some(1000),
        None,
        Some(500),
        Some(3000),
        Some(1000),
        Some(500),
        Some(500),
        Some(500),
        Some(500),
    ];
    let mut rows = vec![vec![
        "operation".to_string(),
        "live median".into(),
        "live max".into(),
        "restart median".into(),
        "restart max".into(),
        "speed-up".into(),
        "target (live)".into(),
    ]];
    for (i, (name, _)) in steps().into_iter().enumerate() {
        let (lm, lx) = (median(&live_times[i]), *live_times[i].iter().max().unwrap());
        let (cm, cx) = (median(&cold_times[i]), *cold_times[i].iter().max().unwrap());
        let target = targets[i].map_or("-".to_string(), |t| {
            format!(
                "≤ {t} ms: {}",
                if lm.as_millis() as u64 <= t && cm >= lm * 3 {
                    "met"
                } else {
                    "NOT met"
                }
            )
        });
        rows.push(vec![
            name.into(),
            ms(lm),
            ms(lx),
            ms(cm),
            ms(cx),
            format!("{:.1}x", cm.as_secs_f64() / lm.as_secs_f64()),
            target,
        ]);
    }
    println!(
        "\nlive vs restart on this machine ({reps} live runs, {} restart runs each; apply request -> verified in the guest)\n",
        reps.min(3)
    );
    for r in &rows {
        println!("| {} |", r.join(" | "));
    }
    println!(
        "\nheartbeat (10 ms period) during the live runs: {} beats, longest gap {gap} ms (aim ≤ 100 ms)",
        ticks.len()
    );
}

//! Live vs restart, on real QEMU guests: for each operation, the time from the apply request
//! to the change verified in the guest (median and max of repeated runs), next to the same
//! change made by a restart (`wukong serve --no-live`), and the longest gap of a 10 ms
//! heartbeat in the live guest. Run: `cargo bench -p wukong --bench live_vs_restart`
//! (BENCH_REPS=N repetitions, default 5; the restart way runs BENCH_RESTART_REPS, default
//! min(N, 3)). `BENCH_GUEST=stock` runs it on the stock Debian 12 guest instead of the busybox
//! one (memory 1Gi <-> 2Gi there; a restart costs a ~30 s boot).

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
    guest: Guest,
}

/// The guest the benchmark runs on.
#[derive(Clone)]
struct Guest {
    /// The system disk's spec.
    system: Value,
    /// Memory at boot, and grown.
    memory: (&'static str, &'static str),
    max_memory: &'static str,
    /// The heartbeat loop in the guest's shell.
    heartbeat: &'static str,
}

impl Guest {
    fn busybox() -> Guest {
        Guest {
            system: json!({"name": "system", "size": "128Mi"}),
            memory: ("512Mi", "1Gi"),
            max_memory: "2Gi",
            heartbeat: "(while :; do read u i < /proc/uptime; echo $u >> /run/heartbeat; usleep 10000; done) </dev/null >/dev/null 2>&1 &",
        }
    }

    fn stock(img: &common::StockImage) -> Guest {
        Guest {
            system: json!({"name": "system", "size": "2Gi", "boot": true, "source": {"image": img.disk()}}),
            memory: ("1Gi", "2Gi"),
            max_memory: "4Gi",
            heartbeat: "(while :; do read u i < /proc/uptime; echo $u >> /run/heartbeat; sleep 0.01; done) </dev/null >/dev/null 2>&1 &",
        }
    }
}

impl State {
    fn spec(&self) -> Value {
        let mut disks = vec![
            self.guest.system.clone(),
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
               "spec": {"cpu": self.cpu, "memory": self.memory, "maxCpu": 8, "maxMemory": self.guest.max_memory,
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

type Step = (String, fn(&mut State));

fn steps(g: &Guest) -> Vec<Step> {
    let (boot, grown) = g.memory;
    let step = |name: &str, f: fn(&mut State)| (name.to_string(), f);
    vec![
        step("CPU add (1 -> 2)", |s| s.cpu = 2),
        step("CPU remove (2 -> 1)", |s| s.cpu = 1),
        (format!("memory grow ({boot} -> {grown})"), |s| {
            s.memory = s.guest.memory.1
        }),
        (format!("memory shrink ({grown} -> {boot})"), |s| {
            s.memory = s.guest.memory.0
        }),
        step("disk grow + filesystem (+64Mi)", |s| s.data += 64),
        step("disk attach (64Mi)", |s| s.extra_disk = true),
        step("disk detach", |s| s.extra_disk = false),
        step("NIC add", |s| s.extra_nic = true),
        step("NIC remove", |s| s.extra_nic = false),
    ]
}

/// Creates the VM, optionally starts the heartbeat, then runs every step `reps` times.
async fn run(d: &Daemon, guest: &Guest, reps: usize, heartbeat: bool) -> Vec<Vec<Duration>> {
    let client = Client::new(&d.home.join("api.sock"));
    let mut state = State {
        cpu: 1,
        memory: guest.memory.0,
        data: 128,
        extra_disk: false,
        extra_nic: false,
        guest: guest.clone(),
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
        d.sh("bench", guest.heartbeat);
    }
    let mut times = vec![Vec::new(); steps(guest).len()];
    for _ in 0..reps {
        for (i, (name, change)) in steps(guest).into_iter().enumerate() {
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
    let restart_reps: usize = std::env::var("BENCH_RESTART_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(reps.min(3));
    let stock = std::env::var("BENCH_GUEST").is_ok_and(|g| g == "stock");
    let (guest, mut args) = if stock {
        let img = common::stock_image();
        (Guest::stock(&img), img.serve_args())
    } else {
        (Guest::busybox(), Vec::new())
    };
    let live = Daemon::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    args.push("--no-live".into());
    let cold = Daemon::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let live_times = rt.block_on(run(&live, &guest, reps, true));
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
    let cold_times = rt.block_on(run(&cold, &guest, restart_reps, false));

    let mut targets: [Option<u64>; 9] = [
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
    if stock {
        // The real-guests issue's targets on the stock guest: memory grow < 1.5 s.
        targets[2] = Some(1500);
        targets[3] = None;
    }
    let mut rows = vec![vec![
        "operation".to_string(),
        "live median".into(),
        "live max".into(),
        "restart median".into(),
        "restart max".into(),
        "speed-up".into(),
        "target (live)".into(),
    ]];
    for (i, (name, _)) in steps(&guest).into_iter().enumerate() {
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
            name,
            ms(lm),
            ms(lx),
            ms(cm),
            ms(cx),
            format!("{:.1}x", cm.as_secs_f64() / lm.as_secs_f64()),
            target,
        ]);
    }
    println!(
        "\nlive vs restart on this machine, {} guest ({reps} live runs, {restart_reps} restart runs each; apply request -> verified in the guest)\n",
        if stock { "stock Debian 12" } else { "busybox" }
    );
    for r in &rows {
        println!("| {} |", r.join(" | "));
    }
    println!(
        "\nheartbeat (10 ms period) during the live runs: {} beats, longest gap {gap} ms (aim ≤ 100 ms)",
        ticks.len()
    );
}

//! What the live benchmarks share: the VM they change, the sequence of live operations, and
//! timing one operation through the daemon's API (apply request -> the operation's end, which
//! is the change verified in the guest).

use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{Value, json};
use wukong_local::client::Client;
use wukong_local::store::StoredEvent;

pub const PATH: &str = "/apis/vm.novasphere.dev/v1alpha1/namespaces/default/wukongs";

/// The guest a benchmark runs on.
#[derive(Clone)]
pub struct Guest {
    /// Whether this is the stock Debian 12 guest (else busybox).
    pub stock: bool,
    /// The system disk's spec.
    pub system: Value,
    /// Memory at boot, and grown.
    pub memory: (&'static str, &'static str),
    pub max_memory: &'static str,
    /// The heartbeat loop in the guest's shell: appends the guest's uptime to /run/heartbeat
    /// every 10 ms.
    pub heartbeat: &'static str,
}

impl Guest {
    pub fn busybox() -> Guest {
        Guest {
            stock: false,
            system: json!({"name": "system", "size": "128Mi"}),
            memory: ("512Mi", "1Gi"),
            max_memory: "2Gi",
            heartbeat: "(while :; do read u i < /proc/uptime; echo $u >> /run/heartbeat; usleep 10000; done) </dev/null >/dev/null 2>&1 &",
        }
    }

    pub fn stock(img: &super::common::StockImage) -> Guest {
        Guest {
            stock: true,
            system: json!({"name": "system", "size": "2Gi", "boot": true, "source": {"image": img.disk()}}),
            memory: ("1Gi", "2Gi"),
            max_memory: "4Gi",
            heartbeat: "(while :; do read u i < /proc/uptime; echo $u >> /run/heartbeat; sleep 0.01; done) </dev/null >/dev/null 2>&1 &",
        }
    }

    /// The guest `BENCH_GUEST` names (`stock`, else busybox) and the daemon arguments it needs.
    pub fn from_env() -> (Guest, Vec<String>) {
        if std::env::var("BENCH_GUEST").is_ok_and(|g| g == "stock") {
            let img = super::common::stock_image();
            (Guest::stock(&img), img.serve_args())
        } else {
            (Guest::busybox(), Vec::new())
        }
    }

    pub fn label(&self) -> &'static str {
        if self.stock {
            "stock Debian 12"
        } else {
            "busybox"
        }
    }
}

/// The changeable part of the spec.
#[derive(Clone)]
pub struct State {
    pub cpu: u32,
    pub memory: &'static str,
    /// The data disk's size in MiB.
    pub data: u64,
    pub extra_disk: bool,
    pub extra_nic: bool,
    pub guest: Guest,
}

/// The MAC of the NIC the benchmarks add.
pub const EXTRA_MAC: &str = "52:54:00:00:be:01";

impl State {
    pub fn new(guest: &Guest) -> State {
        State {
            cpu: 1,
            memory: guest.memory.0,
            data: 128,
            extra_disk: false,
            extra_nic: false,
            guest: guest.clone(),
        }
    }

    pub fn spec(&self, name: &str) -> Value {
        let mut disks = vec![
            self.guest.system.clone(),
            json!({"name": "data", "size": format!("{}Mi", self.data), "filesystem": {"type": "ext4", "mountPath": "/data"}}),
        ];
        if self.extra_disk {
            disks.push(json!({"name": "extra", "size": "64Mi"}));
        }
        let mut nets = vec![json!({"name": "default", "user": {}})];
        if self.extra_nic {
            nets.push(json!({"name": "extra", "user": {}, "mac": EXTRA_MAC}));
        }
        json!({"apiVersion": "vm.novasphere.dev/v1alpha1", "kind": "Wukong", "metadata": {"name": name},
               "spec": {"cpu": self.cpu, "memory": self.memory, "maxCpu": 8, "maxMemory": self.guest.max_memory,
                        "restartPolicy": "Automatic", "disks": disks, "networks": nets}})
    }
}

/// One live operation of the sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    CpuAdd,
    CpuRemove,
    MemoryGrow,
    MemoryShrink,
    DiskGrow,
    Attach,
    Detach,
    NicAdd,
    NicRemove,
}

/// The sequence, in order: each undoes the one before, so it can repeat.
pub const OPS: [Op; 9] = [
    Op::CpuAdd,
    Op::CpuRemove,
    Op::MemoryGrow,
    Op::MemoryShrink,
    Op::DiskGrow,
    Op::Attach,
    Op::Detach,
    Op::NicAdd,
    Op::NicRemove,
];

impl Op {
    pub fn name(self, g: &Guest) -> String {
        let (boot, grown) = g.memory;
        match self {
            Op::CpuAdd => "CPU add (1 -> 2)".into(),
            Op::CpuRemove => "CPU remove (2 -> 1)".into(),
            Op::MemoryGrow => format!("memory grow ({boot} -> {grown})"),
            Op::MemoryShrink => format!("memory shrink ({grown} -> {boot})"),
            Op::DiskGrow => "disk grow + filesystem (+64Mi)".into(),
            Op::Attach => "disk attach (64Mi)".into(),
            Op::Detach => "disk detach".into(),
            Op::NicAdd => "NIC add".into(),
            Op::NicRemove => "NIC remove".into(),
        }
    }

    /// Makes the change in the spec's state.
    pub fn apply(self, s: &mut State) {
        match self {
            Op::CpuAdd => s.cpu = 2,
            Op::CpuRemove => s.cpu = 1,
            Op::MemoryGrow => s.memory = s.guest.memory.1,
            Op::MemoryShrink => s.memory = s.guest.memory.0,
            Op::DiskGrow => s.data += 64,
            Op::Attach => s.extra_disk = true,
            Op::Detach => s.extra_disk = false,
            Op::NicAdd => s.extra_nic = true,
            Op::NicRemove => s.extra_nic = false,
        }
    }
}

/// Creates the VM `name` through the daemon and waits until it runs its spec.
pub async fn create(d: &super::common::Daemon, state: &State, name: &str) {
    let client = Client::new(&d.home.join("api.sock"));
    client
        .call(Method::POST, PATH, Some(&state.spec(name)))
        .await
        .expect("create");
    d.wait_for(name, "ready", Duration::from_secs(180), |o| {
        o["status"]["phase"] == "Running"
            && o["status"]["observedGeneration"] == o["metadata"]["generation"]
    });
}

/// PATCHes VM `name` to `body` and waits for the operation's end: (elapsed, succeeded).
pub async fn timed(client: &Client, name: &str, body: &Value) -> (Duration, bool) {
    let t0 = Instant::now();
    let (_, seq) = client
        .call(Method::PATCH, &format!("{PATH}/{name}"), Some(body))
        .await
        .expect("patch");
    let mut lines = client
        .stream(&format!("{PATH}/{name}/events?watch=true&since={seq}"))
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

/// The longest gap, in ms, between consecutive heartbeat lines (guest uptimes in seconds).
pub fn longest_gap(beats: &str) -> (usize, u64) {
    let ticks: Vec<f64> = beats
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let gap = ticks
        .windows(2)
        .map(|w| ((w[1] - w[0]) * 1000.0).round() as u64)
        .max()
        .unwrap_or(0);
    (ticks.len(), gap)
}

pub fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

pub fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// A repetition count from the environment.
pub fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

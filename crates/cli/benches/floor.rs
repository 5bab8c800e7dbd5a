//! The floor, side by side: each live operation through Wukong (apply request -> verified in
//! the guest) and raw, on a twin VM with the same spec: the QMP/QGA commands that make the
//! change, issued straight at the twin's sockets, then the cheapest check of the effect (one
//! agent call per poll, every 10 ms) until the guest shows it. The ratio per operation is
//! printed against the target max(1.5 x raw, raw + 100 ms), with each guest's heartbeat
//! (10 ms period) longest gap: idle, during the Wukong operations, during the raw ones.
//!
//! The twin is created by a second daemon, which is then killed (its QEMU keeps running), so
//! nothing but this benchmark talks to the twin. What the raw side leaves out is what the floor
//! does not need: the full observation before planning and after, the per-grow check of the
//! guest's memory auto-online (set once for the twin before the runs), the guest's mount check
//! before a detach.
//!
//! Run: `cargo bench -p wukong --bench floor` (BENCH_REPS=N, default 5; `BENCH_GUEST=stock`
//! for the stock Debian 12 guest).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "shared/ops.rs"]
mod ops;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Daemon;
use ops::{EXTRA_MAC, Guest, OPS, Op, State, env_count, longest_gap, median, ms, timed};
use qapi::{qga, qmp};
use serde_json::json;
use wukong_local::client::Client;
use wukong_local::machine::{VMEM_ID, VmFiles, disk_id, netdev_id, nic_id, node_name};
use wukong_local::qga::Qga;
use wukong_local::qmp::{BlockdevAdd, NetdevAdd, Qmp};

const T: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(10);
const MIB: u64 = 1 << 20;
/// Prints the heartbeat so far and starts it afresh.
const TAKE_HEARTBEAT: [&str; 3] = ["/bin/sh", "-c", "cat /run/heartbeat; : > /run/heartbeat"];

/// The twin, driven straight through its sockets.
struct Raw {
    dir: PathBuf,
    qmp: Qmp,
    qga: Qga,
    /// The data disk's device in the guest (`/dev/vdb`).
    data_dev: String,
    /// Memory online in the guest at boot memory, and the boot memory (bytes).
    base_online: u64,
    boot_memory: u64,
    /// Free root ports for the disk and the NIC it attaches.
    ports: (String, String),
}

fn bytes(q: &str) -> u64 {
    wukong_api::quantity::parse_bytes(q).unwrap_or_else(|e| panic!("quantity {q}: {e}"))
}

impl Raw {
    async fn open(dir: &Path, guest: &Guest) -> Raw {
        let qmp = Qmp::connect(&VmFiles::qmp(dir), T).await.expect("twin QMP");
        let qga = Qga::connect(&VmFiles::qga(dir), T)
            .await
            .expect("twin agent");
        let mounts = qga.exec(&["cat", "/proc/mounts"], None, T).await.unwrap();
        let data_dev = mounts
            .out()
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(1) == Some(&"/data")).then(|| f[0].to_string())
            })
            .expect("the twin's /data mount");
        // The floor sets the guest's memory auto-online once, not per grow.
        qga.exec(
            &["tee", "/sys/devices/system/memory/auto_online_blocks"],
            Some(b"online_movable"),
            T,
        )
        .await
        .unwrap();
        let mut ports: Vec<u32> = qmp
            .peripherals()
            .await
            .unwrap()
            .iter()
            .filter_map(|p| p.strip_prefix("rp")?.parse().ok())
            .collect();
        ports.sort_unstable();
        // Wukong fills ports from the lowest; the highest two are free on a fresh twin.
        let ports = (
            format!("rp{}", ports[ports.len() - 1]),
            format!("rp{}", ports[ports.len() - 2]),
        );
        let mut raw = Raw {
            dir: dir.to_path_buf(),
            qmp,
            qga,
            data_dev,
            base_online: 0,
            boot_memory: bytes(guest.memory.0),
            ports,
        };
        raw.base_online = raw.online_memory().await;
        raw
    }

    async fn online_memory(&self) -> u64 {
        let size = self
            .qga
            .run(qga::guest_get_memory_block_info {}, T)
            .await
            .unwrap()
            .size;
        let blocks = self
            .qga
            .run(qga::guest_get_memory_blocks {}, T)
            .await
            .unwrap();
        blocks.iter().filter(|b| b.online).count() as u64 * size
    }

    async fn disks(&self) -> usize {
        self.qga
            .run(qga::guest_get_disks {}, T)
            .await
            .unwrap()
            .iter()
            .filter(|d| !d.partition)
            .count()
    }

    async fn has_mac(&self) -> bool {
        self.qga
            .run(qga::guest_network_get_interfaces {}, T)
            .await
            .unwrap()
            .iter()
            .any(|i| i.hardware_address.as_deref() == Some(EXTRA_MAC))
    }

    async fn data_size(&self) -> u64 {
        self.qga
            .run(qga::guest_get_fsinfo {}, T)
            .await
            .unwrap()
            .into_iter()
            .find(|f| f.mountpoint == "/data")
            .and_then(|f| f.total_bytes)
            .expect("/data in guest-get-fsinfo")
    }

    /// Polls `check` every 10 ms until it holds (panics after 60 s).
    async fn until<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !check().await {
            assert!(Instant::now() < deadline, "raw: {what} never showed");
            tokio::time::sleep(POLL).await;
        }
    }

    /// vCPUs online in the guest; offline ones that are plugged come online (the stock guest
    /// does not online hot-added vCPUs itself).
    async fn online_vcpus(&self, to: usize) -> bool {
        let v = self.qga.vcpus(T).await.unwrap();
        let online = v.iter().filter(|(_, o)| *o).count();
        if online < to {
            let off: Vec<(i64, bool)> = v
                .iter()
                .filter(|(_, o)| !*o)
                .map(|(id, _)| (*id, true))
                .collect();
            if !off.is_empty() {
                self.qga.set_vcpus(&off, T).await.unwrap();
            }
        }
        online == to
    }

    async fn resize_memory(&self, to: u64) {
        let path = format!("/machine/peripheral/{VMEM_ID}");
        self.qmp
            .qom_set(&path, "requested-size", json!(to - self.boot_memory))
            .await
            .unwrap();
        let want = self.base_online + (to - self.boot_memory);
        self.until("the memory", || async {
            let size = self.qmp.qom_get(&path, "size").await.unwrap();
            size.as_u64() == Some(to - self.boot_memory) && self.online_memory().await == want
        })
        .await;
    }

    /// Runs one operation; `state` is the spec after it.
    async fn run(&self, op: Op, state: &State) -> Duration {
        let t0 = Instant::now();
        match op {
            Op::CpuAdd => {
                let slots = self.qmp.run(qmp::query_hotpluggable_cpus {}).await.unwrap();
                let free = slots
                    .iter()
                    .filter(|s| s.qom_path.is_none())
                    .min_by_key(|s| (s.props.socket_id, s.props.core_id, s.props.thread_id))
                    .expect("a free vCPU slot");
                let mut props = serde_json::Map::new();
                for (k, v) in [
                    ("socket-id", free.props.socket_id),
                    ("core-id", free.props.core_id),
                    ("thread-id", free.props.thread_id),
                ] {
                    if let Some(v) = v {
                        props.insert(k.into(), json!(v));
                    }
                }
                let id = format!("cpu-raw-{}", free.props.socket_id.unwrap_or(0));
                self.qmp
                    .device_add(&free.type_, &id, None, props)
                    .await
                    .unwrap();
                self.until("the vCPU", || self.online_vcpus(2)).await;
            }
            Op::CpuRemove => {
                let id = self
                    .qmp
                    .peripherals()
                    .await
                    .unwrap()
                    .into_iter()
                    .find(|p| p.starts_with("cpu-raw-"))
                    .expect("the hot-added vCPU");
                // A vCPU's unplug is followed in QEMU's device list, as Wukong does.
                self.qmp
                    .run(qmp::device_del { id: id.clone() })
                    .await
                    .unwrap();
                self.until("the vCPU unplugged", || async {
                    !self.qmp.peripherals().await.unwrap().contains(&id)
                })
                .await;
                self.until("one vCPU", || self.online_vcpus(1)).await;
            }
            Op::MemoryGrow | Op::MemoryShrink => self.resize_memory(bytes(state.memory)).await,
            Op::DiskGrow => {
                let before = self.data_size().await;
                self.qmp
                    .run(qmp::block_resize {
                        device: None,
                        node_name: Some(node_name("data")),
                        size: (state.data * MIB) as i64,
                    })
                    .await
                    .unwrap();
                // resize2fs sees the new size once the guest's kernel has taken the
                // capacity change: retried until the filesystem is bigger.
                self.until("the grown filesystem", || async {
                    let out = self
                        .qga
                        .exec(&["resize2fs", &self.data_dev], None, T)
                        .await
                        .unwrap();
                    assert_eq!(out.code, 0, "resize2fs: {}", out.err());
                    self.data_size().await > before
                })
                .await;
            }
            Op::Attach => {
                let before = self.disks().await;
                let image = self.dir.join("raw-extra.qcow2");
                let _ = std::fs::remove_file(&image);
                let made = tokio::process::Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2"])
                    .arg(&image)
                    .arg("64M")
                    .status()
                    .await
                    .unwrap();
                assert!(made.success());
                self.qmp
                    .run(BlockdevAdd(json!({
                        "driver": "qcow2",
                        "node-name": node_name("extra"),
                        "discard": "unmap",
                        "file": {"driver": "file", "filename": image.to_string_lossy()},
                    })))
                    .await
                    .unwrap();
                let mut props = serde_json::Map::new();
                props.insert("drive".into(), json!(node_name("extra")));
                props.insert("serial".into(), json!("extra"));
                self.qmp
                    .device_add(
                        "virtio-blk-pci",
                        &disk_id("extra"),
                        Some(&self.ports.0),
                        props,
                    )
                    .await
                    .unwrap();
                self.until("the disk", || async { self.disks().await == before + 1 })
                    .await;
            }
            Op::Detach => {
                let before = self.disks().await;
                self.qmp.device_del(&disk_id("extra"), T).await.unwrap();
                self.qmp
                    .run(qmp::blockdev_del {
                        node_name: node_name("extra"),
                    })
                    .await
                    .unwrap();
                self.until("the disk gone", || async {
                    self.disks().await + 1 == before
                })
                .await;
            }
            Op::NicAdd => {
                self.qmp
                    .run(NetdevAdd(json!({"type": "user", "id": netdev_id("extra")})))
                    .await
                    .unwrap();
                let mut props = serde_json::Map::new();
                props.insert("netdev".into(), json!(netdev_id("extra")));
                props.insert("mac".into(), json!(EXTRA_MAC));
                self.qmp
                    .device_add(
                        "virtio-net-pci",
                        &nic_id("extra"),
                        Some(&self.ports.1),
                        props,
                    )
                    .await
                    .unwrap();
                self.until("the NIC", || self.has_mac()).await;
            }
            Op::NicRemove => {
                self.qmp.device_del(&nic_id("extra"), T).await.unwrap();
                self.qmp
                    .run(qmp::netdev_del {
                        id: netdev_id("extra"),
                    })
                    .await
                    .unwrap();
                self.until("the NIC gone", || async { !self.has_mac().await })
                    .await;
            }
        }
        t0.elapsed()
    }

    async fn heartbeat(&self, clear: bool) -> String {
        let argv: &[&str] = if clear {
            &TAKE_HEARTBEAT
        } else {
            &["cat", "/run/heartbeat"]
        };
        self.qga.exec(argv, None, T).await.unwrap().out()
    }
}

fn main() {
    let reps = env_count("BENCH_REPS", 5);
    let idle = Duration::from_secs(env_count("BENCH_IDLE_SECS", 10) as u64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (guest, args) = Guest::from_env();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let wukong = Daemon::start(&args);
    let mut twin_daemon = Daemon::start(&args);
    let mut state = State::new(&guest);
    let client = Client::new(&wukong.home.join("api.sock"));

    let (wukong_times, raw_times, gaps) = rt.block_on(async {
        tokio::join!(
            ops::create(&wukong, &state, "bench"),
            ops::create(&twin_daemon, &state, "twin")
        );
        wukong.sh("bench", guest.heartbeat);
        twin_daemon.sh("twin", guest.heartbeat);
        twin_daemon.kill();
        let raw = Raw::open(&twin_daemon.home.join("vms/default/twin"), &guest).await;

        // The idle baseline: both guests with nothing happening, for `idle`.
        let clear = TAKE_HEARTBEAT;
        wukong.exec("bench", &clear);
        raw.heartbeat(true).await;
        tokio::time::sleep(idle).await;
        let idle_gaps = (
            longest_gap(&wukong.exec("bench", &clear)).1,
            longest_gap(&raw.heartbeat(true).await).1,
        );

        let mut w = vec![Vec::new(); OPS.len()];
        let mut r = vec![Vec::new(); OPS.len()];
        for _ in 0..reps {
            for (i, op) in OPS.into_iter().enumerate() {
                op.apply(&mut state);
                let (t, ok) = timed(&client, "bench", &state.spec("bench")).await;
                assert!(ok, "{} failed: {}", op.name(&guest), wukong.log());
                w[i].push(t);
                r[i].push(raw.run(op, &state).await);
            }
        }
        let busy_gaps = (
            longest_gap(&wukong.exec("bench", &["cat", "/run/heartbeat"])).1,
            longest_gap(&raw.heartbeat(false).await).1,
        );
        (w, r, (idle_gaps, busy_gaps))
    });

    let mut rows = vec![vec![
        "operation".to_string(),
        "Wukong median".into(),
        "Wukong max".into(),
        "raw median".into(),
        "raw max".into(),
        "ratio".into(),
        "target max(1.5x raw, raw + 100 ms)".into(),
    ]];
    let mut met = 0;
    for (i, op) in OPS.into_iter().enumerate() {
        let (wm, rm) = (median(&wukong_times[i]), median(&raw_times[i]));
        let target = (rm.mul_f64(1.5)).max(rm + Duration::from_millis(100));
        let ok = wm <= target;
        met += usize::from(ok);
        rows.push(vec![
            op.name(&guest),
            ms(wm),
            ms(*wukong_times[i].iter().max().unwrap()),
            ms(rm),
            ms(*raw_times[i].iter().max().unwrap()),
            format!("{:.2}x", wm.as_secs_f64() / rm.as_secs_f64()),
            format!("≤ {}: {}", ms(target), if ok { "met" } else { "NOT met" }),
        ]);
    }
    println!(
        "\nWukong vs raw QMP/QGA on this machine, {} guest ({reps} runs each, interleaved; Wukong: apply request -> verified in the guest; raw: first command -> the guest shows the effect)\n",
        guest.label()
    );
    for r in &rows {
        println!("| {} |", r.join(" | "));
    }
    let ((wi, ri), (wb, rb)) = gaps;
    println!("\n{met}/{} operations within target", OPS.len());
    println!(
        "heartbeat longest gap (10 ms period): idle {}s: Wukong's VM {wi} ms, twin {ri} ms; during the operations: Wukong's VM {wb} ms, twin (raw) {rb} ms; ratio {:.2} (target ≤ 1.5)",
        idle.as_secs(),
        wb as f64 / rb.max(1) as f64
    );
}

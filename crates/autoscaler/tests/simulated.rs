//! The recommender on simulated time: a model guest whose load the test sets, evaluated every
//! interval, its changes applied at once.

use std::collections::BTreeMap;

use proptest::prelude::*;
use wukong_api::autoscaling::{AutoscalingSpec, Policy};
use wukong_autoscaler::{Change, CpuSample, Current, FsSample, MemorySample, Recommender, Sample};

const MI: u64 = 1 << 20;
const TICKS: f64 = 100.0;

/// A guest: `load` vCPUs worth of work, `used` bytes of memory in use, a data filesystem.
struct Guest {
    now: f64,
    busy: u64,
    total: u64,
    load: f64,
    used: u64,
    oom_kills: u64,
    fs_used: u64,
    current: Current,
}

impl Guest {
    fn new(cpu: u32, memory: u64) -> Self {
        Guest {
            now: 0.0,
            busy: 0,
            total: 0,
            load: 0.0,
            used: 100 * MI,
            oom_kills: 0,
            fs_used: 10 * MI,
            current: Current {
                cpu,
                memory,
                boot_memory: 256 * MI,
                max_cpu: 8,
                max_memory: 4096 * MI,
                disks: [("data".to_string(), 256 * MI)].into(),
            },
        }
    }

    /// Time passes: the counters move as the load says.
    fn run(&mut self, secs: f64) {
        let n = f64::from(self.current.cpu);
        self.now += secs;
        self.busy += (self.load.min(n) * secs * TICKS) as u64;
        self.total += (n * secs * TICKS) as u64;
    }

    fn sample(&self) -> Sample {
        let size = self.current.disks["data"];
        Sample {
            at: self.now,
            cpu: Some(CpuSample {
                online: self.current.cpu,
                busy: self.busy,
                total: self.total,
            }),
            memory: Some(MemorySample {
                total: self.current.memory - 32 * MI,
                available: (self.current.memory - 32 * MI).saturating_sub(self.used),
                oom_kills: Some(self.oom_kills),
                pressure: Some(0.0),
            }),
            filesystems: [(
                "data".to_string(),
                FsSample {
                    mount: "/data".into(),
                    disk_size: size,
                    size: size - 4 * MI,
                    used: self.fs_used,
                    inodes: Some((65536, 100)),
                },
            )]
            .into(),
        }
    }

    /// One evaluation; its changes are applied at once. Returns them.
    fn step(&mut self, r: &mut Recommender, p: &Policy) -> Vec<Change> {
        let ev = r.evaluate(p, &self.current, Ok(self.sample()), None);
        for c in &ev.changes {
            match c.resource.as_str() {
                "cpu" => self.current.cpu = c.to as u32,
                "memory" => self.current.memory = c.to,
                d => {
                    let name = d.trim_start_matches("disk/");
                    self.current.disks.insert(name.into(), c.to);
                }
            }
        }
        r.applied(&ev.changes, self.now);
        ev.changes
    }
}

fn policy(json: serde_json::Value) -> Policy {
    Policy::of(&serde_json::from_value::<AutoscalingSpec>(json).unwrap())
}

#[test]
fn cpu_up_at_once_and_down_only_after_the_down_window() {
    let p = policy(serde_json::json!({
        "cpu": {"min": 1, "max": 2, "targetUtilization": 60},
        "intervalSeconds": 5, "stabilizationSeconds": 20, "cooldownSeconds": 0
    }));
    let mut g = Guest::new(1, 512 * MI);
    let mut r = Recommender::default();
    g.load = 2.0;
    g.run(5.0);
    assert!(
        g.step(&mut r, &p).is_empty(),
        "one reading gives no utilisation"
    );
    g.run(5.0);
    let up = g.step(&mut r, &p);
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!((up[0].from, up[0].to), (1, 2));
    assert!(
        up[0].reason.contains("utilisation 100 %"),
        "{}",
        up[0].reason
    );
    g.load = 0.0;
    let stopped = g.now;
    let mut down_at = None;
    for _ in 0..20 {
        g.run(5.0);
        let ch = g.step(&mut r, &p);
        if !ch.is_empty() {
            assert_eq!((ch[0].from, ch[0].to), (2, 1));
            down_at = Some(g.now);
            break;
        }
    }
    let down_at = down_at.expect("scaled down");
    assert!(
        down_at - stopped >= 20.0,
        "down {} s after the load stopped: before the window",
        down_at - stopped
    );
    assert!(down_at - stopped <= 30.0, "and not much later");
}

#[test]
fn missing_metrics_change_nothing_and_say_why() {
    let p = policy(serde_json::json!({
        "cpu": {"min": 1, "max": 4}, "memory": {"min": "256Mi", "max": "2Gi"},
        "disks": [{"name": "data", "maxSize": "1Gi"}]
    }));
    let g = Guest::new(1, 512 * MI);
    let mut r = Recommender::default();
    let ev = r.evaluate(&p, &g.current, Err("agent timed out".into()), None);
    assert!(ev.changes.is_empty());
    assert!(ev.reasons[0].contains("agent timed out"));
    // A reading without inode figures and without a filesystem for the disk.
    let mut s = g.sample();
    s.filesystems.clear();
    s.memory = None;
    let ev = r.evaluate(&p, &g.current, Ok(s), None);
    assert!(ev.changes.is_empty(), "{:?}", ev.changes);
    assert!(
        ev.reasons
            .iter()
            .any(|x| x.contains("no mounted filesystem"))
    );
    assert!(
        ev.reasons
            .iter()
            .any(|x| x.contains("memory: the guest reported no"))
    );
    // Busy: nothing is judged.
    let mut g = Guest::new(1, 512 * MI);
    g.load = 4.0;
    g.run(15.0);
    r.evaluate(&p, &g.current, Ok(g.sample()), None);
    g.run(15.0);
    let ev = r.evaluate(&p, &g.current, Ok(g.sample()), Some("an operation runs"));
    assert!(ev.changes.is_empty());
}

#[test]
fn a_missing_inode_figure_disables_only_the_inode_rule() {
    let p = policy(serde_json::json!({
        "disks": [{"name": "data", "maxSize": "1Gi", "growAtUsage": 70}]
    }));
    let mut g = Guest::new(1, 512 * MI);
    let mut r = Recommender::default();
    let mut s = g.sample();
    s.filesystems.get_mut("data").unwrap().inodes = None;
    assert!(r.evaluate(&p, &g.current, Ok(s), None).changes.is_empty());
    g.fs_used = 200 * MI;
    g.now += 15.0;
    let mut s = g.sample();
    s.filesystems.get_mut("data").unwrap().inodes = None;
    let ev = r.evaluate(&p, &g.current, Ok(s), None);
    assert_eq!(ev.changes.len(), 1, "the bytes rule still grows it");
}

#[test]
fn a_steady_writer_grows_the_disk_in_steps_up_to_max_size_then_a_warning_once() {
    let p = policy(serde_json::json!({
        "intervalSeconds": 5,
        "disks": [{"name": "data", "maxSize": "1Gi", "growAtUsage": 70, "stepPercent": 50,
                   "minStep": "64Mi"}]
    }));
    let mut g = Guest::new(1, 512 * MI);
    let mut r = Recommender::default();
    let mut sizes = vec![256 * MI];
    let mut warnings = 0;
    for _ in 0..120 {
        g.now += 5.0;
        let fs_size = g.current.disks["data"] - 4 * MI;
        g.fs_used = (g.fs_used + 25 * MI).min(fs_size);
        assert!(
            g.fs_used < fs_size || g.current.disks["data"] == 1024 * MI,
            "full at {} before maxSize",
            g.current.disks["data"] / MI
        );
        let ev = r.evaluate(&p, &g.current, Ok(g.sample()), None);
        warnings += ev.warnings.len();
        for c in &ev.changes {
            assert!(c.to > c.from, "never shrinks");
            g.current.disks.insert("data".into(), c.to);
            sizes.push(c.to);
        }
    }
    assert!(sizes.len() >= 4, "grown several times: {sizes:?}");
    assert_eq!(*sizes.last().unwrap(), 1024 * MI);
    assert_eq!(warnings, 1, "the Warning once at maxSize");
}

#[test]
fn a_one_off_large_write_grows_the_disk_once() {
    let p = policy(serde_json::json!({
        "intervalSeconds": 5,
        "disks": [{"name": "data", "maxSize": "2Gi", "growAtUsage": 90, "stepPercent": 10,
                   "minStep": "64Mi"}]
    }));
    let mut g = Guest::new(1, 512 * MI);
    let mut r = Recommender::default();
    for _ in 0..3 {
        g.now += 5.0;
        assert!(g.step(&mut r, &p).is_empty(), "nothing to do at 10 MiB");
    }
    // 232 MiB at once: 92 % of the filesystem; the rate over the readings says "full soon" too.
    g.now += 5.0;
    g.fs_used = 242 * MI;
    let first = g.step(&mut r, &p);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(g.current.disks["data"], 320 * MI);
    // Nothing more is written: the grow answered it, whatever the old rate said.
    for _ in 0..20 {
        g.now += 5.0;
        let more = g.step(&mut r, &p);
        assert!(more.is_empty(), "grown again at {} s: {more:?}", g.now);
    }
}

#[test]
fn memory_goes_up_on_an_oom_kill_and_back_after_the_down_window() {
    let p = policy(serde_json::json!({
        "memory": {"min": "256Mi", "max": "2Gi"},
        "stabilizationSeconds": 60, "cooldownSeconds": 0
    }));
    let mut g = Guest::new(1, 512 * MI);
    let mut r = Recommender::default();
    g.used = 300 * MI;
    g.run(15.0);
    assert!(g.step(&mut r, &p).is_empty(), "300 of 480 Mi is on target");
    g.oom_kills = 1;
    g.run(15.0);
    let up = g.step(&mut r, &p);
    assert_eq!(up.len(), 1);
    assert!(
        up[0].to > 512 * MI && up[0].reason.contains("OOM"),
        "{up:?}"
    );
    g.used = 100 * MI;
    let freed = g.now;
    let mut down = None;
    for _ in 0..20 {
        g.run(15.0);
        if let Some(c) = g.step(&mut r, &p).first() {
            down = Some((g.now, c.to));
            break;
        }
    }
    let (at, to) = down.expect("given back");
    assert!(at - freed >= 60.0, "not before the down-window");
    assert!((256 * MI..512 * MI).contains(&to), "{}", to / MI);
}

#[test]
fn two_scale_downs_are_a_cooldown_apart() {
    let p = policy(serde_json::json!({
        "cpu": {"min": 1, "max": 8, "targetUtilization": 50},
        "intervalSeconds": 10, "stabilizationSeconds": 30, "cooldownSeconds": 300
    }));
    let mut g = Guest::new(8, 512 * MI);
    let mut r = Recommender::default();
    g.load = 3.5;
    let mut downs = Vec::new();
    for i in 0..100 {
        // The load falls step by step: each level asks for fewer vCPUs.
        if i == 10 {
            g.load = 2.0;
        }
        if i == 20 {
            g.load = 0.5;
        }
        g.run(10.0);
        for c in g.step(&mut r, &p) {
            if c.to < c.from {
                downs.push(g.now);
            }
        }
    }
    assert!(downs.len() >= 2, "{downs:?}");
    for w in downs.windows(2) {
        assert!(w[1] - w[0] >= 300.0, "{downs:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A load oscillating ±20 % around the target for an hour makes no more than one change
    /// per down-window.
    #[test]
    fn an_oscillating_load_makes_at_most_one_change_per_down_window(
        cpus in 2u32..8, period in 20u32..600, phase in 0u32..600, target in 30u8..90,
    ) {
        let p = policy(serde_json::json!({
            "cpu": {"min": 1, "max": 8, "targetUtilization": target},
        }));
        let mut g = Guest::new(cpus, 512 * MI);
        let mut r = Recommender::default();
        let base = f64::from(cpus) * f64::from(target) / 100.0;
        let mut changes = Vec::new();
        while g.now < 3600.0 {
            let t = g.now + f64::from(phase);
            g.load = base * (1.0 + 0.2 * (t * std::f64::consts::TAU / f64::from(period)).sin());
            g.run(15.0);
            if !g.step(&mut r, &p).is_empty() {
                changes.push(g.now);
            }
        }
        for w in changes.windows(2) {
            prop_assert!(w[1] - w[0] >= 300.0, "{changes:?}");
        }
    }

    /// Whatever the readings, the recommendation stays within min/max and the ceilings, disks
    /// never shrink, and nothing scales down before the down-window is covered.
    #[test]
    fn bounded_monotone_and_never_down_before_the_window(
        loads in proptest::collection::vec((0.0f64..10.0, 0u64..2000, 0u64..400, 0u64..3), 1..60),
        down in 0u32..200,
    ) {
        let p = policy(serde_json::json!({
            "cpu": {"min": 2, "max": 6},
            "memory": {"min": "384Mi", "max": "1536Mi"},
            "disks": [{"name": "data", "maxSize": "768Mi", "minStep": "64Mi"}],
            "stabilizationSeconds": down, "cooldownSeconds": 0
        }));
        let mut g = Guest::new(2, 512 * MI);
        g.current.max_cpu = 5;
        let mut r = Recommender::default();
        let mut disk = g.current.disks["data"];
        for (load, used, fs, kills) in loads {
            g.load = load;
            g.used = used * MI;
            g.oom_kills += kills;
            g.fs_used = (fs * MI).min(g.current.disks["data"] - 4 * MI);
            g.run(15.0);
            for c in g.step(&mut r, &p) {
                match c.resource.as_str() {
                    "cpu" => prop_assert!((2..=5).contains(&c.to), "{c:?}"),
                    "memory" => prop_assert!((384 * MI..=1536 * MI).contains(&c.to), "{c:?}"),
                    _ => {
                        prop_assert!(c.to > disk && c.to <= 768 * MI, "{c:?}");
                        disk = c.to;
                    }
                }
                if c.to < c.from {
                    prop_assert!(g.now >= f64::from(down) + 15.0, "down at {} s", g.now);
                }
            }
        }
    }

    /// A recommender that stops after any reading and carries on from its history, as
    /// stored in status (JSON), decides exactly as one that never stopped.
    #[test]
    fn a_recommender_resumed_from_its_stored_history_decides_as_one_that_never_stopped(
        loads in proptest::collection::vec((0.0f64..6.0, 0u64..1500, 0u64..400, 0u64..2), 2..50),
        stop in 0usize..50,
        down in 0u32..200,
        cooldown in 0u32..200,
    ) {
        let p = policy(serde_json::json!({
            "cpu": {"min": 1, "max": 6},
            "memory": {"min": "256Mi", "max": "2Gi"},
            "disks": [{"name": "data", "maxSize": "512Mi", "minStep": "64Mi"}],
            "stabilizationSeconds": down, "cooldownSeconds": cooldown
        }));
        let (mut a, mut b) = (Guest::new(2, 512 * MI), Guest::new(2, 512 * MI));
        let (mut ra, mut rb) = (Recommender::default(), Recommender::default());
        let stop = stop % loads.len();
        for (i, (load, used, fs, kills)) in loads.into_iter().enumerate() {
            for g in [&mut a, &mut b] {
                g.load = load;
                g.used = used * MI;
                g.oom_kills += kills;
                g.fs_used = (fs * MI).min(g.current.disks["data"] - 4 * MI);
                g.run(15.0);
            }
            let (ea, eb) = (a.step(&mut ra, &p), b.step(&mut rb, &p));
            prop_assert_eq!(&ea, &eb, "reading {}", i);
            if i == stop {
                let mut status = wukong_api::autoscaling::AutoscalingStatus {
                    history: Some(rb.history()),
                    ..Default::default()
                };
                let json = serde_json::to_string(&status).unwrap();
                status = serde_json::from_str(&json).unwrap();
                rb = Recommender::resume(status.history.as_ref());
                prop_assert_eq!(&rb.history(), &ra.history());
            }
        }
    }
}

#[test]
fn unowned_resources_are_never_touched() {
    let p = policy(serde_json::json!({"cpu": {"min": 1, "max": 4}}));
    let mut g = Guest::new(1, 512 * MI);
    let mut r = Recommender::default();
    g.used = 500 * MI;
    g.fs_used = 250 * MI;
    g.load = 1.0;
    let mut all = BTreeMap::new();
    for _ in 0..10 {
        g.run(15.0);
        for c in g.step(&mut r, &p) {
            all.insert(c.resource.clone(), c.to);
        }
    }
    assert_eq!(all.keys().collect::<Vec<_>>(), vec!["cpu"]);
}

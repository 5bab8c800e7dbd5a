//! Live vs restart, on real QEMU guests: for each operation, the time from the apply request
//! to the change verified in the guest (median and max of repeated runs), next to the same
//! change made by a restart (`wukong serve --no-live`), and the longest gap of a 10 ms
//! heartbeat in the live guest. Run: `cargo bench -p wukong --bench live_vs_restart`
//! (BENCH_REPS=N repetitions, default 5; the restart way runs BENCH_RESTART_REPS, default
//! min(N, 3)). `BENCH_GUEST=stock` runs it on the stock Debian 12 guest instead of the busybox
//! one (memory 1Gi <-> 2Gi there; a restart costs a ~30 s boot).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "shared/ops.rs"]
mod ops;

use std::time::Duration;

use common::Daemon;
use ops::{Guest, OPS, State, env_count, longest_gap, median, ms, timed};
use wukong_local::client::Client;

/// Creates the VM, optionally starts the heartbeat, then runs every operation `reps` times.
async fn run(d: &Daemon, guest: &Guest, reps: usize, heartbeat: bool) -> Vec<Vec<Duration>> {
    let client = Client::new(&d.home.join("api.sock"));
    let mut state = State::new(guest);
    ops::create(d, &state, "bench").await;
    if heartbeat {
        d.sh("bench", guest.heartbeat);
    }
    let mut times = vec![Vec::new(); OPS.len()];
    for _ in 0..reps {
        for (i, op) in OPS.into_iter().enumerate() {
            op.apply(&mut state);
            let (t, ok) = timed(&client, "bench", &state.spec("bench")).await;
            assert!(ok, "{} failed: {}", op.name(guest), d.log());
            times[i].push(t);
        }
    }
    times
}

fn main() {
    let reps = env_count("BENCH_REPS", 5);
    let restart_reps = env_count("BENCH_RESTART_REPS", reps.min(3));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (guest, mut args) = Guest::from_env();
    let stock = guest.stock;
    let live = Daemon::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    args.push("--no-live".into());
    let cold = Daemon::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let live_times = rt.block_on(run(&live, &guest, reps, true));
    let (beats, gap) = longest_gap(&live.exec("bench", &["cat", "/run/heartbeat"]));
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
    for (i, op) in OPS.into_iter().enumerate() {
        let name = op.name(&guest);
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
        guest.label()
    );
    for r in &rows {
        println!("| {} |", r.join(" | "));
    }
    println!(
        "\nheartbeat (10 ms period) during the live runs: {} beats, longest gap {gap} ms (aim ≤ 100 ms)",
        beats
    );
}

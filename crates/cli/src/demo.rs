//! `wukong demo`: boots a VM on the local backend and walks it through the whole story live —
//! vCPUs, memory, the system disk and its filesystem, a data disk attached and detached, a NIC
//! added and removed — through the daemon's API like any user, with a heartbeat running in the
//! guest, and ends with a table of what happened.

use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{Value, json};
use wukong_local::client::{Client, ClientError};

use crate::Failure;
use crate::remote::{Target, follow_steps, table};

const VM: &str = "wukong-demo";

struct Row {
    change: String,
    mode: String,
    millis: u64,
    result: String,
}

async fn exec(client: &Client, t: &Target, argv: &[&str]) -> Result<String, Failure> {
    let (v, _) = client
        .call(
            Method::POST,
            &format!("{}/exec", path(t)),
            Some(&json!({"command": argv, "timeoutSeconds": 60})),
        )
        .await?;
    if v["exitCode"].as_i64() != Some(0) {
        return Err(Failure::Failed(format!(
            "`{}` in the guest failed: {}",
            argv.join(" "),
            v["stderr"].as_str().unwrap_or("")
        )));
    }
    Ok(v["stdout"].as_str().unwrap_or("").to_string())
}

fn path(t: &Target) -> String {
    format!(
        "{}/namespaces/{}/wukongs/{VM}",
        wukong_local::api::PREFIX,
        t.namespace
    )
}

fn spec(cpu: u32, memory: &str, system: &str, data: bool, extra_nic: bool) -> Value {
    let mut disks = vec![
        json!({"name": "system", "size": system, "filesystem": {"type": "ext4", "mountPath": "/mnt/system"}}),
    ];
    if data {
        disks.push(json!({"name": "data", "size": "256Mi", "filesystem": {"type": "ext4", "mountPath": "/data"}}));
    }
    let mut nets = vec![json!({"name": "default", "user": {}})];
    if extra_nic {
        nets.push(json!({"name": "extra", "user": {}, "mac": "52:54:00:00:de:01"}));
    }
    json!({"cpu": cpu, "memory": memory, "maxCpu": 4, "maxMemory": "2Gi", "disks": disks, "networks": nets})
}

fn object(spec: Value) -> Value {
    json!({"apiVersion": "vm.novasphere.dev/v1alpha1", "kind": "Wukong", "metadata": {"name": VM}, "spec": spec})
}

/// What the guest says it has, in one line.
async fn guest_line(client: &Client, t: &Target) -> Result<String, Failure> {
    let out = exec(
        client,
        t,
        &[
            "/bin/sh",
            "-c",
            "echo \"vCPUs online $(cat /sys/devices/system/cpu/online), $(grep MemTotal /proc/meminfo | tr -s ' '), disks: $(for b in /sys/block/vd*; do echo -n \"$(cat $b/serial)=$(($(cat $b/size)/2048))MiB \"; done)fs: $(df -m /mnt/system /data 2>/dev/null | awk 'NR>1 {printf \"%s=%sMiB \", $6, $2}')nics: $(for n in /sys/class/net/eth*; do echo -n \"$(cat $n/address) \"; done)\"",
        ],
    )
    .await?;
    Ok(out.trim().to_string())
}

async fn change(
    client: &Client,
    t: &Target,
    label: &str,
    spec: Value,
    rows: &mut Vec<Row>,
) -> Result<(), Failure> {
    println!("\n== {label}");
    let (written, seq) = client
        .call(Method::PATCH, &path(t), Some(&object(spec)))
        .await?;
    let generation = written["metadata"]["generation"].as_i64().unwrap_or(0);
    let f = follow_steps(client, t, VM, (seq, generation), Duration::from_secs(300)).await?;
    for (d, m, ms) in &f.steps {
        rows.push(Row {
            change: d.clone(),
            mode: m.clone(),
            millis: *ms,
            result: if f.ok {
                "verified in guest".into()
            } else {
                "failed".into()
            },
        });
    }
    if !f.ok {
        return Err(Failure::Failed(format!(
            "{label}: {}",
            f.message.unwrap_or_default()
        )));
    }
    println!("   guest: {}", guest_line(client, t).await?);
    Ok(())
}

/// Runs the demo against the daemon of `t` (started if needed).
pub async fn run(t: &Target) -> Result<(), Failure> {
    let client = t.client().await?;
    match client
        .call(
            Method::DELETE,
            &format!("{}?deleteDisks=true", path(t)),
            None,
        )
        .await
    {
        Ok(_) | Err(ClientError::Api { code: 404, .. }) => {}
        Err(e) => return Err(e.into()),
    }
    println!(
        "== create {VM}: 1 vCPU, 512Mi, a 1Gi ext4 system disk (QEMU, guest built from Debian packages)"
    );
    let t0 = Instant::now();
    let (_, seq) = client
        .call(
            Method::POST,
            &format!(
                "{}/namespaces/{}/wukongs",
                wukong_local::api::PREFIX,
                t.namespace
            ),
            Some(&object(spec(1, "512Mi", "1Gi", false, false))),
        )
        .await?;
    let f = follow_steps(&client, t, VM, (seq, 1), Duration::from_secs(300)).await?;
    if !f.ok {
        return Err(Failure::Failed(format!(
            "boot failed: {}",
            f.message.unwrap_or_default()
        )));
    }
    println!(
        "   booted to a ready guest agent in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    println!("   guest: {}", guest_line(&client, t).await?);
    let boot_before = exec(&client, t, &["cat", "/proc/sys/kernel/random/boot_id"]).await?;
    exec(
        &client,
        t,
        &[
            "/bin/sh",
            "-c",
            "dd if=/dev/urandom of=/mnt/system/blob bs=1M count=8 2>/dev/null; sync",
        ],
    )
    .await?;
    let sys_sum = exec(&client, t, &["md5sum", "/mnt/system/blob"]).await?;
    // The heartbeat: a timestamp (1/100 s) to tmpfs every 10 ms, all along.
    exec(
        &client,
        t,
        &["/bin/sh", "-c", "(while :; do read u i < /proc/uptime; echo $u >> /run/heartbeat; usleep 10000; done) </dev/null >/dev/null 2>&1 &"],
    )
    .await?;

    let mut rows = Vec::new();
    change(
        &client,
        t,
        "vCPUs 1 -> 2",
        spec(2, "512Mi", "1Gi", false, false),
        &mut rows,
    )
    .await?;
    change(
        &client,
        t,
        "memory 512Mi -> 1Gi",
        spec(2, "1Gi", "1Gi", false, false),
        &mut rows,
    )
    .await?;
    change(
        &client,
        t,
        "system disk 1Gi -> 2Gi, with its filesystem",
        spec(2, "1Gi", "2Gi", false, false),
        &mut rows,
    )
    .await?;
    change(
        &client,
        t,
        "attach a 256Mi data disk (ext4 at /data)",
        spec(2, "1Gi", "2Gi", true, false),
        &mut rows,
    )
    .await?;
    exec(
        &client,
        t,
        &[
            "/bin/sh",
            "-c",
            "dd if=/dev/urandom of=/data/blob bs=1M count=4 2>/dev/null; sync",
        ],
    )
    .await?;
    let data_sum = exec(&client, t, &["md5sum", "/data/blob"]).await?;
    println!(
        "   wrote /data/blob: {}",
        data_sum.split_whitespace().next().unwrap_or("")
    );
    change(
        &client,
        t,
        "detach the data disk (image kept)",
        spec(2, "1Gi", "2Gi", false, false),
        &mut rows,
    )
    .await?;
    change(
        &client,
        t,
        "add a NIC",
        spec(2, "1Gi", "2Gi", false, true),
        &mut rows,
    )
    .await?;
    change(
        &client,
        t,
        "remove the NIC",
        spec(2, "1Gi", "2Gi", false, false),
        &mut rows,
    )
    .await?;
    change(
        &client,
        t,
        "memory 1Gi -> 768Mi",
        spec(2, "768Mi", "2Gi", false, false),
        &mut rows,
    )
    .await?;
    change(
        &client,
        t,
        "vCPUs 2 -> 1",
        spec(1, "768Mi", "2Gi", false, false),
        &mut rows,
    )
    .await?;
    change(
        &client,
        t,
        "attach the data disk again",
        spec(1, "768Mi", "2Gi", true, false),
        &mut rows,
    )
    .await?;

    let beats = exec(&client, t, &["cat", "/run/heartbeat"]).await?;
    let _ = exec(
        &client,
        t,
        &["/bin/sh", "-c", "kill $(pidof usleep) 2>/dev/null; true"],
    )
    .await;
    let times: Vec<f64> = beats
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let gap_ms = times
        .windows(2)
        .map(|w| ((w[1] - w[0]) * 1000.0).round() as u64)
        .max()
        .unwrap_or(0);
    let boot_after = exec(&client, t, &["cat", "/proc/sys/kernel/random/boot_id"]).await?;
    let sys_ok = exec(&client, t, &["md5sum", "/mnt/system/blob"]).await? == sys_sum;
    let data_ok = exec(&client, t, &["md5sum", "/data/blob"]).await? == data_sum;

    let mut cells = vec![vec![
        "STEP".to_string(),
        "MODE".into(),
        "APPLIED+VERIFIED".into(),
        "RESULT".into(),
    ]];
    for r in &rows {
        cells.push(vec![
            r.change.clone(),
            r.mode.clone(),
            format!("{} ms", r.millis),
            r.result.clone(),
        ]);
    }
    println!("\n{}", table(&cells));
    let live = rows.iter().filter(|r| r.mode == "live").count();
    println!("steps live: {live} of {}", rows.len());
    println!("boot_id before: {}", boot_before.trim());
    println!(
        "boot_id after:  {} ({})",
        boot_after.trim(),
        if boot_before == boot_after {
            "unchanged: no reboot"
        } else {
            "CHANGED"
        }
    );
    println!("heartbeat: {} beats, longest gap {gap_ms} ms", times.len());
    println!(
        "checksums: system disk {}, data disk {}",
        if sys_ok { "intact" } else { "CHANGED" },
        if data_ok {
            "intact after detach and re-attach"
        } else {
            "CHANGED"
        }
    );
    println!(
        "\nthe VM keeps running: `wukong get -o wide`, `wukong describe {VM}`, `wukong exec {VM} -- df -h`, `wukong delete {VM}`"
    );
    if boot_before != boot_after || !sys_ok || !data_ok || live != rows.len() {
        return Err(Failure::Failed(
            "the demo did not stay live and intact (see above)".into(),
        ));
    }
    Ok(())
}

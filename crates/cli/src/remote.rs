//! Commands that talk to the local daemon (`wukong serve`), found through `WUKONG_HOME`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{Value, json};
use wukong_api::document::Document;
use wukong_local::Home;
use wukong_local::client::{Client, ClientError};
use wukong_local::store::StoredEvent;
use wukong_planner::PlanDocument;

use crate::progress::Renderer;
use crate::{Failure, Format};

const PREFIX: &str = wukong_local::api::PREFIX;

/// Connection settings shared by the daemon commands.
#[derive(Clone, Debug)]
pub struct Target {
    /// State directory.
    pub home: Home,
    /// Namespace.
    pub namespace: String,
    /// Start a daemon when none answers.
    pub autostart: bool,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match &e {
            ClientError::Api { reason, .. } if reason == "Invalid" || reason == "BadRequest" => {
                Failure::Invalid(e.to_string())
            }
            ClientError::Api { reason, .. } if reason == "NotAllowed" => {
                Failure::NotAllowed(e.to_string())
            }
            _ => Failure::Failed(e.to_string()),
        }
    }
}

impl Target {
    fn path(&self, name: &str) -> String {
        format!("{PREFIX}/namespaces/{}/wukongs/{name}", self.namespace)
    }

    /// A client of a daemon that answers, starting one in the background if allowed.
    pub async fn client(&self) -> Result<Client, Failure> {
        let client = Client::new(&self.home.api_socket());
        if client.alive().await {
            return Ok(client);
        }
        if !self.autostart {
            return Err(Failure::Failed(format!(
                "no wukong daemon answers on {}: start one with `wukong serve`",
                self.home.api_socket().display()
            )));
        }
        self.home
            .ensure()
            .map_err(|e| Failure::Failed(format!("{}: {e}", self.home.root().display())))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.daemon_log())
            .map_err(|e| Failure::Failed(e.to_string()))?;
        let exe = std::env::current_exe().map_err(|e| Failure::Failed(e.to_string()))?;
        eprintln!(
            "starting the wukong daemon in the background (log: {})",
            self.home.daemon_log().display()
        );
        use std::os::unix::process::CommandExt;
        std::process::Command::new(exe)
            .arg("serve")
            .env("WUKONG_HOME", self.home.root())
            .stdin(std::process::Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(|e| Failure::Failed(e.to_string()))?,
            )
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| Failure::Failed(format!("cannot start the daemon: {e}")))?;
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            if client.alive().await {
                return Ok(client);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Failure::Failed(format!(
            "the daemon did not come up; see {}",
            self.home.daemon_log().display()
        )))
    }
}

/// How an operation that was followed went.
#[derive(Clone, Debug, Default)]
pub struct Followed {
    /// Whether it succeeded.
    pub ok: bool,
    /// Each step carried out: (description, mode, milliseconds to guest-verified).
    pub steps: Vec<(String, String, u64)>,
    /// Why it failed.
    pub message: Option<String>,
}

/// Follows the VM's events after `seq` until an operation finishes; returns whether it
/// succeeded.
pub async fn follow(
    client: &Client,
    t: &Target,
    name: &str,
    from: (u64, i64),
    timeout: Duration,
) -> Result<bool, Failure> {
    Ok(follow_steps(client, t, name, from, timeout).await?.ok)
}

/// Like [`follow`], also collecting each step's time. Ends with the first operation that
/// worked towards `generation` (or a later one): one already running when the change was
/// made can finish first, without it.
pub async fn follow_steps(
    client: &Client,
    t: &Target,
    name: &str,
    (seq, generation): (u64, i64),
    timeout: Duration,
) -> Result<Followed, Failure> {
    let mut lines = client
        .stream(&format!("{}/events?watch=true&since={seq}", t.path(name)))
        .await?;
    let mut r = Renderer::new();
    let mut started: std::collections::HashMap<usize, (String, String)> = Default::default();
    let mut out = Followed::default();
    let wait = async {
        while let Some(line) = lines.next().await {
            let Ok(e) = serde_json::from_str::<StoredEvent>(&line) else {
                continue;
            };
            match &e.event {
                wukong_engine::Event::StepStarted { index, step, .. } => {
                    started.insert(*index, (step.action.describe(), step.mode.to_string()));
                }
                wukong_engine::Event::StepDone {
                    index, duration_ms, ..
                } => {
                    if let Some((d, m)) = started.get(index) {
                        out.steps.push((d.clone(), m.clone(), *duration_ms));
                    }
                }
                wukong_engine::Event::Restarted { duration_ms, .. } => {
                    out.steps
                        .push(("restart".into(), "restart".into(), *duration_ms));
                }
                wukong_engine::Event::Finished { generation: g, .. } if *g < generation => continue,
                wukong_engine::Event::Finished { message, .. } => out.message = message.clone(),
                _ => {}
            }
            if let Some(ok) = r.show(&e) {
                out.ok = ok;
                return Ok(out);
            }
        }
        Err(Failure::Failed("the daemon closed the event stream".into()))
    };
    tokio::time::timeout(timeout, wait).await.map_err(|_| {
        Failure::Failed(format!(
            "no result within {timeout:?}; the operation goes on: `wukong describe {name}`"
        ))
    })?
}

/// A document as the API takes it: the object, with the spec exactly as written (a merge patch
/// needs its explicit nulls).
fn request_body(d: &Document) -> Value {
    let mut body = serde_json::to_value(&d.wukong).unwrap_or_default();
    body["spec"] = d.raw_spec.clone();
    body
}

/// The generation of a stored object (the API's answer to a write).
fn generation_of(object: &serde_json::Value) -> i64 {
    object["metadata"]["generation"].as_i64().unwrap_or(0)
}

/// `wukong apply -f FILE`: create or update each VM, showing the plan and then the progress.
pub async fn apply(
    t: &Target,
    docs: Vec<Document>,
    wait: bool,
    timeout: Duration,
) -> Result<(), Failure> {
    let client = t.client().await?;
    let mut all_ok = true;
    for d in docs {
        let name = d.wukong.metadata.name.clone().unwrap_or_default();
        let body = request_body(&d);
        let exists = match client.call(Method::GET, &t.path(&name), None).await {
            Ok(_) => true,
            Err(ClientError::Api { code: 404, .. }) => false,
            Err(e) => return Err(e.into()),
        };
        let seq = if exists {
            let (plan, _) = client
                .call(
                    Method::POST,
                    &format!("{}/plan", t.path(&name)),
                    Some(&body),
                )
                .await?;
            let plan: PlanDocument =
                serde_json::from_value(plan).map_err(|e| Failure::Failed(e.to_string()))?;
            print!("{}", plan.table());
            let (object, seq) = client
                .call(Method::PATCH, &t.path(&name), Some(&body))
                .await?;
            println!("wukong/{name} configured");
            if plan.steps.is_empty() {
                continue;
            }
            (seq, generation_of(&object))
        } else {
            let (object, seq) = client
                .call(
                    Method::POST,
                    &format!("{PREFIX}/namespaces/{}/wukongs", t.namespace),
                    Some(&body),
                )
                .await?;
            println!("wukong/{name} created");
            (seq, generation_of(&object))
        };
        if wait {
            all_ok &= follow(&client, t, &name, seq, timeout).await?;
        }
    }
    if all_ok {
        Ok(())
    } else {
        Err(Failure::Failed(
            "an operation failed (see above; `wukong describe` tells more)".into(),
        ))
    }
}

/// `wukong plan -f FILE` against running VMs.
pub async fn plan(t: &Target, docs: Vec<Document>, output: Format) -> Result<(), Failure> {
    let client = t.client().await?;
    let mut plans = Vec::new();
    for d in docs {
        let name = d.wukong.metadata.name.clone().unwrap_or_default();
        let body = request_body(&d);
        let (v, _) = client
            .call(
                Method::POST,
                &format!("{}/plan", t.path(&name)),
                Some(&body),
            )
            .await?;
        plans.push(serde_json::from_value(v).map_err(|e| Failure::Failed(e.to_string()))?);
    }
    crate::output::print_plans(&plans, output)
}

/// `wukong get [NAME]`.
pub async fn get(t: &Target, name: Option<&str>, output: crate::GetFormat) -> Result<(), Failure> {
    let client = t.client().await?;
    let items = objects(t, &client, name).await?;
    match output {
        crate::GetFormat::Json => {
            let v = if name.is_some() {
                items[0].clone()
            } else {
                json!({"kind": "WukongList", "items": items})
            };
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        crate::GetFormat::Yaml => {
            let v = if name.is_some() {
                items[0].clone()
            } else {
                json!({"kind": "WukongList", "items": items})
            };
            print!("{}", serde_yaml::to_string(&v).unwrap_or_default());
        }
        crate::GetFormat::Table | crate::GetFormat::Wide => {
            let wide = output == crate::GetFormat::Wide;
            let mut rows = vec![{
                let mut h = vec!["NAME", "CPU", "MEMORY", "PHASE", "RESTART-PENDING", "AGE"];
                if wide {
                    h.extend(["GUEST-CPUS", "GUEST-MEMORY", "DISKS", "NICS"]);
                }
                h.into_iter().map(String::from).collect::<Vec<_>>()
            }];
            for o in &items {
                let s = &o["status"];
                let target = &s["autoscaling"]["target"];
                let mut r = vec![
                    o["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    autoscaled(&o["spec"]["cpu"], &target["cpu"]),
                    autoscaled(&o["spec"]["memory"], &target["memory"]),
                    s["phase"].as_str().unwrap_or("Pending").to_string(),
                    s["restartPending"].as_bool().unwrap_or(false).to_string(),
                    age(o["metadata"]["creationTimestamp"].as_str()),
                ];
                if wide {
                    let g = &s["guest"];
                    r.push(
                        g["cpusOnline"]
                            .as_u64()
                            .map_or("-".into(), |v| v.to_string()),
                    );
                    r.push(g["memory"].as_str().unwrap_or("-").to_string());
                    r.push(list_names(&o["spec"]["disks"], |d| {
                        format!(
                            "{}:{}",
                            d["name"].as_str().unwrap_or(""),
                            d["size"].as_str().unwrap_or("")
                        )
                    }));
                    r.push(list_names(&o["spec"]["networks"], |n| {
                        n["name"].as_str().unwrap_or("").to_string()
                    }));
                }
                rows.push(r);
            }
            print!("{}", table(&rows));
        }
    }
    Ok(())
}

/// The VM `name`, or every VM of the namespace.
async fn objects(t: &Target, client: &Client, name: Option<&str>) -> Result<Vec<Value>, Failure> {
    let items: Vec<Value> = match name {
        Some(n) => vec![client.call(Method::GET, &t.path(n), None).await?.0],
        None => client
            .call(
                Method::GET,
                &format!("{PREFIX}/namespaces/{}/wukongs", t.namespace),
                None,
            )
            .await?
            .0["items"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    };
    Ok(items)
}

/// A field's value in effect: the spec's, or the autoscaler's target with the spec's beside it.
fn autoscaled(spec: &Value, target: &Value) -> String {
    let show = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    if target.is_null() || target == spec {
        show(spec)
    } else {
        format!("{} (spec {}, autoscaled)", show(target), show(spec))
    }
}

/// `wukong top [NAME]`.
pub async fn top(t: &Target, name: Option<&str>) -> Result<(), Failure> {
    let client = t.client().await?;
    let items = objects(t, &client, name).await?;
    let mut rows = vec![
        [
            "NAME",
            "CPU%",
            "CPUS",
            "MEMORY(USED/TOTAL)",
            "FILESYSTEMS",
            "RECOMMENDATION",
            "READ",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let mut unread = Vec::new();
    for o in &items {
        let vm = o["metadata"]["name"].as_str().unwrap_or("").to_string();
        let a = &o["status"]["autoscaling"];
        let m = &a["metrics"];
        if m.is_null() {
            unread.push(vm);
            continue;
        }
        let fs = m["filesystems"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| {
                let rate = f["fillRate"]
                    .as_f64()
                    .filter(|r| r.abs() >= 1.0)
                    .map_or(String::new(), |r| format!(" {:+.1}MB/s", r / 1e6));
                format!(
                    "{}:{}/{}{}",
                    f["disk"].as_str().unwrap_or(""),
                    f["used"].as_str().unwrap_or("?"),
                    f["size"].as_str().unwrap_or("?"),
                    rate
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let rec = &a["recommendation"];
        let mut r = Vec::new();
        if !rec["cpu"].is_null() {
            r.push(format!("cpu={}", rec["cpu"]));
        }
        if let Some(mem) = rec["memory"].as_str() {
            r.push(format!("memory={mem}"));
        }
        for (d, size) in rec["disks"].as_object().into_iter().flatten() {
            r.push(format!("{d}={}", size.as_str().unwrap_or("")));
        }
        rows.push(vec![
            vm,
            m["cpuUtilization"]
                .as_f64()
                .map_or("-".into(), |u| format!("{u:.0}")),
            m["cpusOnline"]
                .as_u64()
                .map_or("-".into(), |c| c.to_string()),
            format!(
                "{}/{}",
                m["memoryUsed"].as_str().unwrap_or("-"),
                m["memoryTotal"].as_str().unwrap_or("-")
            ),
            if fs.is_empty() { "-".into() } else { fs },
            if r.is_empty() {
                "-".into()
            } else {
                r.join(",")
            },
            age(a["lastEvaluation"].as_str()),
        ]);
    }
    if rows.len() > 1 {
        print!("{}", table(&rows));
    }
    if !unread.is_empty() {
        println!(
            "no readings yet (the autoscaler reads VMs with spec.autoscaling): {}",
            unread.join(", ")
        );
    }
    Ok(())
}

fn list_names(v: &Value, f: impl Fn(&Value) -> String) -> String {
    v.as_array().map_or("-".into(), |a| {
        a.iter().map(f).collect::<Vec<_>>().join(",")
    })
}

fn age(ts: Option<&str>) -> String {
    let Some(t) = ts.and_then(|t| t.parse::<jiff::Timestamp>().ok()) else {
        return "-".into();
    };
    let s = jiff::Timestamp::now().as_second() - t.as_second();
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Left-aligned columns.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == r.len() {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// `wukong describe NAME`.
pub async fn describe(t: &Target, name: &str) -> Result<(), Failure> {
    let client = t.client().await?;
    let (o, _) = client.call(Method::GET, &t.path(name), None).await?;
    let (events, _) = client
        .call(
            Method::GET,
            &format!("{}/events?limit=20", t.path(name)),
            None,
        )
        .await?;
    let s = &o["status"];
    println!("Name:        {}", name);
    println!("Namespace:   {}", t.namespace);
    println!("Phase:       {}", s["phase"].as_str().unwrap_or("Pending"));
    println!(
        "Generation:  {} (observed {})",
        o["metadata"]["generation"], s["observedGeneration"]
    );
    println!("Spec:");
    print!(
        "{}",
        indent(&serde_yaml::to_string(&o["spec"]).unwrap_or_default(), 2)
    );
    println!(
        "Ceilings:    maxCpu {}, maxMemory {}, boot memory {}, boot disk {}",
        s["maxCpu"],
        s["maxMemory"].as_str().unwrap_or("-"),
        s["bootMemory"].as_str().unwrap_or("-"),
        s["bootDisk"].as_str().unwrap_or("-")
    );
    if !s["guest"].is_null() {
        println!("Guest (as the guest agent reports it):");
        print!(
            "{}",
            indent(&serde_yaml::to_string(&s["guest"]).unwrap_or_default(), 2)
        );
    }
    if !s["autoscaling"].is_null() {
        println!("Autoscaling (the target is the desired value of each owned field):");
        print!(
            "{}",
            indent(
                &serde_yaml::to_string(&s["autoscaling"]).unwrap_or_default(),
                2
            )
        );
    }
    println!("Conditions:");
    for c in s["conditions"].as_array().into_iter().flatten() {
        println!(
            "  {:16} {:5}  {:16} {}",
            c["type"].as_str().unwrap_or(""),
            c["status"].as_str().unwrap_or(""),
            c["reason"].as_str().unwrap_or(""),
            c["message"].as_str().unwrap_or("")
        );
    }
    if let Some(p) = s["pendingChanges"].as_array().filter(|p| !p.is_empty()) {
        println!("Pending restart:");
        for c in p {
            println!(
                "  {} {} — {}",
                c["resource"].as_str().unwrap_or(""),
                c["change"].as_str().unwrap_or(""),
                c["reason"].as_str().unwrap_or("")
            );
        }
    }
    for (title, op) in [
        ("Operation", &s["operation"]),
        ("Last operation", &s["lastOperation"]),
    ] {
        if op.is_null() {
            continue;
        }
        println!(
            "{title}: {} {} ({} → {})",
            op["id"].as_str().unwrap_or(""),
            op["phase"].as_str().unwrap_or(""),
            op["startedAt"].as_str().unwrap_or("-"),
            op["finishedAt"].as_str().unwrap_or("-")
        );
        for st in op["steps"].as_array().into_iter().flatten() {
            println!(
                "  {:8} {:8} {:>7} {}{}",
                st["state"].as_str().unwrap_or(""),
                st["mode"].as_str().unwrap_or(""),
                st["durationMs"]
                    .as_u64()
                    .map_or("".into(), |m| format!("{m} ms")),
                st["description"].as_str().unwrap_or(""),
                st["message"]
                    .as_str()
                    .map_or(String::new(), |m| format!(" — {m}"))
            );
        }
    }
    println!("Events:");
    for e in events["items"].as_array().into_iter().flatten() {
        if let Ok(e) = serde_json::from_value::<StoredEvent>(e.clone()) {
            println!("  {}  {}", e.time, summarize(&e.event));
        }
    }
    Ok(())
}

fn indent(s: &str, n: usize) -> String {
    s.lines()
        .map(|l| format!("{}{l}\n", " ".repeat(n)))
        .collect()
}

/// One line for an event.
pub fn summarize(e: &wukong_engine::Event) -> String {
    use wukong_engine::Event::*;
    match e {
        Planned { operation, plan } => {
            let (l, r, o) = plan.counts();
            format!("{operation}: planned {l} live, {r} restart, {o} offline step(s)")
        }
        Replanned { operation, .. } => format!("{operation}: re-planned for a newer spec"),
        StepStarted {
            operation,
            index,
            step,
        } => format!(
            "{operation}: step {index} started: {}",
            step.action.describe()
        ),
        StepProgress {
            operation,
            index,
            done,
            total,
            ..
        } => format!("{operation}: step {index} {done}/{total}"),
        StepDone {
            operation,
            index,
            duration_ms,
            note,
        } => format!(
            "{operation}: step {index} verified in {duration_ms} ms{}",
            note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
        ),
        StepFailed {
            operation,
            index,
            error,
            undone,
        } => format!(
            "{operation}: step {index} failed{}: {error}",
            if *undone { " (undone)" } else { "" }
        ),
        Restarting { operation, steps } => {
            format!("{operation}: restarting for {} change(s)", steps.len())
        }
        Restarted {
            operation,
            duration_ms,
        } => format!("{operation}: restarted in {duration_ms} ms"),
        RestartPending {
            operation, steps, ..
        } => format!("{operation}: {} change(s) wait for a restart", steps.len()),
        Notice { message, warning } => {
            format!("{}{message}", if *warning { "warning: " } else { "" })
        }
        Finished {
            operation,
            succeeded,
            message,
            ..
        } => format!(
            "{operation}: {}{}",
            if *succeeded { "succeeded" } else { "failed" },
            message.as_ref().map_or(String::new(), |m| format!(": {m}"))
        ),
    }
}

/// `wukong delete NAME`.
pub async fn delete(t: &Target, name: &str, delete_disks: bool) -> Result<(), Failure> {
    let client = t.client().await?;
    match client
        .call(
            Method::DELETE,
            &format!("{}?deleteDisks={delete_disks}", t.path(name)),
            None,
        )
        .await
    {
        Ok((v, _)) => {
            let kept = v["details"]["disksKept"].as_bool().unwrap_or(true);
            println!(
                "wukong/{name} deleted{}",
                if kept {
                    " (disk images kept; --delete-disks removes them)"
                } else {
                    " with its disk images"
                }
            );
            Ok(())
        }
        Err(ClientError::Api { code: 404, .. }) => {
            println!("wukong/{name} does not exist (nothing to delete)");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// `wukong start|stop|restart NAME`.
pub async fn lifecycle(t: &Target, name: &str, verb: &str) -> Result<(), Failure> {
    let client = t.client().await?;
    let (v, _) = client
        .call(Method::POST, &format!("{}/{verb}", t.path(name)), None)
        .await?;
    println!("wukong/{name}: {}", v["message"].as_str().unwrap_or("done"));
    Ok(())
}

/// `wukong rollback NAME`: back to the last converged spec, followed to the end.
pub async fn rollback(t: &Target, name: &str) -> Result<(), Failure> {
    let client = t.client().await?;
    let (v, seq) = client
        .call(Method::POST, &format!("{}/rollback", t.path(name)), None)
        .await?;
    for note in v["message"].as_str().unwrap_or("").split("; ") {
        println!("{note}");
    }
    let plan: PlanDocument =
        serde_json::from_value(v["plan"].clone()).map_err(|e| Failure::Failed(e.to_string()))?;
    print!("{}", plan.table());
    let from = (seq, generation_of(&v["object"]));
    if !plan.steps.is_empty() && !follow(&client, t, name, from, Duration::from_secs(600)).await? {
        return Err(Failure::Failed("the rollback's operation failed".into()));
    }
    Ok(())
}

/// `wukong exec NAME -- CMD…`: prints the output, returns the guest's exit code.
pub async fn exec(
    t: &Target,
    name: &str,
    command: Vec<String>,
    timeout: u64,
) -> Result<i32, Failure> {
    let client = t.client().await?;
    let (v, _) = client
        .call(
            Method::POST,
            &format!("{}/exec", t.path(name)),
            Some(&json!({"command": command, "timeoutSeconds": timeout})),
        )
        .await?;
    print!("{}", v["stdout"].as_str().unwrap_or(""));
    eprint!("{}", v["stderr"].as_str().unwrap_or(""));
    Ok(v["exitCode"].as_i64().unwrap_or(1) as i32)
}

/// `wukong logs NAME`.
pub async fn logs(t: &Target, name: &str, tail: Option<usize>) -> Result<(), Failure> {
    let client = t.client().await?;
    let q = tail.map_or(String::new(), |n| format!("?tail={n}"));
    let (v, _) = client
        .call(Method::GET, &format!("{}/logs{q}", t.path(name)), None)
        .await?;
    print!("{}", v.as_str().unwrap_or(""));
    Ok(())
}

/// `wukong metrics`.
pub async fn metrics(t: &Target) -> Result<(), Failure> {
    let client = t.client().await?;
    let (v, _) = client.call(Method::GET, "/metrics", None).await?;
    print!("{}", v.as_str().unwrap_or(""));
    Ok(())
}

/// `wukong wait NAME --for=condition=TYPE[=STATUS]`.
pub async fn wait(
    t: &Target,
    name: &str,
    condition: &str,
    timeout: Duration,
) -> Result<(), Failure> {
    let spec = condition.strip_prefix("condition=").ok_or_else(|| {
        Failure::Invalid(format!(
            "--for: '{condition}' is not condition=TYPE[=True|False]"
        ))
    })?;
    let (kind, want) = spec.split_once('=').unwrap_or((spec, "True"));
    let client = t.client().await?;
    let check = |o: &Value| {
        o["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| {
                c["type"] == kind
                    && c["status"]
                        .as_str()
                        .is_some_and(|s| s.eq_ignore_ascii_case(want))
            })
    };
    let watch = async {
        let mut lines = client
            .stream(&format!("{}?watch=true", t.path(name)))
            .await?;
        while let Some(line) = lines.next().await {
            let v: Value = serde_json::from_str(&line).unwrap_or_default();
            if v["type"] == "DELETED" {
                return Err(Failure::Failed(format!("wukong/{name} was deleted")));
            }
            if check(&v["object"]) {
                return Ok(());
            }
        }
        Err(Failure::Failed("the daemon closed the watch".into()))
    };
    tokio::time::timeout(timeout, watch).await.map_err(|_| {
        Failure::Failed(format!(
            "timed out after {timeout:?} waiting for {kind}={want}"
        ))
    })??;
    println!("wukong/{name} condition met: {kind}={want}");
    Ok(())
}

/// The image directory from a flag or the default.
pub fn image_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(wukong_local::paths::image_dir)
}

/// `wukong image build`.
pub async fn image_build(dir: &Path) -> Result<(), Failure> {
    let t0 = Instant::now();
    let (_, report) = wukong_local::image::build(dir)
        .await
        .map_err(|e| Failure::Failed(e.to_string()))?;
    println!("{report} ({:.1} s)", t0.elapsed().as_secs_f64());
    Ok(())
}

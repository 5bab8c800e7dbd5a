//! The local control plane: one worker per VM converges what QEMU runs to the desired spec
//! through the engine, one operation at a time per VM (VMs in parallel); lifecycle commands
//! (start, stop, restart) go through the same worker; every event is journaled in the store
//! and broadcast to watchers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use wukong_api::config::HostLimits;
use wukong_api::{Pinned, RunStrategy, VmConfig, resolve};
use wukong_engine::{
    Backend, BackendError, Desired, Engine, Event, EventSink, Journal, Timeouts, VmRef,
};

use crate::backend::LocalBackend;
use crate::store::{StoreError, StoredEvent, VmRecord, record_ref};
use wukong_engine::status;

/// A lifecycle command for a VM's worker.
#[derive(Debug)]
pub enum Command {
    /// Start (Manual/Once VMs; others follow runStrategy).
    Start,
    /// Stop.
    Stop,
    /// Restart, applying the changes that wait for one.
    Restart,
}

struct Worker {
    desired: watch::Sender<Desired>,
    nudge: Arc<Notify>,
    /// Set by a user's apply: try again now, whatever the backoff.
    retry: Arc<std::sync::atomic::AtomicBool>,
    commands: mpsc::Sender<(Command, Reply)>,
    task: tokio::task::JoinHandle<()>,
    /// The VM's autoscaler (idle while the spec owns nothing).
    autoscaler: tokio::task::JoinHandle<()>,
}

/// The daemon's shared state.
pub struct Daemon {
    /// The backend.
    pub backend: Arc<LocalBackend>,
    /// What one VM may have at most on this host.
    pub limits: HostLimits,
    /// Every journaled event, for watchers.
    pub events: broadcast::Sender<StoredEvent>,
    workers: Mutex<HashMap<VmRef, Worker>>,
    /// How often a worker re-checks its VM when nothing happens.
    pub tick: Duration,
    /// Engine timeouts.
    engine_timeouts: Mutex<Timeouts>,
    /// What `/metrics` serves.
    pub metrics: crate::metrics::Metrics,
    /// Held across a memory admission and the write it admits.
    admission: Mutex<()>,
    /// VMs QEMU holds paused on a failed disk write, with their condition (`paused.rs`).
    pub(crate) paused: Mutex<HashMap<VmRef, crate::paused::Held>>,
}

/// Host limits: vCPUs up to 8 per host core (TCG runs them as threads), memory up to three
/// quarters of the host's.
pub fn host_limits() -> HostLimits {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let max_memory = host_memory() / 4 * 3;
    HostLimits {
        max_cpu: (cores * 8).max(8),
        max_memory: max_memory - max_memory % (2 << 20),
    }
}

/// The host's MemTotal, bytes (4 GiB when /proc/meminfo cannot be read).
pub fn host_memory() -> u64 {
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(4 * 1024 * 1024);
    mem_kib * 1024
}

/// The desired configuration of a record: its spec with the fields the autoscaler owns taken
/// from its target (`Auto` mode), and runStrategy `Once` turned into `Manual` after the
/// first start.
pub fn desired_config(rec: &VmRecord) -> Result<VmConfig, wukong_api::FieldErrors> {
    let vm = record_ref(rec);
    let mut cfg = resolve(&vm.name, &rec.object.spec, &rec.pinned)?;
    wukong_api::autoscaling::effective(&mut cfg, rec.object.status.as_ref());
    if cfg.run_strategy == RunStrategy::Once
        && rec
            .object
            .status
            .as_ref()
            .and_then(|s| s.boot_cpu)
            .is_some()
    {
        cfg.run_strategy = RunStrategy::Manual;
    }
    if rec.stopped_by_user && cfg.run_strategy == RunStrategy::RerunOnFailure {
        cfg.run_strategy = RunStrategy::Manual;
    }
    Ok(cfg)
}

/// The journal and event sink of one daemon: durable events, status kept current. The end of
/// an operation is held back until the worker has written the status it leaves, so that
/// whoever waits for it reads a current status.
struct Recorder {
    daemon: Arc<Daemon>,
    finished: Mutex<Option<Event>>,
}

impl Recorder {
    fn new(daemon: Arc<Daemon>) -> Self {
        Recorder {
            daemon,
            finished: Mutex::new(None),
        }
    }

    /// Records the held-back end of the operation, if any.
    fn release(&self, vm: &VmRef) {
        let held = self.finished.lock().expect("recorder").take();
        if let Some(e) = held {
            let _ = self.write(vm, &e);
        }
    }

    fn write(&self, vm: &VmRef, event: &Event) -> Result<(), String> {
        let stored = self
            .daemon
            .backend
            .store()
            .append_event(vm, event, |r| {
                status::apply_event(r.object.status.get_or_insert_with(Default::default), event);
            })
            .map_err(|e| e.to_string())?;
        let _ = self.daemon.events.send(stored);
        Ok(())
    }
}

impl Journal for Recorder {
    fn record(&self, vm: &VmRef, event: &Event) -> Result<(), String> {
        if let Event::Finished { .. } = event {
            *self.finished.lock().expect("recorder") = Some(event.clone());
            return Ok(());
        }
        self.write(vm, event)
    }
}

impl EventSink for Recorder {
    fn emit(&self, vm: &VmRef, event: &Event) {
        // Journaled events were broadcast by `record`. Progress is only broadcast (for progress
        // bars and watchers), never written: it is frequent and worthless after the step.
        if let Event::StepProgress { .. } = event {
            let _ = self.daemon.events.send(StoredEvent {
                seq: 0,
                time: jiff::Timestamp::now().to_string(),
                vm: vm.clone(),
                event: event.clone(),
            });
        }
    }
}

impl Daemon {
    /// A daemon over `backend`.
    pub fn new(backend: Arc<LocalBackend>, limits: HostLimits) -> Arc<Daemon> {
        let (events, _) = broadcast::channel(1024);
        Arc::new(Daemon {
            backend,
            limits,
            events,
            workers: Mutex::new(HashMap::new()),
            tick: Duration::from_secs(5),
            engine_timeouts: Mutex::new(Timeouts::default()),
            metrics: Default::default(),
            admission: Mutex::new(()),
            paused: Mutex::new(HashMap::new()),
        })
    }

    /// How long the engine waits for the guest to show a step.
    pub fn set_verify_timeout(&self, t: Duration) {
        self.engine_timeouts.lock().expect("timeouts").verify = t;
    }

    /// Serialises memory admissions: hold the guard across [`Daemon::admit`] and the write
    /// it admits.
    pub fn admission(&self) -> std::sync::MutexGuard<'_, ()> {
        self.admission.lock().expect("admission")
    }

    /// The committed memory of every VM but `vm` that holds memory.
    fn others_committed(&self, vm: &VmRef) -> Result<Vec<u64>, String> {
        let records = self.backend.store().list(None).map_err(|e| e.to_string())?;
        Ok(records
            .iter()
            .filter(|r| record_ref(r) != *vm && crate::admission::holds_memory(r))
            .map(crate::admission::committed)
            .collect())
    }

    /// Admits `vm` with `memory` (the guest's) beside the other VMs, or says why not.
    pub fn admit(&self, vm: &VmRef, memory: u64) -> Result<(), String> {
        let others = self.others_committed(vm)?;
        crate::admission::check(
            self.backend.options().memory_commit,
            host_memory(),
            &others,
            memory,
        )
    }

    /// The most memory `vm` may have under the commit limit, beside the other VMs (`None`:
    /// the store could not be read).
    pub fn memory_room(&self, vm: &VmRef) -> Option<u64> {
        let others: u64 = self.others_committed(vm).ok()?.iter().sum();
        let limit = self.backend.options().memory_commit.bytes(host_memory());
        Some(limit.saturating_sub(others.saturating_add(crate::admission::QEMU_OVERHEAD)))
    }

    /// Journals a notice about `vm`.
    pub fn notice(self: &Arc<Self>, vm: &VmRef, message: String, warning: bool) {
        let _ = Recorder::new(self.clone()).write(vm, &Event::Notice { message, warning });
    }

    /// Starts a worker for every stored VM (after a daemon restart: re-attach, reconcile),
    /// and finishes the deletes a killed daemon left half done.
    pub fn resume_all(self: &Arc<Self>) -> Result<usize, StoreError> {
        let records = self.backend.store().list(None)?;
        for rec in &records {
            if rec.object.metadata.deletion_timestamp.is_some() {
                let (d, vm) = (self.clone(), record_ref(rec));
                tokio::spawn(async move {
                    if let Err(e) = d.finish_delete(&vm).await {
                        tracing::warn!(%vm, error = %e, "the delete left by the last daemon did not finish");
                    }
                });
            } else {
                self.ensure_worker(rec);
            }
        }
        Ok(records.len())
    }

    /// Deletes a VM marked for deletion: its worker stopped, QEMU stopped, its files (the disk
    /// images too if the delete asked for that) and its record removed. Safe to run again
    /// after a crash part-way.
    pub async fn finish_delete(self: &Arc<Self>, vm: &VmRef) -> Result<(), String> {
        let Some(rec) = self.backend.store().get(vm).map_err(|e| e.to_string())? else {
            return Ok(());
        };
        if rec.object.metadata.deletion_timestamp.is_none() {
            return Err(format!("{vm} is not marked for deletion"));
        }
        self.remove_worker(vm).await;
        self.backend.stop(vm).await.map_err(|e| e.to_string())?;
        let dir = self.backend.dir(vm);
        let keep_disks = !rec.delete_disks;
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if keep_disks && e.file_name() == "disks" {
                    continue;
                }
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
        if !keep_disks {
            let _ = std::fs::remove_dir(&dir);
        }
        self.backend.store().delete(vm).map_err(|e| e.to_string())?;
        self.notice(
            vm,
            if keep_disks {
                format!(
                    "deleted; disk images kept in {}",
                    dir.join("disks").display()
                )
            } else {
                "deleted with its disk images".into()
            },
            false,
        );
        Ok(())
    }

    /// Makes sure `rec`'s VM has a worker, and tells it the desired state changed.
    pub fn ensure_worker(self: &Arc<Self>, rec: &VmRecord) {
        if rec.object.metadata.deletion_timestamp.is_some() {
            return;
        }
        let vm = record_ref(rec);
        let Ok(config) = desired_config(rec) else {
            return;
        };
        let desired = Desired {
            generation: rec.object.metadata.generation.unwrap_or(1),
            config,
        };
        let mut workers = self.workers.lock().expect("workers");
        if let Some(w) = workers.get(&vm)
            && !w.task.is_finished()
        {
            // Only a new generation re-plans a running operation.
            let changed = w.desired.send_if_modified(|d| {
                let changed = d.generation != desired.generation || d.config != desired.config;
                *d = desired;
                changed
            });
            w.retry.store(true, std::sync::atomic::Ordering::SeqCst);
            // A new desired state wakes the worker by itself; a nudge on top would leave a
            // permit behind and make it plan (probe the guest) once more after the operation.
            if !changed {
                w.nudge.notify_one();
            }
            return;
        }
        let (tx, rx) = watch::channel(desired);
        let nudge = Arc::new(Notify::new());
        let retry = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ctx, crx) = mpsc::channel(8);
        let task =
            tokio::spawn(
                self.clone()
                    .work(vm.clone(), rx, nudge.clone(), retry.clone(), crx),
            );
        let autoscaler = tokio::spawn(crate::autoscale::run(self.clone(), vm.clone()));
        workers.insert(
            vm,
            Worker {
                desired: tx,
                nudge,
                retry,
                commands: ctx,
                task,
                autoscaler,
            },
        );
    }

    /// Sends a lifecycle command to the VM's worker and waits for its answer.
    pub async fn command(self: &Arc<Self>, vm: &VmRef, cmd: Command) -> Result<String, String> {
        let sender = {
            let workers = self.workers.lock().expect("workers");
            workers.get(vm).map(|w| w.commands.clone())
        };
        let sender = sender.ok_or_else(|| format!("{vm} not found"))?;
        let (tx, rx) = oneshot::channel();
        sender
            .send((cmd, tx))
            .await
            .map_err(|_| "the VM's worker stopped".to_string())?;
        rx.await
            .map_err(|_| "the VM's worker stopped".to_string())?
    }

    /// Stops and forgets the VM's worker (before deletion).
    pub async fn remove_worker(&self, vm: &VmRef) {
        let w = self.workers.lock().expect("workers").remove(vm);
        if let Some(w) = w {
            w.autoscaler.abort();
            w.task.abort();
            let _ = w.task.await;
            let _ = w.autoscaler.await;
        }
        self.metrics.autoscaler.forget(&vm.namespace, &vm.name);
    }

    async fn work(
        self: Arc<Self>,
        vm: VmRef,
        mut desired: watch::Receiver<Desired>,
        nudge: Arc<Notify>,
        retry: Arc<std::sync::atomic::AtomicBool>,
        mut commands: mpsc::Receiver<(Command, Reply)>,
    ) {
        let recorder = Recorder::new(self.clone());
        // An operation the status shows in flight was left by a daemon that was killed: it
        // ends as interrupted, and this worker plans again from what the VM has.
        let mut left = None;
        let _ = self.backend.store().update::<StoreError>(&vm, None, |r| {
            left = r.object.status.as_mut().and_then(status::interrupted);
            Ok(())
        });
        if let Some(id) = left {
            self.notice(
                &vm,
                format!("operation {id} was interrupted (the daemon stopped during it); the VM is observed and planned again"),
                true,
            );
        }
        // Whether QEMU ran when last looked at, outside our own starts and stops.
        let mut was_running: Option<bool> = None;
        let mut op_seq: u64 = 0;
        // A failed operation is not retried for the same generation until its backoff passes.
        let mut failures: Option<(i64, u32, tokio::time::Instant)> = None;
        let mut booted: Option<(Reply, Result<String, String>)> = None;
        loop {
            let Ok(Some(rec)) = self.backend.store().get(&vm) else {
                return;
            };
            // Being deleted: the delete stops QEMU and removes the files; nothing may start it.
            if rec.object.metadata.deletion_timestamp.is_some() {
                return;
            }
            let generation = rec.object.metadata.generation.unwrap_or(1);
            if retry.swap(false, std::sync::atomic::Ordering::SeqCst) {
                failures = None;
            }
            let running = self.backend.is_running(&vm);
            let died = was_running == Some(true) && !running;
            if died {
                self.notice(
                    &vm,
                    "QEMU exited unexpectedly; the VM is started again if its runStrategy says so"
                        .into(),
                    true,
                );
            }
            was_running = Some(running);
            // Paused by QEMU on a failed write: the guest cannot answer; nothing is planned
            // until it runs again (let go here once the host has room).
            let paused = running && self.check_io_pause(&vm).await;
            let backing_off = !died
                && failures.is_some_and(|(g, _, until)| {
                    g == generation && tokio::time::Instant::now() < until
                });
            op_seq += 1;
            let op = format!("{generation}-{op_seq}");
            let engine = Engine {
                backend: self.backend.as_ref(),
                journal: &recorder,
                events: &recorder,
                timeouts: *self.engine_timeouts.lock().expect("timeouts"),
            };
            if paused {
            } else if backing_off {
                self.refresh_status(&vm).await;
            } else {
                let outcome = engine.converge(&vm, &op, &mut desired).await;
                let lifecycle = outcome.as_ref().is_ok_and(|r| {
                    r.steps.iter().any(|(s, _)| {
                        matches!(
                            s.action,
                            wukong_planner::Action::Start | wukong_planner::Action::Stop
                        ) || s.mode == wukong_planner::Mode::Restart
                    })
                });
                if lifecycle {
                    was_running = Some(self.backend.is_running(&vm));
                }
                let failed = !outcome.as_ref().is_ok_and(|r| r.succeeded);
                failures = match (failed, failures) {
                    (false, _) => None,
                    (true, Some((g, n, _))) if g == generation => {
                        Some((g, n + 1, tokio::time::Instant::now() + backoff(n + 1)))
                    }
                    (true, _) => Some((generation, 1, tokio::time::Instant::now() + backoff(1))),
                };
                self.after_operation(&vm, outcome, &engine).await;
                recorder.release(&vm);
            }
            // A start or restart is answered once the operation after it (mounts, formats:
            // what a booted guest takes) has run.
            if let Some((reply, r)) = booted.take() {
                let _ = reply.send(r);
            }
            tokio::select! {
                _ = desired.changed() => {}
                _ = nudge.notified() => {}
                Some((cmd, reply)) = commands.recv() => {
                    let boots = matches!(cmd, Command::Start | Command::Restart);
                    let r = self.run_command(&vm, cmd, &recorder).await;
                    was_running = Some(self.backend.is_running(&vm));
                    if boots && r.is_ok() {
                        failures = None;
                        booted = Some((reply, r));
                    } else {
                        let _ = reply.send(r);
                    }
                }
                _ = tokio::time::sleep(self.tick) => {}
            }
        }
    }

    /// Refreshes the observed part of status without acting.
    async fn refresh_status(&self, vm: &VmRef) {
        if let Ok(o) = self.backend.observe(vm).await {
            let _ = self.backend.store().update::<StoreError>(vm, None, |r| {
                let generation = r.object.metadata.generation;
                status::observe_into(
                    r.object.status.get_or_insert_with(Default::default),
                    &o,
                    generation,
                );
                Ok(())
            });
        }
    }

    async fn after_operation(
        &self,
        vm: &VmRef,
        outcome: Result<wukong_engine::OperationReport, wukong_engine::EngineError>,
        engine: &Engine<'_, LocalBackend, Recorder, Recorder>,
    ) {
        let observed = match outcome.as_ref().ok().and_then(|r| r.observed.clone()) {
            Some(o) => Ok(o),
            None => engine.backend.observe(vm).await,
        };
        let _ = self.backend.store().update::<StoreError>(vm, None, |r| {
            let generation = r.object.metadata.generation;
            let st = r.object.status.get_or_insert_with(Default::default);
            if let Ok(o) = &observed {
                status::observe_into(st, o, generation);
            }
            match &outcome {
                Ok(report) => {
                    status::report_into(st, report);
                    if report.succeeded
                        && report.pending.is_none()
                        && generation == Some(report.generation)
                    {
                        r.last_converged = Some((report.generation, r.object.spec.clone()));
                    }
                }
                Err(e) => status::set_condition(
                    &mut st.conditions,
                    "Degraded",
                    true,
                    "CannotConverge",
                    &e.to_string(),
                    generation,
                ),
            }
            Ok(())
        });
    }

    async fn run_command(
        &self,
        vm: &VmRef,
        cmd: Command,
        recorder: &Recorder,
    ) -> Result<String, String> {
        let b = &self.backend;
        let result = match cmd {
            Command::Start => {
                let _ = b.store().update::<StoreError>(vm, None, |r| {
                    r.stopped_by_user = false;
                    Ok(())
                });
                b.start(vm)
                    .await
                    .map(|t| format!("started; guest agent ready after {:.1} s", t.as_secs_f64()))
            }
            Command::Stop => {
                let _ = b.store().update::<StoreError>(vm, None, |r| {
                    r.stopped_by_user = true;
                    Ok(())
                });
                b.stop(vm).await.map(|how| format!("stopped ({how:?})"))
            }
            Command::Restart => {
                let rec = b
                    .store()
                    .get(vm)
                    .map_err(|e| e.to_string())?
                    .ok_or("gone")?;
                let desired = desired_config(&rec).map_err(|e| e.to_string())?;
                let _ = recorder.record(
                    vm,
                    &Event::Notice {
                        message: "restart requested: pending changes are applied".into(),
                        warning: false,
                    },
                );
                b.restart(vm, &desired, &[])
                    .await
                    .map(|()| "restarted into the desired spec".to_string())
            }
        };
        let _ = recorder.write(
            vm,
            &Event::Notice {
                message: match &result {
                    Ok(m) => m.clone(),
                    Err(e) => e.to_string(),
                },
                warning: result.is_err(),
            },
        );
        result.map_err(|e: BackendError| e.to_string())
    }
}

/// Where a lifecycle command's answer goes.
type Reply = oneshot::Sender<Result<String, String>>;

/// How long to wait before retrying a generation whose operation failed `n` times: 30 s,
/// doubling, at most 10 min. A new spec is tried at once.
pub fn backoff(n: u32) -> Duration {
    Duration::from_secs((30u64 << n.saturating_sub(1).min(5)).min(600))
}

/// A new record for a VM being created.
pub fn new_record(mut object: wukong_api::Wukong, config: &VmConfig, pinned: Pinned) -> VmRecord {
    object
        .metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    object.metadata.generation = Some(1);
    object.metadata.uid = Some(format!("{:032x}", rand::random::<u128>()));
    object.metadata.creation_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
    );
    object.spec = config.to_spec();
    object.status = Some(wukong_api::WukongStatus {
        phase: Some(wukong_api::Phase::Pending),
        max_cpu: Some(pinned.max_cpu),
        max_memory: Some(wukong_api::Quantity::from_bytes(pinned.max_memory)),
        boot_disk: pinned.boot_disk.clone(),
        ..Default::default()
    });
    VmRecord {
        object,
        pinned,
        definition: config.clone(),
        boot_memory: config.memory,
        vcpu_creations: 0,
        ports: Default::default(),
        ports_total: 0,
        stopped_by_user: false,
        last_converged: None,
        delete_disks: false,
    }
}

//! The executor against a simulated VM: convergence, verification, undo, re-planning,
//! restart policy and the journal.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use wukong_api::quantity::GIB;
use wukong_api::{
    BackendKind, DiskBus, DiskConfig, NetworkSource, NicConfig, NicModel, RestartPolicy,
    RunStrategy, VmConfig,
};
use wukong_engine::{
    Backend, BackendError, Desired, Engine, Event, EventSink, Journal, StepOutcome, StepProgress,
    Timeouts, VmRef,
};
use wukong_planner::effect::{apply, apply_restart};
use wukong_planner::{Action, Capabilities, Observed, QemuVersion, Step};

/// A VM simulated by the planner's step effects; optionally misbehaving.
struct Sim {
    vm: Mutex<Observed>,
    /// The guest ignores attaches (the platform says OK, the guest never sees the disk).
    guest_ignores_attach: bool,
    /// Each applied step, in order.
    applied: Mutex<Vec<Action>>,
    /// Sent as a new desired state when the first step is applied.
    concurrent_apply: Mutex<Option<(watch::Sender<Desired>, Desired)>>,
}

impl Sim {
    fn new(config: VmConfig) -> Self {
        Sim {
            vm: Mutex::new(Observed::running(config)),
            guest_ignores_attach: false,
            applied: Mutex::new(Vec::new()),
            concurrent_apply: Mutex::new(None),
        }
    }
}

impl Backend for Sim {
    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }
    async fn observe(&self, _: &VmRef) -> Result<Observed, BackendError> {
        Ok(self.vm.lock().unwrap().clone())
    }
    async fn capabilities(&self, _: &VmRef, _: &Observed) -> Result<Capabilities, BackendError> {
        Ok(Capabilities::local(
            QemuVersion {
                major: 10,
                minor: 0,
            },
            None,
            None,
        ))
    }
    async fn apply_step(
        &self,
        _: &VmRef,
        step: &Step,
        _: &VmConfig,
        progress: &dyn StepProgress,
    ) -> Result<(), BackendError> {
        self.applied.lock().unwrap().push(step.action.clone());
        let mut vm = self.vm.lock().unwrap();
        if self.guest_ignores_attach && matches!(step.action, Action::AttachDisk { .. }) {
            let guest = vm.guest.clone();
            apply(&mut vm, &step.action);
            vm.guest = guest;
        } else {
            apply(&mut vm, &step.action);
        }
        progress.progress(1, 1, "done");
        if let Some((tx, next)) = self.concurrent_apply.lock().unwrap().take() {
            tx.send(next).unwrap();
        }
        Ok(())
    }
    async fn undo_step(&self, _: &VmRef, step: &Step) -> Result<bool, BackendError> {
        if let Action::AttachDisk { disk } = &step.action {
            apply(
                &mut self.vm.lock().unwrap(),
                &Action::DetachDisk {
                    disk: disk.name.clone(),
                },
            );
            return Ok(true);
        }
        Ok(false)
    }
    async fn restart(&self, _: &VmRef, _: &VmConfig, steps: &[Step]) -> Result<(), BackendError> {
        apply_restart(&mut self.vm.lock().unwrap(), steps);
        Ok(())
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

impl Journal for Recorder {
    fn record(&self, _: &VmRef, e: &Event) -> Result<(), String> {
        self.0.lock().unwrap().push(e.clone());
        Ok(())
    }
}
impl EventSink for Recorder {
    fn emit(&self, _: &VmRef, _: &Event) {}
}

fn base() -> VmConfig {
    VmConfig {
        cpu: 2,
        memory: 8 * GIB,
        max_cpu: 8,
        max_memory: 32 * GIB,
        disks: vec![DiskConfig {
            name: "system".into(),
            size: 20 * GIB,
            boot: true,
            hotpluggable: false,
            bus: DiskBus::Virtio,
            filesystem: None,
            source: None,
            snapshot_before_grow: false,
            storage_class: None,
            volume_mode: None,
        }],
        networks: vec![NicConfig {
            name: "default".into(),
            source: NetworkSource::User,
            mac: "52:54:00:00:00:01".into(),
            model: NicModel::Virtio,
        }],
        run_strategy: RunStrategy::Always,
        restart_policy: RestartPolicy::Never,
        maintenance_window: None,
        boot: None,
        cloud_init: None,
        autoscaling: None,
    }
}

fn data_disk() -> DiskConfig {
    DiskConfig {
        name: "data".into(),
        size: 100 * GIB,
        boot: false,
        hotpluggable: true,
        ..base().disks[0].clone()
    }
}

fn engine<'a, B: Backend>(b: &'a B, j: &'a Recorder) -> Engine<'a, B, Recorder, Recorder> {
    Engine {
        backend: b,
        journal: j,
        events: j,
        timeouts: Timeouts {
            verify: Duration::from_millis(300),
        },
    }
}

fn desired(
    generation: i64,
    config: VmConfig,
) -> (watch::Sender<Desired>, watch::Receiver<Desired>) {
    watch::channel(Desired { generation, config })
}

#[tokio::test]
async fn converges_live_and_journals_every_step() {
    let sim = Sim::new(base());
    let journal = Recorder::default();
    let mut want = base();
    want.cpu = 4;
    want.memory = 12 * GIB;
    want.disks.push(data_disk());
    let (_tx, mut rx) = desired(2, want.clone());
    let report = engine(&sim, &journal)
        .converge(&VmRef::new("default", "vm"), "op1", &mut rx)
        .await
        .unwrap();
    assert!(report.succeeded, "{:?}", report.message);
    assert_eq!(report.steps.len(), 3);
    assert!(
        report
            .steps
            .iter()
            .all(|(_, o)| matches!(o, StepOutcome::Done { .. }))
    );
    assert_eq!(sim.vm.lock().unwrap().config.cpu, 4);
    let events = journal.0.lock().unwrap();
    assert!(matches!(events.first(), Some(Event::Planned { .. })));
    assert!(matches!(
        events.last(),
        Some(Event::Finished {
            succeeded: true,
            ..
        })
    ));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::StepDone { .. }))
            .count(),
        3
    );
}

#[tokio::test]
async fn a_step_the_guest_never_shows_fails_verification_and_is_undone() {
    let mut sim = Sim::new(base());
    sim.guest_ignores_attach = true;
    let journal = Recorder::default();
    let mut want = base();
    want.disks.push(data_disk());
    let (_tx, mut rx) = desired(2, want);
    let report = engine(&sim, &journal)
        .converge(&VmRef::new("default", "vm"), "op", &mut rx)
        .await
        .unwrap();
    assert!(!report.succeeded);
    let (_, outcome) = &report.steps[0];
    match outcome {
        StepOutcome::Failed { error, undone } => {
            assert!(
                error.contains("the guest does not see disk data"),
                "{error}"
            );
            assert!(undone);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        sim.vm.lock().unwrap().config.disk("data").is_none(),
        "the attach was rolled back"
    );
}

#[tokio::test]
async fn a_new_desired_state_mid_operation_is_replanned() {
    let sim = Sim::new(base());
    let journal = Recorder::default();
    let mut first = base();
    first.cpu = 4;
    first.memory = 12 * GIB;
    let mut second = base();
    second.cpu = 3;
    let (tx, mut rx) = desired(2, first);
    *sim.concurrent_apply.lock().unwrap() = Some((
        tx.clone(),
        Desired {
            generation: 3,
            config: second.clone(),
        },
    ));
    let report = engine(&sim, &journal)
        .converge(&VmRef::new("default", "vm"), "op", &mut rx)
        .await
        .unwrap();
    assert!(report.succeeded);
    assert_eq!(report.generation, 3);
    let vm = sim.vm.lock().unwrap();
    assert_eq!((vm.config.cpu, vm.config.memory), (3, 8 * GIB));
    // The running step completed, then the rest was planned toward the newest spec.
    let applied = sim.applied.lock().unwrap();
    assert_eq!(applied[0], Action::AddVcpus { from: 2, to: 4 });
    assert!(applied.contains(&Action::RemoveVcpus {
        from: 4,
        to: 3,
        method: wukong_planner::CpuRemoval::Unplug
    }));
    assert!(
        !applied
            .iter()
            .any(|a| matches!(a, Action::GrowMemory { .. }))
    );
    assert!(
        journal
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::Replanned { .. }))
    );
}

#[tokio::test]
async fn restart_only_changes_follow_the_policy() {
    let mut want = base();
    want.cpu = 12;
    want.max_cpu = 16;
    want.memory = 10 * GIB;

    let sim = Sim::new(base());
    let journal = Recorder::default();
    let (_tx, mut rx) = desired(2, want.clone());
    let report = engine(&sim, &journal)
        .converge(&VmRef::new("default", "vm"), "op", &mut rx)
        .await
        .unwrap();
    let (reason, pending) = report.pending.expect("restart-only steps wait under Never");
    assert!(reason.contains("Never"));
    assert_eq!(pending.len(), 2, "{pending:?}");
    assert_eq!(
        sim.vm.lock().unwrap().config.memory,
        10 * GIB,
        "live steps were applied at once"
    );
    assert_eq!(sim.vm.lock().unwrap().config.cpu, 2);

    want.restart_policy = RestartPolicy::Automatic;
    let sim = Sim::new(base());
    let (_tx, mut rx) = desired(2, want);
    let report = engine(&sim, &journal)
        .converge(&VmRef::new("default", "vm"), "op", &mut rx)
        .await
        .unwrap();
    assert!(report.succeeded && report.pending.is_none());
    assert_eq!(sim.vm.lock().unwrap().config.cpu, 12);
    assert!(
        report
            .steps
            .iter()
            .any(|(_, o)| *o == StepOutcome::Restarted)
    );
}

#[tokio::test]
async fn a_refused_change_touches_nothing() {
    let sim = Sim::new(base());
    let journal = Recorder::default();
    let mut want = base();
    want.disks[0].size = GIB;
    let (_tx, mut rx) = desired(2, want);
    let err = engine(&sim, &journal)
        .converge(&VmRef::new("default", "vm"), "op", &mut rx)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("disks never shrink"), "{err}");
    assert!(sim.applied.lock().unwrap().is_empty());
    assert!(journal.0.lock().unwrap().is_empty());
}

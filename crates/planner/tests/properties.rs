//! Property tests: plans converge a simulated VM, are empty when converged, never shrink or
//! lose a disk.

use proptest::prelude::*;
use wukong_api::quantity::{GIB, MIB};
use wukong_api::{
    DiskBus, DiskConfig, FilesystemSpec, FsType, NetworkSource, NicConfig, NicModel, RestartPolicy,
    RunStrategy, VmConfig,
};
use wukong_planner::effect::{apply, apply_restart};
use wukong_planner::{Action, Capabilities, Mode, Observed, QemuVersion, plan};

const DISKS: [&str; 4] = ["system", "data", "logs", "scratch"];
const NICS: [&str; 3] = ["default", "lan", "mgmt"];

fn now() -> jiff::Timestamp {
    "2026-11-25T12:00:00Z".parse().unwrap()
}

fn disk(name: &str, gib: u64, fs: bool, hotpluggable: bool) -> DiskConfig {
    DiskConfig {
        name: name.into(),
        size: gib * GIB,
        boot: name == "system",
        hotpluggable: name != "system" && hotpluggable,
        bus: DiskBus::Virtio,
        filesystem: fs.then(|| FilesystemSpec {
            fs_type: FsType::Ext4,
            mount_path: format!("/mnt/{name}"),
        }),
        source: None,
        snapshot_before_grow: false,
        storage_class: None,
        volume_mode: None,
    }
}

fn nic(name: &str, source: u8, mac: u8) -> NicConfig {
    NicConfig {
        name: name.into(),
        source: match source % 3 {
            0 => NetworkSource::User,
            1 => NetworkSource::Tap(format!("tap{source}")),
            _ => NetworkSource::Multus(format!("net{source}")),
        },
        mac: format!("52:54:00:00:00:{mac:02x}"),
        model: NicModel::Virtio,
    }
}

/// An observed VM and a desired one that is a legal change of it.
fn pair() -> impl Strategy<Value = (VmConfig, VmConfig)> {
    (
        (1u32..=8, 1u32..=8, 1u32..=16, 1u64..=16, 1u64..=16),
        prop::collection::vec(
            (
                any::<bool>(),
                any::<bool>(),
                0u64..4,
                any::<bool>(),
                any::<bool>(),
            ),
            4,
        ),
        prop::collection::vec(
            (any::<bool>(), any::<bool>(), 0u8..3, 0u8..3, any::<bool>()),
            3,
        ),
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |((c1, c2, maxc, m1, m2), disks, nics, (raise_max_cpu, raise_max_mem))| {
                let max_cpu = maxc.max(c1);
                let max_mem = 16 * 256 * MIB;
                let mut have = VmConfig {
                    cpu: c1.min(max_cpu),
                    memory: m1 * 256 * MIB,
                    max_cpu,
                    max_memory: max_mem,
                    disks: vec![],
                    networks: vec![],
                    run_strategy: RunStrategy::Always,
                    restart_policy: RestartPolicy::Automatic,
                    maintenance_window: None,
                    boot: None,
                    cloud_init: None,
                    autoscaling: None,
                };
                let mut want = VmConfig {
                    cpu: c2,
                    memory: m2 * 256 * MIB,
                    max_cpu: if raise_max_cpu {
                        max_cpu.max(c2) + 2
                    } else {
                        max_cpu.max(c2)
                    },
                    max_memory: if raise_max_mem { max_mem * 2 } else { max_mem },
                    ..have.clone()
                };
                for (i, (in_have, in_want, grow, fs, hot)) in disks.into_iter().enumerate() {
                    let name = DISKS[i];
                    let boot = i == 0;
                    let base = 10 + i as u64;
                    if in_have || boot {
                        have.disks.push(disk(name, base, fs, hot));
                    }
                    if in_want || boot {
                        let fs_want = fs;
                        want.disks.push(disk(name, base + grow, fs_want, hot));
                    }
                }
                for (i, (in_have, in_want, src, mac, change)) in nics.into_iter().enumerate() {
                    let name = NICS[i];
                    if in_have {
                        have.networks.push(nic(name, src, i as u8));
                    }
                    if in_want {
                        let (src2, mac2) = if change {
                            (mac, 10 + i as u8)
                        } else {
                            (src, i as u8)
                        };
                        want.networks.push(nic(name, src2, mac2));
                    }
                }
                (have, want)
            },
        )
}

fn caps_strategy() -> impl Strategy<Value = Capabilities> {
    prop_oneof![
        Just(Capabilities::local(
            QemuVersion {
                major: 10,
                minor: 0
            },
            None,
            Some(2)
        )),
        Just(Capabilities::local(
            QemuVersion { major: 7, minor: 2 },
            Some(1),
            None
        )),
        Just(Capabilities::kubevirt()),
    ]
}

fn normalized(mut c: VmConfig) -> VmConfig {
    c.disks.sort_by(|a, b| a.name.cmp(&b.name));
    c.networks.sort_by(|a, b| a.name.cmp(&b.name));
    c
}

/// Carries out a plan on the simulated VM the way the engine does: live steps, then (when
/// allowed) one restart with the restart-only steps. Free hotplug slots follow what was
/// plugged and unplugged live (a restart gives the VM a fresh set).
fn carry_out(vm: &mut Observed, p: &wukong_planner::Plan, caps: &mut Capabilities) {
    let initial = caps.hotplug_slots;
    for s in p.steps.iter().filter(|s| s.mode != Mode::Restart) {
        apply(vm, &s.action);
        if let (Some(n), Mode::Live) = (caps.hotplug_slots.as_mut(), s.mode) {
            match s.action {
                Action::AttachDisk { .. } | Action::AddNic { .. } => *n -= 1,
                Action::DetachDisk { .. } | Action::RemoveNic { .. } => *n += 1,
                _ => {}
            }
        }
    }
    if p.restart.as_ref().is_some_and(|r| r.allowed_now) {
        apply_restart(vm, &p.steps);
        caps.hotplug_slots = initial;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn a_plan_reaches_the_desired_state_and_then_is_empty((have, want) in pair(), mut caps in caps_strategy()) {
        let mut vm = Observed::running(have);
        let p = plan(&want, &vm, &caps, now()).unwrap();
        carry_out(&mut vm, &p, &mut caps);
        prop_assert_eq!(normalized(vm.config.clone()), normalized(want.clone()));
        let again = plan(&want, &vm, &caps, now()).unwrap();
        prop_assert!(again.is_empty(), "not converged: {:?}", again.steps);
    }

    #[test]
    fn without_restart_only_the_restart_steps_remain((have, mut want) in pair(), mut caps in caps_strategy()) {
        want.restart_policy = RestartPolicy::Never;
        let mut vm = Observed::running(have);
        let p = plan(&want, &vm, &caps, now()).unwrap();
        prop_assert!(p.restart.as_ref().is_none_or(|r| !r.allowed_now));
        carry_out(&mut vm, &p, &mut caps);
        let again = plan(&want, &vm, &caps, now()).unwrap();
        prop_assert!(again.steps.iter().all(|s| s.mode == Mode::Restart), "{:?}", again.steps);
        prop_assert_eq!(again.steps.len(), p.steps.iter().filter(|s| s.mode == Mode::Restart).count());
    }

    #[test]
    fn a_stopped_vm_changes_offline_then_starts((have, want) in pair(), caps in caps_strategy()) {
        let mut vm = Observed::running(have);
        vm.running = false;
        vm.guest = None;
        let p = plan(&want, &vm, &caps, now()).unwrap();
        prop_assert!(p.restart.is_none());
        prop_assert_eq!(p.steps.last().map(|s| &s.action), Some(&Action::Start));
        carry_out(&mut vm, &p, &mut caps.clone());
        prop_assert_eq!(normalized(vm.config.clone()), normalized(want.clone()));
    }

    #[test]
    fn no_plan_shrinks_or_loses_a_disk((have, mut want) in pair(), caps in caps_strategy(), shrink in 0usize..4, boot_gone in any::<bool>()) {
        let vm = Observed::running(have.clone());
        if let Ok(p) = plan(&want, &vm, &caps, now()) {
            for s in &p.steps {
                match &s.action {
                    Action::GrowDisk { from, to, .. } => prop_assert!(to > from),
                    Action::DetachDisk { disk } => prop_assert_ne!(disk.as_str(), "system"),
                    _ => {}
                }
            }
        }
        // A desired state that shrinks a disk or drops the boot disk is refused whole.
        let idx = shrink % want.disks.len();
        if let Some(h) = have.disk(&want.disks[idx].name) {
            want.disks[idx].size = h.size - 512;
            prop_assert!(plan(&want, &vm, &caps, now()).is_err());
        }
        if boot_gone {
            want.disks.retain(|d| d.name != "system");
            prop_assert!(plan(&want, &vm, &caps, now()).is_err());
        }
    }
}

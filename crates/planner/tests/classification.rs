//! Which changes are live and which need a restart, per capability set, as a reviewed table.

use wukong_api::quantity::{GIB, MIB};
use wukong_api::{
    DiskBus, DiskConfig, NetworkSource, NicConfig, NicModel, RestartPolicy, RunStrategy, VmConfig,
};
use wukong_planner::{Capabilities, Observed, QemuVersion, plan};

fn vm() -> VmConfig {
    let disk = |name: &str, gib: u64| DiskConfig {
        name: name.into(),
        size: gib * GIB,
        boot: name == "system",
        hotpluggable: name != "system",
        bus: DiskBus::Virtio,
        filesystem: None,
        source: None,
        snapshot_before_grow: false,
        storage_class: None,
        volume_mode: None,
    };
    VmConfig {
        cpu: 2,
        memory: 8 * GIB,
        max_cpu: 8,
        max_memory: 32 * GIB,
        disks: vec![disk("system", 20), disk("data", 100)],
        networks: vec![
            NicConfig {
                name: "default".into(),
                source: NetworkSource::Pod,
                mac: "52:54:00:00:00:01".into(),
                model: NicModel::Virtio,
            },
            NicConfig {
                name: "lan".into(),
                source: NetworkSource::Multus("lan".into()),
                mac: "52:54:00:00:00:02".into(),
                model: NicModel::Virtio,
            },
        ],
        run_strategy: RunStrategy::Always,
        restart_policy: RestartPolicy::Never,
        maintenance_window: None,
        boot: None,
        cloud_init: None,
        autoscaling: None,
    }
}

/// A named change to the base VM.
type Change = (&'static str, Box<dyn Fn(&mut VmConfig)>);

fn changes() -> Vec<Change> {
    vec![
        ("cpu 2 -> 4", Box::new(|c: &mut VmConfig| c.cpu = 4)),
        ("cpu 2 -> 1", Box::new(|c: &mut VmConfig| c.cpu = 1)),
        (
            "cpu 2 -> 12, maxCpu 16",
            Box::new(|c: &mut VmConfig| {
                c.cpu = 12;
                c.max_cpu = 16
            }),
        ),
        (
            "memory 8Gi -> 12Gi",
            Box::new(|c: &mut VmConfig| c.memory = 12 * GIB),
        ),
        (
            "memory 8Gi -> 4Gi (below boot)",
            Box::new(|c: &mut VmConfig| c.memory = 4 * GIB),
        ),
        (
            "maxMemory 32Gi -> 64Gi",
            Box::new(|c: &mut VmConfig| c.max_memory = 64 * GIB),
        ),
        (
            "grow data 100Gi -> 150Gi",
            Box::new(|c: &mut VmConfig| c.disks[1].size = 150 * GIB),
        ),
        (
            "attach logs 10Gi",
            Box::new(|c: &mut VmConfig| {
                let mut d = c.disks[1].clone();
                d.name = "logs".into();
                d.size = 10 * GIB;
                c.disks.push(d)
            }),
        ),
        (
            "attach cold (not hotpluggable)",
            Box::new(|c: &mut VmConfig| {
                let mut d = c.disks[1].clone();
                d.name = "cold".into();
                d.hotpluggable = false;
                c.disks.push(d)
            }),
        ),
        (
            "detach data",
            Box::new(|c: &mut VmConfig| {
                c.disks.pop();
            }),
        ),
        (
            "remove NIC lan (multus)",
            Box::new(|c: &mut VmConfig| {
                c.networks.pop();
            }),
        ),
        (
            "remove NIC default (pod)",
            Box::new(|c: &mut VmConfig| {
                c.networks.remove(0);
            }),
        ),
        (
            "add NIC mgmt",
            Box::new(|c: &mut VmConfig| {
                let mut n = c.networks[1].clone();
                n.name = "mgmt".into();
                n.mac = "52:54:00:00:00:03".into();
                c.networks.push(n)
            }),
        ),
        (
            "change MAC of lan",
            Box::new(|c: &mut VmConfig| c.networks[1].mac = "52:54:00:00:00:09".into()),
        ),
    ]
}

fn table(caps: &Capabilities, boot_memory: u64) -> String {
    let now = "2026-11-25T12:00:00Z".parse().unwrap();
    let mut out = String::new();
    for (name, change) in changes() {
        let mut want = vm();
        change(&mut want);
        let mut observed = Observed::running(vm());
        observed.boot_memory = boot_memory;
        let p = plan(&want, &observed, caps, now).unwrap();
        out.push_str(&format!("{name}\n"));
        for s in &p.steps {
            out.push_str(&format!(
                "  {:8} {} — {}\n",
                s.mode.to_string(),
                s.action.describe(),
                s.reason
            ));
        }
    }
    out
}

#[test]
fn local_qemu_10() {
    insta::assert_snapshot!(table(
        &Capabilities::local(
            QemuVersion {
                major: 10,
                minor: 0
            },
            Some(6),
            Some(1)
        ),
        8 * GIB
    ));
}

#[test]
fn local_qemu_7_2() {
    insta::assert_snapshot!(table(
        &Capabilities::local(QemuVersion { major: 7, minor: 2 }, None, None),
        8 * GIB
    ));
}

#[test]
fn kubevirt_live_migratable() {
    insta::assert_snapshot!(table(&Capabilities::kubevirt(), 8 * GIB));
}

#[test]
fn kubevirt_booted_below_1gi_has_no_memory_hotplug() {
    let caps = Capabilities::kubevirt();
    let mut have = vm();
    have.memory = 512 * MIB;
    let mut want = have.clone();
    want.memory = 2 * GIB;
    let p = plan(
        &want,
        &Observed::running(have),
        &caps,
        "2026-11-25T12:00:00Z".parse().unwrap(),
    )
    .unwrap();
    assert_eq!(p.steps.len(), 1);
    assert_eq!(p.steps[0].mode, wukong_planner::Mode::Restart);
    assert_eq!(
        p.steps[0].reason,
        "the VM booted with 512 MiB and memory hotplug needs at least 1 GiB at boot"
    );
}

//! Commands that need no VM: `validate` and `plan --observed`.

use std::io::Read;
use std::path::Path;

use wukong_api::config::HostLimits;
use wukong_api::document::{Document, parse_documents};
use wukong_api::merge::merge_spec;
use wukong_api::{BackendKind, Pinned, resolve, resolve_new};
use wukong_planner::{Capabilities, Observed, PlanDocument, QemuVersion, plan as make_plan};

use crate::{Failure, Format};

/// Reads a file, or stdin for `-`.
pub fn read_input(path: &Path) -> Result<String, Failure> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Failure::Invalid(format!("stdin: {e}")))?;
        Ok(s)
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| Failure::Invalid(format!("{}: {e}", path.display())))
    }
}

/// Parses every document of a file.
pub fn documents(path: &Path) -> Result<Vec<Document>, Failure> {
    let text = read_input(path)?;
    parse_documents(&text)
        .map_err(|e| Failure::from_kind(e.kind(), format!("{}: {e}", path.display())))
}

/// `wukong validate`.
pub fn validate(path: &Path, backend: Option<BackendKind>) -> Result<(), Failure> {
    for d in documents(path)? {
        let name = d.wukong.metadata.name.as_deref().unwrap_or_default();
        if let Some(b) = backend {
            wukong_api::validate::validate_for_backend(&d.wukong.spec, b)
                .map_err(|e| Failure::from_kind(e.kind(), format!("{name}: {e}")))?;
        }
        println!("{name}: valid");
    }
    Ok(())
}

/// `wukong plan -f FILE --observed OBSERVED`.
pub fn plan(
    path: &Path,
    observed_path: &Path,
    backend: BackendKind,
    qemu_version: &str,
    output: Format,
    now: jiff::Timestamp,
    cluster: Option<&Path>,
) -> Result<(), Failure> {
    let observed_docs = documents(observed_path)?;
    let facts = cluster.map(cluster_facts).transpose()?;
    let qemu = parse_qemu_version(qemu_version)?;
    let mut plans = Vec::new();
    for d in documents(path)? {
        let name = d.wukong.metadata.name.clone().unwrap_or_default();
        let current = observed_docs
            .iter()
            .find(|o| o.wukong.metadata.name.as_deref() == Some(name.as_str()))
            .ok_or_else(|| {
                Failure::Invalid(format!(
                    "{name}: no document named {name} in {}",
                    observed_path.display()
                ))
            })?;
        let (mut observed, pinned) = observed_vm(current, backend)?;
        let merged = merge_spec(&observed.config.to_spec(), &d.raw_spec)
            .map_err(|e| Failure::from_kind(e.kind(), format!("{name}: {e}")))?;
        wukong_api::validate::validate_for_backend(&merged, backend)
            .map_err(|e| Failure::from_kind(e.kind(), format!("{name}: {e}")))?;
        let desired = resolve(&name, &merged, &pinned)
            .map_err(|e| Failure::from_kind(e.kind(), format!("{name}: {e}")))?;
        let caps = match (backend, &facts) {
            (BackendKind::Local, _) => Capabilities::local(qemu, None, None),
            (BackendKind::Kubevirt, None) => Capabilities::kubevirt(),
            (BackendKind::Kubevirt, Some(f)) => {
                let disks: Vec<(String, Option<String>)> = desired
                    .disks
                    .iter()
                    .map(|d| (d.name.clone(), d.storage_class.clone()))
                    .collect();
                let pf = wukong_kubevirt::preflight(&name, f, &disks);
                if let Some(b) = pf.guest_at_boot {
                    observed.boot_memory = b;
                }
                for n in &pf.notes {
                    eprintln!("{name}: cluster: {n}");
                }
                pf.capabilities
            }
        };
        let p = make_plan(&desired, &observed, &caps, now)
            .map_err(|e| Failure::NotAllowed(format!("{name}: {e}")))?;
        plans.push(PlanDocument::new(&name, backend, &p));
    }
    crate::output::print_plans(&plans, output)
}

/// The VM an observed document describes: its spec resolved with the creation defaults, its
/// status supplying what was pinned and how it booted.
fn observed_vm(doc: &Document, backend: BackendKind) -> Result<(Observed, Pinned), Failure> {
    let name = doc.wukong.metadata.name.clone().unwrap_or_default();
    let bad = |e: wukong_api::FieldErrors| Failure::Invalid(format!("{name} (observed): {e}"));
    let status = doc.wukong.status.clone().unwrap_or_default();
    // What the status pinned wins over what creation would choose today.
    let mut spec = doc.wukong.spec.clone();
    spec.max_cpu = spec.max_cpu.or(status.max_cpu);
    spec.max_memory = spec.max_memory.or(status.max_memory.clone());
    if let Some(boot) = &status.boot_disk {
        for d in spec.disks.iter_mut().flatten() {
            d.boot = (d.name == *boot).then_some(true);
        }
    }
    let (config, pinned) =
        resolve_new(&name, &spec, backend, HostLimits::UNLIMITED).map_err(bad)?;
    let mut vm = Observed::running(config);
    if let Some(b) = status.boot_memory.as_ref().and_then(|q| q.bytes().ok()) {
        vm.boot_memory = b;
    }
    if status.phase == Some(wukong_api::Phase::Stopped) {
        vm.running = false;
        vm.guest = None;
    }
    Ok((vm, pinned))
}

fn parse_qemu_version(s: &str) -> Result<QemuVersion, Failure> {
    let bad = || Failure::Invalid(format!("--qemu-version: '{s}' is not MAJOR.MINOR"));
    let (major, minor) = s.split_once('.').ok_or_else(bad)?;
    Ok(QemuVersion {
        major: major.parse().map_err(|_| bad())?,
        minor: minor.parse().map_err(|_| bad())?,
    })
}

/// The cluster objects of `--cluster`.
fn cluster_facts(path: &Path) -> Result<wukong_kubevirt::ClusterFacts, Failure> {
    let text = read_input(path)?;
    let mut objects = Vec::new();
    for de in serde_yaml::Deserializer::from_str(&text) {
        let v: serde_json::Value = serde::Deserialize::deserialize(de)
            .map_err(|e| Failure::Invalid(format!("{}: {e}", path.display())))?;
        if !v.is_null() {
            objects.push(v);
        }
    }
    Ok(wukong_kubevirt::ClusterFacts::from_objects(objects))
}

/// `wukong render -f FILE --target kubevirt`: the objects the operator creates, resolved with
/// the creation defaults (ceilings and boot disk pinned from `status` when given).
pub fn render(path: &Path, output: Format) -> Result<(), Failure> {
    let mut out = Vec::new();
    for d in documents(path)? {
        let (observed, _) = observed_vm(&d, BackendKind::Kubevirt)?;
        let name = d.wukong.metadata.name.clone().unwrap_or_default();
        let ns = d
            .wukong
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let r = wukong_kubevirt::render(&name, &ns, &observed.config);
        out.push(r.vm);
        out.extend(r.pvcs);
    }
    match output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default()),
        _ => {
            for o in out {
                println!("---");
                print!("{}", serde_yaml::to_string(&o).unwrap_or_default());
            }
        }
    }
    Ok(())
}

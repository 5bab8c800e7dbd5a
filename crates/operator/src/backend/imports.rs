//! CDI imports: where one disk's DataVolume stands (read from its status alone), the imports a
//! VM waits for before KubeVirt starts it, and the wait of a disk with a source hot-plugged
//! into a running VM, with its progress.

use std::time::{Duration, Instant};

use serde_json::Value;
use wukong_api::{DiskConfig, VmConfig};
use wukong_engine::{BackendError, StepProgress, VmRef};
use wukong_kubevirt::render::pvc_name;

use super::{KubevirtBackend, dv_resource, pvc_resource, vmi_resource};

/// Importer restarts without progress after which an import counts as failed (CDI backs off
/// 10 s, 20 s, 40 s…: about a minute).
pub const IMPORT_RESTARTS: u64 = 3;

/// Where the imports of a VM's disks stand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Imports {
    /// Every disk with a source is imported (or there is none).
    Done,
    /// Some are on their way: what each is doing.
    Pending(String),
    /// One failed, with the reason.
    Failed(String),
}

/// Where one disk's DataVolume stands.
#[derive(Clone, Debug, PartialEq)]
pub enum DvState {
    /// Imported.
    Done,
    /// On its way: CDI's phase and progress ("ImportInProgress 47.00%"), and the progress as
    /// a fraction when CDI gives one.
    Pending(String, Option<f64>),
    /// Failed, or getting nowhere, with the reason.
    Failed(String),
}

/// Where DataVolume `dv` of `disk` stands, from its status. CDI never marks an import that
/// cannot reach its source Failed: its importer restarts with progress `N/A`, for ever, so
/// [`IMPORT_RESTARTS`] restarts without a percentage count as failed.
pub fn dv_state(dv: &Value, disk: &DiskConfig) -> DvState {
    let status = &dv["status"];
    let phase = status["phase"].as_str().unwrap_or("Pending");
    let progress = status["progress"].as_str().unwrap_or("N/A");
    let restarts = status["restartCount"].as_u64().unwrap_or(0);
    let reason = || {
        status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|c| c["message"].as_str().filter(|m| !m.is_empty()))
            .unwrap_or("no reason given")
            .to_string()
    };
    let source = disk
        .source
        .as_ref()
        .and_then(|s| s.describe())
        .unwrap_or_default();
    let percent = progress
        .strip_suffix('%')
        .and_then(|p| p.trim().parse::<f64>().ok())
        .filter(|p| (0.0..=100.0).contains(p));
    match phase {
        "Succeeded" => DvState::Done,
        "Failed" => DvState::Failed(format!(
            "disk {}: the import from {source} failed: {}",
            disk.name,
            reason()
        )),
        _ if restarts >= IMPORT_RESTARTS && percent.is_none() => DvState::Failed(format!(
            "disk {}: the import from {source} is not getting anywhere (importer restarted {restarts} times, progress {progress}): {}",
            disk.name,
            reason()
        )),
        _ => DvState::Pending(
            format!("disk {}: {phase} {progress}", disk.name),
            percent.map(|p| p / 100.0),
        ),
    }
}

impl KubevirtBackend {
    /// Where the imports of the disks with a source of a VM KubeVirt has not started stand
    /// (CDI's DataVolumes, by GET). A disk whose PVC is bound counts as imported whether or
    /// not its DataVolume is still there.
    pub async fn imports(&self, vm: &VmRef, desired: &VmConfig) -> Result<Imports, BackendError> {
        // KubeVirt starts a VM once the DataVolumes of its templates are imported; a disk
        // with a source added to a running VM is its attach step's business.
        if self
            .get(&vmi_resource(), &vm.namespace, &vm.name)
            .await?
            .is_some()
        {
            return Ok(Imports::Done);
        }
        let mut pending = Vec::new();
        for d in desired.disks.iter().filter(|d| d.source.is_some()) {
            match self.dv_of(vm, d).await? {
                DvState::Done => {}
                DvState::Failed(why) => return Ok(Imports::Failed(why)),
                DvState::Pending(what, _) => pending.push(what),
            }
        }
        Ok(if pending.is_empty() {
            Imports::Done
        } else {
            Imports::Pending(pending.join("; "))
        })
    }

    /// Where the DataVolume of `disk` stands; a disk without one is imported when its PVC is
    /// bound (CDI may have garbage-collected the DataVolume), else waited for.
    async fn dv_of(&self, vm: &VmRef, disk: &DiskConfig) -> Result<DvState, BackendError> {
        let name = pvc_name(&vm.name, &disk.name);
        // None also where there is no CDI at all (the resource is unknown: a 404 too).
        if let Some(dv) = self.get(&dv_resource(), &vm.namespace, &name).await? {
            return Ok(dv_state(&dv, disk));
        }
        let bound = self
            .get(&pvc_resource(), &vm.namespace, &name)
            .await?
            .is_some_and(|p| p["status"]["phase"] == "Bound");
        Ok(if bound {
            DvState::Done
        } else {
            DvState::Pending(
                format!(
                    "disk {}: waiting for its DataVolume {name} (is CDI installed?)",
                    disk.name
                ),
                None,
            )
        })
    }

    /// Waits until the import of `disk` (a disk with a source being added to a running VM)
    /// has succeeded, reporting CDI's progress; a failed or stuck import, or one that takes
    /// longer than the import timeout, fails the step.
    pub(super) async fn await_import(
        &self,
        vm: &VmRef,
        disk: &DiskConfig,
        progress: &dyn StepProgress,
    ) -> Result<(), BackendError> {
        let deadline = Instant::now() + self.timeouts.import;
        let mut last = String::new();
        loop {
            match self.dv_of(vm, disk).await? {
                DvState::Done => return Ok(()),
                DvState::Failed(why) => return Err(BackendError::Failed(why)),
                DvState::Pending(what, fraction) => {
                    if what != last {
                        let done = fraction.map_or(0, |f| (f * 10_000.0) as u64);
                        progress.progress(done, 10_000, &what);
                        last = what;
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(BackendError::Timeout {
                    what: format!("the import of disk {} ({last})", disk.name),
                    after: self.timeouts.import,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn disk() -> DiskConfig {
        serde_json::from_value(json!({"name": "tools", "size": 5u64 << 30, "boot": false,
            "hotpluggable": true, "bus": "virtio", "filesystem": null,
            "source": {"http": {"url": "https://images.example/t.qcow2"}},
            "storageClass": null, "volumeMode": null}))
        .expect("disk")
    }

    #[test]
    fn a_datavolume_status_reads_as_done_on_its_way_or_failed() {
        let d = disk();
        let dv = |status: Value| json!({ "status": status });
        assert_eq!(
            dv_state(&dv(json!({"phase": "Succeeded", "progress": "100.0%"})), &d),
            DvState::Done
        );
        assert_eq!(
            dv_state(
                &dv(json!({"phase": "ImportInProgress", "progress": "47.00%"})),
                &d
            ),
            DvState::Pending("disk tools: ImportInProgress 47.00%".into(), Some(0.47))
        );
        // No status yet: pending, progress unknown (not 0 %).
        assert_eq!(
            dv_state(&json!({}), &d),
            DvState::Pending("disk tools: Pending N/A".into(), None)
        );
        // A percentage out of range is no percentage.
        assert!(matches!(
            dv_state(
                &dv(json!({"phase": "ImportInProgress", "progress": "470%"})),
                &d
            ),
            DvState::Pending(_, None)
        ));
        let failed = dv(json!({"phase": "Failed",
            "conditions": [{"type": "Running", "message": "checksum mismatch"}]}));
        assert!(matches!(dv_state(&failed, &d),
            DvState::Failed(m) if m.contains("https://images.example/t.qcow2") && m.contains("checksum mismatch")));
        // Restarting without progress: failed once IMPORT_RESTARTS is reached, not before.
        let stuck = |n: u64| {
            dv(
                json!({"phase": "ImportInProgress", "progress": "N/A", "restartCount": n,
                "conditions": [{"message": "Unable to connect to http data source"}]}),
            )
        };
        assert!(matches!(
            dv_state(&stuck(IMPORT_RESTARTS - 1), &d),
            DvState::Pending(..)
        ));
        assert!(matches!(dv_state(&stuck(IMPORT_RESTARTS), &d),
            DvState::Failed(m) if m.contains("not getting anywhere") && m.contains("Unable to connect")));
        // Restarts with progress are a slow import, not a stuck one.
        let slow = dv(json!({"phase": "ImportInProgress", "progress": "12.5%", "restartCount": 5}));
        assert!(matches!(dv_state(&slow, &d), DvState::Pending(_, Some(_))));
    }
}

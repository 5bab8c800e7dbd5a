//! DataVolumes as KubeVirt and CDI handle them: virt-controller makes one from each of a
//! VM's `dataVolumeTemplates` (owned by the VM); CDI's importer takes it through
//! `ImportScheduled` → `ImportInProgress` (with progress) → `Succeeded`, creating its PVC
//! (same name, owned by the DataVolume). An import told to get stuck stays `ImportInProgress`
//! with progress `N/A` while its importer pod restarts, as CDI does with a URL that does not
//! answer: it is never marked Failed.

use std::time::Duration;

use serde_json::{Value, json};

use crate::objects::{DV, PVC};
use crate::{Sim, Work};

/// How long the simulated importer pod takes to crash and be restarted (CDI backs off for
/// longer; a test only needs the count to grow).
const IMPORTER_RESTART: Duration = Duration::from_millis(100);
/// Restarts after which the simulated importer stops (keeps a stuck import from running
/// forever in a long test run).
const MAX_RESTARTS: u64 = 20;

impl Sim {
    /// Creates the DataVolumes of VM `vm`'s templates that do not exist yet.
    pub(crate) async fn ensure_data_volumes(&self, ns: &str, vm: &Value) {
        for t in vm["spec"]["dataVolumeTemplates"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let Some(name) = t["metadata"]["name"].as_str() else {
                continue;
            };
            if !matches!(self.objects.get(DV, ns, name).await, Ok(None)) {
                continue;
            }
            let dv = json!({
                "metadata": {"name": name, "namespace": ns, "labels": t["metadata"]["labels"],
                    "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                        "name": vm["metadata"]["name"], "uid": vm["metadata"]["uid"],
                        "controller": true, "blockOwnerDeletion": true}]},
                "spec": t["spec"],
            });
            if self.objects.create(DV, ns, dv).await.is_ok() {
                self.kick(Work::Dv(ns.to_string(), name.to_string()));
            }
        }
    }

    async fn write_dv_status(&self, ns: &str, name: &str, dv: &mut Value, status: Value) -> bool {
        dv["status"] = status;
        match self.objects.replace_status(DV, ns, name, dv).await {
            Ok(w) => {
                self.wrote(DV.kind(), &w);
                *dv = w;
                true
            }
            Err(_) => false,
        }
    }

    /// CDI's importer for DataVolume `name`: one step of a stuck import, or the whole of a
    /// good one (each status a write of its own, so watchers see the progress).
    pub(crate) async fn import(&self, ns: &str, name: &str) {
        let Ok(Some(mut dv)) = self.objects.get(DV, ns, name).await else {
            return;
        };
        if dv["metadata"].get("deletionTimestamp").is_some()
            || matches!(dv["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
        {
            return;
        }
        let (stuck, held) = {
            let f = self.faults.lock().expect("faults");
            (f.import_stuck.contains(name), f.import_held.contains(name))
        };
        if stuck {
            let restarts = dv["status"]["restartCount"].as_u64().unwrap_or(0);
            if restarts >= MAX_RESTARTS {
                return;
            }
            let status = json!({"phase": "ImportInProgress", "progress": "N/A",
                                "restartCount": restarts + 1,
                                "conditions": [{"type": "Running", "status": "False",
                                    "reason": "Error", "message": "Unable to connect to http data source"}]});
            if self.write_dv_status(ns, name, &mut dv, status).await {
                // The importer pod crashes again after a while.
                tokio::time::sleep(IMPORTER_RESTART).await;
                self.kick(Work::Dv(ns.to_string(), name.to_string()));
            }
            return;
        }
        let steps = [("ImportScheduled", "N/A"), ("ImportInProgress", "47.00%")];
        // A held import picks up where it stopped.
        let done = steps
            .iter()
            .position(|(p, _)| dv["status"]["phase"] == *p)
            .map_or(0, |i| i + 1);
        for (phase, progress) in &steps[done..] {
            if !self
                .write_dv_status(
                    ns,
                    name,
                    &mut dv,
                    json!({"phase": phase, "progress": progress}),
                )
                .await
            {
                return;
            }
        }
        if held {
            return;
        }
        let storage = &dv["spec"]["storage"];
        let mut spec = json!({
            "accessModes": storage["accessModes"],
            "volumeMode": storage["volumeMode"],
            "resources": storage["resources"],
        });
        if let Some(sc) = storage.get("storageClassName") {
            spec["storageClassName"] = sc.clone();
        }
        let pvc = json!({
            "metadata": {"name": name, "namespace": ns, "labels": dv["metadata"]["labels"],
                "ownerReferences": [{"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
                    "name": name, "uid": dv["metadata"]["uid"], "controller": true,
                    "blockOwnerDeletion": true}]},
            "spec": spec,
        });
        match self.objects.create(PVC, ns, pvc).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(_) => return,
        }
        self.write_dv_status(
            ns,
            name,
            &mut dv,
            json!({"phase": "Succeeded", "progress": "100.0%",
                   "conditions": [{"type": "Ready", "status": "True"}]}),
        )
        .await;
    }
}

//! NICs: netdev + device on a free root port, and unplug (waited for by DEVICE_DELETED).

use super::*;

impl LocalBackend {
    pub(super) async fn add_nic(&self, vm: &VmRef, nic: &NicConfig) -> Result<(), BackendError> {
        let qmp = self.qmp(vm).await?;
        if !qmp.peripherals().await?.contains(&nic_id(&nic.name)) {
            self.plug_nic(vm, &qmp, nic).await?;
        }
        // A NIC QEMU already has (an add cut short by a crash) is adopted.
        let n = nic.clone();
        self.update(vm, |r| {
            r.definition.networks.retain(|x| x.name != n.name);
            r.definition.networks.push(n);
        })?;
        Ok(())
    }

    pub(super) async fn plug_nic(
        &self,
        vm: &VmRef,
        qmp: &Qmp,
        nic: &NicConfig,
    ) -> Result<(), BackendError> {
        let _ = qmp
            .run(qmp::netdev_del {
                id: netdev_id(&nic.name),
            })
            .await;
        let port = self.free_port(vm, &nic_id(&nic.name)).await?;
        let props: serde_json::Map<String, serde_json::Value> = machine::netdev_props(nic)
            .into_iter()
            .map(|(k, v)| (k, json!(v)))
            .collect();
        qmp.run(NetdevAdd(serde_json::Value::Object(props))).await?;
        failpoint::hit("nic.netdev-added");
        let mut dev = serde_json::Map::new();
        dev.insert("netdev".into(), json!(netdev_id(&nic.name)));
        dev.insert("mac".into(), json!(nic.mac));
        if let Err(e) = qmp
            .device_add(nic_driver(nic.model), &nic_id(&nic.name), Some(&port), dev)
            .await
        {
            let _ = qmp
                .run(qmp::netdev_del {
                    id: netdev_id(&nic.name),
                })
                .await;
            self.release_port(vm, &nic_id(&nic.name))?;
            return Err(e);
        }
        let n = nic.clone();
        self.update(vm, |r| {
            r.definition.networks.retain(|x| x.name != n.name);
            r.definition.networks.push(n);
        })?;
        Ok(())
    }

    /// Unplugs device `id` if QEMU has it, waiting until the guest releases it.
    pub(super) async fn unplug(&self, qmp: &Qmp, id: &str) -> Result<(), BackendError> {
        if qmp.peripherals().await?.iter().any(|p| p == id) {
            qmp.device_del(id, self.options.timeouts.unplug).await?;
        }
        Ok(())
    }

    pub(super) async fn remove_nic(&self, vm: &VmRef, name: &str) -> Result<(), BackendError> {
        let qmp = self.qmp(vm).await?;
        self.unplug(&qmp, &nic_id(name)).await?;
        failpoint::hit("nic.device-removed");
        let _ = qmp
            .run(qmp::netdev_del {
                id: netdev_id(name),
            })
            .await;
        let n = name.to_string();
        self.update(vm, |r| {
            r.definition.networks.retain(|x| x.name != n);
            r.ports.remove(&nic_id(&n));
        })?;
        Ok(())
    }
}

//! Disks: hot-plug on a free PCIe root port (blockdev + device), detach after unmounting in
//! the guest, and the filesystem a disk's spec asks for (blank check, format, mount).

use super::*;

impl LocalBackend {
    /// Makes the disk's filesystem exist (formatting only a blank disk), be mounted where the
    /// spec says, and fill its disk.
    pub(super) async fn ensure_filesystem(
        &self,
        vm: &VmRef,
        disk: &DiskConfig,
    ) -> Result<(), BackendError> {
        let Some(fs) = disk.filesystem.clone() else {
            return Ok(());
        };
        let name = disk.name.clone();
        self.guest(vm)
            .await?
            .ops()
            .ensure_filesystem(&name, &fs)
            .await
    }

    pub(super) async fn free_port(&self, vm: &VmRef, device: &str) -> Result<String, BackendError> {
        let rec = self.record(vm)?;
        let used: std::collections::BTreeSet<&String> = rec.ports.values().collect();
        let port = (3..=rec.ports_total)
            .map(port_id)
            .find(|p| !used.contains(p))
            .ok_or_else(|| failed("no free PCIe root port"))?;
        let device = device.to_string();
        let chosen = port.clone();
        // Recorded before the device is added: a crash in between leaves a reservation that
        // the next observation releases.
        self.update(vm, |r| {
            r.ports.insert(device, chosen);
        })?;
        Ok(port)
    }

    pub(super) fn release_port(&self, vm: &VmRef, device: &str) -> Result<(), BackendError> {
        self.update(vm, |r| {
            r.ports.remove(device);
        })?;
        Ok(())
    }

    pub(super) async fn attach_disk(
        &self,
        vm: &VmRef,
        disk: &DiskConfig,
    ) -> Result<(), BackendError> {
        let dir = self.dir(vm);
        let image = VmFiles::disk(&dir, &disk.name);
        let src = disk
            .source
            .as_ref()
            .and_then(|s| s.image.as_ref())
            .map(std::path::PathBuf::from);
        process::ensure_disk_image(&image, disk.size, src.as_deref(), &self.options.image_roots)
            .await?;
        failpoint::hit("disk.image-created");
        let qmp = self.qmp(vm).await?;
        let present = qmp.peripherals().await?;
        if !present.contains(&disk_id(&disk.name)) {
            self.plug_disk(vm, &qmp, disk, &image).await?;
            failpoint::hit("disk.device-added");
        }
        // A device QEMU already has (an attach cut short by a crash) is adopted.
        let d = disk.clone();
        self.update(vm, |r| {
            r.definition.disks.retain(|x| x.name != d.name);
            r.definition.disks.push(d);
        })?;
        Ok(())
    }

    pub(super) async fn plug_disk(
        &self,
        vm: &VmRef,
        qmp: &Qmp,
        disk: &DiskConfig,
        image: &std::path::Path,
    ) -> Result<(), BackendError> {
        let port = self.free_port(vm, &disk_id(&disk.name)).await?;
        let node_exists = qmp
            .run(qmp::query_named_block_nodes { flat: Some(true) })
            .await?
            .iter()
            .any(|n| n.node_name.as_deref() == Some(node_name(&disk.name).as_str()));
        if !node_exists {
            qmp.run(BlockdevAdd(json!({
                "driver": "qcow2",
                "node-name": node_name(&disk.name),
                "discard": "unmap",
                "file": {"driver": "file", "filename": image.to_string_lossy()},
            })))
            .await?;
        }
        failpoint::hit("disk.node-added");
        let mut props = serde_json::Map::new();
        props.insert("drive".into(), json!(node_name(&disk.name)));
        props.insert("serial".into(), json!(disk.name));
        // A write the host has no room for pauses the VM (see `pause.rs`).
        props.insert("werror".into(), json!("enospc"));
        props.insert("rerror".into(), json!("report"));
        if let Err(e) = qmp
            .device_add("virtio-blk-pci", &disk_id(&disk.name), Some(&port), props)
            .await
        {
            let _ = qmp
                .run(qmp::blockdev_del {
                    node_name: node_name(&disk.name),
                })
                .await;
            self.release_port(vm, &disk_id(&disk.name))?;
            return Err(e);
        }
        Ok(())
    }

    pub(super) async fn detach_disk(
        &self,
        vm: &VmRef,
        name: &str,
        force: bool,
    ) -> Result<(), BackendError> {
        let n = name.to_string();
        // Unmount everything on it in the guest first; a busy filesystem refuses unless
        // forced. A guest that cannot be asked refuses too (unknown is not "nothing mounted"),
        // except for a forced detach (the undo of an attach).
        let unmounted = async { self.guest(vm).await?.ops().unmount_disk(name, force).await }.await;
        match unmounted {
            Ok(()) => {}
            Err(BackendError::Failed(e)) => {
                return Err(failed(format!(
                    "{e}; stop what uses it, or set the annotation {FORCE_DETACH}: \"true\""
                )));
            }
            Err(e) if !force => {
                return Err(failed(format!(
                    "cannot tell whether disk {n} is mounted in the guest ({e}): not detached"
                )));
            }
            Err(_) => {}
        }
        failpoint::hit("disk.unmounted");
        let qmp = self.qmp(vm).await?;
        self.unplug(&qmp, &disk_id(name)).await?;
        failpoint::hit("disk.device-removed");
        let _ = qmp
            .run(qmp::blockdev_del {
                node_name: node_name(name),
            })
            .await;
        let n = name.to_string();
        self.update(vm, |r| {
            r.definition.disks.retain(|x| x.name != n);
            r.ports.remove(&disk_id(&n));
        })?;
        Ok(())
    }
}

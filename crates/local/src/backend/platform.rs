//! `wukong_engine::Backend` for the local backend: observation (QMP devices, vCPU slots,
//! virtio-mem, the guest's probe), capabilities of this QEMU, one plan step at a time, undo,
//! and the restart into a new definition.

use super::cpu::plugged_vcpus;
use super::memory::settled_memory;
use super::*;

impl Backend for LocalBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }

    async fn observe(&self, vm: &VmRef) -> Result<Observed, BackendError> {
        let rec = self.record(vm)?;
        if !self.is_running(vm) {
            return Ok(Observed {
                config: rec.definition,
                running: false,
                starting: false,
                boot_memory: rec.boot_memory,
                guest: None,
            });
        }
        let qmp = self.qmp(vm).await?;
        let plugged = plugged_vcpus(&qmp).await?;
        let peripherals = qmp.peripherals().await?;
        let hotplug_memory = if peripherals.iter().any(|p| p == VMEM_ID) {
            settled_memory(&qmp).await?
        } else {
            0
        };
        drop(qmp);
        let guest = self.guest_view(vm).await;
        let mut config = rec.definition.clone();
        // Without the guest's word, the count Wukong last left (vCPUs it took offline in the
        // guest stay plugged), never more than QEMU has: nothing is planned from a guess.
        config.cpu = guest
            .as_ref()
            .map_or(rec.definition.cpu.min(plugged), |g| g.cpus_online);
        config.memory = rec.boot_memory + hotplug_memory;
        config
            .disks
            .retain(|d| peripherals.contains(&disk_id(&d.name)));
        config
            .networks
            .retain(|n| peripherals.contains(&nic_id(&n.name)));
        // What QEMU really has is the truth (a crash between a device change and its record
        // leaves them apart): the observation says what QEMU has; the record is repaired by
        // the next step, not here (observing writes nothing).
        Ok(Observed {
            config,
            running: true,
            starting: false,
            boot_memory: rec.boot_memory,
            guest,
        })
    }

    async fn capabilities(
        &self,
        vm: &VmRef,
        observed: &Observed,
    ) -> Result<Capabilities, BackendError> {
        let rec = self.record(vm)?;
        if !self.options.live {
            return Ok(Capabilities::restart_only(
                BackendKind::Local,
                "live changes are turned off (wukong serve --no-live)",
            ));
        }
        if !observed.running {
            return Ok(Capabilities::local(QemuVersion::SAFE_CPU_READD, None, None));
        }
        let qmp = self.qmp(vm).await?;
        let (major, minor) = qmp.version().await?;
        let plugged = plugged_vcpus(&qmp).await?;
        let offline_plugged = plugged.saturating_sub(observed.config.cpu);
        let creations_left = rec.definition.max_cpu.saturating_sub(rec.vcpu_creations);
        let free_ports = rec.ports_total.saturating_sub(2 + rec.ports.len() as u32);
        let mut caps = Capabilities::local(
            QemuVersion { major, minor },
            Some(offline_plugged + creations_left),
            Some(free_ports),
        );
        // Under TCG an unplugged vCPU's slot is gone for good: once no creations are left,
        // keep vCPUs plugged and take them offline instead.
        if self.options.force_guest_offline || creations_left == 0 {
            caps.cpu_remove = Ok(CpuRemoval::GuestOffline);
        }
        Ok(caps)
    }

    async fn apply_step(
        &self,
        vm: &VmRef,
        step: &Step,
        desired: &VmConfig,
        progress: &dyn StepProgress,
    ) -> Result<(), BackendError> {
        if step.mode == Mode::Offline {
            return self.apply_offline(vm, &step.action);
        }
        if self.is_running(vm) {
            self.repair_record(vm).await?;
        }
        match &step.action {
            Action::AddVcpus { to, .. } => {
                self.add_vcpus(vm, *to, progress).await?;
                let to = *to;
                self.update(vm, |r| r.definition.cpu = to)?;
            }
            Action::RemoveVcpus { to, method, .. } => {
                self.remove_vcpus(vm, *to, *method).await?;
                let to = *to;
                self.update(vm, |r| r.definition.cpu = to)?;
            }
            Action::GrowMemory { to, .. } | Action::ShrinkMemory { to, .. } => {
                self.resize_memory(vm, *to, progress).await?;
                let to = *to;
                self.update(vm, |r| r.definition.memory = to)?;
            }
            Action::GrowDisk { disk, to, .. } => {
                let qmp = self.qmp(vm).await?;
                if desired.disk(disk).is_some_and(|d| d.snapshot_before_grow) {
                    let name = format!("wukong-pre-grow-{}", jiff::Timestamp::now().as_second());
                    qmp.run(SnapshotInternal(
                        json!({"device": node_name(disk), "name": name}),
                    ))
                    .await?;
                    progress.progress(0, 1, &format!("snapshot {name} taken"));
                }
                qmp.run(qmp::block_resize {
                    device: None,
                    node_name: Some(node_name(disk)),
                    size: *to as i64,
                })
                .await?;
                failpoint::hit("disk.resized");
                let (disk, to) = (disk.clone(), *to);
                self.update(vm, |r| {
                    if let Some(d) = r.definition.disks.iter_mut().find(|d| d.name == disk) {
                        d.size = to;
                    }
                })?;
            }
            Action::GrowFilesystem { disk, .. } => self.guest(vm).await?.ops().grow(disk).await?,
            Action::CreateFilesystem { disk, .. } => {
                let d = desired
                    .disk(disk)
                    .cloned()
                    .ok_or_else(|| failed(format!("unknown disk {disk}")))?;
                self.ensure_filesystem(vm, &d).await?;
            }
            Action::OnlineMemory { .. } => {
                let n = self.guest(vm).await?.ops().online_memory_blocks().await?;
                progress.progress(
                    n as u64,
                    n as u64,
                    "memory blocks onlined through the agent",
                );
            }
            Action::AttachDisk { disk } => self.attach_disk(vm, disk).await?,
            Action::DetachDisk { disk } => {
                let force = self
                    .record(vm)?
                    .object
                    .metadata
                    .annotations
                    .is_some_and(|a| a.get(FORCE_DETACH).is_some_and(|v| v == "true"));
                self.detach_disk(vm, disk, force).await?
            }
            Action::AddNic { nic } => self.add_nic(vm, nic).await?,
            Action::RemoveNic { nic } => self.remove_nic(vm, &nic.name).await?,
            Action::UpdateNic { from, to } => {
                self.remove_nic(vm, &from.name).await?;
                self.add_nic(vm, to).await?;
            }
            Action::Start => {
                self.start(vm).await?;
            }
            Action::Stop => {
                let how = self.stop(vm).await?;
                progress.progress(1, 1, how.describe());
            }
            Action::SetCloudInit { to } => {
                self.write_seed(vm, to.as_ref().as_ref()).await?;
                let to = (**to).clone();
                self.update(vm, |r| r.definition.cloud_init = to)?;
            }
            Action::SetMaxCpu { .. }
            | Action::SetMaxMemory { .. }
            | Action::ChangeDisk { .. }
            | Action::SetBoot { .. } => {
                return Err(BackendError::Unsupported {
                    backend: BackendKind::Local,
                    what: format!("{} while running", step.action.describe()),
                });
            }
        }
        Ok(())
    }

    async fn undo_step(&self, vm: &VmRef, step: &Step) -> Result<bool, BackendError> {
        match &step.action {
            Action::AttachDisk { disk } => {
                self.detach_disk(vm, &disk.name, true).await?;
                Ok(true)
            }
            Action::AddNic { nic } => {
                self.remove_nic(vm, &nic.name).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn restart(
        &self,
        vm: &VmRef,
        desired: &VmConfig,
        _steps: &[Step],
    ) -> Result<(), BackendError> {
        self.stop(vm).await?;
        let d = desired.clone();
        self.update(vm, |r| r.definition = d)?;
        self.start(vm).await?;
        Ok(())
    }
}

//! vCPUs: hot-add through QMP `device_add` into free slots, hot-remove (`device_del`, waited
//! for by its DEVICE_DELETED event) or offlining in the guest where QEMU cannot unplug; the
//! guest onlines what it does not online itself through the guest-operations layer.

use super::*;

impl LocalBackend {
    pub(super) async fn add_vcpus(
        &self,
        vm: &VmRef,
        to: u32,
        progress: &dyn StepProgress,
    ) -> Result<(), BackendError> {
        let t = self.options.timeouts.agent;
        // vCPUs that are plugged but offline come back online first; only the rest are
        // hot-added.
        let plugged = self.with_agent(vm, async |q| q.vcpus(t).await).await?.len() as u32;
        let need = to.saturating_sub(plugged);
        if need > 0 {
            self.hot_add_vcpus(vm, need).await?;
            failpoint::hit("cpu.plugged");
        }
        // A guest with a rule onlines hot-added vCPUs itself; any it leaves offline (new or
        // plugged before) are onlined through the agent as soon as they appear.
        let within = self.options.timeouts.unplug;
        let by = self.guest(vm).await?.ops().online_vcpus(to, within).await?;
        progress.progress(u64::from(to), u64::from(to), by.describe());
        Ok(())
    }

    /// Hot-adds `need` vCPUs, each into the lowest free slot.
    pub(super) async fn hot_add_vcpus(&self, vm: &VmRef, need: u32) -> Result<(), BackendError> {
        let qmp = self.qmp(vm).await?;
        for _ in 0..need {
            let slots = qmp.run(qmp::query_hotpluggable_cpus {}).await?;
            let free = slots
                .iter()
                .filter(|s| s.qom_path.is_none())
                .min_by_key(|s| (s.props.socket_id, s.props.core_id, s.props.thread_id))
                .ok_or_else(|| failed("no free vCPU slot (maxCpu reached)"))?;
            let p = &free.props;
            let mut props = serde_json::Map::new();
            for (k, v) in [
                ("socket-id", p.socket_id),
                ("core-id", p.core_id),
                ("thread-id", p.thread_id),
                ("node-id", p.node_id),
                ("die-id", p.die_id),
            ] {
                if let Some(v) = v {
                    props.insert(k.into(), json!(v));
                }
            }
            let id = format!(
                "cpu-{}-{}-{}",
                p.socket_id.unwrap_or(0),
                p.core_id.unwrap_or(0),
                p.thread_id.unwrap_or(0)
            );
            // Counted before it exists: under TCG every creation uses up a slot for good.
            self.update(vm, |r| r.vcpu_creations += 1)?;
            qmp.device_add(&free.type_, &id, None, props).await?;
        }
        Ok(())
    }

    pub(super) async fn remove_vcpus(
        &self,
        vm: &VmRef,
        to: u32,
        method: CpuRemoval,
    ) -> Result<(), BackendError> {
        let t = self.options.timeouts.agent;
        let method = if self.options.force_guest_offline {
            CpuRemoval::GuestOffline
        } else {
            method
        };
        let online = online_vcpus(&self.with_agent(vm, async |q| q.vcpus(t).await).await?);
        let surplus = online.len().saturating_sub(to as usize);
        if method == CpuRemoval::Unplug {
            // Only hot-added vCPUs can be unplugged; the guest takes each one offline when
            // QEMU asks. Boot vCPUs fall back to going offline in the guest.
            let qmp = self.qmp(vm).await?;
            let mut unplugged = 0;
            let hot = hot_added_cpus(&qmp).await?;
            for id in hot.iter().rev().take(surplus) {
                let deadline = tokio::time::Instant::now() + self.options.timeouts.unplug;
                qmp.run(qmp::device_del { id: id.clone() }).await?;
                failpoint::hit("cpu.unplug-requested");
                loop {
                    if !hot_added_cpus(&qmp).await?.contains(id) {
                        break;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(BackendError::Timeout {
                            what: format!("the guest to release vCPU {id}"),
                            after: self.options.timeouts.unplug,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                unplugged += 1;
            }
            if unplugged == surplus {
                return Ok(());
            }
        }
        let still = online_vcpus(&self.with_agent(vm, async |q| q.vcpus(t).await).await?);
        let surplus = still.len().saturating_sub(to as usize);
        let off: Vec<(i64, bool)> = still
            .iter()
            .rev()
            .take(surplus)
            .map(|id| (*id, false))
            .collect();
        if !off.is_empty() {
            self.with_agent(vm, async |q| q.set_vcpus(&off, t).await)
                .await?;
        }
        Ok(())
    }
}

/// Logical ids of the online vCPUs, ascending.
pub(super) fn online_vcpus(v: &[(i64, bool)]) -> Vec<i64> {
    let mut ids: Vec<i64> = v.iter().filter(|(_, o)| *o).map(|(id, _)| *id).collect();
    ids.sort_unstable();
    ids
}

/// Ids of the hot-added vCPUs present now, lowest slot first.
pub(super) async fn hot_added_cpus(qmp: &Qmp) -> Result<Vec<String>, BackendError> {
    let mut ids: Vec<String> = qmp
        .peripherals()
        .await?
        .into_iter()
        .filter(|p| p.starts_with("cpu-"))
        .collect();
    ids.sort_by_key(|id| {
        id.split('-')
            .skip(1)
            .map(|n| n.parse::<u32>().unwrap_or(0))
            .collect::<Vec<_>>()
    });
    Ok(ids)
}

/// vCPUs plugged into QEMU (those with a QOM path), online in the guest or not.
pub(super) async fn plugged_vcpus(qmp: &Qmp) -> Result<u32, BackendError> {
    Ok(qmp
        .run(qmp::query_hotpluggable_cpus {})
        .await?
        .iter()
        .filter(|c| c.qom_path.is_some())
        .count() as u32)
}

//! The guest-side operations both backends call, over any [`Transport`].
//!
//! Rules kept here: every command is an argv list wrapped in the guest's `timeout -s KILL`,
//! so nothing outlives its deadline inside the guest either; a tool runs only on something
//! identified as its type; unknown (an agent that does not answer, a probe that fails) is
//! never read as blank, so it never leads to a format or a mount.

use std::time::{Duration, Instant};

use wukong_api::{FilesystemSpec, FsType};
use wukong_engine::BackendError;
use wukong_planner::GuestView;

use crate::probe::{PROBE, Probe, parse};
use crate::storage::Stack;
use crate::transport::{ExecOutput, Transport};

/// Who brought new vCPUs or memory online.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Onlined {
    /// The guest itself (a udev rule, the kernel's auto-online setting).
    ByGuest,
    /// Wukong, through the guest agent.
    ByAgent,
}

impl Onlined {
    /// In words, for progress and status.
    pub fn describe(self) -> &'static str {
        match self {
            Onlined::ByGuest => "onlined by the guest",
            Onlined::ByAgent => "onlined through the agent",
        }
    }
}

/// What the blank check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blank {
    /// Read, and no signature of any kind.
    Blank,
    /// Something is on it (a filesystem, a partition table, LVM…): never format.
    Used(String),
    /// It could not be told: never format.
    Unknown(String),
}

/// Sysfs: where new memory blocks appear and how the kernel onlines them.
const MEMORY: &str = "/sys/devices/system/memory";

/// The guest-side operations of one VM.
pub struct Guest<'a, T> {
    transport: &'a T,
    /// One short command (probe, onlining, mount).
    pub timeout: Duration,
    /// A long command (format, filesystem growth).
    pub long: Duration,
}

fn failed(m: impl Into<String>) -> BackendError {
    BackendError::Failed(m.into())
}

impl<'a, T: Transport> Guest<'a, T> {
    /// Operations over `transport`; `timeout` bounds each short command, `long` each long one.
    pub fn new(transport: &'a T, timeout: Duration, long: Duration) -> Self {
        Guest {
            transport,
            timeout,
            long,
        }
    }

    /// Runs `argv` bounded inside the guest too: `timeout -s KILL SECS argv…`. A tool that
    /// busybox also has as a (smaller) applet is named by its path, as busybox's `timeout`
    /// prefers its own applets.
    pub async fn run(
        &self,
        argv: &[&str],
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ExecOutput, BackendError> {
        let secs = timeout.as_secs().max(1).to_string();
        let mut bounded = vec!["timeout", "-s", "KILL", secs.as_str()];
        bounded.extend_from_slice(argv);
        // A little longer on the host side, so the guest's own timeout is what ends it.
        let out = self
            .transport
            .exec(&bounded, input, timeout + Duration::from_secs(2))
            .await?;
        // `timeout -s KILL` exits 128 + 9 when it had to kill the command.
        if out.code == 137 {
            return Err(BackendError::Timeout {
                what: format!("`{}` in the guest", argv.join(" ")),
                after: timeout,
            });
        }
        Ok(out)
    }

    /// Runs `argv` and fails unless it exits 0.
    pub async fn run_ok(
        &self,
        argv: &[&str],
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ExecOutput, BackendError> {
        let out = self.run(argv, input, timeout).await?;
        if out.code == 0 {
            Ok(out)
        } else {
            Err(failed(format!(
                "`{}` in the guest exited {}: {}",
                argv.join(" "),
                out.code,
                out.err()
            )))
        }
    }

    /// Everything the guest sees, in one command.
    pub async fn probe(&self) -> Result<Probe, BackendError> {
        let out = self
            .run_ok(&["/bin/sh", "-c", PROBE], None, self.timeout)
            .await?;
        Ok(parse(&out.out()))
    }

    /// The autoscaler's reading of the guest, taken at `at` on the caller's clock.
    pub async fn metrics(&self, at: f64) -> Result<wukong_autoscaler::Sample, BackendError> {
        let script = crate::metrics::script();
        let out = self
            .run_ok(&["/bin/sh", "-c", &script], None, self.timeout)
            .await?;
        Ok(crate::metrics::parse(&out.out(), at))
    }

    /// The planner's view of the guest.
    pub async fn view(&self) -> Result<GuestView, BackendError> {
        Ok(self.probe().await?.view())
    }

    /// Waits until `want` vCPUs are online, onlining through the agent any that appear
    /// offline (a guest without a rule that does it), at once, without a fixed wait.
    pub async fn online_vcpus(&self, want: u32, within: Duration) -> Result<Onlined, BackendError> {
        let deadline = Instant::now() + within;
        let mut by = Onlined::ByGuest;
        loop {
            let v = self.transport.vcpus(self.timeout).await?;
            let online = v.iter().filter(|(_, o)| *o).count() as u32;
            if online >= want {
                return Ok(by);
            }
            let offline: Vec<(i64, bool)> = v
                .iter()
                .filter(|(_, o)| !o)
                .take((want - online) as usize)
                .map(|(id, _)| (*id, true))
                .collect();
            if !offline.is_empty() {
                self.transport
                    .set_vcpus(&offline, self.timeout)
                    .await
                    .map_err(|e| {
                        failed(format!(
                            "hot-added vCPUs are present but offline and the agent cannot online them: {e}"
                        ))
                    })?;
                by = Onlined::ByAgent;
                continue;
            }
            if Instant::now() >= deadline {
                return Err(BackendError::Timeout {
                    what: format!("the guest to show {want} vCPUs (it has {online} online)"),
                    after: within,
                });
            }
            // The new vCPU is not in the guest's sysfs yet (0.07–0.2 s under TCG).
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Before memory is plugged: makes the kernel online new blocks into ZONE_MOVABLE itself
    /// (so they can be unplugged later, and so virtio-mem never stalls on offline memory).
    /// Returns who does the onlining from now on.
    pub async fn auto_online_memory(&self) -> Result<Onlined, BackendError> {
        let path = format!("{MEMORY}/auto_online_blocks");
        let now = self.run(&["cat", &path], None, self.timeout).await?;
        match now.out().trim() {
            "online_movable" => Ok(Onlined::ByGuest),
            // No memory hot-plug in this kernel: the plug step says so.
            "" if now.code != 0 => Ok(Onlined::ByGuest),
            _ => {
                self.run_ok(&["tee", &path], Some(b"online_movable"), self.timeout)
                    .await?;
                Ok(Onlined::ByAgent)
            }
        }
    }

    /// Onlines (movable) every memory block the guest holds offline. Returns how many.
    pub async fn online_memory_blocks(&self) -> Result<usize, BackendError> {
        let list = self
            .run_ok(
                &[
                    "/bin/sh",
                    "-c",
                    "for m in /sys/devices/system/memory/memory*; do read s < \"$m/state\"; [ \"$s\" = offline ] && echo \"$m/state\"; done; true",
                ],
                None,
                self.timeout,
            )
            .await?
            .out();
        let states: Vec<&str> = list
            .lines()
            .filter(|l| l.starts_with(MEMORY) && l.ends_with("/state"))
            .collect();
        if states.is_empty() {
            return Ok(0);
        }
        let mut argv = vec!["tee"];
        argv.extend(states.iter().copied());
        self.run_ok(&argv, Some(b"online_movable"), self.timeout)
            .await?;
        Ok(states.len())
    }

    /// Whether `dev` is blank: read (its first sectors come back) and `blkid -p` finds no
    /// signature (exit 2). Exit 2 alone is not enough — blkid also uses it when it could not
    /// look — so an unreadable device is never blank.
    pub async fn blank(&self, dev: &str) -> Result<Blank, BackendError> {
        let head = self
            .run(&["head", "-c", "4096", dev], None, self.timeout)
            .await?;
        if head.code != 0 || head.stdout.len() != 4096 {
            return Ok(Blank::Unknown(format!(
                "{dev} could not be read ({})",
                head.err()
            )));
        }
        let id = self
            .run(
                &["/sbin/blkid", "-p", "-o", "export", dev],
                None,
                self.timeout,
            )
            .await?;
        Ok(match id.code {
            2 => Blank::Blank,
            0 => Blank::Used(id.out().split_whitespace().collect::<Vec<_>>().join(" ")),
            c => Blank::Unknown(format!("blkid -p {dev} exited {c}: {}", id.err())),
        })
    }

    /// Makes a filesystem on `dev`, which must have been found blank just before.
    pub async fn format(&self, dev: &str, fs: FsType) -> Result<(), BackendError> {
        match self.blank(dev).await? {
            Blank::Blank => {}
            Blank::Used(what) => {
                return Err(failed(format!(
                    "{dev} is not blank ({what}): not formatted"
                )));
            }
            Blank::Unknown(why) => {
                return Err(failed(format!(
                    "whether {dev} is blank is unknown ({why}): not formatted"
                )));
            }
        }
        let argv: &[&str] = match fs {
            FsType::Ext4 => &[
                "/sbin/mke2fs",
                "-t",
                "ext4",
                "-q",
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1",
                dev,
            ],
            FsType::Xfs => &["mkfs.xfs", "-q", dev],
        };
        self.run_ok(argv, None, self.long).await?;
        Ok(())
    }

    /// Mounts `dev` (of type `fs`) at `path`.
    pub async fn mount(&self, dev: &str, fs: FsType, path: &str) -> Result<(), BackendError> {
        self.run_ok(&["mkdir", "-p", path], None, self.timeout)
            .await?;
        self.run_ok(&["mount", "-t", fs_name(fs), dev, path], None, self.timeout)
            .await?;
        Ok(())
    }

    /// Unmounts `path` after a sync; `lazy` detaches a busy one (`umount -l`).
    pub async fn unmount(&self, path: &str, lazy: bool) -> Result<(), String> {
        let _ = self.run(&["sync"], None, self.long).await;
        let mut argv = vec!["umount"];
        if lazy {
            argv.push("-l");
        }
        argv.push(path);
        match self.run(&argv, None, self.timeout).await {
            Ok(o) if o.code == 0 => Ok(()),
            Ok(o) => Err(o.err()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Unmounts every filesystem on the disk with serial `serial` (none seen: nothing to do);
    /// `lazy` detaches busy ones. The error names the mount point that refused.
    pub async fn unmount_disk(&self, serial: &str, lazy: bool) -> Result<(), BackendError> {
        let p = self.probe().await?;
        let Some(disk) = p.storage.disk_with_serial(serial) else {
            return Ok(());
        };
        // Deepest first: a mount inside another one is found after it in the mount table.
        for m in p.storage.mounts_on(&disk.name).iter().rev() {
            self.unmount(&m.path, lazy).await.map_err(|e| {
                failed(format!(
                    "disk {serial} is busy in the guest ({}: {e})",
                    m.path
                ))
            })?;
        }
        Ok(())
    }

    /// The storage stack of the disk with serial `serial`, from a fresh probe; `None` when
    /// the guest does not see the disk.
    pub async fn stack(&self, serial: &str) -> Result<Option<Stack>, BackendError> {
        let p = self.probe().await?;
        Ok(p.storage
            .disk_with_serial(serial)
            .map(|d| p.storage.stack(&d.name)))
    }

    /// Grows the disk's stack (partition, physical volume, logical volume, filesystem) to
    /// fill the disk.
    pub async fn grow(&self, serial: &str) -> Result<(), BackendError> {
        let stack = self
            .stack(serial)
            .await?
            .ok_or_else(|| failed(format!("the guest does not see disk {serial} (by serial)")))?;
        let commands = stack
            .grow_commands()
            .map_err(|why| failed(format!("disk {serial}: {why}")))?;
        for (i, c) in commands.iter().enumerate() {
            if i > 0 {
                // Between two layers of the stack (e.g. partition grown, filesystem not yet).
                wukong_engine::failpoint::hit("filesystem.layer-grown");
            }
            let argv: Vec<&str> = c.argv.iter().map(String::as_str).collect();
            if c.checked {
                self.run_ok(&argv, c.stdin, self.long).await?;
            } else {
                self.run(&argv, c.stdin, self.long).await?;
            }
        }
        Ok(())
    }

    /// Makes the disk's filesystem exist (formatting only a blank device), mounted where the
    /// spec says, and filling the disk.
    pub async fn ensure_filesystem(
        &self,
        serial: &str,
        fs: &FilesystemSpec,
    ) -> Result<(), BackendError> {
        let p = self.probe().await?;
        let disk = p
            .storage
            .disk_with_serial(serial)
            .ok_or_else(|| failed(format!("the guest does not see disk {serial} (by serial)")))?;
        let stack = p.storage.stack(&disk.name);
        match &stack.filesystem {
            Some(m) if m.path == fs.mount_path => {}
            Some(m) => {
                return Err(failed(format!(
                    "disk {serial} is mounted at {} in the guest, not at {}",
                    m.path, fs.mount_path
                )));
            }
            None => {
                // A partitioned disk keeps its filesystem in its last partition.
                let parts = p.storage.partitions_of(&disk.name);
                let target = format!(
                    "/dev/{}",
                    parts.last().map_or(disk.name.as_str(), |x| x.name.as_str())
                );
                let fresh = match self.blank(&target).await? {
                    Blank::Blank => {
                        self.format(&target, fs.fs_type).await?;
                        wukong_engine::failpoint::hit("filesystem.formatted");
                        true
                    }
                    Blank::Used(_) => false,
                    Blank::Unknown(why) => {
                        return Err(failed(format!(
                            "disk {serial}: {why}; neither formatted nor mounted"
                        )));
                    }
                };
                self.mount(&target, fs.fs_type, &fs.mount_path).await?;
                if fresh {
                    // A new filesystem fills its device already.
                    return Ok(());
                }
            }
        }
        if stack.blocked.is_some() {
            // Mounted where the spec says; it cannot grow, and the plan says why.
            return Ok(());
        }
        self.grow(serial).await
    }
}

/// The type name `mount -t` takes.
pub fn fs_name(fs: FsType) -> &'static str {
    match fs {
        FsType::Ext4 => "ext4",
        FsType::Xfs => "xfs",
    }
}

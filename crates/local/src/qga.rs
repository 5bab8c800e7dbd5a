//! The QEMU guest agent on a unix socket: resynchronised on connect (stale replies of an
//! earlier client are discarded), typed commands from `qapi`, every call bounded in time.
//! Guest commands are argv lists, never shell strings built from input.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use qapi::qga;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use wukong_engine::BackendError;
use wukong_planner::{GuestDiskView, GuestView};

type Service =
    qapi::futures::QapiService<qapi::futures::QgaStreamTokio<tokio::io::WriteHalf<UnixStream>>>;

/// An open, synchronised guest agent connection.
pub struct Qga {
    service: Service,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Qga {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// What a guest command returned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code (or 128 + signal).
    pub code: i64,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    /// stdout as text.
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// stderr as text, trimmed.
    pub fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

fn timeout_err(what: &str, after: Duration) -> BackendError {
    BackendError::Timeout {
        what: format!("the guest agent ({what})"),
        after,
    }
}

/// Sends 0xFF (the agent drops any partial input) and `guest-sync-delimited`, then discards
/// everything up to the agent's 0xFF and the reply with our id.
async fn resync(stream: &mut UnixStream) -> std::io::Result<()> {
    let id: u32 = rand::random::<u32>() >> 1;
    let request =
        format!("{{\"execute\":\"guest-sync-delimited\",\"arguments\":{{\"id\":{id}}}}}\n");
    stream.write_all(&[0xFF]).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let mut delimited = false;
    loop {
        stream.read_exact(&mut byte).await?;
        match byte[0] {
            0xFF => {
                delimited = true;
                line.clear();
            }
            b'\n' if delimited => {
                let reply: serde_json::Value = serde_json::from_slice(&line).unwrap_or_default();
                if reply["return"].as_u64() == Some(u64::from(id)) {
                    return Ok(());
                }
                line.clear();
            }
            b => line.push(b),
        }
    }
}

impl Qga {
    /// Connects and synchronises within `timeout`. A guest whose agent is not running yet
    /// ends in a timeout.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qga, BackendError> {
        let open = async {
            let mut stream = UnixStream::connect(path).await?;
            resync(&mut stream).await?;
            Ok::<_, std::io::Error>(stream)
        };
        let stream = tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| timeout_err("connect", timeout))?
            .map_err(|e| BackendError::Unreachable(format!("guest agent: {e}")))?;
        let (service, events) = qapi::futures::QgaStreamTokio::open(stream).into_parts();
        let driver = events.spawn_tokio();
        Ok(Qga { service, driver })
    }

    /// Runs one command within `timeout`.
    pub async fn run<C>(&self, command: C, timeout: Duration) -> Result<C::Ok, BackendError>
    where
        C: qga::QgaCommand + 'static,
    {
        let name = C::NAME;
        match tokio::time::timeout(timeout, self.service.execute(command)).await {
            Err(_) => Err(timeout_err(name, timeout)),
            Ok(Err(qapi::ExecuteError::Qapi(e))) => Err(BackendError::Failed(format!(
                "guest agent {name}: {}",
                e.desc
            ))),
            Ok(Err(qapi::ExecuteError::Io(e))) => Err(BackendError::Unreachable(format!(
                "guest agent {name}: {e}"
            ))),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// Runs `argv` in the guest (no shell) with optional stdin, waiting up to `timeout`.
    pub async fn exec(
        &self,
        argv: &[&str],
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ExecOutput, BackendError> {
        let deadline = Instant::now() + timeout;
        let (path, args) = argv
            .split_first()
            .ok_or_else(|| BackendError::Failed("empty command".into()))?;
        let started = self
            .run(
                qga::guest_exec {
                    path: path.to_string(),
                    arg: Some(args.iter().map(|s| s.to_string()).collect()),
                    env: None,
                    input_data: input.map(<[u8]>::to_vec),
                    capture_output: Some(qga::GuestExecCaptureOutput::flag(true)),
                },
                timeout,
            )
            .await?;
        // Short commands dominate (probes, onlining); a long one (mkfs) costs a poll per 5 ms
        // of a ~1 ms agent call.
        let pause = Duration::from_millis(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let status = self
                .run(
                    qga::guest_exec_status { pid: started.pid },
                    left.max(Duration::from_millis(500)),
                )
                .await?;
            if status.exited {
                return Ok(ExecOutput {
                    code: status
                        .exitcode
                        .or(status.signal.map(|s| 128 + s))
                        .unwrap_or(-1),
                    stdout: status.out_data.unwrap_or_default(),
                    stderr: status.err_data.unwrap_or_default(),
                });
            }
            if Instant::now() >= deadline {
                return Err(timeout_err(&format!("`{}`", argv.join(" ")), timeout));
            }
            // Polling the agent for the process's end: the agent has no completion event.
            tokio::time::sleep(pause).await;
        }
    }

    /// Runs `argv` and fails unless it exits 0.
    pub async fn exec_ok(
        &self,
        argv: &[&str],
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ExecOutput, BackendError> {
        let out = self.exec(argv, input, timeout).await?;
        if out.code == 0 {
            Ok(out)
        } else {
            Err(BackendError::Failed(format!(
                "`{}` in the guest exited {}: {}",
                argv.join(" "),
                out.code,
                out.err()
            )))
        }
    }

    /// The guest's own view: online vCPUs, MemTotal, block devices by serial with their
    /// filesystems, MACs, boot id. One guest command, a fixed script.
    pub async fn view(&self, timeout: Duration) -> Result<GuestView, BackendError> {
        let out = self
            .exec_ok(&["/bin/sh", "-c", PROBE], None, timeout)
            .await?;
        Ok(parse_probe(&out.out()))
    }

    /// Sets vCPUs online/offline by logical id; returns how many were changed.
    pub async fn set_vcpus(
        &self,
        changes: &[(i64, bool)],
        timeout: Duration,
    ) -> Result<i64, BackendError> {
        self.run(
            qga::guest_set_vcpus {
                vcpus: changes
                    .iter()
                    .map(|(id, online)| qga::GuestLogicalProcessor {
                        logical_id: *id,
                        online: *online,
                        can_offline: None,
                    })
                    .collect(),
            },
            timeout,
        )
        .await
    }

    /// Logical vCPUs and whether each is online.
    pub async fn vcpus(&self, timeout: Duration) -> Result<Vec<(i64, bool)>, BackendError> {
        let v = self.run(qga::guest_get_vcpus {}, timeout).await?;
        Ok(v.into_iter().map(|c| (c.logical_id, c.online)).collect())
    }

    /// Asks the guest to power off.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), BackendError> {
        // The agent often dies before it answers.
        match self
            .run(
                qga::guest_shutdown {
                    mode: Some(qga::GuestShutdownMode::Powerdown),
                },
                timeout,
            )
            .await
        {
            Ok(_) | Err(BackendError::Unreachable(_)) | Err(BackendError::Timeout { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The fixed probe: no input is ever spliced into it. Tools that busybox also provides are
/// called by absolute path (a static busybox `sh` prefers its own applets).
const PROBE: &str = r#"
read b < /proc/sys/kernel/random/boot_id; echo "boot $b"
while read k v u; do [ "$k" = MemTotal: ] && { echo "mem $v"; break; }; done < /proc/meminfo
read c < /sys/devices/system/cpu/online; echo "cpus $c"
for b in /sys/block/*; do
  [ -e "$b/device" ] || continue
  d=${b##*/}; s=; n=0
  [ -f "$b/serial" ] && read s < "$b/serial"
  read n < "$b/size"
  echo "disk $d $n ${s:--}"
  for p in "$b/$d"*; do [ -e "$p/partition" ] && echo "part $d ${p##*/}"; done
done
for n in /sys/class/net/*; do [ "${n##*/}" = lo ] || { read a < "$n/address"; echo "nic ${n##*/} $a"; }; done
while read -r dev mnt type rest; do
  case $dev in /dev/*) ;; *) continue ;; esac
  case $type in
    ext2|ext3|ext4)
      t=/sbin/tune2fs; [ -x $t ] || t=/usr/sbin/tune2fs
      $t -l "$dev" 2>/dev/null | {
        c=0; z=0
        while IFS=: read k v; do case $k in "Block count") c=$v ;; "Block size") z=$v ;; esac; done
        echo "fs ${dev#/dev/} $((c * z)) $mnt $type"
      } ;;
    *) df -P -k "$mnt" 2>/dev/null | { read h; read x k rest; echo "fs ${dev#/dev/} $((k * 1024)) $mnt $type"; } ;;
  esac
done < /proc/mounts
"#;

/// Parses the probe's output.
pub fn parse_probe(text: &str) -> GuestView {
    let mut view = GuestView::default();
    // guest device (vda, vda1) -> disk serial
    let mut by_dev: BTreeMap<String, String> = BTreeMap::new();
    let mut fs: Vec<(String, u64, String, String)> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["boot", id] => view.boot_id = Some(id.to_string()),
            ["mem", kb] => view.memory_total = kb.parse::<u64>().unwrap_or(0) * 1024,
            ["cpus", ranges] => view.cpus_online = count_ranges(ranges),
            ["disk", dev, sectors, serial] if *serial != "-" => {
                by_dev.insert(dev.to_string(), serial.to_string());
                view.disks.insert(
                    serial.to_string(),
                    GuestDiskView {
                        size: sectors.parse::<u64>().unwrap_or(0) * 512,
                        device: Some(dev.to_string()),
                        ..Default::default()
                    },
                );
            }
            ["part", dev, part] => {
                if let Some(serial) = by_dev.get(*dev).cloned() {
                    by_dev.insert(part.to_string(), serial.clone());
                    if let Some(d) = view.disks.get_mut(&serial) {
                        d.partitioned = true;
                        // Listed in order: the last one wins.
                        d.partition = Some(part.to_string());
                    }
                }
            }
            ["nic", _, mac] => view.macs.push(mac.to_lowercase()),
            ["fs", dev, bytes, mnt, kind] => {
                fs.push((
                    dev.to_string(),
                    bytes.parse::<u64>().unwrap_or(0),
                    mnt.to_string(),
                    kind.to_string(),
                ));
            }
            _ => {}
        }
    }
    for (dev, size, mount, kind) in fs {
        if let Some(d) = by_dev.get(&dev).and_then(|s| view.disks.get_mut(s)) {
            d.filesystem_size = Some(size);
            d.mount = Some(mount);
            d.fs_type = Some(kind);
        }
    }
    view
}

/// Counts CPUs in a list like `0-3,6`.
fn count_ranges(s: &str) -> u32 {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('-') {
            Some((a, b)) => b.parse::<u32>().unwrap_or(0) + 1 - a.parse::<u32>().unwrap_or(0),
            None => 1,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_probe() {
        let v = parse_probe(
            "boot 1234\nmem 467624\ncpus 0-2,5\ndisk vda 4194304 system\npart vda vda1\ndisk vdb 2097152 data\ndisk sr0 0 -\nnic eth0 52:54:00:AA:00:01\nfs vda1 2080194560 /mnt/system ext4\n",
        );
        assert_eq!(v.boot_id.as_deref(), Some("1234"));
        assert_eq!(v.memory_total, 467624 * 1024);
        assert_eq!(v.cpus_online, 4);
        assert_eq!(v.disks.len(), 2);
        let sys = &v.disks["system"];
        assert_eq!(sys.size, 2 << 30);
        assert!(sys.partitioned);
        assert_eq!(sys.partition.as_deref(), Some("vda1"));
        assert_eq!(sys.mount.as_deref(), Some("/mnt/system"));
        assert_eq!(sys.fs_type.as_deref(), Some("ext4"));
        assert_eq!(sys.filesystem_size, Some(2080194560));
        assert_eq!(v.disks["data"].filesystem_size, None);
        assert_eq!(v.macs, vec!["52:54:00:aa:00:01"]);
    }
}

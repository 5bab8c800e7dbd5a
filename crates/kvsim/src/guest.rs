//! The simulated guests: what each VM's disks hold (they outlive a VMI), the commands the
//! guest agent runs through `guest-exec`, and the guest agent itself as `virsh
//! qemu-agent-command` passes it through.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::{Sim, claim, named};
use wukong_fakeapi::quantity::bytes;

#[derive(Clone, Debug)]
pub(crate) struct Fs {
    pub fs_type: String,
    pub mount: Option<String>,
    pub size: u64,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Disk {
    pub size: u64,
    pub fs: Option<Fs>,
}

#[derive(Default)]
pub(crate) struct Guests {
    /// Disk contents by (namespace, claim): they outlive a VMI.
    pub disks: BTreeMap<(String, String), Disk>,
    /// Finished guest-exec results by pid.
    pub execs: BTreeMap<i64, (i64, String, String)>,
    /// vCPUs each VMI booted with.
    pub boot_cpus: BTreeMap<(String, String), u64>,
    /// Each VMI's CPU counters (busy and all ticks) and when they were last moved.
    pub cpu_ticks: BTreeMap<(String, String), (std::time::Instant, f64, f64)>,
    pub next_pid: i64,
}

pub(crate) fn device(index: usize) -> String {
    format!("vd{}", (b'a' + index as u8) as char)
}

impl Sim {
    /// What `filesystemlist` answers for a running VMI.
    pub(crate) fn filesystems(&self, ns: &str, vmi: &Value) -> Vec<Value> {
        let g = self.guests.lock().expect("guests");
        let spec = &vmi["spec"];
        let mut out = Vec::new();
        for (i, d) in spec["domain"]["devices"]["disks"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let name = d["name"].as_str().unwrap_or_default();
            let Some(c) = named(&spec["volumes"], name).and_then(claim) else {
                continue;
            };
            let Some(disk) = g.disks.get(&(ns.to_string(), c.to_string())) else {
                continue;
            };
            if let Some(fs) = &disk.fs
                && let Some(m) = &fs.mount
            {
                out.push(json!({"diskName": device(i), "mountPoint": m, "fileSystemType": fs.fs_type,
                    "totalBytes": fs.size, "usedBytes": fs.size / 50,
                    "disk": [{"serial": d["serial"].as_str().unwrap_or(name), "busType": "virtio"}]}));
            }
        }
        out
    }

    /// The guest disk behind a device path in VMI `vmi`: `/dev/vdX` or `/dev/disk/by-id/virtio-SERIAL`.
    fn disk_of(&self, ns: &str, vmi: &Value, dev: &str) -> Option<(String, String)> {
        let spec = &vmi["spec"];
        let disks = spec["domain"]["devices"]["disks"].as_array()?;
        let i = if let Some(serial) = dev.strip_prefix("/dev/disk/by-id/virtio-") {
            disks.iter().position(|d| d["serial"] == serial)?
        } else {
            let n = dev.strip_prefix("/dev/vd")?;
            (n.as_bytes().first()? - b'a') as usize
        };
        let name = disks.get(i)?["name"].as_str()?;
        Some((
            ns.to_string(),
            claim(named(&spec["volumes"], name)?)?.to_string(),
        ))
    }

    /// The vCPUs the domain has and how many of them the guest onlined (the boot ones only,
    /// for a guest that leaves hot-added vCPUs offline).
    fn guest_cpus(&self, ns: &str, vmi: &Value) -> (u64, u64) {
        let n = vmi["status"]["currentCPUTopology"]["sockets"]
            .as_u64()
            .unwrap_or(1);
        let name = vmi["metadata"]["name"].as_str().unwrap_or_default();
        if !self
            .faults
            .lock()
            .expect("faults")
            .offline_cpus
            .contains(name)
        {
            return (n, n);
        }
        let g = self.guests.lock().expect("guests");
        let boot = *g
            .boot_cpus
            .get(&(ns.to_string(), name.to_string()))
            .unwrap_or(&n);
        (n, boot.min(n))
    }

    /// What the guest's procfs, sysfs and mount table show, in the form the probe script
    /// prints: the guest's boot (one per VMI), MemTotal as the VMI reports it, the vCPUs it
    /// onlined, memory blocks (all online), the disks (unpartitioned virtio disks, `vda`
    /// onwards in the VMI's disk order) with their mounts, and the NICs.
    fn guest_probe(&self, ns: &str, vmi: &Value) -> String {
        let mut out = format!(
            "boot {}\n",
            vmi["metadata"]["uid"].as_str().unwrap_or_default()
        );
        let name = vmi["metadata"]["name"].as_str().unwrap_or_default();
        let seen = if self
            .faults
            .lock()
            .expect("faults")
            .memory_unseen
            .contains(name)
        {
            "guestAtBoot"
        } else {
            "guestCurrent"
        };
        let memory = bytes(&vmi["status"]["memory"][seen]).unwrap_or(0);
        out += &format!("mem {}\n", memory / 1024);
        let (_, online) = self.guest_cpus(ns, vmi);
        out += &format!("cpus 0-{}\n", online.saturating_sub(1));
        out += &format!("memblocks {} 0 8000000 online_movable\n", memory >> 27);
        for i in vmi["status"]["interfaces"].as_array().into_iter().flatten() {
            if let (Some(name), Some(mac)) = (i["interfaceName"].as_str(), i["mac"].as_str()) {
                out += &format!("nic {name} {mac}\n");
            }
        }
        let disks = vmi["spec"]["domain"]["devices"]["disks"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for (i, d) in disks.iter().enumerate() {
            let dev = device(i);
            let Some(k) = self.disk_of(ns, vmi, &format!("/dev/{dev}")) else {
                continue;
            };
            let g = self.guests.lock().expect("guests");
            let Some(disk) = g.disks.get(&k) else {
                continue;
            };
            let serial = d["serial"].as_str().or(d["name"].as_str()).unwrap_or("-");
            out += &format!("disk {dev} {} {serial}\n", disk.size / 512);
            if let Some(Fs {
                fs_type,
                mount: Some(m),
                size,
            }) = &disk.fs
            {
                out += &format!("mnt {dev} {m} {fs_type} {size}\n");
            }
        }
        out
    }

    /// What the metrics script prints: `/proc/stat`'s counters moved by the load the test set
    /// (100 ticks a second per vCPU), MemTotal and MemAvailable (what the test says is used
    /// taken off, else 70 % of it), and `df` of each
    /// mounted filesystem with the bytes the test said are used.
    fn guest_metrics(&self, ns: &str, vmi: &Value) -> String {
        let name = vmi["metadata"]["name"].as_str().unwrap_or_default();
        let (_, online) = self.guest_cpus(ns, vmi);
        let (load, used, mem_used) = {
            let f = self.faults.lock().expect("faults");
            (
                f.cpu_load.get(name).copied().unwrap_or(0.0),
                f.fs_used.clone(),
                f.mem_used.get(name).copied(),
            )
        };
        let mut g = self.guests.lock().expect("guests");
        let now = std::time::Instant::now();
        let t = g
            .cpu_ticks
            .entry((ns.to_string(), name.to_string()))
            .or_insert((now, 0.0, 0.0));
        let secs = now.duration_since(t.0).as_secs_f64();
        t.0 = now;
        t.1 += load.min(online as f64) * secs * 100.0;
        t.2 += online as f64 * secs * 100.0;
        let (busy, total) = (t.1 as u64, t.2 as u64);
        let memory = bytes(&vmi["status"]["memory"]["guestCurrent"]).unwrap_or(0) / 1024;
        let available = match mem_used {
            Some(u) => memory.saturating_sub(u / 1024),
            None => memory * 7 / 10,
        };
        let mut out = format!(
            "stat cpu  {busy} 0 0 {} 0 0 0 0 0 0\nmeminfo MemTotal: {memory}\nmeminfo MemAvailable: {available}\n",
            total.saturating_sub(busy)
        );
        let spec = &vmi["spec"];
        for d in spec["domain"]["devices"]["disks"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let disk = d["name"].as_str().unwrap_or_default();
            let Some(c) = named(&spec["volumes"], disk).and_then(claim) else {
                continue;
            };
            if let Some(Disk {
                fs:
                    Some(Fs {
                        mount: Some(m),
                        size,
                        ..
                    }),
                ..
            }) = g.disks.get(&(ns.to_string(), c.to_string()))
            {
                let u = used.get(c).copied().unwrap_or(size / 50).min(*size);
                out += &format!("dfk {m} {} {}\n", size / 1024, u / 1024);
            }
        }
        out
    }

    /// Runs one command in the simulated guest: exit code, stdout, stderr.
    fn guest_run(&self, ns: &str, vmi: &Value, argv: &[String]) -> (i64, String, String) {
        // `timeout -s KILL SECS prog args…` runs prog (nothing here takes that long).
        if argv.first().map(String::as_str) == Some("timeout") {
            let skip = if argv.get(1).map(String::as_str) == Some("-s") {
                4
            } else {
                2
            };
            return self.guest_run(ns, vmi, argv.get(skip..).unwrap_or_default());
        }
        let arg = |i: usize| argv.get(i).map(String::as_str).unwrap_or_default();
        let last = argv.last().map(String::as_str).unwrap_or_default();
        // Programs are found by name, wherever the caller says they live.
        let program = arg(0).rsplit('/').next().unwrap_or_default();
        let with_disk = |dev: &str, f: &mut dyn FnMut(&mut Disk) -> (i64, String, String)| {
            let Some(k) = self.disk_of(ns, vmi, dev) else {
                return (1, String::new(), format!("{dev}: no such device\n"));
            };
            let mut g = self.guests.lock().expect("guests");
            match g.disks.get_mut(&k) {
                Some(d) => f(d),
                None => (1, String::new(), format!("{dev}: no such device\n")),
            }
        };
        match program {
            "mke2fs" | "mkfs.ext4" | "mkfs.xfs" => {
                let fs_type = if program == "mkfs.xfs" { "xfs" } else { "ext4" };
                with_disk(last, &mut |d| {
                    if d.fs.as_ref().is_some_and(|f| f.mount.is_some()) {
                        return (
                            1,
                            String::new(),
                            format!("{last} is mounted; will not make a filesystem here!\n"),
                        );
                    }
                    d.fs = Some(Fs {
                        fs_type: fs_type.into(),
                        mount: None,
                        size: d.size,
                    });
                    (0, String::new(), String::new())
                })
            }
            "blkid" => with_disk(last, &mut |d| match &d.fs {
                Some(f) => (
                    0,
                    format!("{last}: TYPE=\"{}\"\n", f.fs_type),
                    String::new(),
                ),
                None => (2, String::new(), String::new()),
            }),
            "mkdir" => (0, String::new(), String::new()),
            "mount" => {
                let (dev, path) = (arg(argv.len() - 2).to_string(), last.to_string());
                with_disk(&dev, &mut |d| match &mut d.fs {
                    Some(f) => {
                        f.mount = Some(path.clone());
                        (0, String::new(), String::new())
                    }
                    None => (
                        32,
                        String::new(),
                        format!(
                            "mount: {path}: wrong fs type, bad option, bad superblock on {dev}\n"
                        ),
                    ),
                })
            }
            "resize2fs" => with_disk(last, &mut |d| match &mut d.fs {
                Some(f) if f.fs_type == "ext4" => {
                    f.size = d.size;
                    (
                        0,
                        String::new(),
                        format!(
                            "The filesystem on {last} is now {} (4k) blocks long.\n",
                            d.size / 4096
                        ),
                    )
                }
                _ => (
                    1,
                    String::new(),
                    "resize2fs: Bad magic number in super-block\n".into(),
                ),
            }),
            "xfs_growfs" => {
                let mut g = self.guests.lock().expect("guests");
                match g
                    .disks
                    .values_mut()
                    .find(|d| d.fs.as_ref().and_then(|f| f.mount.as_deref()) == Some(last))
                {
                    Some(d) => {
                        let size = d.size;
                        if let Some(f) = &mut d.fs {
                            f.size = size;
                        }
                        (0, String::new(), String::new())
                    }
                    None => (
                        1,
                        String::new(),
                        format!("xfs_growfs: {last} is not a mounted XFS filesystem\n"),
                    ),
                }
            }
            "sh" if arg(1) == "-c" && arg(2).contains("/proc/stat") => (
                0,
                self.guest_probe(ns, vmi) + &self.guest_metrics(ns, vmi),
                String::new(),
            ),
            "sh" if arg(1) == "-c" => (0, self.guest_probe(ns, vmi), String::new()),
            // The first bytes of a disk: zeros, unless a filesystem was made on it.
            "head" if arg(1) == "-c" => with_disk(last, &mut |d| {
                let n: usize = arg(2).parse().unwrap_or(0);
                let fill = if d.fs.is_some() { 'S' } else { '\0' };
                (0, std::iter::repeat_n(fill, n).collect(), String::new())
            }),
            "umount" => {
                let mut g = self.guests.lock().expect("guests");
                match g
                    .disks
                    .values_mut()
                    .filter_map(|d| d.fs.as_mut())
                    .find(|f| f.mount.as_deref() == Some(last))
                {
                    Some(f) => {
                        f.mount = None;
                        (0, String::new(), String::new())
                    }
                    None => (32, String::new(), format!("umount: {last}: not mounted.\n")),
                }
            }
            "sfdisk" | "partx" | "sync" | "true" => (0, String::new(), String::new()),
            other => (127, String::new(), format!("{other}: not found\n")),
        }
    }

    /// Answers one guest agent command (the JSON virsh passes through), as virsh prints it.
    pub(crate) fn agent(&self, ns: &str, vmi: &Value, command: &Value) -> Result<Value, String> {
        let args = &command["arguments"];
        match command["execute"].as_str().unwrap_or_default() {
            "guest-ping" => Ok(json!({"return": {}})),
            "guest-get-vcpus" => {
                let (n, online) = self.guest_cpus(ns, vmi);
                Ok(json!({"return": (0..n)
                    .map(|i| json!({"logical-id": i, "online": i < online, "can-offline": i > 0}))
                    .collect::<Vec<_>>()}))
            }
            "guest-exec" => {
                if self.faults.lock().expect("faults").agent_blocks_exec {
                    return Err("unable to execute QEMU agent command 'guest-exec': Command guest-exec has been disabled".into());
                }
                let mut argv = vec![args["path"].as_str().unwrap_or_default().to_string()];
                argv.extend(
                    args["arg"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a.as_str().map(String::from)),
                );
                let result = self.guest_run(ns, vmi, &argv);
                let mut g = self.guests.lock().expect("guests");
                g.next_pid += 1;
                let pid = g.next_pid + 1000;
                g.execs.insert(pid, result);
                Ok(json!({"return": {"pid": pid}}))
            }
            "guest-exec-status" => {
                let pid = args["pid"].as_i64().unwrap_or_default();
                let g = self.guests.lock().expect("guests");
                let Some((code, out, err)) = g.execs.get(&pid) else {
                    return Err(format!(
                        "unable to execute QEMU agent command 'guest-exec-status': Invalid parameter 'pid' {pid}"
                    ));
                };
                let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
                Ok(
                    json!({"return": {"exited": true, "exitcode": code, "out-data": b64(out), "err-data": b64(err)}}),
                )
            }
            other => Err(format!(
                "unable to execute QEMU agent command '{other}': The command {other} has not been found"
            )),
        }
    }
}

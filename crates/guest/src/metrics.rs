//! The autoscaler's reading of a guest in one command: the probe (for which disk is mounted
//! where, and how big each disk is) followed by a fixed script (no input spliced in) that
//! prints the CPU counters, memory figures and each filesystem's use; and its parser.

use wukong_autoscaler::{CpuSample, FsSample, MemorySample, Sample};

use crate::probe::{PROBE, parse as parse_probe};

/// The metrics script. Lines: `stat cpu USER NICE SYSTEM IDLE IOWAIT IRQ SOFTIRQ STEAL…`
/// (`/proc/stat`'s first line), `meminfo KEY KB`, `oom N` (`/proc/vmstat`), `psi some avg10=X…`
/// (`/proc/pressure/memory`, where the kernel has PSI), `dfk MOUNT KBYTES KUSED` and
/// `dfi MOUNT INODES IUSED` (`df -P`; `-i` where df has it).
pub const METRICS: &str = r#"
read l < /proc/stat; echo "stat $l"
while read k v u; do case $k in MemTotal:|MemAvailable:) echo "meminfo $k $v" ;; esac; done < /proc/meminfo
while read k v; do [ "$k" = oom_kill ] && echo "oom $v"; done < /proc/vmstat
[ -r /proc/pressure/memory ] && while read kind rest; do echo "psi $kind $rest"; done < /proc/pressure/memory
df -P -k 2>/dev/null | { read h; while read f k u a p m; do echo "dfk $m $k $u"; done; }
df -P -i 2>/dev/null | { read h; while read f n u a p m; do echo "dfi $m $n $u"; done; }
true
"#;

/// The probe and the metrics script, run as one.
pub fn script() -> String {
    format!("{PROBE}\n{METRICS}")
}

/// Parses what [`script`] printed into a reading taken at `at`. A figure the guest did not
/// print stays absent (never zero): the rules that need it do nothing.
pub fn parse(text: &str, at: f64) -> Sample {
    let probe = parse_probe(text);
    let view = probe.view();
    let num = |s: &str| s.parse::<u64>().ok();
    let mut cpu = None;
    let (mut total, mut available, mut oom, mut pressure) = (None, None, None, None);
    let mut bytes: Vec<(String, u64, u64)> = Vec::new();
    let mut inodes: Vec<(String, u64, u64)> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["stat", "cpu", counters @ ..] if counters.len() >= 4 => {
                let v: Vec<u64> = counters.iter().take(8).filter_map(|c| num(c)).collect();
                // Counters that overflow when added up are nonsense: no CPU figure.
                let all = v.iter().try_fold(0u64, |a, b| a.checked_add(*b));
                // idle and iowait are not busy.
                let idle = v
                    .get(3)
                    .and_then(|i| i.checked_add(v.get(4).copied().unwrap_or(0)));
                if let (true, Some(all), Some(idle)) = (v.len() >= 4, all, idle) {
                    cpu = Some(CpuSample {
                        online: probe.cpus_online,
                        busy: all.saturating_sub(idle),
                        total: all,
                    });
                }
            }
            // A size in KiB that does not fit in bytes is nonsense: unknown, not the maximum.
            ["meminfo", "MemTotal:", kb] => total = num(kb).and_then(|k| k.checked_mul(1024)),
            ["meminfo", "MemAvailable:", kb] => {
                available = num(kb).and_then(|k| k.checked_mul(1024))
            }
            ["oom", n] => oom = num(n),
            ["psi", "some", rest @ ..] => {
                pressure = rest
                    .iter()
                    .find_map(|kv| kv.strip_prefix("avg10="))
                    .and_then(|v| v.parse::<f64>().ok());
            }
            ["dfk", mount, k, u] => {
                let kib = |x: &str| num(x).and_then(|n| n.checked_mul(1024));
                if let (Some(k), Some(u)) = (kib(k), kib(u)) {
                    bytes.push((mount.to_string(), k, u));
                }
            }
            ["dfi", mount, n, u] => {
                if let (Some(n), Some(u)) = (num(n), num(u)) {
                    inodes.push((mount.to_string(), n, u));
                }
            }
            _ => {}
        }
    }
    let memory = match (total, available) {
        (Some(total), Some(available)) => Some(MemorySample {
            total,
            available,
            oom_kills: oom,
            pressure,
        }),
        _ => None,
    };
    let mut filesystems = std::collections::BTreeMap::new();
    for (disk, d) in &view.disks {
        let Some(mount) = &d.mount else { continue };
        let Some((_, size, used)) = bytes.iter().find(|(m, _, _)| m == mount) else {
            continue;
        };
        filesystems.insert(
            disk.clone(),
            FsSample {
                mount: mount.clone(),
                disk_size: d.size,
                size: *size,
                used: *used,
                // A filesystem without inode counts (vfat, btrfs) prints 0 inodes: unknown.
                inodes: inodes
                    .iter()
                    .find(|(m, n, _)| m == mount && *n > 0)
                    .map(|(_, n, u)| (*n, *u)),
            },
        );
    }
    Sample {
        at,
        cpu,
        memory,
        filesystems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the script printed on the busybox guest (no PSI, no inode figures from its df).
    const BUSYBOX: &str = "boot b1\nmem 480000\ncpus 0\nmemblocks 4 0 8000000 online\n\
disk vda 524288 data\nmnt vda /data ext4 260000000\n\
stat cpu  100 0 50 800 50 0 0 0 0 0\nmeminfo MemTotal: 480000\nmeminfo MemAvailable: 380000\n\
oom 2\ndfk /data 253920 10240\ndfk / 100000 5000\n";

    #[test]
    fn parses_counters_memory_and_filesystems_by_disk() {
        let s = parse(BUSYBOX, 7.0);
        assert_eq!(s.at, 7.0);
        let c = s.cpu.unwrap();
        assert_eq!((c.online, c.busy, c.total), (1, 150, 1000));
        let m = s.memory.unwrap();
        assert_eq!(m.used(), 100_000 * 1024);
        assert_eq!((m.oom_kills, m.pressure), (Some(2), None));
        let fs = &s.filesystems["data"];
        assert_eq!(fs.mount, "/data");
        assert_eq!((fs.size, fs.used), (253920 * 1024, 10240 * 1024));
        assert_eq!(fs.disk_size, 524288 * 512);
        assert_eq!(fs.inodes, None, "not reported is not zero");
        assert_eq!(s.filesystems.len(), 1, "/ is on no disk of the VM");
    }

    #[test]
    fn psi_and_inodes_when_the_guest_has_them() {
        let text = format!(
            "{BUSYBOX}psi some avg10=12.50 avg60=3.00 avg300=1.00 total=1\n\
psi full avg10=1.00 avg60=0 avg300=0 total=1\ndfi /data 65536 120\n"
        );
        let s = parse(&text, 0.0);
        assert_eq!(s.memory.unwrap().pressure, Some(12.5));
        assert_eq!(s.filesystems["data"].inodes, Some((65536, 120)));
    }

    /// Found by the fuzzer: figures too big for bytes, or counters that overflow when added
    /// up, are unknown (no figure), never a panic or the largest number.
    #[test]
    fn figures_that_overflow_are_unknown() {
        let huge = u64::MAX / 2;
        let text = format!(
            "disk vda 524288 data\nmnt vda /data ext4 1000\nstat cpu {huge} {huge} {huge} 1 0\n\
meminfo MemTotal: {huge}\nmeminfo MemAvailable: 1\ndfk /data {huge} 1\n"
        );
        let s = parse(&text, 0.0);
        assert!(s.cpu.is_none(), "{:?}", s.cpu);
        assert!(s.memory.is_none(), "{:?}", s.memory);
        assert!(s.filesystems.is_empty(), "{:?}", s.filesystems);
    }

    #[test]
    fn nothing_printed_is_nothing_known() {
        let s = parse("", 0.0);
        assert!(s.cpu.is_none() && s.memory.is_none() && s.filesystems.is_empty());
        let s = parse("meminfo MemTotal: 1000\n", 0.0);
        assert!(s.memory.is_none(), "MemAvailable missing: no memory figure");
    }
}

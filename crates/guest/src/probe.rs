//! The guest's own view in one command: a fixed shell script (no input is ever spliced into
//! it) that prints one line per fact, and its parser. It reads only sysfs and procfs, plus
//! `tune2fs -l` / `xfs_info` / `df` for the size of each mounted filesystem.

use std::collections::BTreeMap;

use wukong_planner::{GuestDiskView, GuestView};

use crate::storage::{BlockDevice, Mapper, Mount, Partition, Storage};

/// The probe. Lines: `boot ID`, `mem KB`, `cpus LIST`, `memblocks ONLINE OFFLINE BLOCKSIZE
/// AUTO`, `disk DEV SECTORS SERIAL`, `part DISK DEV NUMBER START SECTORS`, `dm DEV SECTORS
/// NAME UUID SLAVES`, `mnt DEV MOUNTPOINT TYPE BYTES`, `nic IF MAC`. Tools that busybox also
/// provides are called by absolute path where it matters (a static busybox `sh` prefers its
/// own applets).
pub const PROBE: &str = r#"
read b < /proc/sys/kernel/random/boot_id; echo "boot $b"
while read k v u; do [ "$k" = MemTotal: ] && { echo "mem $v"; break; }; done < /proc/meminfo
read c < /sys/devices/system/cpu/online; echo "cpus $c"
on=0; off=0; bs=0; auto=-
for m in /sys/devices/system/memory/memory*; do
  [ -f "$m/state" ] || continue
  read s < "$m/state"
  case $s in online*) on=$((on + 1)) ;; offline) off=$((off + 1)) ;; esac
done
[ -f /sys/devices/system/memory/block_size_bytes ] && read bs < /sys/devices/system/memory/block_size_bytes
[ -f /sys/devices/system/memory/auto_online_blocks ] && read auto < /sys/devices/system/memory/auto_online_blocks
echo "memblocks $on $off $bs $auto"
for b in /sys/block/*; do
  d=${b##*/}; n=0
  read n < "$b/size"
  if [ -e "$b/device" ]; then
    s=; [ -f "$b/serial" ] && read s < "$b/serial"
    echo "disk $d $n ${s:--}"
    for p in "$b/$d"*; do
      [ -f "$p/partition" ] || continue
      read pn < "$p/partition"; read st < "$p/start"; read ps < "$p/size"
      echo "part $d ${p##*/} $pn $st $ps"
    done
  elif [ -d "$b/dm" ]; then
    read nm < "$b/dm/name"; u=-; [ -f "$b/dm/uuid" ] && read u < "$b/dm/uuid"
    sl=; for x in "$b"/slaves/*; do [ -e "$x" ] && sl="$sl${x##*/},"; done
    echo "dm $d $n $nm ${u:--} ${sl:--}"
  fi
done
while read -r id par mm root mnt rest; do
  [ -f "/sys/dev/block/$mm/uevent" ] || continue
  t=${rest#* - }; t=${t%% *}
  dn=; while IFS== read k v; do [ "$k" = DEVNAME ] && dn=$v; done < "/sys/dev/block/$mm/uevent"
  [ -n "$dn" ] || continue
  z=0
  case $t in
    ext2|ext3|ext4)
      tn=/sbin/tune2fs; [ -x $tn ] || tn=/usr/sbin/tune2fs
      z=$($tn -l "/dev/$dn" 2>/dev/null | { c=0; k=0
        while IFS=: read a v; do case $a in "Block count") c=$v ;; "Block size") k=$v ;; esac; done
        echo $((c * k)); }) ;;
    xfs)
      z=$(xfs_info "$mnt" 2>/dev/null | { while read a r; do
        case "$a $r" in "data "*) r=${r#*bsize=}; k=${r%% *}; r=${r#*blocks=}; c=${r%%,*}; echo $((c * k)); break ;; esac
      done; }) ;;
  esac
  [ -n "$z" ] && [ "$z" != 0 ] || z=$(df -P -k "$mnt" 2>/dev/null | { read h; read x k r; echo $((k * 1024)); })
  echo "mnt $dn $mnt $t ${z:-0}"
done < /proc/self/mountinfo
for n in /sys/class/net/*; do [ "${n##*/}" = lo ] || { read a < "$n/address"; echo "nic ${n##*/} $a"; }; done
"#;

/// Everything the probe printed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Probe {
    /// The guest's boot id.
    pub boot_id: Option<String>,
    /// MemTotal, bytes.
    pub memory_total: u64,
    /// vCPUs online.
    pub cpus_online: u32,
    /// Memory blocks online and offline, and the block size in bytes.
    pub memory_blocks: (u64, u64, u64),
    /// What the kernel does with new memory blocks (`offline`, `online`, `online_movable`).
    pub auto_online: Option<String>,
    /// The storage the guest sees.
    pub storage: Storage,
    /// MAC addresses, lower case.
    pub macs: Vec<String>,
}

/// Parses the probe's output. Lines it does not know are ignored.
pub fn parse(text: &str) -> Probe {
    let mut p = Probe::default();
    let num = |s: &str| s.parse::<u64>().unwrap_or(0);
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["boot", id] => p.boot_id = Some(id.to_string()),
            ["mem", kb] => p.memory_total = num(kb).saturating_mul(1024),
            ["cpus", ranges] => p.cpus_online = count_ranges(ranges),
            ["memblocks", on, off, bs, auto] => {
                p.memory_blocks = (num(on), num(off), u64::from_str_radix(bs, 16).unwrap_or(0));
                p.auto_online = (*auto != "-").then(|| auto.to_string());
            }
            ["disk", dev, sectors, serial] => p.storage.disks.push(BlockDevice {
                name: dev.to_string(),
                sectors: num(sectors),
                serial: (*serial != "-").then(|| serial.to_string()),
            }),
            ["part", disk, dev, number, start, sectors] => p.storage.partitions.push(Partition {
                disk: disk.to_string(),
                name: dev.to_string(),
                number: number.parse().unwrap_or(0),
                start: num(start),
                sectors: num(sectors),
            }),
            ["dm", dev, sectors, name, uuid, slaves] => p.storage.mappers.push(Mapper {
                name: dev.to_string(),
                sectors: num(sectors),
                dm_name: name.to_string(),
                lvm: uuid.starts_with("LVM-"),
                slaves: slaves
                    .split(',')
                    .filter(|s| !s.is_empty() && *s != "-")
                    .map(String::from)
                    .collect(),
            }),
            // A filesystem mounted twice (bind mounts) counts once, at its first place.
            ["mnt", dev, path, fs_type, bytes]
                if !p.storage.mounts.iter().any(|m| m.device == *dev) =>
            {
                p.storage.mounts.push(Mount {
                    device: dev.to_string(),
                    path: unescape(path),
                    fs_type: fs_type.to_string(),
                    bytes: num(bytes),
                });
            }
            ["nic", _, mac] => p.macs.push(mac.to_lowercase()),
            _ => {}
        }
    }
    p
}

/// Mount points in mountinfo escape space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or(""), 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Counts CPUs in a list like `0-3,6`.
fn count_ranges(s: &str) -> u32 {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<u32>().unwrap_or(0), b.parse::<u32>().unwrap_or(0));
                b.saturating_add(1).saturating_sub(a)
            }
            None => 1,
        })
        .sum()
}

impl Probe {
    /// The view the planner and the verifier use: disks by serial, each with what its
    /// storage stack leads to.
    pub fn view(&self) -> GuestView {
        let mut disks = BTreeMap::new();
        for d in &self.storage.disks {
            let Some(serial) = &d.serial else { continue };
            let stack = self.storage.stack(&d.name);
            disks.insert(
                serial.clone(),
                GuestDiskView {
                    size: d.sectors.saturating_mul(512),
                    filesystem_size: stack.filesystem.as_ref().map(|m| m.bytes),
                    partitioned: self.storage.partitions.iter().any(|p| p.disk == d.name),
                    device: Some(d.name.clone()),
                    partition: stack.partition.as_ref().map(|p| p.name.clone()),
                    mount: stack.filesystem.as_ref().map(|m| m.path.clone()),
                    fs_type: stack.filesystem.as_ref().map(|m| m.fs_type.clone()),
                    offset: stack
                        .partition
                        .as_ref()
                        .map_or(0, |p| p.start.saturating_mul(512)),
                    volume: stack.volume.as_ref().map(|v| v.dm_name.clone()),
                    grow_blocked: stack.blocked.clone(),
                },
            );
        }
        let (_, offline, block) = self.memory_blocks;
        GuestView {
            cpus_online: self.cpus_online,
            memory_total: self.memory_total,
            disks,
            macs: self.macs.clone(),
            boot_id: self.boot_id.clone(),
            memory_offline: offline.saturating_mul(block),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the probe printed on the stock Debian 12 guest (cloud-image layout, an LVM data
    /// disk with xfs, 2 memory blocks left offline).
    const STOCK: &str = "boot 5e1c\nmem 1001732\ncpus 0-1\nmemblocks 8 2 8000000 offline\n\
disk vda 4194304 system\npart vda vda1 1 262144 3932127\npart vda vda14 14 2048 6144\n\
part vda vda15 15 8192 253952\ndisk vdb 671088640 lvm\n\
dm dm-0 667942912 data-lv LVM-abc -\ndm dm-1 0 crypt CRYPT-x vdc,\n\
mnt vda1 / ext4 1950000000\nmnt vda15 /boot/efi vfat 129000000\nmnt vda1 /srv ext4 1950000000\n\
nic ens3 52:54:00:AA:00:01\n";

    #[test]
    fn parses_the_stock_guest() {
        let p = parse(&STOCK.replace("data-lv LVM-abc -", "data-lv LVM-abc vdb,"));
        assert_eq!(p.boot_id.as_deref(), Some("5e1c"));
        assert_eq!(p.cpus_online, 2);
        assert_eq!(p.memory_blocks, (8, 2, 128 << 20));
        assert_eq!(p.auto_online.as_deref(), Some("offline"));
        assert_eq!(p.storage.partitions.len(), 3);
        assert_eq!(
            p.storage.mounts.len(),
            2,
            "a second mount of vda1 is not counted"
        );
        assert_eq!(p.storage.mappers[0].slaves, vec!["vdb"]);
        assert!(p.storage.mappers[0].lvm && !p.storage.mappers[1].lvm);
        let v = p.view();
        assert_eq!(v.memory_offline, 256 << 20);
        let sys = &v.disks["system"];
        assert_eq!(
            sys.partition.as_deref(),
            Some("vda1"),
            "p1 lies last though numbered first"
        );
        assert_eq!(sys.mount.as_deref(), Some("/"));
        assert_eq!(sys.offset, 262144 * 512);
        assert_eq!(v.macs, vec!["52:54:00:aa:00:01"]);
    }

    #[test]
    fn ranges_and_escapes() {
        assert_eq!(count_ranges("0-2,5"), 4);
        assert_eq!(count_ranges("3-1"), 0);
        assert_eq!(unescape("/mnt/my\\040disk"), "/mnt/my disk");
        assert_eq!(unescape("/a\\"), "/a\\");
    }
}

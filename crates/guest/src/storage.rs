//! A disk's storage stack as the guest has it, and what growing it takes. Pure: the walk and
//! the commands are decided from the probe's facts alone.
//!
//! From the disk down: a filesystem on the whole disk; or a partition table, where the
//! partition that holds a mounted filesystem or an LVM physical volume counts — and only if it
//! lies physically last (by start sector, never by number); or LVM, where the one logical
//! volume with a mounted filesystem counts (two → nothing is changed, both are named). Swap
//! and anything unmounted are never touched.

/// A whole disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockDevice {
    /// Kernel name (`vdb`).
    pub name: String,
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Serial (the Wukong disk name), when it has one.
    pub serial: Option<String>,
}

/// A partition of a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// The disk's kernel name.
    pub disk: String,
    /// Kernel name (`vda1`).
    pub name: String,
    /// Partition number.
    pub number: u32,
    /// First sector.
    pub start: u64,
    /// Size in sectors.
    pub sectors: u64,
}

/// A device-mapper device (an LVM logical volume when `lvm`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapper {
    /// Kernel name (`dm-0`).
    pub name: String,
    /// Size in sectors.
    pub sectors: u64,
    /// Its mapper name (`vg-lv`).
    pub dm_name: String,
    /// Whether LVM made it.
    pub lvm: bool,
    /// The devices under it.
    pub slaves: Vec<String>,
}

/// A mounted filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Kernel name of the block device it is on.
    pub device: String,
    /// Mount point.
    pub path: String,
    /// Type (`ext4`, `xfs`, …).
    pub fs_type: String,
    /// Its size, bytes.
    pub bytes: u64,
}

/// The block devices and mounts the guest has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Storage {
    /// Whole disks.
    pub disks: Vec<BlockDevice>,
    /// Partitions.
    pub partitions: Vec<Partition>,
    /// Device-mapper devices.
    pub mappers: Vec<Mapper>,
    /// Mounted filesystems.
    pub mounts: Vec<Mount>,
}

/// What lies on one disk, top to bottom, as far as it can be grown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stack {
    /// The disk's kernel name.
    pub disk: String,
    /// Its size in sectors.
    pub disk_sectors: u64,
    /// The partition in the way, when the stack sits in one.
    pub partition: Option<Partition>,
    /// The device holding an LVM physical volume (the disk or the partition).
    pub physical_volume: Option<String>,
    /// The logical volume holding the filesystem.
    pub volume: Option<Mapper>,
    /// The mounted filesystem at the top.
    pub filesystem: Option<Mount>,
    /// Why this stack cannot be grown (the disk itself still can be).
    pub blocked: Option<String>,
}

/// Filesystem types that grow while mounted, and how.
const GROWABLE: [&str; 5] = ["ext2", "ext3", "ext4", "xfs", "btrfs"];

/// What a device holds: a mounted filesystem, or LVM volumes on it.
enum Holder<'a> {
    Filesystem(&'a Mount),
    Lvm(Vec<&'a Mapper>),
    Other(&'a Mapper),
}

impl Storage {
    fn holder(&self, dev: &str) -> Option<Holder<'_>> {
        if let Some(m) = self.mounts.iter().find(|m| m.device == dev) {
            return Some(Holder::Filesystem(m));
        }
        let above: Vec<&Mapper> = self
            .mappers
            .iter()
            .filter(|m| m.slaves.iter().any(|s| s == dev))
            .collect();
        match above.first() {
            None => None,
            Some(m) if !m.lvm => Some(Holder::Other(m)),
            Some(_) => Some(Holder::Lvm(above)),
        }
    }

    /// The disk whose serial is `serial`.
    pub fn disk_with_serial(&self, serial: &str) -> Option<&BlockDevice> {
        self.disks
            .iter()
            .find(|d| d.serial.as_deref() == Some(serial))
    }

    /// The partitions of disk `disk`, in the order they lie on it (by start sector).
    pub fn partitions_of(&self, disk: &str) -> Vec<&Partition> {
        let mut parts: Vec<&Partition> =
            self.partitions.iter().filter(|p| p.disk == disk).collect();
        parts.sort_by_key(|p| p.start);
        parts
    }

    /// Every mounted filesystem that lives on disk `disk`: on the disk, its partitions, or the
    /// device-mapper devices above them (what must be unmounted before the disk leaves).
    pub fn mounts_on(&self, disk: &str) -> Vec<&Mount> {
        let mut devices = vec![disk.to_string()];
        devices.extend(
            self.partitions
                .iter()
                .filter(|p| p.disk == disk)
                .map(|p| p.name.clone()),
        );
        // Mappers stack on mappers too (LVM on a crypt device): follow them to the top.
        loop {
            let above: Vec<String> = self
                .mappers
                .iter()
                .filter(|m| !devices.contains(&m.name))
                .filter(|m| m.slaves.iter().any(|s| devices.contains(s)))
                .map(|m| m.name.clone())
                .collect();
            if above.is_empty() {
                break;
            }
            devices.extend(above);
        }
        self.mounts
            .iter()
            .filter(|m| devices.contains(&m.device))
            .collect()
    }

    /// Walks disk `disk` (kernel name) down to its filesystem.
    pub fn stack(&self, disk: &str) -> Stack {
        let mut s = Stack {
            disk: disk.to_string(),
            disk_sectors: self
                .disks
                .iter()
                .find(|d| d.name == disk)
                .map_or(0, |d| d.sectors),
            ..Default::default()
        };
        let parts = self.partitions_of(disk);
        let dev = match self.holder(disk) {
            Some(_) => disk.to_string(),
            None => {
                let held: Vec<&&Partition> = parts
                    .iter()
                    .filter(|p| self.holder(&p.name).is_some())
                    .collect();
                let Some(last) = parts.last() else {
                    return s;
                };
                if held.iter().any(|p| p.name == last.name) {
                    s.partition = Some((*last).clone());
                    last.name.clone()
                } else if let Some(p) = held.last() {
                    // Known (so a detach unmounts it and nothing formats beside it), never grown.
                    if let Some(Holder::Filesystem(m)) = self.holder(&p.name) {
                        s.filesystem = Some(m.clone());
                    }
                    s.partition = Some((**p).clone());
                    s.blocked = Some(format!(
                        "its filesystem is on partition {} and partition {} lies after it: only the last partition can grow",
                        p.name, last.name
                    ));
                    return s;
                } else {
                    return s;
                }
            }
        };
        match self.holder(&dev) {
            Some(Holder::Filesystem(m)) => s.filesystem = Some(m.clone()),
            Some(Holder::Other(m)) => {
                s.blocked = Some(format!(
                    "{dev} is under device-mapper device {} (not LVM): Wukong does not grow it",
                    m.dm_name
                ));
                return s;
            }
            Some(Holder::Lvm(volumes)) => {
                s.physical_volume = Some(dev.clone());
                let mounted: Vec<&&Mapper> = volumes
                    .iter()
                    .filter(|v| matches!(self.holder(&v.name), Some(Holder::Filesystem(_))))
                    .collect();
                match mounted.as_slice() {
                    [] => {}
                    [one] => {
                        s.volume = Some((**one).clone());
                        if let Some(Holder::Filesystem(m)) = self.holder(&one.name) {
                            s.filesystem = Some(m.clone());
                        }
                    }
                    many => {
                        s.blocked = Some(format!(
                            "more than one logical volume with a mounted filesystem on {dev}: {}; grow the one you mean by hand",
                            many.iter()
                                .map(|v| v.dm_name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                        return s;
                    }
                }
            }
            None => {}
        }
        if let Some(fs) = &s.filesystem
            && !GROWABLE.contains(&fs.fs_type.as_str())
        {
            s.blocked = Some(format!(
                "a {} filesystem cannot be grown while mounted: it was left as it is",
                fs.fs_type
            ));
        }
        s
    }
}

/// One guest command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestCommand {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Standard input.
    pub stdin: Option<&'static [u8]>,
    /// Whether a non-zero exit fails the step.
    pub checked: bool,
}

fn cmd(argv: &[&str], stdin: Option<&'static [u8]>, checked: bool) -> GuestCommand {
    GuestCommand {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        stdin,
        checked,
    }
}

/// Sectors a partition may leave unused at the disk's end and still count as filling it
/// (GPT's backup table takes 33, alignment up to 1 MiB).
const END_SLACK: u64 = 2048 + 33;

impl Stack {
    /// The commands that grow this stack to fill its disk, bottom to top: the partition (GPT
    /// backup header moved to the end first), the physical volume, the logical volume, the
    /// filesystem. An error says why nothing may be done.
    pub fn grow_commands(&self) -> Result<Vec<GuestCommand>, String> {
        if let Some(why) = &self.blocked {
            return Err(why.clone());
        }
        let disk = format!("/dev/{}", self.disk);
        let mut out = Vec::new();
        if let Some(p) = &self.partition
            && p.start + p.sectors + END_SLACK < self.disk_sectors
        {
            let n = p.number.to_string();
            // Fails harmlessly on an MBR disk.
            out.push(cmd(
                &["sfdisk", "--relocate", "gpt-bak-std", &disk],
                None,
                false,
            ));
            out.push(cmd(
                &[
                    "sfdisk",
                    "--no-reread",
                    "--no-tell-kernel",
                    "-q",
                    "-N",
                    &n,
                    &disk,
                ],
                Some(b", +\n"),
                true,
            ));
            out.push(cmd(&["partx", "-u", "--nr", &n, &disk], None, true));
        }
        if let Some(pv) = &self.physical_volume {
            out.push(cmd(&["pvresize", &format!("/dev/{pv}")], None, true));
            if let Some(lv) = &self.volume {
                // Exits non-zero when no extent is free: the filesystem check then says so.
                out.push(cmd(
                    &[
                        "lvextend",
                        "-l",
                        "+100%FREE",
                        &format!("/dev/mapper/{}", lv.dm_name),
                    ],
                    None,
                    false,
                ));
            }
        }
        if let Some(fs) = &self.filesystem {
            let dev = format!("/dev/{}", fs.device);
            out.push(match fs.fs_type.as_str() {
                "ext2" | "ext3" | "ext4" => cmd(&["/sbin/resize2fs", &dev], None, true),
                "xfs" => cmd(&["xfs_growfs", &fs.path], None, true),
                "btrfs" => cmd(
                    &["btrfs", "filesystem", "resize", "max", &fs.path],
                    None,
                    true,
                ),
                other => return Err(format!("cannot grow a {other} filesystem online")),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, sectors: u64) -> BlockDevice {
        BlockDevice {
            name: name.into(),
            sectors,
            serial: Some(name.into()),
        }
    }
    fn part(disk: &str, n: u32, start: u64, sectors: u64) -> Partition {
        Partition {
            disk: disk.into(),
            name: format!("{disk}{n}"),
            number: n,
            start,
            sectors,
        }
    }
    fn mount(dev: &str, path: &str, t: &str) -> Mount {
        Mount {
            device: dev.into(),
            path: path.into(),
            fs_type: t.into(),
            bytes: 1 << 30,
        }
    }
    fn lv(name: &str, dm: &str, slave: &str) -> Mapper {
        Mapper {
            name: name.into(),
            sectors: 1 << 20,
            dm_name: dm.into(),
            lvm: true,
            slaves: vec![slave.into()],
        }
    }
    fn argv0(c: &[GuestCommand]) -> Vec<String> {
        c.iter().map(|c| c.argv[..2].join(" ")).collect()
    }

    /// Debian's cloud-image layout: p14 and p15 at the front, p1 (root) last; EFI mounted.
    fn cloud(disk_sectors: u64) -> Storage {
        Storage {
            disks: vec![disk("vda", disk_sectors)],
            partitions: vec![
                part("vda", 1, 262144, 3932127),
                part("vda", 14, 2048, 6144),
                part("vda", 15, 8192, 253952),
            ],
            mappers: vec![],
            mounts: vec![
                mount("vda1", "/", "ext4"),
                mount("vda15", "/boot/efi", "vfat"),
            ],
        }
    }

    #[test]
    fn the_root_partition_lies_last_though_numbered_first() {
        let s = cloud(8388608).stack("vda");
        assert_eq!(s.partition.as_ref().map(|p| p.number), Some(1));
        assert_eq!(s.filesystem.as_ref().map(|m| m.path.as_str()), Some("/"));
        let c = s.grow_commands().unwrap();
        assert_eq!(
            argv0(&c),
            [
                "sfdisk --relocate",
                "sfdisk --no-reread",
                "partx -u",
                "/sbin/resize2fs /dev/vda1"
            ]
        );
        assert_eq!(c[1].argv[5], "1");
        assert_eq!(c[1].argv[6], "/dev/vda");
    }

    #[test]
    fn a_partition_that_already_fills_the_disk_is_left_alone() {
        let c = cloud(262144 + 3932127 + 34)
            .stack("vda")
            .grow_commands()
            .unwrap();
        assert_eq!(argv0(&c), ["/sbin/resize2fs /dev/vda1"]);
    }

    #[test]
    fn a_filesystem_on_a_partition_that_is_not_last_is_not_grown() {
        let mut st = cloud(8388608);
        st.mounts.retain(|m| m.device != "vda1");
        let s = st.stack("vda");
        let why = s.grow_commands().unwrap_err();
        assert!(
            why.contains("vda15") && why.contains("vda1 lies after it"),
            "{why}"
        );
        assert_eq!(s.filesystem.map(|m| m.path).as_deref(), Some("/boot/efi"));
    }

    #[test]
    fn lvm_on_the_whole_disk_grows_pv_lv_and_xfs() {
        let st = Storage {
            disks: vec![disk("vdb", 671088640)],
            mappers: vec![lv("dm-0", "data-lv", "vdb")],
            mounts: vec![mount("dm-0", "/srv", "xfs")],
            ..Default::default()
        };
        let s = st.stack("vdb");
        assert_eq!(s.physical_volume.as_deref(), Some("vdb"));
        let c = s.grow_commands().unwrap();
        assert_eq!(
            argv0(&c),
            ["pvresize /dev/vdb", "lvextend -l", "xfs_growfs /srv"]
        );
        assert_eq!(c[1].argv[3], "/dev/mapper/data-lv");
    }

    #[test]
    fn lvm_in_a_partition_and_two_mounted_volumes() {
        let mut st = Storage {
            disks: vec![disk("vdc", 1 << 22)],
            partitions: vec![part("vdc", 1, 2048, 1 << 20)],
            mappers: vec![lv("dm-0", "vg-a", "vdc1")],
            mounts: vec![mount("dm-0", "/a", "ext4")],
        };
        let c = st.stack("vdc").grow_commands().unwrap();
        assert_eq!(
            argv0(&c),
            [
                "sfdisk --relocate",
                "sfdisk --no-reread",
                "partx -u",
                "pvresize /dev/vdc1",
                "lvextend -l",
                "/sbin/resize2fs /dev/dm-0"
            ]
        );
        st.mappers.push(lv("dm-1", "vg-b", "vdc1"));
        st.mounts.push(mount("dm-1", "/b", "ext4"));
        let why = st.stack("vdc").grow_commands().unwrap_err();
        assert!(why.contains("vg-a, vg-b"), "{why}");
    }

    #[test]
    fn everything_mounted_on_a_disk_is_found_for_its_detach() {
        let mut st = cloud(8388608);
        st.mappers.push(lv("dm-0", "vg-a", "vda1"));
        st.mounts.push(mount("dm-0", "/a", "xfs"));
        let paths: Vec<&str> = st
            .mounts_on("vda")
            .iter()
            .map(|m| m.path.as_str())
            .collect();
        assert_eq!(paths, ["/", "/boot/efi", "/a"]);
        assert!(st.mounts_on("vdb").is_empty());
    }

    #[test]
    fn raw_disks_swap_and_unknown_filesystems() {
        let st = Storage {
            disks: vec![disk("vdd", 1 << 20), disk("vde", 1 << 20)],
            partitions: vec![part("vde", 1, 2048, 1000)],
            mounts: vec![mount("vdd", "/d", "vfat")],
            ..Default::default()
        };
        // Nothing mounted on vde (swap, or nothing): nothing to grow inside.
        assert_eq!(st.stack("vde").grow_commands().unwrap(), vec![]);
        let why = st.stack("vdd").grow_commands().unwrap_err();
        assert!(why.contains("vfat"), "{why}");
    }
}

//! The QEMU command line for a VM: a q35 machine shaped for live changes (vCPU slots up to
//! maxCpu, a virtio-mem region up to maxMemory, free PCIe root ports for hot-plugged disks and
//! NICs, QMP and the guest agent on private unix sockets). Pure: tested without QEMU.

use std::path::{Path, PathBuf};

use wukong_api::{NetworkSource, NicConfig, NicModel, VmConfig};

/// How guest code runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation (always works; the choice on machines without real KVM).
    Tcg,
    /// Hardware virtualisation.
    Kvm,
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcg" => Ok(Accel::Tcg),
            "kvm" => Ok(Accel::Kvm),
            other => Err(format!("unknown accelerator '{other}' (use kvm or tcg)")),
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        })
    }
}

/// KVM only where it really works: `/dev/kvm` opens, the CPU has vmx/svm, and it is not the
/// software nested layer (`kvm_pvm`) under which stock kernels do not boot. Otherwise TCG.
pub fn detect_accel() -> Accel {
    let kvm_opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_vmx = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    if kvm_opens && has_vmx && !pvm {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

/// What the guest boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootSource {
    /// Kernel (vmlinux or bzImage); `None` boots the boot disk through the firmware.
    pub kernel: Option<PathBuf>,
    /// Initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// UEFI firmware (without it and without a kernel: SeaBIOS).
    pub uefi: Option<Uefi>,
}

/// UEFI firmware files of one VM: the firmware itself (read-only, shared) and the VM's own
/// variable store (a copy of the template, kept with the VM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uefi {
    /// `OVMF_CODE_4M.fd`.
    pub code: PathBuf,
    /// The VM's copy of `OVMF_VARS_4M.fd`.
    pub vars: PathBuf,
}

/// Kernel parameters the default guest needs for live changes: hot-added memory onlined
/// movable (so it can be removed again); no bounce buffer (device memory sits above 4 GiB).
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 memhp_default_state=online_movable swiotlb=noforce panic=-1 quiet";

/// Free PCIe root ports reserved for hot-plugged disks and NICs, unless configured.
pub const DEFAULT_HOTPLUG_PORTS: u32 = 8;
/// q35's root bus takes at most this many root ports next to its own devices.
pub const MAX_ROOT_PORTS: u32 = 28;

/// Everything the command line is made from.
#[derive(Clone, Debug)]
pub struct Machine<'a> {
    /// `namespace_name`, QEMU's guest name.
    pub name: String,
    /// The VM's private directory (sockets, disks, logs).
    pub dir: &'a Path,
    /// The configuration to boot.
    pub config: &'a VmConfig,
    /// What to boot.
    pub boot: &'a BootSource,
    /// Accelerator.
    pub accel: Accel,
    /// Free root ports to reserve for hot-plug.
    pub hotplug_ports: u32,
    /// cloud-init's NoCloud seed (an ISO 9660 image labelled `cidata`), read-only on the
    /// chipset's SATA controller: never one of the user's disks, never on a hot-plug port.
    pub seed: Option<&'a Path>,
}

/// Files of one VM inside its directory.
pub struct VmFiles;

impl VmFiles {
    /// QMP socket.
    pub fn qmp(dir: &Path) -> PathBuf {
        dir.join("qmp.sock")
    }
    /// Guest agent socket.
    pub fn qga(dir: &Path) -> PathBuf {
        dir.join("qga.sock")
    }
    /// Serial console log.
    pub fn console(dir: &Path) -> PathBuf {
        dir.join("console.log")
    }
    /// QEMU's pid file.
    pub fn pid(dir: &Path) -> PathBuf {
        dir.join("qemu.pid")
    }
    /// QEMU's own messages.
    pub fn qemu_log(dir: &Path) -> PathBuf {
        dir.join("qemu.log")
    }
    /// A disk's image.
    pub fn disk(dir: &Path, name: &str) -> PathBuf {
        dir.join("disks").join(format!("{name}.qcow2"))
    }
}

/// Device id of a disk.
pub fn disk_id(name: &str) -> String {
    format!("disk-{name}")
}
/// Block node name of a disk.
pub fn node_name(name: &str) -> String {
    format!("node-{name}")
}
/// Device id of a NIC.
pub fn nic_id(name: &str) -> String {
    format!("nic-{name}")
}
/// Netdev id of a NIC.
pub fn netdev_id(name: &str) -> String {
    format!("net-{name}")
}
/// Device id of the virtio-mem device.
pub const VMEM_ID: &str = "vmem";
/// Memory backend of the virtio-mem device.
pub const VMEM_BACKEND: &str = "vmem-ram";
/// Root port `n` (from 1).
pub fn port_id(n: u32) -> String {
    format!("rp{n}")
}

/// How many root ports a machine gets: one per boot disk and NIC, one for the agent's serial
/// port, one for virtio-mem, plus the free ones.
pub fn root_ports(m: &Machine<'_>) -> u32 {
    let used = 2 + m.config.disks.len() as u32 + m.config.networks.len() as u32;
    (used + m.hotplug_ports).min(MAX_ROOT_PORTS)
}

/// The netdev argument for a NIC (also used by `netdev_add`).
pub fn netdev_props(nic: &NicConfig) -> Vec<(String, String)> {
    let mut p = vec![("id".to_string(), netdev_id(&nic.name))];
    match &nic.source {
        NetworkSource::User => p.push(("type".into(), "user".into())),
        NetworkSource::Tap(ifname) => {
            p.push(("type".into(), "tap".into()));
            p.push(("ifname".into(), ifname.clone()));
            p.push(("script".into(), "no".into()));
            p.push(("downscript".into(), "no".into()));
        }
        NetworkSource::Bridge(br) => {
            p.push(("type".into(), "bridge".into()));
            p.push(("br".into(), br.clone()));
        }
        // Validation keeps cluster sources away from this backend.
        NetworkSource::Pod | NetworkSource::Multus(_) => p.push(("type".into(), "user".into())),
    }
    p
}

/// QEMU's device driver for a NIC model.
pub fn nic_driver(model: NicModel) -> &'static str {
    match model {
        NicModel::Virtio => "virtio-net-pci",
        NicModel::E1000e => "e1000e",
    }
}

fn kv(props: &[(String, String)]) -> String {
    props
        .iter()
        .map(|(k, v)| format!("{k}={}", escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// QEMU option values escape commas by doubling them.
fn escape(v: &str) -> String {
    v.replace(',', ",,")
}

fn mib(bytes: u64) -> u64 {
    bytes / (1024 * 1024)
}

/// The full argv (without the program) for `qemu-system-x86_64`. The process daemonizes and
/// writes its pid file; the serial console goes to `console.log`.
pub fn qemu_args(m: &Machine<'_>) -> Vec<String> {
    let c = m.config;
    let dir = m.dir;
    let path = |p: PathBuf| escape(&p.to_string_lossy());
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    push(&["-name", &format!("guest={},debug-threads=on", m.name)]);
    push(&["-machine", "q35"]);
    match m.accel {
        Accel::Tcg => push(&["-accel", "tcg,tb-size=128", "-cpu", "max"]),
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
    }
    push(&[
        "-smp",
        &format!(
            "cpus={},sockets=1,cores={},threads=1,maxcpus={}",
            c.cpu, c.max_cpu, c.max_cpu
        ),
    ]);
    let region = c.max_memory.saturating_sub(c.memory);
    if region > 0 {
        push(&[
            "-m",
            &format!(
                "size={}M,slots=1,maxmem={}M",
                mib(c.memory),
                mib(c.max_memory)
            ),
        ]);
    } else {
        push(&["-m", &format!("size={}M", mib(c.memory))]);
    }
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-vga",
        "none",
    ]);
    if let Some(uefi) = m.boot.uefi.as_ref().filter(|_| m.boot.kernel.is_none()) {
        push(&[
            "-drive",
            &format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                path(uefi.code.clone())
            ),
            "-drive",
            &format!(
                "if=pflash,format=raw,unit=1,file={}",
                path(uefi.vars.clone())
            ),
        ]);
    }
    if let Some(kernel) = &m.boot.kernel {
        push(&["-kernel", &path(kernel.clone())]);
        if let Some(initrd) = &m.boot.initrd {
            push(&["-initrd", &path(initrd.clone())]);
        }
        push(&["-append", &m.boot.cmdline]);
    }
    push(&["-serial", &format!("file:{}", path(VmFiles::console(dir)))]);
    push(&[
        "-chardev",
        &format!(
            "socket,id=qmp,path={},server=on,wait=off",
            path(VmFiles::qmp(dir))
        ),
        "-mon",
        "chardev=qmp,mode=control",
    ]);
    push(&[
        "-chardev",
        &format!(
            "socket,id=qga,path={},server=on,wait=off",
            path(VmFiles::qga(dir))
        ),
    ]);
    let ports = root_ports(m);
    for n in 1..=ports {
        push(&[
            "-device",
            &format!(
                "pcie-root-port,id={},bus=pcie.0,chassis={n},slot={n}",
                port_id(n)
            ),
        ]);
    }
    let mut next_port = 1..=ports;
    let mut port = || port_id(next_port.next().expect("root ports cover boot devices"));
    push(&[
        "-device",
        &format!("virtio-serial-pci,id=vser,bus={}", port()),
    ]);
    push(&[
        "-device",
        "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
    ]);
    let vmem_port = port();
    if region > 0 {
        push(&[
            "-object",
            &format!("memory-backend-ram,id={VMEM_BACKEND},size={}M", mib(region)),
            "-device",
            &format!(
                "virtio-mem-pci,id={VMEM_ID},memdev={VMEM_BACKEND},block-size=2M,requested-size=0,bus={vmem_port}"
            ),
        ]);
    }
    // Boot disk first.
    let mut disks: Vec<_> = c.disks.iter().collect();
    disks.sort_by_key(|d| !d.boot);
    for d in disks {
        push(&[
            "-blockdev",
            &format!(
                "driver=qcow2,node-name={},file.driver=file,file.filename={},discard=unmap",
                node_name(&d.name),
                path(VmFiles::disk(dir, &d.name))
            ),
            "-device",
            &format!(
                "virtio-blk-pci,drive={},id={},serial={},bus={},werror=enospc,rerror=report{}",
                node_name(&d.name),
                disk_id(&d.name),
                d.name,
                port(),
                if d.boot && m.boot.kernel.is_none() {
                    ",bootindex=1"
                } else {
                    ""
                }
            ),
        ]);
    }
    for n in &c.networks {
        push(&["-netdev", &kv(&netdev_props(n))]);
        push(&[
            "-device",
            &format!(
                "{},netdev={},id={},mac={},bus={}",
                nic_driver(n.model),
                netdev_id(&n.name),
                nic_id(&n.name),
                n.mac,
                port()
            ),
        ]);
    }
    if let Some(seed) = m.seed {
        push(&[
            "-drive",
            &format!(
                "if=none,id=cidata,media=cdrom,readonly=on,format=raw,file={}",
                path(seed.to_path_buf())
            ),
            "-device",
            "ide-cd,drive=cidata,bus=ide.0",
        ]);
    }
    push(&["-daemonize", "-pidfile", &path(VmFiles::pid(dir))]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use wukong_api::config::{HostLimits, resolve_new};
    use wukong_api::{BackendKind, WukongSpec};

    fn config(spec: serde_json::Value) -> VmConfig {
        let spec: WukongSpec = serde_json::from_value(spec).unwrap();
        resolve_new("vm", &spec, BackendKind::Local, HostLimits::UNLIMITED)
            .unwrap()
            .0
    }

    fn args(c: &VmConfig) -> String {
        let boot = BootSource {
            kernel: Some("/img/vmlinux".into()),
            initrd: Some("/img/initramfs.cpio.gz".into()),
            cmdline: DEFAULT_CMDLINE.into(),
            uefi: None,
        };
        let m = Machine {
            name: "default_vm".into(),
            dir: Path::new("/run/w/vm"),
            config: c,
            boot: &boot,
            accel: Accel::Tcg,
            hotplug_ports: 2,
            seed: None,
        };
        qemu_args(&m).join(" ")
    }

    #[test]
    fn shape_for_live_changes() {
        let a = args(&config(serde_json::json!({
            "cpu": 2, "memory": "512Mi", "maxCpu": 4, "maxMemory": "2Gi",
            "disks": [{"name": "data", "size": "1Gi"}, {"name": "system", "size": "2Gi", "boot": true}],
            "networks": [{"name": "lan", "tap": {"name": "tap,0"}, "mac": "52:54:00:00:00:07"}]
        })));
        assert!(a.contains("-accel tcg,tb-size=128 -cpu max"), "{a}");
        assert!(
            a.contains("-smp cpus=2,sockets=1,cores=4,threads=1,maxcpus=4"),
            "{a}"
        );
        assert!(a.contains("-m size=512M,slots=1,maxmem=2048M"), "{a}");
        assert!(
            a.contains("memory-backend-ram,id=vmem-ram,size=1536M"),
            "{a}"
        );
        // 2 fixed + 2 disks + 1 NIC + 2 free.
        assert!(a.contains("id=rp7,") && !a.contains("id=rp8,"), "{a}");
        // The boot disk comes first whatever the spec order; serial = name.
        let sys = a.find("serial=system").unwrap();
        let data = a.find("serial=data").unwrap();
        assert!(sys < data, "{a}");
        assert!(
            a.contains("file.filename=/run/w/vm/disks/system.qcow2"),
            "{a}"
        );
        // Commas in values are escaped, never splitting an option.
        assert!(a.contains("ifname=tap,,0,script=no"), "{a}");
        assert!(a.contains("mac=52:54:00:00:00:07"), "{a}");
        assert!(a.ends_with("-daemonize -pidfile /run/w/vm/qemu.pid"), "{a}");
    }

    #[test]
    fn firmware_boot_boots_the_boot_disk() {
        let c = config(serde_json::json!({"disks": [{"name": "root", "size": "1Gi"}]}));
        let boot = BootSource {
            kernel: None,
            initrd: None,
            cmdline: String::new(),
            uefi: None,
        };
        let m = Machine {
            name: "default_vm".into(),
            dir: Path::new("/run/w/vm"),
            config: &c,
            boot: &boot,
            accel: Accel::Tcg,
            hotplug_ports: 1,
            seed: None,
        };
        let a = qemu_args(&m).join(" ");
        assert!(!a.contains("-kernel") && !a.contains("-append"), "{a}");
        assert!(
            a.contains("serial=root,bus=rp3,werror=enospc,rerror=report,bootindex=1"),
            "a write the host has no room for pauses the VM: {a}"
        );
    }

    #[test]
    fn no_memory_region_without_headroom() {
        let a = args(&config(
            serde_json::json!({"memory": "1Gi", "maxMemory": "1Gi"}),
        ));
        assert!(a.contains("-m size=1024M -nodefaults"), "{a}");
        assert!(!a.contains("virtio-mem"), "{a}");
    }
}

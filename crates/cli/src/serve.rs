//! `wukong serve`: the local daemon's flags, its guest image, its listeners.

use std::net::SocketAddr;
use std::path::PathBuf;

use wukong_local::Home;
use wukong_local::backend::{LocalOptions, LocalTimeouts};
use wukong_local::image::GuestImage;
use wukong_local::machine::{
    Accel, BootSource, DEFAULT_CMDLINE, DEFAULT_HOTPLUG_PORTS, detect_accel,
};
use wukong_local::serve::{Server, TcpListen};

use crate::Failure;

/// Flags of `wukong serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// State directory (database, API socket, VM directories).
    #[arg(long, env = "WUKONG_HOME")]
    home: Option<PathBuf>,
    /// Accelerator: auto picks KVM only where it really works, else TCG.
    #[arg(long, env = "WUKONG_ACCEL", default_value = "auto")]
    accel: String,
    /// Where the default guest image is kept (built on first start if missing).
    #[arg(long, env = "WUKONG_IMAGE_DIR")]
    image_dir: Option<PathBuf>,
    /// Boot your own kernel instead of the default guest's (VMs whose spec says nothing of
    /// `boot`).
    #[arg(long, requires = "initrd", conflicts_with = "firmware")]
    kernel: Option<PathBuf>,
    /// Boot each VM's boot disk through the firmware (SeaBIOS) unless its spec says otherwise
    /// (`boot`).
    #[arg(long)]
    firmware: bool,
    /// Initramfs for --kernel.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line for --kernel (keep memhp_default_state=online_movable for live
    /// memory).
    #[arg(long)]
    cmdline: Option<String>,
    /// Free PCIe root ports each VM keeps for hot-plugged disks and NICs.
    #[arg(long, default_value_t = DEFAULT_HOTPLUG_PORTS)]
    hotplug_ports: u32,
    /// Take vCPUs offline in the guest instead of unplugging them (what QEMU < 10 needs).
    #[arg(long, env = "WUKONG_GUEST_OFFLINE_CPUS")]
    guest_offline_cpus: bool,
    /// Make every change by restart (no live changes), e.g. to compare with the live way.
    #[arg(long)]
    no_live: bool,
    /// How long a guest may take to show a change (and to take or give back memory).
    #[arg(long, default_value = "20s", value_parser = crate::parse_duration)]
    verify_timeout: std::time::Duration,
    /// How long one guest agent call may take before the agent counts as not answering.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    agent_timeout: std::time::Duration,
    /// How long a booting guest may take until its agent answers.
    #[arg(long, default_value = "300s", value_parser = crate::parse_duration)]
    boot_timeout: std::time::Duration,
    /// Events kept per VM (the newest; older ones are dropped as new ones come).
    #[arg(long, default_value_t = wukong_local::store::DEFAULT_EVENT_HISTORY)]
    event_history: usize,
    /// A directory whose images specs may name as `source.image` (repeatable). Without one,
    /// host images are taken only over the private socket, never over --listen.
    #[arg(long = "image-root", value_name = "DIR")]
    image_root: Vec<PathBuf>,
    /// UEFI firmware for VMs with `boot.firmware: uefi` (Debian's ovmf package).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/usr/share/OVMF/OVMF_CODE_4M.fd"
    )]
    ovmf_code: PathBuf,
    /// The UEFI variable store template each such VM gets a copy of.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/usr/share/OVMF/OVMF_VARS_4M.fd"
    )]
    ovmf_vars: PathBuf,
    /// The most memory the VMs may commit on this host (their memory plus QEMU's share): a
    /// share of the host's (`90%`) or a quantity (`20Gi`). A creation, start or grow beyond it
    /// is refused.
    #[arg(long, default_value = "90%")]
    memory_commit: wukong_local::admission::CommitLimit,
    /// Also listen on this loopback TCP address (needs --token-file).
    #[arg(long, requires = "token_file")]
    listen: Option<SocketAddr>,
    /// File holding the bearer token for --listen.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn serve(a: ServeArgs) -> Result<(), Failure> {
    let home = a.home.map(Home::at).unwrap_or_else(Home::from_env);
    let accel = match a.accel.as_str() {
        "auto" => detect_accel(),
        other => other.parse::<Accel>().map_err(Failure::Invalid)?,
    };
    let boot = match a.kernel {
        _ if a.firmware => BootSource {
            kernel: None,
            initrd: None,
            cmdline: String::new(),
            uefi: None,
        },
        Some(kernel) => BootSource {
            kernel: Some(kernel),
            initrd: a.initrd,
            cmdline: a.cmdline.unwrap_or_else(|| DEFAULT_CMDLINE.into()),
            uefi: None,
        },
        None => {
            let dir = crate::remote::image_dir(a.image_dir);
            match GuestImage::existing(&dir) {
                Some(img) => img.boot_source(),
                None => {
                    eprintln!("building the default guest image in {} …", dir.display());
                    let (img, report) = wukong_local::image::build(&dir)
                        .await
                        .map_err(|e| Failure::Failed(e.to_string()))?;
                    eprintln!("{report}");
                    img.boot_source()
                }
            }
        }
    };
    wukong_local::process::check_tools().map_err(|e| Failure::Failed(e.to_string()))?;
    wukong_engine::failpoint::check().map_err(Failure::Failed)?;
    let tcp = match (a.listen, a.token_file) {
        (Some(addr), Some(f)) => Some(TcpListen {
            addr,
            token: wukong_local::serve::read_token(&f)
                .map_err(|e| Failure::Invalid(format!("--token-file {e}")))?,
        }),
        _ => None,
    };
    let options = LocalOptions {
        accel,
        boot,
        hotplug_ports: a.hotplug_ports,
        force_guest_offline: a.guest_offline_cpus,
        live: !a.no_live,
        timeouts: LocalTimeouts {
            memory: a.verify_timeout,
            agent: a.agent_timeout,
            boot: a.boot_timeout,
            ..LocalTimeouts::default()
        },
        image_roots: wukong_local::trusted::resolve_roots(&a.image_root)
            .map_err(Failure::Invalid)?,
        event_history: a.event_history,
        uefi: wukong_local::boot::UefiFirmware {
            code: a.ovmf_code,
            vars_template: a.ovmf_vars,
        },
        memory_commit: a.memory_commit,
    };
    let server = Server::bind(home.clone(), options, tcp)
        .await
        .map_err(|e| Failure::Failed(e.to_string()))?;
    server.daemon.set_verify_timeout(a.verify_timeout);
    eprintln!(
        "wukong daemon: serving {} (accelerator {accel}); VMs keep running when it stops",
        home.api_socket().display()
    );
    server
        .run(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await
        .map_err(|e| Failure::Failed(e.to_string()))
}

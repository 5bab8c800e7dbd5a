//! `wukong`: the command line. Each subcommand translates its flags into calls of the API,
//! planner, engine or daemon crates and prints the answer; no resize logic lives here.
#![forbid(unsafe_code)]

mod demo;
mod offline;
mod operator;
mod output;
mod progress;
mod remote;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use wukong_api::{BackendKind, ErrorKind};
use wukong_local::Home;

/// Change a running VM's vCPUs, memory, disks and NICs from one declarative object.
#[derive(Parser, Debug)]
#[command(name = "wukong", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Backend choice on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendArg {
    Local,
    Kubevirt,
}

impl From<BackendArg> for BackendKind {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Local => BackendKind::Local,
            BackendArg::Kubevirt => BackendKind::Kubevirt,
        }
    }
}

/// Render targets.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum RenderTarget {
    /// KubeVirt VirtualMachine and PVCs.
    Kubevirt,
}

/// Output formats.
#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq)]
enum Format {
    #[default]
    Table,
    Yaml,
    Json,
}

/// `get` output formats.
#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq)]
pub enum GetFormat {
    /// Columns.
    #[default]
    Table,
    /// More columns.
    Wide,
    /// The objects as YAML.
    Yaml,
    /// The objects as JSON.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check Wukong documents: syntax, fields, rules. Changes nothing.
    Validate {
        /// File with one or more Wukong documents (`-` for stdin).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Also check that the backend can use every network source.
        #[arg(long, value_enum)]
        backend: Option<BackendArg>,
    },
    /// Show what applying FILE would do: each step, live or restart, and why. Against the
    /// running VM through the daemon, or against a described VM with --observed.
    Plan {
        /// File with one or more Wukong documents (`-` for stdin).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// The VM as it is now: a Wukong whose spec describes it (status may pin maxCpu,
        /// maxMemory, bootMemory, bootDisk). Without it, the daemon's VM is used.
        #[arg(long)]
        observed: Option<PathBuf>,
        /// Backend whose live capabilities to plan with (with --observed).
        #[arg(long, value_enum, default_value = "local")]
        backend: BackendArg,
        /// Local backend: the QEMU version to assume (with --observed).
        #[arg(long, default_value = "10.0")]
        qemu_version: String,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
        /// Plan as if it were this time (RFC 3339), for restart windows (with --observed).
        #[arg(long)]
        now: Option<jiff::Timestamp>,
        /// With --backend kubevirt: the cluster's objects (KubeVirt CR, VirtualMachine,
        /// VirtualMachineInstance, StorageClasses, PVCs) as YAML; the plan then says what is
        /// live on this cluster.
        #[arg(long)]
        cluster: Option<PathBuf>,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Print the objects a Wukong becomes on a cluster (the operator's own rendering).
    Render {
        /// File with one or more Wukong documents (`-` for stdin).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// What to render for.
        #[arg(long, value_enum, default_value = "kubevirt")]
        target: RenderTarget,
        /// Output format (yaml or json).
        #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
        output: Format,
    },
    /// Print the CustomResourceDefinition (as committed in deploy/crd.yaml).
    Crd,
    /// Create or update VMs from FILE: shows the plan, then each step as it is carried out and
    /// verified in the guest.
    Apply {
        /// File with one or more Wukong documents (`-` for stdin).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Return once the change is accepted, without following it.
        #[arg(long)]
        no_wait: bool,
        /// How long to follow the operation.
        #[arg(long, default_value = "600s", value_parser = parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// List VMs, or show one.
    Get {
        /// VM name (all when absent).
        name: Option<String>,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: GetFormat,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Guest metrics as the autoscaler last read them (CPU %, memory, each filesystem's use
    /// and fill rate) and its recommendation, per VM with `autoscaling`.
    Top {
        /// VM name (all when absent).
        name: Option<String>,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// The daemon's Prometheus exposition (`/metrics`): the autoscaler's per-VM figures and
    /// counters.
    Metrics {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Spec, what the guest has, conditions, pending restarts, operations and events.
    Describe {
        /// VM name.
        name: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Delete a VM (its disk images are kept unless --delete-disks).
    Delete {
        /// VM name.
        name: String,
        /// Also remove the disk images.
        #[arg(long)]
        delete_disks: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Wait for a condition, e.g. --for=condition=Ready.
    Wait {
        /// VM name.
        name: String,
        /// `condition=TYPE[=True|False]`.
        #[arg(long = "for")]
        for_: String,
        /// How long to wait.
        #[arg(long, default_value = "300s", value_parser = parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Run a command in the guest through its agent (argv, no shell); exits with its code.
    Exec {
        /// VM name.
        name: String,
        /// Seconds the command may run.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Start a VM.
    Start {
        /// VM name.
        name: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Stop a VM (guest shutdown, then QMP quit, then kill).
    Stop {
        /// VM name.
        name: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Restart a VM, applying every change that waits for a restart.
    Restart {
        /// VM name.
        name: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Return a VM to the last spec it converged to (disks keep their grown size).
    Rollback {
        /// VM name.
        name: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Show the guest's serial console.
    Logs {
        /// VM name.
        name: String,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Boot a VM and change its vCPUs, memory, disks and NICs live, verified in the guest.
    Demo {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// The default guest image.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Run the local control plane (API on a unix socket in WUKONG_HOME).
    Serve(serve::ServeArgs),
    /// Run the Kubernetes operator (Wukongs → KubeVirt VMs and PVCs).
    Operator(operator::OperatorArgs),
}

#[derive(Subcommand, Debug)]
enum ImageCommand {
    /// Build the default guest from Debian packages (cached; rebuilt when inputs change).
    Build {
        /// Where to keep it (default: the user's cache directory, or WUKONG_IMAGE_DIR).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Which daemon and namespace.
#[derive(clap::Args, Debug, Clone)]
struct TargetArgs {
    /// Namespace (a DNS label, as Kubernetes requires).
    #[arg(short = 'n', long, default_value = "default", value_parser = dns_label)]
    namespace: String,
    /// State directory of the daemon (its API socket is WUKONG_HOME/api.sock).
    #[arg(long, env = "WUKONG_HOME")]
    home: Option<PathBuf>,
    /// Do not start a daemon when none answers.
    #[arg(long, env = "WUKONG_NO_AUTOSTART")]
    no_autostart: bool,
}

impl TargetArgs {
    fn target(&self) -> remote::Target {
        remote::Target {
            home: self
                .home
                .clone()
                .map(Home::at)
                .unwrap_or_else(Home::from_env),
            namespace: self.namespace.clone(),
            autostart: !self.no_autostart,
        }
    }
}

/// A namespace: the one rule of `wukong_api::validate`, as the daemon and the operator apply it.
fn dns_label(s: &str) -> Result<String, String> {
    wukong_api::validate::check_dns_label(s, wukong_api::document::MAX_NAME)?;
    Ok(s.to_string())
}

/// Parses `300s`, `5m`, `1h`, `250ms` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 300s or 5m"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("'{s}' is not a duration like 300s or 5m")),
    }
}

/// A failure, with the exit code it maps to.
#[derive(Debug)]
pub enum Failure {
    /// Malformed input (exit 1).
    Invalid(String),
    /// A change that is refused (exit 2).
    NotAllowed(String),
    /// Anything else: unreachable daemon, IO, a failed operation (exit 3).
    Failed(String),
}

impl Failure {
    /// From validation errors, keeping their kind.
    pub fn from_kind(kind: ErrorKind, message: String) -> Self {
        match kind {
            ErrorKind::Invalid => Failure::Invalid(message),
            ErrorKind::NotAllowed => Failure::NotAllowed(message),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(4)
        .build()
        .expect("a tokio runtime");
    let result = runtime.block_on(run(cli.command));
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(code.clamp(1, 255) as u8),
        Err(f) => {
            let (code, msg) = match f {
                Failure::Invalid(m) => (1, m),
                Failure::NotAllowed(m) => (2, m),
                Failure::Failed(m) => (3, m),
            };
            for line in msg.lines() {
                eprintln!("error: {line}");
            }
            ExitCode::from(code)
        }
    }
}

async fn run(command: Command) -> Result<i32, Failure> {
    let ok = |r: Result<(), Failure>| r.map(|()| 0);
    match command {
        Command::Validate { file, backend } => {
            ok(offline::validate(&file, backend.map(Into::into)))
        }
        Command::Plan {
            file,
            observed: Some(observed),
            backend,
            qemu_version,
            output,
            now,
            cluster,
            ..
        } => ok(offline::plan(
            &file,
            &observed,
            backend.into(),
            &qemu_version,
            output,
            now.unwrap_or_else(jiff::Timestamp::now),
            cluster.as_deref(),
        )),
        Command::Render { file, output, .. } => ok(offline::render(&file, output)),
        Command::Plan {
            file,
            observed: None,
            output,
            target,
            ..
        } => ok(remote::plan(&target.target(), offline::documents(&file)?, output).await),
        Command::Crd => {
            print!("{}", wukong_api::crd::crd_yaml());
            Ok(0)
        }
        Command::Apply {
            file,
            no_wait,
            timeout,
            target,
        } => ok(remote::apply(
            &target.target(),
            offline::documents(&file)?,
            !no_wait,
            timeout,
        )
        .await),
        Command::Get {
            name,
            output,
            target,
        } => ok(remote::get(&target.target(), name.as_deref(), output).await),
        Command::Describe { name, target } => ok(remote::describe(&target.target(), &name).await),
        Command::Top { name, target } => ok(remote::top(&target.target(), name.as_deref()).await),
        Command::Metrics { target } => ok(remote::metrics(&target.target()).await),
        Command::Delete {
            name,
            delete_disks,
            target,
        } => ok(remote::delete(&target.target(), &name, delete_disks).await),
        Command::Wait {
            name,
            for_,
            timeout,
            target,
        } => ok(remote::wait(&target.target(), &name, &for_, timeout).await),
        Command::Exec {
            name,
            timeout,
            command,
            target,
        } => remote::exec(&target.target(), &name, command, timeout).await,
        Command::Start { name, target } => {
            ok(remote::lifecycle(&target.target(), &name, "start").await)
        }
        Command::Stop { name, target } => {
            ok(remote::lifecycle(&target.target(), &name, "stop").await)
        }
        Command::Restart { name, target } => {
            ok(remote::lifecycle(&target.target(), &name, "restart").await)
        }
        Command::Rollback { name, target } => ok(remote::rollback(&target.target(), &name).await),
        Command::Logs { name, tail, target } => {
            ok(remote::logs(&target.target(), &name, tail).await)
        }
        Command::Image {
            command: ImageCommand::Build { dir },
        } => ok(remote::image_build(&remote::image_dir(dir)).await),
        Command::Serve(args) => ok(serve::serve(args).await),
        Command::Operator(args) => ok(operator::operator(args).await),
        Command::Demo { target } => ok(demo::run(&target.target()).await),
    }
}

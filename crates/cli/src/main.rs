//! `wukong`: the command line. Each subcommand translates its flags into calls of the API,
//! planner, engine or daemon crates and prints the answer; no resize logic lives here.
#![forbid(unsafe_code)]

mod offline;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use wukong_api::{BackendKind, ErrorKind};

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

/// Output formats.
#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq)]
enum Format {
    #[default]
    Table,
    Yaml,
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
    /// Show what applying FILE would do: each step, live or restart, and why.
    Plan {
        /// File with one or more Wukong documents (`-` for stdin).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// The VM as it is now: a Wukong whose spec describes it (status may pin maxCpu,
        /// maxMemory, bootMemory, bootDisk).
        #[arg(long)]
        observed: PathBuf,
        /// Backend whose live capabilities to plan with.
        #[arg(long, value_enum, default_value = "local")]
        backend: BackendArg,
        /// Local backend: the QEMU version to assume (CPU unplug is live from 10.0).
        #[arg(long, default_value = "10.0")]
        qemu_version: String,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
        /// Plan as if it were this time (RFC 3339), for restart windows.
        #[arg(long)]
        now: Option<jiff::Timestamp>,
    },
    /// Print the CustomResourceDefinition (as committed in deploy/crd.yaml).
    Crd,
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
    let result = match cli.command {
        Command::Validate { file, backend } => offline::validate(&file, backend.map(Into::into)),
        Command::Plan {
            file,
            observed,
            backend,
            qemu_version,
            output,
            now,
        } => offline::plan(
            &file,
            &observed,
            backend.into(),
            &qemu_version,
            output,
            now.unwrap_or_else(jiff::Timestamp::now),
        ),
        Command::Crd => {
            print!("{}", wukong_api::crd::crd_yaml());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
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

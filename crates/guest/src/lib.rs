//! The guest side of every live change, written once for both backends: what the guest sees
//! (one fixed probe script), onlining hot-added vCPUs and memory, the blank check before a
//! format, format, mount and unmount, and the walk down a disk's storage stack (partition,
//! LVM physical and logical volume, filesystem) that decides what grows and how.
//!
//! Everything goes through a [`Transport`] — the QEMU guest agent on a unix socket locally,
//! `virsh qemu-agent-command` in the launcher pod on KubeVirt — and every guest command is an
//! argv list, bounded in time inside the guest as well (`timeout -s KILL`).
#![forbid(unsafe_code)]

pub mod metrics;
pub mod ops;
pub mod probe;
pub mod storage;
pub mod transport;

pub use ops::{Blank, Guest, Onlined};
pub use probe::{PROBE, Probe, parse};
pub use storage::{GuestCommand, Stack, Storage};
pub use transport::{ExecOutput, Transport};

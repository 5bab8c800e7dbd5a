//! How guest commands reach the guest: one trait, implemented by each backend over its own
//! path to the QEMU guest agent.

use std::future::Future;
use std::time::Duration;

use wukong_engine::BackendError;

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

/// A path to one VM's guest agent. Every call is bounded by its `timeout`.
pub trait Transport: Send + Sync {
    /// Runs `argv` (no shell) with optional stdin and waits for it to end (`guest-exec` and
    /// `guest-exec-status`).
    fn exec(
        &self,
        argv: &[&str],
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecOutput, BackendError>> + Send;

    /// Logical vCPUs the guest has and whether each is online (`guest-get-vcpus`).
    fn vcpus(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<(i64, bool)>, BackendError>> + Send;

    /// Sets vCPUs online or offline by logical id (`guest-set-vcpus`).
    fn set_vcpus(
        &self,
        changes: &[(i64, bool)],
        timeout: Duration,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
}

//! The QEMU guest agent on a unix socket: resynchronised on connect (stale replies of an
//! earlier client are discarded), typed commands from `qapi`, every call bounded in time.
//! Guest commands are argv lists, never shell strings built from input.

use std::path::Path;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use qapi::qga;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use wukong_engine::BackendError;
pub use wukong_guest::ExecOutput;

/// Agent commands this process sent, by command: the daemon's `wukong_agent_calls_total`.
pub static CALLS: LazyLock<Family<Vec<(String, String)>, Counter>> = LazyLock::new(Family::default);

/// The longest pause between two looks at a guest command's status, `running` after it
/// started.
fn exec_poll_cap(running: Duration) -> Duration {
    if running < Duration::from_secs(1) {
        Duration::from_millis(10)
    } else {
        Duration::from_millis(50)
    }
}

/// Agent connections this process opened: the daemon's `wukong_agent_connections_total`.
pub static CONNECTIONS: LazyLock<Counter> = LazyLock::new(Counter::default);

type Service =
    qapi::futures::QapiService<qapi::futures::QgaStreamTokio<tokio::io::WriteHalf<UnixStream>>>;

/// An open, synchronised guest agent connection.
pub struct Qga {
    service: Service,
    driver: tokio::task::JoinHandle<()>,
    /// A command timed out or the connection failed: a late reply may still come, so the
    /// connection is not used again.
    spoilt: AtomicBool,
}

impl Drop for Qga {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

fn timeout_err(what: &str, after: Duration) -> BackendError {
    BackendError::Timeout {
        what: format!("the guest agent ({what})"),
        after,
    }
}

/// Sends 0xFF (the agent drops any partial input) and `guest-sync-delimited`, then discards
/// everything up to the agent's 0xFF and the reply with our id.
async fn resync(stream: &mut UnixStream) -> std::io::Result<()> {
    let id: u32 = rand::random::<u32>() >> 1;
    let request =
        format!("{{\"execute\":\"guest-sync-delimited\",\"arguments\":{{\"id\":{id}}}}}\n");
    stream.write_all(&[0xFF]).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let mut delimited = false;
    loop {
        stream.read_exact(&mut byte).await?;
        match byte[0] {
            0xFF => {
                delimited = true;
                line.clear();
            }
            b'\n' if delimited => {
                let reply: serde_json::Value = serde_json::from_slice(&line).unwrap_or_default();
                if reply["return"].as_u64() == Some(u64::from(id)) {
                    return Ok(());
                }
                line.clear();
            }
            b => line.push(b),
        }
    }
}

impl Qga {
    /// Connects and synchronises within `timeout`. A guest whose agent is not running yet
    /// ends in a timeout.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qga, BackendError> {
        let started = Instant::now();
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| timeout_err("connect", timeout))?
            .map_err(|e| BackendError::Unreachable(format!("guest agent: {e}")))?;
        // One bound for both: the resync gets what the connect left.
        Qga::on(stream, timeout.saturating_sub(started.elapsed())).await
    }

    /// Synchronises an agent connection already open within `timeout`.
    pub async fn on(mut stream: UnixStream, timeout: Duration) -> Result<Qga, BackendError> {
        let open = async {
            resync(&mut stream).await?;
            Ok::<_, std::io::Error>(stream)
        };
        let stream = tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| timeout_err("connect", timeout))?
            .map_err(|e| BackendError::Unreachable(format!("guest agent: {e}")))?;
        CONNECTIONS.inc();
        let (service, events) = qapi::futures::QgaStreamTokio::open(stream).into_parts();
        let driver = events.spawn_tokio();
        Ok(Qga {
            service,
            driver,
            spoilt: AtomicBool::new(false),
        })
    }

    /// Whether this connection can serve another caller: nothing went wrong on it, and the
    /// agent answers a ping within `timeout`.
    pub async fn reusable(&self, timeout: Duration) -> bool {
        !self.spoilt.load(Ordering::SeqCst)
            && !self.driver.is_finished()
            && self.run(qga::guest_ping {}, timeout).await.is_ok()
    }

    /// Runs one command within `timeout`.
    pub async fn run<C>(&self, command: C, timeout: Duration) -> Result<C::Ok, BackendError>
    where
        C: qga::QgaCommand + 'static,
    {
        let name = C::NAME;
        CALLS
            .get_or_create(&vec![("command".into(), name.into())])
            .inc();
        match tokio::time::timeout(timeout, self.service.execute(command)).await {
            Err(_) => {
                self.spoilt.store(true, Ordering::SeqCst);
                Err(timeout_err(name, timeout))
            }
            Ok(Err(qapi::ExecuteError::Qapi(e))) => Err(BackendError::Failed(format!(
                "guest agent {name}: {}",
                e.desc
            ))),
            Ok(Err(qapi::ExecuteError::Io(e))) => {
                self.spoilt.store(true, Ordering::SeqCst);
                Err(BackendError::Unreachable(format!(
                    "guest agent {name}: {e}"
                )))
            }
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// Runs `argv` in the guest (no shell) with optional stdin, waiting up to `timeout`.
    pub async fn exec(
        &self,
        argv: &[&str],
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ExecOutput, BackendError> {
        let deadline = Instant::now() + timeout;
        let (path, args) = argv
            .split_first()
            .ok_or_else(|| BackendError::Failed("empty command".into()))?;
        let started = self
            .run(
                qga::guest_exec {
                    path: path.to_string(),
                    arg: Some(args.iter().map(|s| s.to_string()).collect()),
                    env: None,
                    input_data: input.map(<[u8]>::to_vec),
                    capture_output: Some(qga::GuestExecCaptureOutput::flag(true)),
                },
                timeout,
            )
            .await?;
        // Short commands dominate (probes, onlining: 15-100 ms in a TCG guest): the first look
        // comes after 2 ms and the pause doubles up to 10 ms for the first second, so their
        // end is seen at most 10 ms late; after that it doubles up to 50 ms, so a long one
        // (mkfs, a slow guest) costs a poll per 50 ms.
        let begun = Instant::now();
        let mut pause = Duration::from_millis(2);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let status = self
                .run(
                    qga::guest_exec_status { pid: started.pid },
                    left.max(Duration::from_millis(500)),
                )
                .await?;
            if status.exited {
                return Ok(ExecOutput {
                    code: status
                        .exitcode
                        .or(status.signal.map(|s| 128 + s))
                        .unwrap_or(-1),
                    stdout: status.out_data.unwrap_or_default(),
                    stderr: status.err_data.unwrap_or_default(),
                });
            }
            if Instant::now() >= deadline {
                let mut err = timeout_err(&format!("`{}`", argv.join(" ")), timeout);
                if let Err(e) = self.kill(started.pid).await
                    && let BackendError::Timeout { what, .. } = &mut err
                {
                    what.push_str(&format!(" (and it may still run in the guest: {e})"));
                }
                return Err(err);
            }
            // Polling the agent for the process's end: the agent has no completion event.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(exec_poll_cap(begun.elapsed()));
        }
    }

    /// Ends a command that ran past its time: SIGKILL through the guest's own `kill` (the
    /// agent has no command for it), then its status is read until the agent saw it end, so
    /// nothing is left running or unreaped.
    async fn kill(&self, pid: i64) -> Result<(), BackendError> {
        const PATIENCE: Duration = Duration::from_secs(10);
        let killer = self
            .run(
                qga::guest_exec {
                    path: "kill".into(),
                    arg: Some(vec!["-9".into(), pid.to_string()]),
                    env: None,
                    input_data: None,
                    capture_output: Some(qga::GuestExecCaptureOutput::flag(true)),
                },
                PATIENCE,
            )
            .await?;
        let deadline = Instant::now() + PATIENCE;
        let mut pause = Duration::from_millis(5);
        let mut killer_done = false;
        loop {
            if !killer_done {
                killer_done = self
                    .run(qga::guest_exec_status { pid: killer.pid }, PATIENCE)
                    .await?
                    .exited;
            }
            if self
                .run(qga::guest_exec_status { pid }, PATIENCE)
                .await?
                .exited
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(BackendError::Failed(format!(
                    "process {pid} did not end on SIGKILL within {PATIENCE:?}"
                )));
            }
            // Polling, as for any command: the agent has no completion event.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Sets vCPUs online/offline by logical id; returns how many were changed.
    pub async fn set_vcpus(
        &self,
        changes: &[(i64, bool)],
        timeout: Duration,
    ) -> Result<i64, BackendError> {
        self.run(
            qga::guest_set_vcpus {
                vcpus: changes
                    .iter()
                    .map(|(id, online)| qga::GuestLogicalProcessor {
                        logical_id: *id,
                        online: *online,
                        can_offline: None,
                    })
                    .collect(),
            },
            timeout,
        )
        .await
    }

    /// Logical vCPUs and whether each is online.
    pub async fn vcpus(&self, timeout: Duration) -> Result<Vec<(i64, bool)>, BackendError> {
        let v = self.run(qga::guest_get_vcpus {}, timeout).await?;
        Ok(v.into_iter().map(|c| (c.logical_id, c.online)).collect())
    }

    /// Asks the guest to power off.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), BackendError> {
        // The agent often dies before it answers.
        match self
            .run(
                qga::guest_shutdown {
                    mode: Some(qga::GuestShutdownMode::Powerdown),
                },
                timeout,
            )
            .await
        {
            Ok(_) | Err(BackendError::Unreachable(_)) | Err(BackendError::Timeout { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl wukong_guest::Transport for Qga {
    async fn exec(
        &self,
        argv: &[&str],
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ExecOutput, BackendError> {
        Qga::exec(self, argv, input, timeout).await
    }

    async fn vcpus(&self, timeout: Duration) -> Result<Vec<(i64, bool)>, BackendError> {
        Qga::vcpus(self, timeout).await
    }

    async fn set_vcpus(
        &self,
        changes: &[(i64, bool)],
        timeout: Duration,
    ) -> Result<(), BackendError> {
        Qga::set_vcpus(self, changes, timeout).await.map(|_| ())
    }
}

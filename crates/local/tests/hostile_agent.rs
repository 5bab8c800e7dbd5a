//! A guest agent is the guest's: it may be frozen, dead, or answer garbage. Against an agent
//! socket that misbehaves on purpose, every call ends in an error within its timeout (never a
//! hang, never a panic, never a made-up value), and a connection that saw a fault is not used
//! again. The agent here speaks just enough of the protocol to get past the resync; what it
//! does after that is the fault.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use wukong_engine::BackendError;
use wukong_local::qga::Qga;

const CALL: Duration = Duration::from_secs(2);
/// Only for failing a test that hangs, never what it asserts.
const HANG: Duration = Duration::from_secs(30);

/// What the agent does with each command after the resync.
#[derive(Clone, Copy)]
enum Fault {
    /// Reads and never answers.
    Frozen,
    /// Closes the connection.
    Dead,
    /// Answers bytes that are not JSON.
    Bytes,
    /// Answers well-formed JSON of the wrong shape.
    WrongShape,
    /// Answers `guest-exec` with a pid, then says the process exited with output that is
    /// not base64.
    BadOutput,
}

/// An agent socket that resynchronises properly, then misbehaves as `fault` says.
fn agent(fault: Fault) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qga.sock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, fault));
        }
    });
    (dir, path)
}

async fn serve(stream: tokio::net::UnixStream, fault: Fault) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).split(b'\n');
    while let Ok(Some(line)) = lines.next_segment().await {
        // The client's 0xFF (drop partial input) comes before its first command.
        let line: Vec<u8> = line.into_iter().filter(|b| *b != 0xFF).collect();
        let Ok(request) = serde_json::from_slice::<serde_json::Value>(&line) else {
            continue;
        };
        let command = request["execute"].as_str().unwrap_or_default();
        let reply: Vec<u8> = if command == "guest-sync-delimited" {
            let id = &request["arguments"]["id"];
            let mut r = vec![0xFF];
            r.extend(format!("{{\"return\": {id}}}\n").bytes());
            r
        } else {
            match fault {
                Fault::Frozen => continue,
                Fault::Dead => return,
                Fault::Bytes => b"\x00\x9f{{{ not json\n".to_vec(),
                Fault::WrongShape => {
                    b"{\"return\": {\"pid\": \"seven\", \"logical-id\": []}}\n".to_vec()
                }
                Fault::BadOutput => match command {
                    "guest-exec" => b"{\"return\": {\"pid\": 7}}\n".to_vec(),
                    _ => b"{\"return\": {\"exited\": true, \"exitcode\": 0, \"out-data\": \"%%% not base64\"}}\n".to_vec(),
                },
            }
        };
        if write.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// Runs `f` against an agent with `fault`; it must end (an error) before [`HANG`].
async fn against<T: std::fmt::Debug>(
    fault: Fault,
    f: impl AsyncFnOnce(&Qga) -> Result<T, BackendError>,
) -> (BackendError, bool) {
    let (_dir, path) = agent(fault);
    let qga = Qga::connect(&path, CALL).await.expect("the resync works");
    let outcome = tokio::time::timeout(HANG, f(&qga))
        .await
        .expect("the call ends within its timeout");
    let err = outcome.expect_err("a misbehaving agent gives no value");
    let reusable = tokio::time::timeout(HANG, qga.reusable(CALL))
        .await
        .expect("the ping ends within its timeout");
    (err, reusable)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_agent_times_out_and_its_connection_is_dropped() {
    let (err, reusable) = against(Fault::Frozen, async |q| q.vcpus(CALL).await).await;
    assert!(matches!(err, BackendError::Timeout { .. }), "{err:?}");
    assert!(
        !reusable,
        "a connection with a late reply pending is not reused"
    );
    let (err, _) = against(Fault::Frozen, async |q| {
        q.exec(&["mkfs.ext4", "/dev/vdb"], None, CALL).await
    })
    .await;
    assert!(matches!(err, BackendError::Timeout { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_agent_is_unreachable() {
    let (err, reusable) = against(Fault::Dead, async |q| q.vcpus(CALL).await).await;
    assert!(
        matches!(
            err,
            BackendError::Unreachable(_) | BackendError::Timeout { .. }
        ),
        "{err:?}"
    );
    assert!(!reusable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_agent_is_an_error_never_a_value() {
    for fault in [Fault::Bytes, Fault::WrongShape] {
        let (err, reusable) = against(fault, async |q| q.vcpus(CALL).await).await;
        assert!(!reusable, "{err:?}");
        against(fault, async |q| q.exec(&["true"], None, CALL).await).await;
    }
    // Output that does not decode is an error, not an empty output (an empty /proc/meminfo
    // or lsblk would read as a guest without memory or disks).
    let (err, reusable) = against(Fault::BadOutput, async |q| {
        q.exec(&["cat", "/proc/meminfo"], None, CALL).await
    })
    .await;
    assert!(!reusable, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_never_answers_the_resync_is_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qga.sock");
    let listener = UnixListener::bind(&path).unwrap();
    // Accepts and holds the connection, says nothing: a guest whose agent is not running yet
    // (QEMU's chardev accepts for it).
    let _held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let err = tokio::time::timeout(HANG, Qga::connect(&path, CALL))
        .await
        .expect("connect ends within its timeout")
        .err()
        .expect("no connection to an agent that does not answer");
    assert!(matches!(err, BackendError::Timeout { .. }), "{err:?}");
}

//! The fuzz targets' bodies, shared by the cargo-fuzz binaries (`fuzz/fuzz_targets/`) and the
//! stable replay of their saved corpora (`crates/cli/tests/fuzz_corpus.rs`). Each takes any
//! bytes, must never panic, and asserts the properties that must hold for every input.

#![allow(dead_code)]

use wukong_api::config::HostLimits;
use wukong_api::types::BackendKind;
use wukong_api::{Quantity, resolve, resolve_new};

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// Wukong documents (YAML or JSON) through parsing, validation for both backends and
/// resolution; a resolved configuration's spec resolves again to the same configuration.
pub fn spec(data: &[u8]) {
    let Some(t) = text(data) else { return };
    let Ok(docs) = wukong_api::document::parse_documents(t) else {
        return;
    };
    for doc in docs {
        let spec = &doc.wukong.spec;
        for backend in [BackendKind::Local, BackendKind::Kubevirt] {
            let _ = wukong_api::validate::validate_for_backend(spec, backend);
            if let Ok((config, pinned)) = resolve_new("vm", spec, backend, HostLimits::UNLIMITED) {
                let again = resolve("vm", &config.to_spec(), &pinned)
                    .expect("the spec of a resolved configuration resolves");
                assert_eq!(again, config, "resolution is stable");
            }
        }
    }
}

/// Quantities: what parses formats back to the same number of bytes.
pub fn quantity(data: &[u8]) {
    let Some(t) = text(data) else { return };
    if let Ok(b) = wukong_api::quantity::parse_bytes(t) {
        let shown = wukong_api::quantity::format_bytes(b);
        assert_eq!(
            wukong_api::quantity::parse_bytes(&shown),
            Ok(b),
            "{t:?} -> {b} -> {shown:?}"
        );
        let _ = wukong_api::quantity::human_bytes(b);
        let _ = Quantity::from_bytes(b).to_string();
    }
}

const BASE: &str = r#"{"cpu": 2, "memory": "1Gi", "maxCpu": 4, "maxMemory": "4Gi",
  "disks": [{"name": "system", "size": "10Gi", "boot": true},
            {"name": "data", "size": "20Gi", "filesystem": {"type": "ext4", "mountPath": "/data"}}],
  "networks": [{"name": "default", "user": {}}],
  "autoscaling": {"cpu": {"min": 1, "max": 4}, "disks": [{"name": "data", "maxSize": "100Gi"}]}}"#;

/// A JSON merge patch onto a valid spec: a merge that succeeds gives a spec validation can
/// judge, and an empty patch changes nothing.
pub fn merge(data: &[u8]) {
    let base: wukong_api::types::WukongSpec = serde_json::from_str(BASE).expect("base spec");
    let Ok(patch) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(merged) = wukong_api::merge::merge_spec(&base, &patch) {
        let _ = wukong_api::validate::validate_spec(&merged);
    }
    assert_eq!(
        wukong_api::merge::merge_spec(&base, &serde_json::json!({})).ok(),
        Some(base)
    );
}

/// What a guest prints for the probe and the metrics script (a guest is not trusted): parsed
/// without a panic; every disk's storage stack gives grow commands or a reason, and every
/// command is an argv list that names its program.
pub fn guest_output(data: &[u8]) {
    let t = String::from_utf8_lossy(data);
    let probe = wukong_guest::probe::parse(&t);
    let _ = probe.view();
    for d in &probe.storage.disks {
        let _ = probe.storage.partitions_of(&d.name);
        let _ = probe.storage.mounts_on(&d.name);
        if let Ok(cmds) = probe.storage.stack(&d.name).grow_commands() {
            for c in cmds {
                assert!(
                    c.argv.first().is_some_and(|p| !p.is_empty()),
                    "a command without a program: {c:?}"
                );
            }
        }
    }
    let sample = wukong_guest::metrics::parse(&t, 1.0);
    for fs in sample.filesystems.values() {
        let _ = fs.size.saturating_sub(fs.used);
    }
}

/// Names, namespaces and mount paths: an accepted name is a DNS label (what a path may be
/// built from), an accepted mount path is absolute without `.` or `..` components.
pub fn names(data: &[u8]) {
    let Some(t) = text(data) else { return };
    if wukong_api::validate::check_dns_label(t, 63).is_ok() {
        assert!(
            !t.is_empty()
                && t.len() <= 63
                && t.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !t.starts_with('-')
                && !t.ends_with('-'),
            "accepted {t:?}"
        );
    }
    if wukong_api::validate::check_mount_path(t).is_ok() {
        assert!(t.starts_with('/'), "accepted {t:?}");
        assert!(
            t.split('/').all(|c| c != ".." && c != "."),
            "accepted {t:?}"
        );
        assert!(!t.contains('\0'), "accepted {t:?}");
    }
}

/// What a guest agent says (a guest is not trusted): after a proper resync, `data` is all it
/// answers, then it hangs up. Every call ends in an error or a value decoded from a reply,
/// never a panic or a hang, and a connection that saw a fault is not offered again.
pub fn agent_reply(data: &[u8]) {
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    const CALL: Duration = Duration::from_secs(5);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (ours, theirs) = tokio::net::UnixStream::pair().expect("socketpair");
        let data = data.to_vec();
        let agent = tokio::spawn(async move {
            let (read, mut write) = theirs.into_split();
            let mut lines = BufReader::new(read).split(b'\n');
            let Ok(Some(sync)) = lines.next_segment().await else {
                return;
            };
            let sync: Vec<u8> = sync.into_iter().filter(|b| *b != 0xFF).collect();
            let request: serde_json::Value = serde_json::from_slice(&sync).unwrap_or_default();
            let id = &request["arguments"]["id"];
            let mut reply = vec![0xFF];
            reply.extend(format!("{{\"return\": {id}}}\n").bytes());
            reply.extend(data);
            let _ = write.write_all(&reply).await;
            let _ = write.shutdown().await;
            // Keep reading what the client sends until it hangs up.
            while let Ok(Some(_)) = lines.next_segment().await {}
        });
        let qga = wukong_local::qga::Qga::on(ours, CALL)
            .await
            .expect("the resync works");
        let _ = qga.vcpus(CALL).await;
        let _ = qga.exec(&["cat", "/proc/meminfo"], None, CALL).await;
        assert!(
            !qga.reusable(CALL).await,
            "an agent that hung up is not offered again"
        );
        drop(qga);
        agent.abort();
    });
}

/// The API the local daemon serves, as raw HTTP: a method, a path under the API prefix (or
/// any request target) and a body, from `data`. The daemon answers every request with a
/// status line, nothing it writes lands outside its home (whatever the path spells), and no
/// VM is ever started (the daemon's memory limit admits none: a create or change that would
/// run one is refused, so inputs never boot QEMU).
pub fn api_request(data: &[u8]) {
    use std::io::{Read, Write};
    const METHODS: [&str; 5] = ["GET", "POST", "PATCH", "DELETE", "PUT"];
    const PREFIX: &str = "/apis/vm.novasphere.dev/v1alpha1/";
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let method = METHODS[usize::from(first & 7) % METHODS.len()];
    let (path, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let mut target = Vec::new();
    if first & 8 == 0 {
        target.extend_from_slice(PREFIX.as_bytes());
    }
    target.extend_from_slice(&path[..path.len().min(1024)]);
    let api = api_daemon();
    let mut s = std::net::TcpStream::connect(api.addr).expect("the API listens");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let mut req = format!("{method} ").into_bytes();
    req.extend_from_slice(&target);
    req.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    req.extend_from_slice(body);
    let _ = s.write_all(&req);
    // The status line is enough (a watch would stream on).
    let mut head = [0u8; 12];
    let mut got = 0;
    while got < head.len() {
        match s.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            // A signal (the fuzzer's timer) is not the daemon's fault.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!(
                "no answer to {method} {:?}: {e}",
                String::from_utf8_lossy(&target)
            ),
        }
    }
    assert!(
        head.starts_with(b"HTTP/1.1 "),
        "no status line for {method} {:?}: {:?}",
        String::from_utf8_lossy(&target),
        String::from_utf8_lossy(&head[..got])
    );
    drop(s);
    let outside: Vec<_> = std::fs::read_dir(&api.root)
        .expect("the fuzz root")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "home")
        .collect();
    assert!(
        outside.is_empty(),
        "{method} {:?} wrote outside the daemon's home: {outside:?}",
        String::from_utf8_lossy(&target)
    );
    api.trim();
}

/// One daemon for every input of [`api_request`] (its state carries over, as a real daemon's
/// does), served on loopback TCP by its own runtime.
struct ApiDaemon {
    root: std::path::PathBuf,
    addr: std::net::SocketAddr,
    daemon: std::sync::Arc<wukong_local::daemon::Daemon>,
}

impl ApiDaemon {
    /// Keeps the state small: past 32 VMs, every record goes.
    fn trim(&self) {
        let store = self.daemon.backend.store();
        let Ok(all) = store.list(None) else { return };
        if all.len() > 32 {
            for r in all {
                let _ = store.delete(&wukong_local::store::record_ref(&r));
            }
        }
    }
}

fn api_daemon() -> &'static ApiDaemon {
    static API: std::sync::OnceLock<ApiDaemon> = std::sync::OnceLock::new();
    API.get_or_init(|| {
        use wukong_local::{Home, LocalBackend, LocalOptions, LocalTimeouts, Store};
        let root = std::env::temp_dir().join(format!("wukong-fuzz-api-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("fuzz root");
        let home = Home::at(root.join("home"));
        home.ensure().expect("home");
        let store = std::sync::Arc::new(Store::open(&home.database()).expect("store"));
        let options = LocalOptions {
            accel: wukong_local::machine::Accel::Tcg,
            boot: wukong_local::machine::BootSource {
                kernel: Some(root.join("no-kernel")),
                initrd: None,
                cmdline: String::new(),
                uefi: None,
            },
            hotplug_ports: 4,
            force_guest_offline: false,
            live: true,
            timeouts: LocalTimeouts::default(),
            image_roots: Vec::new(),
            event_history: 16,
            uefi: Default::default(),
            memory_commit: wukong_local::admission::CommitLimit::Bytes(1),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let daemon = wukong_local::daemon::Daemon::new(
                    std::sync::Arc::new(LocalBackend::new(home, store, options)),
                    HostLimits::UNLIMITED,
                );
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("loopback");
                let addr = listener.local_addr().expect("addr");
                tx.send((addr, daemon.clone())).expect("handed over");
                let _ = axum::serve(listener, wukong_local::api::router(daemon)).await;
            });
        });
        let (addr, daemon) = rx.recv().expect("the API started");
        ApiDaemon { root, addr, daemon }
    })
}

/// What a QEMU monitor says (a QEMU compromised by its guest is not trusted): after a proper
/// greeting and capabilities negotiation, `data` is all it answers, then it hangs up. Every
/// command ends in an error or a value decoded from a reply, never a panic or a hang.
pub fn qmp_reply(data: &[u8]) {
    use qapi::qmp;
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!("wukong-fuzz-qmp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("socket directory");
    let path = dir.join("qmp.sock");
    let _ = std::fs::remove_file(&path);
    rt.block_on(async {
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let data = data.to_vec();
        let monitor = tokio::spawn(async move {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            let greeting = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 10}, "package": ""}, "capabilities": ["oob"]}}"#;
            let _ = write.write_all(format!("{greeting}\n").as_bytes()).await;
            let Ok(Some(negotiate)) = lines.next_line().await else {
                return;
            };
            let request: serde_json::Value =
                serde_json::from_str(&negotiate).unwrap_or_default();
            let mut reply = serde_json::json!({"return": {}});
            if let Some(id) = request.get("id") {
                reply["id"] = id.clone();
            }
            let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
            let _ = write.write_all(&data).await;
            let _ = write.shutdown().await;
            while let Ok(Some(_)) = lines.next_line().await {}
        });
        if let Ok(q) = wukong_local::qmp::Qmp::connect(&path, Duration::from_secs(5)).await {
            let _ = q.version().await;
            let _ = q.peripherals().await;
            let _ = q.run(qmp::query_status {}).await;
            let _ = q.run(qmp::query_block {}).await;
            let _ = q.run(qmp::query_hotpluggable_cpus {}).await;
            let _ = q.qom_get("/machine/peripheral/vmem", "size").await;
        }
        monitor.abort();
    });
}

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

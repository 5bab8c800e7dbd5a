//! The local API under hostile or concurrent use. It refuses namespaces and names that are
//! not DNS labels on every route, before anything becomes a path: a hostile corpus
//! (traversal, encoded slashes, absolute paths, NUL, overlong, non-ASCII) sent raw over TCP
//! gets a 4xx everywhere and nothing is written on disk. (A namespace
//! `..%2F..%2F..%2Fsome%2Fdir` once made a VM directory outside WUKONG_HOME.) A VM being
//! deleted takes no change; concurrent PATCHes land one at a time; concurrent starts are
//! admitted one at a time against the host's memory.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wukong_api::config::HostLimits;
use wukong_local::daemon::Daemon;
use wukong_local::machine::{Accel, BootSource};
use wukong_local::{Home, LocalBackend, LocalOptions, LocalTimeouts, Store};

const PREFIX: &str = "/apis/vm.novasphere.dev/v1alpha1";

/// Every file and directory under `root`.
fn tree(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The status code of one raw HTTP/1.1 request (the path exactly as given).
fn send(addr: std::net::SocketAddr, method: &str, path: &[u8], body: &str) -> u16 {
    exchange(addr, method, path, body).0
}

/// The status code and body of one raw HTTP/1.1 request (the path exactly as given).
fn exchange(addr: std::net::SocketAddr, method: &str, path: &[u8], body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut req = format!("{method} ").into_bytes();
    req.extend_from_slice(path);
    req.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    s.write_all(&req).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, body.to_string())
}

/// Serves `app` on a loopback port of its own; returns the address.
async fn serve(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// A daemon over `home` trusting `roots` (no VM is ever booted by these tests).
fn daemon(home: &Home, roots: Vec<PathBuf>) -> Arc<Daemon> {
    daemon_with(
        Arc::new(Store::open(&home.database()).unwrap()),
        home,
        roots,
    )
}

/// A second daemon over the same home and (still open) database.
fn daemon_on(store: Arc<Store>, home: &Home) -> Arc<Daemon> {
    daemon_with(store, home, Vec::new())
}

fn daemon_with(store: Arc<Store>, home: &Home, roots: Vec<PathBuf>) -> Arc<Daemon> {
    daemon_of(store, home, options(roots))
}

fn daemon_of(store: Arc<Store>, home: &Home, options: LocalOptions) -> Arc<Daemon> {
    Daemon::new(
        Arc::new(LocalBackend::new(home.clone(), store, options)),
        HostLimits::UNLIMITED,
    )
}

fn options(roots: Vec<PathBuf>) -> LocalOptions {
    LocalOptions {
        accel: Accel::Tcg,
        boot: BootSource {
            kernel: None,
            initrd: None,
            cmdline: String::new(),
            uefi: None,
        },
        hotplug_ports: 4,
        force_guest_offline: false,
        live: true,
        timeouts: LocalTimeouts::default(),
        image_roots: roots,
        event_history: 100,
        uefi: Default::default(),
        memory_commit: Default::default(),
    }
}

/// Over TCP a spec may name host images only inside a directory the daemon trusts; with
/// none, not at all. Refused with the field named, nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_images_over_tcp_come_only_from_trusted_directories() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let secret = dir.path().join("secret.img");
    std::fs::write(&secret, b"not for guests").unwrap();
    let token = "0123456789abcdef0123456789abcdef";
    for (i, roots) in [Vec::new(), vec![images.clone()]].into_iter().enumerate() {
        let home = Home::at(dir.path().join(format!("home{i}")));
        home.ensure().unwrap();
        let roots = wukong_local::trusted::resolve_roots(&roots).unwrap();
        let app = wukong_local::api::with_token(
            wukong_local::api::router(daemon(&home, roots)),
            token.into(),
        );
        let addr = serve(app).await;
        let before = tree(dir.path());
        let body = format!(
            r#"{{"apiVersion":"vm.novasphere.dev/v1alpha1","kind":"Wukong","metadata":{{"name":"vm"}},"spec":{{"cpu":1,"memory":"256Mi","disks":[{{"name":"system","size":"1Gi","source":{{"image":"{}"}}}}]}}}}"#,
            secret.display()
        );
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "POST {PREFIX}/namespaces/default/wukongs HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 422"), "{out}");
        assert!(out.contains("spec.disks[0].source.image"), "{out}");
        let why = if i == 0 {
            "--image-root"
        } else {
            "outside the trusted"
        };
        assert!(out.contains(why), "{out}");
        assert_eq!(tree(dir.path()), before, "nothing written");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_over_tcp_need_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path().join("home"));
    home.ensure().unwrap();
    let token = "fedcba9876543210fedcba9876543210";
    let app = wukong_local::api::with_token(
        wukong_local::api::router(daemon(&home, Vec::new())),
        token.into(),
    );
    let addr = serve(app).await;
    assert_eq!(send(addr, "GET", b"/metrics", ""), 401, "no token");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("# EOF\n"), "an OpenMetrics exposition: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_namespaces_and_names_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    // Deep enough that a traversal of three levels still lands inside the watched tree.
    let home = Home::at(dir.path().join("a/b/c/home"));
    home.ensure().unwrap();
    let daemon = daemon(&home, Vec::new());
    let addr = serve(wukong_local::api::router(daemon)).await;
    let before = tree(dir.path());

    let overlong = "a".repeat(64);
    let corpus: Vec<Vec<u8>> = [
        "..",
        ".",
        "..%2F..%2F..%2Fsome%2Fdir",
        "..%2f..%2fetc",
        "%2Ftmp%2Fx",
        "a%00b",
        "a%2Fb",
        "%2e%2e",
        "UPPER",
        "-lead",
        "trail-",
        "dot.ted",
        "caf%C3%A9",
        overlong.as_str(),
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .chain([b"raw\xffbyte".to_vec(), b"nul\x00raw".to_vec()])
    .collect();
    let body = |ns: &str| {
        format!(
            r#"{{"apiVersion":"vm.novasphere.dev/v1alpha1","kind":"Wukong","metadata":{{"name":"ok","namespace":"{ns}"}},"spec":{{"cpu":1,"memory":"256Mi","disks":[{{"name":"system","size":"1Gi"}}]}}}}"#
        )
    };
    let subs = [
        "plan", "start", "stop", "restart", "rollback", "exec", "logs", "events",
    ];
    let mut tried = 0;
    for bad in &corpus {
        let join = |parts: &[&[u8]]| parts.concat();
        let p = PREFIX.as_bytes();
        let mut requests: Vec<(&str, Vec<u8>)> = vec![
            ("GET", join(&[p, b"/namespaces/", bad, b"/wukongs"])),
            ("POST", join(&[p, b"/namespaces/", bad, b"/wukongs"])),
        ];
        for (ns, name) in [
            (bad.as_slice(), &b"ok"[..]),
            (&b"default"[..], bad.as_slice()),
        ] {
            let one = join(&[p, b"/namespaces/", ns, b"/wukongs/", name]);
            for m in ["GET", "PATCH", "DELETE"] {
                requests.push((m, one.clone()));
            }
            for sub in subs {
                let m = if matches!(sub, "logs" | "events") {
                    "GET"
                } else {
                    "POST"
                };
                requests.push((m, join(&[&one, b"/", sub.as_bytes()])));
            }
        }
        for (method, path) in requests {
            let code = send(addr, method, &path, &body("default"));
            tried += 1;
            assert!(
                (400..500).contains(&code),
                "{method} {} answered {code}",
                String::from_utf8_lossy(&path)
            );
        }
    }
    // The namespace in the body cannot smuggle a path either (the path's namespace wins, and
    // a hostile name in the body is refused).
    let code = send(
        addr,
        "POST",
        format!("{PREFIX}/namespaces/default/wukongs").as_bytes(),
        &body("../../../some/dir").replace(r#""name":"ok""#, r#""name":"../x""#),
    );
    assert!((400..500).contains(&code), "hostile body answered {code}");
    // A timeout no clock can hold is a field error, not an overflow.
    let exec = format!("{PREFIX}/namespaces/default/wukongs/ok/exec");
    for t in ["18446744073709551615", "0", "3601"] {
        let code = send(
            addr,
            "POST",
            exec.as_bytes(),
            &format!(r#"{{"command":["true"],"timeoutSeconds":{t}}}"#),
        );
        assert_eq!(code, 400, "timeoutSeconds {t}");
    }
    assert_eq!(
        tree(dir.path()),
        before,
        "nothing written after {tried} hostile requests"
    );
}

/// A token file others can read, an empty one or a short one is refused; a long private one
/// is taken (trimmed).
#[test]
fn token_files_must_be_private_and_long() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str, mode: u32| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    let good = "0123456789abcdef0123456789abcdef";
    let read = wukong_local::serve::read_token;
    let e = read(&file("open", good, 0o644)).unwrap_err();
    assert!(e.contains("mode 644"), "{e}");
    let e = read(&file("empty", "\n", 0o600)).unwrap_err();
    assert!(e.contains("0 characters"), "{e}");
    let e = read(&file("short", "secret", 0o600)).unwrap_err();
    assert!(e.contains("at least 32"), "{e}");
    assert!(read(&file("two", "0123456789abcdef 0123456789abcdef", 0o600)).is_err());
    assert_eq!(
        read(&file("good", &format!("{good}\n"), 0o600)).unwrap(),
        good
    );
    assert!(read(&dir.path().join("missing")).is_err());
}

/// A delete is marked before anything is removed: a VM being deleted (here, as a daemon killed
/// part-way through a delete leaves it) takes no change, start or rollback, and the next
/// daemon finishes the delete. (A PATCH racing a delete once could boot QEMU in the directory
/// being removed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_being_deleted_takes_no_change_and_the_next_daemon_finishes_the_delete() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path().join("home"));
    home.ensure().unwrap();
    let d = daemon(&home, Vec::new());
    let addr = serve(wukong_local::api::router(d.clone())).await;
    let one = format!("{PREFIX}/namespaces/default/wukongs/vm");
    let created = tokio::task::spawn_blocking(move || {
        send(
            addr,
            "POST",
            format!("{PREFIX}/namespaces/default/wukongs").as_bytes(),
            r#"{"apiVersion":"vm.novasphere.dev/v1alpha1","kind":"Wukong","metadata":{"name":"vm"},"spec":{"cpu":1,"memory":"256Mi","runStrategy":"Halted","disks":[{"name":"system","size":"1Gi"}]}}"#,
        )
    })
    .await
    .unwrap();
    assert_eq!(created, 201);
    let vm = wukong_engine::VmRef::new("default", "vm");
    let store = d.backend.store().clone();
    store
        .update::<wukong_local::store::StoreError>(&vm, None, |r| {
            r.object.metadata.deletion_timestamp = Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
            );
            r.delete_disks = true;
            Ok(())
        })
        .unwrap();
    let before = store.get(&vm).unwrap().unwrap();
    let codes = tokio::task::spawn_blocking(move || {
        [
            ("PATCH", one.clone(), r#"{"spec":{"cpu":2}}"#),
            ("POST", format!("{one}/start"), ""),
            ("POST", format!("{one}/restart"), ""),
            ("POST", format!("{one}/rollback"), ""),
        ]
        .map(|(m, p, b)| (p.clone(), send(addr, m, p.as_bytes(), b)))
    })
    .await
    .unwrap();
    for (path, code) in codes {
        assert_eq!(code, 409, "{path}");
    }
    let after = store.get(&vm).unwrap().unwrap();
    // The worker started by the create may still have written status; spec and generation
    // are what a change would move.
    assert_eq!(
        serde_json::to_value(&after.object.spec).unwrap(),
        serde_json::to_value(&before.object.spec).unwrap(),
        "nothing changed"
    );
    assert_eq!(
        after.object.metadata.generation,
        before.object.metadata.generation
    );
    // The next daemon (same home) finishes the delete.
    drop(d);
    let d = daemon_on(store.clone(), &home);
    d.resume_all().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while store.get(&vm).unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the delete was not finished"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        !home.root().join("vms/default/vm").exists(),
        "its files are gone"
    );
}

/// Two clients at once: of many PATCHes made against the same resourceVersion exactly one
/// lands, the others get 409 and change nothing; PATCHes without one all land, one after the
/// other, each with its own generation, and the stored spec is the last one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_land_one_at_a_time_and_a_stale_resource_version_is_refused() {
    const CLIENTS: u32 = 8;
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path().join("home"));
    home.ensure().unwrap();
    let d = daemon(&home, Vec::new());
    let addr = serve(wukong_local::api::router(d.clone())).await;
    let one = format!("{PREFIX}/namespaces/default/wukongs/vm");
    let (code, body) = tokio::task::spawn_blocking(move || {
        exchange(
            addr,
            "POST",
            format!("{PREFIX}/namespaces/default/wukongs").as_bytes(),
            r#"{"apiVersion":"vm.novasphere.dev/v1alpha1","kind":"Wukong","metadata":{"name":"vm"},"spec":{"cpu":1,"maxCpu":32,"memory":"256Mi","runStrategy":"Halted","disks":[{"name":"system","size":"1Gi"}]}}"#,
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 201, "{body}");
    let vm = wukong_engine::VmRef::new("default", "vm");
    let store = d.backend.store().clone();
    // Every client read the same version. The worker's status writes move the version too
    // (as on Kubernetes), so a round may see all refused; rounds go on until one lands.
    let mut rounds = 0;
    let (winner, generation) = loop {
        rounds += 1;
        assert!(rounds <= 50, "no round had a winner");
        let (code, body) = {
            let path = one.clone();
            tokio::task::spawn_blocking(move || exchange(addr, "GET", path.as_bytes(), ""))
                .await
                .unwrap()
        };
        assert_eq!(code, 200, "{body}");
        let read: serde_json::Value = serde_json::from_str(&body).unwrap();
        let rv = read["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        let generation = read["metadata"]["generation"].as_i64().unwrap();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (path, rv) = (one.clone(), rv.clone());
                std::thread::spawn(move || {
                    let patch = format!(
                        r#"{{"metadata":{{"resourceVersion":"{rv}"}},"spec":{{"cpu":{}}}}}"#,
                        i + 2
                    );
                    (i + 2, exchange(addr, "PATCH", path.as_bytes(), &patch))
                })
            })
            .collect();
        let answers: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        let won: Vec<u32> = answers
            .iter()
            .filter(|(_, (c, _))| *c == 200)
            .map(|(cpu, _)| *cpu)
            .collect();
        assert!(
            won.len() <= 1,
            "more than one PATCH of the same version landed: {answers:?}"
        );
        for (_, (code, body)) in answers.iter().filter(|(_, (c, _))| *c != 200) {
            assert_eq!(*code, 409, "{body}");
            assert!(body.contains("resourceVersion"), "{body}");
        }
        let rec = store.get(&vm).unwrap().unwrap();
        match won.first() {
            Some(cpu) => break (*cpu, generation),
            None => assert_eq!(
                rec.object.metadata.generation,
                Some(generation),
                "a refused PATCH changed the spec"
            ),
        }
    };
    let rec = store.get(&vm).unwrap().unwrap();
    assert_eq!(rec.object.spec.cpu, Some(winner), "the winner's spec");
    assert_eq!(rec.object.metadata.generation, Some(generation + 1));
    let generation = generation + 1;

    // Without a resourceVersion every PATCH lands, serialised.
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let path = one.clone();
            std::thread::spawn(move || {
                // Values no other PATCH sets: each one is a change.
                let patch = format!(r#"{{"spec":{{"cpu":{}}}}}"#, i + 2 + CLIENTS);
                exchange(addr, "PATCH", path.as_bytes(), &patch)
            })
        })
        .collect();
    let mut landed: Vec<(i64, u32)> = clients
        .into_iter()
        .map(|c| {
            let (code, body) = c.join().unwrap();
            assert_eq!(code, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            (
                v["metadata"]["generation"].as_i64().unwrap(),
                v["spec"]["cpu"].as_u64().unwrap() as u32,
            )
        })
        .collect();
    landed.sort();
    let generations: Vec<i64> = landed.iter().map(|(g, _)| *g).collect();
    let expected: Vec<i64> = (generation + 1..=generation + i64::from(CLIENTS)).collect();
    assert_eq!(
        generations, expected,
        "one generation each, none lost: {landed:?}"
    );
    let rec = store.get(&vm).unwrap().unwrap();
    let last = landed.last().unwrap();
    assert_eq!(rec.object.metadata.generation, Some(last.0));
    assert_eq!(
        rec.object.spec.cpu,
        Some(last.1),
        "the last PATCH's spec is stored"
    );
}

/// Eight stopped Manual VMs, room on the host for one: eight `start`s at once, and exactly one
/// is admitted; the others are refused on `spec.memory` with the figures and stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_are_admitted_one_at_a_time() {
    const VMS: usize = 8;
    const GI: u64 = 1 << 30;
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path().join("home"));
    home.ensure().unwrap();
    let mut opts = options(Vec::new());
    // Room for one VM of 1Gi (with QEMU's share), not two.
    opts.memory_commit = wukong_local::admission::CommitLimit::Bytes(
        GI + wukong_local::admission::QEMU_OVERHEAD + GI / 2,
    );
    // A kernel that is not there: an admitted start fails at once, before any QEMU runs.
    opts.boot.kernel = Some(dir.path().join("no-such-kernel"));
    let d = daemon_of(
        Arc::new(Store::open(&home.database()).unwrap()),
        &home,
        opts,
    );
    let addr = serve(wukong_local::api::router(d.clone())).await;
    let store = d.backend.store().clone();
    let vms: Vec<wukong_engine::VmRef> = (0..VMS)
        .map(|i| wukong_engine::VmRef::new("default", &format!("vm{i}")))
        .collect();
    for vm in &vms {
        let body = format!(
            r#"{{"apiVersion":"vm.novasphere.dev/v1alpha1","kind":"Wukong","metadata":{{"name":"{}"}},"spec":{{"cpu":1,"memory":"1Gi","runStrategy":"Halted","disks":[{{"name":"system","size":"64Mi"}}]}}}}"#,
            vm.name
        );
        let (code, answer) = tokio::task::spawn_blocking(move || {
            exchange(
                addr,
                "POST",
                format!("{PREFIX}/namespaces/default/wukongs").as_bytes(),
                &body,
            )
        })
        .await
        .unwrap();
        assert_eq!(code, 201, "{answer}");
    }
    // Each worker finds its VM stopped; then each is what a user's `wukong stop` of a Manual
    // VM leaves: Manual, stopped by the user, holding no memory.
    // (A status write is not an event: the store is polled until each shows it.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !vms.iter().all(|vm| {
        store
            .get(vm)
            .unwrap()
            .unwrap()
            .object
            .status
            .and_then(|s| s.phase)
            == Some(wukong_api::Phase::Stopped)
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "the workers did not find their VMs stopped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for vm in &vms {
        store
            .update::<wukong_local::store::StoreError>(vm, None, |r| {
                r.object.spec.run_strategy = Some(wukong_api::RunStrategy::Manual);
                r.stopped_by_user = true;
                Ok(())
            })
            .unwrap();
        assert!(!wukong_local::admission::holds_memory(
            &store.get(vm).unwrap().unwrap()
        ));
    }
    let starts: Vec<_> = vms
        .iter()
        .map(|vm| {
            let path = format!("{PREFIX}/namespaces/default/wukongs/{}/start", vm.name);
            std::thread::spawn(move || exchange(addr, "POST", path.as_bytes(), ""))
        })
        .collect();
    let answers: Vec<(u16, String)> = starts.into_iter().map(|t| t.join().unwrap()).collect();
    let refused: Vec<&(u16, String)> = answers
        .iter()
        .filter(|(_, body)| body.contains("the host cannot commit it"))
        .collect();
    assert_eq!(
        refused.len(),
        VMS - 1,
        "exactly one start admitted: {answers:#?}"
    );
    for (code, body) in &refused {
        assert_eq!(*code, 422, "{body}");
        assert!(body.contains("spec.memory"), "{body}");
        assert!(body.contains("1 other VMs hold"), "{body}");
    }
    let admitted: Vec<&wukong_engine::VmRef> = vms
        .iter()
        .filter(|vm| !store.get(vm).unwrap().unwrap().stopped_by_user)
        .collect();
    assert_eq!(
        admitted.len(),
        1,
        "one VM marked as holding its memory, the refused ones untouched"
    );
}

/// A create whose body is JSON but not an object (or whose metadata is not one) is a 400 that
/// says so, and nothing is created. (Found by the `api_request` fuzz target: it panicked the
/// handler, and the client got no answer.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_body_that_is_not_an_object_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path().join("home"));
    home.ensure().unwrap();
    let d = daemon(&home, Vec::new());
    let addr = serve(wukong_local::api::router(d.clone())).await;
    for (body, what) in [
        ("      0", "the body"),
        ("[]", "the body"),
        (r#""w""#, "the body"),
        (r#"{"metadata": 5}"#, "metadata"),
        (r#"{"metadata": [], "spec": {}}"#, "metadata"),
    ] {
        let (code, answer) = tokio::task::spawn_blocking(move || {
            exchange(
                addr,
                "POST",
                format!("{PREFIX}/namespaces/default/wukongs").as_bytes(),
                body,
            )
        })
        .await
        .unwrap();
        assert_eq!(code, 400, "{body}: {answer}");
        assert!(
            answer.contains(what) && answer.contains("must be a JSON object"),
            "{body}: {answer}"
        );
    }
    assert!(d.backend.store().list(None).unwrap().is_empty());
}

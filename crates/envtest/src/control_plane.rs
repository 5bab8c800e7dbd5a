//! A real control plane for the tests: etcd and kube-apiserver (and kube-controller-manager,
//! when the directory has one) started from the binaries in `KUBEBUILDER_ASSETS`, the
//! envtest convention. Nothing here builds them.
//!
//! The server runs with the RBAC authorizer, static bearer tokens (an admin and the
//! operator's ServiceAccount), no ServiceAccount admission (no controller makes `default`
//! accounts here), and with `TranslateStreamCloseWebsocketRequests` off, so a WebSocket pod
//! exec is passed through to the kubelet as a WebSocket (the simulated kubelet speaks no SPDY).
//! kube-controller-manager, when present, runs only the garbage collector, the namespace
//! controller and PVC protection: without it, a deleted namespace stays Terminating and a
//! deleted PVC keeps its `kubernetes.io/pvc-protection` finalizer.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::{Client, Config};

/// A running control plane; dropping it stops every process and removes its directory.
pub struct ControlPlane {
    children: Vec<Child>,
    /// Its directory: etcd's data, certificates, tokens, logs, the audit log.
    pub dir: PathBuf,
    /// The API server's URL (`https://127.0.0.1:PORT`, a self-signed certificate).
    pub url: String,
    /// Whether a kube-controller-manager runs beside the server.
    pub controllers: bool,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // A process that ended before its time is what a failing test needs to know about.
        for (c, log) in self.children.iter_mut().zip(LOGS) {
            if let Ok(Some(status)) = c.try_wait() {
                let text = std::fs::read_to_string(self.dir.join(log)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                eprintln!(
                    "{log}: the process ended early ({status}); its last lines:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The log of each child, in the order they are kept.
const LOGS: [&str; 3] = [
    "kube-apiserver.log",
    "etcd.log",
    "kube-controller-manager.log",
];

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Tokens the server knows: `(token, user, groups)`.
pub type Tokens<'a> = &'a [(&'a str, &'a str, &'a [&'a str])];

/// The directory named by KUBEBUILDER_ASSETS.
pub fn assets() -> PathBuf {
    PathBuf::from(
        std::env::var_os("KUBEBUILDER_ASSETS")
            .expect("KUBEBUILDER_ASSETS must name a directory holding kube-apiserver and etcd"),
    )
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver (and kube-controller-manager, with the first token, when
    /// `assets` has it) from the binaries in `assets`, knowing `tokens`.
    pub fn start(assets: &Path, tokens: Tokens) -> ControlPlane {
        let dir = tempfile::tempdir().unwrap().keep();
        let logs = dir.clone();
        let log = |name: &str| std::fs::File::create(logs.join(name)).unwrap();
        let (etcd_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd = Command::new(assets.join("etcd"))
            .args(["--data-dir", &dir.join("etcd").display().to_string()])
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{etcd_port}"),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{etcd_port}"),
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
            ])
            .stdout(Stdio::null())
            .stderr(log("etcd.log"))
            .spawn()
            .expect("etcd from KUBEBUILDER_ASSETS");
        let key = dir.join("sa.key");
        let status = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg("2048")
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "openssl genrsa");
        let csv: String = tokens
            .iter()
            .enumerate()
            .map(|(i, (token, user, groups))| {
                format!("{token},{user},{},\"{}\"\n", i + 1, groups.join(","))
            })
            .collect();
        std::fs::write(dir.join("tokens.csv"), csv).unwrap();
        // Every write audited at level Metadata (who, verb, request URI), synchronously.
        std::fs::write(
            dir.join("audit-policy.yaml"),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n  verbs: [create, update, patch]\n- level: None\n",
        )
        .unwrap();
        let api = Command::new(assets.join("kube-apiserver"))
            .args(["--etcd-servers", &format!("http://127.0.0.1:{etcd_port}")])
            .args([
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                &api_port.to_string(),
            ])
            .args(["--cert-dir", &dir.join("certs").display().to_string()])
            .args(["--service-account-issuer", "https://wukong.test"])
            .args(["--service-account-key-file", &key.display().to_string()])
            .args([
                "--service-account-signing-key-file",
                &key.display().to_string(),
            ])
            .args([
                "--token-auth-file",
                &dir.join("tokens.csv").display().to_string(),
            ])
            .args(["--authorization-mode", "RBAC"])
            .args([
                "--audit-policy-file",
                &dir.join("audit-policy.yaml").display().to_string(),
            ])
            .args([
                "--audit-log-path",
                &dir.join("audit.log").display().to_string(),
            ])
            .args(["--audit-log-mode", "blocking"])
            .args(["--service-cluster-ip-range", "10.0.0.0/24"])
            .args(["--disable-admission-plugins", "ServiceAccount"])
            .args([
                "--feature-gates",
                "TranslateStreamCloseWebsocketRequests=false",
            ])
            .stdout(Stdio::null())
            .stderr(log("kube-apiserver.log"))
            .spawn()
            .expect("kube-apiserver from KUBEBUILDER_ASSETS");
        let url = format!("https://127.0.0.1:{api_port}");
        let children = vec![api, etcd];
        let kcm = assets.join("kube-controller-manager");
        let controllers = kcm.exists();
        let mut plane = ControlPlane {
            children,
            url,
            dir,
            controllers,
        };
        if controllers {
            let (token, _, _) = tokens[0];
            let kubeconfig = plane.kubeconfig("controller-manager", token);
            plane.children.push(
                Command::new(kcm)
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args(["--controllers", "garbagecollector,namespace,pvc-protection"])
                    .args(["--leader-elect=false", "--secure-port=0"])
                    .stdout(Stdio::null())
                    .stderr(log("kube-controller-manager.log"))
                    .spawn()
                    .expect("kube-controller-manager from KUBEBUILDER_ASSETS"),
            );
        }
        plane
    }

    /// A kubeconfig file `kubeconfig-NAME` for this server with `token` (the server's
    /// certificate is self-signed: not verified).
    pub fn kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.join(format!("kubeconfig-{name}"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n",
                self.url
            ),
        )
        .unwrap();
        path
    }

    /// The processes (for their CPU time).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// The writes audited so far: `(user, method, request URI)`, oldest first.
    pub fn audited_writes(&self) -> Vec<(String, String, String)> {
        let text = std::fs::read_to_string(self.dir.join("audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|e| {
                let method = match e["verb"].as_str().unwrap_or_default() {
                    "create" => "POST",
                    "update" => "PUT",
                    _ => "PATCH",
                };
                (
                    e["user"]["username"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    method.to_string(),
                    e["requestURI"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// A client with `token`, once the server answers `/readyz` with ok.
    pub async fn client(&self, token: &str) -> Client {
        let mut config = Config::new(self.url.parse().unwrap());
        config.accept_invalid_certs = true;
        config.auth_info.token = Some(token.to_string().into());
        let client = Client::try_from(config).unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
            if client
                .request_text(req)
                .await
                .is_ok_and(|t| t.trim() == "ok")
            {
                return client;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready: {}",
                std::fs::read_to_string(self.dir.join("kube-apiserver.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

//! The simulator's HTTPS server: virt-api's `subresources.kubevirt.io/v1` (reached through
//! the API server's aggregation layer) and the kubelet's `/exec` (reached through the API
//! server's pod exec), with a self-signed certificate for `localhost`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::control::{push, remove};
use crate::objects::{POD, Res, VM, VMI};
use crate::{Sim, hotpluggable, named};

const GROUP: &str = "subresources.kubevirt.io";

/// A Kubernetes `Status` error.
struct Failure(u16, &'static str, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let Failure(code, reason, message) = self;
        let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": message, "reason": reason, "code": code});
        (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            axum::Json(body),
        )
            .into_response()
    }
}

fn from_kube(e: kube::Error) -> Failure {
    match e {
        kube::Error::Api(s) => Failure(
            s.code,
            if s.code == 404 {
                "NotFound"
            } else {
                "InternalError"
            },
            s.message,
        ),
        other => Failure(500, "InternalError", other.to_string()),
    }
}

/// A loopback listener and the TLS setup for it.
pub(crate) async fn listen() -> anyhow::Result<(TcpListener, TlsAcceptor)> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into()),
        )?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    Ok((listener, TlsAcceptor::from(Arc::new(config))))
}

/// Serves until the task is aborted.
pub(crate) async fn run(sim: Arc<Sim>, listener: TcpListener, tls: TlsAcceptor) {
    let app = Router::new()
        .route("/apis", axum::routing::get(groups))
        .route(&format!("/apis/{GROUP}"), axum::routing::get(group))
        .route(&format!("/apis/{GROUP}/v1"), axum::routing::get(resources))
        .route(
            &format!("/apis/{GROUP}/v1/namespaces/{{ns}}/{{resource}}/{{name}}/{{action}}"),
            axum::routing::any(subresource),
        )
        .route("/exec/{ns}/{pod}/{container}", axum::routing::get(exec))
        .with_state(sim);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (tls, app) = (tls.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(stream) = tls.accept(tcp).await else {
                return;
            };
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(app))
                .await;
        });
    }
}

fn group_json() -> Value {
    json!({"name": GROUP, "versions": [{"groupVersion": format!("{GROUP}/v1"), "version": "v1"}],
           "preferredVersion": {"groupVersion": format!("{GROUP}/v1"), "version": "v1"}})
}

async fn groups() -> axum::Json<Value> {
    axum::Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group_json()]}))
}

async fn group() -> axum::Json<Value> {
    let mut g = group_json();
    g["kind"] = "APIGroup".into();
    g["apiVersion"] = "v1".into();
    axum::Json(g)
}

async fn resources() -> axum::Json<Value> {
    let r = |name: &str, verbs: &[&str]| json!({"name": name, "singularName": "", "namespaced": true, "kind": "", "verbs": verbs});
    axum::Json(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/v1"),
        "resources": [
            r("virtualmachines/restart", &["update"]), r("virtualmachines/start", &["update"]),
            r("virtualmachines/stop", &["update"]), r("virtualmachines/addvolume", &["update"]),
            r("virtualmachines/removevolume", &["update"]),
            r("virtualmachineinstances/filesystemlist", &["get"]),
            r("virtualmachineinstances/guestosinfo", &["get"]),
        ]}),
    )
}

async fn subresource(
    State(sim): State<Arc<Sim>>,
    Path((ns, resource, name, action)): Path<(String, String, String, String)>,
    method: Method,
    body: Bytes,
) -> Response {
    match sim
        .subresource(&method, &resource, &ns, &name, &action, &body)
        .await
    {
        Ok((code, v)) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
            axum::Json(v),
        )
            .into_response(),
        Err(f) => f.into_response(),
    }
}

impl Sim {
    /// The object, or the 404 virt-api answers.
    async fn existing(&self, res: Res, ns: &str, name: &str) -> Result<Value, Failure> {
        self.objects
            .get(res, ns, name)
            .await
            .map_err(from_kube)?
            .ok_or_else(|| {
                Failure(
                    404,
                    "NotFound",
                    format!("{}.kubevirt.io \"{name}\" not found", res.plural()),
                )
            })
    }

    async fn subresource(
        &self,
        method: &Method,
        resource: &str,
        ns: &str,
        name: &str,
        action: &str,
        body: &[u8],
    ) -> Result<(u16, Value), Failure> {
        let lock = self.vm_lock(ns, name);
        let _held = lock.lock().await;
        match (method.as_str(), resource, action) {
            ("PUT", "virtualmachines", "restart") => {
                if self.faults.lock().expect("faults").refuse_restart {
                    return Err(Failure(
                        403,
                        "Forbidden",
                        format!(
                            "virtualmachines.subresources.kubevirt.io \"{name}\" is forbidden: User cannot update resource \"virtualmachines/restart\" in API group \"subresources.kubevirt.io\" in the namespace \"{ns}\""
                        ),
                    ));
                }
                let mut vm = self.existing(VM, ns, name).await?;
                if self
                    .objects
                    .get(VMI, ns, name)
                    .await
                    .map_err(from_kube)?
                    .is_none()
                {
                    return Err(Failure(409, "Conflict", "VM is not running".into()));
                }
                if let Some(c) = vm["status"]["conditions"].as_array_mut() {
                    c.retain(|c| c["type"] != "RestartRequired");
                }
                self.objects
                    .replace_status(VM, ns, name, &vm)
                    .await
                    .map_err(from_kube)?;
                self.stop(ns, name).await;
                self.reconcile_held(ns, name).await;
                Ok((202, json!({})))
            }
            ("PUT", "virtualmachines", "start" | "stop") => {
                let mut vm = self.existing(VM, ns, name).await?;
                vm["spec"]["runStrategy"] = json!(if action == "start" {
                    "Always"
                } else {
                    "Halted"
                });
                self.objects
                    .replace(VM, ns, name, vm)
                    .await
                    .map_err(from_kube)?;
                self.reconcile_held(ns, name).await;
                Ok((202, json!({})))
            }
            ("PUT", "virtualmachines", "addvolume" | "removevolume") => {
                let opts: Value = serde_json::from_slice(body).map_err(|e| {
                    Failure(400, "BadRequest", format!("the body is not JSON: {e}"))
                })?;
                let mut vm = self.existing(VM, ns, name).await?;
                let vol = opts["name"].as_str().unwrap_or_default().to_string();
                let spec = &mut vm["spec"]["template"]["spec"];
                if action == "addvolume" {
                    if named(&spec["volumes"], &vol).is_some() {
                        return Err(Failure(
                            400,
                            "BadRequest",
                            format!(
                                "Unable to add volume [{vol}] because volume with that name already exists"
                            ),
                        ));
                    }
                    let mut v = opts["volumeSource"].clone();
                    v["name"] = json!(vol);
                    push(&mut spec["volumes"], v);
                    push(
                        &mut spec["domain"]["devices"]["disks"],
                        opts["disk"].clone(),
                    );
                } else {
                    if !named(&spec["volumes"], &vol).is_some_and(hotpluggable) {
                        return Err(Failure(
                            400,
                            "BadRequest",
                            format!(
                                "Unable to remove volume [{vol}] because it does not exist or is not hotpluggable"
                            ),
                        ));
                    }
                    remove(&mut spec["volumes"], &vol);
                    remove(&mut spec["domain"]["devices"]["disks"], &vol);
                }
                self.objects
                    .replace(VM, ns, name, vm)
                    .await
                    .map_err(from_kube)?;
                Ok((202, json!({})))
            }
            ("GET", "virtualmachineinstances", "filesystemlist" | "guestosinfo") => {
                let vmi = self.existing(VMI, ns, name).await?;
                if action == "guestosinfo" {
                    return Ok((
                        200,
                        json!({"guestAgentVersion": "7.2.0", "hostname": name,
                        "os": {"name": "Debian GNU/Linux", "id": "debian", "versionId": "12"}}),
                    ));
                }
                Ok((200, json!({"items": self.filesystems(ns, &vmi)})))
            }
            _ => Err(Failure(
                404,
                "NotFound",
                format!("no subresource {resource}/{action} for {method}"),
            )),
        }
    }

    /// Runs `argv` in pod `pod`'s container `container`: exit code, stdout, stderr.
    async fn exec_in_pod(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        argv: &[String],
    ) -> Result<(i64, String, String), Failure> {
        let not_found = || Failure(404, "NotFound", format!("pod {ns}/{pod} not found"));
        let p = self
            .objects
            .get(POD, ns, pod)
            .await
            .map_err(from_kube)?
            .ok_or_else(not_found)?;
        if p["status"]["phase"] != "Running" {
            return Err(Failure(
                400,
                "BadRequest",
                format!("pod {pod} is not running"),
            ));
        }
        if container != "compute" {
            return Err(Failure(
                400,
                "BadRequest",
                format!("container {container} is not valid for pod {pod}"),
            ));
        }
        let vm = p["metadata"]["labels"]["vm.kubevirt.io/name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let fail = |msg: String| Ok((1, String::new(), msg));
        // virsh [-c URI] qemu-agent-command DOMAIN JSON [--timeout N]
        let mut it = argv.iter().map(String::as_str);
        if it.next() != Some("virsh") {
            let first = argv.first().map(String::as_str).unwrap_or_default();
            return Ok((127, String::new(), format!("{first}: not found\n")));
        }
        let mut rest: Vec<&str> = it.collect();
        if rest.first() == Some(&"-c") {
            if rest.get(1).is_none_or(|u| !u.contains("virtqemud-sock")) {
                return fail("error: failed to connect to the hypervisor\n".into());
            }
            rest.drain(..2);
        }
        let [sub, domain, json_text, ..] = rest.as_slice() else {
            return fail("error: command needs a domain and a JSON command\n".into());
        };
        if *sub != "qemu-agent-command" {
            return fail(format!("error: unknown command: '{sub}'\n"));
        }
        if *domain != format!("{ns}_{vm}") {
            return fail(format!("error: failed to get domain '{domain}'\n"));
        }
        let Some(vmi) = self.objects.get(VMI, ns, &vm).await.map_err(from_kube)? else {
            return fail(format!("error: failed to get domain '{domain}'\n"));
        };
        let Ok(command) = serde_json::from_str::<Value>(json_text) else {
            return fail("error: internal error: cannot parse json\n".into());
        };
        Ok(match self.agent(ns, &vmi, &command) {
            Ok(v) => (0, format!("{v}\n"), String::new()),
            Err(e) => (1, String::new(), format!("error: internal error: {e}\n")),
        })
    }
}

/// The kubelet's `GET /exec/{ns}/{pod}/{container}?command=…` upgraded to a WebSocket speaking
/// the channel protocol (1 stdout, 2 stderr, 3 the final `Status`).
async fn exec(
    State(sim): State<Arc<Sim>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(query): Query<Vec<(String, String)>>,
    ws: WebSocketUpgrade,
) -> Response {
    let argv: Vec<String> = query
        .into_iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v)
        .collect();
    sim.execs.fetch_add(1, Ordering::Relaxed);
    let (code, out, err) = match sim.exec_in_pod(&ns, &pod, &container, &argv).await {
        Ok(r) => r,
        Err(f) => return f.into_response(),
    };
    ws.protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |mut socket| async move {
            let frame = |ch: u8, data: &[u8]| {
                let mut b = vec![ch];
                b.extend_from_slice(data);
                Message::Binary(Bytes::from(b))
            };
            if !out.is_empty() {
                let _ = socket.send(frame(1, out.as_bytes())).await;
            }
            if !err.is_empty() {
                let _ = socket.send(frame(2, err.as_bytes())).await;
            }
            let status = if code == 0 {
                json!({"metadata": {}, "status": "Success"})
            } else {
                json!({"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                       "message": format!("command terminated with non-zero exit code: exit status {code}"),
                       "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
            };
            let _ = socket.send(frame(3, status.to_string().as_bytes())).await;
            let _ = socket.send(Message::Close(None)).await;
        })
}

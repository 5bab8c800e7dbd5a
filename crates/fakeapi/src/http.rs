//! The HTTP face of the fake API server: Kubernetes REST paths, list with label selectors and
//! pagination, watch (with bookmarks, timeouts and 410 for expired versions), create,
//! replace, the patch types (JSON, merge; strategic merge refused for custom resources as a
//! real server does), delete, `/status`, and KubeVirt's subresources and pod exec.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::auth::{Attributes, Token, authenticate, authorize};
use crate::store::{ApiError, Change, Kind, Propagation, Store, Sub};

/// Shared state of the server.
pub struct Server {
    /// Objects.
    pub store: Arc<Store>,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_every: Duration,
    /// Requests served (for the benchmark).
    pub requests: std::sync::atomic::AtomicU64,
    /// Bearer tokens; none = no authentication and no authorization.
    pub tokens: Vec<Token>,
    /// The audit record of writes.
    pub audit: Arc<Audit>,
}

/// One audited write.
#[derive(Clone, Debug)]
pub struct AuditEntry {
    /// Who (empty without authentication).
    pub user: String,
    /// POST, PUT or PATCH.
    pub method: String,
    /// Path and query as sent.
    pub uri: String,
}

/// The audit record of writes (off unless asked for).
pub struct Audit {
    on: bool,
    entries: std::sync::Mutex<Vec<AuditEntry>>,
}

impl Audit {
    /// A record that keeps entries only when `on`.
    pub fn new(on: bool) -> Audit {
        Audit {
            on,
            entries: Default::default(),
        }
    }

    fn record(&self, user: Option<&Token>, method: &Method, uri: &Uri) {
        if self.on && matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
            let entry = AuditEntry {
                user: user.map(|t| t.user.clone()).unwrap_or_default(),
                method: method.to_string(),
                uri: uri.to_string(),
            };
            self.entries.lock().expect("audit lock").push(entry);
        }
    }

    /// Every entry so far.
    pub fn entries(&self) -> Vec<AuditEntry> {
        self.entries.lock().expect("audit lock").clone()
    }
}

/// The router.
pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/exec",
            axum::routing::get(exec),
        )
        .route(
            "/version",
            axum::routing::get(|| async {
                axum::Json(
                    json!({"major": "1", "minor": "32", "gitVersion": "v1.32.13-wukong-fake"}),
                )
            }),
        )
        .fallback(handle)
        .layer(axum::middleware::from_fn_with_state(server.clone(), guard))
        .route("/fake/converged", axum::routing::get(converged))
        .with_state(server)
}

/// Authenticates and authorizes every Kubernetes request (not `/version`, not `/fake/…`).
async fn guard(
    State(server): State<Arc<Server>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let who = match authenticate(&server.tokens, request.headers()) {
        Ok(Some(who)) => who,
        Ok(None) => {
            server.audit.record(None, request.method(), request.uri());
            return next.run(request).await;
        }
        Err(e) => return error_response(&e),
    };
    if request.uri().path() != "/version" {
        let q = query_pairs(request.uri().query().unwrap_or_default());
        let asked = match attributes(request.method(), request.uri().path(), &q) {
            Ok(a) => a,
            Err(e) => return error_response(&e),
        };
        for a in &asked {
            if let Err(e) = authorize(&server.store, who, a) {
                return error_response(&e);
            }
        }
    }
    server
        .audit
        .record(Some(who), request.method(), request.uri());
    next.run(request).await
}

/// What a request asks to do, in RBAC's terms (pod exec over a WebSocket asks two things).
fn attributes(
    method: &Method,
    path: &str,
    q: &[(String, String)],
) -> Result<Vec<Attributes>, ApiError> {
    let one = |verb,
               group: &str,
               resource: &str,
               sub: Option<&str>,
               ns: Option<&str>,
               name: Option<&str>| Attributes {
        verb,
        group: group.to_string(),
        resource: resource.to_string(),
        subresource: sub.map(String::from),
        namespace: ns.map(String::from),
        name: name.map(String::from),
    };
    Ok(match parse(path)? {
        Target::Collection { kind, ns } => {
            let verb = match *method {
                Method::GET if matches!(param(q, "watch"), Some("true" | "1")) => "watch",
                Method::GET => "list",
                Method::POST => "create",
                Method::DELETE => "deletecollection",
                _ => "unknown",
            };
            vec![one(
                verb,
                kind.group,
                kind.plural,
                None,
                ns.as_deref(),
                None,
            )]
        }
        Target::Object {
            kind,
            ns,
            name,
            sub,
        } => {
            let ns = kind.namespaced.then_some(ns.as_str());
            let verb = match *method {
                Method::GET if sub.as_deref() == Some("exec") => {
                    return Ok(["get", "create"]
                        .into_iter()
                        .map(|v| one(v, kind.group, kind.plural, sub.as_deref(), ns, Some(&name)))
                        .collect());
                }
                Method::GET => "get",
                Method::POST => "create",
                Method::PUT => "update",
                Method::PATCH => "patch",
                Method::DELETE => "delete",
                _ => "unknown",
            };
            vec![one(
                verb,
                kind.group,
                kind.plural,
                sub.as_deref(),
                ns,
                Some(&name),
            )]
        }
        Target::KubevirtSub {
            resource,
            ns,
            name,
            action,
        } => {
            let verb = match *method {
                Method::GET => "get",
                Method::PUT => "update",
                _ => "unknown",
            };
            vec![one(
                verb,
                "subresources.kubevirt.io",
                &resource,
                Some(&action),
                Some(&ns),
                Some(&name),
            )]
        }
    })
}

/// Not Kubernetes: how many Wukongs exist and how many are converged and running (for the
/// benchmark, cheaper than listing them all).
async fn converged(State(server): State<Arc<Server>>) -> Response {
    let (total, done) = server
        .store
        .tally(Kind::named("vm.novasphere.dev", "Wukong"), |w| {
            w["status"]["observedGeneration"] == w["metadata"]["generation"]
                && w["status"]["phase"] == "Running"
        });
    json_response(
        200,
        &json!({"total": total, "converged": done,
                "requests": server.requests.load(std::sync::atomic::Ordering::Relaxed),
                "creates": server.store.writes("persistentvolumeclaims", "create")
                    + server.store.writes("virtualmachines", "create")}),
    )
}

/// Decodes a query string into pairs (repeated keys kept in order).
pub fn query_pairs(q: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                },
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn param<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
}

/// A JSON response.
pub fn json_response(code: u16, v: &Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

/// `GET /api/v1/namespaces/{ns}/pods/{name}/exec`: passed to the pod's kubelet.
async fn exec(
    State(server): State<Arc<Server>>,
    axum::extract::Path((ns, pod)): axum::extract::Path<(String, String)>,
    request: axum::extract::Request,
) -> Response {
    server.store.count("pods/exec", "create");
    let q = query_pairs(request.uri().query().unwrap_or_default());
    crate::proxy::exec(&server.store, &ns, &pod, &q, request)
        .await
        .unwrap_or_else(|e| error_response(&e))
}

/// An error response.
pub fn error_response(e: &ApiError) -> Response {
    json_response(e.code, &e.status())
}

enum Target {
    Collection {
        kind: &'static Kind,
        ns: Option<String>,
    },
    Object {
        kind: &'static Kind,
        ns: String,
        name: String,
        sub: Option<String>,
    },
    KubevirtSub {
        resource: String,
        ns: String,
        name: String,
        action: String,
    },
}

fn not_found(path: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("the server could not find the requested resource ({path})"),
    )
}

fn parse(path: &str) -> Result<Target, ApiError> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found(path)),
    };
    if group == "subresources.kubevirt.io" {
        return match rest {
            ["namespaces", ns, resource, name, action] => Ok(Target::KubevirtSub {
                resource: resource.to_string(),
                ns: ns.to_string(),
                name: name.to_string(),
                action: action.to_string(),
            }),
            _ => Err(not_found(path)),
        };
    }
    let (ns, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(s.to_string())),
        _ => return Err(not_found(path)),
    };
    let kind = Kind::find(group, version, plural).ok_or_else(|| not_found(path))?;
    if kind.namespaced != ns.is_some() && name.is_some() {
        return Err(not_found(path));
    }
    Ok(match name {
        None => Target::Collection { kind, ns },
        Some(name) => Target::Object {
            kind,
            ns: ns.unwrap_or_default(),
            name,
            sub,
        },
    })
}

/// Whether `obj` matches a label selector (`a=b`, `a==b`, `a!=b`, `a`, `!a`, comma-separated).
pub fn selects(selector: &str, obj: &Value) -> bool {
    let labels = &obj["metadata"]["labels"];
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()].as_str() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once('=') {
            labels[k.trim()].as_str() == Some(v.trim_start_matches('=').trim())
        } else if let Some(k) = term.strip_prefix('!') {
            labels.get(k.trim()).is_none()
        } else {
            labels.get(term.trim()).is_some()
        }
    })
}

fn fields_select(selector: &str, obj: &Value) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v, eq) = match term.split_once("!=") {
            Some((k, v)) => (k, v, false),
            None => match term.split_once('=') {
                Some((k, v)) => (k, v.trim_start_matches('='), true),
                None => return false,
            },
        };
        let have = match k {
            "metadata.name" => obj["metadata"]["name"].as_str(),
            "metadata.namespace" => obj["metadata"]["namespace"].as_str(),
            _ => None,
        };
        (have == Some(v)) == eq
    })
}

fn matches(q: &[(String, String)], obj: &Value) -> bool {
    param(q, "labelSelector").is_none_or(|s| selects(s, obj))
        && param(q, "fieldSelector").is_none_or(|s| fields_select(s, obj))
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    String::from_utf8(bytes?).ok()
}

fn list(
    server: &Server,
    kind: &'static Kind,
    ns: Option<&str>,
    q: &[(String, String)],
) -> Response {
    let (items, rv) = server.store.list(kind, ns);
    let mut items: Vec<Value> = items.into_iter().filter(|o| matches(q, o)).collect();
    let id = |o: &Value| {
        format!(
            "{}/{}",
            o["metadata"]["namespace"].as_str().unwrap_or_default(),
            o["metadata"]["name"].as_str().unwrap_or_default()
        )
    };
    if let Some(after) = param(q, "continue").filter(|c| !c.is_empty()) {
        let Some(after) = unhex(after) else {
            return error_response(&ApiError::new(400, "BadRequest", "invalid continue token"));
        };
        items.retain(|o| id(o) > after);
    }
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(limit) = param(q, "limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        && items.len() > limit
    {
        items.truncate(limit);
        metadata["continue"] = json!(hex(&id(&items[limit - 1])));
    }
    json_response(
        200,
        &json!({"kind": format!("{}List", kind.kind), "apiVersion": kind.api_version(),
                "metadata": metadata, "items": items}),
    )
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut b = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

fn watch(
    server: &Arc<Server>,
    kind: &'static Kind,
    ns: Option<String>,
    q: Vec<(String, String)>,
) -> Response {
    let store = server.store.clone();
    let mut live = store.subscribe();
    let mut closed = store.closed.subscribe();
    let from = param(&q, "resourceVersion")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v > 0);
    let bookmarks = param(&q, "allowWatchBookmarks") == Some("true");
    let timeout = param(&q, "timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let bookmark_every = server.bookmark_every;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let wanted = move |c: &Change, q: &[(String, String)]| {
        std::ptr::eq(c.kind, kind)
            && ns
                .as_deref()
                .is_none_or(|ns| c.object["metadata"]["namespace"] == ns)
            && matches(q, &c.object)
    };
    // The changes to replay, or 410.
    let replay: Result<Vec<Arc<Change>>, u64> = match from {
        Some(rv) => store.since(kind, rv),
        None => {
            // No version: the current objects as ADDED, then what follows.
            let (items, rv) = store.list(kind, None);
            Ok(items
                .into_iter()
                .map(|o| {
                    Arc::new(Change {
                        rv,
                        kind,
                        kind_of_change: "ADDED",
                        object: o,
                        line: Default::default(),
                    })
                })
                .collect())
        }
    };
    tokio::spawn(async move {
        let mut last = from.unwrap_or(0);
        match replay {
            Err(oldest) => {
                let status = ApiError::new(
                    410,
                    "Expired",
                    format!("too old resource version: {} ({oldest})", from.unwrap_or(0)),
                )
                .status();
                let _ = tx.send(event_line("ERROR", &status)).await;
                return;
            }
            Ok(changes) => {
                for c in changes {
                    last = last.max(c.rv);
                    if wanted(&c, &q)
                        && tx
                            .send(
                                c.line
                                    .get_or_init(|| event_line(c.kind_of_change, &c.object))
                                    .clone(),
                            )
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(bookmark_every);
        tick.tick().await;
        loop {
            tokio::select! {
                c = live.recv() => match c {
                    Ok(c) if c.rv > last => {
                        last = c.rv;
                        if wanted(&c, &q) && tx.send(c.line.get_or_init(|| event_line(c.kind_of_change, &c.object)).clone()).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // Too slow a reader: end the watch; the client resumes from its version.
                    Err(_) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    let rv = store.resource_version().max(last);
                    let b = json!({"kind": kind.kind, "apiVersion": kind.api_version(),
                                   "metadata": {"resourceVersion": rv.to_string()}});
                    if tx.send(event_line("BOOKMARK", &b)).await.is_err() {
                        return;
                    }
                }
                _ = closed.changed() => return,
                _ = &mut deadline => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .expect("a valid response")
}

/// The object itself or its `/status`; any other subresource is not served.
fn which(kind: &Kind, sub: Option<&str>) -> Result<Sub, ApiError> {
    match sub {
        None => Ok(Sub::Main),
        Some("status") if kind.status => Ok(Sub::Status),
        Some(s) => Err(not_found(s)),
    }
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "BadRequest", format!("the body is not JSON: {e}")))
}

fn patched(
    kind: &Kind,
    current: &Value,
    content_type: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    let mut doc = current.clone();
    match content_type.split(';').next().unwrap_or_default().trim() {
        "application/json-patch+json" => {
            let mut ops: Vec<Value> = serde_json::from_slice(body)
                .map_err(|e| ApiError::new(400, "BadRequest", format!("not a JSON patch: {e}")))?;
            // As the API server's JSON patch library does: testing for null passes on a
            // path that does not exist.
            ops.retain(|op| {
                !(op["op"] == "test"
                    && op["value"].is_null()
                    && op["path"]
                        .as_str()
                        .is_some_and(|p| doc.pointer(p).is_none()))
            });
            let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops))
                .map_err(|e| ApiError::new(400, "BadRequest", format!("not a JSON patch: {e}")))?;
            json_patch::patch(&mut doc, &patch).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
        }
        "application/merge-patch+json" => {
            let patch = parse_body(body)?;
            json_patch::merge(&mut doc, &patch);
        }
        "application/strategic-merge-patch+json"
            if !kind.group.is_empty() && kind.group != "storage.k8s.io" =>
        {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml ({} is a custom resource)",
                    kind.kind
                ),
            ));
        }
        "application/strategic-merge-patch+json" => {
            let patch = parse_body(body)?;
            json_patch::merge(&mut doc, &patch);
        }
        other => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format ({other}) - accepted media types include: application/json-patch+json, application/merge-patch+json"
                ),
            ));
        }
    }
    Ok(doc)
}

async fn handle(
    State(server): State<Arc<Server>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    server
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let q = query_pairs(uri.query().unwrap_or_default());
    let target = match parse(uri.path()) {
        Ok(t) => t,
        Err(e) => return error_response(&e),
    };
    let store = &server.store;
    if let Target::Collection { kind, .. } | Target::Object { kind, .. } = &target
        && !store.served(kind)
    {
        return error_response(&not_found(uri.path()));
    }
    let mut warnings = Vec::new();
    let result: Result<Value, ApiError> = match (method, target) {
        (Method::GET, Target::Collection { kind, ns }) => {
            return if matches!(param(&q, "watch"), Some("true" | "1")) {
                watch(&server, kind, ns, q)
            } else {
                list(&server, kind, ns.as_deref(), &q)
            };
        }
        (Method::POST, Target::Collection { kind, ns }) => {
            let ns = ns.as_deref().unwrap_or_default();
            let created = parse_body(&body)
                .and_then(|obj| decoded(store, kind, obj, &q, &mut warnings))
                .and_then(|obj| {
                    if param(&q, "dryRun") == Some("All") {
                        store.create_dry(kind, ns, obj)
                    } else {
                        store.create(kind, ns, obj)
                    }
                });
            return with_warnings(
                match created {
                    Ok(o) => json_response(201, &o),
                    Err(e) => error_response(&e),
                },
                &warnings,
            );
        }
        (
            Method::GET,
            Target::Object {
                kind,
                ns,
                name,
                sub,
            },
        ) => match sub.as_deref() {
            None | Some("status") => store.fetch(kind, &ns, &name),
            Some(s) => Err(not_found(s)),
        },
        (
            Method::PUT,
            Target::Object {
                kind,
                ns,
                name,
                sub,
            },
        ) => {
            store.count(kind.plural, "update");
            let sub = which(kind, sub.as_deref());
            sub.and_then(|sub| {
                let obj = decoded(store, kind, parse_body(&body)?, &q, &mut warnings)?;
                store.update(kind, &ns, &name, obj, sub)
            })
        }
        (
            Method::PATCH,
            Target::Object {
                kind,
                ns,
                name,
                sub,
            },
        ) => {
            store.count(kind.plural, "patch");
            let sub = which(kind, sub.as_deref());
            sub.and_then(|sub| {
                let current = store.fetch(kind, &ns, &name)?;
                let ct = headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                let mut new = decoded(
                    store,
                    kind,
                    patched(kind, &current, ct, &body)?,
                    &q,
                    &mut warnings,
                )?;
                // A patch carries a precondition only when it names a version itself.
                let names_version = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .is_some_and(|p| p["metadata"].get("resourceVersion").is_some());
                if !names_version && ct.starts_with("application/merge-patch") {
                    new["metadata"]["resourceVersion"] =
                        current["metadata"]["resourceVersion"].clone();
                }
                store.update(kind, &ns, &name, new, sub)
            })
        }
        (
            Method::DELETE,
            Target::Object {
                kind,
                ns,
                name,
                sub: None,
            },
        ) => {
            // DeleteOptions, in the query or the body.
            let options: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let policy = param(&q, "propagationPolicy")
                .map(String::from)
                .or_else(|| options["propagationPolicy"].as_str().map(String::from));
            let propagation = match policy.as_deref() {
                None | Some("Background") => Ok(Propagation::Background),
                Some("Foreground") => Ok(Propagation::Foreground),
                Some("Orphan") => Ok(Propagation::Orphan),
                Some(other) => Err(ApiError::new(
                    422,
                    "Invalid",
                    format!(
                        "propagationPolicy: Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
                    ),
                )),
            };
            propagation.and_then(|p| store.delete_with(kind, &ns, &name, p))
        }
        (method, Target::KubevirtSub { .. }) => {
            let path = uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or(uri.path());
            return crate::proxy::aggregated(
                store,
                "subresources.kubevirt.io",
                "v1",
                method,
                path,
                &headers,
                body,
            )
            .await
            .unwrap_or_else(|e| error_response(&e));
        }
        (m, _) => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{m} is not allowed here"),
        )),
    };
    with_warnings(
        match result {
            Ok(v) => json_response(200, &v),
            Err(e) => error_response(&e),
        },
        &warnings,
    )
}

/// The request body as the server decodes it: fields its schema does not know are dropped
/// with a warning (`fieldValidation=Warn`, the default), dropped silently (`Ignore`), or
/// refused (`Strict`), in the real server's words.
fn decoded(
    store: &Store,
    kind: &Kind,
    mut obj: Value,
    q: &[(String, String)],
    warnings: &mut Vec<String>,
) -> Result<Value, ApiError> {
    let dropped = store.prune(kind, &mut obj);
    if dropped.is_empty() {
        return Ok(obj);
    }
    let unknown: Vec<String> = dropped
        .iter()
        .map(|p| format!("unknown field \"{p}\""))
        .collect();
    match param(q, "fieldValidation") {
        Some("Strict") => Err(ApiError::new(
            400,
            "BadRequest",
            format!(
                "{k} in version \"{v}\" cannot be handled as a {k}: strict decoding error: {}",
                unknown.join(", "),
                k = kind.kind,
                v = kind.version
            ),
        )),
        Some("Ignore") => Ok(obj),
        _ => {
            warnings.extend(unknown);
            Ok(obj)
        }
    }
}

/// `response` with one `Warning: 299 - "…"` header per warning.
fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - {}", serde_json::Value::String(w.clone()));
        if let Ok(v) = header::HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    response
}

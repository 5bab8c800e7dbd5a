//! The daemon's HTTP API, shaped like Kubernetes' (contract: `docs/api.yaml`). Served on a
//! unix socket (0600) in `WUKONG_HOME`; on TCP only on loopback and only with a bearer token.
//! Handlers translate requests into store writes and worker commands; nothing else.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use wukong_api::document::parse_value;
use wukong_api::merge::merge_spec;
use wukong_api::validate::validate_for_backend;
use wukong_api::{BackendKind, ErrorKind, FieldErrors, resolve, resolve_new};
use wukong_engine::{Backend, VmRef};
use wukong_planner::PlanDocument;

use crate::daemon::{Command, Daemon, desired_config, new_record};
use crate::machine::VmFiles;
use crate::store::{StoreError, VmRecord};

/// Path prefix of the resource.
pub const PREFIX: &str = "/apis/vm.novasphere.dev/v1alpha1";

/// An API error: a Kubernetes-style `Status` body.
#[derive(Debug)]
pub struct ApiError {
    code: StatusCode,
    reason: &'static str,
    message: String,
    causes: Vec<(String, String)>,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            causes: vec![],
        }
    }
    fn not_found(vm: &VmRef) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("wukong {vm} not found"),
        )
    }
    fn fields(e: FieldErrors) -> Self {
        let (code, reason) = match e.kind() {
            ErrorKind::Invalid => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
            ErrorKind::NotAllowed => (StatusCode::FORBIDDEN, "NotAllowed"),
        };
        ApiError {
            code,
            reason,
            message: e.to_string(),
            causes: e
                .0
                .iter()
                .map(|f| (f.field.clone(), f.reason.clone()))
                .collect(),
        }
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Conflict(..) => Self::new(StatusCode::CONFLICT, "Conflict", e.to_string()),
            StoreError::Exists(_) => {
                Self::new(StatusCode::CONFLICT, "AlreadyExists", e.to_string())
            }
            StoreError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, "NotFound", e.to_string()),
            _ => Self::internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Failure",
            "code": self.code.as_u16(),
            "reason": self.reason,
            "message": self.message,
            "details": {"causes": self.causes.iter().map(|(f, m)| json!({"field": f, "message": m})).collect::<Vec<_>>()},
        });
        (self.code, axum::Json(body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

fn json_response(code: StatusCode, v: &impl serde::Serialize, seq: u64) -> Response {
    let mut r = (
        code,
        axum::Json(serde_json::to_value(v).unwrap_or_default()),
    )
        .into_response();
    r.headers_mut()
        .insert("x-wukong-seq", HeaderValue::from(seq));
    r
}

fn latest_seq(d: &Daemon) -> u64 {
    d.backend
        .store()
        .events(None, 0, 1)
        .ok()
        .and_then(|v| v.last().map(|e| e.seq))
        .unwrap_or(0)
}

/// The per-VM subresources and their handlers.
fn subresources() -> Vec<(&'static str, axum::routing::MethodRouter<Arc<Daemon>>)> {
    vec![
        ("plan", post(plan)),
        ("start", post(start)),
        ("stop", post(stop)),
        ("restart", post(restart)),
        ("rollback", post(rollback)),
        ("exec", post(exec)),
        ("logs", get(logs)),
        ("events", get(events)),
    ]
}

/// Every path the API serves, spelled as in `docs/api.yaml`.
pub fn paths() -> Vec<String> {
    let one = format!("{PREFIX}/namespaces/{{namespace}}/wukongs/{{name}}");
    let mut v = vec![
        format!("{PREFIX}/wukongs"),
        format!("{PREFIX}/namespaces/{{namespace}}/wukongs"),
        one.clone(),
    ];
    v.extend(
        subresources()
            .into_iter()
            .map(|(sub, _)| format!("{one}/{sub}")),
    );
    v.push("/healthz".into());
    v.push("/metrics".into());
    v
}

/// The router of the API.
pub fn router(daemon: Arc<Daemon>) -> Router {
    let one = format!("{PREFIX}/namespaces/{{ns}}/wukongs/{{name}}");
    let mut r = Router::new()
        .route(&format!("{PREFIX}/wukongs"), get(list_all))
        .route(
            &format!("{PREFIX}/namespaces/{{ns}}/wukongs"),
            get(list).post(create),
        )
        .route(&one, get(read).patch(patch).delete(delete))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics));
    for (sub, handler) in subresources() {
        r = r.route(&format!("{one}/{sub}"), handler);
    }
    r.layer(middleware::from_fn(names_checked))
        .with_state(daemon)
}

/// `GET /metrics`: the Prometheus text exposition.
async fn metrics(State(daemon): State<Arc<Daemon>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        daemon.metrics.render(),
    )
        .into_response()
}

/// Refuses a request whose namespace or name in the path is not a DNS label (the rule
/// Kubernetes applies, shared with the CLI and the operator), before any handler can turn it
/// into a path on disk. The path is checked as sent: an encoded character (`%2F`) is refused
/// like the character itself.
async fn names_checked(req: Request, next: Next) -> Response {
    let segments: Vec<&str> = req.uri().path().split('/').collect();
    for (i, s) in segments.iter().enumerate() {
        let field = match *s {
            "namespaces" => "metadata.namespace",
            "wukongs" => "metadata.name",
            _ => continue,
        };
        let Some(value) = segments.get(i + 1) else {
            continue;
        };
        if let Err(reason) =
            wukong_api::validate::check_dns_label(value, wukong_api::document::MAX_NAME)
        {
            return ApiError::fields(FieldErrors(vec![wukong_api::FieldError::invalid(
                field, reason,
            )]))
            .into_response();
        }
    }
    next.run(req).await
}

/// Marks a request that came over the TCP listener (not the owner's private socket).
#[derive(Clone, Copy, Debug)]
pub struct OverTcp;

/// Every disk source and boot kernel in `spec` that `before` did not have, checked against
/// the daemon's trusted image directories (over TCP nothing without one).
fn check_sources(
    d: &Daemon,
    spec: &wukong_api::WukongSpec,
    before: Option<&wukong_api::WukongSpec>,
    over_tcp: bool,
) -> Result<(), ApiError> {
    let old: Vec<&wukong_api::DiskSpec> = before
        .and_then(|b| b.disks.as_ref())
        .into_iter()
        .flatten()
        .collect();
    let mut errors = Vec::new();
    for (i, disk) in spec.disks.iter().flatten().enumerate() {
        let Some(src) = &disk.source else { continue };
        let Some(image) = &src.image else { continue };
        if old
            .iter()
            .any(|o| o.name == disk.name && o.source.as_ref() == Some(src))
        {
            continue;
        }
        if let Err(reason) =
            crate::trusted::check_source(image, &d.backend.options().image_roots, over_tcp)
        {
            errors.push(wukong_api::FieldError::invalid(
                format!("spec.disks[{i}].source.image"),
                reason,
            ));
        }
    }
    // A kernel and initrd to boot, as host files, follow the same rule.
    let kernel = spec.boot.as_ref().and_then(|b| b.kernel.as_ref());
    let old_kernel = before
        .and_then(|b| b.boot.as_ref())
        .and_then(|b| b.kernel.as_ref());
    if let Some(k) = kernel
        && Some(k) != old_kernel
    {
        let files = [("path", Some(&k.path)), ("initrd", k.initrd.as_ref())];
        for (field, file) in files {
            let Some(file) = file else { continue };
            if let Err(reason) =
                crate::trusted::check_source(file, &d.backend.options().image_roots, over_tcp)
            {
                errors.push(wukong_api::FieldError::invalid(
                    format!("spec.boot.kernel.{field}"),
                    reason,
                ));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::fields(FieldErrors(errors)))
    }
}

/// Requires `Authorization: Bearer TOKEN` (for the TCP listener).
pub fn with_token(router: Router, token: String) -> Router {
    let token = Arc::new(token);
    router.layer(middleware::from_fn(move |mut req: Request, next: Next| {
        let token = token.clone();
        req.extensions_mut().insert(OverTcp);
        async move {
            let ok = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
            if ok {
                next.run(req).await
            } else {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    "a bearer token is required",
                )
                .into_response()
            }
        }
    }))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn list_body(items: Vec<VmRecord>) -> Value {
    json!({
        "apiVersion": "vm.novasphere.dev/v1alpha1",
        "kind": "WukongList",
        "items": items.into_iter().map(|r| r.object).collect::<Vec<_>>(),
    })
}

async fn list_all(State(d): State<Arc<Daemon>>) -> ApiResult {
    Ok(json_response(
        StatusCode::OK,
        &list_body(
            d.backend
                .store()
                .list(None)?
                .into_iter()
                .map(|r| d.live(r))
                .collect(),
        ),
        latest_seq(&d),
    ))
}

async fn list(State(d): State<Arc<Daemon>>, Path(ns): Path<String>) -> ApiResult {
    Ok(json_response(
        StatusCode::OK,
        &list_body(
            d.backend
                .store()
                .list(Some(&ns))?
                .into_iter()
                .map(|r| d.live(r))
                .collect(),
        ),
        latest_seq(&d),
    ))
}

fn get_record(d: &Daemon, vm: &VmRef) -> Result<VmRecord, ApiError> {
    d.backend
        .store()
        .get(vm)?
        .ok_or_else(|| ApiError::not_found(vm))
}

#[derive(Deserialize)]
struct WatchQuery {
    watch: Option<bool>,
}

async fn read(
    State(d): State<Arc<Daemon>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<WatchQuery>,
) -> ApiResult {
    let vm = VmRef::new(&ns, &name);
    let rec = get_record(&d, &vm)?;
    if q.watch != Some(true) {
        return Ok(json_response(
            StatusCode::OK,
            &d.live(rec).object,
            latest_seq(&d),
        ));
    }
    // Watch: the object now, then again after each event about it.
    let rx = d.events.subscribe();
    let first = json!({"type": "ADDED", "object": rec.object});
    let store = d.backend.store().clone();
    let stream = futures_util::stream::once(async move { first })
        .chain(tokio_stream_of(rx).filter_map(move |e| {
            let store = store.clone();
            let vm = vm.clone();
            async move {
                if e.vm != vm {
                    return None;
                }
                match store.get(&vm).ok()? {
                    Some(r) => Some(json!({"type": "MODIFIED", "object": r.object})),
                    None => Some(json!({"type": "DELETED", "object": {"metadata": {"name": vm.name, "namespace": vm.namespace}}})),
                }
            }
        }))
        .map(|v| Ok::<_, std::convert::Infallible>(Bytes::from(format!("{v}\n"))));
    Ok(ndjson(Body::from_stream(stream)))
}

fn ndjson(body: Body) -> Response {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

fn tokio_stream_of(
    rx: tokio::sync::broadcast::Receiver<crate::store::StoredEvent>,
) -> impl futures_util::Stream<Item = crate::store::StoredEvent> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(e) => return Some((e, rx)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

/// Puts the path's namespace into a created object's metadata; a body that is not an object,
/// or whose metadata is not one, is refused (indexing into it would panic the handler).
fn set_namespace(value: &mut Value, ns: &str) -> Result<(), ApiError> {
    let bad = |what: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("{what} must be a JSON object"),
        )
    };
    let object = value
        .as_object_mut()
        .ok_or_else(|| bad("the body (a Wukong)"))?;
    match object.entry("metadata").or_insert_with(|| json!({})) {
        Value::Object(m) => {
            m.insert("namespace".into(), json!(ns));
            Ok(())
        }
        _ => Err(bad("metadata")),
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("the body is not JSON: {e}"),
        )
    })
}

async fn create(
    State(d): State<Arc<Daemon>>,
    Path(ns): Path<String>,
    tcp: Option<axum::Extension<OverTcp>>,
    body: Bytes,
) -> ApiResult {
    let mut value = parse_body(&body)?;
    set_namespace(&mut value, &ns)?;
    let doc = parse_value(value).map_err(ApiError::fields)?;
    check_sources(&d, &doc.wukong.spec, None, tcp.is_some())?;
    let name = doc.wukong.metadata.name.clone().unwrap_or_default();
    let vm = VmRef::new(&ns, &name);
    let (config, pinned) = resolve_new(&name, &doc.wukong.spec, BackendKind::Local, d.limits)
        .map_err(ApiError::fields)?;
    let mut object = doc.wukong;
    object.status = None;
    let admission = d.admission();
    if config.run_strategy != wukong_api::RunStrategy::Halted {
        d.admit(&vm, config.memory).map_err(memory_error)?;
    }
    let rec = d
        .backend
        .store()
        .create(new_record(object, &config, pinned))?;
    drop(admission);
    let seq = latest_seq(&d);
    d.notice(&vm, "created".into(), false);
    d.ensure_worker(&rec);
    Ok(json_response(StatusCode::CREATED, &rec.object, seq))
}

/// A refusal of the memory admission, on `spec.memory`.
fn memory_error(why: String) -> ApiError {
    ApiError::fields(FieldErrors(vec![wukong_api::FieldError::invalid(
        "spec.memory",
        why,
    )]))
}

/// Admits what `spec` asks of `rec`'s VM: its memory, when it would hold more than it does
/// (a grow, or a start of a VM that holds none).
fn admit_spec(d: &Daemon, rec: &VmRecord, spec: &wukong_api::WukongSpec) -> Result<(), ApiError> {
    if spec.run_strategy == Some(wukong_api::RunStrategy::Halted) {
        return Ok(());
    }
    let name = rec.object.metadata.name.clone().unwrap_or_default();
    let wanted = resolve(&name, spec, &rec.pinned)
        .map_err(ApiError::fields)?
        .memory;
    let now = crate::admission::desired_memory(rec);
    let holds = crate::admission::holds_memory(rec);
    if wanted > now.max(rec.definition.memory) || !holds {
        let vm = crate::store::record_ref(rec);
        d.admit(&vm, wanted).map_err(memory_error)?;
    }
    Ok(())
}

/// A VM being deleted takes no change: its worker is gone and its files are going.
fn not_deleting(rec: &VmRecord) -> Result<(), ApiError> {
    match rec.object.metadata.deletion_timestamp {
        Some(_) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "{} is being deleted",
                rec.object.metadata.name.as_deref().unwrap_or_default()
            ),
        )),
        None => Ok(()),
    }
}

/// The record's spec after applying `patch` (a Wukong document, possibly partial), checked as
/// a whole and against what the VM has.
fn patched(d: &Daemon, rec: &VmRecord, patch: &Value) -> Result<wukong_api::WukongSpec, ApiError> {
    not_deleting(rec)?;
    if let Some(k) = patch.get("kind").and_then(Value::as_str)
        && k != "Wukong"
    {
        return Err(ApiError::fields(FieldErrors(vec![
            wukong_api::FieldError::invalid("kind", format!("'{k}' is not Wukong")),
        ])));
    }
    let spec_patch = patch.get("spec").cloned().unwrap_or(json!({}));
    let merged = merge_spec(&rec.object.spec, &spec_patch).map_err(ApiError::fields)?;
    validate_for_backend(&merged, BackendKind::Local).map_err(ApiError::fields)?;
    let name = rec.object.metadata.name.clone().unwrap_or_default();
    let config = resolve(&name, &merged, &rec.pinned).map_err(ApiError::fields)?;
    if config.max_cpu > d.limits.max_cpu || config.max_memory > d.limits.max_memory {
        return Err(ApiError::fields(FieldErrors(vec![
            wukong_api::FieldError::invalid(
                "spec.maxCpu",
                format!(
                    "the host allows at most {} vCPUs and {} per VM",
                    d.limits.max_cpu,
                    wukong_api::Quantity::from_bytes(d.limits.max_memory)
                ),
            ),
        ])));
    }
    wukong_planner::plan::check_allowed(&config, &rec.definition)
        .map_err(|e| ApiError::fields(e.0))?;
    Ok(merged)
}

/// What the desired spec of `rec` would do against the VM as it is now (changes nothing).
async fn plan_against_vm(
    d: &Daemon,
    vm: &VmRef,
    rec: &VmRecord,
) -> Result<wukong_planner::Plan, ApiError> {
    let desired = desired_config(rec).map_err(ApiError::fields)?;
    let observed = d.backend.observe(vm).await.map_err(ApiError::internal)?;
    let caps = d
        .backend
        .capabilities(vm, &observed)
        .await
        .map_err(ApiError::internal)?;
    wukong_planner::plan(&desired, &observed, &caps, jiff::Timestamp::now())
        .map_err(|e| ApiError::fields(e.0))
}

async fn patch(
    State(d): State<Arc<Daemon>>,
    Path((ns, name)): Path<(String, String)>,
    tcp: Option<axum::Extension<OverTcp>>,
    body: Bytes,
) -> ApiResult {
    let vm = VmRef::new(&ns, &name);
    let patch = parse_body(&body)?;
    let expect = patch["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_string);
    let seq = latest_seq(&d);
    let admission = d.admission();
    let rec = d
        .backend
        .store()
        .update::<ApiError>(&vm, expect.as_deref(), |r| {
            let merged = patched(&d, r, &patch)?;
            check_sources(&d, &merged, Some(&r.object.spec), tcp.is_some())?;
            admit_spec(&d, r, &merged)?;
            // Labels and annotations merge as in Kubernetes (a null value removes a key).
            for (field, map) in [
                ("labels", &mut r.object.metadata.labels),
                ("annotations", &mut r.object.metadata.annotations),
            ] {
                if let Some(given) = patch["metadata"][field].as_object() {
                    let m = map.get_or_insert_with(Default::default);
                    for (k, v) in given {
                        match v.as_str() {
                            Some(v) => {
                                m.insert(k.clone(), v.to_string());
                            }
                            None => {
                                m.remove(k);
                            }
                        }
                    }
                }
            }
            if merged != r.object.spec {
                r.object.spec = merged;
                r.object.metadata.generation = Some(r.object.metadata.generation.unwrap_or(1) + 1);
            }
            Ok(())
        })?;
    drop(admission);
    d.ensure_worker(&rec);
    Ok(json_response(StatusCode::OK, &rec.object, seq))
}

async fn plan(
    State(d): State<Arc<Daemon>>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let vm = VmRef::new(&ns, &name);
    let rec = get_record(&d, &vm)?;
    let merged = patched(&d, &rec, &parse_body(&body)?)?;
    let mut preview = rec.clone();
    preview.object.spec = merged;
    let p = plan_against_vm(&d, &vm, &preview).await?;
    Ok(json_response(
        StatusCode::OK,
        &PlanDocument::new(&name, BackendKind::Local, &p),
        latest_seq(&d),
    ))
}

#[derive(Deserialize)]
struct DeleteQuery {
    #[serde(rename = "deleteDisks")]
    delete_disks: Option<bool>,
}

async fn delete(
    State(d): State<Arc<Daemon>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult {
    let vm = VmRef::new(&ns, &name);
    // Marked first, in one transaction: from here on no change, start or worker touches the
    // VM (a PATCH racing the delete could otherwise boot QEMU in the directory being removed).
    let delete_disks = q.delete_disks.unwrap_or(false);
    let rec = d.backend.store().update::<ApiError>(&vm, None, |r| {
        if r.object.metadata.deletion_timestamp.is_none() {
            r.object.metadata.deletion_timestamp = Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
            );
        }
        r.delete_disks |= delete_disks;
        Ok(())
    })?;
    let keep_disks = !rec.delete_disks;
    d.finish_delete(&vm).await.map_err(ApiError::internal)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "Status", "status": "Success", "details": {"name": name, "disksKept": keep_disks, "object": rec.object.metadata}}),
        latest_seq(&d),
    ))
}

async fn lifecycle(d: Arc<Daemon>, ns: String, name: String, cmd: Command) -> ApiResult {
    let vm = VmRef::new(&ns, &name);
    let rec = get_record(&d, &vm)?;
    not_deleting(&rec)?;
    if matches!(cmd, Command::Start) && !crate::admission::holds_memory(&rec) {
        // Admitted and marked as holding its memory in one write under the admission lock,
        // so that two starts at once cannot both count on the same free memory.
        let _admission = d.admission();
        d.backend.store().update::<ApiError>(&vm, None, |r| {
            not_deleting(r)?;
            if !crate::admission::holds_memory(r) {
                d.admit(&vm, crate::admission::desired_memory(r))
                    .map_err(memory_error)?;
                r.stopped_by_user = false;
            }
            Ok(())
        })?;
    }
    let seq = latest_seq(&d);
    let message = d
        .command(&vm, cmd)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "OperationFailed", e))?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "Status", "status": "Success", "message": message}),
        seq,
    ))
}

/// `start` / `stop` follow KubeVirt: under runStrategy Always/Halted they change the
/// runStrategy (a spec change); under Manual, Once and RerunOnFailure they act directly.
async fn start(
    State(d): State<Arc<Daemon>>,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult {
    start_or_stop(
        d,
        ns,
        name,
        wukong_api::RunStrategy::Halted,
        wukong_api::RunStrategy::Always,
        Command::Start,
    )
    .await
}

async fn stop(State(d): State<Arc<Daemon>>, Path((ns, name)): Path<(String, String)>) -> ApiResult {
    start_or_stop(
        d,
        ns,
        name,
        wukong_api::RunStrategy::Always,
        wukong_api::RunStrategy::Halted,
        Command::Stop,
    )
    .await
}

async fn start_or_stop(
    d: Arc<Daemon>,
    ns: String,
    name: String,
    from: wukong_api::RunStrategy,
    to: wukong_api::RunStrategy,
    command: Command,
) -> ApiResult {
    if switch_strategy(&d, &ns, &name, from, to)? {
        return Ok(json_response(
            StatusCode::OK,
            &json!({"kind": "Status", "status": "Success", "message": format!("runStrategy set to {to:?}")}),
            latest_seq(&d),
        ));
    }
    lifecycle(d, ns, name, command).await
}

fn switch_strategy(
    d: &Arc<Daemon>,
    ns: &str,
    name: &str,
    from: wukong_api::RunStrategy,
    to: wukong_api::RunStrategy,
) -> Result<bool, ApiError> {
    let vm = VmRef::new(ns, name);
    let rec = get_record(d, &vm)?;
    if rec.object.spec.run_strategy.unwrap_or_default() != from {
        return Ok(false);
    }
    let _admission = d.admission();
    let rec = d.backend.store().update::<ApiError>(&vm, None, |r| {
        not_deleting(r)?;
        let mut spec = r.object.spec.clone();
        spec.run_strategy = Some(to);
        admit_spec(d, r, &spec)?;
        r.object.spec.run_strategy = Some(to);
        r.object.metadata.generation = Some(r.object.metadata.generation.unwrap_or(1) + 1);
        Ok(())
    })?;
    d.ensure_worker(&rec);
    Ok(true)
}

async fn restart(
    State(d): State<Arc<Daemon>>,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult {
    lifecycle(d, ns, name, Command::Restart).await
}

/// Returns the desired spec to the last one that converged. Disks never shrink: a disk grown
/// since keeps its size, and the answer says so.
async fn rollback(
    State(d): State<Arc<Daemon>>,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult {
    let vm = VmRef::new(&ns, &name);
    let seq = latest_seq(&d);
    let mut notes = Vec::new();
    let rec = d.backend.store().update::<ApiError>(&vm, None, |r| {
        not_deleting(r)?;
        let Some((generation, last)) = r.last_converged.clone() else {
            return Err(ApiError::new(StatusCode::CONFLICT, "NothingToRollBackTo", format!("wukong {vm} has not converged to any spec yet")));
        };
        let mut spec = last;
        for disk in spec.disks.iter_mut().flatten() {
            let now = r.object.spec.disks.iter().flatten().find(|x| x.name == disk.name);
            if let Some(now) = now
                && now.size.bytes().unwrap_or(0) > disk.size.bytes().unwrap_or(0)
            {
                notes.push(format!("disk {} stays at {} (it was {} at generation {generation}, and disks never shrink)", disk.name, now.size, disk.size));
                disk.size = now.size.clone();
            }
        }
        let config = resolve(&name, &spec, &r.pinned).map_err(ApiError::fields)?;
        wukong_planner::plan::check_allowed(&config, &r.definition).map_err(|e| ApiError::fields(e.0))?;
        notes.insert(0, format!("desired spec set back to generation {generation}'s"));
        if spec != r.object.spec {
            r.object.spec = spec;
            r.object.metadata.generation = Some(r.object.metadata.generation.unwrap_or(1) + 1);
        }
        Ok(())
    })?;
    let plan = plan_against_vm(&d, &vm, &rec).await?;
    d.ensure_worker(&rec);
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "Status", "status": "Success", "message": notes.join("; "), "object": rec.object, "plan": PlanDocument::new(&name, BackendKind::Local, &plan)}),
        seq,
    ))
}

/// Longest a guest command may run through `exec`.
const MAX_EXEC_SECONDS: u64 = 3600;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecBody {
    command: Vec<String>,
    timeout_seconds: Option<u64>,
}

async fn exec(
    State(d): State<Arc<Daemon>>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let vm = VmRef::new(&ns, &name);
    let b: ExecBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("exec body: {e}"),
        )
    })?;
    if b.command.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "command: must not be empty",
        ));
    }
    let timeout = b.timeout_seconds.unwrap_or(60);
    if !(1..=MAX_EXEC_SECONDS).contains(&timeout) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("timeoutSeconds: {timeout} is not between 1 and {MAX_EXEC_SECONDS}"),
        ));
    }
    get_record(&d, &vm)?;
    let out = d
        .backend
        .exec(&vm, &b.command, Duration::from_secs(timeout))
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "GuestUnavailable", e.to_string()))?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"exitCode": out.code, "stdout": out.out(), "stderr": String::from_utf8_lossy(&out.stderr)}),
        latest_seq(&d),
    ))
}

#[derive(Deserialize)]
struct LogsQuery {
    tail: Option<usize>,
}

async fn logs(
    State(d): State<Arc<Daemon>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<LogsQuery>,
) -> ApiResult {
    let vm = VmRef::new(&ns, &name);
    get_record(&d, &vm)?;
    let text = std::fs::read(VmFiles::console(&d.backend.dir(&vm))).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(q.tail.unwrap_or(lines.len()));
    let mut r = Response::new(Body::from(lines[from..].join("\n") + "\n"));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(r)
}

#[derive(Deserialize)]
struct EventsQuery {
    since: Option<u64>,
    limit: Option<usize>,
    watch: Option<bool>,
}

async fn events(
    State(d): State<Arc<Daemon>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<EventsQuery>,
    _headers: HeaderMap,
) -> ApiResult {
    let vm = VmRef::new(&ns, &name);
    let since = q.since.unwrap_or(0);
    let rx = d.events.subscribe();
    let past = d
        .backend
        .store()
        .events(Some(&vm), since, q.limit.unwrap_or(200))?;
    if q.watch != Some(true) {
        return Ok(json_response(
            StatusCode::OK,
            &json!({"kind": "EventList", "items": past}),
            latest_seq(&d),
        ));
    }
    let last = past.last().map_or(since, |e| e.seq);
    let live = tokio_stream_of(rx).filter(move |e| {
        let keep = e.vm == vm && (e.seq == 0 || e.seq > last);
        async move { keep }
    });
    let stream = futures_util::stream::iter(past).chain(live).map(|e| {
        Ok::<_, std::convert::Infallible>(Bytes::from(format!(
            "{}\n",
            serde_json::to_string(&e).unwrap_or_default()
        )))
    });
    Ok(ndjson(Body::from_stream(stream)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn docs_api_yaml_documents_every_path() {
        let doc: serde_json::Value = serde_yaml::from_str(
            &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api.yaml"))
                .unwrap(),
        )
        .unwrap();
        let documented: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
        let served = super::paths();
        for p in &served {
            assert!(
                documented.contains(&p),
                "{p} is served but not in docs/api.yaml"
            );
        }
        for p in documented {
            assert!(served.contains(p), "{p} is in docs/api.yaml but not served");
        }
    }
}

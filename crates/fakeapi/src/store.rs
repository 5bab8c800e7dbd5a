//! The object store of the fake API server: every write goes through [`Store::write`], which
//! applies the rules a real API server applies (preconditions, status subresource, generation,
//! finalizers, schema + CEL + webhook validation, PVC resize rules) and records a watch event.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use crate::quantity::bytes;
use crate::schema::Swagger;
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// A served resource.
#[derive(Debug, PartialEq, Eq)]
pub struct Kind {
    /// API group (`""` for core).
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Plural resource name.
    pub plural: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Has a status subresource (main writes keep status, status writes keep the rest).
    pub status: bool,
    /// Keeps `metadata.generation`.
    pub generation: bool,
}

macro_rules! kind {
    ($g:expr, $v:expr, $p:expr, $k:expr, $ns:expr, $st:expr, $gen:expr) => {
        Kind {
            group: $g,
            version: $v,
            plural: $p,
            kind: $k,
            namespaced: $ns,
            status: $st,
            generation: $gen,
        }
    };
}

/// Every resource this server serves.
pub static KINDS: &[Kind] = &[
    kind!("", "v1", "namespaces", "Namespace", false, true, false),
    kind!(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        true,
        true
    ),
    kind!(
        "",
        "v1",
        "serviceaccounts",
        "ServiceAccount",
        true,
        false,
        false
    ),
    kind!(
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "Role",
        true,
        false,
        false
    ),
    kind!(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "RoleBinding",
        true,
        false,
        false
    ),
    kind!(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "ClusterRole",
        false,
        false,
        false
    ),
    kind!(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
        false,
        false
    ),
    kind!("", "v1", "pods", "Pod", true, true, false),
    kind!(
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        true,
        true,
        false
    ),
    kind!("", "v1", "events", "Event", true, false, false),
    kind!("events.k8s.io", "v1", "events", "Event", true, false, false),
    kind!(
        "storage.k8s.io",
        "v1",
        "storageclasses",
        "StorageClass",
        false,
        false,
        false
    ),
    kind!(
        "coordination.k8s.io",
        "v1",
        "leases",
        "Lease",
        true,
        false,
        false
    ),
    kind!(
        "kubevirt.io",
        "v1",
        "kubevirts",
        "KubeVirt",
        true,
        true,
        true
    ),
    kind!(
        "kubevirt.io",
        "v1",
        "virtualmachines",
        "VirtualMachine",
        true,
        true,
        true
    ),
    // KubeVirt's VMI CRD has no status subresource: status is written with the object.
    kind!(
        "kubevirt.io",
        "v1",
        "virtualmachineinstances",
        "VirtualMachineInstance",
        true,
        false,
        true
    ),
    // CDI's DataVolume (KubeVirt's swagger holds its spec).
    kind!(
        "cdi.kubevirt.io",
        "v1beta1",
        "datavolumes",
        "DataVolume",
        true,
        true,
        true
    ),
    kind!("", "v1", "nodes", "Node", false, true, false),
    kind!("", "v1", "services", "Service", true, true, false),
    kind!(
        "apiregistration.k8s.io",
        "v1",
        "apiservices",
        "APIService",
        false,
        true,
        false
    ),
    kind!(
        "vm.novasphere.dev",
        "v1alpha1",
        "wukongs",
        "Wukong",
        true,
        true,
        true
    ),
];

impl Kind {
    /// The served kind for `group`/`version`/`plural`.
    pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Kind> {
        KINDS
            .iter()
            .find(|k| k.group == group && k.version == version && k.plural == plural)
    }

    /// The kind by its name and group.
    pub fn named(group: &str, kind: &str) -> &'static Kind {
        KINDS
            .iter()
            .find(|k| k.group == group && k.kind == kind)
            .expect("a served kind")
    }

    /// `apiVersion` of its objects.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// An API error, as the `Status` object a real server returns.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// HTTP code.
    pub code: u16,
    /// `NotFound`, `Conflict`, `Invalid`…
    pub reason: &'static str,
    /// Human message.
    pub message: String,
    /// The `details` of the `Status` (causes), when there are any.
    pub details: Option<Value>,
}

impl ApiError {
    /// A new error.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 404 for object `name` of `kind`, worded as a real server words it.
    pub fn not_found(kind: &Kind, name: &str) -> Self {
        let what = if kind.group.is_empty() {
            kind.plural.to_string()
        } else {
            format!("{}.{}", kind.plural, kind.group)
        };
        ApiError::new(404, "NotFound", format!("{what} \"{name}\" not found"))
    }

    fn invalid(kind: &Kind, name: &str, causes: &[String]) -> Self {
        ApiError::new(
            422,
            "Invalid",
            format!(
                "{}.{} \"{name}\" is invalid: {}",
                kind.kind,
                kind.group,
                causes.join("; ")
            ),
        )
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "code": self.code});
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }

    /// 403 for a create in a namespace being deleted, as the NamespaceLifecycle admission
    /// plugin words it.
    fn namespace_terminating(kind: &Kind, name: &str, ns: &str) -> Self {
        let mut e = ApiError::new(
            403,
            "Forbidden",
            format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                kind.plural
            ),
        );
        e.details = Some(json!({"name": name, "kind": kind.plural, "causes": [{
            "reason": "NamespaceTerminating",
            "message": format!("namespace {ns} is being terminated"),
            "field": "metadata.namespace"}]}));
        e
    }
}

/// One recorded change, as a watch event.
#[derive(Clone, Debug)]
pub struct Change {
    /// Resource version of the change.
    pub rv: u64,
    /// The kind.
    pub kind: &'static Kind,
    /// `ADDED`, `MODIFIED`, `DELETED`.
    pub kind_of_change: &'static str,
    /// The object after the change (before, for DELETED).
    pub object: Value,
    /// The watch line, serialized once for every watcher.
    pub line: std::sync::OnceLock<axum::body::Bytes>,
}

type Key = (&'static str, &'static str, String, String);

fn key(kind: &'static Kind, ns: &str, name: &str) -> Key {
    (kind.group, kind.plural, ns.to_string(), name.to_string())
}

struct Inner {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    uid: u64,
    history: VecDeque<Arc<Change>>,
    /// Changes up to this version are gone from the history: a watch from before gets 410.
    compacted: u64,
    /// Injected conflicts: (plural, name) → how many writes still fail with 409.
    conflicts: BTreeMap<(String, String), u32>,
    /// Writes seen per (plural, verb), for tests and the benchmark.
    writes: BTreeMap<(String, String), u64>,
}

/// How the store applies a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sub {
    /// The object itself.
    Main,
    /// `/status`.
    Status,
}

/// How a delete treats the object's dependents (`propagationPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// The object goes now; the garbage collector deletes its dependents afterwards.
    Background,
    /// The object waits (finalizer `foregroundDeletion`) until the garbage collector has
    /// deleted the dependents that block their owner's deletion.
    Foreground,
    /// The dependents stay, without their owner reference.
    Orphan,
}

const FOREGROUND: &str = "foregroundDeletion";

/// The store. Cheap to share (`Arc`).
pub struct Store {
    /// Itself, for the garbage collector's work after a request returns.
    me: std::sync::Weak<Store>,
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Change>>,
    history_limit: usize,
    kubevirt: Swagger,
    /// Validators built from each stored CRD, by CRD name, with the resourceVersion they
    /// were built from.
    crds: Mutex<BTreeMap<String, (String, Arc<CrdRules>)>>,
    /// Bumped to end every open watch (with [`Store::compact`]).
    pub closed: tokio::sync::watch::Sender<u64>,
}

/// Now, as object timestamps are written.
pub(crate) fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn rv_of(v: &Value) -> Option<u64> {
    v["metadata"]["resourceVersion"].as_str()?.parse().ok()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect()
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Groups served only through an installed CRD, checked by its schema and CEL rules (the
/// KubeVirt kinds stand for KubeVirt's CRDs and are checked by KubeVirt's swagger).
const CRD_GROUPS: [&str; 1] = ["vm.novasphere.dev"];

/// `object` without apiVersion, kind and metadata — the server's own, whatever a schema
/// says — and those three apart.
fn without_server_fields(object: &Value) -> (Value, serde_json::Map<String, Value>) {
    let mut body = object.clone();
    let mut server = serde_json::Map::new();
    if let Some(o) = body.as_object_mut() {
        for k in ["apiVersion", "kind", "metadata"] {
            if let Some(v) = o.remove(k) {
                server.insert(k.into(), v);
            }
        }
    }
    (body, server)
}

/// The store key of the CRD that serves `kind`.
fn crd_key(kind: &Kind) -> Key {
    let crds = Kind::named("apiextensions.k8s.io", "CustomResourceDefinition");
    key(crds, "", &format!("{}.{}", kind.plural, kind.group))
}

/// What a stored CRD's version checks: its OpenAPI schema and its CEL rules.
pub struct CrdRules {
    name: &'static str,
    schema: Swagger,
    cel: kube::core::cel::CompiledSchema,
}

impl CrdRules {
    fn new(kind: &Kind, crd: &Value) -> Option<CrdRules> {
        let version = crd["spec"]["versions"]
            .as_array()?
            .iter()
            .find(|v| v["name"] == kind.version)?;
        let schema = version["schema"]["openAPIV3Schema"].clone();
        Some(CrdRules {
            name: kind.kind,
            cel: kube::core::cel::compile_schema(&schema),
            schema: Swagger::single(kind.kind, schema),
        })
    }

    /// Every problem of `new` (replacing `old`), in the real server's words.
    fn check(&self, new: &Value, old: Option<&Value>) -> Vec<String> {
        let (body, _) = without_server_fields(new);
        let mut errors = self.schema.validate(self.name, &body);
        if let Err(cel) = kube::core::cel::Validator::new().validate_compiled(&self.cel, new, old) {
            errors.extend(cel.iter().map(|e| {
                let at = if e.field_path.is_empty() {
                    "<root>".to_string()
                } else {
                    e.field_path.clone()
                };
                format!("{at}: Invalid value: {}", e.message)
            }));
        }
        errors
    }
}

impl Store {
    /// Drops the fields `obj`'s schema does not know (outside apiVersion, kind and
    /// metadata), as a real server decodes a request; returns their paths
    /// (`spec.disks[0].extra`). Kinds without a schema here keep everything.
    pub fn prune(&self, kind: &Kind, obj: &mut Value) -> Vec<String> {
        let (mut body, keep) = without_server_fields(obj);
        let dropped = if CRD_GROUPS.contains(&kind.group) {
            let g = self.inner.lock().expect("store");
            match self.crd_rules(&g, kind) {
                Some(rules) => rules.schema.prune(rules.name, &mut body),
                None => Vec::new(),
            }
        } else if kind.group == "kubevirt.io" {
            self.kubevirt.prune(&format!("v1.{}", kind.kind), &mut body)
        } else {
            Vec::new()
        };
        if !dropped.is_empty()
            && let Some(o) = body.as_object_mut()
        {
            o.extend(keep);
            *obj = body;
        }
        dropped
    }

    /// Whether `kind` is served: a custom resource only once its CRD is installed.
    pub fn served(&self, kind: &Kind) -> bool {
        !CRD_GROUPS.contains(&kind.group)
            || self
                .inner
                .lock()
                .expect("store")
                .objects
                .contains_key(&crd_key(kind))
    }

    /// The rules of the installed CRD serving `kind`, if one is installed.
    fn crd_rules(&self, g: &Inner, kind: &Kind) -> Option<Arc<CrdRules>> {
        let name = format!("{}.{}", kind.plural, kind.group);
        let crd = g.objects.get(&crd_key(kind))?;
        let rv = crd["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut cache = self.crds.lock().expect("crds");
        if let Some((seen, rules)) = cache.get(&name)
            && *seen == rv
        {
            return Some(rules.clone());
        }
        let rules = Arc::new(CrdRules::new(kind, crd)?);
        cache.insert(name, (rv, rules.clone()));
        Some(rules)
    }

    /// An empty store keeping `history_limit` changes for watches to resume from.
    pub fn new(history_limit: usize) -> Arc<Store> {
        let swagger: Value = serde_json::from_str(include_str!(
            "../../kubevirt/tests/fixtures/kubevirt-v1.9.0-swagger.json"
        ))
        .expect("the swagger fixture parses");
        let (tx, _) = broadcast::channel(1 << 16);
        Arc::new_cyclic(|me| Store {
            me: me.clone(),
            inner: Mutex::new(Inner {
                objects: BTreeMap::new(),
                rv: 1000,
                uid: 0,
                history: VecDeque::new(),
                compacted: 0,
                conflicts: BTreeMap::new(),
                writes: BTreeMap::new(),
            }),
            tx,
            history_limit,
            kubevirt: Swagger::new(&swagger).expect("the swagger fixture has definitions"),
            crds: Mutex::new(BTreeMap::new()),
            closed: tokio::sync::watch::channel(0).0,
        })
    }

    /// Subscribes to changes (taken before reading the history, so nothing falls between).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }

    /// The current resource version.
    pub fn resource_version(&self) -> u64 {
        self.inner.lock().expect("store").rv
    }

    /// Changes after `rv` of `kind`, or `Err(oldest)` when they are no longer kept (410).
    pub fn since(&self, kind: &Kind, rv: u64) -> Result<Vec<Arc<Change>>, u64> {
        let g = self.inner.lock().expect("store");
        if rv < g.compacted {
            return Err(g.compacted);
        }
        Ok(g.history
            .iter()
            .filter(|c| c.rv > rv && std::ptr::eq(c.kind, kind))
            .cloned()
            .collect())
    }

    /// Forgets the history and ends every watch: clients must resume, get 410, and re-list.
    pub fn compact(&self) {
        let mut g = self.inner.lock().expect("store");
        g.history.clear();
        g.compacted = g.rv;
        drop(g);
        self.closed.send_modify(|n| *n += 1);
    }

    /// Makes the next `n` writes of `plural`/`name` fail with 409 Conflict.
    pub fn inject_conflicts(&self, plural: &str, name: &str, n: u32) {
        self.inner
            .lock()
            .expect("store")
            .conflicts
            .insert((plural.into(), name.into()), n);
    }

    /// How many writes of `verb` (`create`, `update`, `patch`, `delete`) on `plural` were made.
    pub fn writes(&self, plural: &str, verb: &str) -> u64 {
        *self
            .inner
            .lock()
            .expect("store")
            .writes
            .get(&(plural.into(), verb.into()))
            .unwrap_or(&0)
    }

    /// Counts a write attempt.
    pub fn count(&self, plural: &str, verb: &str) {
        *self
            .inner
            .lock()
            .expect("store")
            .writes
            .entry((plural.into(), verb.into()))
            .or_default() += 1;
    }

    /// One object, or 404.
    pub fn fetch(&self, kind: &'static Kind, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.get(kind, ns, name)
            .ok_or_else(|| ApiError::not_found(kind, name))
    }

    /// One object.
    pub fn get(&self, kind: &'static Kind, ns: &str, name: &str) -> Option<Value> {
        self.inner
            .lock()
            .expect("store")
            .objects
            .get(&key(kind, ns, name))
            .cloned()
    }

    /// Objects of `kind` in `ns` (every namespace when `None`), and the resource version.
    pub fn list(&self, kind: &'static Kind, ns: Option<&str>) -> (Vec<Value>, u64) {
        let g = self.inner.lock().expect("store");
        let items = g
            .objects
            .iter()
            .filter(|((gr, pl, n, _), _)| {
                *gr == kind.group && *pl == kind.plural && ns.is_none_or(|ns| ns == n)
            })
            .map(|(_, v)| v.clone())
            .collect();
        (items, g.rv)
    }

    /// How many objects of `kind` there are, and how many satisfy `f` (without copying any).
    pub fn tally(&self, kind: &'static Kind, f: impl Fn(&Value) -> bool) -> (usize, usize) {
        let g = self.inner.lock().expect("store");
        let mut n = (0, 0);
        for ((gr, pl, _, _), v) in &g.objects {
            if *gr == kind.group && *pl == kind.plural {
                n.0 += 1;
                n.1 += usize::from(f(v));
            }
        }
        n
    }

    fn record(&self, g: &mut Inner, kind: &'static Kind, what: &'static str, object: Value) {
        let change = Arc::new(Change {
            rv: g.rv,
            kind,
            kind_of_change: what,
            object,
            line: Default::default(),
        });
        g.history.push_back(change.clone());
        while g.history.len() > self.history_limit {
            if let Some(c) = g.history.pop_front() {
                g.compacted = c.rv;
            }
        }
        let _ = self.tx.send(change);
    }

    fn validate(&self, g: &Inner, kind: &Kind, new: &Value, old: Option<&Value>) -> Vec<String> {
        let mut errors = Vec::new();
        match kind.kind {
            _ if CRD_GROUPS.contains(&kind.group) => match self.crd_rules(g, kind) {
                Some(rules) => errors.extend(rules.check(new, old)),
                None => errors.push(format!(
                    "no CustomResourceDefinition {}.{} is installed",
                    kind.plural, kind.group
                )),
            },
            "VirtualMachine" => {
                errors.extend(self.kubevirt.validate("v1.VirtualMachine", new));
                errors.extend(crate::webhook::check_vm(new));
            }
            "VirtualMachineInstance" => {
                errors.extend(self.kubevirt.validate("v1.VirtualMachineInstance", new))
            }
            "KubeVirt" => errors.extend(self.kubevirt.validate("v1.KubeVirt", new)),
            "DataVolume" => errors.extend(
                self.kubevirt
                    .validate("v1beta1.DataVolumeSpec", &new["spec"])
                    .into_iter()
                    .map(|e| format!("spec: {e}")),
            ),
            "PersistentVolumeClaim" => errors.extend(pvc_rules(new, old)),
            "CustomResourceDefinition" => {
                for v in new["spec"]["versions"].as_array().into_iter().flatten() {
                    errors.extend(crate::crd_cost::refused_rules(
                        &v["schema"]["openAPIV3Schema"],
                    ));
                }
            }
            _ => {}
        }
        errors
    }

    /// Creates `obj` of `kind` in `ns`.
    pub fn create(&self, kind: &'static Kind, ns: &str, obj: Value) -> Result<Value, ApiError> {
        self.create_inner(kind, ns, obj, false)
    }

    /// What [`Store::create`] would answer (`dryRun=All`): every check, nothing stored.
    pub fn create_dry(&self, kind: &'static Kind, ns: &str, obj: Value) -> Result<Value, ApiError> {
        self.create_inner(kind, ns, obj, true)
    }

    fn create_inner(
        &self,
        kind: &'static Kind,
        ns: &str,
        mut obj: Value,
        dry: bool,
    ) -> Result<Value, ApiError> {
        self.count(kind.plural, "create");
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !is_dns_subdomain(&name) {
            return Err(ApiError::invalid(
                kind,
                &name,
                &[format!(
                    "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain"
                )],
            ));
        }
        if obj["apiVersion"] != kind.api_version() || obj["kind"] != kind.kind {
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!(
                    "the body is {} {}, not {} {}",
                    obj["apiVersion"],
                    obj["kind"],
                    kind.api_version(),
                    kind.kind
                ),
            ));
        }
        let mut g = self.inner.lock().expect("store");
        let k = key(kind, if kind.namespaced { ns } else { "" }, &name);
        // A namespace nobody created exists implicitly; one being deleted takes nothing new.
        if kind.namespaced
            && g.objects
                .get(&key(namespace_kind(), "", ns))
                .is_some_and(|n| n["metadata"].get("deletionTimestamp").is_some())
        {
            return Err(ApiError::namespace_terminating(kind, &name, ns));
        }
        if g.objects.contains_key(&k) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{}.{} \"{name}\" already exists", kind.plural, kind.group),
            ));
        }
        if kind.status
            && kind.kind == "Wukong"
            && let Some(o) = obj.as_object_mut()
        {
            o.remove("status");
        }
        g.rv += 1;
        g.uid += 1;
        let md = &mut obj["metadata"];
        if kind.namespaced {
            md["namespace"] = json!(ns);
        } else if let Some(m) = md.as_object_mut() {
            m.remove("namespace");
        }
        md["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", g.uid));
        md["resourceVersion"] = json!(g.rv.to_string());
        md["creationTimestamp"] = json!(now());
        if kind.generation {
            md["generation"] = json!(1);
        }
        if let Some(m) = md.as_object_mut() {
            m.remove("deletionTimestamp");
        }
        if kind.kind == "PersistentVolumeClaim" && obj["spec"].get("storageClassName").is_none() {
            // The DefaultStorageClass admission plugin.
            let default = g
                .objects
                .iter()
                .find(|((gr, pl, _, _), v)| {
                    *gr == "storage.k8s.io"
                        && *pl == "storageclasses"
                        && v["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"]
                            == "true"
                })
                .map(|(_, v)| v["metadata"]["name"].clone());
            if let Some(sc) = default {
                obj["spec"]["storageClassName"] = sc;
            }
        }
        let errors = self.validate(&g, kind, &obj, None);
        if !errors.is_empty() {
            g.rv -= 1;
            return Err(ApiError::invalid(kind, &name, &errors));
        }
        if dry {
            g.rv -= 1;
            g.uid -= 1;
            return Ok(obj);
        }
        g.objects.insert(k, obj.clone());
        self.record(&mut g, kind, "ADDED", obj.clone());
        Ok(obj)
    }

    /// Replaces the object (or its status) with `new`, as PUT does; PATCH computes `new` first.
    pub fn update(
        &self,
        kind: &'static Kind,
        ns: &str,
        name: &str,
        mut new: Value,
        sub: Sub,
    ) -> Result<Value, ApiError> {
        let mut g = self.inner.lock().expect("store");
        let ns = if kind.namespaced { ns } else { "" };
        let k = key(kind, ns, name);
        let Some(old) = g.objects.get(&k).cloned() else {
            return Err(ApiError::not_found(kind, name));
        };
        if let Some(n) = g
            .conflicts
            .get_mut(&(kind.plural.to_string(), name.to_string()))
            && *n > 0
        {
            *n -= 1;
            return Err(conflict(kind, name));
        }
        if new["metadata"]["name"].as_str().is_some_and(|n| n != name) {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the name of the object does not match the name on the URL",
            ));
        }
        if let Some(rv) = rv_of(&new)
            && Some(rv) != rv_of(&old)
        {
            return Err(conflict(kind, name));
        }
        let mut result = match (sub, kind.status) {
            (Sub::Status, _) => {
                let mut r = old.clone();
                r["status"] = new["status"].take();
                r
            }
            (Sub::Main, true) => {
                let mut r = new;
                match old.get("status") {
                    Some(s) => r["status"] = s.clone(),
                    None => {
                        if let Some(o) = r.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
                r
            }
            (Sub::Main, false) => new,
        };
        // What the client cannot change.
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "namespace",
            "name",
            "generation",
        ] {
            match old["metadata"].get(f) {
                Some(v) => result["metadata"][f] = v.clone(),
                None => {
                    if let Some(m) = result["metadata"].as_object_mut() {
                        m.remove(f);
                    }
                }
            }
        }
        result["apiVersion"] = old["apiVersion"].clone();
        result["kind"] = old["kind"].clone();
        if old["metadata"].get("deletionTimestamp").is_some() {
            let before: HashSet<String> = strings(&old["metadata"]["finalizers"])
                .into_iter()
                .collect();
            if strings(&result["metadata"]["finalizers"])
                .iter()
                .any(|f| !before.contains(f))
            {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!(
                        "{}.{} \"{name}\" is invalid: metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
                        kind.kind, kind.group
                    ),
                ));
            }
        }
        result["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if result == old {
            return Ok(old);
        }
        if kind.generation && sub == Sub::Main {
            let body = |v: &Value| {
                let mut v = v.clone();
                if let Some(o) = v.as_object_mut() {
                    o.remove("metadata");
                    o.remove("status");
                }
                v
            };
            if body(&result) != body(&old) {
                let gen_ = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                result["metadata"]["generation"] = json!(gen_);
            }
        }
        if kind.kind == "PersistentVolumeClaim" && sub == Sub::Main {
            pvc_resize_admission(&g, name, &result, &old)?;
        }
        let errors = self.validate(&g, kind, &result, Some(&old));
        if !errors.is_empty() {
            return Err(ApiError::invalid(kind, name, &errors));
        }
        g.rv += 1;
        result["metadata"]["resourceVersion"] = json!(g.rv.to_string());
        if result["metadata"].get("deletionTimestamp").is_some()
            && strings(&result["metadata"]["finalizers"]).is_empty()
        {
            return Ok(self.remove(g, kind, &k, result));
        }
        g.objects.insert(k, result.clone());
        self.record(&mut g, kind, "MODIFIED", result.clone());
        Ok(result)
    }

    /// Deletes the object: marks it while finalizers remain, removes it otherwise.
    pub fn delete(&self, kind: &'static Kind, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.delete_with(kind, ns, name, Propagation::Background)
    }

    /// Runs `f` after the current request, as the garbage collector works: on the runtime
    /// when there is one, else at once.
    fn later(&self, f: impl FnOnce(&Store) + Send + 'static) {
        match (tokio::runtime::Handle::try_current(), self.me.upgrade()) {
            (Ok(rt), Some(me)) => {
                rt.spawn(async move {
                    tokio::task::yield_now().await;
                    f(&me);
                });
            }
            _ => f(self),
        }
    }

    /// Objects whose owner references name `uid` (with whether they block its deletion).
    fn dependents(&self, uid: &str) -> Vec<(&'static Kind, String, String, bool)> {
        let g = self.inner.lock().expect("store");
        g.objects
            .iter()
            .filter_map(|((gr, pl, ns, name), v)| {
                let r = v["metadata"]["ownerReferences"]
                    .as_array()?
                    .iter()
                    .find(|r| r["uid"] == uid)?;
                let kind = KINDS.iter().find(|k| k.group == *gr && k.plural == *pl)?;
                Some((
                    kind,
                    ns.clone(),
                    name.clone(),
                    r["blockOwnerDeletion"] == true,
                ))
            })
            .collect()
    }

    /// The garbage collector's foreground step for the owner `(kind, ns, name)`: once no
    /// blocking dependent is left, its `foregroundDeletion` finalizer goes.
    fn finish_foreground(&self, kind: &'static Kind, ns: &str, name: &str) {
        let Some(owner) = self.get(kind, ns, name) else {
            return;
        };
        let uid = owner["metadata"]["uid"].as_str().unwrap_or_default();
        if !strings(&owner["metadata"]["finalizers"])
            .iter()
            .any(|f| f == FOREGROUND)
            || self.dependents(uid).iter().any(|d| d.3)
        {
            return;
        }
        let mut new = owner.clone();
        if let Some(f) = new["metadata"]["finalizers"].as_array_mut() {
            f.retain(|f| f != FOREGROUND);
        }
        let _ = self.update(kind, ns, name, new, Sub::Main);
    }

    /// Deletes the object with `propagation` for its dependents (see [`Propagation`]).
    pub fn delete_with(
        &self,
        kind: &'static Kind,
        ns: &str,
        name: &str,
        propagation: Propagation,
    ) -> Result<Value, ApiError> {
        if kind != namespace_kind()
            && let Some(obj) = self.get(kind, ns, name)
        {
            let uid = obj["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            match propagation {
                Propagation::Orphan => {
                    for (k, dns, dname, _) in self.dependents(&uid) {
                        if let Some(mut d) = self.get(k, &dns, &dname) {
                            if let Some(refs) = d["metadata"]["ownerReferences"].as_array_mut() {
                                refs.retain(|r| r["uid"] != uid.as_str());
                            }
                            let _ = self.update(k, &dns, &dname, d, Sub::Main);
                        }
                    }
                }
                Propagation::Foreground if obj["metadata"].get("deletionTimestamp").is_none() => {
                    let mut marked = obj.clone();
                    let mut finalizers = strings(&obj["metadata"]["finalizers"]);
                    finalizers.push(FOREGROUND.into());
                    marked["metadata"]["finalizers"] = json!(finalizers);
                    self.update(kind, ns, name, marked, Sub::Main)?;
                    let (ns, name) = (ns.to_string(), name.to_string());
                    self.later(move |s| {
                        s.collect_garbage(&uid);
                        s.finish_foreground(kind, &ns, &name);
                    });
                }
                _ => {}
            }
        }
        self.count(kind.plural, "delete");
        let mut g = self.inner.lock().expect("store");
        let ns = if kind.namespaced { ns } else { "" };
        let k = key(kind, ns, name);
        let Some(mut obj) = g.objects.get(&k).cloned() else {
            return Err(ApiError::not_found(kind, name));
        };
        g.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(g.rv.to_string());
        if kind == namespace_kind() {
            // The namespace controller: Terminating, then everything in it is deleted (each
            // object after its finalizers), then the namespace itself.
            if obj["metadata"].get("deletionTimestamp").is_none() {
                obj["metadata"]["deletionTimestamp"] = json!(now());
                obj["status"]["phase"] = json!("Terminating");
                g.objects.insert(k, obj.clone());
                self.record(&mut g, kind, "MODIFIED", obj.clone());
            } else {
                g.rv -= 1;
            }
            drop(g);
            self.empty_namespace(name);
            return Ok(obj);
        }
        if !strings(&obj["metadata"]["finalizers"]).is_empty() {
            if obj["metadata"].get("deletionTimestamp").is_none() {
                obj["metadata"]["deletionTimestamp"] = json!(now());
                obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                // Marking for deletion bumps the generation, as a real server does.
                if kind.generation {
                    let g = obj["metadata"]["generation"].as_i64().unwrap_or(1);
                    obj["metadata"]["generation"] = json!(g + 1);
                }
                g.objects.insert(k, obj.clone());
                self.record(&mut g, kind, "MODIFIED", obj.clone());
            } else {
                g.rv -= 1;
            }
            return Ok(obj);
        }
        Ok(self.remove(g, kind, &k, obj))
    }

    /// Removes the object at `k` for good, then what it owned.
    fn remove(
        &self,
        mut g: std::sync::MutexGuard<'_, Inner>,
        kind: &'static Kind,
        k: &Key,
        obj: Value,
    ) -> Value {
        g.objects.remove(k);
        self.record(&mut g, kind, "DELETED", obj.clone());
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
        let terminating = kind.namespaced
            && g.objects
                .get(&key(namespace_kind(), "", ns))
                .is_some_and(|n| n["metadata"].get("deletionTimestamp").is_some());
        let last = terminating && !holds_any(&g, ns);
        drop(g);
        // In a namespace being emptied, what the object owned goes anyway (owners and
        // dependents share a namespace). Elsewhere the garbage collector deletes the
        // dependents after the owner is gone, and lets an owner waiting in the foreground go
        // once its last blocking dependent has.
        if !terminating && let Some(uid) = obj["metadata"]["uid"].as_str() {
            let uid = uid.to_string();
            self.later(move |s| s.collect_garbage(&uid));
        }
        if obj["metadata"]["ownerReferences"]
            .as_array()
            .is_some_and(|refs| !refs.is_empty())
        {
            let refs = obj["metadata"]["ownerReferences"].clone();
            let ns = ns.to_string();
            self.later(move |s| {
                for r in refs.as_array().into_iter().flatten() {
                    let group = r["apiVersion"]
                        .as_str()
                        .and_then(|v| v.rsplit_once('/'))
                        .map_or("", |(g, _)| g);
                    if let Some(k) = KINDS
                        .iter()
                        .find(|k| k.group == group && Some(k.kind) == r["kind"].as_str())
                    {
                        s.finish_foreground(k, &ns, r["name"].as_str().unwrap_or_default());
                    }
                }
            });
        }
        if last {
            self.empty_namespace(ns);
        }
        obj
    }

    /// Deletes everything in namespace `ns` (being deleted), and the namespace once nothing
    /// is left in it.
    fn empty_namespace(&self, ns: &str) {
        let inside: Vec<(&'static Kind, String)> = {
            let g = self.inner.lock().expect("store");
            KINDS
                .iter()
                .filter(|k| k.namespaced)
                .flat_map(|kind| {
                    in_namespace(&g, kind, ns)
                        .filter(|(_, v)| v["metadata"].get("deletionTimestamp").is_none())
                        .map(move |((_, _, _, name), _)| (kind, name.clone()))
                })
                .collect()
        };
        for (kind, name) in inside {
            let _ = self.delete(kind, ns, &name);
        }
        let mut g = self.inner.lock().expect("store");
        let k = key(namespace_kind(), "", ns);
        if holds_any(&g, ns) {
            return;
        }
        if let Some(obj) = g.objects.remove(&k) {
            g.rv += 1;
            self.record(&mut g, namespace_kind(), "DELETED", obj);
        }
    }

    /// Deletes what `uid` owned (the garbage collector's background cascade).
    fn collect_garbage(&self, uid: &str) {
        for (kind, ns, name, _) in self.dependents(uid) {
            let _ = self.delete(kind, &ns, &name);
        }
    }
}

/// The objects of `kind` in namespace `ns` (a range of the ordered map, not a scan).
fn in_namespace<'a>(
    g: &'a Inner,
    kind: &'static Kind,
    ns: &'a str,
) -> impl Iterator<Item = (&'a Key, &'a Value)> + 'a {
    g.objects
        .range((kind.group, kind.plural, ns.to_string(), String::new())..)
        .take_while(move |((gr, pl, n, _), _)| *gr == kind.group && *pl == kind.plural && n == ns)
}

/// Whether anything is left in namespace `ns`.
fn holds_any(g: &Inner, ns: &str) -> bool {
    KINDS
        .iter()
        .filter(|k| k.namespaced)
        .any(|k| in_namespace(g, k, ns).next().is_some())
}

fn namespace_kind() -> &'static Kind {
    Kind::named("", "Namespace")
}

fn conflict(kind: &Kind, name: &str) -> ApiError {
    ApiError::new(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {}.{} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            kind.plural, kind.group
        ),
    )
}

/// The rules a real API server applies to PVC updates: the spec is immutable except the
/// storage request, which may only grow, and only once the claim is bound.
fn pvc_rules(new: &Value, old: Option<&Value>) -> Vec<String> {
    let Some(old) = old else {
        return match new["spec"]["resources"]["requests"]
            .get("storage")
            .and_then(bytes)
        {
            Some(_) => vec![],
            None => vec!["spec.resources.requests.storage: Required value".into()],
        };
    };
    let storage = |v: &Value| bytes(&v["spec"]["resources"]["requests"]["storage"]);
    let without = |v: &Value| {
        let mut s = v["spec"].clone();
        s["resources"]["requests"]["storage"] = Value::Null;
        // The binder fills these in.
        if let Some(o) = s.as_object_mut() {
            o.remove("volumeName");
        }
        s
    };
    let mut errors = Vec::new();
    if without(new) != without(old) {
        errors.push("spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims".into());
    }
    match (storage(new), storage(old)) {
        (Some(n), Some(o)) if n < o => errors.push(
            "spec.resources.requests.storage: Forbidden: field can not be less than previous value"
                .into(),
        ),
        (Some(n), Some(o)) if n > o && old["status"]["phase"] != "Bound" => errors.push(
            "spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims".into(),
        ),
        (None, _) => errors.push("spec.resources.requests.storage: Required value".into()),
        _ => {}
    }
    errors
}

/// The PersistentVolumeClaimResize admission plugin: a larger request only where the
/// StorageClass allows expansion, refused with 403 (admission, not validation).
fn pvc_resize_admission(g: &Inner, name: &str, new: &Value, old: &Value) -> Result<(), ApiError> {
    let storage = |v: &Value| bytes(&v["spec"]["resources"]["requests"]["storage"]);
    if !matches!((storage(new), storage(old)), (Some(n), Some(o)) if n > o) {
        return Ok(());
    }
    let sc = new["spec"]["storageClassName"].as_str().unwrap_or_default();
    let expandable = g
        .objects
        .get(&(
            "storage.k8s.io",
            "storageclasses",
            String::new(),
            sc.to_string(),
        ))
        .is_some_and(|c| c["allowVolumeExpansion"] == true);
    if expandable {
        return Ok(());
    }
    Err(ApiError::new(
        403,
        "Forbidden",
        format!(
            "persistentvolumeclaims \"{name}\" is forbidden: only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize"
        ),
    ))
}

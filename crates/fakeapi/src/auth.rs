//! Who is asking, and may they: bearer tokens name a user and its groups, and every request is
//! decided against the RBAC objects stored in the server (ClusterRoles, Roles and their
//! bindings), as kube-apiserver's RBAC authorizer decides. Verbs are the server's: `list` and
//! `watch` for collections, `get`/`update`/`patch`/`delete` for objects and subresources,
//! `create` for a POST, and pod exec over a WebSocket — an HTTP GET — needs `get` (what
//! v1.32 checks) and `create` (what v1.35 checks as well), so both are demanded here.
//! Group `system:masters` may do everything. With no tokens configured, nothing is checked.

use axum::http::HeaderMap;
use serde_json::Value;

use crate::store::{ApiError, Kind, Store};

/// A bearer token and who it authenticates.
#[derive(Clone, Debug)]
pub struct Token {
    /// The token.
    pub token: String,
    /// The user name, e.g. `system:serviceaccount:wukong-system:wukong-operator`.
    pub user: String,
    /// Its groups.
    pub groups: Vec<String>,
}

/// What one request asks to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`.
    pub verb: &'static str,
    /// API group (`""` for core).
    pub group: String,
    /// Plural resource.
    pub resource: String,
    /// Subresource (`status`, `exec`, `restart`…).
    pub subresource: Option<String>,
    /// Namespace, for namespaced requests.
    pub namespace: Option<String>,
    /// Object name, for requests on one object.
    pub name: Option<String>,
}

/// The user `headers` authenticate: `Ok(None)` when authentication is off (no tokens).
pub fn authenticate<'a>(
    tokens: &'a [Token],
    headers: &HeaderMap,
) -> Result<Option<&'a Token>, ApiError> {
    if tokens.is_empty() {
        return Ok(None);
    }
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match bearer.and_then(|b| tokens.iter().find(|t| t.token == b)) {
        Some(t) => Ok(Some(t)),
        None => Err(ApiError::new(401, "Unauthorized", "Unauthorized")),
    }
}

fn strings(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str)
}

fn has(list: &Value, want: &str) -> bool {
    strings(list).any(|s| s == "*" || s == want)
}

/// Whether `subject` of a binding in `binding_ns` (none for a ClusterRoleBinding) is `who`.
fn names(subject: &Value, binding_ns: Option<&str>, who: &Token) -> bool {
    let name = subject["name"].as_str().unwrap_or_default();
    match subject["kind"].as_str() {
        Some("User") => name == who.user,
        Some("Group") => who.groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            let ns = subject["namespace"]
                .as_str()
                .or(binding_ns)
                .unwrap_or_default();
            who.user == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

fn allows(rule: &Value, a: &Attributes) -> bool {
    let resource = match &a.subresource {
        Some(s) => format!("{}/{s}", a.resource),
        None => a.resource.clone(),
    };
    let by_name = match (&a.name, rule.get("resourceNames")) {
        (_, None) => true,
        (Some(n), Some(names)) => strings(names).any(|x| x == n),
        (None, Some(names)) => strings(names).next().is_none(),
    };
    has(&rule["apiGroups"], &a.group)
        && has(&rule["resources"], &resource)
        && has(&rule["verbs"], a.verb)
        && by_name
}

/// The rules of the role a binding refers to (a Role in `ns`, or a ClusterRole).
fn role_rules(store: &Store, role_ref: &Value, ns: Option<&str>) -> Vec<Value> {
    let name = role_ref["name"].as_str().unwrap_or_default();
    let role = match (role_ref["kind"].as_str(), ns) {
        (Some("ClusterRole"), _) => store.get(
            Kind::named("rbac.authorization.k8s.io", "ClusterRole"),
            "",
            name,
        ),
        (Some("Role"), Some(ns)) => {
            store.get(Kind::named("rbac.authorization.k8s.io", "Role"), ns, name)
        }
        _ => None,
    };
    role.and_then(|r| r["rules"].as_array().cloned())
        .unwrap_or_default()
}

/// Allows `a` for `who`, or refuses it with the server's 403.
pub fn authorize(store: &Store, who: &Token, a: &Attributes) -> Result<(), ApiError> {
    if who.groups.iter().any(|g| g == "system:masters") {
        return Ok(());
    }
    let mut rules = Vec::new();
    let (cluster, _) = store.list(
        Kind::named("rbac.authorization.k8s.io", "ClusterRoleBinding"),
        None,
    );
    for b in cluster
        .iter()
        .filter(|b| entries(&b["subjects"]).any(|s| names(s, None, who)))
    {
        rules.extend(role_rules(store, &b["roleRef"], None));
    }
    if let Some(ns) = &a.namespace {
        let (local, _) = store.list(
            Kind::named("rbac.authorization.k8s.io", "RoleBinding"),
            Some(ns),
        );
        for b in local
            .iter()
            .filter(|b| entries(&b["subjects"]).any(|s| names(s, Some(ns), who)))
        {
            rules.extend(role_rules(store, &b["roleRef"], Some(ns)));
        }
    }
    if rules.iter().any(|r| allows(r, a)) {
        return Ok(());
    }
    Err(forbidden(who, a))
}

fn entries(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// The 403 a kube-apiserver answers, worded as it words it.
fn forbidden(who: &Token, a: &Attributes) -> ApiError {
    let what = if a.group.is_empty() {
        a.resource.clone()
    } else {
        format!("{}.{}", a.resource, a.group)
    };
    let object = match &a.name {
        Some(n) => format!("{what} \"{n}\""),
        None => what,
    };
    let resource = match &a.subresource {
        Some(s) => format!("{}/{s}", a.resource),
        None => a.resource.clone(),
    };
    let scope = match &a.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    ApiError::new(
        403,
        "Forbidden",
        format!(
            "{object} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
            who.user, a.verb, a.group
        ),
    )
}

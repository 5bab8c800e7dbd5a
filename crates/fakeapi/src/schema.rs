//! A strict validator over KubeVirt's Swagger 2.0 definitions: types, required fields, enums,
//! `$ref`s, and unknown fields rejected (as a real API server with field validation does).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use regex::Regex;
use serde_json::{Map, Value};

/// KubeVirt's definitions.
pub struct Swagger {
    defs: Map<String, Value>,
    patterns: Mutex<HashMap<String, Option<Regex>>>,
}

/// Definitions whose `type: string` is really "string or integer" on the wire.
const INT_OR_STRING: [&str; 2] = [
    "k8s.io.apimachinery.pkg.api.resource.Quantity",
    "k8s.io.apimachinery.pkg.util.intstr.IntOrString",
];

impl Swagger {
    /// From the parsed swagger document.
    pub fn new(doc: &Value) -> Result<Swagger, String> {
        let defs = doc
            .get("definitions")
            .and_then(Value::as_object)
            .ok_or("the document has no definitions")?
            .clone();
        Ok(Swagger {
            defs,
            patterns: Mutex::new(HashMap::new()),
        })
    }

    /// A validator for one OpenAPI v3 schema (a CRD version's), under the name `name`.
    pub fn single(name: &str, schema: Value) -> Swagger {
        let mut defs = Map::new();
        defs.insert(name.to_string(), schema);
        Swagger {
            defs,
            patterns: Mutex::new(HashMap::new()),
        }
    }

    /// Drops the fields of `value` that definition `name` does not know (kept where the
    /// schema preserves unknown fields or is free-form); returns their paths, as a real server
    /// names them in its warnings (`spec.disks[0].extra`).
    pub fn prune(&self, name: &str, value: &mut Value) -> Vec<String> {
        let mut dropped = Vec::new();
        if let Some(schema) = self.defs.get(name) {
            self.prune_at(schema, value, "", &mut dropped);
        }
        dropped
    }

    fn resolve<'a>(&'a self, mut schema: &'a Value) -> &'a Value {
        while let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            match self.defs.get(r.trim_start_matches("#/definitions/")) {
                Some(s) => schema = s,
                None => break,
            }
        }
        schema
    }

    fn prune_at(&self, schema: &Value, v: &mut Value, path: &str, dropped: &mut Vec<String>) {
        let schema = self.resolve(schema);
        if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
            return;
        }
        match v {
            Value::Object(obj) => {
                let props = schema.get("properties").and_then(Value::as_object);
                let additional = schema.get("additionalProperties");
                if props.is_none() && additional.is_none() {
                    return;
                }
                let keys: Vec<String> = obj.keys().cloned().collect();
                for k in keys {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    let child = match (props.and_then(|p| p.get(&k)), additional) {
                        (Some(s), _) => Some(s),
                        (None, Some(a)) if a.is_object() => Some(a),
                        (None, Some(Value::Bool(true))) => None,
                        (None, _) => {
                            obj.remove(&k);
                            dropped.push(p);
                            continue;
                        }
                    };
                    if let (Some(s), Some(c)) = (child, obj.get_mut(&k)) {
                        self.prune_at(s, c, &p, dropped);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(s) = schema.get("items") {
                    for (i, item) in items.iter_mut().enumerate() {
                        self.prune_at(s, item, &format!("{path}[{i}]"), dropped);
                    }
                }
            }
            _ => {}
        }
    }

    /// Every problem of `value` against definition `name`, as `path: reason`.
    pub fn validate(&self, name: &str, value: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        match self.defs.get(name) {
            Some(schema) => self.check(name, schema, value, "", &mut errors),
            None => errors.push(format!("no definition {name}")),
        }
        errors
    }

    fn check(&self, def: &str, schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            let name = r.trim_start_matches("#/definitions/");
            match self.defs.get(name) {
                Some(s) => self.check(name, s, v, path, errors),
                None => errors.push(format!("{path}: unresolved {r}")),
            }
            return;
        }
        let at = if path.is_empty() { "." } else { path };
        if v.is_null() && schema.get("nullable") == Some(&Value::Bool(true)) {
            return;
        }
        if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
            if !(v.is_string() || v.is_i64() || v.is_u64()) {
                errors.push(format!("{at}: expected a string or an integer, got {v}"));
            }
            return;
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(v)
        {
            errors.push(format!(
                "{at}: {v} is not one of {}",
                Value::Array(allowed.clone())
            ));
        }
        match schema.get("type").and_then(Value::as_str) {
            Some("object") => {
                let Some(obj) = v.as_object() else {
                    errors.push(format!("{at}: expected an object, got {v}"));
                    return;
                };
                for req in schema
                    .get("required")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(k) = req.as_str()
                        && !obj.contains_key(k)
                    {
                        errors.push(format!("{at}: missing required field {k}"));
                    }
                }
                let props = schema.get("properties").and_then(Value::as_object);
                let additional = schema.get("additionalProperties");
                for (k, child) in obj {
                    let p = format!("{path}.{k}");
                    match (props.and_then(|p| p.get(k)), additional) {
                        (Some(s), _) => self.check(def, s, child, &p, errors),
                        (None, Some(a)) if a.is_object() => self.check(def, a, child, &p, errors),
                        (None, Some(Value::Bool(true))) => {}
                        (None, _)
                            if schema.get("x-kubernetes-preserve-unknown-fields")
                                == Some(&Value::Bool(true)) => {}
                        // An object schema with no properties at all is free-form.
                        (None, _) if props.is_none() => {}
                        (None, _) => errors.push(format!("{p}: unknown field")),
                    }
                }
            }
            Some("array") => match v.as_array() {
                Some(items) => {
                    list_map_keys(schema, items, at, errors);
                    if let Some(s) = schema.get("items") {
                        for (i, item) in items.iter().enumerate() {
                            self.check(def, s, item, &format!("{path}[{i}]"), errors);
                        }
                    }
                }
                None => errors.push(format!("{at}: expected an array, got {v}")),
            },
            Some(kind) if !scalar_matches(kind, def, v) => {
                errors.push(format!("{at}: expected {}, got {v}", expected(kind, def)));
            }
            _ => {}
        }
        bounds(schema, v, at, errors);
        if let (Some(p), Some(text)) = (schema.get("pattern").and_then(Value::as_str), v.as_str()) {
            let mut cache = self.patterns.lock().expect("patterns");
            let re = cache
                .entry(p.to_string())
                .or_insert_with(|| Regex::new(p).ok());
            if re.as_ref().is_some_and(|re| !re.is_match(text)) {
                errors.push(format!("{at}: {v} does not match {p}"));
            }
        }
    }
}

/// `x-kubernetes-list-type: map`: the key fields identify an item; no two items share them.
fn list_map_keys(schema: &Value, items: &[Value], at: &str, errors: &mut Vec<String>) {
    if schema.get("x-kubernetes-list-type").and_then(Value::as_str) != Some("map") {
        return;
    }
    let keys: Vec<&str> = schema
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut seen = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let key: Vec<String> = keys.iter().map(|k| item[*k].to_string()).collect();
        if !seen.insert(key.clone()) {
            errors.push(format!("{at}[{i}]: Duplicate value: {}", key.join(",")));
        }
    }
}

/// `minimum`, `maximum`, `maxLength` and `maxItems`.
fn bounds(schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    let num = |k: &str| schema.get(k).and_then(Value::as_f64);
    if let Some(x) = v.as_f64() {
        if let Some(min) = num("minimum")
            && x < min
        {
            errors.push(format!("{at}: {v} is less than the minimum {min}"));
        }
        if let Some(max) = num("maximum")
            && x > max
        {
            errors.push(format!("{at}: {v} is more than the maximum {max}"));
        }
    }
    if let (Some(s), Some(max)) = (v.as_str(), num("maxLength"))
        && s.chars().count() as f64 > max
    {
        errors.push(format!("{at}: longer than {max} characters"));
    }
    if let (Some(a), Some(max)) = (v.as_array(), num("maxItems"))
        && a.len() as f64 > max
    {
        errors.push(format!("{at}: more than {max} items"));
    }
}

/// Whether `v` has the scalar JSON type `kind` (for definition `def`). Integer widths are not
/// enforced: KubeVirt declares byte counts int32 that exceed it.
fn scalar_matches(kind: &str, def: &str, v: &Value) -> bool {
    match kind {
        "string" if INT_OR_STRING.contains(&def) => v.is_string() || v.is_i64() || v.is_u64(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    }
}

fn expected(kind: &str, def: &str) -> &'static str {
    match kind {
        "string" if INT_OR_STRING.contains(&def) => "a string or an integer",
        "string" => "a string",
        "integer" => "an integer",
        "number" => "a number",
        "boolean" => "a boolean",
        _ => "something else",
    }
}

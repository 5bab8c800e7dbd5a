//! KubeVirt's CRDs for a real API server, built from KubeVirt's own swagger (v1.9.0): each
//! kind's definition with its references inlined, as a structural schema (descriptions and
//! patch hints dropped; quantities and int-or-strings as `x-kubernetes-int-or-string`;
//! embedded ObjectMeta kept whole). The server then prunes and type-checks what the operator
//! writes by KubeVirt's schema, not by anything this project wrote.

use serde_json::{Map, Value, json};

fn swagger() -> Value {
    serde_json::from_str(include_str!(
        "../../kubevirt/tests/fixtures/kubevirt-v1.9.0-swagger.json"
    ))
    .unwrap()
}

const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta";

fn convert(defs: &Value, schema: &Value, seen: &mut Vec<String>) -> Value {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/definitions/");
        if name == META {
            return json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
        }
        if seen.iter().any(|s| s == name) {
            // A recursive type: kept as it comes.
            return json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
        }
        seen.push(name.to_string());
        let out = convert(defs, &defs[name], seen);
        seen.pop();
        return out;
    }
    if schema["format"] == "int-or-string"
        || schema["description"]
            .as_str()
            .is_some_and(|d| d.starts_with("Quantity is a fixed-point"))
    {
        return json!({"x-kubernetes-int-or-string": true,
                      "anyOf": [{"type": "integer"}, {"type": "string"}]});
    }
    let mut out = Map::new();
    // The swagger's type lists: `[T, "null"]` is a nullable T; string-or-number is an
    // int-or-string.
    if let Some(types) = schema["type"].as_array() {
        let named: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
        if named.len() != 1 {
            return json!({"x-kubernetes-int-or-string": true,
                          "anyOf": [{"type": "integer"}, {"type": "string"}]});
        }
        out.insert("type".into(), named[0].clone());
        out.insert("nullable".into(), true.into());
    }
    for key in ["type", "format", "enum"] {
        if key == "type" && out.contains_key("type") {
            continue;
        }
        if let Some(v) = schema.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(props) = schema["properties"].as_object() {
        let props: Map<String, Value> = props
            .iter()
            .map(|(k, v)| (k.clone(), convert(defs, v, seen)))
            .collect();
        out.insert("properties".into(), Value::Object(props));
        if let Some(req) = schema.get("required") {
            out.insert("required".into(), req.clone());
        }
    }
    if let Some(items) = schema.get("items") {
        out.insert("items".into(), convert(defs, items, seen));
    }
    if let Some(ap) = schema.get("additionalProperties") {
        out.insert("additionalProperties".into(), convert(defs, ap, seen));
    }
    if out.get("type").is_some_and(|t| t == "object")
        && !out.contains_key("properties")
        && !out.contains_key("additionalProperties")
    {
        // An object the swagger leaves open (raw JSON, `{}` markers such as `bridge: {}`).
        out.insert("x-kubernetes-preserve-unknown-fields".into(), true.into());
    }
    Value::Object(out)
}

fn crd(defs: &Value, kind: &str, plural: &str, status: bool) -> Value {
    let schema = convert(defs, &defs[format!("v1.{kind}")], &mut Vec::new());
    crd_of("kubevirt.io", "v1", kind, plural, schema, status)
}

fn crd_of(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    mut schema: Value,
    status: bool,
) -> Value {
    schema["properties"]["metadata"] = json!({"type": "object"});
    let mut v = json!({"name": version, "served": true, "storage": true,
                       "schema": {"openAPIV3Schema": schema}});
    if status {
        v["subresources"] = json!({"status": {}});
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {"group": group, "scope": "Namespaced",
                 "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(),
                           "listKind": format!("{kind}List")},
                 "versions": [v]},
    })
}

/// CDI's DataVolume: its spec from KubeVirt's swagger (which embeds it in DataVolume
/// templates); the swagger has no status, which is kept as written.
fn data_volume(defs: &Value) -> Value {
    let spec = convert(defs, &defs["v1beta1.DataVolumeSpec"], &mut Vec::new());
    let schema = json!({"type": "object", "properties": {
        "apiVersion": {"type": "string"}, "kind": {"type": "string"},
        "spec": spec,
        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}});
    crd_of(
        "cdi.kubevirt.io",
        "v1beta1",
        "DataVolume",
        "datavolumes",
        schema,
        true,
    )
}

/// The VirtualMachine (status subresource), VirtualMachineInstance (none, as KubeVirt's),
/// KubeVirt and CDI's DataVolume CRDs.
pub fn crds() -> Vec<Value> {
    let swagger = swagger();
    let defs = &swagger["definitions"];
    vec![
        crd(defs, "VirtualMachine", "virtualmachines", true),
        crd(
            defs,
            "VirtualMachineInstance",
            "virtualmachineinstances",
            false,
        ),
        crd(defs, "KubeVirt", "kubevirts", true),
        data_volume(defs),
    ]
}

//! A conservative stand-in for kube-apiserver's CEL cost estimate of a CRD's
//! `x-kubernetes-validations` rules. The real estimator bounds every list by its `maxItems`
//! and every string by its `maxLength`; without them it assumes the largest object a request
//! can carry, and a rule whose worst case then exceeds the budget makes the CRD refused. This
//! one refuses the shapes that blow the budget by orders of magnitude:
//! - a rule evaluated once per element of a list without `maxItems`;
//! - a rule iterating (`all`, `exists`, `exists_one`, `filter`, `map`) over a list without
//!   `maxItems`, or reading a string without `maxLength` from the elements it iterates;
//! - `matches` on a string without `maxLength`.
//!
//! A rule run once on an unbounded string (`quantity(self)`) stays within the budget, as it
//! does on the real server. The verdicts are checked against ones a real server gave
//! (`crates/operator/tests/fixtures/crd-verdicts.json`).

use std::collections::HashMap;

use regex::Regex;
use serde_json::Value;

/// Why a rule is refused: its field path (as the real server writes it) and the message.
pub fn refused_rules(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(schema, "spec.validation.openAPIV3Schema", false, &mut out);
    out
}

fn walk(node: &Value, path: &str, per_unbounded_element: bool, out: &mut Vec<String>) {
    for (i, rule) in node["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let text = rule["rule"].as_str().unwrap_or_default();
        if per_unbounded_element || too_costly(node, text) {
            out.push(format!(
                "{path}.x-kubernetes-validations[{i}].rule: Forbidden: estimated rule cost exceeds budget by factor of more than 100x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
            ));
        }
    }
    if let Some(props) = node["properties"].as_object() {
        for (k, v) in props {
            walk(
                v,
                &format!("{path}.properties[{k}]"),
                per_unbounded_element,
                out,
            );
        }
    }
    if let Some(items) = node.get("items") {
        let unbounded = node.get("maxItems").is_none();
        walk(
            items,
            &format!("{path}.items"),
            per_unbounded_element || unbounded,
            out,
        );
    }
    if let Some(extra) = node.get("additionalProperties").filter(|v| v.is_object()) {
        let unbounded = node.get("maxProperties").is_none();
        walk(
            extra,
            &format!("{path}.additionalProperties"),
            per_unbounded_element || unbounded,
            out,
        );
    }
}

/// The schema a dotted path (`self.a.b`, `d.name`) leads to from `self` = `node`, with the
/// iteration variables bound to their element schemas. `None` when it leaves the schema
/// (metadata, a constructed list): such values are bounded by the server.
fn resolve<'a>(
    node: &'a Value,
    vars: &HashMap<String, &'a Value>,
    path: &str,
) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let head = parts.next()?;
    let mut at = match head {
        "self" | "oldSelf" => node,
        v => *vars.get(v)?,
    };
    for p in parts {
        if p == "metadata" {
            return None;
        }
        at = at["properties"].get(p)?;
    }
    Some(at)
}

fn unbounded_string(s: &Value) -> bool {
    s["type"] == "string" && s.get("maxLength").is_none() && s.get("enum").is_none()
}

fn too_costly(node: &Value, rule: &str) -> bool {
    let iteration =
        Regex::new(r"([A-Za-z_][\w.]*)\.(all|exists_one|exists|filter|map)\(\s*([A-Za-z_]\w*)\s*,")
            .expect("a valid pattern");
    let mut vars: HashMap<String, &Value> = HashMap::new();
    for c in iteration.captures_iter(rule) {
        let Some(list) = resolve(node, &vars, &c[1]) else {
            continue;
        };
        if list["type"] == "array" && list.get("maxItems").is_none() {
            return true;
        }
        if let Some(items) = list.get("items") {
            vars.insert(c[3].to_string(), items);
        }
    }
    // Strings read from iterated elements.
    let field = Regex::new(r"\b([A-Za-z_]\w*)\.([A-Za-z_]\w*)").expect("a valid pattern");
    for c in field.captures_iter(rule) {
        if let Some(items) = vars.get(&c[1])
            && items["properties"].get(&c[2]).is_some_and(unbounded_string)
        {
            return true;
        }
    }
    let matches = Regex::new(r"([A-Za-z_][\w.]*)\.matches\(").expect("a valid pattern");
    matches
        .captures_iter(rule)
        .any(|c| resolve(node, &vars, &c[1]).is_some_and(unbounded_string))
}

//! Reading `Wukong` documents from YAML: strict about apiVersion, kind and unknown fields, and
//! precise about where a problem is.

use serde_json::Value;

use crate::types::{API_VERSION, KIND, Wukong};
use crate::validate::{FieldError, FieldErrors, validate_spec};

/// A problem with one document of a multi-document input.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// The text is not YAML.
    #[error("invalid YAML: {0}")]
    Yaml(String),
    /// The YAML is not a Wukong or a field is wrong.
    #[error("document {index}: {errors}")]
    Fields {
        /// 1-based position of the document in the input.
        index: usize,
        /// What is wrong.
        errors: FieldErrors,
    },
}

impl DocumentError {
    /// Whether this is a refused change rather than malformed input.
    pub fn kind(&self) -> crate::validate::ErrorKind {
        match self {
            DocumentError::Yaml(_) => crate::validate::ErrorKind::Invalid,
            DocumentError::Fields { errors, .. } => errors.kind(),
        }
    }
}

/// One parsed document: the typed object and the spec exactly as written (for merge patches,
/// where an explicit `null` deletes a field).
#[derive(Clone, Debug)]
pub struct Document {
    /// The typed object.
    pub wukong: Wukong,
    /// `spec` as written, `{}` when absent.
    pub raw_spec: Value,
}

const TOP_LEVEL: [&str; 5] = ["apiVersion", "kind", "metadata", "spec", "status"];

/// Parses every document in `text` (`---` separated); empty documents are skipped. Each
/// document must be a valid `Wukong`: the first problem found in each is reported.
pub fn parse_documents(text: &str) -> Result<Vec<Document>, DocumentError> {
    let mut out = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value: serde_yaml::Value =
            serde::Deserialize::deserialize(de).map_err(|e| DocumentError::Yaml(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let json: Value =
            serde_json::to_value(&value).map_err(|e| DocumentError::Yaml(e.to_string()))?;
        out.push(parse_value(json).map_err(|errors| DocumentError::Fields {
            index: i + 1,
            errors,
        })?);
    }
    if out.is_empty() {
        return Err(DocumentError::Yaml("no document found".into()));
    }
    Ok(out)
}

/// Turns one JSON/YAML value into a checked [`Document`].
pub fn parse_value(json: Value) -> Result<Document, FieldErrors> {
    let one = |field: &str, reason: String| FieldErrors(vec![FieldError::invalid(field, reason)]);
    let Value::Object(map) = &json else {
        return Err(one("", "a document must be a mapping".into()));
    };
    match map.get("apiVersion").and_then(Value::as_str) {
        Some(API_VERSION) => {}
        Some(other) => return Err(one("apiVersion", format!("'{other}' is not {API_VERSION}"))),
        None => return Err(one("apiVersion", format!("missing (use {API_VERSION})"))),
    }
    match map.get("kind").and_then(Value::as_str) {
        Some(KIND) => {}
        Some(other) => return Err(one("kind", format!("'{other}' is not {KIND}"))),
        None => return Err(one("kind", format!("missing (use {KIND})"))),
    }
    if let Some(unknown) = map.keys().find(|k| !TOP_LEVEL.contains(&k.as_str())) {
        return Err(one(unknown, "unknown field".into()));
    }
    match map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
    {
        Some(name) => {
            if let Err(reason) = check_object_name(name) {
                return Err(one("metadata.name", reason));
            }
        }
        None => return Err(one("metadata.name", "missing".into())),
    }
    let raw_spec = map
        .get("spec")
        .cloned()
        .unwrap_or_else(|| Value::Object(Default::default()));
    if !raw_spec.is_object() {
        return Err(one("spec", "must be a mapping".into()));
    }
    let mut obj = json.clone();
    if obj.get("spec").is_none() {
        obj["spec"] = Value::Object(Default::default());
    }
    let wukong: Wukong = serde_path_to_error::deserialize(obj).map_err(|e| {
        let path = e.path().to_string();
        one(&path, clean_serde_message(&e.into_inner().to_string()))
    })?;
    validate_spec(&wukong.spec)?;
    Ok(Document { wukong, raw_spec })
}

/// The longest VM name: a Kubernetes label value (the name is one on everything made for it).
pub const MAX_NAME: usize = 63;

/// VM names are DNS labels of at most [`MAX_NAME`] characters (they name directories,
/// sockets, KubeVirt objects and label values). The CRD holds the same rule.
pub fn check_object_name(name: &str) -> Result<(), String> {
    crate::validate::check_dns_label(name, MAX_NAME)
}

fn clean_serde_message(msg: &str) -> String {
    // serde says "unknown field `x`, expected one of ..." — keep it, it names the choices.
    msg.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse_documents(text).unwrap_err().to_string()
    }

    #[test]
    fn reads_multi_document_input() {
        let docs = parse_documents(
            "apiVersion: vm.novasphere.dev/v1alpha1\nkind: Wukong\nmetadata: {name: a}\nspec: {cpu: 2}\n---\n---\napiVersion: vm.novasphere.dev/v1alpha1\nkind: Wukong\nmetadata: {name: b}\n",
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].wukong.spec.cpu, Some(2));
        assert_eq!(docs[1].raw_spec, serde_json::json!({}));
    }

    #[test]
    fn names_the_field_and_the_reason() {
        let base = "apiVersion: vm.novasphere.dev/v1alpha1\nkind: Wukong\nmetadata: {name: a}\n";
        assert!(
            err(&format!("{base}spec: {{cpu: 2, colour: red}}"))
                .contains("spec.colour: unknown field `colour`")
        );
        assert!(err(&format!("{base}spec: {{cpu: 1.5}}")).contains("spec.cpu"));
        assert!(
            err(&format!("{base}spec: {{disks: [{{name: a, size: 8Gx}}]}}"))
                .contains("spec.disks[0].size: '8Gx' has an unknown unit suffix")
        );
        assert!(
            err("apiVersion: v1\nkind: Wukong\nmetadata: {name: a}")
                .contains("apiVersion: 'v1' is not")
        );
        assert!(
            err("apiVersion: vm.novasphere.dev/v1alpha1\nkind: Pod\nmetadata: {name: a}")
                .contains("kind: 'Pod'")
        );
        assert!(err("spec: [").starts_with("invalid YAML"));
        assert!(err(&format!("{base}extra: 1")).contains("extra: unknown field"));
        assert!(
            err("apiVersion: vm.novasphere.dev/v1alpha1\nkind: Wukong\nmetadata: {name: My_VM}")
                .contains("metadata.name")
        );
    }
}

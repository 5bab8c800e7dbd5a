//! `apply` semantics: a partial spec is a JSON merge patch (RFC 7386) onto the stored desired
//! spec. Absent fields keep their desired value; a given list is the whole list; `null`
//! removes an optional field.

use serde_json::Value;

use crate::types::WukongSpec;
use crate::validate::{FieldError, FieldErrors, validate_spec};

/// The desired spec after applying `patch` (a spec as written by the user) onto `stored`.
/// The result is validated as a whole.
pub fn merge_spec(stored: &WukongSpec, patch: &Value) -> Result<WukongSpec, FieldErrors> {
    let mut doc = serde_json::to_value(stored).expect("a spec always serializes");
    json_patch::merge(&mut doc, patch);
    let merged: WukongSpec = serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = format!("spec.{}", e.path());
        FieldErrors(vec![FieldError::invalid(path, e.into_inner().to_string())])
    })?;
    validate_spec(&merged)?;
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantity::Quantity;
    use crate::types::DiskSpec;
    use serde_json::json;

    fn stored() -> WukongSpec {
        WukongSpec {
            cpu: Some(2),
            memory: Some("8Gi".into()),
            disks: Some(vec![
                DiskSpec {
                    name: "system".into(),
                    size: Quantity::from("20Gi"),
                    boot: Some(true),
                    ..Default::default()
                },
                DiskSpec {
                    name: "data".into(),
                    size: Quantity::from("100Gi"),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }
    }

    #[test]
    fn absent_fields_keep_their_desired_value() {
        let merged = merge_spec(&stored(), &json!({"cpu": 4})).unwrap();
        assert_eq!(merged.cpu, Some(4));
        assert_eq!(merged.memory, Some("8Gi".into()));
        assert_eq!(merged.disks.as_ref().map(Vec::len), Some(2));
    }

    #[test]
    fn a_given_list_is_the_whole_list() {
        let merged = merge_spec(
            &stored(),
            &json!({"disks": [{"name": "system", "size": "50Gi"}]}),
        )
        .unwrap();
        let disks = merged.disks.unwrap();
        assert_eq!(disks.len(), 1);
        assert_eq!(disks[0].size, Quantity::from("50Gi"));
        assert_eq!(
            disks[0].boot, None,
            "a given list item replaces the stored item whole"
        );
        let merged = merge_spec(&stored(), &json!({"networks": []})).unwrap();
        assert_eq!(merged.networks, Some(vec![]));
    }

    #[test]
    fn null_removes_and_errors_name_the_field() {
        let merged = merge_spec(&stored(), &json!({"memory": null})).unwrap();
        assert_eq!(merged.memory, None);
        let err = merge_spec(&stored(), &json!({"cpu": "many"})).unwrap_err();
        assert_eq!(err.0[0].field, "spec.cpu");
        let err = merge_spec(&stored(), &json!({"cpu": 9, "maxCpu": 4})).unwrap_err();
        assert_eq!(err.to_string(), "spec.cpu: 9 exceeds maxCpu 4");
    }
}

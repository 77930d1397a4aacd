//! The patch formats of the Kubernetes API: JSON merge patch (RFC 7386), JSON patch (RFC 6902),
//! strategic merge patch, and server-side apply with field ownership.

pub mod fields;
pub mod schema;
pub mod strategic;

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
}

/// The `Content-Type` of a PATCH request, mapped to what it means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        let essence = ct.split(';').next().unwrap_or("").trim();
        match essence {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// RFC 7386: objects merge recursively, `null` deletes, anything else replaces.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    let mut out = target.clone();
    json_patch::merge(&mut out, patch);
    out
}

/// RFC 6902: a list of operations applied in order, all or nothing.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| PatchError::Invalid(format!("invalid JSON patch: {e}")))?;
    let mut out = target.clone();
    json_patch::patch(&mut out, &ops).map_err(|e| PatchError::Failed(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_and_json_patches() {
        let obj = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 1}});
        let merged = merge_patch(
            &obj,
            &json!({"metadata": {"labels": {"a": null, "c": "3"}}}),
        );
        assert_eq!(merged["metadata"]["labels"], json!({"b": "2", "c": "3"}));
        let patched = json_patch(
            &obj,
            &json!([{"op": "replace", "path": "/spec/replicas", "value": 4},
                    {"op": "add", "path": "/metadata/labels/d", "value": "4"}]),
        )
        .unwrap();
        assert_eq!(patched["spec"]["replicas"], 4);
        assert_eq!(patched["metadata"]["labels"]["d"], "4");
        let failed = json_patch(
            &obj,
            &json!([{"op": "test", "path": "/spec/replicas", "value": 9}]),
        );
        assert!(matches!(failed, Err(PatchError::Failed(_))));
        assert!(matches!(
            json_patch(&obj, &json!({"op": "add"})),
            Err(PatchError::Invalid(_))
        ));
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/strategic-merge-patch+json; charset=utf-8"),
            Some(PatchType::Strategic)
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml"),
            Some(PatchType::Apply)
        );
        assert_eq!(PatchType::from_content_type("text/plain"), None);
    }
}

//! The server's part in CustomResourceDefinitions, beyond admitting them: a definition's names
//! are checked against everything served (the `NamesAccepted` condition), it is established
//! in the same write when they are free, and it holds a finalizer so that its objects are
//! deleted before it is. The watch cache starts serving an established definition's kinds as
//! it applies the write, so they are served before the create call returns.

use api::Registry;
use api::Resource;
use api::custom::definition::{self, CRD_FINALIZER};
use api::k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

use crate::errors::{ApiError, ApiResult};

/// The built-in resource of definitions.
pub(crate) fn definitions() -> &'static Resource {
    api::resources::find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .expect("definitions are a built-in resource")
}

pub(crate) fn is_definitions(r: &Resource) -> bool {
    std::ptr::eq(r, definitions())
}

/// Why a definition's names cannot be served, if they cannot: another served resource of its
/// group already uses its plural, singular, kind, list kind or a short name.
fn conflict(registry: &Registry, crd: &CustomResourceDefinition) -> Option<String> {
    let name = crd.metadata.name.as_deref().unwrap_or("");
    let n = &crd.spec.names;
    let others: Vec<&'static Resource> = registry
        .all()
        .into_iter()
        .filter(|r| r.group == crd.spec.group)
        .filter(|r| format!("{}.{}", r.plural, r.group) != name)
        .collect();
    let singular = n.singular.as_deref().unwrap_or("");
    for r in &others {
        if r.plural == n.plural || r.singular == n.plural {
            return Some(format!("{:?} is already in use", n.plural));
        }
        if !singular.is_empty() && (r.plural == singular || r.singular == singular) {
            return Some(format!("{singular:?} is already in use"));
        }
        if r.kind == n.kind {
            return Some(format!("{:?} is already in use", n.kind));
        }
        if let Some(list) = &n.list_kind
            && r.list_kind() == *list
        {
            return Some(format!("{list:?} is already in use"));
        }
        for s in n.short_names.iter().flatten() {
            if r.short_names.contains(&s.as_str()) {
                return Some(format!("{s:?} is already in use"));
            }
        }
    }
    None
}

/// Settle what the server keeps in an admitted definition: its cleanup finalizer on create, its
/// accepted names, conditions and stored versions.
pub(crate) fn settle(registry: &Registry, obj: &mut Value, creating: bool) -> ApiResult<()> {
    let mut crd: CustomResourceDefinition = serde_json::from_value(obj.clone())
        .map_err(|e| ApiError::internal(format!("an admitted definition does not decode: {e}")))?;
    if crd.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    if creating {
        let finalizers = crd.metadata.finalizers.get_or_insert_with(Vec::new);
        if !finalizers.iter().any(|f| f == CRD_FINALIZER) {
            finalizers.push(CRD_FINALIZER.to_string());
        }
    }
    let why = conflict(registry, &crd);
    definition::settle_status(&mut crd, why.as_deref());
    *obj = serde_json::to_value(&crd)
        .map_err(|e| ApiError::internal(format!("encoding a definition: {e}")))?;
    Ok(())
}

/// The definition behind a custom kind, from the cache, when it is being deleted: no new
/// objects then.
pub(crate) fn refuse_create_while_terminating(
    cache: &crate::cache::Cache,
    r: &'static Resource,
) -> ApiResult<()> {
    if r.ops.custom().is_none() {
        return Ok(());
    }
    let name = format!("{}.{}", r.plural, r.group);
    let terminating = cache
        .resource(definitions())
        .get(&name)
        .is_some_and(|e| !e.value()["metadata"]["deletionTimestamp"].is_null());
    if terminating {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "create not allowed while custom resource definition is terminating".to_string(),
        ));
    }
    Ok(())
}

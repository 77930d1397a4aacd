//! Per-kind rules: what the server resets, defaults and validates before an object is stored.
//!
//! Each served type implements [`Kind`] on its `k8s-openapi` struct; [`KindOps`] is the
//! object-safe face the API server calls with JSON, so the typed work (and its compile cost)
//! stays in this crate.

pub(crate) mod admission;
mod apps;
mod batch;
pub mod certificates;
mod core;
pub mod more;
mod netpol;
mod pod;
mod policy;
mod rbac;
pub mod storage;

use std::collections::BTreeMap;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::errors::{FieldErrors, Path};
use crate::names;

pub use self::batch::{CONTROLLER_UID_LABEL, JOB_NAME_LABEL};
pub use self::core::{
    NAMESPACE_FINALIZER, NAMESPACE_NAME_LABEL, NODE_PORT_RANGE, SERVICE_ACCOUNT_NAME_ANNOTATION,
    SERVICE_ACCOUNT_TOKEN_TYPE, SERVICE_ACCOUNT_UID_ANNOTATION,
};
pub use self::pod::{
    DEFAULT_NOT_READY_TOLERATION_SECONDS, add_default_tolerations, default_pull_policy, qos_class,
};
pub use self::policy::HIGHEST_USER_PRIORITY;

/// The typed rules of one kind. Every hook has a harmless default.
pub trait Kind:
    Serialize
    + DeserializeOwned
    + k8s_openapi::Metadata<Ty = ObjectMeta>
    + schemars::JsonSchema
    + k8s_openapi::Resource
    + Send
    + Sync
    + 'static
{
    /// Set what the server owns on a new object, e.g. a pod's initial status.
    fn prepare_create(&mut self) {}

    /// Fill in defaults, as the API server does for omitted fields.
    fn default(&mut self) {}

    /// Check the object; `old` is the stored object on update.
    fn validate(&self, _old: Option<&Self>, _errs: &mut FieldErrors) {}
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
}

/// What the server knows when it admits an object.
pub struct Admission<'a> {
    pub object: &'a Value,
    pub old: Option<&'a Value>,
    pub operation: Operation,
    pub resource: &'static crate::Resource,
    /// Report fields the type does not know. Costs one extra encoding, so only when asked.
    pub find_unknown_fields: bool,
}

#[derive(Debug)]
pub struct Admitted {
    /// The object as it will be stored: decoded, defaulted, encoded.
    pub object: Value,
    /// Paths of fields in the input that the type does not have (they were dropped).
    pub unknown_fields: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// The JSON does not fit the type at all (wrong types, not an object).
    #[error("{0}")]
    Decode(String),
    #[error("{0}")]
    Invalid(FieldErrors),
}

/// The object-safe face of a [`Kind`].
pub trait KindOps: Send + Sync {
    fn admit(&self, a: Admission<'_>) -> Result<Admitted, AdmitError>;

    /// The kind's JSON schema, added to `generator`'s definitions; returns the reference.
    fn schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema;

    /// How the kind's lists and maps merge (strategic merge patch, server-side apply).
    fn merge_type(&self) -> &'static crate::patch::schema::Type;

    /// The definition behind a custom kind (printer columns, scale paths, schema); `None` for
    /// built-in kinds.
    fn custom(&self) -> Option<&crate::custom::CustomOps> {
        None
    }
}

struct Ops<T>(PhantomData<fn() -> T>);

impl<T: Kind> KindOps for Ops<T> {
    fn merge_type(&self) -> &'static crate::patch::schema::Type {
        crate::patch::schema::for_kind(<T as k8s_openapi::Resource>::KIND)
    }

    fn schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        generator.subschema_for::<T>()
    }

    fn admit(&self, a: Admission<'_>) -> Result<Admitted, AdmitError> {
        let mut obj: T = decode(a.object)?;
        let unknown_fields = if a.find_unknown_fields {
            let round =
                serde_json::to_value(&obj).map_err(|e| AdmitError::Decode(e.to_string()))?;
            let mut out = Vec::new();
            unknown_fields(a.object, &round, "", &mut out);
            out
        } else {
            Vec::new()
        };
        let old: Option<T> = a.old.map(decode).transpose()?;
        if a.operation == Operation::Create {
            obj.prepare_create();
        }
        obj.default();
        let mut errs = FieldErrors::default();
        validate_object_meta(
            obj.metadata(),
            old.as_ref().map(|o| o.metadata()),
            a.resource,
            &mut errs,
        );
        obj.validate(old.as_ref(), &mut errs);
        if !errs.is_empty() {
            return Err(AdmitError::Invalid(errs));
        }
        let object = serde_json::to_value(&obj).map_err(|e| AdmitError::Decode(e.to_string()))?;
        Ok(Admitted {
            object,
            unknown_fields,
        })
    }
}

/// Decode with the path of the offending field in the message.
fn decode<T: DeserializeOwned>(v: &Value) -> Result<T, AdmitError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            AdmitError::Decode(e.inner().to_string())
        } else {
            AdmitError::Decode(format!("{path}: {}", e.inner()))
        }
    })
}

pub(crate) fn ops<T: Kind>() -> &'static dyn KindOps {
    &Ops::<T>(PhantomData)
}

/// Fields present (and not null) in `input` that decoding into the typed struct dropped.
pub fn unknown_fields(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(i), Value::Object(t)) => {
            for (k, v) in i {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match t.get(k) {
                    Some(tv) => unknown_fields(v, tv, &p, out),
                    None if !v.is_null() => out.push(p),
                    None => {}
                }
            }
        }
        (Value::Array(i), Value::Array(t)) => {
            for (n, (iv, tv)) in i.iter().zip(t).enumerate() {
                unknown_fields(iv, tv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Total size Kubernetes allows for all annotations of one object.
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

pub fn validate_labels(
    labels: Option<&BTreeMap<String, String>>,
    path: &Path,
    errs: &mut FieldErrors,
) {
    for (k, v) in labels.into_iter().flatten() {
        for e in names::qualified_name(k) {
            errs.invalid(path, k, e);
        }
        for e in names::label_value(v) {
            errs.invalid(&path.key(k), v, e);
        }
    }
}

pub(crate) fn validate_object_meta(
    meta: &ObjectMeta,
    old: Option<&ObjectMeta>,
    resource: &crate::Resource,
    errs: &mut FieldErrors,
) {
    let path = Path::root("metadata");
    match (&meta.name, &meta.generate_name) {
        (Some(name), _) if !name.is_empty() => {
            for e in names::object_name(resource.name_rule, name) {
                errs.invalid(&path.child("name"), name, e);
            }
        }
        (_, Some(prefix)) if !prefix.is_empty() => {
            for e in names::generate_name_prefix(resource.name_rule, prefix) {
                errs.invalid(&path.child("generateName"), prefix, e);
            }
        }
        _ => errs.required(&path.child("name"), "name or generateName is required"),
    }
    let ns = meta.namespace.as_deref().unwrap_or("");
    if resource.namespaced {
        if ns.is_empty() {
            errs.required(&path.child("namespace"), "");
        } else {
            for e in names::dns1123_label(ns) {
                errs.invalid(&path.child("namespace"), ns, e);
            }
        }
    } else if !ns.is_empty() {
        errs.forbidden(&path.child("namespace"), "not allowed on this type");
    }
    validate_labels(meta.labels.as_ref(), &path.child("labels"), errs);
    let mut annotation_bytes = 0;
    for (k, v) in meta.annotations.iter().flatten() {
        for e in names::qualified_name(&k.to_lowercase()) {
            errs.invalid(&path.child("annotations"), k, e);
        }
        annotation_bytes += k.len() + v.len();
    }
    if annotation_bytes > ANNOTATIONS_MAX_BYTES {
        errs.too_long(&path.child("annotations"), ANNOTATIONS_MAX_BYTES);
    }
    let mut controllers = 0;
    for (i, owner) in meta.owner_references.iter().flatten().enumerate() {
        let p = path.child("ownerReferences").index(i);
        if owner.api_version.is_empty() {
            errs.invalid(
                &p.child("apiVersion"),
                &owner.api_version,
                "version must not be empty",
            );
        }
        if owner.kind.is_empty() {
            errs.invalid(&p.child("kind"), &owner.kind, "kind must not be empty");
        }
        if owner.name.is_empty() {
            errs.invalid(&p.child("name"), &owner.name, "name must not be empty");
        }
        if owner.uid.is_empty() {
            errs.invalid(&p.child("uid"), &owner.uid, "uid must not be empty");
        }
        if owner.controller == Some(true) {
            controllers += 1;
        }
    }
    if controllers > 1 {
        errs.invalid(
            &path.child("ownerReferences"),
            controllers,
            "Only one reference can have Controller set to true",
        );
    }
    for (i, f) in meta.finalizers.iter().flatten().enumerate() {
        for e in names::qualified_name(f) {
            errs.invalid(&path.child("finalizers").index(i), f, e);
        }
    }
    if let Some(old) = old {
        if meta.name != old.name {
            errs.immutable(&path.child("name"), &meta.name, &old.name);
        }
        if meta.namespace != old.namespace {
            errs.immutable(&path.child("namespace"), &meta.namespace, &old.namespace);
        }
    }
}

/// Validation helpers for recurring field shapes.
pub(crate) fn validate_port(errs: &mut FieldErrors, path: &Path, port: i32, allow_zero: bool) {
    let min = if allow_zero { 0 } else { 1 };
    if port < min || port > 65535 {
        errs.invalid(
            path,
            port,
            format!("must be between {min} and 65535, inclusive"),
        );
    }
}

pub(crate) fn validate_quantity(errs: &mut FieldErrors, path: &Path, q: &str) {
    match crate::quantity::Quantity::parse(q) {
        Ok(v) if v.is_negative() => errs.invalid(path, q, "must be greater than or equal to 0"),
        Ok(_) => {}
        Err(e) => errs.invalid(path, q, e.to_string()),
    }
}

pub(crate) fn default_if_none<T>(slot: &mut Option<T>, value: T) {
    if slot.is_none() {
        *slot = Some(value);
    }
}

pub(crate) fn default_str(slot: &mut Option<String>, value: &str) {
    if slot.as_deref().is_none_or(str::is_empty) {
        *slot = Some(value.to_string());
    }
}

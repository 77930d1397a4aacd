//! Custom resources: the kinds a CustomResourceDefinition adds at run time. A definition
//! becomes one registry descriptor per served version, and the descriptor's [`KindOps`] admit
//! objects by the definition's schema (prune, default, validate) instead of a Rust type.
//!
//! Descriptors are `&'static` like the built-in ones. Each distinct descriptor is leaked once
//! and reused (see [`intern`]); the schema behind it lives in a [`CustomOps`] that a changed
//! definition updates in place, so rewriting a definition does not leak its schema again.

pub mod cel;
pub mod celib;
pub mod cost;
pub mod definition;
pub mod formats;
pub mod schema;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, RwLock};

use k8s_openapi::api::admissionregistration::v1::{ServiceReference, WebhookClientConfig};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionSpec,
    CustomResourceDefinitionVersion, WebhookClientConfig as ConversionClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use crate::errors::{FieldErrors, Path};
use crate::kinds::{Admission, AdmitError, Admitted, KindOps, Operation};
use crate::names::NameRule;
use crate::patch::schema::{Elem, Type};
use crate::resources::{FieldLabel, Resource};

pub use definition::{CRD_FINALIZER, ESTABLISHED, NAMES_ACCEPTED, TERMINATING};

/// Where a custom kind's `scale` subresource reads and writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// Everything one served version of a definition says about its objects.
#[derive(Debug)]
pub struct CustomKind {
    /// Shared by the versions whose schemas are the same.
    pub schema: Option<Arc<schema::Schema>>,
    /// The schema as written (JSON text, parsed only when OpenAPI is built), shared likewise.
    pub openapi: Option<Arc<str>>,
    pub columns: Vec<CustomResourceColumnDefinition>,
    pub scale: Option<ScalePaths>,
    pub status: bool,
    /// Every version the definition serves, and the one objects are stored in.
    pub served_versions: Vec<String>,
    pub storage_version: String,
    pub deprecated: Option<String>,
    /// How objects reach another version than the one they are stored in.
    pub conversion: Conversion,
    /// How objects merge in server-side apply and patches: by the schema's
    /// `x-kubernetes-list-type`/`-list-map-keys`/`-map-type`.
    pub merge: &'static Type,
}

/// How a definition's objects are shown in another of its versions.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Conversion {
    /// Only `apiVersion` changes.
    #[default]
    None,
    /// The definition's webhook converts them (a `ConversionReview`).
    Webhook {
        client: WebhookClientConfig,
        /// The `ConversionReview` versions the webhook understands, preferred first.
        review_versions: Vec<String>,
    },
}

/// A conversion webhook's client configuration in the shape admission webhooks use (the two
/// APIs spell the same fields).
pub fn client_config(c: &ConversionClientConfig) -> WebhookClientConfig {
    WebhookClientConfig {
        ca_bundle: c.ca_bundle.clone(),
        url: c.url.clone(),
        service: c.service.as_ref().map(|s| ServiceReference {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            path: s.path.clone(),
            port: s.port,
        }),
    }
}

/// The [`KindOps`] of one custom group-version-resource; its [`CustomKind`] is replaced when
/// the definition changes.
pub struct CustomOps {
    kind: RwLock<Arc<CustomKind>>,
}

impl CustomOps {
    pub fn kind(&self) -> Arc<CustomKind> {
        self.kind.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, k: CustomKind) {
        *self.kind.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(k);
    }
}

impl KindOps for CustomOps {
    fn admit(&self, a: Admission<'_>) -> Result<Admitted, AdmitError> {
        let kind = self.kind();
        let mut obj = a.object.clone();
        if !obj.is_object() {
            return Err(AdmitError::Decode("the object is not a JSON object".into()));
        }
        let mut unknown = Vec::new();
        let mut errs = FieldErrors::default();
        // Metadata is ObjectMeta whatever the schema says: decode it as such.
        let meta_in = obj.get("metadata").cloned().unwrap_or(Value::Null);
        let meta: ObjectMeta = if meta_in.is_null() {
            ObjectMeta::default()
        } else {
            serde_path_to_error::deserialize(&meta_in)
                .map_err(|e| AdmitError::Decode(format!("metadata.{}: {}", e.path(), e.inner())))?
        };
        let old_meta: Option<ObjectMeta> = a
            .old
            .and_then(|o| o.get("metadata"))
            .and_then(|m| serde_json::from_value(m.clone()).ok());
        crate::kinds::validate_object_meta(&meta, old_meta.as_ref(), a.resource, &mut errs);
        let meta_out =
            serde_json::to_value(&meta).map_err(|e| AdmitError::Decode(e.to_string()))?;
        if a.find_unknown_fields {
            crate::kinds::unknown_fields(&meta_in, &meta_out, "metadata", &mut unknown);
        }
        obj["metadata"] = meta_out;
        if a.operation == Operation::Create
            && kind.status
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        if let Some(s) = &kind.schema {
            s.prune(&mut obj, "", true, &mut unknown);
            s.apply_defaults(&mut obj);
            s.validate(&obj, a.old, &Path::default(), &mut errs);
        }
        if !errs.is_empty() {
            return Err(AdmitError::Invalid(errs));
        }
        if !a.find_unknown_fields {
            unknown.clear();
        }
        Ok(Admitted {
            object: obj,
            unknown_fields: unknown,
        })
    }

    fn schema(&self, _generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let kind = self.kind();
        let v = kind
            .openapi
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_else(
                || serde_json::json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            );
        schemars::Schema::try_from(v).unwrap_or_default()
    }

    fn merge_type(&self) -> &'static crate::patch::schema::Type {
        self.kind().merge
    }

    fn custom(&self) -> Option<&CustomOps> {
        Some(self)
    }
}

/// Leaked strings, each distinct one once: the names in custom descriptors.
fn intern_str(s: &str) -> &'static str {
    static STRINGS: LazyLock<Mutex<std::collections::HashSet<&'static str>>> =
        LazyLock::new(Mutex::default);
    let mut set = STRINGS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(x) = set.get(s) {
        return x;
    }
    let leaked: &'static str = Box::leak(s.to_string().into_boxed_str());
    set.insert(leaked);
    leaked
}

fn intern_strs(v: &[String]) -> &'static [&'static str] {
    if v.is_empty() {
        return &[];
    }
    Box::leak(
        v.iter()
            .map(|s| intern_str(s))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    )
}

/// One descriptor per distinct shape, leaked once: a definition rewritten the same way gets
/// the same descriptor back.
fn intern(key: String, make: impl FnOnce() -> Resource) -> &'static Resource {
    static DESCRIPTORS: LazyLock<Mutex<HashMap<String, &'static Resource>>> =
        LazyLock::new(Mutex::default);
    let mut map = DESCRIPTORS.lock().unwrap_or_else(|p| p.into_inner());
    map.entry(key)
        .or_insert_with(|| Box::leak(Box::new(make())))
}

impl CustomKind {
    /// An object read from storage as this version shows it: defaults declared since it was
    /// written are filled in, as Kubernetes does on read. `None` when nothing would change.
    pub fn on_read(&self, obj: &Value) -> Option<Value> {
        let s = self.schema.as_ref().filter(|s| s.has_defaults())?;
        let mut v = obj.clone();
        s.apply_defaults(&mut v);
        (v != *obj).then_some(v)
    }
}

/// The ops of one custom group/version/plural, leaked once and updated in place.
fn ops_for(group: &str, version: &str, plural: &str, kind: CustomKind) -> &'static CustomOps {
    ops_at(format!("{group}/{version}/{plural}"), kind)
}

fn ops_at(key: String, kind: CustomKind) -> &'static CustomOps {
    static OPS: LazyLock<Mutex<HashMap<String, &'static CustomOps>>> =
        LazyLock::new(Mutex::default);
    let mut map = OPS.lock().unwrap_or_else(|p| p.into_inner());
    match map.get(&key) {
        Some(ops) => {
            ops.set(kind);
            ops
        }
        None => {
            let ops: &'static CustomOps = Box::leak(Box::new(CustomOps {
                kind: RwLock::new(Arc::new(kind)),
            }));
            map.insert(key, ops);
            ops
        }
    }
}

/// The merge shape a schema declares, each distinct shape made once (by its signature).
fn merge_type(schema: Option<&schema::Schema>) -> &'static Type {
    let mut fields = vec![(
        "metadata",
        Elem::Struct(crate::patch::schema::metadata()),
        "m".to_string(),
    )];
    if let Some(s) = schema {
        for (name, p) in &s.properties {
            if name == "metadata" {
                continue;
            }
            if let Some((e, sig)) = elem_of(p) {
                fields.push((intern_str(name), e, format!("{name}:{sig}")));
            }
        }
    }
    made_once(fields)
}

fn made_once(fields: Vec<(&'static str, Elem, String)>) -> &'static Type {
    static TYPES: LazyLock<Mutex<HashMap<String, &'static Type>>> = LazyLock::new(Mutex::default);
    let sig: Vec<&str> = fields.iter().map(|(_, _, s)| s.as_str()).collect();
    let sig = format!("{{{}}}", sig.join(","));
    let mut types = TYPES.lock().unwrap_or_else(|p| p.into_inner());
    types.entry(sig).or_insert_with(|| {
        crate::patch::schema::made(fields.into_iter().map(|(n, e, _)| (n, e)).collect())
    })
}

/// A field's merge shape and its signature, if it is not plain (objects field by field,
/// lists replaced whole).
fn elem_of(s: &schema::Schema) -> Option<(Elem, String)> {
    match s.ty.as_deref() {
        Some("array") => match s.list_type.as_deref() {
            Some("map") => {
                let (item, item_sig) = s
                    .items
                    .as_deref()
                    .and_then(struct_of)
                    .unwrap_or((Type::empty(), String::new()));
                Some((
                    Elem::MapList {
                        keys: intern_strs(&s.list_map_keys),
                        item,
                    },
                    format!("map{:?}{item_sig}", s.list_map_keys),
                ))
            }
            Some("set") => Some((Elem::SetList, "set".into())),
            _ => None,
        },
        Some("object") if s.map_type.as_deref() == Some("atomic") => {
            Some((Elem::Atomic, "atomic".into()))
        }
        Some("object") => struct_of(s).map(|(t, sig)| (Elem::Struct(t), sig)),
        _ => None,
    }
}

fn struct_of(s: &schema::Schema) -> Option<(&'static Type, String)> {
    let fields: Vec<(&'static str, Elem, String)> = s
        .properties
        .iter()
        .filter_map(|(n, p)| elem_of(p).map(|(e, sig)| (intern_str(n), e, format!("{n}:{sig}"))))
        .collect();
    if fields.is_empty() {
        return None;
    }
    let sig: Vec<&str> = fields.iter().map(|(_, _, s)| s.as_str()).collect();
    let sig = format!("{{{}}}", sig.join(","));
    Some((made_once(fields), sig))
}

/// A `selectableFields` or printer column path (`.spec.color`) as a field-selector label.
fn field_label(json_path: &str) -> Option<FieldLabel> {
    let label = json_path.strip_prefix('.')?;
    let parts: Vec<String> = label.split('.').map(str::to_string).collect();
    Some(FieldLabel {
        label: intern_str(label),
        path: intern_strs(&parts),
        absent: "",
    })
}

/// A version's schema compiled, with its text; versions with the same schema share both
/// (`seen` holds those compiled so far), which halves what a two-version definition costs.
type Compiled = (Arc<str>, Arc<schema::Schema>);

fn compile_version(
    crd: &CustomResourceDefinition,
    v: &CustomResourceDefinitionVersion,
    seen: &mut Vec<Compiled>,
) -> CustomKind {
    let spec = &crd.spec;
    let props = v
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref());
    let compiled = props.and_then(|p| {
        let text: Arc<str> = serde_json::to_string(p).ok()?.into();
        if let Some((t, s)) = seen.iter().find(|(t, _)| **t == *text) {
            return Some((t.clone(), s.clone()));
        }
        let mut scratch = FieldErrors::default();
        let s = Arc::new(schema::compile(p, &Path::default(), &mut scratch));
        seen.push((text.clone(), s.clone()));
        Some((text, s))
    });
    let (openapi, schema) = match compiled {
        Some((t, s)) => (Some(t), Some(s)),
        None => (None, None),
    };
    let subs = v.subresources.as_ref();
    let scale = subs.and_then(|s| s.scale.as_ref()).map(|s| ScalePaths {
        spec_replicas: s.spec_replicas_path.clone(),
        status_replicas: s.status_replicas_path.clone(),
        label_selector: s.label_selector_path.clone(),
    });
    let merge = merge_type(schema.as_deref());
    CustomKind {
        merge,
        schema,
        openapi,
        columns: v.additional_printer_columns.clone().unwrap_or_default(),
        scale,
        status: subs.is_some_and(|s| s.status.is_some()),
        served_versions: spec
            .versions
            .iter()
            .filter(|v| v.served)
            .map(|v| v.name.clone())
            .collect(),
        storage_version: spec
            .versions
            .iter()
            .find(|v| v.storage)
            .map(|v| v.name.clone())
            .unwrap_or_default(),
        conversion: conversion_of(spec),
        deprecated: v
            .deprecated
            .unwrap_or(false)
            .then(|| v.deprecation_warning.clone().unwrap_or_default()),
    }
}

fn conversion_of(spec: &CustomResourceDefinitionSpec) -> Conversion {
    let Some(c) = spec.conversion.as_ref().filter(|c| c.strategy == "Webhook") else {
        return Conversion::None;
    };
    let Some(w) = &c.webhook else {
        return Conversion::None;
    };
    Conversion::Webhook {
        client: w
            .client_config
            .as_ref()
            .map(client_config)
            .unwrap_or_default(),
        review_versions: w.conversion_review_versions.clone(),
    }
}

/// The registry descriptors of an established definition: one per served version.
pub fn descriptors(crd: &CustomResourceDefinition) -> Vec<&'static Resource> {
    let spec = &crd.spec;
    let names = &spec.names;
    let namespaced = spec.scope == "Namespaced";
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for v in spec.versions.iter().filter(|v| v.served) {
        let kind = compile_version(crd, v, &mut seen);
        let status = kind.status;
        let scale = kind.scale.is_some();
        let ops = ops_for(&spec.group, &v.name, &names.plural, kind);
        let fields: Vec<String> = v
            .selectable_fields
            .iter()
            .flatten()
            .map(|f| f.json_path.clone())
            .collect();
        let singular = names
            .singular
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| names.kind.to_lowercase());
        let short_names = names.short_names.clone().unwrap_or_default();
        let categories = names.categories.clone().unwrap_or_default();
        let key = format!(
            "{}|{}|{}|{}|{}|{namespaced}|{short_names:?}|{categories:?}|{status}|{scale}|{fields:?}",
            spec.group, v.name, names.kind, names.plural, singular
        );
        out.push(intern(key, || Resource {
            group: intern_str(&spec.group),
            version: intern_str(&v.name),
            kind: intern_str(&names.kind),
            plural: intern_str(&names.plural),
            singular: intern_str(&singular),
            namespaced,
            short_names: intern_strs(&short_names),
            categories: intern_strs(&categories),
            status,
            scale,
            name_rule: NameRule::Subdomain,
            generation: true,
            reset_status_on_create: status,
            delete_returns_object: false,
            field_labels: Box::leak(
                fields
                    .iter()
                    .filter_map(|f| field_label(f))
                    .collect::<Vec<_>>()
                    .into_boxed_slice(),
            ),
            subresources: &[],
            ops,
        }));
    }
    out
}

/// A descriptor for a custom kind a client found through discovery (the garbage collector
/// follows them): names and scope only, for paths. It never admits anything, and is kept
/// apart from the API server's own descriptors even in the same process.
pub fn discovered(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
) -> &'static Resource {
    let key = format!("discovered|{group}|{version}|{kind}|{plural}|{namespaced}");
    intern(key.clone(), || Resource {
        group: intern_str(group),
        version: intern_str(version),
        kind: intern_str(kind),
        plural: intern_str(plural),
        singular: intern_str(&kind.to_lowercase()),
        namespaced,
        short_names: &[],
        categories: &[],
        status: false,
        scale: false,
        name_rule: NameRule::Subdomain,
        generation: true,
        reset_status_on_create: false,
        delete_returns_object: false,
        field_labels: &[],
        subresources: &[],
        ops: ops_at(
            key,
            CustomKind {
                schema: None,
                openapi: None,
                columns: Vec::new(),
                scale: None,
                status: false,
                served_versions: vec![version.to_string()],
                storage_version: version.to_string(),
                deprecated: None,
                conversion: Conversion::None,
                merge: merge_type(None),
            },
        ),
    })
}

/// The value at a simple JSON path (`.spec.replicas`) of an object.
pub fn at_path<'a>(obj: &'a Value, json_path: &str) -> Option<&'a Value> {
    let mut v = obj;
    for part in json_path.trim_start_matches('.').split('.') {
        if part.is_empty() {
            continue;
        }
        v = v.get(part)?;
    }
    Some(v)
}

/// Set the value at a simple JSON path, making the objects on the way.
pub fn set_path(obj: &mut Value, json_path: &str, value: Value) {
    let parts: Vec<&str> = json_path
        .trim_start_matches('.')
        .split('.')
        .filter(|p| !p.is_empty())
        .collect();
    let mut v = obj;
    for (i, part) in parts.iter().enumerate() {
        if !v.is_object() {
            *v = Value::Object(Default::default());
        }
        let map = v.as_object_mut().expect("made an object above");
        if i + 1 == parts.len() {
            map.insert((*part).to_string(), value);
            return;
        }
        v = map
            .entry((*part).to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
}

//! CustomResourceDefinition itself (apiextensions.k8s.io/v1): its defaults, its checks (names,
//! versions, structural schemas, subresources, printer columns) and the status the server
//! gives it (accepted names, stored versions, `NamesAccepted` and `Established`).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceConversion, CustomResourceDefinition, CustomResourceDefinitionCondition,
    CustomResourceDefinitionStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::schema::{self, Schema};
use crate::errors::{FieldErrors, Path};
use crate::kinds::{Kind, default_str};
use crate::names;

/// Held by a definition being deleted until its objects are gone.
pub const CRD_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";
pub const NAMES_ACCEPTED: &str = "NamesAccepted";
pub const ESTABLISHED: &str = "Established";
pub const TERMINATING: &str = "Terminating";

impl Kind for CustomResourceDefinition {
    fn default(&mut self) {
        let names = &mut self.spec.names;
        if names.singular.as_deref().is_none_or(str::is_empty) {
            names.singular = Some(names.kind.to_lowercase());
        }
        default_str(&mut names.list_kind, &format!("{}List", names.kind));
        let conv = self.spec.conversion.get_or_insert_with(Default::default);
        if conv.strategy.is_empty() {
            conv.strategy = "None".into();
        }
        if let Some(svc) = conv
            .webhook
            .as_mut()
            .and_then(|w| w.client_config.as_mut())
            .and_then(|c| c.service.as_mut())
        {
            svc.port.get_or_insert(443);
        }
        for v in &mut self.spec.versions {
            if let Some(cols) = &mut v.additional_printer_columns {
                for c in cols {
                    c.priority.get_or_insert(0);
                }
            }
        }
    }

    fn validate(&self, old: Option<&Self>, errs: &mut FieldErrors) {
        let spec = &self.spec;
        let sp = Path::root("spec");
        let name = self.metadata.name.as_deref().unwrap_or("");
        let want = format!("{}.{}", spec.names.plural, spec.group);
        if name != want {
            errs.invalid(
                &Path::root("metadata").child("name"),
                name,
                "must be spec.names.plural+\".\"+spec.group",
            );
        }
        if spec.group.is_empty() {
            errs.required(&sp.child("group"), "");
        } else {
            for e in names::dns1123_subdomain(&spec.group) {
                errs.invalid(&sp.child("group"), &spec.group, e);
            }
            if spec.group.split('.').count() < 2 {
                errs.invalid(
                    &sp.child("group"),
                    &spec.group,
                    "should be a domain with at least one dot",
                );
            }
        }
        errs.one_of(&sp.child("scope"), &spec.scope, &["Cluster", "Namespaced"]);
        let np = sp.child("names");
        let n = &spec.names;
        for (field, value, required) in [
            ("plural", Some(n.plural.as_str()), true),
            ("singular", n.singular.as_deref(), false),
        ] {
            match value {
                Some(v) if !v.is_empty() => {
                    for e in names::dns1035_label(v) {
                        errs.invalid(&np.child(field), v, e);
                    }
                }
                _ if required => errs.required(&np.child(field), ""),
                _ => {}
            }
        }
        for (field, value) in [
            ("kind", Some(n.kind.as_str())),
            ("listKind", n.list_kind.as_deref()),
        ] {
            match value {
                Some(v) if !v.is_empty() => {
                    for e in names::dns1035_label(&v.to_lowercase()) {
                        errs.invalid(&np.child(field), v, e);
                    }
                }
                _ => errs.required(&np.child(field), ""),
            }
        }
        if n.list_kind.as_deref() == Some(n.kind.as_str()) && !n.kind.is_empty() {
            errs.invalid(
                &np.child("listKind"),
                &n.list_kind,
                "kind and listKind may not be the same or parameters and results conflict",
            );
        }
        for (i, s) in n.short_names.iter().flatten().enumerate() {
            for e in names::dns1035_label(s) {
                errs.invalid(&np.child("shortNames").index(i), s, e);
            }
        }
        for (i, c) in n.categories.iter().flatten().enumerate() {
            for e in names::dns1035_label(c) {
                errs.invalid(&np.child("categories").index(i), c, e);
            }
        }
        validate_versions(self, &sp, errs);
        if let Some(c) = &spec.conversion {
            validate_conversion(
                c,
                spec.preserve_unknown_fields,
                &sp.child("conversion"),
                errs,
            );
        }
        if let Some(old) = old {
            if spec.scope != old.spec.scope {
                errs.immutable(&sp.child("scope"), &spec.scope, &old.spec.scope);
            }
            if spec.group != old.spec.group {
                errs.immutable(&sp.child("group"), &spec.group, &old.spec.group);
            }
            // A version objects may still be stored in cannot go away.
            let stored = old
                .status
                .as_ref()
                .and_then(|s| s.stored_versions.clone())
                .unwrap_or_default();
            for (i, v) in stored.iter().enumerate() {
                if !spec.versions.iter().any(|x| &x.name == v) {
                    errs.invalid(
                        &Path::root("status").child("storedVersions").index(i),
                        v,
                        "must appear in spec.versions",
                    );
                }
            }
        }
    }
}

/// Kubernetes checks a definition's conversion in its internal form, so its messages name
/// `webhookClientConfig` and `conversionReviewVersions` directly under `spec.conversion`.
fn validate_conversion(
    c: &CustomResourceConversion,
    preserve_unknown: Option<bool>,
    cp: &Path,
    errs: &mut FieldErrors,
) {
    errs.one_of(&cp.child("strategy"), &c.strategy, &["None", "Webhook"]);
    let client = c.webhook.as_ref().and_then(|w| w.client_config.as_ref());
    let versions = c
        .webhook
        .as_ref()
        .map(|w| w.conversion_review_versions.as_slice())
        .unwrap_or_default();
    let clp = cp.child("webhookClientConfig");
    let vp = cp.child("conversionReviewVersions");
    if c.strategy != "Webhook" {
        if client.is_some() {
            errs.forbidden(
                &clp,
                "should not be set when strategy is not set to Webhook",
            );
        }
        if !versions.is_empty() {
            errs.forbidden(&vp, "should not be set when strategy is not set to Webhook");
        }
        return;
    }
    match client {
        None => errs.required(&clp, "required when strategy is set to Webhook"),
        Some(cc) => crate::kinds::admission::check_client(&super::client_config(cc), &clp, errs),
    }
    if versions.is_empty() {
        errs.required(&vp, "");
    } else {
        let mut seen: Vec<&str> = Vec::new();
        for (i, v) in versions.iter().enumerate() {
            for e in names::dns1035_label(v) {
                errs.invalid(&vp.index(i), v, e);
            }
            if seen.contains(&v.as_str()) {
                errs.invalid(&vp.index(i), v, "duplicate version");
            }
            seen.push(v);
        }
        if !versions.iter().any(|v| v == "v1" || v == "v1beta1") {
            // Shown as Go prints a []string.
            let shown: Vec<String> = versions.iter().map(|v| format!("{v:?}")).collect();
            errs.invalid_rendered(
                &vp,
                format!("[]string{{{}}}", shown.join(", ")),
                "must include at least one of v1, v1beta1",
            );
        }
    }
    if preserve_unknown == Some(true) {
        errs.invalid(
            &cp.child("strategy"),
            &c.strategy,
            "must be None if spec.preserveUnknownFields is true",
        );
    }
}

fn validate_versions(crd: &CustomResourceDefinition, sp: &Path, errs: &mut FieldErrors) {
    {
        let spec = &crd.spec;
        let vp = sp.child("versions");
        if spec.versions.is_empty() {
            errs.invalid(
                &vp,
                "[]",
                "must have exactly one version marked as storage version",
            );
            return;
        }
        let storage = spec.versions.iter().filter(|v| v.storage).count();
        if storage != 1 {
            errs.invalid(
                &vp,
                format!("{storage} storage versions"),
                "must have exactly one version marked as storage version",
            );
        }
        if !spec.versions.iter().any(|v| v.served) {
            errs.invalid(&vp, "no served versions", "must serve at least one version");
        }
        // Parts every version has alike are checked once, and reported where Kubernetes' internal
        // form keeps them then: at the top of the spec (`spec.validation.openAPIV3Schema...`).
        let first = &spec.versions[0];
        let same = |f: &dyn Fn(&k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionVersion) -> String| {
            spec.versions.iter().all(|v| f(v) == f(first))
        };
        let shared_schema = same(&|v| serde_json::to_string(&v.schema).unwrap_or_default());
        let shared_subresources =
            same(&|v| serde_json::to_string(&v.subresources).unwrap_or_default());
        let shared_columns =
            same(&|v| serde_json::to_string(&v.additional_printer_columns).unwrap_or_default());
        let mut seen = std::collections::HashSet::new();
        for (i, v) in spec.versions.iter().enumerate() {
            let p = vp.index(i);
            if !seen.insert(v.name.as_str()) {
                errs.duplicate(&p.child("name"), &v.name);
            }
            for e in names::dns1035_label(&v.name) {
                errs.invalid(&p.child("name"), &v.name, e);
            }
            let later = i > 0;
            let (schema_path, check_schema) = if shared_schema {
                (sp.child("validation").child("openAPIV3Schema"), !later)
            } else {
                (p.child("schema").child("openAPIV3Schema"), true)
            };
            let (scale_path, check_scale_here) = if shared_subresources {
                (sp.child("subresources").child("scale"), !later)
            } else {
                (p.child("subresources").child("scale"), true)
            };
            let (columns_path, check_columns) = if shared_columns {
                (sp.child("additionalPrinterColumns"), !later)
            } else {
                (p.child("additionalPrinterColumns"), true)
            };
            match v
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
            {
                None => errs.required(
                    &p.child("schema").child("openAPIV3Schema"),
                    "schemas are required",
                ),
                Some(props) => {
                    let mut mine = FieldErrors::default();
                    let compiled = schema::compile(props, &schema_path, &mut mine);
                    check_root(&compiled, &schema_path, &mut mine);
                    super::cost::check(&compiled, &schema_path, &mut mine);
                    if check_schema {
                        errs.extend(mine);
                    }
                    if check_scale_here
                        && let Some(scale) = v.subresources.as_ref().and_then(|s| s.scale.as_ref())
                    {
                        check_scale(scale, &compiled, &scale_path, errs);
                    }
                }
            }
            let columns = if check_columns {
                v.additional_printer_columns.as_deref().unwrap_or_default()
            } else {
                &[]
            };
            for (j, c) in columns.iter().enumerate() {
                let cp = columns_path.index(j);
                if c.name.is_empty() {
                    errs.required(&cp.child("name"), "");
                }
                errs.one_of(
                    &cp.child("type"),
                    &c.type_,
                    &["boolean", "date", "integer", "number", "string"],
                );
                if let Some(f) = c.format.as_deref().filter(|f| !f.is_empty()) {
                    errs.one_of(
                        &cp.child("format"),
                        f,
                        &[
                            "byte",
                            "date",
                            "date-time",
                            "double",
                            "float",
                            "int32",
                            "int64",
                            "password",
                        ],
                    );
                }
                if !c.json_path.starts_with('.') {
                    errs.invalid(
                        &cp.child("jsonPath"),
                        &c.json_path,
                        "must be a simple json path starting with .",
                    );
                }
            }
            for (j, f) in v.selectable_fields.iter().flatten().enumerate() {
                let fp = p.child("selectableFields").index(j).child("jsonPath");
                if !f.json_path.starts_with('.') || f.json_path.contains('[') {
                    errs.invalid(
                        &fp,
                        &f.json_path,
                        "must be a simple json path starting with .",
                    );
                }
            }
        }
    }
}

/// The rules the root of a custom kind's schema has beyond being structural.
fn check_root(s: &Schema, path: &Path, errs: &mut FieldErrors) {
    match s.ty.as_deref() {
        Some("object") => {}
        None => errs.required(&path.child("type"), "must not be empty at the root"),
        Some(t) => errs.invalid(&path.child("type"), t, "must be object at the root"),
    }
    if s.nullable {
        errs.forbidden(&path.child("nullable"), "must be false at the root");
    }
    for field in ["apiVersion", "kind"] {
        if let Some(f) = s.properties.get(field)
            && f.ty.as_deref().is_some_and(|t| t != "string")
        {
            errs.invalid(
                &path.child("properties").key(field).child("type"),
                f.ty.as_deref().unwrap_or(""),
                "must be string",
            );
        }
    }
    if let Some(meta) = s.properties.get("metadata") {
        let extra = meta
            .properties
            .keys()
            .any(|k| k != "name" && k != "generateName")
            || meta.additional.is_some()
            || !meta.rules.is_empty();
        if extra || meta.ty.as_deref().is_some_and(|t| t != "object") {
            errs.forbidden(
                &path.child("properties").key("metadata"),
                "must not specify anything other than name and generateName, but metadata is implicitly specified",
            );
        }
    }
    for (name, child) in &s.properties {
        schema::check_structural(child, &path.child("properties").key(name), false, errs);
    }
    if let Some(a) = &s.additional {
        schema::check_structural(a, &path.child("additionalProperties"), false, errs);
    }
    for (name, list) in [
        ("allOf", &s.all_of),
        ("anyOf", &s.any_of),
        ("oneOf", &s.one_of),
    ] {
        for (i, sub) in list.iter().enumerate() {
            schema::check_structural(sub, &path.child(name).index(i), true, errs);
        }
    }
    if s.properties.is_empty() && s.additional.is_none() && !s.preserve_unknown && s.ty.is_some() {
        // An object with no fields and no preserve-unknown keeps only its metadata: legal.
    }
}

fn check_scale(
    scale: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceSubresourceScale,
    root: &Schema,
    path: &Path,
    errs: &mut FieldErrors,
) {
    let under = |p: &str, prefix: &str| p.starts_with(prefix) && p.len() > prefix.len();
    if !under(&scale.spec_replicas_path, ".spec.") {
        errs.invalid(
            &path.child("specReplicasPath"),
            &scale.spec_replicas_path,
            "should be a json path under .spec",
        );
    } else if let Some(t) = schema_at(root, &scale.spec_replicas_path)
        && t.ty.as_deref().is_some_and(|t| t != "integer")
    {
        errs.invalid(
            &path.child("specReplicasPath"),
            &scale.spec_replicas_path,
            "should be a json path to an integer field",
        );
    }
    if !under(&scale.status_replicas_path, ".status.") {
        errs.invalid(
            &path.child("statusReplicasPath"),
            &scale.status_replicas_path,
            "should be a json path under .status",
        );
    }
    if let Some(sel) = &scale.label_selector_path
        && !(under(sel, ".spec.") || under(sel, ".status."))
    {
        errs.invalid(
            &path.child("labelSelectorPath"),
            sel,
            "should be a json path under either .spec or .status",
        );
    }
}

fn schema_at<'a>(root: &'a Schema, json_path: &str) -> Option<&'a Schema> {
    let mut s = root;
    for part in json_path.trim_start_matches('.').split('.') {
        s = s.properties.get(part)?;
    }
    Some(s)
}

fn condition(ty: &str, ok: bool, reason: &str, message: &str) -> CustomResourceDefinitionCondition {
    CustomResourceDefinitionCondition {
        type_: ty.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_transition_time: Some(Time(jiff::Timestamp::now())),
    }
}

/// Set a condition, keeping its transition time if its status does not change.
fn set_condition(
    conditions: &mut Vec<CustomResourceDefinitionCondition>,
    new: CustomResourceDefinitionCondition,
) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(c) => {
            let time = if c.status == new.status {
                c.last_transition_time.clone()
            } else {
                new.last_transition_time.clone()
            };
            *c = CustomResourceDefinitionCondition {
                last_transition_time: time,
                ..new
            };
        }
        None => conditions.push(new),
    }
}

/// Give a definition the status the server keeps for it: its names accepted (or why not),
/// established once they are, and every storage version it has had. `conflict` is why its
/// names cannot be served, if they cannot.
pub fn settle_status(crd: &mut CustomResourceDefinition, conflict: Option<&str>) {
    let status = crd
        .status
        .get_or_insert_with(CustomResourceDefinitionStatus::default);
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    match conflict {
        None => {
            status.accepted_names = Some(crd.spec.names.clone());
            set_condition(
                conditions,
                condition(NAMES_ACCEPTED, true, "NoConflicts", "no conflicts found"),
            );
            let established = conditions
                .iter()
                .any(|c| c.type_ == ESTABLISHED && c.status == "True");
            if !established {
                set_condition(
                    conditions,
                    condition(
                        ESTABLISHED,
                        true,
                        "InitialNamesAccepted",
                        "the initial names have been accepted",
                    ),
                );
            }
        }
        Some(why) => {
            set_condition(
                conditions,
                condition(NAMES_ACCEPTED, false, "NameConflict", why),
            );
            if status.accepted_names.is_none() {
                set_condition(
                    conditions,
                    condition(
                        ESTABLISHED,
                        false,
                        "NotAccepted",
                        "not all names are accepted",
                    ),
                );
            }
        }
    }
    let stored = status.stored_versions.get_or_insert_with(Vec::new);
    if let Some(v) = crd.spec.versions.iter().find(|v| v.storage)
        && !stored.contains(&v.name)
    {
        stored.push(v.name.clone());
    }
}

/// Whether a definition's kinds are served: its names accepted and established, and it is
/// not being deleted.
pub fn is_established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == ESTABLISHED && c.status == "True")
        })
}

/// Mark a definition as being deleted (its objects are then removed).
pub fn set_terminating(crd: &mut CustomResourceDefinition, message: &str) {
    let status = crd
        .status
        .get_or_insert_with(CustomResourceDefinitionStatus::default);
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    set_condition(
        conditions,
        condition(TERMINATING, true, "InstanceDeletionInProgress", message),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::Kind;
    use serde_json::json;

    fn crd(schema: serde_json::Value) -> CustomResourceDefinition {
        serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [{"name": "v1", "served": true, "storage": true,
                              "schema": {"openAPIV3Schema": schema}}]
            }
        }))
        .unwrap()
    }

    fn errors(c: &CustomResourceDefinition) -> Vec<String> {
        let mut c = c.clone();
        c.default();
        let mut errs = FieldErrors::default();
        c.validate(None, &mut errs);
        errs.0.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn structural_schemas_are_required() {
        let good = crd(json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {"replicas": {"type": "integer"}}}}}));
        assert_eq!(errors(&good), Vec::<String>::new());
        let untyped = crd(json!({"type": "object", "properties": {
            "spec": {"properties": {"replicas": {"type": "integer"}}}}}));
        assert_eq!(
            errors(&untyped),
            vec![
                "spec.validation.openAPIV3Schema.properties[spec].type: Required value: must not be empty for specified object fields"
            ]
        );
        let both = crd(json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {"a": {"type": "string"}},
                     "additionalProperties": {"type": "string"}}}}));
        assert_eq!(
            errors(&both),
            vec![
                "spec.validation.openAPIV3Schema.properties[spec].additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive"
            ]
        );
        let mut bad_name = good.clone();
        bad_name.metadata.name = Some("widgets".into());
        assert_eq!(
            errors(&bad_name),
            vec![
                r#"metadata.name: Invalid value: "widgets": must be spec.names.plural+"."+spec.group"#
            ]
        );
    }

    #[test]
    fn status_names_and_stored_versions() {
        let mut c = crd(json!({"type": "object"}));
        c.default();
        settle_status(&mut c, None);
        assert!(is_established(&c));
        let s = c.status.as_ref().unwrap();
        assert_eq!(s.stored_versions.as_deref(), Some(&["v1".to_string()][..]));
        assert_eq!(s.accepted_names.as_ref().unwrap().kind, "Widget");
        let mut taken = crd(json!({"type": "object"}));
        settle_status(&mut taken, Some("\"widgets\" is already in use"));
        assert!(!is_established(&taken));
    }
}

//! A CustomResourceDefinition's `openAPIV3Schema`, compiled once for the objects it governs:
//! checked to be structural when the definition is written, then used on every custom object
//! to drop unknown fields (pruning), fill defaults and validate, with Kubernetes' messages.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use regex::Regex;
use serde_json::Value;

use crate::errors::{FieldErrors, Path};

/// One node of a structural schema.
#[derive(Debug, Default)]
pub struct Schema {
    pub ty: Option<String>,
    pub nullable: bool,
    pub format: Option<String>,
    pub properties: BTreeMap<String, Schema>,
    /// `additionalProperties` with a schema: a map whose values all look like this.
    pub additional: Option<Box<Schema>>,
    pub items: Option<Box<Schema>>,
    pub required: Vec<String>,
    pub enum_values: Vec<Value>,
    pub pattern: Option<(String, Regex)>,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
    pub exclusive_minimum: bool,
    pub exclusive_maximum: bool,
    pub multiple_of: Option<f64>,
    pub min_length: Option<i64>,
    pub max_length: Option<i64>,
    pub min_items: Option<i64>,
    pub max_items: Option<i64>,
    pub unique_items: bool,
    pub min_properties: Option<i64>,
    pub max_properties: Option<i64>,
    /// Value checks only: these never add fields, so they neither prune nor default.
    pub all_of: Vec<Schema>,
    pub any_of: Vec<Schema>,
    pub one_of: Vec<Schema>,
    pub not: Option<Box<Schema>>,
    pub default: Option<Value>,
    pub description: Option<String>,
    pub preserve_unknown: bool,
    pub int_or_string: bool,
    pub embedded: bool,
    pub list_type: Option<String>,
    pub list_map_keys: Vec<String>,
    pub map_type: Option<String>,
    pub rules: Vec<super::cel::Rule>,
}

/// What a schema may be written as. Checked where the definition is validated.
pub fn compile(props: &JSONSchemaProps, path: &Path, errs: &mut FieldErrors) -> Schema {
    let mut s = Schema {
        ty: props.type_.clone().filter(|t| !t.is_empty()),
        nullable: props.nullable.unwrap_or(false),
        format: props.format.clone().filter(|f| !f.is_empty()),
        required: props.required.clone().unwrap_or_default(),
        enum_values: props.enum_.iter().flatten().map(|j| j.0.clone()).collect(),
        minimum: props.minimum,
        maximum: props.maximum,
        exclusive_minimum: props.exclusive_minimum.unwrap_or(false),
        exclusive_maximum: props.exclusive_maximum.unwrap_or(false),
        multiple_of: props.multiple_of,
        min_length: props.min_length,
        max_length: props.max_length,
        min_items: props.min_items,
        max_items: props.max_items,
        unique_items: props.unique_items.unwrap_or(false),
        min_properties: props.min_properties,
        max_properties: props.max_properties,
        default: props.default.as_ref().map(|j| j.0.clone()),
        description: props.description.clone(),
        preserve_unknown: props.x_kubernetes_preserve_unknown_fields.unwrap_or(false),
        int_or_string: props.x_kubernetes_int_or_string.unwrap_or(false),
        embedded: props.x_kubernetes_embedded_resource.unwrap_or(false),
        list_type: props.x_kubernetes_list_type.clone(),
        list_map_keys: props.x_kubernetes_list_map_keys.clone().unwrap_or_default(),
        map_type: props.x_kubernetes_map_type.clone(),
        ..Schema::default()
    };
    if let Some(p) = &props.pattern {
        match Regex::new(p) {
            Ok(re) => s.pattern = Some((p.clone(), re)),
            Err(e) => errs.invalid(
                &path.child("pattern"),
                p,
                format!("must be a valid regular expression, but isn't: {e}"),
            ),
        }
    }
    if let Some(t) = &s.ty
        && !matches!(
            t.as_str(),
            "object" | "array" | "string" | "integer" | "number" | "boolean"
        )
    {
        errs.not_supported(
            &path.child("type"),
            t,
            &["array", "boolean", "integer", "number", "object", "string"],
        );
    }
    for (name, p) in props.properties.iter().flatten() {
        let at = path.child("properties").key(name);
        s.properties.insert(name.clone(), compile(p, &at, errs));
    }
    match &props.additional_properties {
        Some(JSONSchemaPropsOrBool::Schema(p)) => {
            if props.properties.as_ref().is_some_and(|p| !p.is_empty()) {
                errs.forbidden(
                    &path.child("additionalProperties"),
                    "additionalProperties and properties are mutual exclusive",
                );
            }
            s.additional = Some(Box::new(compile(
                p,
                &path.child("additionalProperties"),
                errs,
            )));
        }
        Some(JSONSchemaPropsOrBool::Bool(true)) => {
            s.additional = Some(Box::new(Schema {
                preserve_unknown: true,
                ..Schema::default()
            }))
        }
        Some(JSONSchemaPropsOrBool::Bool(false)) | None => {}
    }
    match &props.items {
        Some(JSONSchemaPropsOrArray::Schema(p)) => {
            s.items = Some(Box::new(compile(p, &path.child("items"), errs)));
        }
        Some(JSONSchemaPropsOrArray::Schemas(_)) => errs.forbidden(
            &path.child("items"),
            "items must be a schema object and not an array",
        ),
        None => {}
    }
    let logic = |list: &Option<Vec<JSONSchemaProps>>, name: &str, errs: &mut FieldErrors| {
        list.iter()
            .flatten()
            .enumerate()
            .map(|(i, p)| compile(p, &path.child(name).index(i), errs))
            .collect()
    };
    s.all_of = logic(&props.all_of, "allOf", errs);
    s.any_of = logic(&props.any_of, "anyOf", errs);
    s.one_of = logic(&props.one_of, "oneOf", errs);
    if let Some(n) = &props.not {
        s.not = Some(Box::new(compile(n, &path.child("not"), errs)));
    }
    for (i, rule) in props.x_kubernetes_validations.iter().flatten().enumerate() {
        let at = path.child("x-kubernetes-validations").index(i);
        match super::cel::Rule::compile(rule) {
            Ok(r) => s.rules.push(r),
            Err(e) => errs.invalid(
                &at.child("rule"),
                &rule.rule,
                format!("compilation failed: {e}"),
            ),
        }
    }
    s
}

/// The structural rules for a node reached through `properties`, `items` or
/// `additionalProperties` (`logic` is true under `allOf`/`anyOf`/`oneOf`/`not`, where types
/// may be left out and nothing may be defaulted or declared that the structure lacks).
pub fn check_structural(s: &Schema, path: &Path, logic: bool, errs: &mut FieldErrors) {
    if !logic {
        if s.ty.is_none() && !s.int_or_string && !s.preserve_unknown_only() {
            errs.required(
                &path.child("type"),
                "must not be empty for specified object fields",
            );
        }
        if s.int_or_string && s.ty.is_some() {
            errs.invalid(
                &path.child("type"),
                s.ty.as_deref().unwrap_or(""),
                "must be empty if x-kubernetes-int-or-string is true",
            );
        }
        if s.embedded && s.ty.as_deref() != Some("object") {
            errs.invalid(
                &path.child("type"),
                s.ty.as_deref().unwrap_or(""),
                "must be object if x-kubernetes-embedded-resource is true",
            );
        }
        if s.embedded && !s.preserve_unknown && s.properties.is_empty() && s.additional.is_none() {
            errs.required(
                &path.child("properties"),
                "must not be empty if x-kubernetes-embedded-resource is true without x-kubernetes-preserve-unknown-fields",
            );
        }
    } else {
        if s.default.is_some() {
            errs.forbidden(
                &path.child("default"),
                "must not be set inside logical junctors",
            );
        }
        if s.preserve_unknown {
            errs.forbidden(
                &path.child("x-kubernetes-preserve-unknown-fields"),
                "must be false to be structural",
            );
        }
        if s.embedded {
            errs.forbidden(
                &path.child("x-kubernetes-embedded-resource"),
                "must be false to be structural",
            );
        }
    }
    if s.ty.as_deref() == Some("array") && s.items.is_none() && !logic {
        errs.required(&path.child("items"), "must be specified");
    }
    if let Some(lt) = &s.list_type {
        if !matches!(lt.as_str(), "atomic" | "set" | "map") {
            errs.not_supported(
                &path.child("x-kubernetes-list-type"),
                lt,
                &["atomic", "set", "map"],
            );
        }
        if lt == "map" && s.list_map_keys.is_empty() {
            errs.required(
                &path.child("x-kubernetes-list-map-keys"),
                "must not be empty if x-kubernetes-list-type is map",
            );
        }
    }
    if let Some(mt) = &s.map_type
        && !matches!(mt.as_str(), "atomic" | "granular")
    {
        errs.not_supported(
            &path.child("x-kubernetes-map-type"),
            mt,
            &["atomic", "granular"],
        );
    }
    for (name, p) in &s.properties {
        check_structural(p, &path.child("properties").key(name), logic, errs);
    }
    if let Some(a) = &s.additional {
        check_structural(a, &path.child("additionalProperties"), logic, errs);
    }
    if let Some(i) = &s.items {
        check_structural(i, &path.child("items"), logic, errs);
    }
    for (name, list) in [
        ("allOf", &s.all_of),
        ("anyOf", &s.any_of),
        ("oneOf", &s.one_of),
    ] {
        for (i, sub) in list.iter().enumerate() {
            check_structural(sub, &path.child(name).index(i), true, errs);
        }
    }
    if let Some(n) = &s.not {
        check_structural(n, &path.child("not"), true, errs);
    }
}

impl Schema {
    /// `x-kubernetes-preserve-unknown-fields` with nothing else: any value goes.
    fn preserve_unknown_only(&self) -> bool {
        self.preserve_unknown && self.properties.is_empty() && self.additional.is_none()
    }

    /// Whether any node declares a default (objects read from storage are then defaulted
    /// again, for defaults added after they were written).
    pub fn has_defaults(&self) -> bool {
        self.default.is_some()
            || self.properties.values().any(Schema::has_defaults)
            || self.additional.as_ref().is_some_and(|a| a.has_defaults())
            || self.items.as_ref().is_some_and(|i| i.has_defaults())
    }

    /// The schema of a field of this object, if it declares one.
    pub fn field(&self, name: &str) -> Option<&Schema> {
        self.properties.get(name).or(self.additional.as_deref())
    }

    /// Drop what the schema does not declare, and nulls where null is not allowed. `unknown`
    /// collects the dropped fields' paths (for `fieldValidation`). `root` keeps an object's
    /// `apiVersion`, `kind` and `metadata` (the root and embedded resources).
    pub fn prune(&self, v: &mut Value, path: &str, root: bool, unknown: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                let keep_meta = root || self.embedded;
                let mut drop = Vec::new();
                for (k, child) in map.iter_mut() {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    if keep_meta && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                        continue;
                    }
                    match self.field(k) {
                        Some(s) => {
                            if child.is_null() && !s.nullable {
                                drop.push(k.clone());
                            } else {
                                s.prune(child, &p, false, unknown);
                            }
                        }
                        None if self.preserve_unknown => {}
                        None => {
                            unknown.push(p);
                            drop.push(k.clone());
                        }
                    }
                }
                for k in drop {
                    map.remove(&k);
                }
            }
            Value::Array(items) => {
                if let Some(s) = &self.items {
                    for (i, item) in items.iter_mut().enumerate() {
                        s.prune(item, &format!("{path}[{i}]"), false, unknown);
                    }
                }
            }
            _ => {}
        }
    }

    /// Fill in the defaults of fields that are absent, in objects that are present.
    pub fn apply_defaults(&self, v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (k, s) in &self.properties {
                    if !map.contains_key(k)
                        && let Some(d) = &s.default
                    {
                        map.insert(k.clone(), d.clone());
                    }
                }
                for (k, child) in map.iter_mut() {
                    if let Some(s) = self.field(k) {
                        s.apply_defaults(child);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(s) = &self.items {
                    for item in items {
                        s.apply_defaults(item);
                    }
                }
            }
            _ => {}
        }
    }

    /// Check `v` against this schema; errors go to `errs` at `path`. `old` is the stored
    /// value at the same place, for transition rules.
    pub fn validate(&self, v: &Value, old: Option<&Value>, path: &Path, errs: &mut FieldErrors) {
        self.validate_within(v, old, path, &mut super::cel::Budget::default(), errs);
    }

    fn validate_within(
        &self,
        v: &Value,
        old: Option<&Value>,
        path: &Path,
        budget: &mut super::cel::Budget,
        errs: &mut FieldErrors,
    ) {
        let before = errs.0.len();
        self.validate_value(v, path, errs);
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    if let Some(s) = self.field(k) {
                        let old_child = old.and_then(|o| o.get(k));
                        let at = if self.properties.contains_key(k) {
                            path.child(k)
                        } else {
                            path.key(k)
                        };
                        s.validate_within(child, old_child, &at, budget, errs);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(s) = &self.items {
                    for (i, item) in items.iter().enumerate() {
                        let old_item = self.correlate(item, i, old);
                        s.validate_within(item, old_item, &path.index(i), budget, errs);
                    }
                }
            }
            _ => {}
        }
        // Rules run only on values that passed the schema, as Kubernetes' do.
        if errs.0.len() == before {
            for rule in &self.rules {
                rule.check(v, old, budget, path, errs);
            }
        }
    }

    /// The item of the old list that `item` continues: by keys for map lists, by value for
    /// sets; atomic lists have none (transition rules need a correlated old value).
    fn correlate<'a>(&self, item: &Value, _i: usize, old: Option<&'a Value>) -> Option<&'a Value> {
        let old = old?.as_array()?;
        match self.list_type.as_deref() {
            Some("map") => old
                .iter()
                .find(|o| self.list_map_keys.iter().all(|k| o.get(k) == item.get(k))),
            Some("set") => old.iter().find(|o| *o == item),
            _ => None,
        }
    }

    /// The checks of this node alone, not its children.
    fn validate_value(&self, v: &Value, path: &Path, errs: &mut FieldErrors) {
        if v.is_null() {
            if !self.nullable && (self.ty.is_some() || self.int_or_string) {
                let want = self.ty.as_deref().unwrap_or("string");
                type_error(path, v, want, errs);
            }
            return;
        }
        if self.int_or_string {
            if !(v.is_string() || v.is_i64() || v.is_u64()) {
                type_error(path, v, "integer,string", errs);
                return;
            }
        } else if let Some(ty) = &self.ty
            && !type_matches(ty, v)
        {
            type_error(path, v, ty, errs);
            return;
        }
        let at = path.as_str();
        if !self.enum_values.is_empty() && !self.enum_values.contains(v) {
            // Allowed values are quoted whatever their type (`"1"`), as Kubernetes quotes them.
            let allowed: Vec<String> = self
                .enum_values
                .iter()
                .map(|e| match e {
                    Value::String(s) => format!("{s:?}"),
                    other => format!("{:?}", other.to_string()),
                })
                .collect();
            errs.not_supported_rendered(path, render(v), allowed);
        }
        match v {
            Value::String(s) => {
                // Only the first of maxLength, minLength and pattern that fails is reported.
                let len = s.chars().count() as i64;
                if let Some(max) = self.max_length
                    && len > max
                {
                    errs.too_long(path, max as usize);
                } else if let Some(min) = self.min_length
                    && len < min
                {
                    errs.invalid_rendered(
                        path,
                        render(v),
                        format!("{at} in body should be at least {min} chars long"),
                    );
                } else if let Some((text, re)) = &self.pattern
                    && !re.is_match(s)
                {
                    errs.invalid_rendered(
                        path,
                        render(v),
                        format!("{at} in body should match '{text}'"),
                    );
                }
                if let Some(f) = &self.format
                    && !super::formats::valid(f, s)
                {
                    errs.invalid_rendered(
                        path,
                        render(v),
                        format!("{at} in body must be of type {f}: {}", render(v)),
                    );
                }
            }
            Value::Number(n) => {
                let x = n.as_f64().unwrap_or(0.0);
                let shown = render(v);
                if let Some(min) = self.minimum {
                    if self.exclusive_minimum && x <= min {
                        errs.invalid_rendered(
                            path,
                            shown.clone(),
                            format!("{at} in body should be greater than {}", number(min)),
                        );
                    } else if x < min {
                        errs.invalid_rendered(
                            path,
                            shown.clone(),
                            format!(
                                "{at} in body should be greater than or equal to {}",
                                number(min)
                            ),
                        );
                    }
                }
                if let Some(max) = self.maximum {
                    if self.exclusive_maximum && x >= max {
                        errs.invalid_rendered(
                            path,
                            shown.clone(),
                            format!("{at} in body should be less than {}", number(max)),
                        );
                    } else if x > max {
                        errs.invalid_rendered(
                            path,
                            shown.clone(),
                            format!(
                                "{at} in body should be less than or equal to {}",
                                number(max)
                            ),
                        );
                    }
                }
                if let Some(m) = self.multiple_of
                    && m != 0.0
                    && ((x / m) - (x / m).round()).abs() > 1e-9
                {
                    errs.invalid_rendered(
                        path,
                        shown,
                        format!("{at} in body should be a multiple of {}", number(m)),
                    );
                }
            }
            Value::Array(items) => {
                if let Some(max) = self.max_items
                    && items.len() as i64 > max
                {
                    errs.too_many_of(path, items.len(), max as usize);
                }
                if let Some(min) = self.min_items
                    && (items.len() as i64) < min
                {
                    errs.invalid_rendered(
                        path,
                        items.len().to_string(),
                        format!("{at} in body should have at least {min} items"),
                    );
                }
                if self.unique_items || self.list_type.as_deref() == Some("set") {
                    for (i, item) in items.iter().enumerate() {
                        if items[..i].contains(item) {
                            errs.duplicate_rendered(&path.index(i), render(item));
                        }
                    }
                }
                if self.list_type.as_deref() == Some("map") {
                    for (i, item) in items.iter().enumerate() {
                        let key = |o: &Value| -> Vec<Value> {
                            self.list_map_keys
                                .iter()
                                .map(|k| o.get(k).cloned().unwrap_or(Value::Null))
                                .collect()
                        };
                        if items[..i].iter().any(|o| key(o) == key(item)) {
                            let shown: Vec<String> = self
                                .list_map_keys
                                .iter()
                                .map(|k| {
                                    format!("\"{k}\":{}", item.get(k).map_or("null".into(), render))
                                })
                                .collect();
                            errs.duplicate_rendered(
                                &path.index(i),
                                format!("map[string]interface {{}}{{{}}}", shown.join(", ")),
                            );
                        }
                    }
                }
            }
            Value::Object(map) => {
                for r in &self.required {
                    if !map.contains_key(r) {
                        errs.required(&path.child(r), "");
                    }
                }
                if let Some(max) = self.max_properties
                    && map.len() as i64 > max
                {
                    errs.too_many_of(path, map.len(), max as usize);
                }
                if let Some(min) = self.min_properties
                    && (map.len() as i64) < min
                {
                    errs.invalid_rendered(
                        path,
                        map.len().to_string(),
                        format!("{at} in body should have at least {min} properties"),
                    );
                }
            }
            _ => {}
        }
        // Composite failures are reported as Kubernetes reports them: at no field (`<nil>`),
        // naming the field in the message, with the closest branch's own errors.
        let at_quoted = format!("{:?}", path.as_str());
        let composite = |errs: &mut FieldErrors, what: String| {
            errs.0.push(crate::errors::FieldError {
                kind: crate::errors::ErrorKind::Invalid("\"\"".to_string()),
                field: "<nil>".to_string(),
                detail: format!("{at_quoted} {what}"),
            });
        };
        if !self.all_of.is_empty() {
            let mut inner = FieldErrors::default();
            let mut passed = 0;
            for sub in &self.all_of {
                let before = inner.0.len();
                sub.validate(v, None, path, &mut inner);
                if inner.0.len() == before {
                    passed += 1;
                }
            }
            if !inner.is_empty() {
                errs.extend(inner);
                let none = if passed == 0 { ". None validated" } else { "" };
                composite(errs, format!("must validate all the schemas (allOf){none}"));
            }
        }
        if !self.any_of.is_empty() && !self.any_of.iter().any(|sub| sub.passes(v, path)) {
            errs.extend(closest(&self.any_of, v, path));
            composite(
                errs,
                "must validate at least one schema (anyOf)".to_string(),
            );
        }
        if !self.one_of.is_empty() {
            let passing = self.one_of.iter().filter(|sub| sub.passes(v, path)).count();
            if passing == 0 {
                errs.extend(closest(&self.one_of, v, path));
                composite(
                    errs,
                    "must validate one and only one schema (oneOf). Found none valid".to_string(),
                );
            } else if passing > 1 {
                composite(
                    errs,
                    format!(
                        "must validate one and only one schema (oneOf). Found {passing} valid alternatives"
                    ),
                );
            }
        }
        if let Some(n) = &self.not
            && n.passes(v, path)
        {
            composite(errs, "must not validate the schema (not)".to_string());
        }
    }

    fn passes(&self, v: &Value, path: &Path) -> bool {
        let mut scratch = FieldErrors::default();
        self.validate(v, None, path, &mut scratch);
        scratch.is_empty()
    }
}

/// The errors of the branch that failed least.
fn closest(branches: &[Schema], v: &Value, path: &Path) -> FieldErrors {
    branches
        .iter()
        .map(|b| {
            let mut e = FieldErrors::default();
            b.validate(v, None, path, &mut e);
            e
        })
        .min_by_key(|e| e.0.len())
        .unwrap_or_default()
}

fn type_matches(ty: &str, v: &Value) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "number" => v.is_number(),
        _ => true,
    }
}

fn type_error(path: &Path, v: &Value, want: &str, errs: &mut FieldErrors) {
    let shown = type_name(v);
    errs.invalid_rendered(
        path,
        format!("\"{shown}\""),
        format!(
            "{} in body must be of type {want}: \"{shown}\"",
            path.as_str()
        ),
    );
}

/// The JSON type of a value, as Kubernetes names it in type errors.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A value as Kubernetes shows it in a message: strings quoted, numbers bare.
pub fn render(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".to_string(),
        other => other.to_string(),
    }
}

/// A bound as Go's `%v` prints a float: `0`, `2.5`.
fn number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(v: Value) -> Schema {
        let props: JSONSchemaProps = serde_json::from_value(v).unwrap();
        let mut errs = FieldErrors::default();
        let s = compile(&props, &Path::default(), &mut errs);
        assert!(errs.is_empty(), "{errs}");
        s
    }

    fn widget() -> Schema {
        schema(json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 10},
                "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                "port": {"x-kubernetes-int-or-string": true},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "limits": {"type": "object", "properties": {
                    "cpu": {"type": "string", "default": "1"}}}
            }},
            "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
        }}))
    }

    fn check(s: &Schema, v: &Value) -> Vec<String> {
        let mut errs = FieldErrors::default();
        s.validate(v, None, &Path::default(), &mut errs);
        errs.0.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn validation_messages() {
        let s = widget();
        assert_eq!(
            check(&s, &json!({"spec": {"size": 3}})),
            Vec::<String>::new()
        );
        assert_eq!(
            check(&s, &json!({"spec": {"size": "three"}})),
            vec![
                r#"spec.size: Invalid value: "string": spec.size in body must be of type integer: "string""#
            ]
        );
        assert_eq!(
            check(&s, &json!({"spec": {}})),
            vec!["spec.size: Required value"]
        );
        assert_eq!(
            check(&s, &json!({"spec": {"size": 0, "color": "pink"}})),
            vec![
                r#"spec.color: Unsupported value: "pink": supported values: "red", "blue""#,
                "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1",
            ]
        );
        assert_eq!(
            check(&s, &json!({"spec": {"size": 1, "name": "ABC"}})),
            vec![r#"spec.name: Invalid value: "ABC": spec.name in body should match '^[a-z]+$'"#]
        );
        assert_eq!(
            check(&s, &json!({"spec": {"size": 1, "port": 8080}})),
            Vec::<String>::new()
        );
        assert_eq!(
            check(&s, &json!({"spec": {"size": 1, "tags": ["a", "b", "c"]}})),
            vec!["spec.tags: Too many: 3: must have at most 2 items"]
        );
        assert_eq!(
            check(&s, &json!({"spec": {"size": 1, "labels": {"a": 1}}})),
            vec![
                r#"spec.labels[a]: Invalid value: "integer": spec.labels[a] in body must be of type string: "integer""#
            ]
        );
    }

    #[test]
    fn pruning_and_defaults() {
        let s = widget();
        let mut v = json!({"apiVersion": "example.com/v1", "kind": "Widget",
            "metadata": {"name": "w"},
            "spec": {"size": 1, "bogus": true, "extra": {"anything": [1]}, "limits": {},
                     "labels": {"x": "y"}, "name": null},
            "other": 1});
        let mut unknown = Vec::new();
        s.prune(&mut v, "", true, &mut unknown);
        s.apply_defaults(&mut v);
        assert_eq!(unknown, vec!["other", "spec.bogus"]);
        assert_eq!(
            v,
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
                "spec": {"size": 1, "color": "red", "extra": {"anything": [1]},
                         "limits": {"cpu": "1"}, "labels": {"x": "y"}}})
        );
    }

    #[test]
    fn logic_junctors() {
        let s = schema(json!({"type": "object", "properties": {"v": {
            "x-kubernetes-int-or-string": true,
            "anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^[0-9]+%$"}]}}}));
        assert!(check(&s, &json!({"v": 5})).is_empty());
        assert!(check(&s, &json!({"v": "50%"})).is_empty());
        let errs = check(&s, &json!({"v": "half"}));
        assert!(
            errs.iter().any(|e| e
                == r#"<nil>: Invalid value: "": "v" must validate at least one schema (anyOf)"#),
            "{errs:?}"
        );
    }

    #[test]
    fn cel_rules_and_transitions() {
        let s = schema(json!({"type": "object", "properties": {"spec": {
            "type": "object",
            "properties": {"min": {"type": "integer"}, "max": {"type": "integer"},
                           "name": {"type": "string"}},
            "x-kubernetes-validations": [
                {"rule": "self.min <= self.max * 2", "message": "min must not exceed twice max"},
                {"rule": "self.name == oldSelf.name", "message": "name is immutable"}]}}}));
        let ok = json!({"spec": {"min": 1, "max": 2, "name": "a"}});
        assert!(check(&s, &ok).is_empty());
        let bad = json!({"spec": {"min": 9, "max": 2, "name": "a"}});
        assert_eq!(
            check(&s, &bad),
            vec![r#"spec: Invalid value: "object": min must not exceed twice max"#]
        );
        // The transition rule runs only on update.
        let renamed = json!({"spec": {"min": 1, "max": 2, "name": "b"}});
        assert!(check(&s, &renamed).is_empty());
        let mut errs = FieldErrors::default();
        s.validate(&renamed, Some(&ok), &Path::default(), &mut errs);
        assert_eq!(
            errs.to_string(),
            r#"spec: Invalid value: "object": name is immutable"#
        );
    }
}

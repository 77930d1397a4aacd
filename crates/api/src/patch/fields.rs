//! Field ownership (`metadata.managedFields`) and server-side apply.
//!
//! Every write records which manager set which fields: an `Update` entry for ordinary writes,
//! an `Apply` entry for server-side apply. Apply merges the manager's configuration into the
//! object, removes fields the manager stopped specifying (unless someone else owns them), and
//! refuses, as a conflict, to change a field another manager owns to a different value.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use super::schema::{Elem, Type};

/// One step of a path into an object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Element {
    Field(String),
    /// A list item identified by its key fields, as compact JSON with sorted keys.
    Key(String),
    /// A member of a set list, as JSON.
    Value(String),
}

/// A set of field paths, as a tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet {
    /// The path to this node is itself in the set.
    pub member: bool,
    pub children: BTreeMap<Element, FieldSet>,
}

pub type FieldPath = Vec<Element>;

impl FieldSet {
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(FieldSet::is_empty)
    }

    pub fn insert(&mut self, path: &[Element]) {
        match path.split_first() {
            None => self.member = true,
            Some((first, rest)) => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    pub fn contains(&self, path: &[Element]) -> bool {
        match path.split_first() {
            None => self.member,
            Some((first, rest)) => self.children.get(first).is_some_and(|c| c.contains(rest)),
        }
    }

    /// Whether any path at or below `path` is in the set.
    pub fn has_any_under(&self, path: &[Element]) -> bool {
        match path.split_first() {
            None => !self.is_empty(),
            Some((first, rest)) => self
                .children
                .get(first)
                .is_some_and(|c| c.has_any_under(rest)),
        }
    }

    /// Every path in the set, parents before children.
    pub fn paths(&self) -> Vec<FieldPath> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut FieldPath, out: &mut Vec<FieldPath>) {
        if self.member {
            out.push(prefix.clone());
        }
        for (e, child) in &self.children {
            prefix.push(e.clone());
            child.collect(prefix, out);
            prefix.pop();
        }
    }

    pub fn union(&mut self, other: &FieldSet) {
        self.member |= other.member;
        for (e, c) in &other.children {
            self.children.entry(e.clone()).or_default().union(c);
        }
    }

    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && !other.member,
            children: BTreeMap::new(),
        };
        for (e, c) in &self.children {
            let d = match other.children.get(e) {
                Some(o) => c.difference(o),
                None => c.clone(),
            };
            if !d.is_empty() {
                out.children.insert(e.clone(), d);
            }
        }
        out
    }

    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && other.member,
            children: BTreeMap::new(),
        };
        for (e, c) in &self.children {
            if let Some(o) = other.children.get(e) {
                let i = c.intersection(o);
                if !i.is_empty() {
                    out.children.insert(e.clone(), i);
                }
            }
        }
        out
    }

    /// The `fieldsV1` JSON form.
    pub fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (e, c) in &self.children {
            let key = match e {
                Element::Field(f) => format!("f:{f}"),
                Element::Key(k) => format!("k:{k}"),
                Element::Value(v) => format!("v:{v}"),
            };
            m.insert(key, c.to_fields_v1());
        }
        Value::Object(m)
    }

    /// Parse the `fieldsV1` JSON form; unknown entries are skipped.
    pub fn from_fields_v1(v: &Value) -> FieldSet {
        let mut set = FieldSet::default();
        let Value::Object(m) = v else { return set };
        if m.is_empty() {
            set.member = true;
        }
        for (k, child) in m {
            if k == "." {
                set.member = true;
                continue;
            }
            let element = if let Some(f) = k.strip_prefix("f:") {
                Element::Field(f.to_string())
            } else if let Some(key) = k.strip_prefix("k:") {
                // Re-encode so that key order and spacing never make two keys differ.
                match serde_json::from_str::<Value>(key) {
                    Ok(parsed) => Element::Key(parsed.to_string()),
                    Err(_) => continue,
                }
            } else if let Some(val) = k.strip_prefix("v:") {
                Element::Value(val.to_string())
            } else {
                continue;
            };
            set.children
                .insert(element, FieldSet::from_fields_v1(child));
        }
        set
    }

    /// The set of fields a value specifies, shaped by `ty`.
    pub fn of(value: &Value, ty: &Type) -> FieldSet {
        let mut set = FieldSet::default();
        if let Value::Object(m) = value {
            walk_object(m, ty, &mut set);
        }
        set
    }
}

fn walk_object(m: &Map<String, Value>, ty: &Type, set: &mut FieldSet) {
    for (k, v) in m {
        if v.is_null() {
            continue;
        }
        let child = set.children.entry(Element::Field(k.clone())).or_default();
        match (ty.elem(k), v) {
            (Some(Elem::Atomic), _) => child.member = true,
            (Some(Elem::MapList { keys, item }), Value::Array(items)) if !items.is_empty() => {
                for it in items {
                    if let Some(key) = item_key(it, keys) {
                        let e = child.children.entry(Element::Key(key)).or_default();
                        e.member = true;
                        if let Value::Object(im) = it {
                            walk_object(im, item, e);
                        }
                    }
                }
            }
            (Some(Elem::SetList), Value::Array(items)) if !items.is_empty() => {
                for it in items {
                    child
                        .children
                        .entry(Element::Value(it.to_string()))
                        .or_default()
                        .member = true;
                }
            }
            (_, Value::Object(om)) if !om.is_empty() => walk_object(om, ty.child(k), child),
            _ => child.member = true,
        }
    }
}

/// The identity of a keyed list item: its key fields as compact JSON with sorted keys.
fn item_key(item: &Value, keys: &[&str]) -> Option<String> {
    let mut m = Map::new();
    for k in keys {
        if let Some(v) = item.get(*k) {
            m.insert((*k).to_string(), v.clone());
        }
    }
    (!m.is_empty()).then(|| Value::Object(m).to_string())
}

/// Find the value at `path`.
pub fn get_at<'a>(mut v: &'a Value, path: &[Element]) -> Option<&'a Value> {
    for e in path {
        v = match e {
            Element::Field(f) => v.get(f)?,
            Element::Key(k) => {
                let key: Value = serde_json::from_str(k).ok()?;
                v.as_array()?.iter().find(|it| matches_key(it, &key))?
            }
            Element::Value(s) => {
                let want: Value = serde_json::from_str(s).ok()?;
                v.as_array()?.iter().find(|it| **it == want)?
            }
        };
    }
    Some(v)
}

fn matches_key(item: &Value, key: &Value) -> bool {
    key.as_object()
        .is_some_and(|k| k.iter().all(|(f, val)| item.get(f) == Some(val)))
}

/// Remove whatever is at `path`, if anything.
pub fn remove_at(v: &mut Value, path: &[Element]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for e in parents {
        let next = match e {
            Element::Field(f) => cur.get_mut(f),
            Element::Key(k) => {
                let Ok(key) = serde_json::from_str::<Value>(k) else {
                    return;
                };
                cur.as_array_mut()
                    .and_then(|a| a.iter_mut().find(|it| matches_key(it, &key)))
            }
            Element::Value(_) => None,
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last {
        Element::Field(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        Element::Key(k) => {
            if let (Ok(key), Some(a)) = (serde_json::from_str::<Value>(k), cur.as_array_mut()) {
                a.retain(|it| !matches_key(it, &key));
            }
        }
        Element::Value(s) => {
            if let (Ok(want), Some(a)) = (serde_json::from_str::<Value>(s), cur.as_array_mut()) {
                a.retain(|it| *it != want);
            }
        }
    }
}

/// A path as Kubernetes prints it in conflict messages: `.spec.containers[name="web"].image`.
pub fn display_path(path: &[Element]) -> String {
    let mut out = String::new();
    for e in path {
        match e {
            Element::Field(f) => {
                let _ = write!(out, ".{f}");
            }
            Element::Key(k) => {
                let parts: Vec<String> = serde_json::from_str::<Map<String, Value>>(k)
                    .map(|m| m.iter().map(|(f, v)| format!("{f}={v}")).collect())
                    .unwrap_or_default();
                let _ = write!(out, "[{}]", parts.join(","));
            }
            Element::Value(v) => {
                let _ = write!(out, "[={v}]");
            }
        }
    }
    out
}

/// Which part of an object a write may touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The whole object (kinds without a status subresource).
    Whole,
    /// Everything but `status`.
    Main,
    /// Only `status`.
    Status,
    /// Only `spec.ephemeralContainers` (a pod's `ephemeralcontainers` subresource).
    EphemeralContainers,
    /// Only `status.conditions` (a CertificateSigningRequest's `approval` subresource).
    Approval,
}

const SERVER_OWNED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "generateName",
];

/// The fields of `value` that managers can own within `scope`.
pub fn owned_fields(value: &Value, ty: &Type, scope: Scope) -> FieldSet {
    let mut set = FieldSet::of(value, ty);
    set.children.remove(&Element::Field("apiVersion".into()));
    set.children.remove(&Element::Field("kind".into()));
    if let Some(meta) = set.children.get_mut(&Element::Field("metadata".into())) {
        for f in SERVER_OWNED_META {
            meta.children.remove(&Element::Field((*f).into()));
        }
        if meta.is_empty() {
            set.children.remove(&Element::Field("metadata".into()));
        }
    }
    match scope {
        Scope::Whole => {}
        Scope::Main => {
            set.children.remove(&Element::Field("status".into()));
        }
        Scope::Status | Scope::Approval => {
            set.children
                .retain(|e, _| *e == Element::Field("status".into()));
        }
        Scope::EphemeralContainers => {
            set.children
                .retain(|e, _| *e == Element::Field("spec".into()));
            if let Some(spec) = set.children.get_mut(&Element::Field("spec".into())) {
                spec.children
                    .retain(|e, _| *e == Element::Field("ephemeralContainers".into()));
            }
        }
    }
    set
}

/// One `metadata.managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Managed {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

impl Managed {
    fn same_owner(&self, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == subresource
    }

    fn to_json(&self) -> Value {
        let mut m = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.fields.to_fields_v1(),
        });
        if let Some(s) = &self.subresource {
            m["subresource"] = json!(s);
        }
        m
    }
}

/// Read the managed fields of an object.
pub fn read_managed(obj: &Value) -> Vec<Managed> {
    let Some(entries) = obj["metadata"]["managedFields"].as_array() else {
        return Vec::new();
    };
    entries
        .iter()
        .map(|e| Managed {
            manager: e["manager"].as_str().unwrap_or("").to_string(),
            operation: e["operation"].as_str().unwrap_or("Update").to_string(),
            api_version: e["apiVersion"].as_str().unwrap_or("").to_string(),
            time: e["time"].as_str().unwrap_or("").to_string(),
            subresource: e["subresource"].as_str().map(str::to_string),
            fields: FieldSet::from_fields_v1(&e["fieldsV1"]),
        })
        .collect()
}

fn write_managed(obj: &mut Value, managed: Vec<Managed>) {
    let entries: Vec<Value> = managed
        .iter()
        .filter(|m| !m.fields.is_empty())
        .map(Managed::to_json)
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if entries.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(entries));
        }
    }
}

/// Who is writing, for the managed-fields record.
#[derive(Clone, Debug)]
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    /// RFC 3339, seconds precision.
    pub time: &'a str,
    pub scope: Scope,
}

impl Writer<'_> {
    fn subresource(&self) -> Option<&'static str> {
        match self.scope {
            Scope::Status => Some("status"),
            Scope::EphemeralContainers => Some("ephemeralcontainers"),
            Scope::Approval => Some("approval"),
            Scope::Whole | Scope::Main => None,
        }
    }
}

/// Record an ordinary write (create, update, any non-apply patch) in `new`'s managed fields:
/// fields it changed become the writer's, and leave every other manager.
pub fn record_update(old: Option<&Value>, new: &mut Value, ty: &Type, w: &Writer<'_>) {
    let old_managed = old.map(read_managed).unwrap_or_default();
    match new["metadata"].get("managedFields") {
        // A client that edits managedFields itself gets what it wrote.
        Some(given) if old.is_some_and(|o| o["metadata"].get("managedFields") != Some(given)) => {
            return;
        }
        // A new object that names its managers keeps them, as on the real API server.
        Some(_) if old.is_none() => return,
        _ => {}
    }
    let mut managed = old_managed;
    let new_set = owned_fields(new, ty, w.scope);
    let old_set = old
        .map(|o| owned_fields(o, ty, w.scope))
        .unwrap_or_default();
    let removed = old_set.difference(&new_set);
    let mut changed = FieldSet::default();
    for path in new_set.paths() {
        let before = old.and_then(|o| get_at(o, &path));
        let after = get_at(new, &path);
        let is_item = matches!(path.last(), Some(Element::Key(_) | Element::Value(_)));
        let differs = if is_item {
            before.is_none()
        } else {
            before != after
        };
        if differs {
            changed.insert(&path);
        }
    }
    let sub = w.subresource();
    for m in &mut managed {
        if m.subresource.as_deref() != sub {
            continue;
        }
        m.fields = m.fields.difference(&removed);
        if !m.same_owner(w.manager, "Update", sub) {
            m.fields = m.fields.difference(&changed);
        }
    }
    if !changed.is_empty() {
        match managed
            .iter_mut()
            .find(|m| m.same_owner(w.manager, "Update", sub))
        {
            Some(m) => {
                m.fields.union(&changed);
                m.time = w.time.to_string();
                m.api_version = w.api_version.to_string();
            }
            None => managed.push(Managed {
                manager: w.manager.to_string(),
                operation: "Update".into(),
                api_version: w.api_version.to_string(),
                time: w.time.to_string(),
                subresource: sub.map(str::to_string),
                fields: changed,
            }),
        }
    }
    write_managed(new, managed);
}

/// A field another manager owns with a different value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    pub api_version: String,
    pub path: String,
}

/// The message Kubernetes gives for apply conflicts.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    let n = conflicts.len();
    let mut by_manager: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for c in conflicts {
        by_manager
            .entry((&c.manager, &c.api_version))
            .or_default()
            .push(&c.path);
    }
    let noun = if n == 1 { "conflict" } else { "conflicts" };
    let mut parts = Vec::new();
    for ((manager, version), paths) in by_manager {
        if paths.len() == 1 {
            parts.push(format!(
                "conflict with \"{manager}\" using {version}: {}",
                paths[0]
            ));
        } else {
            let list: Vec<String> = paths.iter().map(|p| format!("- {p}")).collect();
            parts.push(format!(
                "conflicts with \"{manager}\" using {version}:\n{}",
                list.join("\n")
            ));
        }
    }
    format!("Apply failed with {n} {noun}: {}", parts.join("\n"))
}

/// Server-side apply of `config` by `w.manager` onto `live` (`None` creates). Returns the
/// merged object with its managed fields, to be admitted like any other write.
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    ty: &Type,
    w: &Writer<'_>,
    force: bool,
) -> Result<Value, Vec<Conflict>> {
    let mut managed = live.map(read_managed).unwrap_or_default();
    let sub = w.subresource();
    let applied = owned_fields(config, ty, w.scope);
    let empty = Value::Null;
    let live_value = live.unwrap_or(&empty);
    let mut conflicts = Vec::new();
    let mut taken = Vec::new();
    for (i, m) in managed.iter().enumerate() {
        if m.same_owner(w.manager, "Apply", sub) || m.subresource.as_deref() != sub {
            continue;
        }
        for path in applied.intersection(&m.fields).paths() {
            // A list item both own is no conflict; only differing values are.
            let is_item = matches!(path.last(), Some(Element::Key(_) | Element::Value(_)));
            if !is_item && get_at(live_value, &path) != get_at(config, &path) {
                conflicts.push(Conflict {
                    manager: m.manager.clone(),
                    api_version: m.api_version.clone(),
                    path: display_path(&path),
                });
                taken.push((i, path));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    for (i, path) in taken {
        let mut one = FieldSet::default();
        one.insert(&path);
        managed[i].fields = managed[i].fields.difference(&one);
    }
    let previous = managed
        .iter()
        .find(|m| m.same_owner(w.manager, "Apply", sub))
        .map(|m| m.fields.clone())
        .unwrap_or_default();
    let mut others = FieldSet::default();
    for m in &managed {
        if !m.same_owner(w.manager, "Apply", sub) {
            others.union(&m.fields);
        }
    }
    let mut obj = live.cloned().unwrap_or_else(|| json!({}));
    // Fields this manager stopped applying go, unless another manager still owns them.
    // Parents come first, so a removed list item takes its fields (and its key) with it.
    let mut removed: Vec<FieldPath> = Vec::new();
    for path in previous.difference(&applied).paths() {
        if removed.iter().any(|r| path.starts_with(r)) {
            continue;
        }
        if !others.has_any_under(&path) && !applied.has_any_under(&path) {
            remove_at(&mut obj, &path);
            prune_empty_parents(&mut obj, &path, &others, &applied);
            removed.push(path);
        }
    }
    merge_config(&mut obj, config, ty);
    managed.retain(|m| !m.same_owner(w.manager, "Apply", sub));
    managed.push(Managed {
        manager: w.manager.to_string(),
        operation: "Apply".into(),
        api_version: w.api_version.to_string(),
        time: w.time.to_string(),
        subresource: sub.map(str::to_string),
        fields: applied,
    });
    write_managed(&mut obj, managed);
    Ok(obj)
}

/// After removing `path`, remove the maps and lists it leaves empty, unless someone owns
/// them as such (an explicitly empty `labels: {}`).
fn prune_empty_parents(obj: &mut Value, path: &[Element], others: &FieldSet, applied: &FieldSet) {
    for depth in (1..path.len()).rev() {
        let parent = &path[..depth];
        let empty = match get_at(obj, parent) {
            Some(Value::Object(m)) => m.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            _ => false,
        };
        if !empty || others.contains(parent) || applied.contains(parent) {
            return;
        }
        remove_at(obj, parent);
    }
}

/// Merge an applied configuration into an object: maps field by field, keyed lists item by
/// item, set lists as sets, everything else replaced.
fn merge_config(obj: &mut Value, config: &Value, ty: &Type) {
    let (Value::Object(o), Value::Object(c)) = (&mut *obj, config) else {
        *obj = config.clone();
        return;
    };
    for (k, v) in c {
        if v.is_null() || k == "managedFields" {
            continue;
        }
        match (ty.elem(k), o.get_mut(k), v) {
            (Some(Elem::Atomic), _, _) | (_, None, _) => {
                o.insert(k.clone(), v.clone());
            }
            (
                Some(Elem::MapList { keys, item }),
                Some(Value::Array(existing)),
                Value::Array(items),
            ) => {
                for it in items {
                    let key =
                        item_key(it, keys).and_then(|k| serde_json::from_str::<Value>(&k).ok());
                    match key.and_then(|key| existing.iter_mut().find(|e| matches_key(e, &key))) {
                        Some(e) => merge_config(e, it, item),
                        None => existing.push(it.clone()),
                    }
                }
            }
            (Some(Elem::SetList), Some(Value::Array(existing)), Value::Array(items)) => {
                for it in items {
                    if !existing.contains(it) {
                        existing.push(it.clone());
                    }
                }
            }
            (_, Some(existing @ Value::Object(_)), Value::Object(_)) => {
                merge_config(existing, v, ty.child(k));
            }
            (_, Some(existing), _) => *existing = v.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::schema::for_kind;
    use super::*;

    fn writer(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "apps/v1",
            time: "2026-01-01T00:00:00Z",
            scope: Scope::Main,
        }
    }

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": image}]}}}})
    }

    #[test]
    fn fields_v1_round_trip() {
        let set = owned_fields(&deployment(1, "nginx"), for_kind("Deployment"), Scope::Main);
        let v1 = set.to_fields_v1();
        assert_eq!(v1["f:spec"]["f:replicas"], json!({}));
        assert_eq!(
            v1["f:spec"]["f:selector"],
            json!({}),
            "selectors are atomic"
        );
        let item = &v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"];
        assert_eq!(item["."], json!({}));
        assert_eq!(item["f:image"], json!({}));
        assert!(v1["f:metadata"].get("f:name").is_none());
        assert_eq!(FieldSet::from_fields_v1(&v1), set);
    }

    #[test]
    fn updates_move_ownership() {
        let ty = for_kind("Deployment");
        let mut created = deployment(1, "nginx");
        record_update(None, &mut created, ty, &writer("kubectl-create"));
        let mut scaled = created.clone();
        scaled["spec"]["replicas"] = json!(3);
        record_update(Some(&created), &mut scaled, ty, &writer("kubectl-scale"));
        let managed = read_managed(&scaled);
        assert_eq!(managed.len(), 2);
        let replicas = vec![
            Element::Field("spec".into()),
            Element::Field("replicas".into()),
        ];
        assert!(!managed[0].fields.contains(&replicas));
        assert!(managed[1].fields.contains(&replicas));
        assert_eq!(managed[1].manager, "kubectl-scale");
    }

    #[test]
    fn apply_creates_merges_and_conflicts() {
        let ty = for_kind("Deployment");
        let created = apply(
            None,
            &deployment(2, "nginx:1"),
            ty,
            &writer("kubectl"),
            false,
        )
        .unwrap();
        assert_eq!(created["spec"]["replicas"], 2);
        assert_eq!(read_managed(&created)[0].operation, "Apply");
        // Another manager changes replicas with an ordinary update.
        let mut scaled = created.clone();
        scaled["spec"]["replicas"] = json!(5);
        record_update(Some(&created), &mut scaled, ty, &writer("kubectl-scale"));
        // Re-applying the old value conflicts; the message names the owner and the field.
        let err = apply(
            Some(&scaled),
            &deployment(2, "nginx:2"),
            ty,
            &writer("kubectl"),
            false,
        )
        .unwrap_err();
        assert_eq!(
            conflict_message(&err),
            "Apply failed with 1 conflict: conflict with \"kubectl-scale\" using apps/v1: .spec.replicas"
        );
        // Applying the same value shares ownership instead.
        let shared = apply(
            Some(&scaled),
            &deployment(5, "nginx:2"),
            ty,
            &writer("kubectl"),
            false,
        )
        .unwrap();
        assert_eq!(
            shared["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:2"
        );
        // Forcing takes the field.
        let forced = apply(
            Some(&scaled),
            &deployment(2, "nginx:2"),
            ty,
            &writer("kubectl"),
            true,
        )
        .unwrap();
        assert_eq!(forced["spec"]["replicas"], 2);
        let scale_owner = read_managed(&forced)
            .into_iter()
            .find(|m| m.manager == "kubectl-scale");
        assert!(
            scale_owner.is_none(),
            "the loser owned nothing else and is dropped"
        );
    }

    #[test]
    fn apply_removes_fields_it_no_longer_sets() {
        let ty = for_kind("Deployment");
        let mut with_label = deployment(1, "nginx");
        with_label["metadata"]["labels"]["tier"] = json!("front");
        let first = apply(None, &with_label, ty, &writer("kubectl"), false).unwrap();
        let second = apply(
            Some(&first),
            &deployment(1, "nginx"),
            ty,
            &writer("kubectl"),
            false,
        )
        .unwrap();
        assert_eq!(second["metadata"]["labels"], json!({"app": "web"}));
        let mut two = deployment(1, "nginx");
        two["spec"]["template"]["spec"]["containers"] =
            json!([{"name": "web", "image": "nginx"}, {"name": "log", "image": "busybox"}]);
        let third = apply(Some(&second), &two, ty, &writer("kubectl"), false).unwrap();
        assert_eq!(
            third["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let fourth = apply(
            Some(&third),
            &deployment(1, "nginx"),
            ty,
            &writer("kubectl"),
            false,
        )
        .unwrap();
        assert_eq!(
            fourth["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
}

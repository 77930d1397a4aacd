//! Strategic merge patch, as kubectl sends it for `apply`, `edit` and `patch`: objects merge
//! field by field, lists of keyed objects merge item by item, set lists union, and the
//! directives `$patch`, `$retainKeys`, `$setElementOrder/<list>` and
//! `$deleteFromPrimitiveList/<list>` are honoured.

use serde_json::{Map, Value};

use super::PatchError;
use super::schema::{Elem, Type};

const DIRECTIVE_PATCH: &str = "$patch";
const DIRECTIVE_RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

/// Apply `patch` to `original`, with `ty` describing how the object's lists merge.
pub fn apply(original: &Value, patch: &Value, ty: &Type) -> Result<Value, PatchError> {
    let Value::Object(p) = patch else {
        return Err(PatchError::Invalid(
            "a strategic merge patch must be a JSON object".into(),
        ));
    };
    let base = match original {
        Value::Object(o) => o.clone(),
        _ => Map::new(),
    };
    Ok(merge_map(base, p, ty)?.map_or(Value::Object(Map::new()), Value::Object))
}

/// Merge a patch map into an original map. `None` means the map itself is deleted.
fn merge_map(
    mut original: Map<String, Value>,
    patch: &Map<String, Value>,
    ty: &Type,
) -> Result<Option<Map<String, Value>>, PatchError> {
    match patch.get(DIRECTIVE_PATCH).and_then(Value::as_str) {
        Some("delete") => return Ok(None),
        Some("replace") => {
            let mut out = Map::new();
            for (k, v) in patch {
                if k != DIRECTIVE_PATCH {
                    out.insert(k.clone(), clean(v, ty.child(k), ty.elem(k))?);
                }
            }
            return Ok(Some(out));
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(PatchError::Invalid(format!(
                "unknown patch type: {other:?} in map"
            )));
        }
    }
    if let Some(retain) = patch.get(DIRECTIVE_RETAIN_KEYS) {
        let Value::Array(keep) = retain else {
            return Err(PatchError::Invalid(
                "$retainKeys must be a list of field names".into(),
            ));
        };
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        original.retain(|k, _| keep.contains(&k.as_str()) || patch.contains_key(k));
    }
    let mut orders = Vec::new();
    for (k, v) in patch {
        if k == DIRECTIVE_PATCH || k == DIRECTIVE_RETAIN_KEYS {
            continue;
        }
        if let Some(field) = k.strip_prefix(SET_ELEMENT_ORDER) {
            orders.push((field.to_string(), v));
            continue;
        }
        if let Some(field) = k.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            let Value::Array(remove) = v else {
                return Err(PatchError::Invalid(format!("{k} must be a list")));
            };
            if let Some(Value::Array(list)) = original.get_mut(field) {
                list.retain(|item| !remove.contains(item));
            }
            continue;
        }
        if v.is_null() {
            original.remove(k);
            continue;
        }
        let elem = ty.elem(k);
        let merged = match (original.remove(k), v) {
            (Some(Value::Object(o)), Value::Object(p)) => {
                merge_map(o, p, ty.child(k))?.map(Value::Object)
            }
            (Some(Value::Array(o)), Value::Array(p)) => Some(merge_list(o, p, elem)?),
            (_, v) => Some(clean(v, ty.child(k), elem)?),
        };
        if let Some(m) = merged {
            original.insert(k.clone(), m);
        }
    }
    for (field, order) in orders {
        if let (Some(Value::Array(list)), Value::Array(order)) = (original.get_mut(&field), order) {
            reorder(list, order, ty.elem(&field));
        }
    }
    Ok(Some(original))
}

fn merge_list(
    mut original: Vec<Value>,
    patch: &[Value],
    elem: Option<Elem>,
) -> Result<Value, PatchError> {
    match elem {
        Some(Elem::MapList { keys, item }) => {
            if let Some(items) = replace_directive(patch)? {
                return Ok(Value::Array(
                    items
                        .into_iter()
                        .map(|v| clean(v, item, None))
                        .collect::<Result<_, _>>()?,
                ));
            }
            for p in patch {
                let Value::Object(pm) = p else {
                    return Err(PatchError::Invalid(
                        "items of a keyed list must be objects".into(),
                    ));
                };
                let pos = original.iter().position(|o| same_item(o, p, keys));
                if pm.get(DIRECTIVE_PATCH).and_then(Value::as_str) == Some("delete") {
                    if let Some(i) = pos {
                        original.remove(i);
                    }
                    continue;
                }
                match pos {
                    Some(i) => {
                        let Value::Object(om) = std::mem::take(&mut original[i]) else {
                            unreachable!("same_item only matches objects")
                        };
                        match merge_map(om, pm, item)? {
                            Some(m) => original[i] = Value::Object(m),
                            None => {
                                original.remove(i);
                            }
                        }
                    }
                    None => original.push(clean(p, item, None)?),
                }
            }
            Ok(Value::Array(original))
        }
        Some(Elem::SetList) => {
            if let Some(items) = replace_directive(patch)? {
                return Ok(Value::Array(items.into_iter().cloned().collect()));
            }
            for p in patch {
                if !original.contains(p) {
                    original.push(p.clone());
                }
            }
            Ok(Value::Array(original))
        }
        _ => Ok(Value::Array(
            patch
                .iter()
                .map(|v| clean(v, Type::empty(), None))
                .collect::<Result<_, _>>()?,
        )),
    }
}

/// A `{"$patch": "replace"}` item makes the rest of the patch list the whole new list.
fn replace_directive(patch: &[Value]) -> Result<Option<Vec<&Value>>, PatchError> {
    let is_replace = |v: &Value| v.get(DIRECTIVE_PATCH).and_then(Value::as_str) == Some("replace");
    if patch.iter().any(is_replace) {
        Ok(Some(patch.iter().filter(|v| !is_replace(v)).collect()))
    } else {
        Ok(None)
    }
}

fn same_item(a: &Value, b: &Value, keys: &[&str]) -> bool {
    a.is_object()
        && keys.iter().all(|k| a.get(*k) == b.get(*k))
        && keys.iter().any(|k| b.get(*k).is_some())
}

/// A patch value placed where the original had nothing: strip its directives.
fn clean(v: &Value, ty: &Type, elem: Option<Elem>) -> Result<Value, PatchError> {
    match v {
        Value::Object(m) => Ok(merge_map(Map::new(), m, ty)?.map_or(Value::Null, Value::Object)),
        Value::Array(items) => merge_list(Vec::new(), items, elem),
        other => Ok(other.clone()),
    }
}

/// Order list items as `$setElementOrder` says; items it does not name keep their relative
/// order after the named ones.
fn reorder(list: &mut Vec<Value>, order: &[Value], elem: Option<Elem>) {
    let rank = |item: &Value| -> usize {
        order
            .iter()
            .position(|o| match elem {
                Some(Elem::MapList { keys, .. }) => same_item(item, o, keys),
                _ => item == o,
            })
            .unwrap_or(order.len())
    };
    let mut ranked: Vec<(usize, Value)> = list.drain(..).map(|v| (rank(&v), v)).collect();
    ranked.sort_by_key(|(r, _)| *r);
    list.extend(ranked.into_iter().map(|(_, v)| v));
}

#[cfg(test)]
mod tests {
    use super::super::schema::for_kind;
    use super::*;
    use serde_json::json;

    fn smp(kind: &str, original: Value, patch: Value) -> Value {
        apply(&original, &patch, for_kind(kind)).unwrap()
    }

    #[test]
    fn kubectl_apply_update_keeps_other_containers() {
        let original = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "web", "image": "nginx:1.25", "ports": [{"containerPort": 80, "protocol": "TCP"}]},
            {"name": "sidecar", "image": "busybox"}
        ]}}}});
        let patch = json!({"spec": {"replicas": 3, "template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}, {"name": "sidecar"}],
            "containers": [{"image": "nginx:1.26", "name": "web"}]}}}});
        let out = smp("Deployment", original, patch);
        assert_eq!(out["spec"]["replicas"], 3);
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs[0]["image"], "nginx:1.26");
        assert_eq!(
            cs[0]["ports"][0]["containerPort"], 80,
            "unmentioned fields of an item stay"
        );
        assert_eq!(cs[1]["name"], "sidecar", "unmentioned items stay");
    }

    #[test]
    fn directives() {
        let original = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x", "y"]},
            "spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]}});
        // null deletes, $patch: delete removes an item, set lists union.
        let out = smp(
            "Pod",
            original.clone(),
            json!({
            "metadata": {"labels": {"a": null}, "finalizers": ["z"]},
            "spec": {"containers": [{"name": "a", "$patch": "delete"}]}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["x", "y", "z"]));
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "b", "image": "2"}])
        );
        // $patch: replace on a map and on a list.
        let out = smp(
            "Pod",
            original.clone(),
            json!({"metadata": {"labels": {"c": "3", "$patch": "replace"}}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"c": "3"}));
        let out = smp(
            "Pod",
            original.clone(),
            json!({"spec": {"containers": [{"$patch": "replace"}, {"name": "c"}]}}),
        );
        assert_eq!(out["spec"]["containers"], json!([{"name": "c"}]));
        // $deleteFromPrimitiveList and $retainKeys.
        let out = smp(
            "Pod",
            original.clone(),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["y"]));
        let out = smp(
            "Pod",
            original,
            json!({"metadata": {"labels": {"$retainKeys": ["b"]}}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
    }

    #[test]
    fn untyped_lists_replace_and_new_items_lose_directives() {
        let out = smp(
            "Pod",
            json!({"spec": {"containers": [{"name": "a", "args": ["1", "2"]}]}}),
            json!({"spec": {"containers": [{"name": "a", "args": ["3"]},
                {"name": "new", "$setElementOrder/env": [{"name": "E"}], "env": [{"name": "E", "value": "v"}]}]}}),
        );
        assert_eq!(out["spec"]["containers"][0]["args"], json!(["3"]));
        assert_eq!(
            out["spec"]["containers"][1],
            json!({"name": "new", "env": [{"name": "E", "value": "v"}]})
        );
    }

    #[test]
    fn set_element_order_reorders() {
        let out = smp(
            "Pod",
            json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}),
            json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]}}),
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "b"}, {"name": "a"}])
        );
    }
}

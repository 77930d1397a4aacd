//! `pods/{name}/binding`: what binding does to a pod, in two ways that give the same object.
//! The scheduler's hot write edits the cached text of the pod (metadata, managed fields and
//! all, copied through untouched); anything unusual goes through the JSON tree.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use serde_json::{Value, json};

/// Why a pod cannot be bound.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The binding names another incarnation of the pod.
    Uid,
    Deleting,
    /// Already on this node.
    Bound(String),
}

/// The `PodScheduled=True` condition a binding adds.
pub(crate) fn scheduled(now: &str) -> Value {
    json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null,
           "lastTransitionTime": now})
}

/// Put `scheduled` first among the pod status' conditions, replacing any other PodScheduled.
fn set_condition(status: &mut Value, scheduled: &Value) {
    let mut conditions: Vec<Value> = status["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["type"] != "PodScheduled")
        .collect();
    conditions.insert(0, scheduled.clone());
    status["conditions"] = Value::Array(conditions);
}

/// Bind the pod as a JSON tree (without `resourceVersion`).
pub(crate) fn bind_tree(
    pod: &mut Value,
    node: &str,
    uid: Option<&str>,
    annotations: Option<&serde_json::Map<String, Value>>,
    scheduled: &Value,
) -> Result<(), Refusal> {
    if uid.is_some_and(|u| pod["metadata"]["uid"].as_str() != Some(u)) {
        return Err(Refusal::Uid);
    }
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        return Err(Refusal::Deleting);
    }
    if let Some(bound) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
        return Err(Refusal::Bound(bound.to_string()));
    }
    pod["spec"]["nodeName"] = json!(node);
    for (k, v) in annotations.into_iter().flatten() {
        pod["metadata"]["annotations"][k] = v.clone();
    }
    set_condition(&mut pod["status"], scheduled);
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    uid: Option<String>,
    deletion_timestamp: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    node_name: Option<String>,
}

/// Bind the pod in `cached`, the cache's text of it at `rev` (whose metadata starts with the
/// `resourceVersion` the cache put there), giving the text to store; `None` when the text is
/// not of that shape, and the tree must do it.
pub(crate) fn bind_text(
    cached: &[u8],
    rev: u64,
    node: &str,
    uid: Option<&str>,
    scheduled: &Value,
) -> Option<Result<String, Refusal>> {
    let top: BTreeMap<&str, &RawValue> = serde_json::from_slice(cached).ok()?;
    let meta_raw = top.get("metadata")?.get();
    let rest = meta_raw.strip_prefix(&format!("{{\"resourceVersion\":\"{rev}\""))?;
    let members = match rest.strip_prefix(',') {
        Some(m) => m,
        None if rest == "}" => rest,
        None => return None,
    };
    let meta: Meta = serde_json::from_str(meta_raw).ok()?;
    if uid.is_some_and(|u| meta.uid.as_deref() != Some(u)) {
        return Some(Err(Refusal::Uid));
    }
    if meta.deletion_timestamp.is_some() {
        return Some(Err(Refusal::Deleting));
    }
    let spec_raw = top.get("spec").map_or("{}", |s| s.get());
    let spec: Spec = serde_json::from_str(spec_raw).ok()?;
    match spec.node_name {
        Some(n) if !n.is_empty() => return Some(Err(Refusal::Bound(n))),
        // An empty nodeName member would be repeated: the tree replaces it.
        Some(_) => return None,
        None => {}
    }
    let spec_members = spec_raw.strip_prefix('{')?;
    let comma = if spec_members.trim_start().starts_with('}') {
        ""
    } else {
        ","
    };
    let node_json = serde_json::to_string(node).ok()?;
    let new_spec = format!("{{\"nodeName\":{node_json}{comma}{spec_members}");
    let mut status: Value = match top.get("status") {
        Some(s) => serde_json::from_str(s.get()).ok()?,
        None => json!({}),
    };
    if !status.is_object() {
        return None;
    }
    set_condition(&mut status, scheduled);
    let new_status = status.to_string();

    let mut out = String::with_capacity(cached.len() + new_status.len() + node.len() + 32);
    out.push('{');
    let mut put = |k: &str, v: &str| {
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(k).unwrap_or_default());
        out.push(':');
        out.push_str(v);
    };
    for (k, v) in &top {
        match *k {
            "metadata" => put(k, &format!("{{{members}")),
            "spec" => put(k, &new_spec),
            "status" => put(k, &new_status),
            _ => put(k, v.get()),
        }
    }
    if !top.contains_key("spec") {
        put("spec", &new_spec);
    }
    if !top.contains_key("status") {
        put("status", &new_status);
    }
    out.push('}');
    Some(Ok(out))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn cached(pod: &Value, rev: u64) -> Vec<u8> {
        let e = crate::cache::Entry::decode(
            api::resources::all()
                .iter()
                .find(|r| r.kind == "Pod")
                .unwrap(),
            pod.to_string().as_bytes(),
            rev,
        )
        .unwrap();
        e.json.to_vec()
    }

    #[test]
    fn the_text_and_the_tree_bind_alike() {
        let scheduled = scheduled("2026-12-01T00:00:00Z");
        let pods = [
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "a", "namespace": "d", "uid": "u1",
                                "managedFields": [{"manager": "m", "fieldsV1": {"f:spec": {}}}]},
                   "spec": {"containers": [{"name": "c", "image": "i"}]},
                   "status": {"phase": "Pending", "qosClass": "BestEffort",
                              "conditions": [{"type": "PodScheduled", "status": "False"},
                                             {"type": "Other", "status": "True"}]}}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "b", "uid": "u2"}}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "c", "uid": "u3"},
                   "spec": {}}),
        ];
        for pod in pods {
            let text = bind_text(&cached(&pod, 5), 5, "n\"1", None, &scheduled)
                .unwrap()
                .unwrap();
            let mut tree = pod.clone();
            bind_tree(&mut tree, "n\"1", None, None, &scheduled).unwrap();
            let got: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(got, tree, "{pod}");
        }
    }

    #[test]
    fn both_refuse_alike() {
        let scheduled = scheduled("2026-12-01T00:00:00Z");
        let cases = [
            (
                json!({"metadata": {"name": "a", "uid": "u1"}, "spec": {"nodeName": "n0"}}),
                Some("u1"),
                Refusal::Bound("n0".into()),
            ),
            (
                json!({"metadata": {"name": "a", "uid": "u1"}}),
                Some("u2"),
                Refusal::Uid,
            ),
            (
                json!({"metadata": {"name": "a", "uid": "u1",
                                    "deletionTimestamp": "2026-12-01T00:00:00Z"}}),
                None,
                Refusal::Deleting,
            ),
        ];
        for (pod, uid, want) in cases {
            let text = bind_text(&cached(&pod, 9), 9, "n1", uid, &scheduled).unwrap();
            assert_eq!(text.unwrap_err(), want, "{pod}");
            let mut tree = pod.clone();
            assert_eq!(
                bind_tree(&mut tree, "n1", uid, None, &scheduled).unwrap_err(),
                want
            );
        }
    }

    #[test]
    fn unusual_text_is_left_to_the_tree() {
        let scheduled = scheduled("2026-12-01T00:00:00Z");
        // An empty nodeName member; a resourceVersion not where the cache puts it.
        let empty = json!({"metadata": {"name": "a"}, "spec": {"nodeName": ""}});
        assert!(bind_text(&cached(&empty, 3), 3, "n1", None, &scheduled).is_none());
        let elsewhere = br#"{"metadata":{"name":"a","resourceVersion":"3"},"spec":{}}"#;
        assert!(bind_text(elsewhere, 3, "n1", None, &scheduled).is_none());
    }
}

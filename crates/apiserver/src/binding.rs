//! `pods/{name}/binding`: what binding does to a pod, in two ways that give the same object.
//! The scheduler's hot write edits the cached text of the pod (metadata, managed fields and
//! all, copied through untouched); anything unusual goes through the JSON tree.

use std::sync::LazyLock;

use serde::Deserialize;
use serde::de::IgnoredAny;
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

/// PodSpec's fields in the order Kubernetes writes them, to put `nodeName` in its place.
static POD_SPEC_ORDER: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| api::wire::declared_fields("api.core.v1.PodSpec"));

/// Bind the pod in `cached`, the cache's text of it at `rev` (whose metadata holds the
/// `resourceVersion` the cache put there), giving the text to store; `None` when the text is
/// not of that shape, and the tree must do it. Everything but the spec's new `nodeName` and the
/// status is copied through as it is, in its order, without decoding it.
pub(crate) fn bind_text(
    cached: &[u8],
    rev: u64,
    node: &str,
    uid: Option<&str>,
    scheduled: &Value,
) -> Option<Result<Vec<u8>, Refusal>> {
    use api::jsontext::members;
    let top = members(cached)?;
    let find = |k: &[u8]| {
        top.iter()
            .find(|(key, _)| *key == k)
            .map(|(_, r)| r.clone())
    };
    let meta_raw = &cached[find(b"metadata")?];
    let meta_members = members(meta_raw)?;
    let rv = format!("\"{rev}\"");
    if !meta_members
        .iter()
        .any(|(k, r)| *k == b"resourceVersion" && meta_raw[r.clone()] == *rv.as_bytes())
    {
        return None;
    }
    let meta: Meta = serde_json::from_slice(meta_raw).ok()?;
    if uid.is_some_and(|u| meta.uid.as_deref() != Some(u)) {
        return Some(Err(Refusal::Uid));
    }
    if meta.deletion_timestamp.is_some() {
        return Some(Err(Refusal::Deleting));
    }
    let spec_raw: &[u8] = match find(b"spec") {
        Some(r) => &cached[r],
        None => b"{}",
    };
    let spec_members = members(spec_raw)?;
    if let Some((_, r)) = spec_members.iter().find(|(k, _)| *k == b"nodeName") {
        let n: String = serde_json::from_slice(&spec_raw[r.clone()]).ok()?;
        if !n.is_empty() {
            return Some(Err(Refusal::Bound(n)));
        }
        // An empty nodeName member would be repeated: the tree replaces it.
        return None;
    }
    let mut status: Value = match find(b"status") {
        Some(r) => serde_json::from_slice(&cached[r]).ok()?,
        None => json!({}),
    };
    if !status.is_object() {
        return None;
    }
    set_condition(&mut status, scheduled);
    let new_status = api::wire::to_vec_as(&status, "api.core.v1.PodStatus");
    let node_json = serde_json::to_vec(node).ok()?;

    let mut out = Vec::with_capacity(cached.len() + new_status.len() + node.len() + 32);
    // `"key":` before a member, with a comma unless it is the first of its object.
    fn key(out: &mut Vec<u8>, first: &mut bool, k: &[u8]) {
        if !*first {
            out.push(b',');
        }
        *first = false;
        out.push(b'"');
        out.extend_from_slice(k);
        out.extend_from_slice(b"\":");
    }
    let write_meta = |out: &mut Vec<u8>| {
        // The metadata without the resourceVersion (the store never holds one).
        out.push(b'{');
        let mut first = true;
        for (k, r) in meta_members
            .iter()
            .filter(|(k, _)| *k != b"resourceVersion")
        {
            key(out, &mut first, k);
            out.extend_from_slice(&meta_raw[r.clone()]);
        }
        out.push(b'}');
    };
    let write_spec = |out: &mut Vec<u8>| {
        // The spec with nodeName where PodSpec's order puts it.
        let rank = |k: &[u8]| {
            POD_SPEC_ORDER
                .iter()
                .position(|f| f.as_bytes() == k)
                .unwrap_or(usize::MAX)
        };
        let node_rank = rank(b"nodeName");
        out.push(b'{');
        let mut first = true;
        let mut placed = false;
        for (k, r) in &spec_members {
            if !placed && rank(k) > node_rank {
                key(out, &mut first, b"nodeName");
                out.extend_from_slice(&node_json);
                placed = true;
            }
            key(out, &mut first, k);
            out.extend_from_slice(&spec_raw[r.clone()]);
        }
        if !placed {
            key(out, &mut first, b"nodeName");
            out.extend_from_slice(&node_json);
        }
        out.push(b'}');
    };
    out.push(b'{');
    let mut first = true;
    for (k, r) in &top {
        key(&mut out, &mut first, k);
        match *k {
            b"metadata" => write_meta(&mut out),
            b"spec" => write_spec(&mut out),
            b"status" => out.extend_from_slice(&new_status),
            _ => out.extend_from_slice(&cached[r.clone()]),
        }
    }
    if find(b"spec").is_none() {
        key(&mut out, &mut first, b"spec");
        write_spec(&mut out);
    }
    if find(b"status").is_none() {
        key(&mut out, &mut first, b"status");
        out.extend_from_slice(&new_status);
    }
    out.push(b'}');
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
            &api::wire::to_vec(pod),
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
            let got: Value = serde_json::from_slice(&text).unwrap();
            assert_eq!(got, tree, "{pod}");
            // And the same text, in Kubernetes' order.
            assert_eq!(text, api::wire::to_vec(&tree), "{pod}");
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
        let other = br#"{"metadata":{"name":"a","resourceVersion":"2"},"spec":{}}"#;
        assert!(bind_text(other, 3, "n1", None, &scheduled).is_none());
    }
}

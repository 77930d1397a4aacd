//! NodeRestriction admission: what a node's identity may change, beyond what authorization
//! lets it ask. A node writes its own Node, Lease and CSINode, the status of its own pods,
//! deletes and evicts its own pods, creates only mirror pods bound to itself, asks tokens
//! only for its own pods, and deletes only the released local-path volumes it provisioned.
//! On its Node it may set only the labels a kubelet sets, and may not change its taints or
//! owners afterwards. Refusals are Kubernetes' 403s, in its words.

use bytes::Bytes;
use http::{Method, Request};
use serde_json::Value;

use super::Identity;
use super::node::node_of;
use crate::errors::{ApiError, ApiResult};
use crate::request::Target;
use crate::server::{ApiServer, parse_body};

const MIRROR: &str = "kubernetes.io/config.mirror";

/// Labels under kubernetes.io or k8s.io that a node may set on itself.
const KUBELET_LABELS: [&str; 11] = [
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
];
/// Label namespaces (and their subdomains) a node may use freely.
const KUBELET_LABEL_NAMESPACES: [&str; 2] = ["kubelet.kubernetes.io", "node.kubernetes.io"];

fn in_domain(namespace: &str, domain: &str) -> bool {
    namespace == domain
        || namespace
            .strip_suffix(domain)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// Whether a node may not set or change label `key` on itself: labels under
/// node-restriction.kubernetes.io (made for operators to steer workloads to trusted nodes),
/// and under kubernetes.io or k8s.io unless a kubelet sets them (`node-role.kubernetes.io/*`
/// included: a node does not say it is a control-plane node).
fn forbidden_label(key: &str) -> bool {
    let Some((namespace, _)) = key.split_once('/') else {
        return false;
    };
    if in_domain(namespace, "node-restriction.kubernetes.io") {
        return true;
    }
    let kubernetes = in_domain(namespace, "kubernetes.io") || in_domain(namespace, "k8s.io");
    let kubelets = KUBELET_LABELS.contains(&key)
        || KUBELET_LABEL_NAMESPACES
            .iter()
            .any(|d| in_domain(namespace, d));
    kubernetes && !kubelets
}

/// The labels a node may not touch that differ between `new` and `old`, in order.
fn forbidden_changes(new: &Value, old: &Value) -> Vec<String> {
    let labels = |v: &Value| -> std::collections::BTreeMap<String, Value> {
        v["metadata"]["labels"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    };
    let (now, before) = (labels(new), labels(old));
    let keys: std::collections::BTreeSet<&String> = now.keys().chain(before.keys()).collect();
    keys.into_iter()
        .filter(|k| now.get(*k) != before.get(*k) && forbidden_label(k))
        .cloned()
        .collect()
}

/// NodeRestriction on a node's own Node object, given the object as it would be stored and the
/// stored one (none on create).
pub(crate) fn node_object(
    who: &Identity,
    r: &api::Resource,
    new: &Value,
    old: Option<&Value>,
) -> ApiResult<()> {
    let Some(node) = node_of(&who.user) else {
        return Ok(());
    };
    if !r.group.is_empty() || r.kind != "Node" {
        return Ok(());
    }
    let name = new["metadata"]["name"].as_str().unwrap_or("");
    let refuse = |why: String| Err(ApiError::forbidden_on(r, name, &why));
    match old {
        None => {
            let bad = forbidden_changes(new, &Value::Null);
            if !bad.is_empty() {
                return refuse(format!(
                    "node {node:?} is not allowed to set the following labels: {}",
                    bad.join(", ")
                ));
            }
        }
        Some(old) => {
            // Missing, null and empty are the same list.
            let field = |v: &Value, a: &str, b: &str| {
                v[a].get(b)
                    .filter(|l| !l.is_null() && l.as_array().is_none_or(|l| !l.is_empty()))
                    .cloned()
                    .unwrap_or(Value::Null)
            };
            if field(new, "spec", "taints") != field(old, "spec", "taints") {
                return refuse(format!("node {node:?} is not allowed to modify taints"));
            }
            if field(new, "metadata", "ownerReferences")
                != field(old, "metadata", "ownerReferences")
            {
                return refuse(format!(
                    "node {node:?} is not allowed to modify ownerReferences"
                ));
            }
            let bad = forbidden_changes(new, old);
            if !bad.is_empty() {
                return refuse(format!(
                    "is not allowed to modify labels: {}",
                    bad.join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// What a mirror pod may not name, as NodeRestriction words it: a service account, secrets,
/// configmaps or persistentvolumeclaims.
fn referenced(pod: &Value) -> Option<&'static str> {
    let spec = &pod["spec"];
    let named = |v: &Value| v.as_str().is_some_and(|s| !s.is_empty());
    if named(&spec["serviceAccountName"]) || named(&spec["serviceAccount"]) {
        return Some("serviceaccounts");
    }
    let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
    let sources = |key: &str| {
        volumes.iter().any(|v| {
            !v[key].is_null()
                || v["projected"]["sources"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| !s[key].is_null()))
        })
    };
    let containers: Vec<&Value> = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|l| spec[*l].as_array().into_iter().flatten())
        .collect();
    let env_refs = |key: &str, from: &str| {
        containers.iter().any(|c| {
            c["env"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| !e["valueFrom"][key].is_null()))
                || c["envFrom"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| !e[from].is_null()))
        })
    };
    if sources("secret")
        || env_refs("secretKeyRef", "secretRef")
        || spec["imagePullSecrets"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    {
        return Some("secrets");
    }
    if sources("configMap") || env_refs("configMapKeyRef", "configMapRef") {
        return Some("configmaps");
    }
    if volumes
        .iter()
        .any(|v| !v["persistentVolumeClaim"].is_null() || !v["ephemeral"].is_null())
    {
        return Some("persistentvolumeclaims");
    }
    None
}

impl ApiServer {
    /// Refuse a node's write that is not its own to make; other callers pass.
    pub(crate) fn node_restriction(
        &self,
        who: &Identity,
        t: &Target,
        req: &Request<Bytes>,
    ) -> ApiResult<()> {
        let Some(node) = node_of(&who.user) else {
            return Ok(());
        };
        let method = req.method();
        if *method == Method::GET || *method == Method::HEAD {
            return Ok(());
        }
        let r = t.resource;
        let sub = t.subresource.as_deref().unwrap_or("");
        let ns = t.namespace.as_deref().unwrap_or("");
        // The object a create names is in its body.
        let body_name = || -> String {
            parse_body(req, true)
                .ok()
                .and_then(|b| b["metadata"]["name"].as_str().map(str::to_string))
                .unwrap_or_default()
        };
        let name = t.name.clone().unwrap_or_else(body_name);
        let refuse = |why: String| Err(ApiError::forbidden_on(r, &name, &why));
        let cached = |kind: &str, key: &str| -> Option<Value> {
            let res = api::resources::by_kind("v1", kind)?;
            self.cache.resource(res).get(key).map(|e| e.value())
        };
        let bound_here = |pod: &Value| pod["spec"]["nodeName"].as_str() == Some(node);
        match (r.group, r.kind) {
            ("", "Node") if name != node => {
                return refuse(format!(
                    "node {node:?} is not allowed to modify node {name:?}"
                ));
            }
            ("", "Pod") => {
                let existing = || cached("Pod", &format!("{ns}/{name}"));
                match (method.as_str(), sub) {
                    ("POST", "") => {
                        let pod = parse_body(req, true).unwrap_or(Value::Null);
                        if pod["metadata"]["annotations"][MIRROR].is_null() {
                            return refuse(format!(
                                "pod does not have \"{MIRROR}\" annotation, node \"{node}\" can only create mirror pods"
                            ));
                        }
                        if !bound_here(&pod) {
                            return refuse(format!(
                                "node \"{node}\" can only create pods with spec.nodeName set to itself"
                            ));
                        }
                        if let Some(what) = referenced(&pod) {
                            return refuse(format!(
                                "node \"{node}\" can not create pods that reference {what}"
                            ));
                        }
                    }
                    ("DELETE", "") => {
                        if !existing().is_some_and(|p| bound_here(&p)) {
                            return refuse(format!(
                                "node \"{node}\" can only delete pods with spec.nodeName set to itself"
                            ));
                        }
                    }
                    ("PUT" | "PATCH", "status") => {
                        if !existing().is_some_and(|p| bound_here(&p)) {
                            return refuse(format!(
                                "node \"{node}\" can only update pod status for pods with spec.nodeName set to itself"
                            ));
                        }
                    }
                    ("POST", "eviction") => {
                        if !existing().is_some_and(|p| bound_here(&p)) {
                            return refuse(format!(
                                "node {node} can only evict pods with spec.nodeName set to itself"
                            ));
                        }
                    }
                    (_, "") => {
                        let op = match method.as_str() {
                            "POST" => "CREATE",
                            "DELETE" => "DELETE",
                            _ => "UPDATE",
                        };
                        return refuse(format!(
                            "unexpected operation \"{op}\", node \"{node}\" can only create and delete mirror pods"
                        ));
                    }
                    (_, other) => {
                        return refuse(format!(
                            "unexpected pod subresource \"{other}\", only 'status' and 'eviction' are allowed"
                        ));
                    }
                }
            }
            ("coordination.k8s.io", "Lease") => {
                if ns != "kube-node-lease" {
                    return refuse(
                        "can only access leases in the \"kube-node-lease\" system namespace".into(),
                    );
                }
                if name != node {
                    return refuse(
                        "can only access node lease with the same name as the requesting node"
                            .into(),
                    );
                }
            }
            // berth's nodes remove the local-path volumes they made once released (its own
            // addition: a kubelet deletes no volumes); not another node's, nor any other.
            ("", "PersistentVolume") => {
                use api::kinds::storage::{
                    LOCAL_PATH_PROVISIONER, PROVISIONED_BY, VOLUME_NODE_LABEL,
                };
                let v = cached("PersistentVolume", &name).unwrap_or(Value::Null);
                let mine = method == Method::DELETE
                    && sub.is_empty()
                    && v["metadata"]["labels"][VOLUME_NODE_LABEL].as_str() == Some(node)
                    && v["metadata"]["annotations"][PROVISIONED_BY].as_str()
                        == Some(LOCAL_PATH_PROVISIONER)
                    && v["status"]["phase"].as_str() == Some("Released")
                    && v["spec"]["persistentVolumeReclaimPolicy"].as_str() == Some("Delete");
                if !mine {
                    return refuse(format!(
                        "node {node:?} can only delete released local-path volumes it provisioned"
                    ));
                }
            }
            ("storage.k8s.io", "CSINode") if name != node => {
                return refuse(
                    "can only access CSINode with the same name as the requesting node".into(),
                );
            }
            ("", "ServiceAccount") if sub == "token" => {
                let body = parse_body(req, false).unwrap_or(Value::Null);
                let bound = &body["spec"]["boundObjectRef"];
                if bound["kind"] != "Pod"
                    || bound["apiVersion"].as_str().unwrap_or("v1") != "v1"
                    || bound["name"].as_str().unwrap_or("").is_empty()
                {
                    return refuse("node requested token not bound to a pod".into());
                }
                let Some(uid) = bound["uid"].as_str().filter(|u| !u.is_empty()) else {
                    return refuse("node requested token with a pod binding without a uid".into());
                };
                let pod_name = bound["name"].as_str().unwrap_or("");
                let pod = cached("Pod", &format!("{ns}/{pod_name}"));
                match pod {
                    Some(p) if p["metadata"]["uid"] != uid => {
                        return refuse(format!(
                            "the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated"
                        ));
                    }
                    Some(p) if !bound_here(&p) => {
                        return refuse(
                            "node requested token bound to a pod scheduled on a different node"
                                .into(),
                        );
                    }
                    Some(_) => {}
                    None => {
                        return Err(ApiError::not_found(
                            api::resources::by_kind("v1", "Pod").unwrap_or(r),
                            pod_name,
                        ));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn node_res() -> &'static api::Resource {
        api::resources::by_kind("v1", "Node").unwrap()
    }

    fn as_node(name: &str) -> Identity {
        Identity::user(
            api::rbac::UserInfo::new(format!("system:node:{name}"), &["system:nodes"])
                .authenticated(),
        )
    }

    fn node(labels: serde_json::Value, taints: serde_json::Value) -> Value {
        json!({"metadata": {"name": "n1", "labels": labels}, "spec": {"taints": taints}})
    }

    #[test]
    fn a_node_sets_only_kubelet_labels_on_itself() {
        let who = as_node("n1");
        let ok = node(
            json!({"kubernetes.io/hostname": "n1", "kubernetes.io/os": "linux",
                   "node.kubernetes.io/exclude-from-external-load-balancers": "",
                   "topology.kubernetes.io/zone": "a", "example.com/rack": "r1", "plain": "x"}),
            json!([]),
        );
        node_object(&who, node_res(), &ok, None).unwrap();
        let bad = node(
            json!({"node-role.kubernetes.io/control-plane": "",
                   "node-restriction.kubernetes.io/trusted": "yes", "kubernetes.io/hostname": "n1"}),
            json!([]),
        );
        let e = node_object(&who, node_res(), &bad, None).unwrap_err();
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "nodes \"n1\" is forbidden: node \"n1\" is not allowed to set the following labels: node-restriction.kubernetes.io/trusted, node-role.kubernetes.io/control-plane"
        );
        // Others (an admin) may.
        let admin = Identity::user(api::rbac::UserInfo::new("admin", &["system:masters"]));
        node_object(&admin, node_res(), &bad, None).unwrap();
    }

    #[test]
    fn a_node_keeps_its_taints_and_the_labels_an_operator_set() {
        let who = as_node("n1");
        let taint = json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]);
        let old = node(
            json!({"node-role.kubernetes.io/control-plane": "", "kubernetes.io/hostname": "n1"}),
            taint.clone(),
        );
        // Its own labels and annotations: fine.
        let mut ok = old.clone();
        ok["metadata"]["labels"]["example.com/rack"] = json!("r2");
        node_object(&who, node_res(), &ok, Some(&old)).unwrap();
        // Dropping a role label an operator gave it, or its taints: refused.
        let mut unlabelled = old.clone();
        unlabelled["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove("node-role.kubernetes.io/control-plane");
        let e = node_object(&who, node_res(), &unlabelled, Some(&old)).unwrap_err();
        assert_eq!(
            e.message,
            "nodes \"n1\" is forbidden: is not allowed to modify labels: node-role.kubernetes.io/control-plane"
        );
        // An empty list where there was none is no change.
        let mut empty = node(json!({"kubernetes.io/hostname": "n1"}), json!(null));
        let mut listed = empty.clone();
        listed["spec"]["taints"] = json!([]);
        node_object(&who, node_res(), &listed, Some(&empty)).unwrap();
        empty["metadata"]["ownerReferences"] = json!([]);
        node_object(&who, node_res(), &empty, Some(&listed)).unwrap();
        let mut untainted = old.clone();
        untainted["spec"]["taints"] = json!([]);
        let e = node_object(&who, node_res(), &untainted, Some(&old)).unwrap_err();
        assert_eq!(
            e.message,
            "nodes \"n1\" is forbidden: node \"n1\" is not allowed to modify taints"
        );
    }

    #[test]
    fn label_domains_match_whole_labels_only() {
        assert!(forbidden_label("node-role.kubernetes.io/worker"));
        assert!(forbidden_label("foo.k8s.io/x"));
        assert!(!forbidden_label("notkubernetes.io/x"));
        assert!(!forbidden_label("a.node.kubernetes.io/x"));
        assert!(!forbidden_label("kubelet.kubernetes.io/x"));
        assert!(forbidden_label("sub.node-restriction.kubernetes.io/x"));
        assert!(!forbidden_label("no-slash"));
    }
}

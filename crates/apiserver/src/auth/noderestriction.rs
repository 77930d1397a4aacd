//! NodeRestriction admission: what a node's identity may change, beyond what authorization
//! lets it ask. A node writes its own Node, Lease and CSINode, the status of its own pods,
//! deletes and evicts its own pods, creates only mirror pods bound to itself, and asks tokens
//! only for its own pods. Refusals are Kubernetes' 403s, in its words.

use bytes::Bytes;
use http::{Method, Request};
use serde_json::Value;

use super::Identity;
use super::node::node_of;
use crate::errors::{ApiError, ApiResult};
use crate::request::Target;
use crate::server::{ApiServer, parse_body};

const MIRROR: &str = "kubernetes.io/config.mirror";

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

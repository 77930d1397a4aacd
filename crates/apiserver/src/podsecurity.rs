//! Pod Security admission, as Kubernetes applies it: a pod that breaks its namespace's
//! `enforce` level is refused, one that breaks its `warn` level is admitted with a warning;
//! workloads (their pod templates) are only warned about; namespaces' labels are checked, and
//! a stricter enforce level reports the existing pods that break it. The judgement itself is
//! `api::podsecurity`.

use std::collections::BTreeMap;

use api::Resource;
use api::k8s_openapi::api::core::v1::PodSpec;
use api::podsecurity::{self, LevelVersion, Policy};
use serde_json::Value;

use crate::errors::{ApiError, ApiResult};
use crate::server::ApiServer;

/// Kinds whose pod template is judged (warnings only), with where the template is.
fn template_of<'a>(kind: &str, obj: &'a Value) -> Option<&'a Value> {
    match kind {
        "ReplicationController"
        | "ReplicaSet"
        | "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "Job" => obj["spec"].get("template"),
        "CronJob" => obj["spec"]["jobTemplate"]["spec"].get("template"),
        _ => None,
    }
    .filter(|t| t.is_object())
}

/// Whether a pod update changes what Pod Security looks at: its containers' number or images,
/// or its ephemeral containers (other updates are not judged again, as in Kubernetes).
fn significant(new: &Value, old: &Value) -> bool {
    let images = |v: &Value, list: &str| -> Vec<(String, String)> {
        v["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or("").to_string(),
                    c["image"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .any(|list| images(new, list) != images(old, list))
}

fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect()
}

fn annotations_of(template: &Value) -> BTreeMap<String, String> {
    template["metadata"]["annotations"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect()
}

impl ApiServer {
    fn namespace_policy(&self, namespace: &str) -> Policy {
        let labels = api::resources::by_kind("v1", "Namespace")
            .and_then(|r| self.cache.resource(r).get(namespace))
            .map(|e| e.labels.clone())
            .unwrap_or_default();
        podsecurity::policy(&labels, self.config.pod_security_default).0
    }

    /// Judge a pod or workload write; returns the warnings to send, or refuses the pod.
    pub(crate) fn admit_pod_security(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        obj: &Value,
        old: Option<&Value>,
        subresource: Option<&str>,
    ) -> ApiResult<Vec<String>> {
        let Some(ns) = namespace else {
            return Ok(Vec::new());
        };
        let is_pod = r.kind == "Pod";
        let template = if is_pod {
            if !matches!(subresource, None | Some("ephemeralcontainers")) {
                return Ok(Vec::new());
            }
            if let Some(old) = old
                && !significant(obj, old)
            {
                return Ok(Vec::new());
            }
            obj
        } else {
            if subresource.is_some() {
                return Ok(Vec::new());
            }
            match template_of(r.kind, obj) {
                Some(t) => t,
                None => return Ok(Vec::new()),
            }
        };
        let policy = self.namespace_policy(ns);
        if policy.is_privileged() {
            return Ok(Vec::new());
        }
        let spec = match serde_json::from_value::<PodSpec>(template["spec"].clone()) {
            Ok(spec) => spec,
            // A pod that cannot be judged is not admitted (a workload is only warned about).
            Err(e) if is_pod => {
                return Err(ApiError::forbidden(format!(
                    "pods is forbidden: failed to decode pod for PodSecurity: {e}"
                )));
            }
            Err(_) => return Ok(Vec::new()),
        };
        let annotations = annotations_of(template);
        let judge = |lv: LevelVersion| podsecurity::check(lv, &annotations, &spec);
        if is_pod {
            let enforced = judge(policy.enforce);
            if !enforced.is_empty() {
                let name = obj["metadata"]["name"].as_str().unwrap_or("");
                let why = podsecurity::message(policy.enforce, &enforced, false);
                return Err(if name.is_empty() {
                    ApiError::forbidden(format!("pods is forbidden: {why}"))
                } else {
                    ApiError::forbidden_on(r, name, &why)
                });
            }
        }
        // A warn level equal to the enforce level has been judged already (and passed).
        if is_pod && policy.warn == policy.enforce {
            return Ok(Vec::new());
        }
        let warned = judge(policy.warn);
        Ok(if warned.is_empty() {
            Vec::new()
        } else {
            vec![podsecurity::message(policy.warn, &warned, true)]
        })
    }

    /// Check a namespace's Pod Security labels; a stricter enforce level on an existing
    /// namespace is allowed with warnings naming the pods that break it.
    pub(crate) fn admit_namespace_labels(
        &self,
        r: &Resource,
        obj: &Value,
        old: Option<&Value>,
    ) -> ApiResult<Vec<String>> {
        let name = obj["metadata"]["name"].as_str().unwrap_or("");
        let labels = labels_of(obj);
        let (policy, errors) = podsecurity::policy(&labels, self.config.pod_security_default);
        let old_errors =
            old.map(|o| podsecurity::policy(&labels_of(o), self.config.pod_security_default).1);
        if !errors.is_empty() && old_errors.as_ref() != Some(&errors) {
            let mut errs = api::errors::FieldErrors::default();
            for e in &errors {
                errs.invalid(
                    &api::errors::Path::root("metadata")
                        .child("labels")
                        .key(&e.label),
                    &e.value,
                    e.detail,
                );
            }
            return Err(ApiError::invalid(r, name, &errs));
        }
        let Some(old) = old else {
            return Ok(Vec::new());
        };
        let before = podsecurity::policy(&labels_of(old), self.config.pod_security_default).0;
        let (new, was) = (policy.enforce, before.enforce);
        let unchanged = new == was;
        let loosened = new.version == was.version && new.level <= was.level;
        if unchanged || loosened || new.level == podsecurity::Level::Privileged {
            return Ok(Vec::new());
        }
        Ok(self.existing_pod_warnings(name, new))
    }

    /// Kubernetes' report of a namespace's pods against a new enforce level: one line per
    /// distinct set of reasons, naming the first pod and how many others share them.
    fn existing_pod_warnings(&self, namespace: &str, lv: LevelVersion) -> Vec<String> {
        const MAX_PODS: usize = 3000;
        let pods = self.cached("v1", "Pod", Some(namespace));
        let total = pods.len();
        let mut groups: BTreeMap<String, (String, usize)> = BTreeMap::new();
        for p in pods.iter().take(MAX_PODS) {
            let Ok(spec) = serde_json::from_value::<PodSpec>(p["spec"].clone()) else {
                continue;
            };
            let v = podsecurity::check(lv, &annotations_of(p), &spec);
            if v.is_empty() {
                continue;
            }
            let reasons = v
                .iter()
                .map(|x| x.reason.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let pod = p["metadata"]["name"].as_str().unwrap_or("").to_string();
            let g = groups.entry(reasons).or_insert((pod.clone(), 0));
            if pod < g.0 {
                g.0 = pod;
            }
            g.1 += 1;
        }
        let mut out = Vec::new();
        if total > MAX_PODS {
            out.push(format!(
                "new PodSecurity enforce level only checked against the first {MAX_PODS} of {total} existing pods"
            ));
        }
        if groups.is_empty() {
            return out;
        }
        out.push(format!(
            "existing pods in namespace {namespace:?} violate the new PodSecurity enforce level \"{lv}\""
        ));
        let mut lines: Vec<String> = groups
            .into_iter()
            .map(|(reasons, (pod, n))| match n {
                1 => format!("{pod}: {reasons}"),
                2 => format!("{pod} (and 1 other pod): {reasons}"),
                n => format!("{pod} (and {} other pods): {reasons}", n - 1),
            })
            .collect();
        lines.sort();
        out.extend(lines);
        out
    }
}

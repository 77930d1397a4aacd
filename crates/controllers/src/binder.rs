//! Placement for a one-node cluster, until the scheduler arrives: every pod without a node
//! goes to this cluster's node through the same `pods/{name}/binding` subresource the
//! scheduler will use, unless its node selector or required node affinity rules the node out.

use std::collections::BTreeMap;
use std::time::Duration;

use api::k8s_openapi::api::core::v1::{
    Event, EventSource, Node, NodeSelectorRequirement, ObjectReference, Pod,
};
use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use bytes::Bytes;
use client::{Client, ClientError, ListParams, WatchEvent};
use serde_json::json;
use tracing::{debug, info, warn};

const SCHEDULER: &str = "default-scheduler";
const RETRY: Duration = Duration::from_secs(1);
/// Pods that did not fit are looked at again this often (the node's labels may change).
const RECHECK: Duration = Duration::from_secs(10);

pub struct SingleNodeBinder {
    client: Client,
    node: String,
}

/// Whether a node with `labels` satisfies one requirement of a node selector term.
fn requirement_holds(r: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(&r.key);
    let values = r.values.clone().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(|v| number(v)), values.first().and_then(|v| number(v))), (Some(a), Some(b)) if a > b)
        }
        "Lt" => {
            matches!((value.and_then(|v| number(v)), values.first().and_then(|v| number(v))), (Some(a), Some(b)) if a < b)
        }
        _ => false,
    }
}

/// Whether the pod's node selector and required node affinity allow a node with `labels`.
pub fn fits(pod: &Pod, labels: &BTreeMap<String, String>) -> bool {
    let Some(spec) = &pod.spec else { return true };
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    // Terms are ORed, requirements within a term ANDed.
    let affinity_ok = required.is_none_or(|sel| {
        sel.node_selector_terms.iter().any(|t| {
            t.match_expressions
                .iter()
                .flatten()
                .all(|r| requirement_holds(r, labels))
        })
    });
    selector_ok && affinity_ok
}

impl SingleNodeBinder {
    pub fn new(client: Client, node: &str) -> SingleNodeBinder {
        SingleNodeBinder {
            client,
            node: node.to_string(),
        }
    }

    pub async fn run(self) {
        let selector = "spec.nodeName=".to_string();
        loop {
            let params = ListParams {
                field_selector: Some(selector.clone()),
                ..Default::default()
            };
            let (pods, rv) = match self.client.list::<Pod>(None, &params).await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "cannot list unscheduled pods; retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            for p in &pods {
                self.place(p).await;
            }
            let params = ListParams {
                field_selector: Some(selector.clone()),
                resource_version: Some(rv),
                timeout_seconds: Some(RECHECK.as_secs() as u32),
                ..Default::default()
            };
            let mut w = match self.client.watch::<Pod>(None, &params).await {
                Ok(w) => w,
                Err(e) => {
                    warn!(error = %e, "cannot watch unscheduled pods; retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            while let Some(ev) = w.next().await {
                match ev {
                    WatchEvent::Added(p) | WatchEvent::Modified(p) => self.place(&p).await,
                    WatchEvent::Error(e) => {
                        debug!(error = %e, "unscheduled pod watch ended");
                        break;
                    }
                    _ => {}
                }
            }
        }
    }

    async fn place(&self, pod: &Pod) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let ours = spec
            .and_then(|s| s.scheduler_name.as_deref())
            .is_none_or(|s| s == SCHEDULER);
        let bound = spec
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty());
        if !ours || bound || pod.metadata.deletion_timestamp.is_some() {
            return;
        }
        let labels = match self.client.get::<Node>(None, &self.node).await {
            Ok(Some(n)) => n.metadata.labels.unwrap_or_default(),
            Ok(None) => {
                self.unschedulable(pod, "0/0 nodes are available: no nodes registered yet.")
                    .await;
                return;
            }
            Err(e) => {
                warn!(error = %e, "cannot read the node");
                return;
            }
        };
        if !fits(pod, &labels) {
            self.unschedulable(
                pod,
                "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.",
            )
            .await;
            return;
        }
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
        });
        let path = format!("/api/v1/namespaces/{ns}/pods/{name}/binding");
        match self
            .client
            .request(
                http::Method::POST,
                &path,
                "application/json",
                Bytes::from(binding.to_string()),
            )
            .await
        {
            Ok(_) => {
                info!(pod = %format!("{ns}/{name}"), node = %self.node, "pod bound");
                self.event(
                    pod,
                    "Normal",
                    "Scheduled",
                    &format!("Successfully assigned {ns}/{name} to {}", self.node),
                )
                .await;
            }
            Err(e) if e.is_conflict() || e.is_not_found() => {}
            Err(e) => warn!(pod = %name, error = %e, "could not bind the pod"),
        }
    }

    /// Say why the pod waits, in the scheduler's words (once per message).
    async fn unschedulable(&self, pod: &Pod, message: &str) {
        let already = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "PodScheduled" && c.message.as_deref() == Some(message))
            });
        if already {
            return;
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let mut conditions: Vec<serde_json::Value> = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.type_ != "PodScheduled")
            .filter_map(|c| serde_json::to_value(c).ok())
            .collect();
        conditions.push(json!({
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": message, "lastProbeTime": null,
            "lastTransitionTime": Time(jiff::Timestamp::now()),
        }));
        let patch = json!({"status": {"conditions": conditions}});
        let path = format!("/api/v1/namespaces/{ns}/pods/{name}/status");
        if let Err(e) = self
            .client
            .request(
                http::Method::PATCH,
                &path,
                "application/merge-patch+json",
                Bytes::from(patch.to_string()),
            )
            .await
        {
            debug!(error = %e, "could not mark the pod unschedulable");
        }
        self.event(pod, "Warning", "FailedScheduling", message)
            .await;
    }

    async fn event(&self, pod: &Pod, kind: &str, reason: &str, message: &str) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let now = jiff::Timestamp::now();
        let ev = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!(
                    "{}.",
                    pod.metadata.name.clone().unwrap_or_default()
                )),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                namespace: Some(ns.clone()),
                uid: pod.metadata.uid.clone(),
                resource_version: pod.metadata.resource_version.clone(),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(kind.into()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            source: Some(EventSource {
                component: Some(SCHEDULER.into()),
                host: None,
            }),
            reporting_component: Some(SCHEDULER.into()),
            ..Default::default()
        };
        let r: Result<Event, ClientError> = self.client.create(Some(&ns), &ev).await;
        if let Err(e) = r {
            debug!(error = %e, "could not record a scheduling event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("a pod")
    }

    #[test]
    fn selectors_and_required_affinity_decide_fit() {
        let labels = BTreeMap::from([
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("size".to_string(), "8".to_string()),
        ]);
        let cases = [
            (json!({}), true),
            (json!({"nodeSelector": {"kubernetes.io/os": "linux"}}), true),
            (json!({"nodeSelector": {"disk": "ssd"}}), false),
            (
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "size", "operator": "Gt", "values": ["4"]}]}]}}}}),
                true,
            ),
            (
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "Exists"}]},
                    {"matchExpressions": [{"key": "size", "operator": "In", "values": ["8"]}]}]}}}}),
                true,
            ),
            (
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/os", "operator": "NotIn", "values": ["linux"]}]}]}}}}),
                false,
            ),
        ];
        for (spec, want) in cases {
            let mut s = spec.clone();
            s["containers"] = json!([{"name": "c", "image": "i"}]);
            assert_eq!(fits(&pod(json!({"spec": s})), &labels), want, "{spec}");
        }
    }
}

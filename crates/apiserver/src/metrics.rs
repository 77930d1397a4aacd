//! `metrics.k8s.io/v1beta1`, served by the API server itself (where Kubernetes needs a
//! metrics-server): NodeMetrics and PodMetrics made from each node agent's usage summary,
//! fetched through the node connector when asked. `kubectl top` and the HorizontalPodAutoscaler
//! read them.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use serde_json::{Value, json};

use crate::errors::{ApiError, ApiResult};
use crate::request::Params;
use crate::server::{ApiServer, Reply};

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";

fn cpu(nanocores: u64) -> String {
    format!("{nanocores}n")
}

fn memory(bytes: u64) -> String {
    format!("{}Ki", bytes / 1024)
}

fn window(secs: f64) -> String {
    format!("{}s", secs.round() as i64)
}

impl ApiServer {
    /// One node's usage summary from its agent, if it answers.
    async fn summary(&self, node: &str) -> Option<Value> {
        let connector = self.node_connector.get()?;
        let req = Request::builder()
            .method(Method::GET)
            .uri("/stats/summary")
            .body(Bytes::new())
            .ok()?;
        let resp = connector.call(&self.node_target(node), req).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body = resp.into_body().collect().await;
        serde_json::from_slice(&body).ok()
    }

    /// `/apis/metrics.k8s.io/v1beta1/...`
    pub(crate) async fn metrics(
        &self,
        path: &str,
        params: &Params,
        method: &Method,
    ) -> ApiResult<Reply> {
        if method != Method::GET {
            return Err(ApiError::method_not_allowed());
        }
        let rest = path
            .trim_end_matches('/')
            .strip_prefix(&format!("/apis/{GROUP}/{VERSION}/"))
            .ok_or_else(ApiError::no_route)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let selector = match params.get("labelSelector") {
            Some(s) if !s.is_empty() => Some(
                api::selector::LabelSelectorExpr::parse(s)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?,
            ),
            _ => None,
        };
        self.cache.wait_fresh().await?;
        match parts.as_slice() {
            ["nodes"] => self.node_metrics(None, selector.as_ref()).await,
            ["nodes", name] => self.node_metrics(Some(name), None).await,
            ["pods"] => self.pod_metrics(None, None, selector.as_ref()).await,
            ["namespaces", ns, "pods"] => self.pod_metrics(Some(ns), None, selector.as_ref()).await,
            ["namespaces", ns, "pods", name] => self.pod_metrics(Some(ns), Some(name), None).await,
            _ => Err(ApiError::no_route()),
        }
    }

    async fn node_metrics(
        &self,
        one: Option<&str>,
        selector: Option<&api::selector::LabelSelectorExpr>,
    ) -> ApiResult<Reply> {
        let nodes = self.cached("v1", "Node", None);
        let mut items = Vec::new();
        for n in &nodes {
            let name = n["metadata"]["name"].as_str().unwrap_or("");
            if one.is_some_and(|o| o != name) {
                continue;
            }
            let labels: BTreeMap<String, String> =
                serde_json::from_value(n["metadata"]["labels"].clone()).unwrap_or_default();
            if selector.is_some_and(|s| !s.matches(&labels)) {
                continue;
            }
            let Some(s) = self.summary(name).await else {
                continue;
            };
            items.push(json!({
                "metadata": {"name": name, "labels": n["metadata"]["labels"],
                             "creationTimestamp": s["timestamp"]},
                "timestamp": s["timestamp"],
                "window": window(s["window_seconds"].as_f64().unwrap_or(0.0)),
                "usage": {"cpu": cpu(s["node"]["cpu_nanocores"].as_u64().unwrap_or(0)),
                          "memory": memory(s["node"]["memory_bytes"].as_u64().unwrap_or(0))},
            }));
        }
        if let Some(name) = one {
            let mut item = items.pop().ok_or_else(|| {
                let mut e = ApiError::service_unavailable(format!(
                    "nodemetrics.metrics.k8s.io \"{name}\" not found"
                ));
                e.code = 404;
                e.reason = "NotFound";
                e
            })?;
            item["kind"] = json!("NodeMetrics");
            item["apiVersion"] = json!(format!("{GROUP}/{VERSION}"));
            return Ok(Reply::json(StatusCode::OK, &item));
        }
        let list = json!({"kind": "NodeMetricsList", "apiVersion": format!("{GROUP}/{VERSION}"),
                          "metadata": {}, "items": items});
        Ok(Reply::json(StatusCode::OK, &list))
    }

    async fn pod_metrics(
        &self,
        ns: Option<&str>,
        one: Option<&str>,
        selector: Option<&api::selector::LabelSelectorExpr>,
    ) -> ApiResult<Reply> {
        let pods = self.cached("v1", "Pod", ns);
        // The pods asked for, by node, then by uid.
        let mut wanted: BTreeMap<String, BTreeMap<String, &Value>> = BTreeMap::new();
        for p in &pods {
            if one.is_some_and(|o| p["metadata"]["name"] != o) {
                continue;
            }
            let labels: BTreeMap<String, String> =
                serde_json::from_value(p["metadata"]["labels"].clone()).unwrap_or_default();
            if selector.is_some_and(|s| !s.matches(&labels)) {
                continue;
            }
            let node = p["spec"]["nodeName"].as_str().unwrap_or("");
            let uid = p["metadata"]["uid"].as_str().unwrap_or("");
            if !node.is_empty() && p["status"]["phase"] == "Running" {
                wanted
                    .entry(node.to_string())
                    .or_default()
                    .insert(uid.to_string(), p);
            }
        }
        let mut items = Vec::new();
        for (node, by_uid) in &wanted {
            let Some(s) = self.summary(node).await else {
                continue;
            };
            for ps in s["pods"].as_array().into_iter().flatten() {
                let Some(p) = ps["uid"].as_str().and_then(|u| by_uid.get(u)) else {
                    continue;
                };
                let containers: Vec<Value> = ps["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| json!({"name": c["name"],
                        "usage": {"cpu": cpu(c["usage"]["cpu_nanocores"].as_u64().unwrap_or(0)),
                                  "memory": memory(c["usage"]["memory_bytes"].as_u64().unwrap_or(0))}}))
                    .collect();
                items.push(json!({
                    "metadata": {"name": p["metadata"]["name"], "namespace": p["metadata"]["namespace"],
                                 "labels": p["metadata"]["labels"], "creationTimestamp": s["timestamp"]},
                    "timestamp": s["timestamp"],
                    "window": window(s["window_seconds"].as_f64().unwrap_or(0.0)),
                    "containers": containers,
                }));
            }
        }
        if let Some(name) = one {
            let mut item = items.pop().ok_or_else(|| {
                let mut e = ApiError::service_unavailable(format!(
                    "podmetrics.metrics.k8s.io \"{}/{name}\" not found",
                    ns.unwrap_or("")
                ));
                e.code = 404;
                e.reason = "NotFound";
                e
            })?;
            item["kind"] = json!("PodMetrics");
            item["apiVersion"] = json!(format!("{GROUP}/{VERSION}"));
            return Ok(Reply::json(StatusCode::OK, &item));
        }
        let list = json!({"kind": "PodMetricsList", "apiVersion": format!("{GROUP}/{VERSION}"),
                          "metadata": {}, "items": items});
        Ok(Reply::json(StatusCode::OK, &list))
    }
}

//! The HorizontalPodAutoscaler controller (autoscaling/v2, Resource metrics): every 15 s it
//! reads the target's scale, its pods' usage from metrics.k8s.io and their requests, and sets
//! the replicas to ceil(current × usage / target), within minReplicas..maxReplicas, ignoring
//! changes within 10% of the target. Scaling up is limited to doubling or +4 pods per period;
//! scaling down follows the highest recommendation of the stabilization window (300 s unless
//! `behavior.scaleDown.stabilizationWindowSeconds` says otherwise), as in Kubernetes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::k8s_openapi::api::autoscaling::v2::{HorizontalPodAutoscaler, MetricSpec};
use api::k8s_openapi::api::core::v1::Pod;
use api::quantity::Quantity;
use client::{Client, ClientError, ListParams, encode};
use serde_json::{Value, json};
use tracing::info;

use crate::harness::{Outcome, Queue, Reconciler};
use crate::mirror::{Mirror, key_of};
use crate::owned;

const COMPONENT: &str = "horizontal-pod-autoscaler";
const PERIOD: Duration = Duration::from_secs(15);
const TOLERANCE: f64 = 0.1;
const DEFAULT_DOWN_WINDOW: i32 = 300;

pub struct HpaController {
    client: Client,
    hpas: Arc<Mirror<HorizontalPodAutoscaler>>,
    queue: Queue,
    /// Per HPA: recent recommendations, for the stabilization windows.
    history: Mutex<HashMap<String, VecDeque<(Instant, i32)>>>,
}

/// The usage of one metric over the pods, and the replica count it recommends.
struct Measured {
    recommended: i32,
    current: Value,
    reason: String,
}

fn requests_of(p: &Pod, resource: &str) -> Option<Quantity> {
    let spec = p.spec.as_ref()?;
    let mut total = Quantity::ZERO;
    for c in &spec.containers {
        let q = c.resources.as_ref()?.requests.as_ref()?.get(resource)?;
        total = total.checked_add(Quantity::parse(&q.0).ok()?)?;
    }
    Some(total)
}

impl HpaController {
    pub fn new(client: Client, hpas: Arc<Mirror<HorizontalPodAutoscaler>>) -> HpaController {
        let queue = Queue::new(COMPONENT);
        let q = queue.clone();
        hpas.on_change(move |old, new| {
            // Status writes of our own need no new pass.
            let spec_changed = match (old, new) {
                (Some(a), Some(b)) => a.spec != b.spec,
                (None, Some(_)) => true,
                _ => false,
            };
            if let (true, Some(h)) = (spec_changed, new) {
                q.add(&key_of(&h.metadata));
            }
        });
        HpaController {
            client,
            hpas,
            queue,
            history: Mutex::default(),
        }
    }

    /// The queue its change handlers feed.
    pub fn queue(&self) -> Queue {
        self.queue.clone()
    }

    async fn reconcile(&self, key: &str) -> Result<(), ClientError> {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let Some(hpa) = self.hpas.get(ns, name) else {
            self.history
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(key);
            return Ok(());
        };
        let spec = hpa.spec.clone().unwrap_or_default();
        let target = &spec.scale_target_ref;
        let group = target
            .api_version
            .as_deref()
            .map(|av| av.split_once('/').map_or("", |(g, _)| g))
            .unwrap_or("apps");
        let Some(r) = api::resources::all()
            .iter()
            .find(|r| r.kind == target.kind && r.group == group && r.scale)
        else {
            return self
                .status(&hpa, None, None, Vec::new(), ("ScalingActive", "False", "FailedGetScale",
                    format!("the HPA controller was unable to get the target's current scale: no scale subresource for {}", target.kind)))
                .await;
        };
        let scale_path = format!(
            "{}/{}/scale",
            client::collection_path(r, Some(ns)),
            target.name
        );
        let scale = match self
            .client
            .request_json(http::Method::GET, &scale_path, None)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                return self
                    .status(&hpa, None, None, Vec::new(), ("AbleToScale", "False", "FailedGetScale",
                        format!("the HPA controller was unable to get the target's current scale: {e}")))
                    .await;
            }
        };
        let current = scale["spec"]["replicas"].as_i64().unwrap_or(0) as i32;
        let selector = scale["status"]["selector"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if current == 0 {
            return self
                .status(
                    &hpa,
                    Some(current),
                    Some(0),
                    Vec::new(),
                    (
                        "ScalingActive",
                        "False",
                        "ScalingDisabled",
                        "scaling is disabled since the replica count of the target is zero".into(),
                    ),
                )
                .await;
        }
        let params = ListParams {
            label_selector: Some(selector.clone()),
            ..Default::default()
        };
        let (pods, _) = self.client.list::<Pod>(Some(ns), &params).await?;
        let pods: BTreeMap<String, Pod> = pods
            .into_iter()
            .filter(|p| owned::is_active(p) && owned::phase(p) == "Running")
            .map(|p| (p.metadata.name.clone().unwrap_or_default(), p))
            .collect();
        let path = format!(
            "/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods?labelSelector={}",
            encode(&selector)
        );
        let usage = self
            .client
            .request_json(http::Method::GET, &path, None)
            .await;
        let mut measured = Vec::new();
        let mut failure = None;
        for m in spec.metrics.iter().flatten() {
            match self.measure(m, &pods, usage.as_ref().ok(), current) {
                Ok(x) => measured.push(x),
                Err(why) => failure = Some(why),
            }
        }
        if measured.is_empty() {
            let why = failure.unwrap_or_else(|| "no metrics to act on".into());
            owned::event(
                &self.client,
                COMPONENT,
                &*hpa,
                "Warning",
                "FailedGetResourceMetric",
                &why,
            );
            return self
                .status(
                    &hpa,
                    Some(current),
                    Some(current),
                    Vec::new(),
                    ("ScalingActive", "False", "FailedGetResourceMetric", why),
                )
                .await;
        }
        let best = measured
            .iter()
            .max_by_key(|m| m.recommended)
            .map(|m| (m.recommended, m.reason.clone()))
            .unwrap_or((current, String::new()));
        let min = spec.min_replicas.unwrap_or(1);
        let max = spec.max_replicas;
        let mut desired = best.0.clamp(min, max);
        // Stabilize: scale down only to the highest recommendation of the window.
        let window = spec
            .behavior
            .as_ref()
            .and_then(|b| b.scale_down.as_ref())
            .and_then(|d| d.stabilization_window_seconds)
            .unwrap_or(DEFAULT_DOWN_WINDOW);
        {
            let mut hist = self.history.lock().unwrap_or_else(|p| p.into_inner());
            let h = hist.entry(key.to_string()).or_default();
            let now = Instant::now();
            h.push_back((now, desired));
            let keep = Duration::from_secs(u64::try_from(window.max(0)).unwrap_or(0));
            while h
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > keep)
            {
                h.pop_front();
            }
            if desired < current {
                let highest = h.iter().map(|(_, d)| *d).max().unwrap_or(desired);
                desired = highest.min(current);
            }
        }
        // Scale up at most to double, or four more, per period.
        let limit = (current * 2).max(current + 4);
        desired = desired.min(limit).clamp(min, max);
        let currents: Vec<Value> = measured.iter().map(|m| m.current.clone()).collect();
        if desired != current {
            let patch = json!({"spec": {"replicas": desired}});
            self.client
                .request(
                    http::Method::PATCH,
                    &scale_path,
                    "application/merge-patch+json",
                    bytes::Bytes::from(patch.to_string()),
                )
                .await?;
            info!(hpa = %key, from = current, to = desired, "rescaled");
            let reason = if desired > current {
                format!("{} above target", best.1)
            } else {
                "All metrics below target".to_string()
            };
            owned::event(
                &self.client,
                COMPONENT,
                &*hpa,
                "Normal",
                "SuccessfulRescale",
                &format!("New size: {desired}; reason: {reason}"),
            );
            let mut status = self.status_value(
                &hpa,
                Some(current),
                Some(desired),
                currents,
                (
                    "AbleToScale",
                    "True",
                    "SucceededRescale",
                    format!("the HPA controller was able to update the target scale to {desired}"),
                ),
            );
            status["lastScaleTime"] = json!(owned::now_time());
            return self.put(&hpa, status).await;
        }
        self.status(
            &hpa,
            Some(current),
            Some(desired),
            currents,
            (
                "ScalingActive",
                "True",
                "ValidMetricFound",
                format!(
                    "the HPA was able to successfully calculate a replica count from {}",
                    best.1
                ),
            ),
        )
        .await
    }

    /// One Resource metric: its current value and the replicas it recommends.
    fn measure(
        &self,
        m: &MetricSpec,
        pods: &BTreeMap<String, Pod>,
        usage: Option<&Value>,
        current: i32,
    ) -> Result<Measured, String> {
        let Some(res) = m.resource.as_ref().filter(|_| m.type_ == "Resource") else {
            return Err(format!("metrics of type {} are not supported", m.type_));
        };
        let name = res.name.as_str();
        let usage = usage.ok_or_else(|| {
            format!("failed to get {name} utilization: unable to get metrics for resource {name}: no metrics returned from resource metrics API")
        })?;
        let mut used = 0f64;
        let mut requested = 0f64;
        let mut counted = 0;
        for item in usage["items"].as_array().into_iter().flatten() {
            let pod_name = item["metadata"]["name"].as_str().unwrap_or("");
            let Some(p) = pods.get(pod_name) else {
                continue;
            };
            let mut u = 0f64;
            for c in item["containers"].as_array().into_iter().flatten() {
                let q = Quantity::parse(c["usage"][name].as_str().unwrap_or("0"))
                    .unwrap_or(Quantity::ZERO);
                u += q.nanos() as f64 / 1e9;
            }
            used += u;
            counted += 1;
            if let Some(r) = requests_of(p, name) {
                requested += r.nanos() as f64 / 1e9;
            } else if res.target.type_ == "Utilization" {
                return Err(format!(
                    "failed to get {name} utilization: missing request for {name} in container of pod {pod_name}"
                ));
            }
        }
        if counted == 0 {
            return Err(format!(
                "failed to get {name} utilization: unable to get metrics for resource {name}: no metrics returned from resource metrics API"
            ));
        }
        let target = &res.target;
        match target.type_.as_str() {
            "Utilization" => {
                let want = f64::from(target.average_utilization.unwrap_or(80));
                let util = if requested > 0.0 {
                    used * 100.0 / requested
                } else {
                    0.0
                };
                let ratio = util / want;
                let recommended = if (ratio - 1.0).abs() <= TOLERANCE {
                    current
                } else {
                    (ratio * counted as f64).ceil() as i32
                };
                let avg = used / counted as f64;
                Ok(Measured {
                    recommended,
                    current: json!({"type": "Resource", "resource": {"name": name, "current": {
                        "averageUtilization": util.round() as i64,
                        "averageValue": quantity_string(name, avg)}}}),
                    reason: format!("{name} resource utilization (percentage of request)"),
                })
            }
            _ => {
                let want = target
                    .average_value
                    .as_ref()
                    .and_then(|q| Quantity::parse(&q.0).ok())
                    .map(|q| q.nanos() as f64 / 1e9)
                    .filter(|w| *w > 0.0)
                    .ok_or_else(|| format!("invalid target for {name}"))?;
                let avg = used / counted as f64;
                let ratio = avg / want;
                let recommended = if (ratio - 1.0).abs() <= TOLERANCE {
                    current
                } else {
                    (used / want).ceil() as i32
                };
                Ok(Measured {
                    recommended,
                    current: json!({"type": "Resource", "resource": {"name": name, "current": {
                        "averageValue": quantity_string(name, avg)}}}),
                    reason: format!("{name} resource"),
                })
            }
        }
    }

    fn status_value(
        &self,
        hpa: &HorizontalPodAutoscaler,
        current: Option<i32>,
        desired: Option<i32>,
        metrics: Vec<Value>,
        condition: (&str, &str, &str, String),
    ) -> Value {
        let old = hpa.status.clone().unwrap_or_default();
        let mut conditions: Vec<Value> = old
            .conditions
            .iter()
            .flatten()
            .filter_map(|c| serde_json::to_value(c).ok())
            .collect();
        let (ty, status, reason, message) = condition;
        let now = owned::now_time();
        match conditions.iter_mut().find(|c| c["type"] == ty) {
            Some(c) => {
                if c["status"] != status {
                    c["lastTransitionTime"] = json!(now);
                }
                c["status"] = json!(status);
                c["reason"] = json!(reason);
                c["message"] = json!(message);
            }
            None => conditions.push(json!({"type": ty, "status": status, "reason": reason,
                                            "message": message, "lastTransitionTime": now})),
        }
        let mut v = json!({
            "observedGeneration": hpa.metadata.generation,
            "currentReplicas": current.or(old.current_replicas).unwrap_or(0),
            "desiredReplicas": desired.unwrap_or(old.desired_replicas),
            "conditions": conditions,
        });
        if !metrics.is_empty() {
            v["currentMetrics"] = json!(metrics);
        }
        if let Some(t) = old.last_scale_time {
            v["lastScaleTime"] = json!(t);
        }
        v
    }

    async fn status(
        &self,
        hpa: &HorizontalPodAutoscaler,
        current: Option<i32>,
        desired: Option<i32>,
        metrics: Vec<Value>,
        condition: (&str, &str, &str, String),
    ) -> Result<(), ClientError> {
        let v = self.status_value(hpa, current, desired, metrics, condition);
        self.put(hpa, v).await
    }

    async fn put(&self, hpa: &HorizontalPodAutoscaler, status: Value) -> Result<(), ClientError> {
        let old = serde_json::to_value(hpa.status.clone().unwrap_or_default()).unwrap_or_default();
        if old == status {
            return Ok(());
        }
        let ns = hpa.metadata.namespace.as_deref();
        let name = hpa.metadata.name.as_deref().unwrap_or("");
        match self
            .client
            .put_status::<HorizontalPodAutoscaler>(ns, name, &status)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A usage as a quantity string: millicores for CPU, bytes otherwise.
fn quantity_string(resource: &str, amount: f64) -> String {
    if resource == "cpu" {
        format!("{}m", (amount * 1000.0).round() as i64)
    } else {
        format!("{}", amount.round() as i64)
    }
}

#[async_trait::async_trait]
impl Reconciler for HpaController {
    fn name(&self) -> &'static str {
        COMPONENT
    }

    async fn ready(&self) {
        self.hpas.synced().await;
    }

    /// Every autoscaler is looked at again each period, as Kubernetes' sync period.
    async fn reconcile(&self, key: &str) -> Outcome {
        HpaController::reconcile(self, key).await?;
        Ok(self.hpas.get_key(key).map(|_| PERIOD))
    }
}

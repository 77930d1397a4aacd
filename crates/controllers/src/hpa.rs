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
use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
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
        let (target, scale_path) = self.observe(&hpa, ns).await?;
        let window = self.window(key, &hpa);
        let plan = plan(&hpa, &target, &window, owned::now_time());
        if let Some(to) = plan.scale_to {
            let patch = json!({"spec": {"replicas": to}});
            self.client
                .request(
                    http::Method::PATCH,
                    &scale_path,
                    "application/merge-patch+json",
                    bytes::Bytes::from(patch.to_string()),
                )
                .await?;
            info!(hpa = %key, to, "rescaled");
        }
        if let Some(r) = plan.recommendation {
            self.history
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(key.to_string())
                .or_default()
                .push_back((Instant::now(), r));
        }
        for (kind, reason, message) in &plan.events {
            owned::event(&self.client, COMPONENT, &*hpa, kind, reason, message);
        }
        match plan.status {
            Some(status) => self.put(&hpa, status).await,
            None => Ok(()),
        }
    }

    /// Read what the autoscaler acts on: the target's scale, its running pods and their usage.
    /// Also returns the scale subresource's path.
    async fn observe(
        &self,
        hpa: &HorizontalPodAutoscaler,
        ns: &str,
    ) -> Result<(Target, String), ClientError> {
        let spec = hpa.spec.clone().unwrap_or_default();
        let target = &spec.scale_target_ref;
        let group = target
            .api_version
            .as_deref()
            .map(|av| av.split_once('/').map_or("", |(g, _)| g))
            .unwrap_or("apps");
        let builtin = api::resources::all()
            .iter()
            .find(|r| r.kind == target.kind && r.group == group && r.scale);
        let scale_path = match builtin {
            Some(r) => format!(
                "{}/{}/scale",
                client::collection_path(r, Some(ns)),
                target.name
            ),
            // Another kind with a scale subresource (a custom one), found through discovery.
            None => {
                let api_version = target.api_version.as_deref().unwrap_or("apps/v1");
                match crate::discovered::scale_path(
                    &self.client,
                    api_version,
                    &target.kind,
                    ns,
                    &target.name,
                )
                .await?
                {
                    Some(p) => p,
                    None => return Ok((Target::NoScale, String::new())),
                }
            }
        };
        let scale = match self
            .client
            .request_json(http::Method::GET, &scale_path, None)
            .await
        {
            Ok(s) => s,
            Err(e) => return Ok((Target::Unreadable(e.to_string()), scale_path)),
        };
        let replicas = scale["spec"]["replicas"].as_i64().unwrap_or(0) as i32;
        if replicas == 0 {
            return Ok((
                Target::Scale {
                    replicas,
                    pods: BTreeMap::new(),
                    usage: None,
                },
                scale_path,
            ));
        }
        let selector = scale["status"]["selector"].as_str().unwrap_or("");
        let params = ListParams {
            label_selector: Some(selector.to_string()),
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
            encode(selector)
        );
        let usage = self
            .client
            .request_json(http::Method::GET, &path, None)
            .await
            .ok();
        Ok((
            Target::Scale {
                replicas,
                pods,
                usage,
            },
            scale_path,
        ))
    }

    /// The recommendations still inside the autoscaler's scale-down stabilization window.
    fn window(&self, key: &str, hpa: &HorizontalPodAutoscaler) -> Vec<i32> {
        let keep = Duration::from_secs(u64::try_from(down_window(hpa)).unwrap_or(0));
        let mut hist = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let h = hist.entry(key.to_string()).or_default();
        let now = Instant::now();
        while h
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > keep)
        {
            h.pop_front();
        }
        h.iter().map(|(_, d)| *d).collect()
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

/// What the autoscaler saw of its target.
pub(crate) enum Target {
    /// The kind has no scale subresource.
    NoScale,
    /// The scale could not be read (why).
    Unreadable(String),
    /// The target's replicas, its running pods by name, and their usage from metrics.k8s.io
    /// (none if that could not be read).
    Scale {
        replicas: i32,
        pods: BTreeMap<String, Pod>,
        usage: Option<Value>,
    },
}

/// What the controller intends for one autoscaler.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Plan {
    /// Set the target's replicas to this.
    scale_to: Option<i32>,
    /// This pass's recommendation, remembered for the stabilization window.
    recommendation: Option<i32>,
    /// Events about the autoscaler: type, reason, message.
    events: Vec<(&'static str, String, String)>,
    /// The status to write (unless the stored one already says it).
    status: Option<Value>,
}

fn down_window(hpa: &HorizontalPodAutoscaler) -> i32 {
    hpa.spec
        .as_ref()
        .and_then(|s| s.behavior.as_ref())
        .and_then(|b| b.scale_down.as_ref())
        .and_then(|d| d.stabilization_window_seconds)
        .unwrap_or(DEFAULT_DOWN_WINDOW)
        .max(0)
}

/// The autoscaler's decision for `hpa`, given its `target` and the recommendations of its
/// stabilization `window` (older passes), at `now`.
pub(crate) fn plan(
    hpa: &HorizontalPodAutoscaler,
    target: &Target,
    window: &[i32],
    now: Time,
) -> Plan {
    let spec = hpa.spec.clone().unwrap_or_default();
    let status = |current, desired, metrics, condition| {
        Some(status_value(
            hpa, current, desired, metrics, condition, &now,
        ))
    };
    let (current, pods, usage) = match target {
        Target::NoScale => {
            let kind = &spec.scale_target_ref.kind;
            return Plan {
                status: status(
                    None,
                    None,
                    Vec::new(),
                    (
                        "ScalingActive",
                        "False",
                        "FailedGetScale",
                        format!(
                            "the HPA controller was unable to get the target's current scale: no scale subresource for {kind}"
                        ),
                    ),
                ),
                ..Default::default()
            };
        }
        Target::Unreadable(e) => {
            return Plan {
                status: status(
                    None,
                    None,
                    Vec::new(),
                    (
                        "AbleToScale",
                        "False",
                        "FailedGetScale",
                        format!(
                            "the HPA controller was unable to get the target's current scale: {e}"
                        ),
                    ),
                ),
                ..Default::default()
            };
        }
        Target::Scale { replicas: 0, .. } => {
            return Plan {
                status: status(
                    Some(0),
                    Some(0),
                    Vec::new(),
                    (
                        "ScalingActive",
                        "False",
                        "ScalingDisabled",
                        "scaling is disabled since the replica count of the target is zero".into(),
                    ),
                ),
                ..Default::default()
            };
        }
        Target::Scale {
            replicas,
            pods,
            usage,
        } => (*replicas, pods, usage.as_ref()),
    };
    let mut measured = Vec::new();
    let mut failure = None;
    for m in spec.metrics.iter().flatten() {
        match measure(m, pods, usage, current) {
            Ok(x) => measured.push(x),
            Err(why) => failure = Some(why),
        }
    }
    if measured.is_empty() {
        let why = failure.unwrap_or_else(|| "no metrics to act on".into());
        return Plan {
            events: vec![("Warning", "FailedGetResourceMetric".into(), why.clone())],
            status: status(
                Some(current),
                Some(current),
                Vec::new(),
                ("ScalingActive", "False", "FailedGetResourceMetric", why),
            ),
            ..Default::default()
        };
    }
    let (recommended, reason) = measured
        .iter()
        .max_by_key(|m| m.recommended)
        .map(|m| (m.recommended, m.reason.clone()))
        .unwrap_or((current, String::new()));
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    let recommendation = recommended.clamp(min, max);
    let mut desired = recommendation;
    // Stabilize: scale down only to the highest recommendation of the window.
    if desired < current {
        let highest = window
            .iter()
            .copied()
            .chain([desired])
            .max()
            .unwrap_or(desired);
        desired = highest.min(current);
    }
    // Scale up at most to double, or four more, per period.
    let limit = (current * 2).max(current + 4);
    desired = desired.min(limit).clamp(min, max);
    let currents: Vec<Value> = measured.iter().map(|m| m.current.clone()).collect();
    let mut plan = Plan {
        recommendation: Some(recommendation),
        ..Default::default()
    };
    if desired != current {
        let why = if desired > current {
            format!("{reason} above target")
        } else {
            "All metrics below target".to_string()
        };
        plan.scale_to = Some(desired);
        plan.events.push((
            "Normal",
            "SuccessfulRescale".into(),
            format!("New size: {desired}; reason: {why}"),
        ));
        let mut s = status_value(
            hpa,
            Some(current),
            Some(desired),
            currents,
            (
                "AbleToScale",
                "True",
                "SucceededRescale",
                format!("the HPA controller was able to update the target scale to {desired}"),
            ),
            &now,
        );
        s["lastScaleTime"] = json!(now);
        plan.status = Some(s);
        return plan;
    }
    plan.status = status(
        Some(current),
        Some(desired),
        currents,
        (
            "ScalingActive",
            "True",
            "ValidMetricFound",
            format!("the HPA was able to successfully calculate a replica count from {reason}"),
        ),
    );
    plan
}

/// One Resource metric: its current value and the replicas it recommends.
fn measure(
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
            let q =
                Quantity::parse(c["usage"][name].as_str().unwrap_or("0")).unwrap_or(Quantity::ZERO);
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
    hpa: &HorizontalPodAutoscaler,
    current: Option<i32>,
    desired: Option<i32>,
    metrics: Vec<Value>,
    condition: (&str, &str, &str, String),
    now: &Time,
) -> Value {
    let old = hpa.status.clone().unwrap_or_default();
    let mut conditions: Vec<Value> = old
        .conditions
        .iter()
        .flatten()
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect();
    let (ty, status, reason, message) = condition;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hpa(extra: Value) -> HorizontalPodAutoscaler {
        let mut spec = json!({
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 1, "maxReplicas": 10,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 50}}}],
        });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        serde_json::from_value(
            json!({"metadata": {"name": "h", "namespace": "ns", "generation": 1},
                                      "spec": spec}),
        )
        .unwrap()
    }

    fn now() -> Time {
        Time("2026-01-01T12:00:00Z".parse().unwrap())
    }

    /// `n` running pods requesting 100m of CPU, each using `millis`.
    fn target(n: usize, millis: u32) -> Target {
        let names: Vec<String> = (0..n).map(|i| format!("web-{i}")).collect();
        let pods = names
            .iter()
            .map(|name| {
                let p: Pod = serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "100m"}}}]},
                    "status": {"phase": "Running"},
                }))
                .unwrap();
                (name.clone(), p)
            })
            .collect();
        let items: Vec<Value> = names
            .iter()
            .map(|name| json!({"metadata": {"name": name},
                               "containers": [{"name": "c", "usage": {"cpu": format!("{millis}m")}}]}))
            .collect();
        Target::Scale {
            replicas: n as i32,
            pods,
            usage: Some(json!({"items": items})),
        }
    }

    fn condition(p: &Plan, ty: &str) -> (String, String) {
        let status = p.status.as_ref().unwrap();
        let c = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == ty)
            .unwrap();
        (
            c["status"].as_str().unwrap().into(),
            c["reason"].as_str().unwrap().into(),
        )
    }

    #[test]
    fn busy_pods_scale_up_by_the_usage_ratio_at_most_doubling_or_four_more() {
        // 2 pods at 150% of a 50% target: ceil(2 x 3) = 6, within the +4 limit.
        let p = plan(&hpa(json!({})), &target(2, 150), &[], now());
        assert_eq!(p.scale_to, Some(6));
        assert_eq!(p.recommendation, Some(6));
        assert_eq!(
            p.events,
            [(
                "Normal",
                "SuccessfulRescale".into(),
                "New size: 6; reason: cpu resource utilization (percentage of request) above target"
                    .into()
            )]
        );
        let status = p.status.as_ref().unwrap();
        assert_eq!(status["desiredReplicas"], 6);
        assert_eq!(status["lastScaleTime"], "2026-01-01T12:00:00Z");
        assert_eq!(
            status["currentMetrics"][0]["resource"]["current"]["averageUtilization"],
            150
        );
        // 1 pod at 500%: ten wanted, but one step goes only to 1 + 4.
        assert_eq!(
            plan(&hpa(json!({})), &target(1, 500), &[], now()).scale_to,
            Some(5)
        );
        // Never above maxReplicas.
        let small = hpa(json!({"maxReplicas": 3}));
        assert_eq!(plan(&small, &target(2, 150), &[], now()).scale_to, Some(3));
    }

    #[test]
    fn usage_within_ten_percent_of_the_target_changes_nothing() {
        let p = plan(&hpa(json!({})), &target(4, 54), &[], now());
        assert_eq!(p.scale_to, None);
        assert_eq!(
            condition(&p, "ScalingActive"),
            ("True".into(), "ValidMetricFound".into())
        );
    }

    #[test]
    fn scaling_down_waits_for_the_highest_recommendation_of_the_window() {
        // 4 pods at 25%: 2 recommended, but 4 was recommended within the window.
        let p = plan(&hpa(json!({})), &target(4, 25), &[4, 3], now());
        assert_eq!(p.scale_to, None);
        assert_eq!(p.recommendation, Some(2));
        let p = plan(&hpa(json!({})), &target(4, 25), &[3, 2], now());
        assert_eq!(p.scale_to, Some(3));
        let p = plan(&hpa(json!({})), &target(4, 25), &[], now());
        assert_eq!(p.scale_to, Some(2));
        assert_eq!(
            p.events[0].2,
            "New size: 2; reason: All metrics below target"
        );
    }

    #[test]
    fn targets_it_cannot_read_or_measure_are_reported_in_conditions() {
        let p = plan(&hpa(json!({})), &Target::NoScale, &[], now());
        assert_eq!(
            condition(&p, "ScalingActive"),
            ("False".into(), "FailedGetScale".into())
        );
        let p = plan(
            &hpa(json!({})),
            &Target::Unreadable("not found".into()),
            &[],
            now(),
        );
        assert_eq!(
            condition(&p, "AbleToScale"),
            ("False".into(), "FailedGetScale".into())
        );
        let zero = Target::Scale {
            replicas: 0,
            pods: BTreeMap::new(),
            usage: None,
        };
        let p = plan(&hpa(json!({})), &zero, &[], now());
        assert_eq!(
            condition(&p, "ScalingActive"),
            ("False".into(), "ScalingDisabled".into())
        );
        assert_eq!(p.scale_to, None);
        let Target::Scale { pods, .. } = target(2, 10) else {
            unreachable!()
        };
        let no_metrics = Target::Scale {
            replicas: 2,
            pods,
            usage: None,
        };
        let p = plan(&hpa(json!({})), &no_metrics, &[], now());
        assert_eq!(
            condition(&p, "ScalingActive"),
            ("False".into(), "FailedGetResourceMetric".into())
        );
        assert_eq!(p.events[0].1, "FailedGetResourceMetric");
        assert_eq!(p.scale_to, None);
    }
}

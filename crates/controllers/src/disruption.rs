//! The disruption controller: keeps each PodDisruptionBudget's status, which the eviction
//! subresource spends. Expected pods are what the pods' controllers ask for (a ReplicaSet's or
//! StatefulSet's replicas; pods without such a controller count as themselves); healthy pods
//! are the ready ones; `disruptionsAllowed` is how many healthy pods may go now, less evictions
//! the API server granted that have not removed their pod yet.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use api::k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use api::k8s_openapi::api::core::v1::Pod;
use api::k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use api::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use api::selector::LabelSelectorExpr;
use client::{Client, ClientError};

use crate::deployment::resolve;
use crate::harness::{Outcome, Queue, Reconciler};
use crate::mirror::{Mirror, key_of};
use crate::owned::{self, controller_of};

/// A granted eviction whose pod is still there after this long is presumed to have failed.
const DISRUPTION_TIMEOUT: Duration = Duration::from_secs(120);

pub struct DisruptionController {
    client: Client,
    budgets: Arc<Mirror<PodDisruptionBudget>>,
    pods: Arc<Mirror<Pod>>,
    sets: Arc<Mirror<ReplicaSet>>,
    stateful: Arc<Mirror<StatefulSet>>,
    queue: Queue,
}

impl DisruptionController {
    pub fn new(
        client: Client,
        budgets: Arc<Mirror<PodDisruptionBudget>>,
        pods: Arc<Mirror<Pod>>,
        sets: Arc<Mirror<ReplicaSet>>,
        stateful: Arc<Mirror<StatefulSet>>,
    ) -> DisruptionController {
        let queue = Queue::new("disruption-controller");
        let q = queue.clone();
        budgets.on_change(move |_, new| {
            if let Some(b) = new {
                q.add(&key_of(&b.metadata));
            }
        });
        let q = queue.clone();
        let all = budgets.clone();
        pods.on_change(move |old, new| {
            let Some(p) = new.or(old) else { return };
            let ns = p.metadata.namespace.as_deref().unwrap_or("");
            for b in all.in_namespace(ns) {
                q.add(&key_of(&b.metadata));
            }
        });
        DisruptionController {
            client,
            budgets,
            pods,
            sets,
            stateful,
            queue,
        }
    }

    /// The queue its change handlers feed.
    pub fn queue(&self) -> Queue {
        self.queue.clone()
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ClientError> {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let Some(pdb) = self.budgets.get(ns, name) else {
            return Ok(None);
        };
        let spec = pdb.spec.clone().unwrap_or_default();
        let sel = LabelSelectorExpr::from_object(spec.selector.as_ref())
            .ok()
            .filter(|s| !s.is_everything());
        let pods: Vec<Arc<Pod>> = match &sel {
            Some(sel) => self
                .pods
                .in_namespace(ns)
                .into_iter()
                .filter(|p| sel.matches(&p.metadata.labels.clone().unwrap_or_default()))
                .filter(|p| p.metadata.deletion_timestamp.is_none() && !owned::is_terminal(p))
                .collect(),
            None => Vec::new(),
        };
        let healthy = pods.iter().filter(|p| owned::is_ready(p)).count() as i32;
        // What the pods' controllers want.
        let mut seen = HashSet::new();
        let mut from_controllers = 0;
        for p in &pods {
            match controller_of(&p.metadata) {
                Some(r) if r.kind == "ReplicaSet" || r.kind == "StatefulSet" => {
                    if seen.insert((r.kind.clone(), r.name.clone())) {
                        let want = if r.kind == "ReplicaSet" {
                            self.sets
                                .get(ns, &r.name)
                                .and_then(|rs| rs.spec.as_ref()?.replicas)
                        } else {
                            self.stateful
                                .get(ns, &r.name)
                                .and_then(|s| s.spec.as_ref()?.replicas)
                        };
                        from_controllers += want.unwrap_or(1);
                    }
                }
                // Any other controller with a scale subresource (a custom kind, most often)
                // says through it how many pods it wants.
                Some(r) => {
                    if seen.insert((r.kind.clone(), r.name.clone())) {
                        let path = crate::discovered::scale_path(
                            &self.client,
                            &r.api_version,
                            &r.kind,
                            ns,
                            &r.name,
                        )
                        .await?;
                        let want = match path {
                            Some(p) => self
                                .client
                                .request_json(http::Method::GET, &p, None)
                                .await
                                .ok()
                                .and_then(|s| s["spec"]["replicas"].as_i64()),
                            None => None,
                        };
                        from_controllers += want.map_or(1, |w| w as i32);
                    }
                }
                None => from_controllers += 1,
            }
        }
        let (expected, desired) = match (&spec.min_available, &spec.max_unavailable) {
            (Some(IntOrString::Int(n)), _) => (pods.len() as i32, *n),
            (Some(pct @ IntOrString::String(_)), _) => {
                (from_controllers, resolve(Some(pct), from_controllers, true))
            }
            (None, Some(max)) => {
                let unavailable = resolve(Some(max), from_controllers, true);
                (from_controllers, (from_controllers - unavailable).max(0))
            }
            (None, None) => (pods.len() as i32, pods.len() as i32),
        };
        // Evictions granted whose pods are not gone yet still count against the budget.
        let now = jiff::Timestamp::now();
        let old = pdb.status.clone().unwrap_or_default();
        let mut disrupted: BTreeMap<String, Time> = BTreeMap::new();
        let mut recheck = None;
        for (pod, at) in old.disrupted_pods.iter().flatten() {
            let live = pods.iter().any(|p| p.metadata.name.as_deref() == Some(pod));
            let age = (now - at.0).total(jiff::Unit::Second).unwrap_or(0.0);
            if live && age < DISRUPTION_TIMEOUT.as_secs_f64() {
                disrupted.insert(pod.clone(), at.clone());
                recheck = Some(DISRUPTION_TIMEOUT);
            }
        }
        let allowed = (healthy - desired - disrupted.len() as i32).max(0);
        let mut conditions = old.conditions.clone().unwrap_or_default();
        let (status, reason, message) = if allowed > 0 {
            ("True", "SufficientPods", "")
        } else {
            ("False", "InsufficientPods", "")
        };
        match conditions
            .iter_mut()
            .find(|c| c.type_ == "DisruptionAllowed")
        {
            Some(c) if c.status == status => {}
            Some(c) => {
                c.status = status.into();
                c.reason = reason.into();
                c.message = message.into();
                c.last_transition_time = owned::now_time();
                c.observed_generation = pdb.metadata.generation;
            }
            None => conditions.push(Condition {
                type_: "DisruptionAllowed".into(),
                status: status.into(),
                reason: reason.into(),
                message: message.into(),
                last_transition_time: owned::now_time(),
                observed_generation: pdb.metadata.generation,
            }),
        }
        let new = PodDisruptionBudgetStatus {
            current_healthy: healthy,
            desired_healthy: desired,
            expected_pods: expected,
            disruptions_allowed: allowed,
            disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
            observed_generation: pdb.metadata.generation,
            conditions: Some(conditions),
        };
        if new != old {
            let v = serde_json::to_value(&new).unwrap_or_default();
            match self
                .client
                .put_status::<PodDisruptionBudget>(Some(ns), name, &v)
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(recheck)
    }
}

#[async_trait::async_trait]
impl Reconciler for DisruptionController {
    fn name(&self) -> &'static str {
        "disruption-controller"
    }

    async fn ready(&self) {
        self.budgets.synced().await;
        self.pods.synced().await;
    }

    async fn reconcile(&self, key: &str) -> Outcome {
        DisruptionController::reconcile(self, key).await
    }
}

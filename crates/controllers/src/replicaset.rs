//! The ReplicaSet controller: keeps `spec.replicas` active pods that match the selector,
//! creating them from the template (in doubling batches, so a failing create costs one call,
//! not a hundred) and deleting the least valuable first. It adopts matching orphans, releases
//! pods whose labels no longer match, and is the one writer of the ReplicaSet's status.
//! ReplicationControllers, the older form of the same thing (a selector of plain labels), are
//! run by the same code (`Replicated` says how to read each), as Kubernetes runs them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use api::k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use api::k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use api::k8s_openapi::{Metadata, Resource};
use api::selector::LabelSelectorExpr;
use client::{Client, ClientError};
use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{debug, warn};

use crate::harness::{Outcome, Queue, Reconciler};
use crate::mirror::{Mirror, key_of};
use crate::owned::{self, Expectations, controlled_by, controller_of, controller_ref};

/// How soon a set whose pods could not be made (quota, admission) tries again.
const CREATE_RETRY: Duration = Duration::from_secs(5);
/// Pods created or deleted at once, at most.
const BURST: usize = 500;

/// A kind that keeps a number of pods from a template: ReplicaSets and ReplicationControllers.
pub trait Replicated:
    Resource
    + api::k8s_openapi::ListableResource
    + Metadata<Ty = ObjectMeta>
    + Clone
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The name events are reported under.
    const COMPONENT: &'static str;
    fn selector(&self) -> Option<LabelSelectorExpr>;
    fn replicas(&self) -> i32;
    fn template(&self) -> Option<PodTemplateSpec>;
    fn min_ready_seconds(&self) -> i32;
    /// The status, in the ReplicaSet's shape (the two have the same fields).
    fn status(&self) -> ReplicaSetStatus;
}

impl Replicated for ReplicaSet {
    const COMPONENT: &'static str = "replicaset-controller";

    fn selector(&self) -> Option<LabelSelectorExpr> {
        selector(self)
    }

    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }

    fn template(&self) -> Option<PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.clone())
    }

    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }

    fn status(&self) -> ReplicaSetStatus {
        self.status.clone().unwrap_or_default()
    }
}

impl Replicated for ReplicationController {
    const COMPONENT: &'static str = "replication-controller";

    fn selector(&self) -> Option<LabelSelectorExpr> {
        let labels = self
            .spec
            .as_ref()?
            .selector
            .clone()
            .filter(|s| !s.is_empty())?;
        let sel = LabelSelector {
            match_labels: Some(labels),
            match_expressions: None,
        };
        LabelSelectorExpr::from_object(Some(&sel)).ok()
    }

    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }

    fn template(&self) -> Option<PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.clone())
    }

    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }

    fn status(&self) -> ReplicaSetStatus {
        self.status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    }
}

pub struct ReplicaSetController<K: Replicated = ReplicaSet> {
    client: Client,
    pods: Arc<Mirror<Pod>>,
    sets: Arc<Mirror<K>>,
    expect: Expectations,
    queue: Queue,
}

impl<K: Replicated> ReplicaSetController<K> {
    /// Subscribe to the mirrors; call before they run.
    pub fn new(client: Client, pods: Arc<Mirror<Pod>>, sets: Arc<Mirror<K>>) -> Self {
        let queue = Queue::new(K::COMPONENT);
        let q = queue.clone();
        sets.on_change(move |_, new| {
            if let Some(rs) = new {
                q.add(&key_of(rs.metadata()));
            }
        });
        let q = queue.clone();
        let s = sets.clone();
        pods.on_change(move |old, new| {
            for p in [old, new].into_iter().flatten() {
                match controller_of(&p.metadata) {
                    Some(r) if r.kind == K::KIND => {
                        let ns = p.metadata.namespace.as_deref().unwrap_or("");
                        q.add(&format!("{ns}/{}", r.name));
                    }
                    Some(_) => {}
                    // An orphan: any set whose selector matches may adopt it.
                    None => {
                        let ns = p.metadata.namespace.as_deref().unwrap_or("");
                        let labels = p.metadata.labels.clone().unwrap_or_default();
                        for rs in s.in_namespace(ns) {
                            if rs.selector().is_some_and(|sel| sel.matches(&labels)) {
                                q.add(&key_of(rs.metadata()));
                            }
                        }
                    }
                }
            }
        });
        ReplicaSetController {
            client,
            pods,
            sets,
            expect: Expectations::default(),
            queue,
        }
    }

    /// The queue its change handlers feed.
    pub fn queue(&self) -> Queue {
        self.queue.clone()
    }

    /// Bring one ReplicaSet's pods to its spec; returns when to look again, if a pod is
    /// about to become available.
    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ClientError> {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let Some(rs) = self.sets.get(ns, name) else {
            self.expect.forget(key);
            return Ok(None);
        };
        let Some(sel) = rs.selector() else {
            return Ok(None);
        };
        let uid = rs.metadata().uid.as_deref();
        let mut mine = Vec::new();
        for p in self.pods.in_namespace(ns) {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            let matches = sel.matches(&labels);
            if controlled_by::<K>(&p.metadata, uid) {
                if matches {
                    mine.push(p);
                } else if rs.metadata().deletion_timestamp.is_none() {
                    self.release(&p, uid).await;
                }
            } else if controller_of(&p.metadata).is_none()
                && matches
                && owned::is_active(&p)
                && rs.metadata().deletion_timestamp.is_none()
                && let Some(p) = self.adopt(&*rs, &p).await
            {
                mine.push(Arc::new(p));
            }
        }
        let active: Vec<&Arc<Pod>> = mine.iter().filter(|p| owned::is_active(p)).collect();
        let mut failure = None;
        let seen = |n: &str| {
            self.pods
                .get(ns, n)
                .map(|p| p.metadata.deletion_timestamp.is_none())
        };
        if self.expect.satisfied(key, seen) && rs.metadata().deletion_timestamp.is_none() {
            let want = rs.replicas().max(0) as usize;
            if active.len() < want {
                failure = self.create(&*rs, key, want - active.len()).await;
            } else if active.len() > want {
                self.delete(key, ns, &active, active.len() - want).await;
            }
        }
        // A refused create (quota, admission) is tried again; the condition says why.
        let retry = failure.is_some().then_some(CREATE_RETRY);
        let recheck = self.update_status(&*rs, &active, failure).await?;
        Ok(match (recheck, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    async fn create(&self, rs: &K, key: &str, count: usize) -> Option<String> {
        let ns = rs.metadata().namespace.clone().unwrap_or_default();
        let name = rs.metadata().name.clone().unwrap_or_default();
        let template = rs.template().unwrap_or_default();
        let count = count.min(BURST);
        let mut done = 0;
        let mut batch = 1;
        while done < count {
            let n = batch.min(count - done);
            let pod = owned::pod_from_template(
                &template,
                &ns,
                Some(format!("{name}-")),
                None,
                controller_ref(rs),
            );
            let results: Vec<Result<Pod, ClientError>> = futures_util::stream::iter(0..n)
                .map(|_| self.client.create(Some(&ns), &pod))
                .buffer_unordered(n)
                .collect()
                .await;
            let mut made = Vec::new();
            let mut failed = None;
            for r in results {
                match r {
                    Ok(p) => made.push(p.metadata.name.unwrap_or_default()),
                    Err(e) => failed = Some(e),
                }
            }
            self.expect.expect(key, &made, &[]);
            if let Some(e) = failed {
                let message = format!("Error creating: {e}");
                owned::event(
                    &self.client,
                    K::COMPONENT,
                    rs,
                    "Warning",
                    "FailedCreate",
                    &message,
                );
                return Some(message);
            }
            for p in &made {
                let message = format!("Created pod: {p}");
                owned::event(
                    &self.client,
                    K::COMPONENT,
                    rs,
                    "Normal",
                    "SuccessfulCreate",
                    &message,
                );
            }
            done += n;
            batch *= 2;
        }
        None
    }

    async fn delete(&self, key: &str, ns: &str, active: &[&Arc<Pod>], count: usize) {
        let mut ranked: Vec<&Arc<Pod>> = active.to_vec();
        ranked.sort_by_key(|p| deletion_rank(p));
        let victims: Vec<String> = ranked
            .iter()
            .take(count.min(BURST))
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        self.expect.expect(key, &[], &victims);
        let results: Vec<(String, Result<(), ClientError>)> =
            futures_util::stream::iter(victims.clone())
                .map(|n| async move {
                    let r = self.client.delete::<Pod>(Some(ns), &n).await;
                    (n, r)
                })
                .buffer_unordered(BURST)
                .collect()
                .await;
        let Some(rs) = self.sets.get(ns, key.split_once('/').map_or(key, |x| x.1)) else {
            return;
        };
        for (n, r) in results {
            match r {
                Ok(()) | Err(ClientError::Api { code: 404, .. }) => {
                    owned::event(
                        &self.client,
                        K::COMPONENT,
                        &*rs,
                        "Normal",
                        "SuccessfulDelete",
                        &format!("Deleted pod: {n}"),
                    );
                }
                Err(e) => warn!(pod = %n, error = %e, "could not delete a surplus pod"),
            }
        }
    }

    async fn adopt(&self, rs: &K, p: &Pod) -> Option<Pod> {
        let ns = p.metadata.namespace.as_deref();
        let name = p.metadata.name.as_deref().unwrap_or("");
        let mut refs = p.metadata.owner_references.clone().unwrap_or_default();
        refs.push(controller_ref(rs));
        let patch = json!({"metadata": {"ownerReferences": refs,
                                        "uid": p.metadata.uid, "resourceVersion": p.metadata.resource_version}});
        match self.client.merge_patch::<Pod>(ns, name, &patch).await {
            Ok(p) => Some(p),
            Err(e) => {
                debug!(pod = name, error = %e, "could not adopt the pod");
                None
            }
        }
    }

    async fn release(&self, p: &Pod, uid: Option<&str>) {
        let ns = p.metadata.namespace.as_deref();
        let name = p.metadata.name.as_deref().unwrap_or("");
        let refs: Vec<_> = p
            .metadata
            .owner_references
            .iter()
            .flatten()
            .filter(|r| Some(r.uid.as_str()) != uid)
            .cloned()
            .collect();
        let patch = json!({"metadata": {"ownerReferences": refs,
                                        "resourceVersion": p.metadata.resource_version}});
        if let Err(e) = self.client.merge_patch::<Pod>(ns, name, &patch).await {
            debug!(pod = name, error = %e, "could not release the pod");
        }
    }

    async fn update_status(
        &self,
        rs: &K,
        active: &[&Arc<Pod>],
        failure: Option<String>,
    ) -> Result<Option<Duration>, ClientError> {
        let min_ready = rs.min_ready_seconds();
        let template_labels: BTreeMap<String, String> = rs
            .template()
            .and_then(|t| t.metadata)
            .and_then(|m| m.labels)
            .unwrap_or_default();
        let now = jiff::Timestamp::now();
        let mut ready = 0;
        let mut available = 0;
        let mut fully_labeled = 0;
        let mut recheck: Option<Duration> = None;
        for p in active {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            if template_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
            {
                fully_labeled += 1;
            }
            if owned::is_ready(p) {
                ready += 1;
            }
            match owned::availability(p, min_ready, now) {
                Ok(()) => available += 1,
                Err(Some(left)) => recheck = Some(recheck.map_or(left, |r| r.min(left))),
                Err(None) => {}
            }
        }
        let old = rs.status();
        let mut conditions: Vec<ReplicaSetCondition> = old
            .conditions
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.type_ != "ReplicaFailure")
            .collect();
        if let Some(message) = failure {
            let prev = old
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "ReplicaFailure")
                .cloned();
            conditions.push(ReplicaSetCondition {
                type_: "ReplicaFailure".into(),
                status: "True".into(),
                reason: Some("FailedCreate".into()),
                message: Some(message),
                last_transition_time: prev
                    .and_then(|c| c.last_transition_time)
                    .or_else(|| Some(owned::now_time())),
            });
        }
        let new = ReplicaSetStatus {
            replicas: active.len() as i32,
            fully_labeled_replicas: Some(fully_labeled),
            ready_replicas: Some(ready),
            available_replicas: Some(available),
            observed_generation: rs.metadata().generation,
            conditions: (!conditions.is_empty()).then_some(conditions),
            terminating_replicas: old.terminating_replicas,
        };
        if new != old {
            let ns = rs.metadata().namespace.as_deref();
            let name = rs.metadata().name.as_deref().unwrap_or("");
            let status = serde_json::to_value(&new).unwrap_or_default();
            match self.client.put_status::<K>(ns, name, &status).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(recheck)
    }
}

#[async_trait::async_trait]
impl<K: Replicated> Reconciler for ReplicaSetController<K> {
    fn name(&self) -> &'static str {
        K::COMPONENT
    }

    async fn ready(&self) {
        self.pods.synced().await;
        self.sets.synced().await;
    }

    async fn reconcile(&self, key: &str) -> Outcome {
        ReplicaSetController::reconcile(self, key).await
    }
}

/// The set's selector, if it parses (validation makes sure it does).
pub(crate) fn selector(rs: &ReplicaSet) -> Option<LabelSelectorExpr> {
    let sel = rs.spec.as_ref().map(|s| &s.selector);
    LabelSelectorExpr::from_object(sel)
        .ok()
        .filter(|s| !s.is_everything())
}

/// Which pods go first when there are too many, as Kubernetes orders them: not yet on a node,
/// then pending, then not ready, then ready for the shortest time, then most restarted, then
/// the youngest.
fn deletion_rank(p: &Pod) -> impl Ord {
    let assigned = p
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = match owned::phase(p) {
        "Pending" => 0,
        "Unknown" => 1,
        _ => 2,
    };
    let ready_since = owned::ready_since(p);
    let ready = ready_since.is_some();
    // Later ready time first: negate by sorting on Reverse.
    let since = std::cmp::Reverse(ready_since.flatten());
    let restarts: i32 = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum());
    let created = std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0));
    (
        assigned,
        phase,
        ready,
        since,
        std::cmp::Reverse(restarts),
        created,
    )
}

//! The DaemonSet controller: one pod on every node the template may run on (node selector,
//! required node affinity, taints against the template's tolerations plus those every daemon
//! pod gets), none elsewhere. Each pod is pinned to its node by node affinity on
//! `metadata.name`, and the scheduler binds it. A template change rolls out node by node
//! within maxUnavailable (RollingUpdate), or waits for pods to be deleted (OnDelete). Pods
//! carry the template's hash in `controller-revision-hash`. One writer of the status.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use api::k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use api::k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    Toleration,
};
use client::{Client, ClientError};
use futures_util::StreamExt;
use scheduler::{Demand, Snapshot};
use tracing::debug;

use crate::deployment::{resolve, template_hash};
use crate::harness::{Outcome, Queue, Reconciler};
use crate::mirror::{Mirror, key_of};
use crate::owned::{self, Expectations, controlled_by, controller_of, controller_ref};

const COMPONENT: &str = "daemonset-controller";
pub const REVISION_LABEL: &str = "controller-revision-hash";

pub struct DaemonSetController {
    client: Client,
    sets: Arc<Mirror<DaemonSet>>,
    revisions: Arc<Mirror<ControllerRevision>>,
    pods: Arc<Mirror<Pod>>,
    nodes: Arc<Mirror<Node>>,
    expect: Expectations,
    queue: Queue,
}

/// The tolerations Kubernetes gives every daemon pod, so that node trouble does not evict it.
fn daemon_tolerations(host_network: bool) -> Vec<Toleration> {
    let mut out: Vec<Toleration> = [
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
    .into_iter()
    .map(|(key, effect)| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    })
    .collect();
    if host_network {
        out.push(Toleration {
            key: Some("node.kubernetes.io/network-unavailable".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        });
    }
    out
}

/// The node a daemon pod is for: where it is bound, or where its affinity pins it.
fn target_node(p: &Pod) -> Option<String> {
    let spec = p.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

/// The pod the template makes for `node`.
fn daemon_pod(ds: &DaemonSet, hash: &str, node: &str) -> Pod {
    let ns = ds.metadata.namespace.clone().unwrap_or_default();
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut pod = owned::pod_from_template(
        &template,
        &ns,
        Some(format!("{}-", ds.metadata.name.as_deref().unwrap_or(""))),
        None,
        controller_ref(ds),
    );
    pod.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(REVISION_LABEL.into(), hash.into());
    let spec = pod.spec.get_or_insert_with(Default::default);
    let host_network = spec.host_network.unwrap_or(false);
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for t in daemon_tolerations(host_network) {
        if !tolerations
            .iter()
            .any(|x| x.key == t.key && x.effect == t.effect)
        {
            tolerations.push(t);
        }
    }
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.into()]),
            }]),
            match_expressions: None,
        }],
    });
    pod
}

impl DaemonSetController {
    pub fn new(
        client: Client,
        sets: Arc<Mirror<DaemonSet>>,
        pods: Arc<Mirror<Pod>>,
        nodes: Arc<Mirror<Node>>,
        revisions: Arc<Mirror<ControllerRevision>>,
    ) -> DaemonSetController {
        let queue = Queue::new("daemonset-controller");
        let q = queue.clone();
        sets.on_change(move |_, new| {
            if let Some(ds) = new {
                q.add(&key_of(&ds.metadata));
            }
        });
        let q = queue.clone();
        pods.on_change(move |old, new| {
            for p in [old, new].into_iter().flatten() {
                if let Some(r) = controller_of(&p.metadata).filter(|r| r.kind == "DaemonSet") {
                    let ns = p.metadata.namespace.as_deref().unwrap_or("");
                    q.add(&format!("{ns}/{}", r.name));
                }
            }
        });
        // A node that comes, goes or changes labels or taints may change every daemon set.
        let q = queue.clone();
        let all = sets.clone();
        nodes.on_change(move |old, new| {
            let relevant = match (old, new) {
                (Some(a), Some(b)) => {
                    a.metadata.labels != b.metadata.labels
                        || a.spec.as_ref().map(|s| (&s.taints, s.unschedulable))
                            != b.spec.as_ref().map(|s| (&s.taints, s.unschedulable))
                }
                _ => true,
            };
            if relevant {
                for ds in all.all() {
                    q.add(&key_of(&ds.metadata));
                }
            }
        });
        DaemonSetController {
            client,
            sets,
            revisions,
            pods,
            nodes,
            expect: Expectations::default(),
            queue,
        }
    }

    /// The queue its change handlers feed.
    pub fn queue(&self) -> Queue {
        self.queue.clone()
    }

    async fn reconcile(&self, key: &str) -> Outcome {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let Some(ds) = self.sets.get(ns, name) else {
            self.expect.forget(key);
            return Ok(None);
        };
        let spec = ds.spec.clone().unwrap_or_default();
        let hash = template_hash(
            &spec.template,
            ds.status.as_ref().and_then(|s| s.collision_count),
        );
        let uid = ds.metadata.uid.as_deref();
        let pods: Vec<Arc<Pod>> = self
            .pods
            .in_namespace(ns)
            .into_iter()
            .filter(|p| controlled_by::<DaemonSet>(&p.metadata, uid))
            .collect();
        let in_use = pods
            .iter()
            .filter_map(|p| p.metadata.labels.as_ref()?.get(REVISION_LABEL).cloned())
            .collect();
        crate::history::record(
            &self.client,
            &self.revisions,
            &*ds,
            &spec.template,
            &hash,
            spec.revision_history_limit,
            &in_use,
        )
        .await?;
        let seen = |n: &str| {
            self.pods
                .get(ns, n)
                .map(|p| p.metadata.deletion_timestamp.is_none())
        };
        let settled = self.expect.satisfied(key, seen) && ds.metadata.deletion_timestamp.is_none();
        let plan = plan(
            &ds,
            &hash,
            &self.nodes.all(),
            &pods,
            settled,
            jiff::Timestamp::now(),
        )
        .map_err(|message| ClientError::Api {
            code: 422,
            reason: "Invalid".into(),
            message,
        })?;
        self.delete(key, ns, &ds, &plan.delete).await;
        self.create(key, &ds, &hash, &plan.create).await;
        if let Some(status) = &plan.status {
            let v = serde_json::to_value(status).unwrap_or_default();
            match self
                .client
                .put_status::<DaemonSet>(Some(ns), name, &v)
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(plan.recheck)
    }

    async fn create(&self, key: &str, ds: &DaemonSet, hash: &str, nodes: &[String]) {
        if nodes.is_empty() {
            return;
        }
        let ns = ds.metadata.namespace.clone().unwrap_or_default();
        let results: Vec<Result<Pod, ClientError>> = futures_util::stream::iter(nodes.to_vec())
            .map(|n| {
                let pod = daemon_pod(ds, hash, &n);
                let client = self.client.clone();
                let ns = ns.clone();
                async move { client.create(Some(&ns), &pod).await }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        let mut made = Vec::new();
        for r in results {
            match r {
                Ok(p) => {
                    let n = p.metadata.name.unwrap_or_default();
                    owned::event(
                        &self.client,
                        COMPONENT,
                        ds,
                        "Normal",
                        "SuccessfulCreate",
                        &format!("Created pod: {n}"),
                    );
                    made.push(n);
                }
                Err(e) => owned::event(
                    &self.client,
                    COMPONENT,
                    ds,
                    "Warning",
                    "FailedCreate",
                    &format!("Error creating: {e}"),
                ),
            }
        }
        self.expect.expect(key, &made, &[]);
    }

    async fn delete(&self, key: &str, ns: &str, ds: &DaemonSet, names: &[String]) {
        if names.is_empty() {
            return;
        }
        self.expect.expect(key, &[], names);
        for n in names {
            match self.client.delete::<Pod>(Some(ns), n).await {
                Ok(()) => owned::event(
                    &self.client,
                    COMPONENT,
                    ds,
                    "Normal",
                    "SuccessfulDelete",
                    &format!("Deleted pod: {n}"),
                ),
                Err(e) if e.is_not_found() => {}
                Err(e) => debug!(pod = %n, error = %e, "could not delete a daemon pod"),
            }
        }
    }
}

/// What the controller intends for one DaemonSet, decided from what it observed.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Plan {
    /// Nodes that get a daemon pod now.
    create: Vec<String>,
    /// Daemon pods to delete, by name.
    delete: Vec<String>,
    /// The DaemonSet's new status, if it changed.
    status: Option<DaemonSetStatus>,
    /// Look again after this long (a daemon becomes available after minReadySeconds).
    recheck: Option<Duration>,
}

/// The DaemonSet controller's decision for `ds` (its template hashing to `hash`) over `nodes`
/// and its `pods`. `settled`: its earlier creations and deletions are all seen, and it is not
/// being deleted (it creates and deletes only then). Err: its template cannot be judged.
pub(crate) fn plan(
    ds: &DaemonSet,
    hash: &str,
    nodes: &[Arc<Node>],
    pods: &[Arc<Pod>],
    settled: bool,
    now: jiff::Timestamp,
) -> Result<Plan, String> {
    let spec = ds.spec.clone().unwrap_or_default();
    let snapshot = Snapshot::new(nodes.iter().map(|n| &**n), std::iter::empty());
    // Which nodes should run a daemon pod: judged as the pod itself would be.
    let probe = daemon_pod(ds, hash, "");
    let mut demand = Demand::of(&probe).map_err(|e| e.to_string())?;
    // The template's own node affinity still applies.
    demand.required = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|r| r.node_selector_terms.clone());
    let node_names: Vec<String> = nodes
        .iter()
        .map(|n| n.metadata.name.clone().unwrap_or_default())
        .collect();
    let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
    for p in pods {
        by_node
            .entry(target_node(p).unwrap_or_default())
            .or_default()
            .push(p.clone());
    }
    let name_of = |p: &Arc<Pod>| p.metadata.name.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let mut plan = Plan::default();
    let mut delete: Vec<Arc<Pod>> = Vec::new();
    let mut status = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        ..Default::default()
    };
    // Nodes whose daemon runs the old template, and whether it is available.
    let mut old_on: Vec<(Arc<Pod>, bool)> = Vec::new();
    let mut unavailable = 0;
    for (i, n) in node_names.iter().enumerate() {
        let here: Vec<Arc<Pod>> = by_node.remove(n).unwrap_or_default();
        let active: Vec<&Arc<Pod>> = here.iter().filter(|p| owned::is_active(p)).collect();
        let idx = snapshot.node(n).unwrap_or(i);
        if scheduler::never_fits(&snapshot, idx, &demand).is_none() {
            status.desired_number_scheduled += 1;
            if !active.is_empty() {
                status.current_number_scheduled += 1;
            }
            // Failed daemons are deleted and made again.
            for p in here.iter().filter(|p| owned::phase(p) == "Failed") {
                if p.metadata.deletion_timestamp.is_none() {
                    delete.push(p.clone());
                }
            }
            match active.as_slice() {
                [] => {
                    plan.create.push(n.clone());
                    unavailable += 1;
                }
                [first, rest @ ..] => {
                    // One per node: the oldest stays.
                    let mut keep = *first;
                    for p in rest {
                        if p.metadata.creation_timestamp < keep.metadata.creation_timestamp {
                            delete.push(keep.clone());
                            keep = p;
                        } else {
                            delete.push((*p).clone());
                        }
                    }
                    let current = keep
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(REVISION_LABEL))
                        .map(String::as_str)
                        == Some(hash);
                    if owned::is_ready(keep) {
                        status.number_ready += 1;
                    }
                    let available = match owned::availability(keep, min_ready, now) {
                        Ok(()) => true,
                        Err(left) => {
                            if let Some(l) = left {
                                plan.recheck = Some(plan.recheck.map_or(l, |r: Duration| r.min(l)));
                            }
                            false
                        }
                    };
                    if available {
                        status.number_available = Some(status.number_available.unwrap_or(0) + 1);
                    } else {
                        unavailable += 1;
                    }
                    if current {
                        status.updated_number_scheduled =
                            Some(status.updated_number_scheduled.unwrap_or(0) + 1);
                    } else {
                        old_on.push((keep.clone(), available));
                    }
                }
            }
        } else {
            if !active.is_empty() {
                status.number_misscheduled += 1;
            }
            delete.extend(active.into_iter().cloned());
        }
    }
    // Pods for nodes that no longer exist.
    for (_, left) in by_node {
        delete.extend(left.into_iter().filter(|p| owned::is_active(p)));
    }
    // Rolling update: replace old daemons, never leaving more than maxUnavailable nodes
    // without an available one.
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    if strategy.type_.as_deref() != Some("OnDelete") {
        let max_unavailable = resolve(
            strategy
                .rolling_update
                .as_ref()
                .and_then(|r| r.max_unavailable.as_ref()),
            status.desired_number_scheduled,
            false,
        )
        .max(1);
        let mut budget = max_unavailable - unavailable;
        for (p, available) in &old_on {
            if !available {
                delete.push(p.clone());
            } else if budget > 0 {
                delete.push(p.clone());
                budget -= 1;
            }
        }
    }
    status.number_unavailable =
        Some(status.desired_number_scheduled - status.number_available.unwrap_or(0))
            .filter(|n| *n > 0);
    if settled {
        plan.delete = delete.iter().map(name_of).collect();
    } else {
        plan.create.clear();
    }
    if ds.status.as_ref() != Some(&status) {
        plan.status = Some(status);
    }
    Ok(plan)
}

#[async_trait::async_trait]
impl Reconciler for DaemonSetController {
    fn name(&self) -> &'static str {
        "daemonset-controller"
    }

    async fn ready(&self) {
        self.sets.synced().await;
        self.pods.synced().await;
        self.nodes.synced().await;
    }

    async fn reconcile(&self, key: &str) -> Outcome {
        DaemonSetController::reconcile(self, key).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::{Value, json};

    use super::*;

    fn now() -> jiff::Timestamp {
        "2026-01-01T12:00:00Z".parse().unwrap()
    }

    fn ds(spec: Value) -> DaemonSet {
        let mut spec = spec;
        spec["selector"] = json!({"matchLabels": {"app": "d"}});
        spec["template"] = json!({"metadata": {"labels": {"app": "d"}},
                                  "spec": {"containers": [{"name": "c", "image": "i"}]}});
        serde_json::from_value(json!({
            "metadata": {"name": "d", "namespace": "ns", "uid": "u1", "generation": 1},
            "spec": spec,
        }))
        .unwrap()
    }

    fn node(name: &str, taints: Value) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"taints": taints},
                "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                           "conditions": [{"type": "Ready", "status": "True"}]},
            }))
            .unwrap(),
        )
    }

    /// A daemon pod on `node`, of template `hash`, created `age` seconds ago, Ready or not.
    fn pod(name: &str, node: &str, hash: &str, age: i64, ready: bool) -> Arc<Pod> {
        let created = (now() - jiff::SignedDuration::from_secs(age)).to_string();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns", "creationTimestamp": created,
                             "labels": {"app": "d", REVISION_LABEL: hash}},
                "spec": {"nodeName": node, "containers": []},
                "status": {"phase": "Running", "conditions": [{"type": "Ready",
                    "status": if ready {"True"} else {"False"}, "lastTransitionTime": created}]},
            }))
            .unwrap(),
        )
    }

    fn nodes() -> Vec<Arc<Node>> {
        vec![
            node("a", json!([])),
            node("b", json!([])),
            node("gpu", json!([{"key": "gpu", "effect": "NoSchedule"}])),
        ]
    }

    #[test]
    fn every_node_the_pod_fits_gets_one_and_tainted_nodes_are_skipped() {
        let p = plan(&ds(json!({})), "h1", &nodes(), &[], true, now()).unwrap();
        assert_eq!(p.create, ["a", "b"]);
        let status = p.status.unwrap();
        assert_eq!(status.desired_number_scheduled, 2);
        assert_eq!(status.current_number_scheduled, 0);
        assert_eq!(status.number_unavailable, Some(2));
    }

    #[test]
    fn a_daemon_in_place_everywhere_changes_nothing_once_its_status_says_so() {
        let pods = [
            pod("d-a", "a", "h1", 60, true),
            pod("d-b", "b", "h1", 60, true),
        ];
        let set = ds(json!({}));
        let p = plan(&set, "h1", &nodes(), &pods, true, now()).unwrap();
        assert!(p.create.is_empty() && p.delete.is_empty());
        let status = p.status.unwrap();
        assert_eq!((status.number_ready, status.number_available), (2, Some(2)));
        assert_eq!(status.updated_number_scheduled, Some(2));
        let mut settled = set;
        settled.status = Some(status);
        assert_eq!(
            plan(&settled, "h1", &nodes(), &pods, true, now()).unwrap(),
            Plan::default()
        );
    }

    #[test]
    fn one_per_node_the_oldest_stays_and_pods_of_gone_nodes_go() {
        let pods = [
            pod("old", "a", "h1", 60, true),
            pod("new", "a", "h1", 5, true),
            pod("d-b", "b", "h1", 60, true),
            pod("d-x", "vanished", "h1", 60, true),
        ];
        let p = plan(&ds(json!({})), "h1", &nodes(), &pods, true, now()).unwrap();
        let mut deleted = p.delete.clone();
        deleted.sort();
        assert_eq!(deleted, ["d-x", "new"]);
        assert!(p.create.is_empty());
    }

    #[test]
    fn a_rolling_update_replaces_max_unavailable_at_a_time() {
        let pods = [
            pod("d-a", "a", "old", 60, true),
            pod("d-b", "b", "old", 60, true),
        ];
        let p = plan(&ds(json!({})), "h2", &nodes(), &pods, true, now()).unwrap();
        assert_eq!(p.delete.len(), 1, "{p:?}");
        let p = plan(
            &ds(json!({"updateStrategy": {"rollingUpdate": {"maxUnavailable": 2}}})),
            "h2",
            &nodes(),
            &pods,
            true,
            now(),
        )
        .unwrap();
        assert_eq!(p.delete.len(), 2);
        // OnDelete: old pods stay until someone deletes them.
        let on_delete = ds(json!({"updateStrategy": {"type": "OnDelete"}}));
        let p = plan(&on_delete, "h2", &nodes(), &pods, true, now()).unwrap();
        assert!(p.delete.is_empty());
    }

    #[test]
    fn a_daemon_counts_as_available_after_min_ready_seconds() {
        let pods = [
            pod("d-a", "a", "h1", 3, true),
            pod("d-b", "b", "h1", 60, true),
        ];
        let p = plan(
            &ds(json!({"minReadySeconds": 10})),
            "h1",
            &nodes(),
            &pods,
            true,
            now(),
        )
        .unwrap();
        assert_eq!(p.status.unwrap().number_available, Some(1));
        let wait = p.recheck.unwrap();
        assert!(
            wait > Duration::from_secs(6) && wait <= Duration::from_secs(8),
            "{wait:?}"
        );
    }

    #[test]
    fn nothing_is_created_or_deleted_until_earlier_writes_are_seen() {
        let pods = [pod("d-x", "vanished", "h1", 60, true)];
        let p = plan(&ds(json!({})), "h1", &nodes(), &pods, false, now()).unwrap();
        assert!(p.create.is_empty() && p.delete.is_empty());
        assert!(p.status.is_some());
    }
}

//! The scheduler's thin shell: it mirrors nodes, pods and namespace labels through
//! list+watch, hands the pods waiting for a node to the pure `scheduler` in batches, and
//! commits its plan through the `pods/{name}/binding` subresource (which refuses a pod that
//! is already bound, so a stale plan loses nothing). Pods that fit nowhere get
//! `PodScheduled=False` with the scheduler's message and a `FailedScheduling` event, and are
//! tried again when nodes, pods or namespaces change, or after a back-off (1 s doubling to
//! 10 s).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod};
use api::k8s_openapi::api::policy::v1::PodDisruptionBudget;
use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use api::k8s_openapi::{ListableResource, Resource};
use bytes::Bytes;
use client::{Client, ClientError, ListParams, WatchEvent};
use futures_util::StreamExt;
use scheduler::{Decision, Demand, Snapshot};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub const SCHEDULER: &str = "default-scheduler";
const RETRY: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Bindings in flight at once.
const COMMITS: usize = 256;

/// What the loop has done, for benchmarks and the simulator.
#[derive(Default)]
pub struct Stats {
    pub bound: std::sync::atomic::AtomicU64,
    pub unschedulable: std::sync::atomic::AtomicU64,
    /// Per-pod decision times in nanoseconds.
    pub nanos: Mutex<Vec<u32>>,
}

pub struct SchedulerLoop {
    client: Client,
    cfg: scheduler::Config,
    stats: Arc<Stats>,
    /// Write events and conditions (off in the simulator, where they would only be noise).
    report: bool,
}

enum Reflected<K> {
    Reset(Vec<K>),
    Event(Box<WatchEvent<K>>),
}

enum Change {
    Nodes(Reflected<Node>),
    Pods(Reflected<Pod>),
    Namespaces(Reflected<Namespace>),
}

/// Keep `tx` fed with the objects of kind K: a full list, then changes, again from a new
/// list whenever the watch ends.
/// The channel is unbounded: the reflector must keep up with the API server's watch (which
/// drops watchers that fall behind) even while a cycle is busy committing.
async fn reflect<K>(
    client: Client,
    wrap: fn(Reflected<K>) -> Change,
    tx: mpsc::UnboundedSender<Change>,
) where
    K: Resource + ListableResource + DeserializeOwned + Send + 'static,
{
    loop {
        let (items, rv) = match client.list::<K>(None, &ListParams::default()).await {
            Ok(x) => x,
            Err(e) => {
                warn!(kind = K::KIND, error = %e, "scheduler cannot list; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if tx.send(wrap(Reflected::Reset(items))).is_err() {
            return;
        }
        let params = ListParams {
            resource_version: Some(rv),
            timeout_seconds: Some(300),
            bookmarks: true,
            ..Default::default()
        };
        let mut w = match client.watch::<K>(None, &params).await {
            Ok(w) => w,
            Err(e) => {
                debug!(kind = K::KIND, error = %e, "scheduler watch failed; relisting");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        while let Some(ev) = w.next().await {
            if matches!(ev, WatchEvent::Error(_)) {
                break;
            }
            if tx.send(wrap(Reflected::Event(Box::new(ev)))).is_err() {
                return;
            }
        }
    }
}

fn victim_priority(p: &Pod) -> i32 {
    p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// The placed pods per snapshot node, as preemption weighs them.
struct Placement {
    by_node: Vec<Vec<scheduler::Placed>>,
    keys: Vec<Vec<(String, Pod)>>,
    /// Pods on their way out: (node, priority).
    terminating: HashMap<String, (String, i32)>,
    /// Disruptions each PodDisruptionBudget allows now (`Placed::budgets` index this).
    allowed: Vec<i32>,
}

/// The budgets that cover a pod: same namespace, selector matching its labels.
fn budgets_of(p: &Pod, budgets: &[(String, api::selector::LabelSelectorExpr, i32)]) -> Vec<usize> {
    let ns = p.metadata.namespace.as_deref().unwrap_or("");
    let empty = BTreeMap::new();
    let labels = p.metadata.labels.as_ref().unwrap_or(&empty);
    (0..budgets.len())
        .filter(|b| budgets[*b].0 == ns && budgets[*b].1.matches(labels))
        .collect()
}

impl Placement {
    fn of(st: &State, snapshot: &Snapshot, pdbs: &[PodDisruptionBudget]) -> Placement {
        let budgets: Vec<(String, api::selector::LabelSelectorExpr, i32)> = pdbs
            .iter()
            .map(|b| {
                let selector = api::selector::LabelSelectorExpr::from_object(
                    b.spec.as_ref().and_then(|s| s.selector.as_ref()),
                )
                .unwrap_or_else(|_| api::selector::LabelSelectorExpr::nothing());
                let allowed = b.status.as_ref().map_or(0, |s| s.disruptions_allowed);
                (
                    b.metadata.namespace.clone().unwrap_or_default(),
                    selector,
                    allowed,
                )
            })
            .collect();
        let mut by_node = vec![Vec::new(); snapshot.len()];
        let mut keys = vec![Vec::new(); snapshot.len()];
        let mut terminating = HashMap::new();
        for (k, p) in &st.pods {
            let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
                continue;
            };
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            if matches!(phase, Some("Succeeded" | "Failed")) {
                continue;
            }
            if p.metadata.deletion_timestamp.is_some() {
                terminating.insert(k.clone(), (node.to_string(), victim_priority(p)));
                continue;
            }
            let (Some(i), Ok(demand)) = (snapshot.node(node), Demand::of(p)) else {
                continue;
            };
            by_node[i].push(scheduler::Placed {
                priority: victim_priority(p),
                demand,
                budgets: budgets_of(p, &budgets),
            });
            keys[i].push((k.clone(), p.clone()));
        }
        Placement {
            by_node,
            keys,
            terminating,
            allowed: budgets.iter().map(|b| b.2).collect(),
        }
    }

    fn terminating_below(&self, node: &str, priority: i32) -> bool {
        self.terminating
            .values()
            .any(|(n, p)| n == node && *p < priority)
    }
}

fn key(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or(""),
        p.metadata.name.as_deref().unwrap_or("")
    )
}

fn bound(p: &Pod) -> bool {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
}

fn ours(p: &Pod) -> bool {
    p.spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .is_none_or(|s| s == SCHEDULER)
}

/// What the loop mirrors and remembers between cycles.
#[derive(Default)]
struct State {
    nodes: BTreeMap<String, Node>,
    pods: HashMap<String, Pod>,
    /// Namespace labels, for inter-pod terms that select namespaces.
    namespaces: scheduler::NamespaceLabels,
    /// Nodes, pods and namespaces listed at least once.
    synced: (bool, bool, bool),
    /// Pods this loop bound whose binding the watch has not shown yet: (node, what it asks).
    assumed: HashMap<String, (String, Demand)>,
    /// Pods that fit nowhere: when to try again, and how many tries so far.
    waiting: HashMap<String, (Instant, u32)>,
}

impl State {
    fn apply(&mut self, c: Change) {
        match c {
            Change::Nodes(r) => {
                match r {
                    Reflected::Reset(items) => {
                        self.nodes = items
                            .into_iter()
                            .map(|n| (n.metadata.name.clone().unwrap_or_default(), n))
                            .collect();
                        self.synced.0 = true;
                    }
                    Reflected::Event(ev) => match *ev {
                        WatchEvent::Added(n) | WatchEvent::Modified(n) => {
                            self.nodes
                                .insert(n.metadata.name.clone().unwrap_or_default(), n);
                        }
                        WatchEvent::Deleted(n) => {
                            self.nodes
                                .remove(n.metadata.name.as_deref().unwrap_or_default());
                        }
                        _ => return,
                    },
                }
                // The cluster changed: whatever did not fit may now.
                self.waiting.clear();
            }
            Change::Pods(r) => match r {
                Reflected::Reset(items) => {
                    self.pods = items.into_iter().map(|p| (key(&p), p)).collect();
                    self.assumed
                        .retain(|k, _| self.pods.get(k).is_some_and(|p| !bound(p)));
                    self.synced.1 = true;
                    self.waiting.clear();
                }
                Reflected::Event(ev) => self.pod_event(*ev),
            },
            Change::Namespaces(r) => {
                let labels = |n: &Namespace| {
                    (
                        n.metadata.name.clone().unwrap_or_default(),
                        n.metadata.labels.clone().unwrap_or_default(),
                    )
                };
                match r {
                    Reflected::Reset(items) => {
                        self.namespaces = items.iter().map(labels).collect();
                        self.synced.2 = true;
                    }
                    Reflected::Event(ev) => match *ev {
                        WatchEvent::Added(n) | WatchEvent::Modified(n) => {
                            let (k, v) = labels(&n);
                            if self.namespaces.get(&k) == Some(&v) {
                                return;
                            }
                            self.namespaces.insert(k, v);
                        }
                        WatchEvent::Deleted(n) => {
                            self.namespaces
                                .remove(n.metadata.name.as_deref().unwrap_or_default());
                        }
                        _ => return,
                    },
                }
                // Terms may select other namespaces now.
                self.waiting.clear();
            }
        }
    }

    fn pod_event(&mut self, ev: WatchEvent<Pod>) {
        match ev {
            WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                let k = key(&p);
                if bound(&p) {
                    self.assumed.remove(&k);
                    self.waiting.remove(&k);
                    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                    if matches!(phase, Some("Succeeded" | "Failed")) {
                        // Room freed.
                        self.waiting.clear();
                    }
                }
                self.pods.insert(k, p);
            }
            WatchEvent::Deleted(p) => {
                let k = key(&p);
                self.pods.remove(&k);
                self.assumed.remove(&k);
                if bound(&p) {
                    self.waiting.clear();
                } else {
                    self.waiting.remove(&k);
                }
            }
            _ => {}
        }
    }

    /// The earliest moment a waiting pod should be tried again.
    fn next_retry(&self) -> Option<Instant> {
        self.waiting.values().map(|(t, _)| *t).min()
    }
}

impl SchedulerLoop {
    pub fn new(client: Client, cfg: scheduler::Config) -> SchedulerLoop {
        SchedulerLoop {
            client,
            cfg,
            stats: Arc::default(),
            report: true,
        }
    }

    /// Without events and conditions: for the simulator.
    pub fn quiet(mut self) -> SchedulerLoop {
        self.report = false;
        self
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    pub async fn run(self) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(reflect::<Node>(
            self.client.clone(),
            Change::Nodes,
            tx.clone(),
        ));
        tokio::spawn(reflect::<Pod>(
            self.client.clone(),
            Change::Pods,
            tx.clone(),
        ));
        tokio::spawn(reflect::<Namespace>(
            self.client.clone(),
            Change::Namespaces,
            tx,
        ));
        let mut st = State::default();
        loop {
            let retry = st.next_retry();
            tokio::select! {
                c = rx.recv() => match c {
                    Some(c) => st.apply(c),
                    None => return,
                },
                _ = async {
                    match retry {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
            // Take everything that has arrived: a batch is placed together.
            while let Ok(c) = rx.try_recv() {
                st.apply(c);
            }
            if st.synced == (true, true, true) {
                self.cycle(&mut st).await;
            }
        }
    }

    /// Place every pod that waits for a node and may be tried now.
    async fn cycle(&self, st: &mut State) {
        let now = Instant::now();
        let mut pending: Vec<&Pod> = st
            .pods
            .iter()
            .filter(|(k, p)| {
                !bound(p)
                    && ours(p)
                    && p.metadata.deletion_timestamp.is_none()
                    && !st.assumed.contains_key(*k)
                    && st.waiting.get(*k).is_none_or(|(t, _)| *t <= now)
            })
            .map(|(_, p)| p)
            .collect();
        if pending.is_empty() {
            return;
        }
        // Higher priority first, then first come, first served.
        pending.sort_by(|a, b| {
            let prio = |p: &Pod| p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
            prio(b)
                .cmp(&prio(a))
                .then_with(|| {
                    a.metadata
                        .creation_timestamp
                        .cmp(&b.metadata.creation_timestamp)
                })
                .then_with(|| key(a).cmp(&key(b)))
        });
        let mut snapshot = Snapshot::new(st.nodes.values(), st.pods.values().filter(|p| bound(p)))
            .with_namespaces(st.namespaces.clone());
        for (node, d) in st.assumed.values() {
            if let Some(i) = snapshot.node(node) {
                snapshot.assume(i, d);
            }
        }
        let mut demands = Vec::with_capacity(pending.len());
        let mut invalid = Vec::new();
        for p in &pending {
            match Demand::of(p) {
                Ok(d) => demands.push(d),
                Err(e) => invalid.push(((*p).clone(), e.to_string())),
            }
        }
        let pods_by_key: HashMap<String, Pod> =
            pending.iter().map(|p| (key(p), (*p).clone())).collect();
        let plan = scheduler::schedule(&mut snapshot, &demands, &self.cfg);
        if let Ok(mut m) = self.stats.nanos.lock() {
            m.extend_from_slice(&plan.nanos);
        }
        let mut binds = Vec::new();
        let mut placed: Option<Placement> = None;
        for (d, decision) in demands.into_iter().zip(plan.decisions) {
            let k = format!("{}/{}", d.namespace, d.name);
            let Some(pod) = pods_by_key.get(&k) else {
                continue;
            };
            match decision {
                Decision::Bind { node } => {
                    st.assumed.insert(k, (node.clone(), d));
                    binds.push((pod.clone(), node));
                }
                Decision::Unschedulable { message, .. } => {
                    self.wait(st, &k);
                    self.stats
                        .unschedulable
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if placed.is_none() {
                        let pdbs = self.budgets().await;
                        placed = Some(Placement::of(st, &snapshot, &pdbs));
                    }
                    let Some(placed) = placed.as_mut() else {
                        continue;
                    };
                    let preempted = self.preempt(pod, &d, &snapshot, placed).await;
                    let message = match preempted {
                        Some(node) => {
                            format!("{message} Preempting lower-priority pods on {node}.")
                        }
                        None => message,
                    };
                    self.unschedulable(pod, &message).await;
                }
            }
        }
        for (pod, why) in invalid {
            self.wait(st, &key(&pod));
            self.unschedulable(&pod, &why).await;
        }
        let results: Vec<(String, Result<(), ClientError>)> = futures_util::stream::iter(binds)
            .map(|(pod, node)| async move {
                let r = self.bind(&pod, &node).await;
                (key(&pod), r)
            })
            .buffer_unordered(COMMITS)
            .collect()
            .await;
        for (k, r) in results {
            match r {
                Ok(()) => {
                    self.stats
                        .bound
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                // Bound meanwhile (or gone): the plan was stale for this pod; the watch
                // brings the truth.
                Err(e) if e.is_conflict() || e.is_not_found() => {
                    st.assumed.remove(&k);
                }
                Err(e) => {
                    warn!(pod = %k, error = %e, "could not bind the pod; trying again");
                    st.assumed.remove(&k);
                    st.waiting.insert(k, (Instant::now() + RETRY, 0));
                }
            }
        }
    }

    /// Make room for `pod` by evicting lower-priority pods, if that can work; returns the
    /// node nominated for it.
    async fn preempt(
        &self,
        pod: &Pod,
        d: &Demand,
        snapshot: &Snapshot,
        placed: &mut Placement,
    ) -> Option<String> {
        let spec = pod.spec.as_ref()?;
        if spec.preemption_policy.as_deref() == Some("Never") {
            return None;
        }
        let priority = spec.priority.unwrap_or(0);
        // Victims chosen earlier are still leaving: wait for them rather than pick more.
        if let Some(nominated) = pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref())
            && placed.terminating_below(nominated, priority)
        {
            return Some(nominated.to_string());
        }
        let choice =
            scheduler::preemption(snapshot, d, priority, &placed.by_node, &placed.allowed)?;

        let node = snapshot.name(choice.node).to_string();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        info!(pod = %format!("{ns}/{name}"), node = %node, victims = choice.victims.len(), budget_violations = choice.violations, "preempting");
        let patch = json!({"status": {"nominatedNodeName": node}});
        if let Err(e) = self
            .client
            .patch_status::<Pod>(Some(&ns), &name, &patch)
            .await
        {
            debug!(error = %e, "could not nominate a node");
        }
        // Remove the victims from the picture, so later pods of this cycle do not pick them.
        let mut victims = choice.victims.clone();
        victims.sort_unstable_by(|a, b| b.cmp(a));
        for v in victims {
            let (vkey, victim) = placed.keys[choice.node].remove(v);
            // Its budgets have one disruption fewer to give for the rest of this cycle.
            for b in placed.by_node[choice.node].remove(v).budgets {
                if let Some(n) = placed.allowed.get_mut(b) {
                    *n -= 1;
                }
            }
            let (vns, vname) = vkey.split_once('/').unwrap_or(("", &vkey));
            let path = format!("/api/v1/namespaces/{vns}/pods/{vname}");
            let opts = json!({"kind": "DeleteOptions", "apiVersion": "v1",
                              "preconditions": {"uid": victim.metadata.uid}});
            match self.client.delete_with(&path, &opts).await {
                Ok(()) => {
                    if self.report {
                        self.event(
                            &victim,
                            "Normal",
                            "Preempted",
                            &format!("Preempted by pod {uid} on node {node}"),
                        )
                        .await;
                    }
                }
                Err(e) => debug!(pod = %vkey, error = %e, "could not preempt"),
            }
            placed
                .terminating
                .insert(vkey, (node.clone(), victim_priority(&victim)));
        }
        Some(node)
    }

    /// The cluster's PodDisruptionBudgets, which preemption tries not to break (none if they
    /// cannot be read: budgets only steer the choice of victims).
    async fn budgets(&self) -> Vec<PodDisruptionBudget> {
        match self
            .client
            .list::<PodDisruptionBudget>(None, &ListParams::default())
            .await
        {
            Ok((items, _)) => items,
            Err(e) => {
                debug!(error = %e, "cannot list disruption budgets for preemption");
                Vec::new()
            }
        }
    }

    fn wait(&self, st: &mut State, k: &str) {
        let tries = st.waiting.get(k).map_or(0, |(_, n)| *n);
        let backoff = (RETRY * 2u32.saturating_pow(tries)).min(MAX_BACKOFF);
        st.waiting
            .insert(k.to_string(), (Instant::now() + backoff, tries + 1));
    }

    async fn bind(&self, pod: &Pod, node: &str) -> Result<(), ClientError> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        let path = format!("/api/v1/namespaces/{ns}/pods/{name}/binding");
        self.client
            .request(
                http::Method::POST,
                &path,
                "application/json",
                Bytes::from(binding.to_string()),
            )
            .await?;
        if self.report {
            info!(pod = %format!("{ns}/{name}"), node, "pod bound");
            self.event(
                pod,
                "Normal",
                "Scheduled",
                &format!("Successfully assigned {ns}/{name} to {node}"),
            )
            .await;
        }
        Ok(())
    }

    /// Say why the pod waits, in the scheduler's words (once per message).
    async fn unschedulable(&self, pod: &Pod, message: &str) {
        if !self.report {
            return;
        }
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
        let by = api::events::Reporter {
            component: SCHEDULER,
            host: None,
        };
        let reference = api::events::pod_reference(pod, None);
        let ev = api::events::new(
            reference,
            None,
            kind,
            reason,
            message,
            &by,
            jiff::Timestamp::now(),
        );
        let r: Result<Event, ClientError> = self.client.create(Some(&ns), &ev).await;
        if let Err(e) = r {
            debug!(error = %e, "could not record a scheduling event");
        }
    }
}

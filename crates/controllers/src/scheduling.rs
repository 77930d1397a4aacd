//! The scheduler's thin shell: it mirrors nodes, pods and namespace labels through
//! list+watch, hands the pods waiting for a node to the pure `scheduler` in batches, and
//! commits its plan through the `pods/{name}/binding` subresource (which refuses a pod that
//! is already bound, so a stale plan loses nothing). Pods that fit nowhere get
//! `PodScheduled=False` with the scheduler's message and a `FailedScheduling` event, and are
//! tried again when nodes, pods, namespaces or storage change, or after a back-off (1 s
//! doubling to 10 s). It follows claims, volumes and classes too: a pod's claims must exist
//! and be bound (or wait for their first consumer), their volumes' node affinity joins the
//! pod's, and claims waiting for a node learn it before the pod is bound (`volume::binding`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::k8s_openapi::api::core::v1::{
    Binding, Namespace, Node, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod,
};
use api::k8s_openapi::api::policy::v1::PodDisruptionBudget;
use api::k8s_openapi::api::storage::v1::StorageClass;
use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use api::k8s_openapi::{ListableResource, Metadata, Resource};
use bytes::Bytes;
use client::{Client, ClientError, ListParams, Watcher, watcher};
use scheduler::{Decision, Demand, Snapshot};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::volume::binding::{self, Storage};

pub const SCHEDULER: &str = "default-scheduler";
const RETRY: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Bindings in flight at once: enough that the store's group commits stay full.
const COMMITS: usize = 2048;

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
    /// While this says true, follow the cluster but place nothing.
    hold: Option<tokio::sync::watch::Receiver<bool>>,
}

enum Change {
    Nodes(Box<watcher::Event<Node>>),
    Pods(Box<watcher::Event<Pod>>),
    Namespaces(Box<watcher::Event<Namespace>>),
    Claims(Box<watcher::Event<PersistentVolumeClaim>>),
    Volumes(Box<watcher::Event<PersistentVolume>>),
    Classes(Box<watcher::Event<StorageClass>>),
    /// A binding sent in an earlier cycle has come back.
    Bound(String, Result<(), ClientError>),
}

/// Keep `map` in line with a watcher's events; `synced` once it has listed.
fn follow<K>(
    map: &mut HashMap<String, Arc<K>>,
    e: watcher::Event<K>,
    key: impl Fn(&K) -> String,
    synced: &mut bool,
) {
    match e {
        watcher::Event::Restarted(items) => {
            *map = items.into_iter().map(|k| (key(&k), Arc::new(k))).collect();
            *synced = true;
        }
        watcher::Event::Applied(k) => {
            map.insert(key(&k), Arc::new(k));
        }
        watcher::Event::Deleted(k) => {
            map.remove(&key(&k));
        }
    }
}

/// Keep `tx` fed with what the watcher reports of kind K.
/// The channel is unbounded: the reflector must keep up with the API server's watch (which
/// drops watchers that fall behind) even while a cycle is busy committing.
async fn reflect<K>(
    client: Client,
    wrap: fn(watcher::Event<K>) -> Change,
    tx: mpsc::UnboundedSender<Change>,
) where
    K: Resource + ListableResource + Metadata<Ty = ObjectMeta> + DeserializeOwned,
    K: Send + 'static,
{
    // Placement never reads who manages which field.
    let lean = ListParams {
        strip_managed_fields: true,
        ..Default::default()
    };
    let mut w = Watcher::<K>::new(client, None, lean);
    loop {
        if tx.send(wrap(w.next().await)).is_err() {
            return;
        }
    }
}

fn victim_priority(p: &Pod) -> i32 {
    p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// The placed pods per snapshot node, as preemption weighs them.
struct Placement {
    by_node: Vec<Vec<scheduler::Placed>>,
    keys: Vec<Vec<(String, Arc<Pod>)>>,
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

fn ended(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

fn node_of(p: &Pod) -> Option<&str> {
    p.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

/// What of a node placement looks at: a change elsewhere (a heartbeat, images, addresses)
/// changes no decision.
fn placement_view(n: &Node) -> impl PartialEq + use<'_> {
    let spec = n.spec.as_ref();
    let status = n.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.as_str());
    (
        &n.metadata.labels,
        spec.map(|s| (&s.taints, s.unschedulable)),
        status.map(|s| (&s.allocatable, &s.capacity)),
        ready,
    )
}

/// What the loop mirrors and remembers between cycles.
#[derive(Default)]
struct State {
    nodes: BTreeMap<String, Node>,
    pods: HashMap<String, Arc<Pod>>,
    /// Namespace labels, for inter-pod terms that select namespaces.
    namespaces: scheduler::NamespaceLabels,
    /// Nodes, pods and namespaces listed at least once.
    synced: (bool, bool, bool),
    /// Claims, volumes and classes, for the pods' volumes.
    storage: Storage,
    /// Claims, volumes and classes listed at least once.
    storage_synced: [bool; 3],
    /// Told of every change to a claim (bindings in flight wait for their claims on it).
    claims_changed: Arc<tokio::sync::Notify>,
    /// The cluster as placement sees it, kept up to date between cycles as pods come, go and
    /// are bound; rebuilt (from `nodes` and `counted`) when the nodes change.
    snapshot: Option<Snapshot>,
    /// The pods `snapshot` counts, with their node and what they take: bound pods that have
    /// not ended, and the pods in `assumed`.
    counted: HashMap<String, (String, Demand)>,
    /// Pods this loop bound (or is binding) whose binding the watch has not shown yet.
    assumed: HashSet<String>,
    /// Pods waiting for a node: not bound, this scheduler's, not being deleted, and not in
    /// `assumed`.
    unbound: HashSet<String>,
    /// Pods that fit nowhere: when to try again, and how many tries so far.
    waiting: HashMap<String, (Instant, u32)>,
}

impl State {
    fn apply(&mut self, c: Change) {
        match c {
            Change::Nodes(r) => {
                match *r {
                    watcher::Event::Restarted(items) => {
                        self.nodes = items
                            .into_iter()
                            .map(|n| (n.metadata.name.clone().unwrap_or_default(), n))
                            .collect();
                        self.synced.0 = true;
                    }
                    watcher::Event::Applied(n) => {
                        let name = n.metadata.name.clone().unwrap_or_default();
                        let same = self
                            .nodes
                            .get(&name)
                            .is_some_and(|old| placement_view(old) == placement_view(&n));
                        self.nodes.insert(name, n);
                        if same {
                            return;
                        }
                    }
                    watcher::Event::Deleted(n) => {
                        self.nodes
                            .remove(n.metadata.name.as_deref().unwrap_or_default());
                    }
                }
                // The cluster changed: whatever did not fit may now.
                self.snapshot = None;
                self.waiting.clear();
            }
            Change::Pods(ev) => self.pod_event(*ev),
            Change::Namespaces(r) => {
                let labels = |n: &Namespace| {
                    (
                        n.metadata.name.clone().unwrap_or_default(),
                        n.metadata.labels.clone().unwrap_or_default(),
                    )
                };
                match *r {
                    watcher::Event::Restarted(items) => {
                        self.namespaces = items.iter().map(labels).collect();
                        self.synced.2 = true;
                    }
                    watcher::Event::Applied(n) => {
                        let (k, v) = labels(&n);
                        if self.namespaces.get(&k) == Some(&v) {
                            return;
                        }
                        self.namespaces.insert(k, v);
                    }
                    watcher::Event::Deleted(n) => {
                        self.namespaces
                            .remove(n.metadata.name.as_deref().unwrap_or_default());
                    }
                }
                if let Some(s) = self.snapshot.as_mut() {
                    s.set_namespaces(self.namespaces.clone());
                }
                // Terms may select other namespaces now.
                self.waiting.clear();
            }
            Change::Bound(k, r) => self.binding_done(k, r),
            Change::Claims(e) => {
                let key = |c: &PersistentVolumeClaim| {
                    format!(
                        "{}/{}",
                        c.metadata.namespace.as_deref().unwrap_or(""),
                        c.metadata.name.as_deref().unwrap_or("")
                    )
                };
                follow(
                    &mut self.storage.claims,
                    *e,
                    key,
                    &mut self.storage_synced[0],
                );
                // Bindings in flight may be waiting for this claim; a pod waiting for its
                // claims may go now.
                self.claims_changed.notify_waiters();
                self.retry_pods_with_claims();
            }
            Change::Volumes(e) => {
                let key = |v: &PersistentVolume| v.metadata.name.clone().unwrap_or_default();
                follow(
                    &mut self.storage.volumes,
                    *e,
                    key,
                    &mut self.storage_synced[1],
                );
                self.retry_pods_with_claims();
            }
            Change::Classes(e) => {
                let key = |c: &StorageClass| c.metadata.name.clone().unwrap_or_default();
                follow(
                    &mut self.storage.classes,
                    *e,
                    key,
                    &mut self.storage_synced[2],
                );
                self.retry_pods_with_claims();
            }
        }
    }

    /// Storage changed: pods that wait and mount claims may fit now (others keep their
    /// back-off; storage writes are frequent and say nothing about them).
    fn retry_pods_with_claims(&mut self) {
        let pods = &self.pods;
        self.waiting.retain(|k, _| {
            pods.get(k).is_none_or(|p| {
                !p.spec
                    .as_ref()
                    .and_then(|s| s.volumes.as_ref())
                    .is_some_and(|v| {
                        v.iter()
                            .any(|v| v.persistent_volume_claim.is_some() || v.ephemeral.is_some())
                    })
            })
        });
    }

    fn reset_pods(&mut self, items: Vec<Pod>) {
        self.pods = items.into_iter().map(|p| (key(&p), Arc::new(p))).collect();
        self.assumed
            .retain(|k| self.pods.get(k).is_some_and(|p| !bound(p)));
        // Count afresh; what this loop is binding stays where it put it.
        let assumed = &self.assumed;
        self.counted.retain(|k, _| assumed.contains(k));
        for (k, p) in &self.pods {
            if bound(p)
                && !ended(p)
                && let Ok(d) = Demand::usage(p)
            {
                self.counted
                    .insert(k.clone(), (node_of(p).unwrap_or_default().to_string(), d));
            }
        }
        self.unbound = self
            .pods
            .iter()
            .filter(|(k, p)| waits(p) && !self.assumed.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        self.snapshot = None;
        self.synced.1 = true;
        self.waiting.clear();
    }

    fn pod_event(&mut self, ev: watcher::Event<Pod>) {
        match ev {
            watcher::Event::Applied(p) => {
                let k = key(&p);
                if bound(&p) {
                    self.assumed.remove(&k);
                    self.waiting.remove(&k);
                    if ended(&p) {
                        // Room freed.
                        self.waiting.clear();
                    }
                }
                if waits(&p) && !self.assumed.contains(&k) {
                    self.unbound.insert(k.clone());
                } else {
                    self.unbound.remove(&k);
                }
                self.pods.insert(k.clone(), Arc::new(p));
                self.recount(&k);
            }
            watcher::Event::Deleted(p) => {
                let k = key(&p);
                self.pods.remove(&k);
                self.assumed.remove(&k);
                self.unbound.remove(&k);
                if bound(&p) {
                    self.waiting.clear();
                } else {
                    self.waiting.remove(&k);
                }
                self.recount(&k);
            }
            watcher::Event::Restarted(items) => self.reset_pods(items),
        }
    }

    /// A binding this loop sent has come back.
    fn binding_done(&mut self, k: String, r: Result<(), ClientError>) {
        match r {
            // The watch will show it bound.
            Ok(()) => return,
            // Bound meanwhile (or gone): the plan was stale for this pod; the watch brings
            // the truth.
            Err(e) if e.is_conflict() || e.is_not_found() => {}
            Err(e) => {
                warn!(pod = %k, error = %e, "could not bind the pod; trying again");
                self.waiting.insert(k.clone(), (Instant::now() + RETRY, 0));
            }
        }
        if self.assumed.remove(&k) {
            if self.pods.get(&k).is_some_and(|p| waits(p)) {
                self.unbound.insert(k.clone());
            }
            self.recount(&k);
        }
    }

    /// Bring what the snapshot counts for pod `k` in line with what the pod is now.
    fn recount(&mut self, k: &str) {
        if self.assumed.contains(k) {
            // Counted where this loop put it until the watch says more.
            return;
        }
        let want = self.pods.get(k).filter(|p| bound(p) && !ended(p)).cloned();
        let have = self.counted.get(k).map(|(n, _)| n.as_str());
        if have == want.as_deref().and_then(node_of) {
            return;
        }
        if let Some((node, d)) = self.counted.remove(k)
            && let Some(s) = self.snapshot.as_mut()
            && let Some(i) = s.node(&node)
        {
            s.forget(i, &d);
        }
        let Some(p) = want else {
            return;
        };
        let Ok(d) = Demand::usage(&p) else {
            return;
        };
        let node = node_of(&p).unwrap_or_default().to_string();
        if let Some(s) = self.snapshot.as_mut()
            && let Some(i) = s.node(&node)
        {
            s.assume(i, &d);
        }
        self.counted.insert(k.to_string(), (node, d));
    }

    /// The snapshot (built from the nodes and the pods counted if the nodes changed), taken
    /// out for a cycle.
    fn take_snapshot(&mut self) -> Snapshot {
        if let Some(s) = self.snapshot.take() {
            return s;
        }
        let mut s = Snapshot::new(self.nodes.values(), std::iter::empty())
            .with_namespaces(self.namespaces.clone());
        for (node, d) in self.counted.values() {
            if let Some(i) = s.node(node) {
                s.assume(i, d);
            }
        }
        s
    }

    /// The earliest moment a waiting pod should be tried again.
    fn next_retry(&self) -> Option<Instant> {
        self.waiting.values().map(|(t, _)| *t).min()
    }
}

/// Whether the pod waits for this scheduler to place it.
fn waits(p: &Pod) -> bool {
    !bound(p) && ours(p) && p.metadata.deletion_timestamp.is_none()
}

impl SchedulerLoop {
    pub fn new(client: Client, cfg: scheduler::Config) -> SchedulerLoop {
        SchedulerLoop {
            client,
            cfg,
            stats: Arc::default(),
            report: true,
            hold: None,
        }
    }

    /// Follow the cluster but place nothing while `hold` says true: the simulator releases a
    /// scheduler that is already in sync onto a backlog, as scheduler benchmarks measure.
    pub fn held(mut self, hold: tokio::sync::watch::Receiver<bool>) -> SchedulerLoop {
        self.hold = Some(hold);
        self
    }

    /// Without events and conditions: for the simulator.
    pub fn quiet(mut self) -> SchedulerLoop {
        self.report = false;
        self
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Follow the cluster and place pods, until the process ends. Supervise it: a restart
    /// starts over from fresh lists.
    pub async fn run(self: Arc<Self>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        // Dropped with this loop (a panic included), which stops them.
        let mut reflectors = tokio::task::JoinSet::new();
        reflectors.spawn(reflect::<Node>(
            self.client.clone(),
            |e| Change::Nodes(Box::new(e)),
            tx.clone(),
        ));
        reflectors.spawn(reflect::<Pod>(
            self.client.clone(),
            |e| Change::Pods(Box::new(e)),
            tx.clone(),
        ));
        reflectors.spawn(reflect::<Namespace>(
            self.client.clone(),
            |e| Change::Namespaces(Box::new(e)),
            tx.clone(),
        ));
        reflectors.spawn(reflect::<PersistentVolumeClaim>(
            self.client.clone(),
            |e| Change::Claims(Box::new(e)),
            tx.clone(),
        ));
        reflectors.spawn(reflect::<PersistentVolume>(
            self.client.clone(),
            |e| Change::Volumes(Box::new(e)),
            tx.clone(),
        ));
        reflectors.spawn(reflect::<StorageClass>(
            self.client.clone(),
            |e| Change::Classes(Box::new(e)),
            tx.clone(),
        ));
        let commits = Arc::new(tokio::sync::Semaphore::new(COMMITS));
        let mut st = State::default();
        let mut hold = self.hold.clone();
        loop {
            let retry = st.next_retry();
            let held = holding(&hold);
            tokio::select! {
                c = rx.recv() => match c {
                    Some(c) => st.apply(c),
                    None => return,
                },
                ended = reflectors.join_next() => {
                    // A reflector never ends on its own: it panicked. Start over.
                    if let Some(Err(e)) = ended
                        && e.is_panic()
                    {
                        std::panic::resume_unwind(e.into_panic());
                    }
                    return;
                }
                _ = async {
                    match retry {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {}
                released = async {
                    match hold.as_mut() {
                        Some(h) if held => h.changed().await.is_err(),
                        _ => std::future::pending().await,
                    }
                } => {
                    // The holder went away: nothing holds the loop any more.
                    if released {
                        hold = None;
                    }
                }
            }
            // Take everything that has arrived: a batch is placed together.
            while let Ok(c) = rx.try_recv() {
                st.apply(c);
            }
            if st.synced == (true, true, true) && st.storage_synced == [true; 3] && !holding(&hold)
            {
                self.cycle(&mut st, &tx, &commits).await;
            }
        }
    }

    /// Place every pod that waits for a node and may be tried now. Bindings are sent without
    /// waiting for them (at most `COMMITS` at once); their pods count as placed until the
    /// watch shows them bound, or the binding fails.
    async fn cycle(
        &self,
        st: &mut State,
        tx: &mpsc::UnboundedSender<Change>,
        commits: &Arc<tokio::sync::Semaphore>,
    ) {
        let now = Instant::now();
        let mut pending: Vec<Arc<Pod>> = st
            .unbound
            .iter()
            .filter(|k| st.waiting.get(*k).is_none_or(|(t, _)| *t <= now))
            .filter_map(|k| st.pods.get(k).cloned())
            .collect();
        if pending.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
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
                .then_with(|| {
                    let (ma, mb) = (&a.metadata, &b.metadata);
                    (&ma.namespace, &ma.name).cmp(&(&mb.namespace, &mb.name))
                })
        });
        let mut demands = Vec::with_capacity(pending.len());
        let mut pods = Vec::with_capacity(pending.len());
        let mut delayed = Vec::with_capacity(pending.len());
        let mut invalid = Vec::new();
        let node_count = st.nodes.len();
        for p in pending {
            let needs = match binding::needs(&p, &st.storage) {
                Ok(n) => n,
                Err(why) => {
                    invalid.push((p, format!("0/{node_count} nodes are available: {why}.")));
                    continue;
                }
            };
            match Demand::of(&p) {
                Ok(d) => {
                    let d = if needs.nodes.is_empty() {
                        d
                    } else {
                        d.with_volumes(needs.nodes)
                    };
                    demands.push(d);
                    pods.push(p);
                    delayed.push(needs.delayed);
                }
                Err(e) => invalid.push((p, e.to_string())),
            }
        }
        let prepared = started.elapsed();
        let mut snapshot = st.take_snapshot();
        let plan = scheduler::schedule(&mut snapshot, &demands, &self.cfg);
        debug!(
            pods = pods.len(),
            prepare_ms = prepared.as_millis() as u64,
            plan_ms = (started.elapsed() - prepared).as_millis() as u64,
            "scheduling cycle"
        );
        if let Ok(mut m) = self.stats.nanos.lock() {
            m.extend_from_slice(&plan.nanos);
        }
        let mut placed: Option<Placement> = None;
        for (((d, pod), decision), delayed) in demands
            .into_iter()
            .zip(pods)
            .zip(plan.decisions)
            .zip(delayed)
        {
            let k = format!("{}/{}", d.namespace, d.name);
            match decision {
                Decision::Bind { node } => {
                    let labels = if delayed.is_empty() {
                        BTreeMap::new()
                    } else {
                        st.nodes
                            .get(&node)
                            .and_then(|n| n.metadata.labels.clone())
                            .unwrap_or_default()
                    };
                    // The plan counted it in the snapshot already.
                    st.unbound.remove(&k);
                    st.assumed.insert(k.clone());
                    st.counted.insert(k.clone(), (node.clone(), d));
                    let (client, report, tx) = (self.client.clone(), self.report, tx.clone());
                    let commits = commits.clone();
                    let stats = self.stats.clone();
                    let claims_changed = st.claims_changed.clone();
                    tokio::spawn(async move {
                        let _permit = commits.acquire_owned().await;
                        // Claims waiting for the pod's node learn it first.
                        let r = match binding::prebind(
                            &client,
                            &delayed,
                            &node,
                            &labels,
                            &claims_changed,
                        )
                        .await
                        {
                            Ok(()) => bind(&client, report, &pod, &node).await,
                            Err(e) => Err(e),
                        };
                        if r.is_ok() {
                            stats
                                .bound
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        let _ = tx.send(Change::Bound(k, r));
                    });
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
                    let preempted = self.preempt(&pod, &d, &snapshot, placed).await;
                    let message = match preempted {
                        Some(node) => {
                            format!("{message} Preempting lower-priority pods on {node}.")
                        }
                        None => message,
                    };
                    self.unschedulable(&pod, &message).await;
                }
            }
        }
        st.snapshot = Some(snapshot);
        for (pod, why) in invalid {
            self.wait(st, &key(&pod));
            self.unschedulable(&pod, &why).await;
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
                        crate::owned::event(
                            &self.client,
                            SCHEDULER,
                            &*victim,
                            "Normal",
                            "Preempted",
                            &format!("Preempted by pod {uid} on node {node}"),
                        );
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
        crate::owned::event(
            &self.client,
            SCHEDULER,
            pod,
            "Warning",
            "FailedScheduling",
            message,
        );
    }
}

/// Commit one placement through `pods/{name}/binding`.
/// Whether the loop is held from placing pods.
fn holding(hold: &Option<tokio::sync::watch::Receiver<bool>>) -> bool {
    hold.as_ref().is_some_and(|h| *h.borrow())
}

async fn bind(client: &Client, report: bool, pod: &Pod, node: &str) -> Result<(), ClientError> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let path = format!("/api/v1/namespaces/{ns}/pods/{name}/binding");
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            ..Default::default()
        },
    };
    let body = serde_json::to_vec(&binding).expect("a Binding always serializes");
    client
        .request(
            http::Method::POST,
            &path,
            "application/json",
            Bytes::from(body),
        )
        .await?;
    if report {
        info!(pod = %format!("{ns}/{name}"), node, "pod bound");
        crate::owned::event(
            client,
            SCHEDULER,
            pod,
            "Normal",
            "Scheduled",
            &format!("Successfully assigned {ns}/{name} to {node}"),
        );
    }
    Ok(())
}

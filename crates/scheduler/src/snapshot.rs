//! The cluster as the scheduler sees it: nodes in flat, index-addressed arrays (allocatable
//! and requested resources side by side, one row per node), so that checking and scoring a
//! node is arithmetic on a few cache lines.

use std::collections::{BTreeMap, HashMap};

use api::k8s_openapi::api::core::v1::{Node, Pod, Taint};
use api::quantity::Quantity;

use crate::demand::{Demand, HostPort};

/// The fixed resource columns; extended resources follow them.
pub(crate) const CPU: usize = 0;
pub(crate) const MEMORY: usize = 1;
pub(crate) const PODS: usize = 3;
const FIXED: [&str; 4] = ["cpu", "memory", "ephemeral-storage", "pods"];

pub struct Snapshot {
    pub(crate) names: Vec<String>,
    index: HashMap<String, usize>,
    /// Resource columns: `FIXED`, then extended resources in the order first seen.
    columns: Vec<String>,
    /// Allocatable per node, `columns.len()` values per row.
    allocatable: Vec<i64>,
    requested: Vec<i64>,
    /// CPU and memory requested as scoring counts them.
    pub(crate) score_requested: Vec<[i64; 2]>,
    pub(crate) labels: Vec<BTreeMap<String, String>>,
    pub(crate) taints: Vec<Vec<Taint>>,
    pub(crate) unschedulable: Vec<bool>,
    pub(crate) ports: Vec<Vec<HostPort>>,
    /// Namespace and labels of each pod on the node, for topology spread.
    pub(crate) pods_on: Vec<Vec<(String, BTreeMap<String, String>)>>,
    /// Required anti-affinity terms of the pods placed. They keep matching pods out of the
    /// term's domain, whoever comes later.
    pub(crate) anti_terms: Vec<PlacedTerm>,
    /// Terms of the pods placed that score the pods coming later, with their weight
    /// (kube-scheduler's symmetric inter-pod scoring): a preferred affinity term adds its
    /// weight to the nodes of its domain for the pods it selects, a preferred anti-affinity
    /// term takes it away, a required affinity term adds `HARD_AFFINITY_WEIGHT`.
    pub(crate) scored_terms: Vec<(i64, PlacedTerm)>,
    /// Bumped whenever a node's usage changes, so cached evaluations know they are stale.
    pub(crate) version: Vec<u32>,
    /// Labels of each namespace, for inter-pod terms with a namespace selector.
    pub(crate) namespaces: crate::demand::NamespaceLabels,
}

/// What a required affinity term of a placed pod weighs in the scores of the pods it selects
/// (kube-scheduler's `hardPodAffinityWeight`, 1 by default).
pub(crate) const HARD_AFFINITY_WEIGHT: i64 = 1;

/// An inter-pod term of a placed pod.
pub(crate) struct PlacedTerm {
    pub node: usize,
    pub namespace: String,
    /// The pod's name, so that the term goes when the pod does.
    pub pod: String,
    pub term: crate::demand::PodTerm,
}

impl PlacedTerm {
    /// Whether the term is about `d`.
    pub(crate) fn selects(&self, s: &Snapshot, d: &Demand) -> bool {
        self.term
            .matches(&s.namespaces, &self.namespace, &d.namespace, &d.labels)
    }

    /// The term's domain: its node's value of the topology key (none without the label).
    pub(crate) fn domain<'s>(&self, s: &'s Snapshot) -> Option<&'s str> {
        s.labels[self.node].get(&self.term.key).map(String::as_str)
    }
}

/// The taint Kubernetes' node lifecycle puts on a node that is not Ready (`not-ready` when it
/// says so or has not said yet, `unreachable` when its agent stopped reporting), so that only
/// pods tolerating it land there.
fn condition_taint(n: &Node) -> Option<Taint> {
    let ready = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.as_str());
    let key = match ready {
        Some("True") => return None,
        Some("Unknown") => "node.kubernetes.io/unreachable",
        _ => "node.kubernetes.io/not-ready",
    };
    Some(Taint {
        key: key.into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    })
}

fn quantity(resource: &str, q: &str) -> i64 {
    let q = Quantity::parse(q).unwrap_or(Quantity::ZERO);
    if resource == "cpu" {
        q.milli()
    } else {
        q.value()
    }
}

impl Snapshot {
    /// Nodes, and the pods already bound (ended pods hold nothing).
    pub fn new<'a>(
        nodes: impl IntoIterator<Item = &'a Node>,
        pods: impl IntoIterator<Item = &'a Pod>,
    ) -> Snapshot {
        let mut s = Snapshot {
            names: Vec::new(),
            index: HashMap::new(),
            columns: FIXED.iter().map(|c| c.to_string()).collect(),
            allocatable: Vec::new(),
            requested: Vec::new(),
            score_requested: Vec::new(),
            labels: Vec::new(),
            taints: Vec::new(),
            unschedulable: Vec::new(),
            ports: Vec::new(),
            pods_on: Vec::new(),
            anti_terms: Vec::new(),
            scored_terms: Vec::new(),
            version: Vec::new(),
            namespaces: Default::default(),
        };
        for n in nodes {
            s.add_node(n);
        }
        for p in pods {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            if matches!(phase, Some("Succeeded" | "Failed")) {
                continue;
            }
            let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
            if let (Some(i), Ok(d)) = (node.and_then(|n| s.node(n)), Demand::usage(p)) {
                s.assume(i, &d);
            }
        }
        s
    }

    /// Tell the snapshot the namespaces' labels (for terms that select namespaces by label).
    pub fn with_namespaces(mut self, namespaces: crate::demand::NamespaceLabels) -> Snapshot {
        self.namespaces = namespaces;
        self
    }

    fn add_node(&mut self, n: &Node) {
        let name = n.metadata.name.clone().unwrap_or_default();
        let alloc = n
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
        for k in alloc.into_iter().flatten().map(|(k, _)| k) {
            self.column_or_add(k);
        }
        let width = self.columns.len();
        let mut row = vec![0; width];
        for (k, v) in alloc.into_iter().flatten() {
            row[self.column(k).expect("added above")] = quantity(k, &v.0);
        }
        self.allocatable.extend(row);
        self.requested.extend(std::iter::repeat_n(0, width));
        self.index.insert(name.clone(), self.names.len());
        self.names.push(name);
        self.score_requested.push([0, 0]);
        self.labels
            .push(n.metadata.labels.clone().unwrap_or_default());
        let spec = n.spec.as_ref();
        let mut taints = spec.and_then(|s| s.taints.clone()).unwrap_or_default();
        if let Some(t) = condition_taint(n)
            && !taints.iter().any(|x| x.key == t.key)
        {
            taints.push(t);
        }
        self.taints.push(taints);
        self.unschedulable
            .push(spec.and_then(|s| s.unschedulable) == Some(true));
        self.ports.push(Vec::new());
        self.pods_on.push(Vec::new());
        self.version.push(0);
    }

    pub(crate) fn column(&self, resource: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == resource)
    }

    /// Add a resource column (widening every row) if it is new.
    fn column_or_add(&mut self, resource: &str) -> usize {
        if let Some(i) = self.column(resource) {
            return i;
        }
        let old = self.columns.len();
        self.columns.push(resource.to_string());
        for m in [&mut self.allocatable, &mut self.requested] {
            let rows: Vec<Vec<i64>> = m.chunks(old.max(1)).map(|r| r.to_vec()).collect();
            m.clear();
            for mut r in rows {
                r.push(0);
                m.extend(r);
            }
        }
        old
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn node(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    pub(crate) fn width(&self) -> usize {
        self.columns.len()
    }

    pub(crate) fn allocatable(&self, node: usize, column: usize) -> i64 {
        self.allocatable[node * self.width() + column]
    }

    pub(crate) fn requested(&self, node: usize, column: usize) -> i64 {
        self.requested[node * self.width() + column]
    }

    /// Count `d` as running on node `i` from now on.
    pub fn assume(&mut self, i: usize, d: &Demand) {
        let w = self.width();
        for (k, v) in &d.requests {
            // A resource no node offers cannot have been placed; it has no column to fill.
            if let Some(c) = self.column(k) {
                self.requested[i * w + c] += v;
            }
        }
        self.requested[i * w + PODS] += 1;
        self.score_requested[i][0] += d.score_cpu;
        self.score_requested[i][1] += d.score_memory;
        self.ports[i].extend(d.host_ports.iter().cloned());
        self.pods_on[i].push((d.namespace.clone(), d.labels.clone()));
        let placed = |term: &crate::demand::PodTerm| PlacedTerm {
            node: i,
            namespace: d.namespace.clone(),
            pod: d.name.clone(),
            term: term.clone(),
        };
        self.anti_terms
            .extend(d.pod_anti_affinity.iter().map(placed));
        let weighted = (d.pod_affinity.iter())
            .map(|t| (HARD_AFFINITY_WEIGHT, t))
            .chain((d.preferred_pod_affinity.iter()).map(|(w, t)| (i64::from(*w), t)))
            .chain((d.preferred_pod_anti_affinity.iter()).map(|(w, t)| (-i64::from(*w), t)));
        self.scored_terms
            .extend(weighted.map(|(w, t)| (w, placed(t))));
        self.version[i] = self.version[i].wrapping_add(1);
    }

    /// Stop counting `d` on node `i`: the pod `assume` counted there has gone (or ended, or
    /// its binding failed). `d` must be what was assumed.
    pub fn forget(&mut self, i: usize, d: &Demand) {
        let w = self.width();
        for (k, v) in &d.requests {
            if let Some(c) = self.column(k) {
                self.requested[i * w + c] -= v;
            }
        }
        self.requested[i * w + PODS] -= 1;
        self.score_requested[i][0] -= d.score_cpu;
        self.score_requested[i][1] -= d.score_memory;
        for p in &d.host_ports {
            if let Some(j) = self.ports[i].iter().position(|q| q == p) {
                self.ports[i].swap_remove(j);
            }
        }
        if let Some(j) = self.pods_on[i]
            .iter()
            .position(|(ns, l)| *ns == d.namespace && *l == d.labels)
        {
            self.pods_on[i].swap_remove(j);
        }
        let theirs = |t: &PlacedTerm| t.node == i && t.namespace == d.namespace && t.pod == d.name;
        if !d.pod_anti_affinity.is_empty() {
            self.anti_terms.retain(|t| !theirs(t));
        }
        if !d.pod_affinity.is_empty() || d.has_pod_preferences() {
            self.scored_terms.retain(|(_, t)| !theirs(t));
        }
        self.version[i] = self.version[i].wrapping_add(1);
    }

    /// Replace the namespaces' labels (they changed).
    pub fn set_namespaces(&mut self, namespaces: crate::demand::NamespaceLabels) {
        self.namespaces = namespaces;
    }

    /// The share of a node's allocatable CPU and memory requested, for reports.
    pub fn allocated(&self) -> (i64, i64, i64, i64) {
        let (mut cpu, mut cpu_total, mut mem, mut mem_total) = (0, 0, 0, 0);
        for i in 0..self.len() {
            cpu += self.requested(i, CPU);
            cpu_total += self.allocatable(i, CPU);
            mem += self.requested(i, MEMORY);
            mem_total += self.allocatable(i, MEMORY);
        }
        (cpu, cpu_total, mem, mem_total)
    }

    /// Nodes with at least one pod.
    pub fn nodes_used(&self) -> usize {
        (0..self.len())
            .filter(|i| self.requested(*i, PODS) > 0)
            .count()
    }
}

//! Placing a batch of pods on a snapshot: every decision is assumed into the snapshot before
//! the next pod is placed, so a plan never double-books a node.

use std::collections::{BTreeMap, BinaryHeap, HashMap};

use crate::demand::Demand;
use crate::filter::{
    Reason, dynamic_reasons, has_room, message, needs_pod_rules, pod_rules, pod_rules_reason,
    static_reason,
};
use crate::score::{normalize, pod_preferences, resource, static_raw};
use crate::snapshot::Snapshot;
use crate::{Config, Strategy};

/// What became of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Bind {
        node: String,
    },
    /// No node can take it; `message` is Kubernetes' "0/N nodes are available: ..." text.
    Unschedulable {
        message: String,
        reasons: BTreeMap<Reason, usize>,
    },
}

/// Decisions for the pods given, in their order.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub decisions: Vec<Decision>,
    /// Nodes whose feasibility or score was computed, over the whole batch.
    pub nodes_evaluated: u64,
    /// Time spent deciding each pod, in nanoseconds (a class's first pod pays for its
    /// evaluation of every node).
    pub nanos: Vec<u32>,
}

/// A node in a class's heap: the best score on top, ties broken by a random draw; stale once
/// the node's version moves on.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    score: i64,
    tie: u32,
    node: usize,
    version: u32,
}

/// What a class of many pods keeps while the batch is placed.
struct Class {
    /// Static score of each node (meaningful for statically feasible nodes only).
    statics: Vec<i64>,
    heap: BinaryHeap<Entry>,
}

/// How many feasible nodes a pod of its own class looks for before choosing.
fn nodes_to_find(n: usize, pct: Option<u8>) -> usize {
    if n < 100 {
        return n;
    }
    let pct = match pct {
        Some(p) => usize::from(p.clamp(1, 100)),
        None => 50usize.saturating_sub(n / 125).max(5),
    };
    (n * pct / 100).max(100)
}

/// Why each node refuses `d`, as a histogram.
fn reasons(s: &Snapshot, d: &Demand) -> BTreeMap<Reason, usize> {
    let mut out = BTreeMap::new();
    let rules = pod_rules(s, d);
    for i in 0..s.len() {
        let rs = match static_reason(s, i, d) {
            Some(r) => vec![r],
            None => {
                let rs = dynamic_reasons(s, i, d);
                match &rules {
                    Some(r) if rs.is_empty() => pod_rules_reason(s, i, d, r).into_iter().collect(),
                    _ => rs,
                }
            }
        };
        for r in rs {
            *out.entry(r).or_default() += 1;
        }
    }
    out
}

fn unschedulable(s: &Snapshot, d: &Demand) -> Decision {
    let reasons = reasons(s, d);
    Decision::Unschedulable {
        message: message(s.len(), &reasons),
        reasons,
    }
}

impl Class {
    fn build(
        s: &Snapshot,
        d: &Demand,
        strategy: Strategy,
        rng: &mut fastrand::Rng,
        evaluated: &mut u64,
    ) -> Class {
        let n = s.len();
        let mut feasible = Vec::new();
        let mut raw = Vec::new();
        for i in 0..n {
            if static_reason(s, i, d).is_none() {
                feasible.push(i);
                raw.push(static_raw(s, i, d));
            }
        }
        *evaluated += n as u64;
        let mut statics = vec![0; n];
        for (i, v) in feasible.iter().zip(normalize(&raw)) {
            statics[*i] = v;
        }
        let heap = feasible
            .into_iter()
            .filter(|i| has_room(s, *i, d))
            .map(|i| Entry {
                score: resource(s, i, d, strategy) + statics[i],
                tie: rng.u32(..),
                node: i,
                version: s.version[i],
            })
            .collect();
        Class { statics, heap }
    }
}

/// Place `pods` (in the order given: sort by priority first) on the snapshot, assuming each
/// placement before the next.
pub fn schedule(s: &mut Snapshot, pods: &[Demand], cfg: &Config) -> Plan {
    let strategy = cfg.strategy;
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let mut per_class: HashMap<u64, usize> = HashMap::new();
    for d in pods {
        *per_class.entry(d.class).or_default() += 1;
    }
    let mut classes: HashMap<u64, Class> = HashMap::new();
    let mut plan = Plan::default();
    let n = s.len();
    let mut start = if n == 0 { 0 } else { rng.usize(..n) };
    for d in pods {
        let began = std::time::Instant::now();
        // A placement changes spread counts and inter-pod matches across a whole domain,
        // which a class's per-node heap cannot follow: such pods are placed one by one.
        let chosen = if per_class[&d.class] > 1 && !needs_pod_rules(s, d) {
            let class = classes.entry(d.class).or_insert_with(|| {
                Class::build(s, d, strategy, &mut rng, &mut plan.nodes_evaluated)
            });
            loop {
                let Some(top) = class.heap.pop() else {
                    break None;
                };
                if top.version == s.version[top.node] {
                    break Some(top.node);
                }
                // The node changed since it was scored: look again.
                plan.nodes_evaluated += 1;
                if has_room(s, top.node, d) {
                    class.heap.push(Entry {
                        score: resource(s, top.node, d, strategy) + class.statics[top.node],
                        version: s.version[top.node],
                        ..top
                    });
                }
            }
        } else {
            // A pod of its own: scan from where the last one stopped, until enough feasible
            // nodes are found, and take the best of those.
            let want = nodes_to_find(n, cfg.percentage_of_nodes_to_score);
            let rules = pod_rules(s, d);
            let mut found = Vec::new();
            let mut raw = Vec::new();
            let mut looked = 0;
            while looked < n && found.len() < want {
                let i = (start + looked) % n;
                looked += 1;
                if static_reason(s, i, d).is_none()
                    && has_room(s, i, d)
                    && rules
                        .as_ref()
                        .is_none_or(|r| pod_rules_reason(s, i, d, r).is_none())
                {
                    found.push(i);
                    raw.push(static_raw(s, i, d));
                }
            }
            plan.nodes_evaluated += looked as u64;
            if n > 0 {
                start = (start + looked) % n;
            }
            let statics = normalize(&raw);
            let around = pod_preferences(s, d, &found);
            found
                .iter()
                .zip(statics)
                .zip(around)
                .map(|((i, st), ar)| (resource(s, *i, d, strategy) + st + ar, rng.u32(..), *i))
                .max()
                .map(|(_, _, i)| i)
        };
        let decision = match chosen {
            Some(i) => {
                s.assume(i, d);
                if let Some(class) = classes.get_mut(&d.class)
                    && has_room(s, i, d)
                {
                    class.heap.push(Entry {
                        score: resource(s, i, d, strategy) + class.statics[i],
                        tie: rng.u32(..),
                        node: i,
                        version: s.version[i],
                    });
                }
                Decision::Bind {
                    node: s.name(i).to_string(),
                }
            }
            None => unschedulable(s, d),
        };
        plan.decisions.push(decision);
        plan.nanos
            .push(u32::try_from(began.elapsed().as_nanos()).unwrap_or(u32::MAX));
    }
    plan
}

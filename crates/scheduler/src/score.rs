//! Scoring feasible nodes, with kube-scheduler's plugins and default weights: the resource
//! strategy (least-allocated spreads, most-allocated packs) plus balanced allocation, weight 1
//! each; untolerated PreferNoSchedule taints, weight 3; preferred node affinity, weight 2;
//! preferred inter-pod (anti-)affinity, weight 2; ScheduleAnyway topology spread, weight 2.
//! Each plugin scores 0-100.

use std::collections::HashMap;
use std::str::FromStr;

use crate::demand::Demand;
use crate::filter::{term_holds, tolerates};
use crate::snapshot::{CPU, MEMORY, Snapshot};

/// How resource use is scored: Borg's choice between spreading (E-PVM-like, room left for
/// bursts and failures) and packing (best fit, fewer machines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Prefer the nodes with the most room left.
    LeastAllocated,
    /// Prefer the fullest nodes that still fit.
    MostAllocated,
    /// Prefer nodes whose CPU and memory use stay in proportion.
    Balanced,
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Strategy, String> {
        match s {
            "least-allocated" | "LeastAllocated" => Ok(Strategy::LeastAllocated),
            "most-allocated" | "MostAllocated" => Ok(Strategy::MostAllocated),
            "balanced" | "BalancedAllocation" => Ok(Strategy::Balanced),
            other => Err(format!(
                "unknown scoring strategy {other:?} (least-allocated, most-allocated, balanced)"
            )),
        }
    }
}

const W_TAINT: i64 = 3;
const W_AFFINITY: i64 = 2;
const W_POD_AFFINITY: i64 = 2;
const W_SPREAD: i64 = 2;

/// How many pods matching `matches(namespace, labels)` each domain of node label `key` holds.
fn per_domain<'s>(
    s: &'s Snapshot,
    key: &str,
    matches: impl Fn(&str, &std::collections::BTreeMap<String, String>) -> bool,
) -> HashMap<&'s str, i64> {
    let mut out: HashMap<&str, i64> = HashMap::new();
    for i in 0..s.len() {
        let Some(domain) = s.labels[i].get(key) else {
            continue;
        };
        let n = s.pods_on[i].iter().filter(|(ns, l)| matches(ns, l)).count() as i64;
        *out.entry(domain.as_str()).or_default() += n;
    }
    out
}

/// The scores that depend on the pods around, for the nodes `found`, normalized over them:
/// preferred inter-pod terms, both ways (each matching pod in a node's domain adds the term's
/// weight, or takes it away for anti-affinity; and so does each placed pod's term that selects
/// this pod, for the nodes of that pod's domain) and ScheduleAnyway spread (fewer matching pods in the
/// node's domain is better; a node without the topology label scores nothing).
pub(crate) fn pod_preferences(s: &Snapshot, d: &Demand, found: &[usize]) -> Vec<i64> {
    let theirs: Vec<(i64, &str, &str)> = s
        .scored_terms
        .iter()
        .filter(|(_, t)| t.selects(s, d))
        .filter_map(|(w, t)| Some((*w, t.term.key.as_str(), t.domain(s)?)))
        .collect();
    if !d.has_pod_preferences() && theirs.is_empty() {
        return vec![0; found.len()];
    }
    let mut affinity = vec![0i64; found.len()];
    // The placed pods' terms about this pod: their weight on every node of their domain.
    for (w, key, domain) in theirs {
        for (a, i) in affinity.iter_mut().zip(found) {
            if s.labels[*i].get(key).is_some_and(|v| v == domain) {
                *a += w;
            }
        }
    }
    let weighted = d
        .preferred_pod_affinity
        .iter()
        .map(|(w, t)| (i64::from(*w), t))
        .chain(
            d.preferred_pod_anti_affinity
                .iter()
                .map(|(w, t)| (-i64::from(*w), t)),
        );
    for (w, t) in weighted {
        let counts = per_domain(s, &t.key, |ns, l| {
            t.matches(&s.namespaces, &d.namespace, ns, l)
        });
        for (a, i) in affinity.iter_mut().zip(found) {
            if let Some(domain) = s.labels[*i].get(&t.key) {
                *a += w * counts.get(domain.as_str()).copied().unwrap_or(0);
            }
        }
    }
    let (lo, hi) = (
        affinity.iter().copied().min().unwrap_or(0),
        affinity.iter().copied().max().unwrap_or(0),
    );
    let affinity = affinity.iter().map(|a| {
        if hi > lo {
            (a - lo) * 100 / (hi - lo)
        } else {
            0
        }
    });

    let soft: Vec<_> = d.spread.iter().filter(|c| !c.hard).collect();
    let mut crowd: Vec<Option<i64>> = vec![Some(0); found.len()];
    for c in &soft {
        let counts = per_domain(s, &c.key, |ns, l| {
            ns == d.namespace && c.selector.matches(l)
        });
        for (n, i) in crowd.iter_mut().zip(found) {
            *n = match (*n, s.labels[*i].get(&c.key)) {
                (Some(n), Some(domain)) => {
                    Some(n + counts.get(domain.as_str()).copied().unwrap_or(0))
                }
                _ => None,
            };
        }
    }
    let known = crowd.iter().flatten().copied();
    let (lo, hi) = (known.clone().min().unwrap_or(0), known.max().unwrap_or(0));
    let spread = crowd.iter().map(|n| match n {
        _ if soft.is_empty() => 0,
        None => 0,
        Some(_) if hi == 0 => 100,
        Some(n) => (hi + lo - n) * 100 / hi,
    });
    affinity
        .zip(spread)
        .map(|(a, sp)| W_POD_AFFINITY * a + W_SPREAD * sp)
        .collect()
}

/// Raw inputs of the scores that do not change with the node's use: untolerated
/// PreferNoSchedule taints, and the weight of preferred affinity terms the node matches.
pub(crate) fn static_raw(s: &Snapshot, i: usize, d: &Demand) -> (i64, i64) {
    let taints = s.taints[i]
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule")
        .filter(|t| !d.tolerations.iter().any(|tol| tolerates(tol, t)))
        .count() as i64;
    let affinity = d
        .preferred
        .iter()
        .filter(|(_, t)| term_holds(t, &s.names[i], &s.labels[i]))
        .map(|(w, _)| i64::from(*w))
        .sum();
    (taints, affinity)
}

/// Weighted static scores, normalized over the nodes being compared (`raw` of each).
pub(crate) fn normalize(raw: &[(i64, i64)]) -> Vec<i64> {
    let max_taints = raw.iter().map(|r| r.0).max().unwrap_or(0);
    let max_affinity = raw.iter().map(|r| r.1).max().unwrap_or(0);
    raw.iter()
        .map(|(t, a)| {
            let taint = if max_taints == 0 {
                100
            } else {
                (max_taints - t) * 100 / max_taints
            };
            let affinity = if max_affinity == 0 {
                0
            } else {
                a * 100 / max_affinity
            };
            W_TAINT * taint + W_AFFINITY * affinity
        })
        .collect()
}

/// The resource part of node `i`'s score were `d` placed there.
pub(crate) fn resource(s: &Snapshot, i: usize, d: &Demand, strategy: Strategy) -> i64 {
    let used = s.score_requested[i];
    let parts = [
        (used[0] + d.score_cpu, s.allocatable(i, CPU)),
        (used[1] + d.score_memory, s.allocatable(i, MEMORY)),
    ];
    let fraction = |(req, alloc): (i64, i64)| {
        if alloc <= 0 {
            1.0
        } else {
            (req as f64 / alloc as f64).min(1.0)
        }
    };
    let (fc, fm) = (fraction(parts[0]), fraction(parts[1]));
    // Two resources: the standard deviation of their shares is half their difference.
    let balanced = ((1.0 - (fc - fm).abs() / 2.0) * 100.0) as i64;
    let least = (((1.0 - fc) + (1.0 - fm)) * 50.0) as i64;
    let most = ((fc + fm) * 50.0) as i64;
    match strategy {
        Strategy::LeastAllocated => least + balanced,
        Strategy::MostAllocated => most + balanced,
        Strategy::Balanced => 2 * balanced,
    }
}

//! Preemption: for a pod that fits nowhere, the node where evicting pods of lower priority
//! would make room, and the fewest, least important of them to evict. As in kube-scheduler: a
//! node qualifies if the pod passes its static filters there and fits once every lower
//! priority pod is gone; then victims are reprieved while the pod still fits, first those
//! whose eviction would break a PodDisruptionBudget, then the rest, most important first in
//! each group; the node with the fewest budget violations wins, then the one whose most
//! important victim matters least, then the one with fewest victims, then the smallest sum of
//! their priorities. Budgets are a preference here, as in Kubernetes, not a guarantee.

use crate::demand::{Demand, HostPort};
use crate::filter::static_reason;
use crate::snapshot::{PODS, Snapshot};

/// A placed pod that preemption could evict.
#[derive(Clone, Debug)]
pub struct Placed {
    pub priority: i32,
    pub demand: Demand,
    /// The disruption budgets (indexes into `preemption`'s `allowed`) that cover this pod.
    pub budgets: Vec<usize>,
}

/// The chosen node and the indexes (into that node's `placed` list) of the pods to evict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preemption {
    pub node: usize,
    pub victims: Vec<usize>,
    /// How many victims' eviction breaks a budget.
    pub violations: usize,
}

/// Does `d` fit on node `i` once the pods in `gone` have left?
fn fits_without(s: &Snapshot, i: usize, d: &Demand, gone: &[&Demand]) -> bool {
    if s.requested(i, PODS) - gone.len() as i64 + 1 > s.allocatable(i, PODS) {
        return false;
    }
    for (k, v) in &d.requests {
        let unlimited = k == api::kinds::storage::VOLUMES_RESOURCE
            && s.column(k).is_none_or(|c| s.allocatable(i, c) == 0);
        if unlimited {
            continue;
        }
        let Some(c) = s.column(k) else { return false };
        let freed: i64 = gone
            .iter()
            .map(|g| g.requests.get(k).copied().unwrap_or(0))
            .sum();
        if s.requested(i, c) - freed + v > s.allocatable(i, c) {
            return false;
        }
    }
    // Host ports still held by the pods that stay.
    let mut held: Vec<&HostPort> = s.ports[i].iter().collect();
    for g in gone {
        for p in &g.host_ports {
            if let Some(at) = held.iter().position(|q| *q == p) {
                held.swap_remove(at);
            }
        }
    }
    !d.host_ports
        .iter()
        .any(|p| held.iter().any(|q| p.conflicts(q)))
}

/// Split `candidates` (most important first) into those whose eviction, in that order, would
/// break a budget and those it would not; `allowed[b]` is budget b's disruptions allowed.
fn by_budget(on: &[Placed], candidates: &[usize], allowed: &[i32]) -> (Vec<usize>, Vec<usize>) {
    let mut left = allowed.to_vec();
    let (mut breaking, mut fine) = (Vec::new(), Vec::new());
    for j in candidates {
        let budgets = &on[*j].budgets;
        if budgets
            .iter()
            .any(|b| left.get(*b).is_some_and(|n| *n <= 0))
        {
            breaking.push(*j);
        } else {
            fine.push(*j);
        }
        for b in budgets {
            if let Some(n) = left.get_mut(*b) {
                *n -= 1;
            }
        }
    }
    (breaking, fine)
}

/// Where `d`, of `priority`, could run by preempting; `placed[i]` lists node i's pods and
/// `allowed` the disruptions each budget allows now.
pub fn preemption(
    s: &Snapshot,
    d: &Demand,
    priority: i32,
    placed: &[Vec<Placed>],
    allowed: &[i32],
) -> Option<Preemption> {
    let mut best: Option<((usize, i32, usize, i64), Preemption)> = None;
    for i in 0..s.len() {
        if static_reason(s, i, d).is_some() {
            continue;
        }
        let on = placed.get(i).map(Vec::as_slice).unwrap_or_default();
        let mut lower: Vec<usize> = (0..on.len())
            .filter(|j| on[*j].priority < priority)
            .collect();
        if lower.is_empty() {
            continue;
        }
        let all: Vec<&Demand> = lower.iter().map(|j| &on[*j].demand).collect();
        if !fits_without(s, i, d, &all) {
            continue;
        }
        // Reprieve those a budget protects first, then the rest, the most important first.
        lower.sort_by_key(|j| std::cmp::Reverse(on[*j].priority));
        let (breaking, fine) = by_budget(on, &lower, allowed);
        let mut victims: Vec<usize> = lower.clone();
        for j in breaking.iter().chain(&fine) {
            let without: Vec<usize> = victims.iter().copied().filter(|v| v != j).collect();
            let gone: Vec<&Demand> = without.iter().map(|v| &on[*v].demand).collect();
            if fits_without(s, i, d, &gone) {
                victims = without;
            }
        }
        if victims.is_empty() {
            // It fits already; plain scheduling will place it.
            continue;
        }
        let top = victims
            .iter()
            .map(|v| on[*v].priority)
            .max()
            .unwrap_or(i32::MIN);
        let sum: i64 = victims.iter().map(|v| i64::from(on[*v].priority)).sum();
        let ordered: Vec<usize> = lower
            .iter()
            .copied()
            .filter(|j| victims.contains(j))
            .collect();
        let violations = by_budget(on, &ordered, allowed).0.len();
        let rank = (violations, top, victims.len(), sum);
        if best.as_ref().is_none_or(|(r, _)| rank < *r) {
            victims.sort_unstable();
            best = Some((
                rank,
                Preemption {
                    node: i,
                    victims,
                    violations,
                },
            ));
        }
    }
    best.map(|(_, p)| p)
}

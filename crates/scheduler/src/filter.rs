//! Feasibility: why a node cannot take a pod, in kube-scheduler's words. Checks that do not
//! depend on what runs on the node (`static_reason`) are made once per equivalence class;
//! the others (`dynamic_reasons`) after every placement on the node.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use api::k8s_openapi::api::core::v1::{
    NodeSelectorRequirement, NodeSelectorTerm, Taint, Toleration,
};

use crate::demand::Demand;
use crate::snapshot::{PODS, Snapshot};

/// Why a node was ruled out.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    Unschedulable,
    NodeName,
    Affinity,
    Taint { key: String, value: String },
    Ports,
    TooManyPods,
    Insufficient(String),
    Spread,
    SpreadMissingLabel,
    PodAffinity,
    PodAntiAffinity,
    ExistingAntiAffinity,
    VolumeNodeAffinity,
    NoVolumeToBind,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Unschedulable => write!(f, "node(s) were unschedulable"),
            Reason::NodeName => write!(f, "node(s) didn't match the requested node name"),
            Reason::Affinity => write!(f, "node(s) didn't match Pod's node affinity/selector"),
            Reason::Taint { key, value } => {
                write!(f, "node(s) had untolerated taint {{{key}: {value}}}")
            }
            Reason::Ports => write!(
                f,
                "node(s) didn't have free ports for the requested pod ports"
            ),
            Reason::TooManyPods => write!(f, "Too many pods"),
            Reason::Insufficient(r) if r == api::kinds::storage::VOLUMES_RESOURCE => {
                write!(f, "node(s) exceed max volume count")
            }
            Reason::Insufficient(r) => write!(f, "Insufficient {r}"),
            Reason::Spread => write!(f, "node(s) didn't match pod topology spread constraints"),
            Reason::PodAffinity => write!(f, "node(s) didn't match pod affinity rules"),
            Reason::PodAntiAffinity => write!(f, "node(s) didn't match pod anti-affinity rules"),
            Reason::ExistingAntiAffinity => {
                write!(
                    f,
                    "node(s) didn't satisfy existing pods anti-affinity rules"
                )
            }
            Reason::VolumeNodeAffinity => write!(f, "node(s) had volume node affinity conflict"),
            Reason::NoVolumeToBind => write!(
                f,
                "node(s) didn't find available persistent volumes to bind"
            ),
            Reason::SpreadMissingLabel => write!(
                f,
                "node(s) didn't match pod topology spread constraints (missing required label)"
            ),
        }
    }
}

/// Whether `t` tolerates `taint` (Kubernetes' rules: an empty effect matches every effect,
/// `Exists` with no key matches every taint, `Equal` is the default operator).
pub(crate) fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty())
        && e != taint.effect
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        "Equal" => {
            key == taint.key
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

fn requirement_holds(r: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(&r.key);
    let values = r.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    let compare = |want: fn(i64, i64) -> bool| match (
        value.and_then(|v| number(v)),
        values.first().and_then(|v| number(v)),
    ) {
        (Some(a), Some(b)) => want(a, b),
        _ => false,
    };
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => compare(|a, b| a > b),
        "Lt" => compare(|a, b| a < b),
        _ => false,
    }
}

/// A node selector term holds when all its label expressions do (field expressions on
/// `metadata.name` are honoured too); an empty term matches nothing, as in Kubernetes.
pub(crate) fn term_holds(
    t: &NodeSelectorTerm,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let exprs = t.match_expressions.as_deref().unwrap_or_default();
    let fields = t.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let name_labels = BTreeMap::from([("metadata.name".to_string(), name.to_string())]);
    exprs.iter().all(|r| requirement_holds(r, labels))
        && fields.iter().all(|r| requirement_holds(r, &name_labels))
}

/// The first reason node `i` can never take pods of `d`'s class, whatever runs there.
pub(crate) fn static_reason(s: &Snapshot, i: usize, d: &Demand) -> Option<Reason> {
    if s.unschedulable[i] {
        let cordon = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !d.tolerations.iter().any(|t| tolerates(t, &cordon)) {
            return Some(Reason::Unschedulable);
        }
    }
    if let Some(n) = &d.node_name
        && n != &s.names[i]
    {
        return Some(Reason::NodeName);
    }
    for taint in &s.taints[i] {
        if matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute")
            && !d.tolerations.iter().any(|t| tolerates(t, taint))
        {
            return Some(Reason::Taint {
                key: taint.key.clone(),
                value: taint.value.clone().unwrap_or_default(),
            });
        }
    }
    if !affinity_ok(s, i, d) {
        return Some(Reason::Affinity);
    }
    for v in &d.volumes {
        if !v
            .terms
            .iter()
            .any(|t| term_holds(t, &s.names[i], &s.labels[i]))
        {
            return Some(if v.bound {
                Reason::VolumeNodeAffinity
            } else {
                Reason::NoVolumeToBind
            });
        }
    }
    None
}

/// Whether node `i` satisfies the pod's node selector and required node affinity.
fn affinity_ok(s: &Snapshot, i: usize, d: &Demand) -> bool {
    let labels = &s.labels[i];
    d.node_selector
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
        && d.required
            .as_ref()
            .is_none_or(|terms| terms.iter().any(|t| term_holds(t, &s.names[i], labels)))
}

/// What a pod's spread constraints and inter-pod terms need to know about the pods around,
/// gathered once per pod: per hard spread constraint, how many matching pods each domain
/// holds (over the nodes its selector and affinity allow, as Kubernetes' default
/// `nodeAffinityPolicy: Honor` has it) and the smallest such count; per (anti-)affinity term,
/// the domains that hold a matching pod.
pub(crate) struct PodRules {
    spread: Vec<(HashMap<String, i64>, i64)>,
    anti: Vec<HashSet<String>>,
    /// `None` when no pod matches anywhere and the pod matches its own term: it may then
    /// start the group on any node.
    affinity: Vec<Option<HashSet<String>>>,
    /// (topology key, domain) pairs where a placed pod's anti-affinity keeps this pod out.
    forbidden: HashSet<(String, String)>,
}

/// Domains placed pods' required anti-affinity closes to `d`.
fn forbidden_by_others(s: &Snapshot, d: &Demand) -> HashSet<(String, String)> {
    s.anti_terms
        .iter()
        .filter(|a| a.selects(s, d))
        .filter_map(|a| Some((a.term.key.clone(), a.domain(s)?.to_string())))
        .collect()
}

/// Whether placing `d` depends on the pods around it: its own spread or inter-pod rules, or
/// placed pods' anti-affinity against it.
pub(crate) fn needs_pod_rules(s: &Snapshot, d: &Demand) -> bool {
    d.has_pod_rules()
        || s.anti_terms.iter().any(|a| a.selects(s, d))
        || s.scored_terms.iter().any(|(_, t)| t.selects(s, d))
}

pub(crate) fn pod_rules(s: &Snapshot, d: &Demand) -> Option<PodRules> {
    if !needs_pod_rules(s, d) {
        return None;
    }
    let spread = d
        .spread
        .iter()
        .filter(|c| c.hard)
        .map(|c| {
            let mut counts: HashMap<String, i64> = HashMap::new();
            for i in 0..s.len() {
                let Some(domain) = s.labels[i].get(&c.key) else {
                    continue;
                };
                if !affinity_ok(s, i, d) {
                    continue;
                }
                let n = s.pods_on[i]
                    .iter()
                    .filter(|(ns, l)| ns == &d.namespace && c.selector.matches(l))
                    .count() as i64;
                *counts.entry(domain.clone()).or_default() += n;
            }
            let min = counts.values().copied().min().unwrap_or(0);
            (counts, min)
        })
        .collect();
    let domains = |t: &crate::demand::PodTerm| {
        let mut out = HashSet::new();
        for i in 0..s.len() {
            if let Some(domain) = s.labels[i].get(&t.key)
                && s.pods_on[i]
                    .iter()
                    .any(|(ns, l)| t.matches(&s.namespaces, &d.namespace, ns, l))
            {
                out.insert(domain.clone());
            }
        }
        out
    };
    let anti = d.pod_anti_affinity.iter().map(domains).collect();
    let affinity = d
        .pod_affinity
        .iter()
        .map(|t| {
            let found = domains(t);
            let starts_group =
                found.is_empty() && t.matches(&s.namespaces, &d.namespace, &d.namespace, &d.labels);
            (!starts_group).then_some(found)
        })
        .collect();
    Some(PodRules {
        spread,
        anti,
        affinity,
        forbidden: forbidden_by_others(s, d),
    })
}

/// Whether placing the pod on node `i` would break a hard spread constraint or a required
/// inter-pod term (in kube-scheduler's order: spread, then affinity, then anti-affinity).
pub(crate) fn pod_rules_reason(s: &Snapshot, i: usize, d: &Demand, r: &PodRules) -> Option<Reason> {
    for ((counts, min), c) in r.spread.iter().zip(d.spread.iter().filter(|c| c.hard)) {
        let Some(domain) = s.labels[i].get(&c.key) else {
            return Some(Reason::SpreadMissingLabel);
        };
        let here = counts.get(domain).copied().unwrap_or(0);
        let own = i64::from(c.selector.matches(&d.labels));
        if here + own - min > i64::from(c.max_skew) {
            return Some(Reason::Spread);
        }
    }
    for (found, t) in r.affinity.iter().zip(&d.pod_affinity) {
        let Some(found) = found else { continue };
        if !s.labels[i]
            .get(&t.key)
            .is_some_and(|dom| found.contains(dom))
        {
            return Some(Reason::PodAffinity);
        }
    }
    for (found, t) in r.anti.iter().zip(&d.pod_anti_affinity) {
        if s.labels[i]
            .get(&t.key)
            .is_some_and(|dom| found.contains(dom))
        {
            return Some(Reason::PodAntiAffinity);
        }
    }
    if r.forbidden
        .iter()
        .any(|(key, dom)| s.labels[i].get(key) == Some(dom))
    {
        return Some(Reason::ExistingAntiAffinity);
    }
    None
}

/// Why node `i`, as it is now, has no room for `d` (empty if it has).
pub(crate) fn dynamic_reasons(s: &Snapshot, i: usize, d: &Demand) -> Vec<Reason> {
    if d.host_ports
        .iter()
        .any(|p| s.ports[i].iter().any(|q| p.conflicts(q)))
    {
        return vec![Reason::Ports];
    }
    let mut out = Vec::new();
    if s.requested(i, PODS) + 1 > s.allocatable(i, PODS) {
        out.push(Reason::TooManyPods);
    }
    for (k, v) in &d.requests {
        let free = free(s, i, k);
        if *v > free {
            out.push(Reason::Insufficient(k.clone()));
        }
    }
    out
}

/// What node `i` has left of resource `k`. A node that declares no volume limit has no limit.
fn free(s: &Snapshot, i: usize, k: &str) -> i64 {
    let column = s.column(k);
    let declared = column.map_or(0, |c| s.allocatable(i, c));
    if declared == 0 && k == api::kinds::storage::VOLUMES_RESOURCE {
        return i64::MAX;
    }
    column.map_or(0, |c| declared - s.requested(i, c))
}

/// Whether node `i` has room for `d` now (`dynamic_reasons` is empty), without allocating.
pub(crate) fn has_room(s: &Snapshot, i: usize, d: &Demand) -> bool {
    if s.requested(i, PODS) >= s.allocatable(i, PODS) {
        return false;
    }
    for (k, v) in &d.requests {
        let free = free(s, i, k);
        if *v > free {
            return false;
        }
    }
    !d.host_ports
        .iter()
        .any(|p| s.ports[i].iter().any(|q| p.conflicts(q)))
}

/// "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {k: v}."
pub(crate) fn message(nodes: usize, reasons: &BTreeMap<Reason, usize>) -> String {
    if nodes == 0 {
        return "no nodes available to schedule pods".into();
    }
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    format!("0/{nodes} nodes are available: {}.", parts.join(", "))
}

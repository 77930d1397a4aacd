//! Pod placement, Borg-style and free of IO: a [`Snapshot`] of the nodes (flat arrays of
//! allocatable and requested resources, labels, taints, ports) and the pods to place go in; a
//! [`Plan`] of bindings and of reasons for the pods that fit nowhere comes out. The caller
//! commits the plan (with compare-and-swap) and retries what went stale.
//!
//! A pod is placed by filtering the nodes (feasibility) and scoring the feasible ones; the
//! plugins are those Kubernetes users rely on, with Kubernetes' failure messages. Pods that
//! share a scheduling template (an equivalence class) are evaluated once: the class keeps the
//! nodes in a heap by score, and a placement re-scores only the node it changed. On large
//! clusters a pod of its own class scores a sample of the feasible nodes (relaxed
//! randomization, as kube-scheduler's percentageOfNodesToScore).

mod demand;
mod filter;
mod plan;
mod preempt;
mod score;
mod snapshot;

pub use demand::{Demand, DemandError, NamespaceLabels, VolumeNodes};
pub use filter::Reason;

/// Whether node `name` with `labels` satisfies a node selector term (as placement judges it).
pub fn term_matches(
    term: &api::k8s_openapi::api::core::v1::NodeSelectorTerm,
    name: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    filter::term_holds(term, name, labels)
}

/// The first reason node `i` of the snapshot can never take pods like `d`, whatever runs
/// there (cordon, nodeName, taints, node selector and affinity), or `None`. Controllers that
/// pick nodes themselves, like the DaemonSet controller, ask this.
pub fn never_fits(s: &Snapshot, i: usize, d: &Demand) -> Option<Reason> {
    filter::static_reason(s, i, d)
}
pub use plan::{Decision, Plan, schedule};
pub use preempt::{Placed, Preemption, preemption};
pub use score::Strategy;
pub use snapshot::Snapshot;

/// How the scheduler chooses.
#[derive(Clone, Debug)]
pub struct Config {
    pub strategy: Strategy,
    /// Score at most this share of the nodes for a pod (1-100); `None` for kube-scheduler's
    /// adaptive default (50% less 1% per 125 nodes, at least 5%, at least 100 nodes).
    pub percentage_of_nodes_to_score: Option<u8>,
    /// Seeds the tie-breaks and the sampling offset, so a plan is reproducible.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            strategy: Strategy::LeastAllocated,
            percentage_of_nodes_to_score: None,
            seed: 0x5eed,
        }
    }
}

#[cfg(test)]
mod tests;

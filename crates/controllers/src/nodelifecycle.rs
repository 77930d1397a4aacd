//! The node lifecycle controller: it watches each node's Lease and Ready condition.
//! - A node whose agent has not renewed its Lease within the grace period is unreachable: its
//!   conditions become Unknown ("Kubelet stopped posting node status."), it gets the
//!   `node.kubernetes.io/unreachable` taints (NoSchedule and NoExecute), and its pods are
//!   marked not Ready. A node that reports Ready=False gets the `not-ready` taints instead.
//!   Taints go when the node is Ready again.
//! - Pods on a node with a NoExecute taint they do not tolerate are evicted (deleted) at once;
//!   those that tolerate it for `tolerationSeconds` (every pod does, 300 s by default, for
//!   these two taints) are evicted when that time has passed since the taint was added. Their
//!   controllers replace them on other nodes.
//! - Pods bound to a node that no longer exists are deleted at once (pod garbage collection).
//!
//! Times are measured from when this controller saw a renewal, not from the agent's clock, so
//! clock skew between machines does not make nodes flap.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::k8s_openapi::api::coordination::v1::Lease;
use api::k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use client::{Client, ClientError};
use serde_json::json;
use tracing::{debug, info};

use crate::harness::{Outcome, Queue, Reconciler};
use crate::mirror::{Mirror, key_of};
use crate::owned;

const COMPONENT: &str = "node-controller";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
const LEASE_NAMESPACE: &str = "kube-node-lease";
/// How often each node is looked at again (its Lease may expire, a toleration run out).
const PERIOD: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct Config {
    /// A node whose Lease is older than this is unreachable (Kubernetes' default: 40 s).
    pub grace: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            grace: Duration::from_secs(40),
        }
    }
}

pub struct NodeLifecycleController {
    client: Client,
    cfg: Config,
    nodes: Arc<Mirror<Node>>,
    leases: Arc<Mirror<Lease>>,
    pods: Arc<Mirror<Pod>>,
    /// Mirror keys of the pods bound to each node name (nodes that exist or not).
    bound: Arc<Mutex<HashMap<String, BTreeSet<String>>>>,
    queue: Queue,
    /// Per node: the last renew time seen, and when this controller saw it change.
    seen: Mutex<HashMap<String, (Option<String>, Instant)>>,
}

fn node_of(p: &Pod) -> Option<&str> {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn ready_status(n: &Node) -> &str {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map_or("Unknown", |c| c.status.as_str())
}

fn taints(n: &Node) -> Vec<Taint> {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
}

/// Does the pod tolerate the taint, and for how long (`None`: forever)?
fn toleration(p: &Pod, t: &Taint) -> Option<Option<i64>> {
    let tolerations = p.spec.as_ref()?.tolerations.as_ref()?;
    let matching: Vec<Option<i64>> = tolerations
        .iter()
        .filter(|tol| {
            let exists = tol.operator.as_deref() == Some("Exists");
            let key_ok = match tol.key.as_deref() {
                None | Some("") => exists,
                Some(k) => k == t.key,
            };
            let value_ok =
                exists || tol.value.as_deref().unwrap_or("") == t.value.as_deref().unwrap_or("");
            let effect_ok = tol
                .effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == t.effect);
            key_ok && value_ok && effect_ok
        })
        .map(|tol| tol.toleration_seconds)
        .collect();
    if matching.is_empty() {
        None
    } else if matching.iter().any(Option::is_none) {
        Some(None)
    } else {
        Some(matching.into_iter().flatten().max())
    }
}

impl NodeLifecycleController {
    pub fn new(
        client: Client,
        cfg: Config,
        nodes: Arc<Mirror<Node>>,
        leases: Arc<Mirror<Lease>>,
        pods: Arc<Mirror<Pod>>,
    ) -> NodeLifecycleController {
        let queue = Queue::new(COMPONENT);
        let q = queue.clone();
        nodes.on_change(move |old, new| {
            if let Some(n) = new.or(old).and_then(|n| n.metadata.name.as_deref()) {
                q.add(n);
            }
        });
        let q = queue.clone();
        leases.on_change(move |old, new| {
            let Some(l) = new.or(old) else { return };
            if l.metadata.namespace.as_deref() == Some(LEASE_NAMESPACE)
                && let Some(n) = l.metadata.name.as_deref()
            {
                q.add(n);
            }
        });
        let bound: Arc<Mutex<HashMap<String, BTreeSet<String>>>> = Arc::default();
        let (q, b) = (queue.clone(), bound.clone());
        pods.on_change(move |old, new| {
            let before = old.and_then(node_of);
            let after = new.and_then(node_of);
            if before == after {
                return;
            }
            let key = key_of(&new.or(old).expect("a change has a side").metadata);
            let mut b = b.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = before
                && let Some(set) = b.get_mut(n)
            {
                set.remove(&key);
                if set.is_empty() {
                    b.remove(n);
                }
            }
            if let Some(n) = after {
                b.entry(n.to_string()).or_default().insert(key);
                // A pod bound to a node that may not exist: look.
                q.add(n);
            }
        });
        NodeLifecycleController {
            client,
            cfg,
            nodes,
            leases,
            pods,
            bound,
            queue,
            seen: Mutex::default(),
        }
    }

    /// The queue of node names its change handlers feed.
    pub fn queue(&self) -> Queue {
        self.queue.clone()
    }

    fn pods_on(&self, node: &str) -> Vec<Arc<Pod>> {
        let keys: Vec<String> = self
            .bound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        keys.iter().filter_map(|k| self.pods.get_key(k)).collect()
    }

    /// Pods bound to a node that does not exist are deleted at once.
    async fn collect_orphans(&self, node: &str, pods: &[Arc<Pod>]) -> Result<(), ClientError> {
        for p in pods {
            let ns = p.metadata.namespace.as_deref().unwrap_or("");
            let n = p.metadata.name.as_deref().unwrap_or("");
            info!(pod = %format!("{ns}/{n}"), node = %node, "pod bound to a node that is gone; deleting");
            let path = format!("/api/v1/namespaces/{ns}/pods/{n}");
            let opts = json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                              "preconditions": {"uid": p.metadata.uid}});
            match self.client.delete_with(&path, &opts).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn check(
        &self,
        node: &Node,
        name: &str,
        pods: &[Arc<Pod>],
        now: jiff::Timestamp,
    ) -> Result<(), ClientError> {
        let renew = self.leases.get(LEASE_NAMESPACE, name).and_then(|l| {
            l.spec
                .as_ref()?
                .renew_time
                .as_ref()
                .map(|t| t.0.to_string())
        });
        let fresh = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let e = seen
                .entry(name.to_string())
                .or_insert_with(|| (renew.clone(), Instant::now()));
            if e.0 != renew {
                *e = (renew.clone(), Instant::now());
            }
            e.1.elapsed() <= self.cfg.grace
        };
        let ready = ready_status(node);
        let mut want: Vec<(&str, &str)> = Vec::new();
        if !fresh {
            if ready != "Unknown" {
                self.mark_unknown(node, name).await?;
                owned::event(
                    &self.client,
                    COMPONENT,
                    node,
                    "Normal",
                    "NodeNotReady",
                    &format!("Node {name} status is now: NodeNotReady"),
                );
                self.mark_pods_not_ready(pods).await;
            }
            want.push((UNREACHABLE, "NoSchedule"));
            want.push((UNREACHABLE, "NoExecute"));
        } else if ready == "False" {
            want.push((NOT_READY, "NoSchedule"));
            want.push((NOT_READY, "NoExecute"));
        } else if ready == "Unknown" {
            // Renewing again, but no status yet: keep what it has until the agent reports.
            return self.evict(node, name, pods, now).await;
        }
        let current = taints(node);
        let ours = |t: &Taint| t.key == UNREACHABLE || t.key == NOT_READY;
        let mut next: Vec<Taint> = current.iter().filter(|t| !ours(t)).cloned().collect();
        for (key, effect) in &want {
            let kept = current
                .iter()
                .find(|t| t.key == *key && t.effect == *effect)
                .cloned();
            next.push(kept.unwrap_or_else(|| Taint {
                key: (*key).into(),
                effect: (*effect).into(),
                value: None,
                time_added: Some(Time(now)),
            }));
        }
        if next != current {
            info!(node = name, taints = ?want, "node taints changed");
            let patch = json!({"spec": {"taints": next},
                               "metadata": {"resourceVersion": node.metadata.resource_version}});
            match self.client.merge_patch::<Node>(None, name, &patch).await {
                Ok(n) => return self.evict(&n, name, pods, now).await,
                Err(e) if e.is_conflict() || e.is_not_found() => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.evict(node, name, pods, now).await
    }

    async fn mark_unknown(&self, node: &Node, name: &str) -> Result<(), ClientError> {
        let now = owned::now_time();
        let mut conditions: Vec<NodeCondition> = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        for c in conditions.iter_mut() {
            if matches!(
                c.type_.as_str(),
                "Ready" | "MemoryPressure" | "DiskPressure" | "PIDPressure"
            ) && c.status != "Unknown"
            {
                c.status = "Unknown".into();
                c.reason = Some("NodeStatusUnknown".into());
                c.message = Some("Kubelet stopped posting node status.".into());
                c.last_transition_time = Some(now.clone());
                c.last_heartbeat_time = c.last_heartbeat_time.clone();
            }
        }
        let patch = json!({"status": {"conditions": conditions}});
        match self.client.patch_status::<Node>(None, name, &patch).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Pods on an unreachable node are not ready, whatever their agent last said.
    async fn mark_pods_not_ready(&self, pods: &[Arc<Pod>]) {
        for p in pods.iter().filter(|p| owned::is_ready(p)) {
            let ns = p.metadata.namespace.as_deref();
            let n = p.metadata.name.as_deref().unwrap_or("");
            let conditions: Vec<serde_json::Value> = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|mut c| {
                    if c.type_ == "Ready" || c.type_ == "ContainersReady" {
                        c.status = "False".into();
                        c.reason = Some("NodeNotReady".into());
                        c.message = None;
                        c.last_transition_time = Some(owned::now_time());
                    }
                    serde_json::to_value(c).unwrap_or_default()
                })
                .collect();
            let patch = json!({"status": {"conditions": conditions}});
            if let Err(e) = self.client.patch_status::<Pod>(ns, n, &patch).await {
                debug!(pod = n, error = %e, "could not mark the pod not ready");
            }
        }
    }

    /// Evict the pods that do not (or no longer) tolerate the node's NoExecute taints.
    async fn evict(
        &self,
        node: &Node,
        name: &str,
        pods: &[Arc<Pod>],
        now: jiff::Timestamp,
    ) -> Result<(), ClientError> {
        let no_execute: Vec<Taint> = taints(node)
            .into_iter()
            .filter(|t| t.effect == "NoExecute")
            .collect();
        if no_execute.is_empty() {
            return Ok(());
        }
        for p in pods {
            if p.metadata.deletion_timestamp.is_some() || owned::is_terminal(p) {
                continue;
            }
            let mut due = false;
            for t in &no_execute {
                match toleration(p, t) {
                    None => due = true,
                    Some(None) => {}
                    Some(Some(secs)) => {
                        let since = t.time_added.as_ref().map_or(now, |x| x.0);
                        if since + jiff::SignedDuration::from_secs(secs.max(0)) <= now {
                            due = true;
                        }
                    }
                }
            }
            if !due {
                continue;
            }
            let ns = p.metadata.namespace.as_deref().unwrap_or("");
            let n = p.metadata.name.as_deref().unwrap_or("");
            info!(pod = %format!("{ns}/{n}"), node = name, "evicting: the node's NoExecute taint");
            owned::event(
                &self.client,
                "taint-eviction-controller",
                &**p,
                "Normal",
                "TaintManagerEviction",
                &format!("Marking for deletion Pod {ns}/{n}"),
            );
            let path = format!("/api/v1/namespaces/{ns}/pods/{n}");
            let opts = json!({"kind": "DeleteOptions", "apiVersion": "v1",
                              "preconditions": {"uid": p.metadata.uid}});
            match self.client.delete_with(&path, &opts).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Reconciler for NodeLifecycleController {
    fn name(&self) -> &'static str {
        COMPONENT
    }

    async fn ready(&self) {
        self.nodes.synced().await;
        self.leases.synced().await;
        self.pods.synced().await;
    }

    /// One node: its health from its Lease and Ready condition, its taints, its pods'
    /// evictions; or, for a node that is gone, the pods still bound to it.
    async fn reconcile(&self, name: &str) -> Outcome {
        let pods = self.pods_on(name);
        let Some(node) = self.nodes.get("", name) else {
            self.seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(name);
            self.collect_orphans(name, &pods).await?;
            return Ok(None);
        };
        self.check(&node, name, &pods, jiff::Timestamp::now())
            .await?;
        Ok(Some(PERIOD))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(tolerations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"spec": {"containers": [], "tolerations": tolerations}}))
            .unwrap_or_default()
    }

    #[test]
    fn tolerations_and_their_seconds() {
        let taint = Taint {
            key: UNREACHABLE.into(),
            effect: "NoExecute".into(),
            value: None,
            time_added: None,
        };
        assert_eq!(toleration(&pod(json!([])), &taint), None);
        let p = pod(
            json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute",
                            "tolerationSeconds": 300}]),
        );
        assert_eq!(toleration(&p, &taint), Some(Some(300)));
        let p = pod(json!([{"operator": "Exists"}]));
        assert_eq!(toleration(&p, &taint), Some(None));
        let p = pod(json!([{"key": NOT_READY, "operator": "Exists", "effect": "NoExecute"}]));
        assert_eq!(toleration(&p, &taint), None);
    }
}

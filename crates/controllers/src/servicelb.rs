//! The built-in load balancer (k3s calls its own ServiceLB): a `type: LoadBalancer` Service is
//! served on every node's addresses at its own ports (the Service proxy opens them there, as
//! it opens node ports) and its `status.loadBalancer.ingress` lists the Ready nodes'
//! InternalIPs. Two Services cannot hold the same port on the nodes: the first one keeps it,
//! a later one stays pending (no ingress) until the port is free. Services with a
//! `loadBalancerClass` belong to someone else and are left alone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use api::k8s_openapi::api::core::v1::{Node, Service};
use async_trait::async_trait;
use client::Client;
use serde_json::json;

use crate::harness::{Outcome, Queue, Reconciler};
use crate::mirror::{Mirror, key_of};

/// A port a load balancer holds on the nodes.
type HostPort = (String, i32);

/// Whether this controller serves the Service.
pub fn served(svc: &Service) -> bool {
    let spec = svc.spec.as_ref();
    spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
        && spec
            .and_then(|s| s.load_balancer_class.as_deref())
            .is_none()
}

fn ports(svc: &Service) -> BTreeSet<HostPort> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .map(|p| (p.protocol.clone().unwrap_or_else(|| "TCP".into()), p.port))
        .collect()
}

fn ingress_of(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone())
        .collect()
}

/// The ingress addresses a Service should have: the Ready nodes' InternalIPs, unless one of
/// its ports is held by another served Service that got there first (created earlier, or
/// holding it already).
pub fn plan(svc: &Service, others: &[Arc<Service>], node_ips: &[String]) -> Vec<String> {
    if !served(svc) {
        return Vec::new();
    }
    let mine = ports(svc);
    let me = (
        svc.metadata.creation_timestamp.clone(),
        key_of(&svc.metadata),
    );
    let holds = |x: &Service| !ingress_of(x).is_empty();
    // A holder keeps its ports against newcomers; between equals the older one wins.
    let taken = others.iter().any(|o| {
        let them = (o.metadata.creation_timestamp.clone(), key_of(&o.metadata));
        served(o)
            && them != me
            && !ports(o).is_disjoint(&mine)
            && ((holds(o) && !holds(svc)) || (holds(o) == holds(svc) && them < me))
    });
    if taken { Vec::new() } else { node_ips.to_vec() }
}

/// The Ready nodes' InternalIPs.
pub(crate) fn node_ips(nodes: &[Arc<Node>]) -> Vec<String> {
    let mut ips: BTreeSet<String> = BTreeSet::new();
    for n in nodes {
        let status = n.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if !ready {
            continue;
        }
        for a in status
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
        {
            if a.type_ == "InternalIP" {
                ips.insert(a.address.clone());
            }
        }
    }
    ips.into_iter().collect()
}

pub struct ServiceLbController {
    client: Client,
    services: Arc<Mirror<Service>>,
    nodes: Arc<Mirror<Node>>,
    queue: Queue,
}

impl ServiceLbController {
    pub fn new(
        client: Client,
        services: Arc<Mirror<Service>>,
        nodes: Arc<Mirror<Node>>,
    ) -> ServiceLbController {
        let queue = Queue::new("service-lb-controller");
        let (q, all) = (queue.clone(), services.clone());
        services.on_change(move |old, new| {
            let Some(s) = new.or(old) else { return };
            q.add(&key_of(&s.metadata));
            // A Service that goes (or changes) may free a port another is waiting for.
            for other in all.all().iter().filter(|o| served(o)) {
                q.add(&key_of(&other.metadata));
            }
        });
        let (q, all) = (queue.clone(), services.clone());
        nodes.on_change(move |_, _| {
            for s in all.all().iter().filter(|s| served(s)) {
                q.add(&key_of(&s.metadata));
            }
        });
        ServiceLbController {
            client,
            services,
            nodes,
            queue,
        }
    }

    pub fn queue(&self) -> Queue {
        self.queue.clone()
    }
}

#[async_trait]
impl Reconciler for ServiceLbController {
    fn name(&self) -> &'static str {
        "service-lb-controller"
    }

    async fn ready(&self) {
        self.services.synced().await;
        self.nodes.synced().await;
    }

    async fn reconcile(&self, key: &str) -> Outcome {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let Some(svc) = self.services.get(ns, name) else {
            return Ok(None);
        };
        let has_class = svc
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_class.as_deref())
            .is_some();
        if has_class {
            return Ok(None);
        }
        let want = plan(&svc, &self.services.all(), &node_ips(&self.nodes.all()));
        if want == ingress_of(&svc) {
            return Ok(None);
        }
        let ingress: Vec<BTreeMap<&str, &str>> = want
            .iter()
            .map(|ip| BTreeMap::from([("ip", ip.as_str()), ("ipMode", "VIP")]))
            .collect();
        self.client
            .patch_status::<Service>(
                Some(ns),
                name,
                &json!({"status": {"loadBalancer": {"ingress": if ingress.is_empty() { json!(null) } else { json!(ingress) }}}}),
            )
            .await?;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn svc(name: &str, created: &str, ty: &str, port: i32, ingress: &[&str]) -> Arc<Service> {
        let ing: Vec<Value> = ingress.iter().map(|i| json!({"ip": i})).collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns", "creationTimestamp": created},
                "spec": {"type": ty, "ports": [{"port": port, "protocol": "TCP"}]},
                "status": {"loadBalancer": {"ingress": ing}},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn the_first_service_on_a_port_gets_the_nodes() {
        let nodes = vec!["192.0.2.1".to_string(), "192.0.2.2".to_string()];
        let a = svc("a", "2026-01-01T00:00:00Z", "LoadBalancer", 80, &[]);
        let b = svc("b", "2026-01-02T00:00:00Z", "LoadBalancer", 80, &[]);
        let c = svc("c", "2026-01-03T00:00:00Z", "LoadBalancer", 443, &[]);
        let plain = svc("d", "2025-01-01T00:00:00Z", "ClusterIP", 80, &[]);
        let all = vec![a.clone(), b.clone(), c.clone(), plain.clone()];
        assert_eq!(plan(&a, &all, &nodes), nodes);
        assert!(plan(&b, &all, &nodes).is_empty(), "b waits: a is older");
        assert_eq!(plan(&c, &all, &nodes), nodes);
        assert!(plan(&plain, &all, &nodes).is_empty());
        // One that holds the port keeps it against an older newcomer.
        let held = svc(
            "e",
            "2026-02-01T00:00:00Z",
            "LoadBalancer",
            8080,
            &["192.0.2.1", "192.0.2.2"],
        );
        let older = svc("f", "2025-06-01T00:00:00Z", "LoadBalancer", 8080, &[]);
        let all = vec![held.clone(), older.clone()];
        assert_eq!(plan(&held, &all, &nodes), nodes);
        assert!(plan(&older, &all, &nodes).is_empty());
    }
}

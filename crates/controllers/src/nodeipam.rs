//! The node IPAM controller (kube-controller-manager's range allocator): every Node gets
//! `spec.podCIDR(s)`, one subnet per cluster range (`--cluster-cidr`, /24 per node for IPv4 and
//! /64 for IPv6 by default), the lowest one no other node holds. A node keeps its ranges for
//! life (the API refuses to change them); a deleted node's ranges are free again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::cidr::Cidr;
use api::k8s_openapi::api::core::v1::Node;
use async_trait::async_trait;
use client::Client;
use serde_json::json;
use tracing::{info, warn};

use crate::harness::{Outcome, Queue, Reconciler};
use crate::mirror::Mirror;

/// How the cluster's pod addresses are divided between nodes.
#[derive(Clone, Debug)]
pub struct Config {
    /// The cluster's pod ranges, at most one per IP family.
    pub cluster_cidrs: Vec<Cidr>,
    /// The size of a node's IPv4 range.
    pub node_mask_v4: u8,
    /// The size of a node's IPv6 range.
    pub node_mask_v6: u8,
}

impl Config {
    fn mask(&self, range: &Cidr) -> u8 {
        if range.is_ipv6() {
            self.node_mask_v6
        } else {
            self.node_mask_v4
        }
    }
}

/// The ranges for a node that has none: per cluster range, its lowest subnet of a node's size
/// that overlaps nothing `taken`. `None` if some range is full.
pub fn plan(config: &Config, taken: &HashSet<Cidr>) -> Option<Vec<Cidr>> {
    let mut out = Vec::new();
    for range in &config.cluster_cidrs {
        let mask = config.mask(range);
        let count = range.subnet_count(mask);
        // Nodes are few next to the subnets: skip past the taken ones in order.
        let mut held: Vec<u128> = taken
            .iter()
            .filter(|t| t.is_ipv6() == range.is_ipv6() && range.overlaps(t))
            .flat_map(|t| {
                // A taken range may be larger or smaller than a node's: block every subnet
                // it touches.
                let first = range
                    .subnet_index(&Cidr::new(t.network(), mask.max(t.prefix())).expect("valid"))
                    .unwrap_or(0);
                let span = if t.prefix() < mask {
                    t.subnet_count(mask)
                } else {
                    1
                };
                first..first.saturating_add(span)
            })
            .collect();
        held.sort_unstable();
        held.dedup();
        let mut next = 0u128;
        for h in held {
            if h == next {
                next += 1;
            } else if h > next {
                break;
            }
        }
        if next >= count {
            return None;
        }
        out.push(range.subnet(mask, next).expect("index below the count"));
    }
    Some(out)
}

pub struct NodeIpamController {
    client: Client,
    nodes: Arc<Mirror<Node>>,
    config: Config,
    /// Ranges given but not yet seen in the mirror, by node.
    given: Mutex<HashMap<String, Vec<Cidr>>>,
    queue: Queue,
}

impl NodeIpamController {
    pub fn new(client: Client, nodes: Arc<Mirror<Node>>, config: Config) -> NodeIpamController {
        let queue = Queue::new("node-ipam-controller");
        let q = queue.clone();
        nodes.on_change(move |old, new| {
            if let Some(n) = new.or(old) {
                q.add(n.metadata.name.as_deref().unwrap_or(""));
            }
        });
        NodeIpamController {
            client,
            nodes,
            config,
            given: Mutex::new(HashMap::new()),
            queue,
        }
    }

    pub fn queue(&self) -> Queue {
        self.queue.clone()
    }

    fn ranges_of(node: &Node) -> Vec<Cidr> {
        let spec = node.spec.as_ref();
        let list = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
        let single = spec.and_then(|s| s.pod_cidr.clone());
        list.into_iter()
            .chain(single)
            .filter_map(|c| c.parse().ok())
            .collect()
    }
}

#[async_trait]
impl Reconciler for NodeIpamController {
    fn name(&self) -> &'static str {
        "node-ipam-controller"
    }

    async fn ready(&self) {
        self.nodes.synced().await;
    }

    async fn reconcile(&self, name: &str) -> Outcome {
        let Some(node) = self.nodes.get("", name) else {
            self.given.lock().expect("given ranges").remove(name);
            return Ok(None);
        };
        if !Self::ranges_of(&node).is_empty() {
            self.given.lock().expect("given ranges").remove(name);
            return Ok(None);
        }
        let mut taken: HashSet<Cidr> = self
            .nodes
            .all()
            .iter()
            .flat_map(|n| Self::ranges_of(n))
            .collect();
        {
            let given = self.given.lock().expect("given ranges");
            if given.contains_key(name) {
                // Written already; the mirror has not caught up.
                return Ok(None);
            }
            taken.extend(given.values().flatten().copied());
        }
        let Some(ranges) = plan(&self.config, &taken) else {
            warn!(node = %name, "no pod address range left for the node (CIDRNotAvailable)");
            return Ok(Some(Duration::from_secs(30)));
        };
        let text: Vec<String> = ranges.iter().map(Cidr::to_string).collect();
        self.client
            .merge_patch::<Node>(
                None,
                name,
                &json!({"spec": {"podCIDR": text[0], "podCIDRs": text}}),
            )
            .await?;
        info!(node = %name, ranges = ?text, "assigned the node's pod address ranges");
        self.given
            .lock()
            .expect("given ranges")
            .insert(name.to_string(), ranges);
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ranges: &[&str]) -> Config {
        Config {
            cluster_cidrs: ranges.iter().map(|r| r.parse().unwrap()).collect(),
            node_mask_v4: 24,
            node_mask_v6: 64,
        }
    }

    fn set(list: &[&str]) -> HashSet<Cidr> {
        list.iter().map(|r| r.parse().unwrap()).collect()
    }

    fn strings(v: Option<Vec<Cidr>>) -> Option<Vec<String>> {
        v.map(|v| v.iter().map(Cidr::to_string).collect())
    }

    #[test]
    fn gives_the_lowest_free_range_per_family() {
        // (cluster ranges, ranges taken, expected)
        type Case<'a> = (&'a [&'a str], &'a [&'a str], Option<&'a [&'a str]>);
        let cases: &[Case] = &[
            (&["10.42.0.0/16"], &[], Some(&["10.42.0.0/24"])),
            (
                &["10.42.0.0/16"],
                &["10.42.0.0/24", "10.42.1.0/24", "10.42.3.0/24"],
                Some(&["10.42.2.0/24"]),
            ),
            // A range written by hand, larger than a node's, blocks all it covers.
            (
                &["10.42.0.0/16"],
                &["10.42.0.0/23"],
                Some(&["10.42.2.0/24"]),
            ),
            // Ranges outside the cluster's do not matter.
            (
                &["10.42.0.0/16"],
                &["10.99.0.0/24"],
                Some(&["10.42.0.0/24"]),
            ),
            (
                &["10.42.0.0/16", "fd42::/56"],
                &["10.42.0.0/24", "fd42::/64"],
                Some(&["10.42.1.0/24", "fd42:0:0:1::/64"]),
            ),
            (&["10.42.0.0/24"], &["10.42.0.0/24"], None),
            (&["10.42.0.0/23"], &["10.42.0.0/24", "10.42.1.0/24"], None),
        ];
        for (cluster, taken, want) in cases {
            let got = strings(plan(&config(cluster), &set(taken)));
            let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(got, want, "cluster {cluster:?} taken {taken:?}");
        }
    }
}

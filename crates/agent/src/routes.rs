//! The node's routes to every other node's pods: follows the Nodes and keeps
//! `net::routes`' plan in the kernel, so a new node's pods are reachable as soon as its Node
//! shows its pod ranges and address. Where a peer needs VXLAN, this node makes its own VXLAN
//! device and publishes the device's hardware address on its Node
//! (`berth.dev/vtep-mac`), which the peers write into their forwarding tables.

use std::collections::BTreeMap;
use std::net::IpAddr;

use api::k8s_openapi::api::core::v1::Node;
use client::{Client, ListParams, Watcher, watcher};
use net::routes::{Backend, NodeRoutes, Peer, format_mac, parse_mac, plan, vtep_of};
use serde_json::json;
use tracing::{info, warn};

pub const VTEP_MAC_ANNOTATION: &str = "berth.dev/vtep-mac";

fn peer_of(n: &Node) -> Option<Peer> {
    let name = n.metadata.name.clone()?;
    let ip = n
        .status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .parse()
        .ok()?;
    let spec = n.spec.as_ref()?;
    let pod_cidrs = spec
        .pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .filter_map(|c| api::cidr::parse_list(c).ok())
        .flatten()
        .fold(Vec::new(), |mut v, c| {
            if !v.contains(&c) {
                v.push(c);
            }
            v
        });
    let vtep_mac = n
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(VTEP_MAC_ANNOTATION))
        .and_then(|m| parse_mac(m));
    Some(Peer {
        name,
        ip,
        pod_cidrs,
        vtep_mac,
    })
}

/// Keep this node's routes to its peers for as long as the task runs.
pub async fn run(client: Client, node: String, ip: IpAddr, backend: Backend) {
    let mut routes = match NodeRoutes::new() {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "cannot manage routes to other nodes");
            std::future::pending::<()>().await;
            return;
        }
    };
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut published: Option<String> = None;
    // What the kernel was last brought to; `None` until the first plan (which also removes
    // what an earlier run left and no peer needs any more).
    let mut applied: Option<BTreeMap<_, _>> = None;
    let mut w = Watcher::<Node>::new(client.clone(), None, ListParams::default());
    loop {
        match w.next().await {
            watcher::Event::Restarted(list) => {
                nodes = list
                    .into_iter()
                    .filter_map(|n| Some((n.metadata.name.clone()?, n)))
                    .collect();
            }
            watcher::Event::Applied(n) => {
                if let Some(name) = n.metadata.name.clone() {
                    nodes.insert(name, n);
                }
            }
            watcher::Event::Deleted(n) => {
                if let Some(name) = &n.metadata.name {
                    nodes.remove(name);
                }
            }
        }
        let me = nodes.get(&node).and_then(peer_of);
        let peers: Vec<Peer> = nodes
            .iter()
            .filter(|(name, _)| **name != node)
            .filter_map(|(_, n)| peer_of(n))
            .collect();
        let on_link = match routes.on_link() {
            Ok(o) => o,
            Err(e) => {
                warn!(error = %e, "cannot read this node's addresses");
                continue;
            }
        };
        // This node's VXLAN device, once a peer needs one and this node has its range.
        let needs_tunnel = backend == Backend::Vxlan
            || (backend == Backend::Auto
                && peers
                    .iter()
                    .any(|p| !on_link.iter().any(|o| o.net.contains(p.ip))));
        if needs_tunnel
            && let (IpAddr::V4(local), Some(vtep)) =
                (ip, me.as_ref().and_then(|m| vtep_of(&m.pod_cidrs)))
        {
            match routes.ensure_vxlan(local, vtep) {
                Ok(mac) => {
                    let mac = format_mac(&mac);
                    let current = me.as_ref().and_then(|m| m.vtep_mac).map(|m| format_mac(&m));
                    if current.as_deref() != Some(mac.as_str())
                        && published.as_deref() != Some(&mac)
                    {
                        let patch =
                            json!({"metadata": {"annotations": {VTEP_MAC_ANNOTATION: mac}}});
                        match client
                            .request(
                                http::Method::PATCH,
                                &format!("/api/v1/nodes/{node}"),
                                "application/merge-patch+json",
                                bytes::Bytes::from(patch.to_string()),
                            )
                            .await
                        {
                            Ok(_) => published = Some(mac),
                            Err(e) => warn!(error = %e, "cannot publish this node's VXLAN address"),
                        }
                    }
                }
                Err(e) => warn!(error = %e, "cannot make this node's VXLAN device"),
            }
        }
        let want = plan(backend, &on_link, &peers);
        if applied.as_ref() == Some(&want) {
            continue;
        }
        match routes.apply(&want) {
            Ok(()) => {
                info!(ranges = want.len(), "routes to other nodes' pods changed");
                applied = Some(want);
            }
            Err(e) => warn!(error = %e, "cannot write the routes to other nodes' pods"),
        }
    }
}

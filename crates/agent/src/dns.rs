//! The node's cluster DNS: keeps the records (`net::dns::Index`) equal to the Services and
//! their EndpointSlices, and serves them on the cluster DNS address, made local to this node
//! so each node answers its own pods (no DNAT, no conntrack race between A and AAAA).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api::k8s_openapi::api::core::v1::Service;
use api::k8s_openapi::api::discovery::v1::EndpointSlice;
use client::{Client, watcher};
use net::dns::index::{EndpointEntry, slice_endpoints};
use net::dns::{DnsServer, ServiceEntry};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::proxy::{Change, follow};

/// How the node's pods resolve names.
#[derive(Clone, Debug)]
pub struct DnsSettings {
    /// The cluster DNS address pods are given; `None` leaves pods with the node's resolvers.
    pub cluster_dns: Option<IpAddr>,
    /// The cluster domain (`cluster.local`).
    pub domain: String,
    /// The node's resolver configuration: upstream servers and search domains for pods.
    pub resolv_conf: PathBuf,
    /// Whether this node answers at `cluster_dns` itself.
    pub serve: bool,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            cluster_dns: None,
            domain: "cluster.local".into(),
            resolv_conf: "/etc/resolv.conf".into(),
            serve: false,
        }
    }
}

impl DnsSettings {
    /// The node's own `resolv.conf`, as it is now.
    pub fn host(&self) -> net::dns::ResolvConf {
        net::dns::ResolvConf::parse(&std::fs::read_to_string(&self.resolv_conf).unwrap_or_default())
    }

    /// The server, when this node serves the cluster DNS.
    pub fn server(&self) -> Option<Arc<DnsServer>> {
        let ip = self.cluster_dns.filter(|_| self.serve)?;
        let index = match net::dns::Index::new(&self.domain) {
            Ok(i) => i,
            Err(e) => {
                warn!(error = %e, "no cluster DNS");
                return None;
            }
        };
        let upstreams = net::dns::upstreams(&self.host(), ip);
        if upstreams.is_empty() {
            warn!(file = %self.resolv_conf.display(), "no upstream DNS servers: names outside the cluster will not resolve");
        }
        Some(DnsServer::new(index, upstreams))
    }
}

/// Answer on `ip` port 53 (UDP and TCP) until dropped.
pub async fn serve(server: Arc<DnsServer>, ip: IpAddr) {
    let mut delay = Duration::from_millis(200);
    loop {
        let local = tokio::task::spawn_blocking(move || {
            net::netlink::Netlink::open().and_then(|mut n| n.add_local_route(ip))
        })
        .await;
        if let Ok(Err(e)) = local {
            warn!(%ip, error = %e, "could not make the cluster DNS address local");
        }
        let addr = SocketAddr::new(ip, 53);
        info!(%addr, "cluster DNS serving");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if let Err(e) = server.clone().serve(addr, cores).await {
            warn!(%addr, error = %e, "cluster DNS stopped; starting again");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

fn key(ns: Option<&str>, name: Option<&str>) -> (String, String) {
    (ns.unwrap_or("").to_string(), name.unwrap_or("").to_string())
}

/// What the records are made from, kept compact: per Service its own records, per slice its
/// ready endpoints.
#[derive(Default)]
struct Seen {
    services: HashMap<(String, String), ServiceEntry>,
    /// Service -> slice name -> its endpoints.
    slices: HashMap<(String, String), BTreeMap<String, Vec<EndpointEntry>>>,
    /// Slice -> the Service it was filed under.
    slice_owner: HashMap<(String, String), (String, String)>,
}

impl Seen {
    fn entry(&self, svc: &(String, String)) -> Option<ServiceEntry> {
        let mut e = self.services.get(svc)?.clone();
        if let Some(m) = self.slices.get(svc) {
            e.set_endpoints(m.values().map(Vec::as_slice));
        }
        Some(e)
    }

    fn service(&mut self, s: &Service, present: bool) -> (String, String) {
        let k = key(s.metadata.namespace.as_deref(), s.metadata.name.as_deref());
        match ServiceEntry::from_service(s).filter(|_| present) {
            Some(e) => {
                self.services.insert(k.clone(), e);
            }
            None => {
                self.services.remove(&k);
            }
        }
        k
    }

    /// File a slice under its Service; the Services whose records change.
    fn slice(&mut self, s: &EndpointSlice, present: bool) -> Vec<(String, String)> {
        let k = key(s.metadata.namespace.as_deref(), s.metadata.name.as_deref());
        let mut touched = Vec::new();
        if let Some(owner) = self.slice_owner.remove(&k) {
            if let Some(m) = self.slices.get_mut(&owner) {
                m.remove(&k.1);
                if m.is_empty() {
                    self.slices.remove(&owner);
                }
            }
            touched.push(owner);
        }
        let svc = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
            .cloned();
        if let (true, Some(svc)) = (present, svc) {
            let owner = (k.0.clone(), svc);
            self.slices
                .entry(owner.clone())
                .or_default()
                .insert(k.1.clone(), slice_endpoints(s));
            self.slice_owner.insert(k, owner.clone());
            touched.push(owner);
        }
        touched
    }
}

/// Follow Services and EndpointSlices into the server's records, until dropped.
pub async fn follow_records(client: Client, server: Arc<DnsServer>) {
    let (tx, mut rx) = mpsc::channel(1024);
    let services = follow(client.clone(), tx.clone(), |e| {
        Change::Services(Box::new(e))
    });
    let slices = follow(client, tx, |e| Change::Slices(Box::new(e)));
    let _stop = [services, slices].map(supervise::AbortOnDrop);
    let mut seen = Seen::default();
    while let Some(change) = rx.recv().await {
        let touched: Vec<(String, String)> = match change {
            Change::Services(e) => match *e {
                watcher::Event::Restarted(all) => {
                    let mut touched: Vec<_> = seen.services.keys().cloned().collect();
                    seen.services.clear();
                    for s in &all {
                        touched.push(seen.service(s, true));
                    }
                    touched
                }
                watcher::Event::Applied(s) => vec![seen.service(&s, true)],
                watcher::Event::Deleted(s) => vec![seen.service(&s, false)],
            },
            Change::Slices(e) => match *e {
                watcher::Event::Restarted(all) => {
                    let mut touched: Vec<_> = seen.slices.keys().cloned().collect();
                    seen.slices.clear();
                    seen.slice_owner.clear();
                    for s in &all {
                        touched.extend(seen.slice(s, true));
                    }
                    touched
                }
                watcher::Event::Applied(s) => seen.slice(&s, true),
                watcher::Event::Deleted(s) => seen.slice(&s, false),
            },
        };
        let entries: Vec<_> = touched
            .into_iter()
            .map(|k| {
                let e = seen.entry(&k);
                (k, e)
            })
            .collect();
        server.update(|ix| {
            for ((ns, name), e) in entries {
                ix.set(&ns, &name, e);
            }
        });
    }
}

//! The node's Service proxy: follows every Service and EndpointSlice, turns them into the
//! proxy state (`net::proxy`, pure) and keeps an nftables table (`berth-proxy-a` or `-b`) equal to it.
//! The first state is loaded whole; after that each change recomputes only the Services it
//! touched and writes only the elements of their ports. Changes that arrive together are
//! applied together.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use api::k8s_openapi::api::core::v1::Service;
use api::k8s_openapi::api::discovery::v1::EndpointSlice;
use client::{Client, ListParams, Watcher, watcher};
use net::nft;
use net::proxy::{self, ServiceInfo, SliceInfo, State};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// How long to gather changes before applying them.
const GATHER: Duration = Duration::from_millis(2);
/// How often the whole table is written again, whatever happened.
const RESYNC: Duration = Duration::from_secs(600);

pub(crate) enum Change {
    Services(Box<watcher::Event<Service>>),
    Slices(Box<watcher::Event<EndpointSlice>>),
}

fn key(ns: Option<&str>, name: Option<&str>) -> String {
    format!("{}/{}", ns.unwrap_or(""), name.unwrap_or(""))
}

/// What the proxy has seen.
#[derive(Default)]
struct Seen {
    services: HashMap<String, ServiceInfo>,
    /// Service key -> slice key -> slice.
    slices: HashMap<String, BTreeMap<String, SliceInfo>>,
    /// Slice key -> the Service key it was filed under.
    slice_owner: HashMap<String, String>,
    /// An address this node serves itself, whichever Service names it.
    local: Option<IpAddr>,
    /// The state, kept per Service.
    combined: proxy::Combined,
    /// Services whose part of the state is out of date.
    dirty: BTreeSet<String>,
}

impl Seen {
    /// The state, with the parts of the Services that changed recomputed.
    fn state(&mut self, node: &str) -> &State {
        for k in std::mem::take(&mut self.dirty) {
            let part = self.services.get(&k).map(|svc| {
                let slices: Vec<SliceInfo> = self
                    .slices
                    .get(&k)
                    .map(|m| m.values().cloned().collect())
                    .unwrap_or_default();
                let mut st = State::default();
                proxy::service_state(svc, &slices, node, &mut st);
                st
            });
            self.combined.set(&k, part);
        }
        self.combined.state()
    }

    fn restart_services(&mut self, all: &[Service]) {
        self.dirty.extend(self.services.keys().cloned());
        self.services.clear();
        for s in all {
            self.service(s, true);
        }
    }

    fn restart_slices(&mut self, all: &[EndpointSlice]) {
        self.dirty.extend(self.slices.keys().cloned());
        self.slices.clear();
        self.slice_owner.clear();
        for s in all {
            self.slice(s, true);
        }
    }

    fn service(&mut self, s: &Service, present: bool) {
        let k = key(s.metadata.namespace.as_deref(), s.metadata.name.as_deref());
        self.dirty.insert(k.clone());
        match ServiceInfo::from_service(s, self.local).filter(|_| present) {
            Some(info) => {
                self.services.insert(k, info);
            }
            None => {
                self.services.remove(&k);
            }
        }
    }

    fn slice(&mut self, s: &EndpointSlice, present: bool) {
        let k = key(s.metadata.namespace.as_deref(), s.metadata.name.as_deref());
        if let Some(owner) = self.slice_owner.remove(&k) {
            if let Some(m) = self.slices.get_mut(&owner) {
                m.remove(&k);
                if m.is_empty() {
                    self.slices.remove(&owner);
                }
            }
            self.dirty.insert(owner);
        }
        let svc = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"));
        if let (true, Some(svc)) = (present, svc) {
            let owner = key(s.metadata.namespace.as_deref(), Some(svc));
            self.slices
                .entry(owner.clone())
                .or_default()
                .insert(k.clone(), SliceInfo::from_slice(s));
            self.dirty.insert(owner.clone());
            self.slice_owner.insert(k, owner);
        }
    }
}

/// Forward every event of a kind's watch into `tx`, until the receiver goes.
pub(crate) fn follow<K, C: Send + 'static>(
    client: Client,
    tx: mpsc::Sender<C>,
    wrap: fn(watcher::Event<K>) -> C,
) -> tokio::task::JoinHandle<()>
where
    K: api::k8s_openapi::Resource + api::k8s_openapi::ListableResource,
    K: api::k8s_openapi::Metadata<
            Ty = api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        >,
    K: serde::de::DeserializeOwned + Send + 'static,
{
    follow_with(client, ListParams::default(), tx, wrap)
}

/// `follow`, listing and watching with `params`.
pub(crate) fn follow_with<K, C: Send + 'static>(
    client: Client,
    params: ListParams,
    tx: mpsc::Sender<C>,
    wrap: fn(watcher::Event<K>) -> C,
) -> tokio::task::JoinHandle<()>
where
    K: api::k8s_openapi::Resource + api::k8s_openapi::ListableResource,
    K: api::k8s_openapi::Metadata<
            Ty = api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        >,
    K: serde::de::DeserializeOwned + Send + 'static,
{
    tokio::spawn(async move {
        let mut w = Watcher::<K>::new(client, None, params);
        while tx.send(wrap(w.next().await)).await.is_ok() {}
    })
}

/// The next batch of changes: the first to arrive and those that follow within `GATHER`.
/// After a failed write (`retry`) it returns within a second even if nothing arrives, so the
/// caller tries again. `None` once the senders are gone.
pub(crate) async fn next_batch<C>(rx: &mut mpsc::Receiver<C>, retry: bool) -> Option<Vec<C>> {
    let first = if retry {
        match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(Some(c)) => Some(c),
            Ok(None) => return None,
            Err(_) => None,
        }
    } else {
        Some(rx.recv().await?)
    };
    let mut batch: Vec<C> = first.into_iter().collect();
    tokio::time::sleep(GATHER).await;
    while let Ok(c) = rx.try_recv() {
        batch.push(c);
    }
    Some(batch)
}

/// What the kernel holds.
struct Applied {
    state: State,
    table: &'static str,
    /// Endpoint counts 1..=chains have their chains and maps.
    chains: usize,
    /// Whether the table exists in the IPv6 family too.
    v6: bool,
}

enum Step {
    /// Element changes to the live table.
    Changes {
        table: &'static str,
        changes: proxy::Changes,
    },
    /// A fresh table (not `live`), filled, then the others dropped.
    Full {
        live: Option<&'static str>,
        chains: usize,
        state: State,
    },
}

/// Follow Services and EndpointSlices and keep the node's proxy rules in step, until
/// dropped.
pub async fn run(client: Client, nft_path: PathBuf, node: String, local: Option<IpAddr>) {
    let (tx, mut rx) = mpsc::channel(1024);
    let services = follow(client.clone(), tx.clone(), |e| {
        Change::Services(Box::new(e))
    });
    let slices = follow(client, tx, |e| Change::Slices(Box::new(e)));
    let _stop = [services, slices].map(supervise::AbortOnDrop);

    let mut seen = Seen {
        local,
        ..Default::default()
    };
    let (mut have_services, mut have_slices) = (false, false);
    // What the kernel holds, in which table, and which endpoint counts have chains.
    let mut applied: Option<Applied> = None;
    // The table that serves, once this run has loaded one.
    let mut live: Option<&'static str> = None;
    let mut last_full = Instant::now();
    let mut retry = false;
    loop {
        let Some(batch) = next_batch(&mut rx, retry).await else {
            return;
        };
        for c in batch {
            match c {
                Change::Services(e) => match *e {
                    watcher::Event::Restarted(all) => {
                        seen.restart_services(&all);
                        have_services = true;
                    }
                    watcher::Event::Applied(s) => seen.service(&s, true),
                    watcher::Event::Deleted(s) => seen.service(&s, false),
                },
                Change::Slices(e) => match *e {
                    watcher::Event::Restarted(all) => {
                        seen.restart_slices(&all);
                        have_slices = true;
                    }
                    watcher::Event::Applied(s) => seen.slice(&s, true),
                    watcher::Event::Deleted(s) => seen.slice(&s, false),
                },
            }
        }
        if !(have_services && have_slices) {
            continue;
        }
        let want = seen.state(&node).clone();
        let needed = proxy::counts(&want).last().copied().unwrap_or(0);
        let v6 = want.frontends.keys().any(|f| f.ip.is_ipv6());
        let started = Instant::now();
        let step = match &applied {
            // Small changes go to the live table, as long as it has the chains and the
            // families they need.
            Some(a) if needed <= a.chains && (a.v6 || !v6) && last_full.elapsed() < RESYNC => {
                if a.state == want {
                    continue;
                }
                Step::Changes {
                    table: a.table,
                    changes: proxy::changes(a.table, &a.state, &want),
                }
            }
            _ => {
                // Chains for a few more endpoints than needed, so growth rarely needs a
                // full load; a table not in use is filled, then the others dropped.
                last_full = Instant::now();
                Step::Full {
                    live,
                    chains: (needed + 8).next_power_of_two(),
                    state: want.clone(),
                }
            }
        };
        let path = nft_path.clone();
        let (full, chains) = match &step {
            Step::Changes { .. } => (false, applied.as_ref().map_or(0, |a| a.chains)),
            Step::Full { chains, .. } => (true, *chains),
        };
        let result = tokio::task::spawn_blocking(move || match step {
            Step::Changes { table, changes } => {
                nft::apply_changes(&path, table, &changes).map(|()| table)
            }
            Step::Full {
                live,
                chains,
                state,
            } => {
                // Never the table that serves now (this run's, or one an earlier run left).
                let present = nft::tables(&path)?;
                let table = proxy::TABLES
                    .into_iter()
                    .find(|t| !present.iter().any(|(_, name)| name == t))
                    .or_else(|| proxy::TABLES.into_iter().find(|t| Some(*t) != live))
                    .expect("two names, at most one live");
                nft::load_proxy(&path, table, &state, chains)?;
                // The new table serves; every other proxy table goes (also those of an
                // earlier run or version).
                let stale: Vec<(String, String)> = present
                    .into_iter()
                    .filter(|(_, name)| proxy::is_proxy_table(name) && name != table)
                    .collect();
                nft::drop_tables(&path, &stale)?;
                Ok(table)
            }
        })
        .await;
        match result {
            Ok(Ok(table)) => {
                if full {
                    live = Some(table);
                }
                debug!(
                    frontends = want.frontends.len(),
                    full,
                    table,
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "service rules applied"
                );
                applied = Some(Applied {
                    state: want,
                    table,
                    chains,
                    v6: v6 || (!full && applied.as_ref().is_some_and(|a| a.v6)),
                });
                retry = false;
            }
            Ok(Err(e)) => {
                warn!(error = %e, "could not apply the service rules; loading them whole next");
                applied = None;
                retry = true;
            }
            Err(e) => {
                warn!(error = %e, "service rule task failed");
                applied = None;
                retry = true;
            }
        }
    }
}

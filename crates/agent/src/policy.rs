//! The node's NetworkPolicy enforcement: follows NetworkPolicies, Namespaces and Pods, keeps
//! `net::policy`'s engine equal to them and the node's policy table (`berth-policy-a` or
//! `-b`) equal to the engine: the whole table when it is first loaded (or after a failed
//! write), then only the elements that changed. Each of the node's pods is taken in by its
//! worker (`admit`) after the pod network gave it an address and before its first container
//! starts, with its namespace's policies read afresh, so a pod under a policy is never
//! reachable before the policy holds for it.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::k8s_openapi::api::core::v1::{Namespace, Pod};
use api::k8s_openapi::api::networking::v1::NetworkPolicy;
use client::{Client, ListParams, watcher};

use crate::proxy::{follow_with, next_batch};
use net::policy::{self, Engine, PodInfo, Policy};
use net::{NetError, conntrack, nft, nftnl};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// How long a pod waits for the first load before its sandbox fails (and is retried).
const FIRST_LOAD: Duration = Duration::from_secs(30);

/// Where the node reads what it enforces.
#[derive(Clone)]
pub struct PolicyFeed {
    /// Reads NetworkPolicies, Namespaces and Pods.
    pub client: Client,
    /// Whether it may read every pod of the cluster; else it reads the node's own (enough
    /// while pods reach only pods of their own node).
    pub all_pods: bool,
}

pub struct Policies {
    state: Arc<Mutex<State>>,
    nft: PathBuf,
    /// The cluster DNS address the node serves, which pods may always ask.
    dns: Option<IpAddr>,
    feed: PolicyFeed,
    synced: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    engine: Engine,
    /// The table in the kernel, once loaded.
    table: Option<&'static str>,
    /// Each policy's resource version as taken in (deleted ones too, so that a list read
    /// before a deletion does not bring the policy back).
    versions: HashMap<(String, String), u64>,
}

enum Change {
    Policies(Box<watcher::Event<NetworkPolicy>>),
    Namespaces(Box<watcher::Event<Namespace>>),
    Pods(Box<watcher::Event<Pod>>),
}

fn version(meta: &api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn policy_key(p: &NetworkPolicy) -> (String, String) {
    (
        p.metadata.namespace.clone().unwrap_or_default(),
        p.metadata.name.clone().unwrap_or_default(),
    )
}

impl State {
    /// Take in a policy unless a newer version (or its deletion) is in already.
    fn policy(&mut self, p: &NetworkPolicy, present: bool) {
        let k = policy_key(p);
        let v = version(&p.metadata);
        if self.versions.get(&k).is_some_and(|have| *have >= v) && present {
            return;
        }
        self.versions.insert(k.clone(), v);
        self.engine
            .set_policy(&k.0, &k.1, present.then(|| Policy::from_object(p)));
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Policies(e) => match *e {
                watcher::Event::Restarted(all) => {
                    self.versions = all
                        .iter()
                        .map(|p| (policy_key(p), version(&p.metadata)))
                        .collect();
                    self.engine.restart_policies(
                        all.iter()
                            .map(|p| {
                                let (ns, name) = policy_key(p);
                                (ns, name, Policy::from_object(p))
                            })
                            .collect(),
                    );
                }
                watcher::Event::Applied(p) => self.policy(&p, true),
                watcher::Event::Deleted(p) => self.policy(&p, false),
            },
            Change::Namespaces(e) => {
                let labels = |n: &Namespace| n.metadata.labels.clone().unwrap_or_default();
                let name = |n: &Namespace| n.metadata.name.clone().unwrap_or_default();
                match *e {
                    watcher::Event::Restarted(all) => self
                        .engine
                        .restart_namespaces(all.iter().map(|n| (name(n), labels(n))).collect()),
                    watcher::Event::Applied(n) => {
                        self.engine.set_namespace(&name(&n), Some(labels(&n)))
                    }
                    watcher::Event::Deleted(n) => self.engine.set_namespace(&name(&n), None),
                }
            }
            Change::Pods(e) => {
                let uid = |p: &Pod| p.metadata.uid.clone().unwrap_or_default();
                match *e {
                    watcher::Event::Restarted(all) => self.engine.restart_pods(
                        all.iter()
                            .filter_map(|p| Some((uid(p), PodInfo::from_pod(p)?)))
                            .collect(),
                    ),
                    watcher::Event::Applied(p) => {
                        self.engine.observe_pod(&uid(&p), PodInfo::from_pod(&p))
                    }
                    watcher::Event::Deleted(p) => self.engine.observe_pod(&uid(&p), None),
                }
            }
        }
    }

    /// Bring the kernel up to date: the changes into the live table, or a whole table made
    /// beside the old one, which then goes. Returns whose connections to check (`cut`).
    /// Blocking.
    fn flush(
        &mut self,
        nft_path: &std::path::Path,
        dns: Option<IpAddr>,
    ) -> Result<Narrowed, NetError> {
        if let Some(t) = self.table {
            let ops = self.engine.take_ops();
            if let Err(e) = nftnl::write(t, &ops) {
                // What the kernel holds is no longer known: load it whole next time.
                self.table = None;
                return Err(e);
            }
            let narrowed = self.engine.take_narrowed();
            return Ok(if narrowed.is_empty() {
                Narrowed::Nothing
            } else {
                Narrowed::These(narrowed)
            });
        }
        let present = nft::tables(nft_path)?;
        let table = policy::TABLES
            .into_iter()
            .find(|t| !present.iter().any(|(_, name)| name == t))
            .unwrap_or(policy::TABLES[0]);
        self.engine.rewrite_all();
        let ops = self.engine.take_ops();
        nft::load_policy(nft_path, table, dns, &ops)?;
        let stale: Vec<(String, String)> = present
            .into_iter()
            .filter(|(_, name)| policy::is_policy_table(name) && name != table)
            .collect();
        nft::drop_tables(nft_path, &stale)?;
        self.table = Some(table);
        let (policies, identities, pods) = self.engine.counts();
        info!(
            table,
            policies, identities, pods, "network policy rules loaded"
        );
        // Connections made while no rules (or older ones) held.
        self.engine.take_narrowed();
        Ok(Narrowed::All)
    }
}

/// Whose tracked connections a change may have refused.
enum Narrowed {
    Nothing,
    These(BTreeSet<IpAddr>),
    All,
}

/// Delete the tracked connections from pods that the rules now refuse, so that a policy
/// cuts traffic already flowing, not only new connections: those touching the `narrowed`
/// addresses. Connections from outside the pods (the node's own, which is never filtered)
/// and to the cluster DNS are left alone. The table is read without the lock (it may be
/// large), then judged under it. Blocking.
fn cut(state: &Mutex<State>, dns: Option<IpAddr>, narrowed: &Narrowed) {
    let only = match narrowed {
        Narrowed::Nothing => return,
        Narrowed::These(set) => Some(set),
        Narrowed::All => None,
    };
    let all = match conntrack::connections() {
        Ok(all) => all,
        Err(e) => {
            warn!(error = %e, "could not read the tracked connections");
            return;
        }
    };
    let denied: Vec<conntrack::Connection> = {
        let st = state.lock().unwrap_or_else(|p| p.into_inner());
        all.into_iter()
            .filter(|c| {
                let (src, dst, proto, port) = c.endpoints();
                only.is_none_or(|n| n.contains(&src) || n.contains(&dst))
                    && matches!(proto, 6 | 17 | 132)
                    && Some(dst) != dns
                    && st.engine.is_pod_address(src)
                    && !st.engine.allows(src, dst, proto, port)
            })
            .collect()
    };
    if denied.is_empty() {
        return;
    }
    match conntrack::delete(&denied) {
        Ok(n) => debug!(
            connections = n,
            "connections the network policies refuse cut"
        ),
        Err(e) => warn!(error = %e, "could not cut connections the network policies refuse"),
    }
}

/// Cut what a change refuses, on a thread of its own: the next change need not wait for it.
fn cut_later(state: Arc<Mutex<State>>, dns: Option<IpAddr>, narrowed: Narrowed) {
    if matches!(narrowed, Narrowed::Nothing) {
        return;
    }
    tokio::task::spawn_blocking(move || cut(&state, dns, &narrowed));
}

impl Policies {
    pub fn new(feed: PolicyFeed, nft: PathBuf, dns: Option<IpAddr>) -> Policies {
        Policies {
            state: Arc::default(),
            nft,
            dns,
            feed,
            synced: watch::Sender::new(false),
        }
    }

    /// Follow policies, namespaces and pods and keep the node's rules in step, until dropped.
    pub async fn run(self: Arc<Self>, node: String) {
        let (tx, mut rx) = mpsc::channel(1024);
        let lean = ListParams {
            strip_managed_fields: true,
            ..Default::default()
        };
        let pods = ListParams {
            field_selector: (!self.feed.all_pods).then(|| format!("spec.nodeName={node}")),
            ..lean.clone()
        };
        let c = &self.feed.client;
        let _stop = [
            follow_with(c.clone(), lean.clone(), tx.clone(), |e| {
                Change::Policies(Box::new(e))
            }),
            follow_with(c.clone(), lean, tx.clone(), |e| {
                Change::Namespaces(Box::new(e))
            }),
            follow_with(c.clone(), pods, tx, |e| Change::Pods(Box::new(e))),
        ]
        .map(supervise::AbortOnDrop);
        let (mut have_policies, mut have_namespaces, mut have_pods) = (false, false, false);
        let mut retry = false;
        loop {
            let Some(batch) = next_batch(&mut rx, retry).await else {
                return;
            };
            for c in &batch {
                match c {
                    Change::Policies(e) if matches!(**e, watcher::Event::Restarted(_)) => {
                        have_policies = true
                    }
                    Change::Namespaces(e) if matches!(**e, watcher::Event::Restarted(_)) => {
                        have_namespaces = true
                    }
                    Change::Pods(e) if matches!(**e, watcher::Event::Restarted(_)) => {
                        have_pods = true
                    }
                    _ => {}
                }
            }
            let ready = have_policies && have_namespaces && have_pods;
            let this = self.clone();
            let started = Instant::now();
            let result = tokio::task::spawn_blocking(move || {
                let mut st = this.state.lock().unwrap_or_else(|p| p.into_inner());
                for c in batch {
                    st.apply(c);
                }
                if ready {
                    st.flush(&this.nft, this.dns).map(Some)
                } else {
                    Ok(None)
                }
            })
            .await;
            match result {
                Ok(Ok(Some(narrowed))) => {
                    cut_later(self.state.clone(), self.dns, narrowed);
                    debug!(
                        ms = started.elapsed().as_secs_f64() * 1e3,
                        "network policy rules written"
                    );
                    self.synced.send_replace(true);
                    retry = false;
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    warn!(error = %e, "could not write the network policy rules; loading them whole next");
                    retry = true;
                }
                Err(e) => {
                    warn!(error = %e, "network policy task failed");
                    retry = true;
                }
            }
        }
    }

    /// Take one of the node's pods in, with the addresses the pod network gave it, and put
    /// the rules for it in the kernel: its namespace's policies are read afresh, so that one
    /// written just before the pod holds already. Fails (and the pod must not start) when
    /// the rules cannot be written.
    pub async fn admit(&self, pod: &Pod, ips: &[IpAddr]) -> Result<(), String> {
        let mut synced = self.synced.subscribe();
        match tokio::time::timeout(FIRST_LOAD, synced.wait_for(|s| *s)).await {
            Ok(Ok(_)) => {}
            _ => return Err("the node's network policy rules are not loaded yet".into()),
        }
        let Some(mut info) = PodInfo::from_pod(pod) else {
            return Ok(());
        };
        info.ips = ips.to_vec();
        let asked = Instant::now();
        let fresh = self
            .newer_policies(&info.namespace)
            .await
            .map_err(|e| format!("reading the namespace's network policies: {e}"))?;
        debug!(
            ms = asked.elapsed().as_secs_f64() * 1e3,
            newer = fresh.len(),
            "the namespace's network policies read"
        );
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        // The lock is taken on a blocking thread: a write may take milliseconds.
        let (this, nft_path, dns) = (self.state.clone(), self.nft.clone(), self.dns);
        let narrowed = tokio::task::spawn_blocking(move || {
            let mut st = this.lock().unwrap_or_else(|p| p.into_inner());
            for p in &fresh {
                st.policy(p, true);
            }
            st.engine.attach(&uid, info);
            st.flush(&nft_path, dns)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        cut_later(self.state.clone(), self.dns, narrowed);
        Ok(())
    }

    /// The namespace's policies newer than the engine has: their names and versions read
    /// afresh (metadata only), then each newer one whole (usually none).
    async fn newer_policies(&self, ns: &str) -> Result<Vec<NetworkPolicy>, client::ClientError> {
        #[derive(serde::Deserialize)]
        struct List {
            #[serde(default)]
            items: Vec<Item>,
        }
        #[derive(serde::Deserialize)]
        struct Item {
            metadata: Meta,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Meta {
            name: String,
            #[serde(default)]
            resource_version: Option<String>,
        }
        let req = http::Request::get(format!(
            "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies"
        ))
        .header(
            http::header::ACCEPT,
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
        )
        .body(bytes::Bytes::new())
        .map_err(|e| client::ClientError::Transport(Box::new(e)))?;
        let resp = self.feed.client.send(req).await?;
        let status = resp.status();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map_err(client::ClientError::Transport)?
            .to_bytes();
        if !status.is_success() {
            return Err(client::api_error(status, &body));
        }
        let list: List = serde_json::from_slice(&body).map_err(client::ClientError::Decode)?;
        let newer: Vec<String> = {
            let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            list.items
                .into_iter()
                .filter(|i| {
                    let v = i
                        .metadata
                        .resource_version
                        .as_deref()
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(u64::MAX);
                    st.versions
                        .get(&(ns.to_string(), i.metadata.name.clone()))
                        .is_none_or(|have| *have < v)
                })
                .map(|i| i.metadata.name)
                .collect()
        };
        let mut out = Vec::with_capacity(newer.len());
        for name in newer {
            if let Some(p) = self
                .feed
                .client
                .get::<NetworkPolicy>(Some(ns), &name)
                .await?
            {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// One of the node's pods gave its addresses back: its rules go.
    pub async fn forget(&self, uid: &str) {
        let (this, nft_path, dns, uid) = (
            self.state.clone(),
            self.nft.clone(),
            self.dns,
            uid.to_string(),
        );
        let done = tokio::task::spawn_blocking(move || {
            let mut st = this.lock().unwrap_or_else(|p| p.into_inner());
            if !st.engine.is_local(&uid) {
                return Ok(Narrowed::Nothing);
            }
            st.engine.detach(&uid);
            st.flush(&nft_path, dns)
        })
        .await;
        match done {
            Ok(Ok(narrowed)) => cut_later(self.state.clone(), self.dns, narrowed),
            Ok(Err(e)) => warn!(error = %e, "could not remove a pod's network policy rules"),
            Err(e) => warn!(error = %e, "network policy task failed"),
        }
    }
}

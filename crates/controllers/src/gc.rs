//! The garbage collector: ownerReferences as Kubernetes means them. It mirrors the owner
//! references of every kind into a graph, and
//! - deletes an object once none of its owners exists any more (background cascading
//!   deletion; an owner is gone when the API server says so, or has another uid);
//! - for an owner deleted in the foreground (finalizer `foregroundDeletion`), deletes its
//!   dependents (in the foreground too, when they block their owner's deletion) and lets the
//!   owner go once no blocking dependent is left;
//! - for an owner deleted with orphaning (finalizer `orphan`), removes the references to it
//!   from its dependents, then lets it go.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use api::resources::Resource;
use client::{Client, ClientError, ListParams, Watcher, collection_path, watcher};
use serde_json::{Value, json};
use supervise::supervise;
use tokio::sync::Semaphore;
use tracing::{debug, info};

use crate::harness::{Outcome, Queue, Reconciler};

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

#[derive(Clone, Debug)]
struct Owner {
    uid: String,
    api_version: String,
    kind: String,
    name: String,
    blocks: bool,
}

#[derive(Clone, Debug)]
struct Object {
    resource: &'static Resource,
    namespace: Option<String>,
    name: String,
    owners: Vec<Owner>,
    deleting: bool,
    finalizers: Vec<String>,
}

impl Object {
    fn path(&self) -> String {
        format!(
            "{}/{}",
            collection_path(self.resource, self.namespace.as_deref()),
            self.name
        )
    }

    fn holds(&self, finalizer: &str) -> bool {
        self.deleting && self.finalizers.iter().any(|f| f == finalizer)
    }
}

#[derive(Default)]
struct Graph {
    objects: HashMap<String, Object>,
    /// owner uid -> dependent uids
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    fn put(&mut self, uid: &str, o: Object) {
        if let Some(old) = self.objects.remove(uid) {
            for ow in &old.owners {
                if let Some(d) = self.dependents.get_mut(&ow.uid) {
                    d.remove(uid);
                    if d.is_empty() {
                        self.dependents.remove(&ow.uid);
                    }
                }
            }
        }
        for ow in &o.owners {
            self.dependents
                .entry(ow.uid.clone())
                .or_default()
                .insert(uid.to_string());
        }
        self.objects.insert(uid.to_string(), o);
    }

    fn remove(&mut self, uid: &str) -> Option<Object> {
        let o = self.objects.remove(uid)?;
        for ow in &o.owners {
            if let Some(d) = self.dependents.get_mut(&ow.uid) {
                d.remove(uid);
                if d.is_empty() {
                    self.dependents.remove(&ow.uid);
                }
            }
        }
        Some(o)
    }

    fn dependents_of(&self, uid: &str) -> Vec<(String, Object)> {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| self.objects.get(d).map(|o| (d.clone(), o.clone())))
            .collect()
    }
}

/// The part of an object the collector reads: decoding only this skips the rest cheaply.
#[derive(serde::Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Lite {
    metadata: LiteMeta,
}

#[derive(serde::Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct LiteMeta {
    uid: Option<String>,
    resource_version: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
    deletion_timestamp: Option<String>,
    finalizers: Vec<String>,
    owner_references: Vec<LiteOwner>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct LiteOwner {
    uid: String,
    api_version: String,
    kind: String,
    name: String,
    block_owner_deletion: Option<bool>,
}

fn parse(resource: &'static Resource, v: Lite) -> Option<(String, Object)> {
    let m = v.metadata;
    let uid = m.uid?;
    let owners = m
        .owner_references
        .into_iter()
        .map(|r| Owner {
            uid: r.uid,
            api_version: r.api_version,
            kind: r.kind,
            name: r.name,
            blocks: r.block_owner_deletion.unwrap_or(false),
        })
        .collect();
    Some((
        uid,
        Object {
            resource,
            namespace: m.namespace,
            name: m.name.unwrap_or_default(),
            owners,
            deleting: m.deletion_timestamp.is_some(),
            finalizers: m.finalizers,
        },
    ))
}

pub struct GarbageCollector {
    client: Client,
    graph: Arc<Mutex<Graph>>,
    queue: Queue,
    kinds: Vec<&'static Resource>,
    /// One permit per kind whose first list is in the graph.
    listed: Arc<Semaphore>,
    /// Every kind listed once: from then on, changes queue what they concern.
    synced: Arc<AtomicBool>,
    /// Custom kinds followed, found through discovery, by `group/plural`; dropping one's
    /// task handle stops following it.
    custom: Mutex<HashMap<String, (&'static Resource, supervise::AbortOnDrop)>>,
}

/// How often discovery is read for custom kinds that came or went (Kubernetes' collector
/// resyncs every 30 s; reading discovery in-process costs little).
const DISCOVERY_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// How an owner stands, seen from a dependent.
enum Standing {
    Solid,
    Gone,
    /// Being deleted in the foreground: waiting for its dependents.
    Waiting,
}

impl GarbageCollector {
    pub fn new(client: Client) -> GarbageCollector {
        GarbageCollector {
            client,
            graph: Arc::default(),
            queue: Queue::new("garbage-collector"),
            kinds: api::resources::all()
                .iter()
                .filter(|r| r.kind != "Event")
                .collect(),
            listed: Arc::new(Semaphore::new(0)),
            synced: Arc::default(),
            custom: Mutex::default(),
        }
    }

    /// Follow custom kinds as they come and go, for as long as the task runs.
    pub async fn follow_custom(self: Arc<Self>) {
        loop {
            match crate::discovered::custom_resources(&self.client, &["list", "watch", "delete"])
                .await
            {
                Ok(found) => self.resync(found),
                Err(e) => debug!(error = %e, "reading discovery for custom kinds"),
            }
            tokio::time::sleep(DISCOVERY_EVERY).await;
        }
    }

    fn resync(&self, found: Vec<crate::discovered::Discovered>) {
        let mut custom = self.custom.lock().unwrap_or_else(|p| p.into_inner());
        let keys: HashSet<String> = found
            .iter()
            .map(|d| format!("{}/{}", d.group, d.plural))
            .collect();
        let vanished: Vec<String> = custom
            .keys()
            .filter(|k| !keys.contains(*k))
            .cloned()
            .collect();
        for k in vanished {
            if let Some((r, _task)) = custom.remove(&k) {
                let mut g = self.graph();
                let uids: Vec<String> = g
                    .objects
                    .iter()
                    .filter(|(_, o)| std::ptr::eq(o.resource, r))
                    .map(|(uid, _)| uid.clone())
                    .collect();
                for uid in uids {
                    gone(&mut g, &uid, &self.queue);
                }
                info!(
                    kind = r.kind,
                    group = r.group,
                    "no longer following a custom kind"
                );
            }
        }
        for d in found {
            let key = format!("{}/{}", d.group, d.plural);
            let r = api::custom::discovered(&d.group, &d.version, &d.kind, &d.plural, d.namespaced);
            if custom
                .get(&key)
                .is_some_and(|(have, _)| std::ptr::eq(*have, r))
            {
                continue;
            }
            let (client, graph, q) = (self.client.clone(), self.graph.clone(), self.queue.clone());
            let (listed, synced) = (Arc::new(Semaphore::new(0)), self.synced.clone());
            let task = supervise(r.kind, move || {
                follow(
                    client.clone(),
                    r,
                    graph.clone(),
                    q.clone(),
                    listed.clone(),
                    synced.clone(),
                )
            });
            debug!(kind = r.kind, group = r.group, "following a custom kind");
            custom.insert(key, (r, supervise::AbortOnDrop(task)));
        }
    }

    /// The kind an owner reference names: built in, or a custom kind followed (by group and
    /// kind, in whichever version discovery prefers).
    fn kind_of(&self, api_version: &str, kind: &str) -> Option<&'static Resource> {
        if let Some(r) = api::resources::by_kind(api_version, kind) {
            return Some(r);
        }
        let group = api_version.split_once('/').map_or("", |(g, _)| g);
        self.custom
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|(r, _)| *r)
            .find(|r| r.group == group && r.kind == kind)
    }

    /// The queue of object uids to look at.
    pub fn queue(&self) -> Queue {
        self.queue.clone()
    }

    fn graph(&self) -> std::sync::MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start mirroring every kind's owner references into the graph, one supervised
    /// follower per kind.
    pub fn follow_all(&self) {
        for &r in &self.kinds {
            let (client, graph, q) = (self.client.clone(), self.graph.clone(), self.queue.clone());
            let (listed, synced) = (self.listed.clone(), self.synced.clone());
            supervise(r.kind, move || {
                follow(
                    client.clone(),
                    r,
                    graph.clone(),
                    q.clone(),
                    listed.clone(),
                    synced.clone(),
                )
            });
        }
    }

    /// One object's part of collection.
    async fn process(&self, uid: &str) -> Outcome {
        let Some(o) = self.graph().objects.get(uid).cloned() else {
            return Ok(None);
        };
        if o.holds(ORPHAN) {
            let deps = self.graph().dependents_of(uid);
            for (dep_uid, dep) in deps {
                self.drop_owners(&dep_uid, &dep, &[uid.to_string()], &[])
                    .await?;
            }
            self.release(uid, &o, ORPHAN).await?;
            return Ok(None);
        }
        if o.holds(FOREGROUND) {
            let deps = self.graph().dependents_of(uid);
            let mut blocking = 0;
            for (dep_uid, dep) in &deps {
                let blocks = dep.owners.iter().any(|w| w.uid == uid && w.blocks);
                if blocks {
                    blocking += 1;
                }
                if !dep.deleting {
                    let policy = if blocks { "Foreground" } else { "Background" };
                    self.delete(dep_uid, dep, policy).await?;
                }
            }
            if blocking > 0 {
                // Their deletion events bring the owner back here.
                return Ok(None);
            }
            self.release(uid, &o, FOREGROUND).await?;
            return Ok(None);
        }
        if o.owners.is_empty() || o.deleting {
            return Ok(None);
        }
        let mut solid = 0;
        let mut gone = Vec::new();
        let mut waiting = Vec::new();
        for w in &o.owners {
            match self.standing(&o, w).await? {
                Standing::Solid => solid += 1,
                Standing::Gone => gone.push(w.uid.clone()),
                Standing::Waiting => waiting.push(w.uid.clone()),
            }
        }
        if solid == 0 {
            let foreground = o
                .owners
                .iter()
                .any(|w| w.blocks && waiting.contains(&w.uid));
            let policy = if foreground {
                "Foreground"
            } else {
                "Background"
            };
            info!(kind = o.resource.kind, name = %o.name, namespace = ?o.namespace, policy,
                  "owners gone; deleting");
            self.delete(uid, &o, policy).await?;
        } else if !gone.is_empty() || !waiting.is_empty() {
            // Some owner remains: forget the dead ones, and stop blocking the ones being
            // deleted in the foreground.
            self.drop_owners(uid, &o, &gone, &waiting).await?;
        }
        Ok(None)
    }

    async fn standing(&self, o: &Object, w: &Owner) -> Result<Standing, ClientError> {
        let known = self
            .graph()
            .objects
            .get(&w.uid)
            .map(|owner| owner.holds(FOREGROUND));
        if let Some(foreground) = known {
            return Ok(if foreground {
                Standing::Waiting
            } else {
                Standing::Solid
            });
        }
        // Not in the graph: gone, or the graph has not heard of it yet. Ask.
        let group = w.api_version.split_once('/').map_or("", |(g, _)| g);
        let builtin = api::resources::groups().iter().any(|(g, _)| *g == group);
        let Some(r) = self.kind_of(&w.api_version, &w.kind) else {
            if !builtin {
                // A custom kind discovery has not shown yet (or no longer shows): ask again
                // later, with the harness's back-off, rather than decide now.
                return Err(ClientError::Api {
                    code: 503,
                    reason: "ServiceUnavailable".into(),
                    message: format!(
                        "the kind of owner {} ({}) is not known yet",
                        w.name, w.api_version
                    ),
                });
            }
            // A kind this server does not serve: never delete on a guess.
            return Ok(Standing::Solid);
        };
        let ns = if r.namespaced {
            o.namespace.as_deref()
        } else {
            None
        };
        let path = format!("{}/{}", collection_path(r, ns), w.name);
        match self
            .client
            .request_json(http::Method::GET, &path, None)
            .await
        {
            Ok(v) if v["metadata"]["uid"].as_str() == Some(w.uid.as_str()) => {
                let deleting = v["metadata"]["deletionTimestamp"].is_string();
                let fg = v["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == FOREGROUND));
                Ok(if deleting && fg {
                    Standing::Waiting
                } else {
                    Standing::Solid
                })
            }
            Ok(_) => Ok(Standing::Gone),
            Err(e) if e.is_not_found() => Ok(Standing::Gone),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, uid: &str, o: &Object, policy: &str) -> Result<(), ClientError> {
        let opts = json!({"kind": "DeleteOptions", "apiVersion": "v1",
                          "propagationPolicy": policy, "preconditions": {"uid": uid}});
        match self.client.delete_with(&o.path(), &opts).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Remove the references to `gone` owners and clear blockOwnerDeletion on `unblock`.
    async fn drop_owners(
        &self,
        uid: &str,
        o: &Object,
        gone: &[String],
        unblock: &[String],
    ) -> Result<(), ClientError> {
        let path = o.path();
        for _ in 0..5 {
            let v = match self
                .client
                .request_json(http::Method::GET, &path, None)
                .await
            {
                Ok(v) => v,
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(e),
            };
            if v["metadata"]["uid"].as_str() != Some(uid) {
                return Ok(());
            }
            let refs: Vec<Value> = v["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| !gone.iter().any(|g| r["uid"] == g.as_str()))
                .map(|r| {
                    let mut r = r.clone();
                    if unblock.iter().any(|u| r["uid"] == u.as_str()) {
                        r["blockOwnerDeletion"] = json!(false);
                    }
                    r
                })
                .collect();
            let patch = json!({"metadata": {"ownerReferences": refs,
                                            "resourceVersion": v["metadata"]["resourceVersion"]}});
            match self
                .client
                .request(
                    http::Method::PATCH,
                    &path,
                    "application/merge-patch+json",
                    bytes::Bytes::from(patch.to_string()),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.is_conflict() => continue,
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Api {
            code: 409,
            reason: "Conflict".into(),
            message: format!("{path} kept changing"),
        })
    }

    /// Remove `finalizer` from the owner so that the API server can finish deleting it.
    async fn release(&self, uid: &str, o: &Object, finalizer: &str) -> Result<(), ClientError> {
        let path = o.path();
        for _ in 0..5 {
            let v = match self
                .client
                .request_json(http::Method::GET, &path, None)
                .await
            {
                Ok(v) => v,
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(e),
            };
            if v["metadata"]["uid"].as_str() != Some(uid) {
                return Ok(());
            }
            let finalizers: Vec<Value> = v["metadata"]["finalizers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| *f != finalizer)
                .cloned()
                .collect();
            let patch = json!({"metadata": {"finalizers": finalizers,
                                            "resourceVersion": v["metadata"]["resourceVersion"]}});
            match self
                .client
                .request(
                    http::Method::PATCH,
                    &path,
                    "application/merge-patch+json",
                    bytes::Bytes::from(patch.to_string()),
                )
                .await
            {
                Ok(_) => {
                    debug!(kind = o.resource.kind, name = %o.name, finalizer, "released");
                    return Ok(());
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Api {
            code: 409,
            reason: "Conflict".into(),
            message: format!("{path} kept changing"),
        })
    }
}

/// Mirror one kind into the graph and queue what a change makes worth a look.
async fn follow(
    client: Client,
    r: &'static Resource,
    graph: Arc<Mutex<Graph>>,
    q: Queue,
    listed: Arc<Semaphore>,
    synced: Arc<AtomicBool>,
) {
    let mut w = Watcher::<Lite>::at(
        client,
        collection_path(r, None),
        r.kind,
        ListParams::default(),
        |l| l.metadata.resource_version.as_deref(),
    );
    let mut first = true;
    loop {
        let event = w.next().await;
        let live = synced.load(Ordering::Acquire);
        let mut g = graph.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            watcher::Event::Restarted(items) => {
                let fresh: HashMap<String, Object> =
                    items.into_iter().filter_map(|v| parse(r, v)).collect();
                let stale: Vec<String> = g
                    .objects
                    .iter()
                    .filter(|(uid, o)| std::ptr::eq(o.resource, r) && !fresh.contains_key(*uid))
                    .map(|(uid, _)| uid.clone())
                    .collect();
                for uid in stale {
                    gone(&mut g, &uid, &q);
                }
                for (uid, o) in fresh {
                    changed(&mut g, &uid, o, &q, live);
                }
                if first {
                    listed.add_permits(1);
                    first = false;
                }
            }
            watcher::Event::Applied(v) => {
                if let Some((uid, o)) = parse(r, v) {
                    changed(&mut g, &uid, o, &q, live);
                }
            }
            watcher::Event::Deleted(v) => {
                if let Some(uid) = v.metadata.uid {
                    gone(&mut g, &uid, &q);
                }
            }
        }
    }
}

fn changed(g: &mut Graph, uid: &str, o: Object, q: &Queue, live: bool) {
    let look = o.holds(ORPHAN)
        || o.holds(FOREGROUND)
        || o.owners.iter().any(|w| match g.objects.get(&w.uid) {
            None => true,
            Some(owner) => owner.holds(FOREGROUND),
        });
    let became_foreground = o.holds(FOREGROUND);
    g.put(uid, o);
    if live && look {
        q.add(uid);
    }
    if live && became_foreground {
        // Its dependents are now waiting on it.
        for (d, _) in g.dependents_of(uid) {
            q.add(&d);
        }
    }
}

fn gone(g: &mut Graph, uid: &str, q: &Queue) {
    let Some(o) = g.remove(uid) else { return };
    for (d, _) in g.dependents_of(uid) {
        q.add(&d);
    }
    // An owner deleted in the foreground may now be free to go.
    for w in &o.owners {
        if g.objects.get(&w.uid).is_some_and(|x| x.holds(FOREGROUND)) {
            q.add(&w.uid);
        }
    }
}

#[async_trait::async_trait]
impl Reconciler for GarbageCollector {
    fn name(&self) -> &'static str {
        "garbage-collector"
    }

    /// Decide only on a whole graph: wait for every kind's first list, then look at all.
    async fn ready(&self) {
        let _all = self.listed.acquire_many(self.kinds.len() as u32).await;
        let uids: Vec<String> = self.graph().objects.keys().cloned().collect();
        self.synced.store(true, Ordering::Release);
        for uid in uids {
            self.queue.add(&uid);
        }
        info!(kinds = self.kinds.len(), "garbage collector synced");
    }

    async fn reconcile(&self, uid: &str) -> Outcome {
        self.process(uid).await
    }
}

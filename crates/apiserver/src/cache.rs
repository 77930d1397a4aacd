//! The watch cache: every read the API server serves comes from here.
//!
//! One dispatcher follows the store's changes in revision order and applies them to a
//! per-resource map of decoded entries. Each entry keeps its JSON (with `resourceVersion`
//! set), labels, selectable fields and table cells, computed once per write, so that lists are
//! concatenations of shared bytes. A bounded history of recent events lets watchers resume from
//! an older revision; persistent maps make a list snapshot free, so paginated lists stay
//! consistent at their first page's revision.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use api::k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use api::selector::{FieldSelector, LabelSelectorExpr};
use api::{Registry, Resource};
use bytes::Bytes;
use imbl::OrdMap;
use serde_json::Value;
use store::{EventKind, KeyValue, Revision, Store, StoreError};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::errors::ApiError;
use crate::table::{self, Cell};

/// Events kept per resource for watchers that resume from an older revision.
const HISTORY: usize = 10_000;
/// Revisions of store history loaded into the cache's history at startup, so that clients can
/// resume their watches across an API server restart.
const PREFILL: Revision = 10_000;
/// Messages a watcher may fall behind before it is closed. Each is a shared pointer and the
/// channel allocates only as it fills, so the bound is generous: a controller that watches all
/// pods while tens of thousands are created and bound must not be forced to relist them all.
const WATCHER_BACKLOG: usize = 65_536;
/// Bytes of objects a watcher may hold queued and untaken before it is closed (with a 410, so
/// its client lists again): a client that stops reading cannot make the server hold more.
const WATCHER_BYTES: usize = 16 << 20;
/// Bytes of superseded objects a resource's history may hold, besides its event count bound.
const HISTORY_BYTES: usize = 64 << 20;
/// How long a list snapshot is kept for `continue` tokens.
const SNAPSHOT_TTL: Duration = Duration::from_secs(300);
const SNAPSHOTS_KEPT: usize = 16;

/// One object as the cache holds it.
#[derive(Debug)]
pub struct Entry {
    /// `namespace/name`, or `name` for cluster-scoped objects.
    pub key: String,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
    pub rev: Revision,
    /// The object's JSON with `metadata.resourceVersion` set.
    pub json: Bytes,
    pub labels: BTreeMap<String, String>,
    pub fields: Vec<(&'static str, String)>,
    pub cells: Vec<Cell>,
    /// `PartialObjectMetadata`, the default `object` of a table row.
    pub meta: Bytes,
}

impl Entry {
    pub fn build(resource: &Resource, mut obj: Value, rev: Revision) -> Entry {
        obj["metadata"]["resourceVersion"] = Value::String(rev.to_string());
        let json = Bytes::from(api::wire::to_vec(&obj));
        Entry::derive(resource, &obj, rev, json)
    }

    /// The entry of an object as stored. The JSON kept is the stored text with the
    /// `resourceVersion` put in, not a re-encoding; what the entry derives (labels, fields,
    /// cells) comes from a parse that skips `managedFields`, which none of it reads.
    pub fn decode(resource: &Resource, stored: &[u8], rev: Revision) -> serde_json::Result<Entry> {
        use serde::de::DeserializeSeed;
        if let Some(c) = resource.ops.custom() {
            let obj: Value = serde_json::from_slice(stored)?;
            let obj = c.kind().on_read(&obj).unwrap_or(obj);
            return Ok(Entry::build(resource, obj, rev));
        }
        let skimmed = with_resource_version(stored, rev).and_then(|json| {
            let mut de = serde_json::Deserializer::from_slice(stored);
            let obj = Skim { depth: 0 }.deserialize(&mut de).ok()?;
            de.end().ok()?;
            // Anything unexpected (a stored version, a metadata that is no object) takes
            // the long way.
            let plain = obj["metadata"].is_object() && obj["metadata"]["resourceVersion"].is_null();
            plain.then_some((obj, json))
        });
        let Some((mut obj, json)) = skimmed else {
            return Ok(Entry::build(resource, serde_json::from_slice(stored)?, rev));
        };
        obj["metadata"]["resourceVersion"] = Value::String(rev.to_string());
        Ok(Entry::derive(resource, &obj, rev, Bytes::from(json)))
    }

    fn derive(resource: &Resource, obj: &Value, rev: Revision, json: Bytes) -> Entry {
        let meta = &obj["metadata"];
        let namespace = meta["namespace"].as_str().map(str::to_string);
        let name = meta["name"].as_str().unwrap_or_default().to_string();
        let key = match &namespace {
            Some(ns) if resource.namespaced => format!("{ns}/{name}"),
            _ => name.clone(),
        };
        Entry {
            key,
            namespace,
            uid: meta["uid"].as_str().unwrap_or_default().to_string(),
            name,
            rev,
            labels: table::labels_of(obj),
            fields: resource.field_values(obj),
            cells: table::cells_of(resource, obj),
            meta: Bytes::from(table::partial_metadata(obj).to_string()),
            json,
        }
    }

    /// The object, decoded again (writes start from it).
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.json).unwrap_or(Value::Null)
    }

    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(f, _)| *f == name)
            .map(|(_, v)| v.as_str())
    }

    /// The same object at a later revision: how a deletion is reported.
    fn at(&self, resource: &Resource, rev: Revision) -> Entry {
        Entry::build(resource, self.value(), rev)
    }
}

/// `json` with `"resourceVersion":"<rev>"` in its top-level `metadata` object, where
/// ObjectMeta's order puts it (after the uid), or `None` if it has none. (The store never
/// holds a `resourceVersion`, so there is none to replace.)
fn with_resource_version(json: &[u8], rev: Revision) -> Option<Vec<u8>> {
    let (at, comma_before, comma_after) = api::jsontext::resource_version_slot(json)?;
    let field = format!(
        "{}\"resourceVersion\":\"{rev}\"{}",
        if comma_before { "," } else { "" },
        if comma_after { "," } else { "" }
    );
    let mut out = Vec::with_capacity(json.len() + field.len());
    out.extend_from_slice(&json[..at]);
    out.extend_from_slice(field.as_bytes());
    out.extend_from_slice(&json[at..]);
    Some(out)
}

/// Decodes an object as a JSON tree without `metadata.managedFields` (the largest part of
/// most objects, and of no use to what the cache derives).
struct Skim {
    /// 0 for the object itself, 1 for its `metadata`.
    depth: u8,
}

impl<'de> serde::de::DeserializeSeed<'de> for Skim {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Skim {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(k) = map.next_key::<String>()? {
            match (self.depth, k.as_str()) {
                (0, "metadata") => {
                    let v = map.next_value_seed(Skim { depth: 1 })?;
                    out.insert(k, v);
                }
                (1, "managedFields") => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
                _ => {
                    out.insert(k, map.next_value()?);
                }
            }
        }
        Ok(Value::Object(out))
    }
}

/// Which objects a list or watch wants.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub namespace: Option<String>,
    pub labels: LabelSelectorExpr,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches(&self, e: &Entry) -> bool {
        if let Some(ns) = &self.namespace
            && e.namespace.as_deref() != Some(ns.as_str())
        {
            return false;
        }
        self.labels.matches(&e.labels) && self.fields.matches(|f| e.field(f))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change of one resource, as the cache saw it.
#[derive(Debug)]
pub struct CacheEvent {
    pub rev: Revision,
    pub ty: EventType,
    /// The object after the change; for a deletion, its last state at the deletion's revision.
    pub obj: Arc<Entry>,
    pub prev: Option<Arc<Entry>>,
}

impl CacheEvent {
    /// How this change looks through a filter: objects moving into the filter are added,
    /// objects moving out are deleted.
    fn through(&self, f: &Filter) -> Option<EventType> {
        let now = f.matches(&self.obj);
        let before = self.prev.as_ref().is_some_and(|p| f.matches(p));
        match (self.ty, before, now) {
            (EventType::Deleted, _, true) => Some(EventType::Deleted),
            (EventType::Deleted, _, false) => None,
            (_, false, true) => Some(EventType::Added),
            (_, true, true) => Some(EventType::Modified),
            (_, true, false) => Some(EventType::Deleted),
            (_, false, false) => None,
        }
    }
}

/// What a watcher receives.
#[derive(Debug)]
pub enum WatchMsg {
    Event(EventType, Arc<Entry>),
    /// Progress: everything up to this revision has been sent. The flag marks the end of the
    /// initial events of a `sendInitialEvents` watch.
    Bookmark(Revision, bool),
}

struct Watcher {
    tx: mpsc::Sender<WatchMsg>,
    filter: Arc<Filter>,
    bookmarks: bool,
    queued: Arc<AtomicUsize>,
    lagged: Arc<AtomicBool>,
}

/// The bytes a message keeps alive while it waits in a watcher's queue.
fn message_bytes(m: &WatchMsg) -> usize {
    match m {
        WatchMsg::Event(_, e) => e.json.len() + e.meta.len(),
        WatchMsg::Bookmark(..) => 0,
    }
}

/// The receiving end of a watch: its messages, counted out of its byte budget as they are
/// taken.
pub struct WatchRx {
    rx: mpsc::Receiver<WatchMsg>,
    queued: Arc<AtomicUsize>,
    lagged: Arc<AtomicBool>,
}

impl WatchRx {
    pub async fn recv(&mut self) -> Option<WatchMsg> {
        let m = self.rx.recv().await?;
        self.queued.fetch_sub(message_bytes(&m), Ordering::Relaxed);
        Some(m)
    }

    /// Whether the cache closed this watch because its reader fell too far behind.
    pub fn lagged(&self) -> bool {
        self.lagged.load(Ordering::Relaxed)
    }
}

struct State {
    items: OrdMap<String, Arc<Entry>>,
    /// Revision of the last event applied to this resource.
    rev: Revision,
    history: VecDeque<Arc<CacheEvent>>,
    /// The bytes of the objects in `history`.
    history_bytes: usize,
    /// Every event of this resource after this revision is in `history`.
    history_start: Revision,
    watchers: Vec<Watcher>,
}

/// A consistent view of one resource at one revision.
#[derive(Clone)]
pub struct Snapshot {
    pub items: OrdMap<String, Arc<Entry>>,
    pub rev: Revision,
}

/// Where a watch starts.
#[derive(Clone, Copy, Debug)]
pub enum WatchFrom {
    /// Synthetic ADDED events for everything that exists now, then changes.
    Now { initial_events_end: bool },
    /// Changes after this revision.
    After(Revision),
}

pub struct ResourceCache {
    /// Replaced when a custom kind's definition changes.
    resource: RwLock<&'static Resource>,
    state: RwLock<State>,
    snapshots: Mutex<VecDeque<(Snapshot, Instant)>>,
}

impl ResourceCache {
    fn new(resource: &'static Resource, rev: Revision) -> ResourceCache {
        ResourceCache {
            resource: RwLock::new(resource),
            state: RwLock::new(State {
                items: OrdMap::new(),
                rev,
                history: VecDeque::new(),
                history_bytes: 0,
                history_start: rev,
                watchers: Vec::new(),
            }),
            snapshots: Mutex::new(VecDeque::new()),
        }
    }

    pub fn resource(&self) -> &'static Resource {
        *self.resource.read().unwrap_or_else(|p| p.into_inner())
    }

    fn set_resource(&self, r: &'static Resource) {
        *self.resource.write().unwrap_or_else(|p| p.into_inner()) = r;
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The revision this resource's view is at, given the dispatcher's progress.
    fn view_rev(st: &State, synced: Revision) -> Revision {
        st.rev.max(synced)
    }

    pub fn snapshot(&self, synced: Revision) -> Snapshot {
        let st = self.read();
        Snapshot {
            items: st.items.clone(),
            rev: Self::view_rev(&st, synced),
        }
    }

    pub fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.read().items.get(key).cloned()
    }

    /// Keep a snapshot for the `continue` token of a paginated list.
    pub fn keep_snapshot(&self, snap: &Snapshot) {
        let mut kept = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        if kept.iter().any(|(s, _)| s.rev == snap.rev) {
            return;
        }
        kept.retain(|(_, at)| at.elapsed() < SNAPSHOT_TTL);
        if kept.len() >= SNAPSHOTS_KEPT {
            kept.pop_front();
        }
        kept.push_back((snap.clone(), Instant::now()));
    }

    pub fn kept_snapshot(&self, rev: Revision) -> Option<Snapshot> {
        let kept = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        kept.iter()
            .find(|(s, at)| s.rev == rev && at.elapsed() < SNAPSHOT_TTL)
            .map(|(s, _)| s.clone())
    }

    /// Register a watcher. Returns the messages to send first and the channel of the rest.
    pub fn watch(
        &self,
        filter: Filter,
        from: WatchFrom,
        bookmarks: bool,
        synced: Revision,
    ) -> Result<(Vec<WatchMsg>, WatchRx), ApiError> {
        let filter = Arc::new(filter);
        let mut st = self.write();
        let mut initial = Vec::new();
        match from {
            WatchFrom::Now { initial_events_end } => {
                for e in st.items.values() {
                    if filter.matches(e) {
                        initial.push(WatchMsg::Event(EventType::Added, e.clone()));
                    }
                }
                if initial_events_end {
                    initial.push(WatchMsg::Bookmark(Self::view_rev(&st, synced), true));
                }
            }
            WatchFrom::After(rev) => {
                if rev < st.history_start {
                    return Err(ApiError::gone(format!(
                        "too old resource version: {rev} ({})",
                        st.history_start + 1
                    )));
                }
                let start = st.history.partition_point(|e| e.rev <= rev);
                for ev in st.history.range(start..) {
                    if let Some(ty) = ev.through(&filter) {
                        initial.push(WatchMsg::Event(ty, ev.obj.clone()));
                    }
                }
            }
        }
        let (tx, rx) = mpsc::channel(WATCHER_BACKLOG);
        let queued = Arc::new(AtomicUsize::new(0));
        let lagged = Arc::new(AtomicBool::new(false));
        st.watchers.push(Watcher {
            tx,
            filter,
            bookmarks,
            queued: queued.clone(),
            lagged: lagged.clone(),
        });
        Ok((initial, WatchRx { rx, queued, lagged }))
    }

    fn apply(&self, ev: Arc<CacheEvent>) {
        let mut st = self.write();
        match ev.ty {
            EventType::Deleted => {
                st.items.remove(&ev.obj.key);
            }
            _ => {
                st.items.insert(ev.obj.key.clone(), ev.obj.clone());
            }
        }
        st.rev = ev.rev;
        st.watchers.retain(|w| {
            let Some(ty) = ev.through(&w.filter) else {
                return !w.tx.is_closed();
            };
            let msg = WatchMsg::Event(ty, ev.obj.clone());
            let size = message_bytes(&msg);
            if w.queued.load(Ordering::Relaxed) + size > WATCHER_BYTES {
                warn!(
                    resource = self.resource().plural,
                    "closing a watcher that fell too far behind"
                );
                w.lagged.store(true, Ordering::Relaxed);
                return false;
            }
            match w.tx.try_send(msg) {
                Ok(()) => {
                    w.queued.fetch_add(size, Ordering::Relaxed);
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    warn!(
                        resource = self.resource().plural,
                        "closing a watcher that fell too far behind"
                    );
                    w.lagged.store(true, Ordering::Relaxed);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        push_history(&mut st, ev);
    }

    fn bookmark(&self, synced: Revision) {
        let mut st = self.write();
        let rev = Self::view_rev(&st, synced);
        st.watchers.retain(|w| {
            if !w.bookmarks {
                return !w.tx.is_closed();
            }
            !matches!(
                w.tx.try_send(WatchMsg::Bookmark(rev, false)),
                Err(mpsc::error::TrySendError::Closed(_))
            )
        });
    }

    /// Replace the whole view after the cache lost track of the store; watchers must relist.
    fn reset(&self, items: OrdMap<String, Arc<Entry>>, rev: Revision) {
        let mut st = self.write();
        st.items = items;
        st.rev = rev;
        st.history.clear();
        st.history_bytes = 0;
        st.history_start = rev;
        st.watchers.clear();
    }

    pub fn watcher_count(&self) -> usize {
        self.read().watchers.len()
    }
}

fn event_bytes(ev: &CacheEvent) -> usize {
    ev.obj.json.len() + ev.obj.meta.len()
}

fn push_history(st: &mut State, ev: Arc<CacheEvent>) {
    st.history_bytes += event_bytes(&ev);
    st.history.push_back(ev);
    while st.history.len() > HISTORY || (st.history_bytes > HISTORY_BYTES && st.history.len() > 1) {
        if let Some(old) = st.history.pop_front() {
            st.history_bytes -= event_bytes(&old);
            st.history_start = old.rev;
        }
    }
}

/// Told of every change to the resources it follows, in the cache's order, as the cache
/// applies it (the authorizer keeps its index of roles and bindings this way).
pub trait Observer: Send + Sync {
    fn follows(&self, r: &Resource) -> bool;
    /// Everything of `r` the cache holds (at start, and again after a reload).
    fn loaded(&self, r: &Resource, items: &OrdMap<String, Arc<Entry>>);
    fn changed(&self, r: &Resource, ev: &CacheEvent);
}

pub struct Cache {
    observers: Vec<Arc<dyn Observer>>,
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    /// Key prefix (`/registry/group/plural/`) to its resource's cache: the built-in ones from
    /// the start, custom ones while their definition is established.
    by_prefix: RwLock<HashMap<String, Arc<ResourceCache>>>,
    synced: watch::Sender<Revision>,
}

/// One resource's objects by key.
type Items = OrdMap<String, Arc<Entry>>;

/// The resource prefix of a storage key: `/registry/apps/deployments/ns/x` ->
/// `/registry/apps/deployments/`.
fn prefix_of(key: &str) -> Option<&str> {
    let mut slashes = key.match_indices('/').map(|(i, _)| i);
    let end = slashes.nth(3)?;
    Some(&key[..=end])
}

impl Cache {
    /// Load everything from the store, then follow it. Watchers that asked for bookmarks get
    /// one every `bookmark_every`.
    pub async fn start(
        store: Arc<dyn Store>,
        bookmark_every: Duration,
        observers: Vec<Arc<dyn Observer>>,
    ) -> Result<Arc<Cache>, StoreError> {
        let started = Instant::now();
        let (kvs, rev) = store.list("/registry/").await?;
        let by_prefix = api::resources::all()
            .iter()
            .map(|r| (r.key_prefix(), Arc::new(ResourceCache::new(r, rev))))
            .collect();
        let cache = Arc::new(Cache {
            observers,
            store: store.clone(),
            registry: Arc::new(Registry::default()),
            by_prefix: RwLock::new(by_prefix),
            synced: watch::channel(rev).0,
        });
        let count = kvs.len();
        cache.define_all(&kvs, rev);
        for (rc, items) in cache.build_items(kvs) {
            cache.loaded(&rc, &items);
            rc.write().items = items;
        }
        cache.prefill_history(rev).await;
        info!(
            objects = count,
            revision = rev,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "cache loaded"
        );
        // Restarted after a panic, the dispatcher resumes after the last revision it applied
        // in full.
        let dispatcher = cache.clone();
        supervise::supervise("watch-cache", move || {
            let d = dispatcher.clone();
            async move {
                let from = d.synced();
                d.follow(from).await
            }
        });
        let ticker = cache.clone();
        supervise::supervise("watch-bookmarks", move || {
            ticker.clone().bookmarks(bookmark_every)
        });
        Ok(cache)
    }

    /// What is served: the built-in resources and the established custom ones.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    fn caches(&self) -> Vec<Arc<ResourceCache>> {
        self.by_prefix
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn cache_at(&self, prefix: &str) -> Option<Arc<ResourceCache>> {
        self.by_prefix
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(prefix)
            .cloned()
    }

    /// Serve the definitions among `kvs` (all of the store at `rev`), and stop serving those
    /// that are gone: at start, and after a reload.
    fn define_all(&self, kvs: &[KeyValue], rev: Revision) {
        let prefix = crate::crds::definitions().key_prefix();
        let mut present = Vec::new();
        for kv in kvs.iter().filter(|kv| kv.key.starts_with(&prefix)) {
            match serde_json::from_slice::<CustomResourceDefinition>(&kv.value) {
                Ok(crd) => {
                    present.push(crd.metadata.name.clone().unwrap_or_default());
                    self.define(&crd, rev);
                }
                Err(e) => {
                    error!(key = kv.key, error = %e, "stored definition does not decode; its kind is not served")
                }
            }
        }
        for r in self.registry.custom_resources() {
            let name = format!("{}.{}", r.plural, r.group);
            if !present.contains(&name) {
                self.undefine(&name);
            }
        }
    }

    /// Serve what a definition defines, from now on (revision `rev`), if it is established.
    fn define(&self, crd: &CustomResourceDefinition, rev: Revision) {
        let name = crd.metadata.name.clone().unwrap_or_default();
        if !api::custom::definition::is_established(crd) {
            // Not served: neither its kinds nor a cache of their objects.
            self.registry.set_definition(&name, Vec::new());
            let prefix = format!("/registry/{}/{}/", crd.spec.group, crd.spec.names.plural);
            self.by_prefix
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&prefix);
            return;
        }
        let served = api::custom::descriptors(crd);
        let storage = crd
            .spec
            .versions
            .iter()
            .find(|v| v.storage)
            .map(|v| v.name.as_str());
        let Some(main) = served
            .iter()
            .find(|r| Some(r.version) == storage)
            .or(served.first())
            .copied()
        else {
            self.registry.set_definition(&name, Vec::new());
            return;
        };
        let prefix = main.key_prefix();
        let existing = self.cache_at(&prefix);
        match existing {
            Some(rc) => {
                // Columns, selectable fields or defaults may have changed: derive the entries
                // again from their objects.
                rc.set_resource(main);
                let items: OrdMap<String, Arc<Entry>> = rc
                    .read()
                    .items
                    .iter()
                    .map(|(k, e)| {
                        let v = e.value();
                        let v = match main.ops.custom() {
                            Some(c) => c.kind().on_read(&v).unwrap_or(v),
                            None => v,
                        };
                        (k.clone(), Arc::new(Entry::build(main, v, e.rev)))
                    })
                    .collect();
                rc.write().items = items;
            }
            None => {
                self.by_prefix
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(prefix, Arc::new(ResourceCache::new(main, rev)));
            }
        }
        self.registry.set_definition(&name, served);
    }

    /// Stop serving a definition's kinds (its objects are gone by then).
    fn undefine(&self, name: &str) {
        let served = self.registry.of_definition(name);
        self.registry.set_definition(name, Vec::new());
        if let Some(r) = served.first() {
            self.by_prefix
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&r.key_prefix());
        }
    }

    /// A definition was written or deleted: follow it.
    fn definition_changed(&self, ev: &CacheEvent) {
        let value = ev.obj.value();
        let Ok(crd) = serde_json::from_value::<CustomResourceDefinition>(value) else {
            return;
        };
        match ev.ty {
            EventType::Deleted => self.undefine(&ev.obj.name),
            _ => self.define(&crd, ev.rev),
        }
    }

    fn build_items(&self, kvs: Vec<KeyValue>) -> Vec<(Arc<ResourceCache>, Items)> {
        let map = self.by_prefix.read().unwrap_or_else(|p| p.into_inner());
        let mut items: HashMap<&str, OrdMap<String, Arc<Entry>>> =
            map.keys().map(|k| (k.as_str(), OrdMap::new())).collect();
        for kv in kvs {
            let Some(p) = prefix_of(&kv.key) else {
                continue;
            };
            let (Some(rc), Some(slot)) = (map.get(p), items.get_mut(p)) else {
                continue;
            };
            if let Some(e) = Self::decode(rc, &kv.value, kv.mod_revision) {
                slot.insert(e.key.clone(), Arc::new(e));
            }
        }
        items
            .into_iter()
            .map(|(p, items)| (map[p].clone(), items))
            .collect()
    }

    fn decode(rc: &ResourceCache, value: &[u8], rev: Revision) -> Option<Entry> {
        let resource = rc.resource();
        match Entry::decode(resource, value, rev) {
            Ok(e) => Some(e),
            Err(e) => {
                error!(resource = resource.plural, rev, error = %e, "stored object is not JSON; skipped");
                None
            }
        }
    }

    /// Load recent store history into the per-resource histories.
    async fn prefill_history(&self, rev: Revision) {
        let compacted = self.store.compacted_revision().await.unwrap_or(rev);
        let from = rev.saturating_sub(PREFILL).max(compacted);
        if from >= rev {
            return;
        }
        let Ok(mut w) = self.store.watch("/registry/", from).await else {
            return;
        };
        let mut started: std::collections::HashSet<String> = Default::default();
        'outer: while let Some(Ok(batch)) = w.next().await {
            for ev in batch {
                if ev.revision() > rev {
                    break 'outer;
                }
                let Some(p) = prefix_of(&ev.kv.key) else {
                    continue;
                };
                let Some(rc) = self.cache_at(p) else {
                    continue;
                };
                let Some(ce) = Self::cache_event(&rc, &ev, None) else {
                    continue;
                };
                let mut st = rc.write();
                if started.insert(p.to_string()) {
                    st.history_start = from;
                }
                push_history(&mut st, Arc::new(ce));
                if ev.revision() == rev {
                    break 'outer;
                }
            }
        }
        // Resources that saw no event in the window are complete from `from` on as well.
        for rc in self.caches() {
            if !started.contains(&rc.resource().key_prefix()) {
                let mut st = rc.write();
                st.history_start = from;
            }
        }
    }

    /// Turn a store event into a cache event. `current` is the cache's entry for the key, used
    /// when the store no longer has the previous value.
    fn cache_event(
        rc: &ResourceCache,
        ev: &store::Event,
        current: Option<Arc<Entry>>,
    ) -> Option<CacheEvent> {
        let resource = rc.resource();
        let rev = ev.revision();
        let prev = match (&ev.prev, current) {
            (_, Some(c)) => Some(c),
            (Some(p), None) => Self::decode(rc, &p.value, p.mod_revision).map(Arc::new),
            (None, None) => None,
        };
        match ev.kind {
            EventKind::Put => {
                let obj = Arc::new(Self::decode(rc, &ev.kv.value, rev)?);
                let ty = if prev.is_some() && ev.kv.version > 1 {
                    EventType::Modified
                } else {
                    EventType::Added
                };
                Some(CacheEvent { rev, ty, obj, prev })
            }
            EventKind::Delete => {
                let last = prev.clone()?;
                Some(CacheEvent {
                    rev,
                    ty: EventType::Deleted,
                    obj: Arc::new(last.at(resource, rev)),
                    prev,
                })
            }
        }
    }

    /// The dispatcher: apply store changes in order, forever.
    async fn follow(self: Arc<Self>, mut rev: Revision) {
        // A store behind a network (etcd) may be gone for a moment (an election takes about a
        // second): try again soon, then less often, up to a quarter of a second apart.
        let mut retry = Duration::from_millis(20);
        loop {
            let mut w = match self.store.watch("/registry/", rev).await {
                Ok(w) => {
                    retry = Duration::from_millis(20);
                    w
                }
                Err(StoreError::Compacted { .. }) => {
                    rev = self.relist().await;
                    continue;
                }
                Err(StoreError::Closed) => return,
                Err(e) => {
                    error!(error = %e, "cannot watch the store; retrying");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(Duration::from_millis(250));
                    continue;
                }
            };
            while let Some(batch) = w.next().await {
                match batch {
                    Ok(events) => {
                        for ev in events {
                            self.dispatch(&ev);
                            rev = ev.revision();
                        }
                        self.synced.send_replace(rev);
                    }
                    Err(e) => {
                        warn!(error = %e, revision = rev, "store watch ended; resuming");
                        break;
                    }
                }
            }
        }
    }

    fn dispatch(&self, ev: &store::Event) {
        let Some(rc) = prefix_of(&ev.kv.key).and_then(|p| self.cache_at(p)) else {
            return;
        };
        let resource = rc.resource();
        let key = ev.kv.key[resource.key_prefix().len()..].to_string();
        let current = rc.get(&key);
        if let Some(ce) = Self::cache_event(&rc, ev, current) {
            for o in &self.observers {
                if o.follows(resource) {
                    o.changed(resource, &ce);
                }
            }
            let ce = Arc::new(ce);
            rc.apply(ce.clone());
            if std::ptr::eq(resource, crate::crds::definitions()) {
                self.definition_changed(&ce);
            }
        }
    }

    fn loaded(&self, rc: &ResourceCache, items: &OrdMap<String, Arc<Entry>>) {
        let r = rc.resource();
        for o in &self.observers {
            if o.follows(r) {
                o.loaded(r, items);
            }
        }
    }

    /// Reload everything after falling behind the store's compaction. Watchers are dropped and
    /// will relist.
    async fn relist(&self) -> Revision {
        loop {
            match self.store.list("/registry/").await {
                Ok((kvs, rev)) => {
                    self.define_all(&kvs, rev);
                    for (rc, items) in self.build_items(kvs) {
                        self.loaded(&rc, &items);
                        rc.reset(items, rev);
                    }
                    self.synced.send_replace(rev);
                    warn!(
                        revision = rev,
                        "cache reloaded after falling behind compaction"
                    );
                    return rev;
                }
                Err(e) => {
                    error!(error = %e, "cannot reload the cache; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn bookmarks(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let synced = self.synced();
            for r in self.caches() {
                r.bookmark(synced);
            }
        }
    }

    /// The cache of a served resource. Built-in resources always have one; a custom one has
    /// one while its definition is established (a request that raced the definition's removal
    /// sees an empty cache).
    pub fn resource(&self, r: &'static Resource) -> Arc<ResourceCache> {
        self.cache_at(&r.key_prefix())
            .unwrap_or_else(|| Arc::new(ResourceCache::new(r, self.synced())))
    }

    /// The revision the cache has applied.
    pub fn synced(&self) -> Revision {
        *self.synced.borrow()
    }

    /// Wait until the cache has applied revision `rev`, or fail after `timeout`.
    pub async fn wait_for(&self, rev: Revision, timeout: Duration) -> Result<(), ApiError> {
        let mut rx = self.synced.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|r| *r >= rev)).await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ApiError::unavailable("the cache stopped")),
            Err(_) => {
                debug!(
                    rev,
                    synced = self.synced(),
                    "cache did not catch up in time"
                );
                Err(ApiError::timeout(format!(
                    "Too large resource version: {rev}, current: {}",
                    self.synced()
                )))
            }
        }
    }

    /// Whether the cache catches up with the store within `limit` (the informer-sync check).
    pub async fn wait_fresh_for(&self, limit: Duration) -> bool {
        match self.store.revision().await {
            Ok(rev) => self.synced() >= rev || self.wait_for(rev, limit).await.is_ok(),
            Err(_) => false,
        }
    }

    /// How many objects each resource holds, by plural (`apiserver_storage_objects`).
    pub fn object_counts(&self) -> Vec<(String, usize)> {
        self.caches()
            .iter()
            .map(|r| {
                let n = r
                    .state
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .items
                    .len();
                (r.resource().group_resource(), n)
            })
            .collect()
    }

    /// Wait until the cache reflects every write the store has acknowledged: a consistent read.
    pub async fn wait_fresh(&self) -> Result<Revision, ApiError> {
        let rev = self.store.revision().await?;
        if self.synced() < rev {
            self.wait_for(rev, Duration::from_secs(10)).await?;
        }
        Ok(rev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_prefixes() {
        assert_eq!(
            prefix_of("/registry/core/pods/default/web"),
            Some("/registry/core/pods/")
        );
        assert_eq!(
            prefix_of("/registry/core/nodes/n1"),
            Some("/registry/core/nodes/")
        );
        assert_eq!(prefix_of("/registry/x"), None);
    }

    #[test]
    fn the_resource_version_goes_into_the_stored_text() {
        let cases = [
            (
                r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a"},"spec":{}}"#,
                Some(
                    r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","resourceVersion":"7"},"spec":{}}"#,
                ),
            ),
            // After the uid, before what follows it in ObjectMeta.
            (
                r#"{"metadata":{"name":"a","namespace":"n","uid":"u","generation":2,"labels":{}}}"#,
                Some(
                    r#"{"metadata":{"name":"a","namespace":"n","uid":"u","resourceVersion":"7","generation":2,"labels":{}}}"#,
                ),
            ),
            (
                r#"{"metadata":{"labels":{"name":"x"}}}"#,
                Some(r#"{"metadata":{"resourceVersion":"7","labels":{"name":"x"}}}"#),
            ),
            (
                r#"{"kind":"x","metadata":{}}"#,
                Some(r#"{"kind":"x","metadata":{"resourceVersion":"7"}}"#),
            ),
            (
                "{ \"metadata\" :\n { } }",
                Some("{ \"metadata\" :\n { \"resourceVersion\":\"7\"} }"),
            ),
            // Nested objects named metadata, keys and values that say "metadata" or hold
            // quotes are not the object's own metadata.
            (
                r#"{"data":{"metadata":{"a":1}},"kind":"metadata","k\"metadata":[{"metadata":{}}],"metadata":{"name":"b"}}"#,
                Some(
                    r#"{"data":{"metadata":{"a":1}},"kind":"metadata","k\"metadata":[{"metadata":{}}],"metadata":{"name":"b","resourceVersion":"7"}}"#,
                ),
            ),
            (r#"{"kind":"x"}"#, None),
            (r#"{"metadata":null}"#, None),
        ];
        for (stored, want) in cases {
            let got = with_resource_version(stored.as_bytes(), 7);
            assert_eq!(
                got.as_deref().map(|b| std::str::from_utf8(b).unwrap()),
                want,
                "{stored}"
            );
            if let Some(g) = got {
                let v: Value = serde_json::from_slice(&g).unwrap();
                assert_eq!(v["metadata"]["resourceVersion"], "7", "{stored}");
            }
        }
    }

    #[test]
    fn an_entry_from_stored_text_matches_one_from_the_object() {
        let pods = api::resources::all()
            .iter()
            .find(|r| r.kind == "Pod")
            .unwrap();
        let stored = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "uid": "u1",
                         "labels": {"app": "web"},
                         "managedFields": [{"manager": "kubectl", "operation": "Update",
                                            "fieldsV1": {"f:spec": {}}}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running"}});
        let text = stored.to_string();
        let fast = Entry::decode(pods, text.as_bytes(), 42).unwrap();
        let slow = Entry::build(pods, stored.clone(), 42);
        assert_eq!(fast.key, slow.key);
        assert_eq!(fast.labels, slow.labels);
        assert_eq!(fast.fields, slow.fields);
        assert_eq!(format!("{:?}", fast.cells), format!("{:?}", slow.cells));
        assert_eq!(fast.meta, slow.meta);
        let a: Value = serde_json::from_slice(&fast.json).unwrap();
        let b: Value = serde_json::from_slice(&slow.json).unwrap();
        assert_eq!(a, b, "the same object, managedFields and all");
        // Text that cannot take the short way still decodes.
        let odd =
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x","resourceVersion":"3"}}"#;
        let e = Entry::decode(pods, odd.as_bytes(), 9).unwrap();
        let v: Value = serde_json::from_slice(&e.json).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "9");
    }
}

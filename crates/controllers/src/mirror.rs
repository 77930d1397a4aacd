//! Mirrors: an in-memory copy of one kind's objects, kept current by the client's watcher and
//! shared by every controller that reads that kind. Controllers read the copy instead of asking the API
//! server, and subscribe to hear which objects changed (to queue the keys they care about).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use api::k8s_openapi::{ListableResource, Metadata, Resource};
use client::{Client, ListParams, Watcher, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// Told of each change: the object before (if it existed) and after (if it still exists).
type Handler<K> = Box<dyn Fn(Option<&K>, Option<&K>) + Send + Sync>;

pub struct Mirror<K> {
    /// Keyed `namespace/name` (`/name` for cluster-scoped kinds), so a namespace is a range.
    objects: RwLock<BTreeMap<String, Arc<K>>>,
    handlers: Mutex<Vec<Handler<K>>>,
    synced: watch::Sender<bool>,
    /// What to follow: a namespace or all, and the selectors.
    namespace: Option<String>,
    params: ListParams,
}

/// The mirror key of an object.
pub fn key_of(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

impl<K> Mirror<K>
where
    K: Resource + ListableResource + Metadata<Ty = ObjectMeta>,
    K: DeserializeOwned + Send + Sync + 'static,
{
    /// Every object of the kind.
    pub fn new() -> Arc<Mirror<K>> {
        Mirror::narrowed(None, ListParams::default())
    }

    /// The objects in `namespace` (or all) that `params`' selectors pick.
    pub fn narrowed(namespace: Option<&str>, params: ListParams) -> Arc<Mirror<K>> {
        Arc::new(Mirror {
            objects: RwLock::default(),
            handlers: Mutex::default(),
            synced: watch::Sender::new(false),
            namespace: namespace.map(str::to_string),
            params,
        })
    }

    /// Subscribe before [`Mirror::run`] so that the first list reaches every handler.
    pub fn on_change(&self, f: impl Fn(Option<&K>, Option<&K>) + Send + Sync + 'static) {
        self.handlers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(f));
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.read().get(&format!("{namespace}/{name}")).cloned()
    }

    /// By mirror key (`namespace/name`).
    pub fn get_key(&self, key: &str) -> Option<Arc<K>> {
        self.read().get(key).cloned()
    }

    /// Every object in `namespace`.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        let from = format!("{namespace}/");
        self.read()
            .range(from.clone()..)
            .take_while(|(k, _)| k.starts_with(&from))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn all(&self) -> Vec<Arc<K>> {
        self.read().values().cloned().collect()
    }

    /// Wait until the first list has been mirrored.
    pub async fn synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<K>>> {
        self.objects.read().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self, old: Option<&K>, new: Option<&K>) {
        for h in self
            .handlers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            h(old, new);
        }
    }

    fn put(&self, obj: K) {
        let k = key_of(obj.metadata());
        let new = Arc::new(obj);
        let old = self
            .objects
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(k, new.clone());
        self.notify(old.as_deref(), Some(&new));
    }

    fn remove(&self, obj: &K) {
        let k = key_of(obj.metadata());
        let old = self
            .objects
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&k);
        self.notify(old.as_deref().or(Some(obj)), None);
    }

    /// Replace the whole copy with a fresh list, telling handlers what appeared, changed or
    /// went away meanwhile.
    fn reset(&self, items: Vec<K>) {
        let fresh: BTreeMap<String, Arc<K>> = items
            .into_iter()
            .map(|o| (key_of(o.metadata()), Arc::new(o)))
            .collect();
        let old = std::mem::replace(
            &mut *self.objects.write().unwrap_or_else(|p| p.into_inner()),
            fresh.clone(),
        );
        for (k, o) in &old {
            if !fresh.contains_key(k) {
                self.notify(Some(o), None);
            }
        }
        for (k, n) in &fresh {
            let before = old.get(k);
            let same = before
                .is_some_and(|b| b.metadata().resource_version == n.metadata().resource_version);
            if !same {
                self.notify(before.map(|b| &**b), Some(n));
            }
        }
        self.synced.send_replace(true);
    }

    /// Keep the copy current for as long as the process runs.
    pub async fn run(self: Arc<Self>, client: Client) {
        let mut w = Watcher::<K>::new(client, self.namespace.as_deref(), self.params.clone());
        loop {
            match w.next().await {
                watcher::Event::Restarted(items) => self.reset(items),
                watcher::Event::Applied(o) => self.put(o),
                watcher::Event::Deleted(o) => self.remove(&o),
            }
        }
    }
}

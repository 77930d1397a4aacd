//! The in-memory fake: the same semantics as the real backends, nothing persisted. For unit
//! tests of everything above the store.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::hub::{History, Hub};
use crate::{
    Event, EventKind, KeyValue, Op, Revision, Store, StoreError, TxnResult, WatchStream, apply_op,
    check_condition, check_unique_keys,
};

#[derive(Default)]
struct State {
    keys: BTreeMap<String, KeyValue>,
    log: BTreeMap<Revision, Event>,
    revision: Revision,
    compacted: Revision,
}

struct Inner {
    state: Mutex<State>,
    hub: Hub,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated in a way later callers
        // could observe wrongly (every mutation is a few inserts), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl History for Inner {
    fn history(
        &self,
        prefix: &str,
        after: Revision,
        upto: Revision,
        limit: usize,
    ) -> Result<(Vec<Event>, Revision), StoreError> {
        let state = self.lock();
        if after < state.compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: state.compacted,
            });
        }
        let mut events = Vec::new();
        let mut reached = upto;
        for (rev, event) in state.log.range(after + 1..=upto) {
            if event.kv.key.starts_with(prefix) {
                events.push(event.clone());
                if events.len() == limit {
                    reached = *rev;
                    break;
                }
            }
        }
        Ok((events, reached))
    }

    fn current(&self) -> Revision {
        self.lock().revision
    }

    fn compacted(&self) -> Revision {
        self.lock().compacted
    }
}

/// An in-memory [`Store`].
#[derive(Clone)]
pub struct MemStore {
    inner: Arc<Inner>,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStore {
    pub fn new() -> Self {
        MemStore {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                hub: Hub::new(),
            }),
        }
    }
}

#[async_trait]
impl Store for MemStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.inner.lock().keys.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let state = self.inner.lock();
        let kvs = state
            .keys
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect();
        Ok((kvs, state.revision))
    }

    async fn txn(&self, ops: Vec<Op>) -> Result<TxnResult, StoreError> {
        check_unique_keys(&ops)?;
        let mut state = self.inner.lock();
        for op in &ops {
            check_condition(op, state.keys.get(op.key()))?;
        }
        let mut events = Vec::with_capacity(ops.len());
        for op in &ops {
            let revision = state.revision + 1;
            let event = apply_op(op, state.keys.get(op.key()), revision);
            match event.kind {
                EventKind::Put => {
                    state.keys.insert(event.kv.key.clone(), event.kv.clone());
                }
                EventKind::Delete => {
                    state.keys.remove(&event.kv.key);
                }
            }
            state.log.insert(revision, event.clone());
            state.revision = revision;
            events.push(event);
        }
        let result = TxnResult {
            revision: state.revision,
            results: events.iter().map(Event::to_op_result).collect(),
        };
        // Published under the lock so that watchers see batches in revision order.
        self.inner.hub.publish(events);
        Ok(result)
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.inner.hub.watch(self.inner.clone(), prefix, after)
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.inner.lock().revision)
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let mut state = self.inner.lock();
        if revision <= state.compacted {
            return Ok(());
        }
        let revision = revision.min(state.revision);
        state.log = state.log.split_off(&(revision + 1));
        state.compacted = revision;
        Ok(())
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.inner.lock().compacted)
    }
}

//! A revisioned key-value store with etcd's semantics, which is all the API server needs to
//! persist objects: one global revision per write, create/mod revisions and a version per key,
//! compare-and-swap on the mod revision, prefix ranges, watch from any retained revision, and
//! compaction of old history.
//!
//! [`Store`] is the trait; [`RedbStore`] is the embedded, crash-safe backend, [`EtcdStore`]
//! the one over an etcd cluster for several servers, and [`MemStore`] the in-memory fake. All
//! pass [`conformance`].

pub mod conformance;
pub mod encrypt;
mod etcd;
mod hub;
mod mem;
mod redb;
pub mod snapshot;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

pub use crate::etcd::{EtcdConfig, EtcdStore};
pub use crate::mem::MemStore;
pub use crate::redb::{Inspection, RedbStore, panic_is_caught};

/// A position in the store's global history. Every successful write gets the next one.
pub type Revision = u64;

/// One stored key with its value and bookkeeping, as of some revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// Revision of the write that created the key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    /// Number of writes since the key was created; 1 after creation.
    pub version: u64,
}

/// What must hold for an operation to apply. Conditions of every operation in a transaction are
/// checked against the state before the transaction, and either all operations apply or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// No condition.
    Any,
    /// The key must not exist.
    Absent,
    /// The key must exist.
    Exists,
    /// The key must exist and its last write must have been at this revision.
    ModRevision(Revision),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Bytes,
        condition: Condition,
    },
    Delete {
        key: String,
        condition: Condition,
    },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } => key,
        }
    }

    fn condition(&self) -> Condition {
        match self {
            Op::Put { condition, .. } | Op::Delete { condition, .. } => *condition,
        }
    }
}

/// The outcome of one operation of a successful transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// The key as written.
    Put(KeyValue),
    /// The key as it was just before it was deleted.
    Deleted(KeyValue),
}

impl OpResult {
    pub fn into_kv(self) -> KeyValue {
        match self {
            OpResult::Put(kv) | OpResult::Deleted(kv) => kv,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResult {
    /// The store's revision after the transaction.
    pub revision: Revision,
    pub results: Vec<OpResult>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change, as a watcher sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// For a put, the key as written. For a delete, the key with an empty value, zero create
    /// revision and version, and `mod_revision` set to the revision of the deletion.
    pub kv: KeyValue,
    /// The key just before this change, if it existed and is still retained.
    pub prev: Option<KeyValue>,
}

impl Event {
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }

    pub(crate) fn to_op_result(&self) -> OpResult {
        match self.kind {
            EventKind::Put => OpResult::Put(self.kv.clone()),
            EventKind::Delete => {
                OpResult::Deleted(self.prev.clone().expect("only existing keys are deleted"))
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {key:?} already exists")]
    AlreadyExists { key: String },
    #[error("key {key:?} not found")]
    NotFound { key: String },
    /// The key exists but was last written at another revision than required. `current` is the
    /// key as it is now, so that a caller can retry without another read.
    #[error("key {key:?} was modified at revision {}", current.mod_revision)]
    Conflict { key: String, current: Box<KeyValue> },
    #[error("revision {requested} has been compacted; the oldest retained is {compacted}")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("transaction names key {key:?} more than once")]
    DuplicateKey { key: String },
    #[error("watch fell too far behind the writers and was closed")]
    WatchLagged,
    #[error("store is closed")]
    Closed,
    /// The store takes no writes for now: its disk is full (or under the reserve kept free), or
    /// it is reopening after an I/O error. Nothing of the request was stored; the same request
    /// can succeed later.
    #[error("the store cannot write now: {reason}")]
    Unavailable { reason: String, no_space: bool },
    /// A stored record failed its checks: the file was damaged under the store.
    #[error("the store is damaged: {0}")]
    Corrupt(String),
    #[error("storage backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub(crate) fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

/// A stream of committed changes under one prefix, in revision order. Events of one
/// transaction arrive together in one batch.
pub struct WatchStream {
    rx: mpsc::Receiver<Result<Vec<Event>, StoreError>>,
}

impl WatchStream {
    /// The next batch, or `None` once the store shut down. After an error the stream ends.
    pub async fn next(&mut self) -> Option<Result<Vec<Event>, StoreError>> {
        self.rx.recv().await
    }

    /// The same stream with each batch passed through `f` (a wrapping store's view of it);
    /// an error from `f` ends the stream after it is delivered.
    pub fn map(
        mut self,
        mut f: impl FnMut(Vec<Event>) -> Result<Vec<Event>, StoreError> + Send + 'static,
    ) -> WatchStream {
        let (tx, rx) = mpsc::channel(self.rx.max_capacity().max(1));
        tokio::spawn(async move {
            while let Some(batch) = self.rx.recv().await {
                let out = batch.and_then(&mut f);
                let end = out.is_err();
                if tx.send(out).await.is_err() || end {
                    return;
                }
            }
        });
        WatchStream { rx }
    }
}

/// The persistence trait. Every implementation must pass [`conformance::run_all`].
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current value of one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Every key that starts with `prefix`, in key order, and the revision they were read at.
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError>;

    /// Apply all operations atomically, or none if any condition fails; the error then names the
    /// first failing operation. Each operation gets its own revision, in order.
    async fn txn(&self, ops: Vec<Op>) -> Result<TxnResult, StoreError>;

    /// Changes under `prefix` with revisions greater than `after`. Fails with
    /// [`StoreError::Compacted`] if history after `after` is no longer complete.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError>;

    /// The revision of the latest write.
    async fn revision(&self) -> Result<Revision, StoreError>;

    /// Forget superseded history up to and including `revision`. Watches from before it then
    /// fail with [`StoreError::Compacted`]; the current value of every key is kept.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// The revision history was last compacted to (0 if never).
    async fn compacted_revision(&self) -> Result<Revision, StoreError>;

    /// Whether the store can take writes now; the error says why not.
    async fn health(&self) -> Result<(), StoreError> {
        self.revision().await.map(|_| ())
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue, StoreError> {
        let ops = vec![Op::Put {
            key: key.to_string(),
            value,
            condition: Condition::Absent,
        }];
        Ok(single(self.txn(ops).await?))
    }

    /// Write `key` if `condition` holds.
    async fn put(
        &self,
        key: &str,
        value: Bytes,
        condition: Condition,
    ) -> Result<KeyValue, StoreError> {
        let ops = vec![Op::Put {
            key: key.to_string(),
            value,
            condition,
        }];
        Ok(single(self.txn(ops).await?))
    }

    /// Delete `key` if `condition` holds; returns the deleted key.
    async fn delete(&self, key: &str, condition: Condition) -> Result<KeyValue, StoreError> {
        let ops = vec![Op::Delete {
            key: key.to_string(),
            condition,
        }];
        Ok(single(self.txn(ops).await?))
    }
}

fn single(result: TxnResult) -> KeyValue {
    result
        .results
        .into_iter()
        .next()
        .expect("a one-operation transaction has one result")
        .into_kv()
}

/// Check one operation's condition against the key's current state. Shared by the backends so
/// that they agree on what each condition means.
pub(crate) fn check_condition(op: &Op, current: Option<&KeyValue>) -> Result<(), StoreError> {
    let key = op.key();
    if matches!(op, Op::Delete { .. }) && current.is_none() {
        return Err(StoreError::NotFound {
            key: key.to_string(),
        });
    }
    match (op.condition(), current) {
        (Condition::Any, _) => Ok(()),
        (Condition::Absent, None) => Ok(()),
        (Condition::Absent, Some(_)) => Err(StoreError::AlreadyExists {
            key: key.to_string(),
        }),
        (Condition::Exists | Condition::ModRevision(_), None) => Err(StoreError::NotFound {
            key: key.to_string(),
        }),
        (Condition::Exists, Some(_)) => Ok(()),
        (Condition::ModRevision(rev), Some(kv)) if kv.mod_revision == rev => Ok(()),
        (Condition::ModRevision(_), Some(kv)) => Err(StoreError::Conflict {
            key: key.to_string(),
            current: Box::new(kv.clone()),
        }),
    }
}

/// Reject a transaction that names a key twice; both backends and etcd refuse it.
pub(crate) fn check_unique_keys(ops: &[Op]) -> Result<(), StoreError> {
    let mut seen = std::collections::HashSet::with_capacity(ops.len());
    for op in ops {
        if !seen.insert(op.key()) {
            return Err(StoreError::DuplicateKey {
                key: op.key().to_string(),
            });
        }
    }
    Ok(())
}

/// The state of a key after applying `op` at `revision`, given its state before.
pub(crate) fn apply_op(op: &Op, prev: Option<&KeyValue>, revision: Revision) -> Event {
    match op {
        Op::Put { key, value, .. } => Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision: prev.map_or(revision, |p| p.create_revision),
                mod_revision: revision,
                version: prev.map_or(1, |p| p.version + 1),
            },
            prev: prev.cloned(),
        },
        Op::Delete { key, .. } => Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.clone(),
                value: Bytes::new(),
                create_revision: 0,
                mod_revision: revision,
                version: 0,
            },
            prev: prev.cloned(),
        },
    }
}

//! The embedded backend on redb, a crash-safe copy-on-write B-tree.
//!
//! Layout follows etcd's MVCC: every write is a record keyed by its revision, and an index maps
//! each live key to its latest revision. Compaction deletes records that a later record (at or
//! below the compaction point) superseded, so history after the compaction point stays complete.
//!
//! All writes go through one writer thread that takes whatever requests are queued, applies
//! them in one redb transaction and commits once: concurrent writers share one fsync (group
//! commit). A write is acknowledged only after its commit is durable.
//!
//! A failed write to the file (a full disk, an I/O error) makes redb refuse everything after
//! it, so the writer then closes the database and reopens it, retrying until it opens (space
//! is back); meanwhile requests fail at once with `StoreError::Unavailable`. Writes that create
//! keys are refused early while the filesystem's free space is under a reserve, so there is
//! always room to update and delete.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::thread;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{
    Database, ReadableDatabase, ReadableTable, StorageError as RedbStorageError, TableDefinition,
};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use crate::hub::{History, Hub};
use crate::{
    Event, EventKind, KeyValue, Op, Revision, Store, StoreError, TxnResult, WatchStream, apply_op,
    check_condition, check_unique_keys,
};

/// revision -> encoded record (see `Record`).
const REVS: TableDefinition<u64, &[u8]> = TableDefinition::new("revs");
/// live key -> (mod revision, create revision, version).
const INDEX: TableDefinition<&str, (u64, u64, u64)> = TableDefinition::new("index");
/// bookkeeping: current revision, compaction point, compaction progress.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";
/// Records below this revision have been visited by compaction.
const META_COMPACT_DONE: &str = "compact_done";

/// Upper bound on requests applied in one commit.
const MAX_BATCH: usize = 1024;
/// Free space a store stopped by a full disk waits for before it tries writing again.
const SPACE_TO_RESUME: u64 = 4 << 20;
/// How often a store that cannot write tries to reopen its file.
const REOPEN_EVERY: Duration = Duration::from_millis(250);
/// Records visited per compaction step, so compaction never stalls writers for long.
const COMPACT_STEP: u64 = 4096;

const KIND_PUT: u8 = 0;
const KIND_DELETE: u8 = 1;
/// Set in the kind byte of records that end with a CRC-32 of the rest (every record written
/// since checksums came; older ones are read as they are).
const CHECKSUMMED: u8 = 0x80;
const HEADER: usize = 1 + 8 + 8 + 8 + 4;

/// One history record, as stored under its revision.
struct Record<'a> {
    kind: u8,
    create_revision: Revision,
    version: u64,
    /// The key's previous mod revision, 0 if it did not exist.
    prev_revision: Revision,
    key: &'a str,
    value: &'a [u8],
}

impl<'a> Record<'a> {
    /// The record's bytes, ending with a CRC-32 of them when `checksum` is set (always, but
    /// for the benchmark that prices checksums).
    fn encode(&self, checksum: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.key.len() + self.value.len() + 4);
        out.push(if checksum {
            self.kind | CHECKSUMMED
        } else {
            self.kind
        });
        out.extend_from_slice(&self.create_revision.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.prev_revision.to_le_bytes());
        out.extend_from_slice(&(self.key.len() as u32).to_le_bytes());
        out.extend_from_slice(self.key.as_bytes());
        out.extend_from_slice(self.value);
        if checksum {
            let sum = crc32fast::hash(&out);
            out.extend_from_slice(&sum.to_le_bytes());
        }
        out
    }

    fn decode(bytes: &'a [u8]) -> Result<Record<'a>, StoreError> {
        let corrupt = || StoreError::backend(CorruptRecord);
        if bytes.len() < HEADER {
            return Err(corrupt());
        }
        let bytes = if bytes[0] & CHECKSUMMED != 0 {
            let (body, sum) = bytes.split_at(bytes.len() - 4);
            if body.len() < HEADER
                || crc32fast::hash(body).to_le_bytes() != <[u8; 4]>::try_from(sum).expect("4 bytes")
            {
                return Err(corrupt());
            }
            body
        } else {
            bytes
        };
        let u64_at = |at: usize| {
            u64::from_le_bytes(bytes[at..at + 8].try_into().expect("slice of length 8"))
        };
        let key_len =
            u32::from_le_bytes(bytes[25..29].try_into().expect("slice of length 4")) as usize;
        if bytes.len() < HEADER + key_len {
            return Err(corrupt());
        }
        let key = std::str::from_utf8(&bytes[HEADER..HEADER + key_len]).map_err(|_| corrupt())?;
        Ok(Record {
            kind: bytes[0] & !CHECKSUMMED,
            create_revision: u64_at(1),
            version: u64_at(9),
            prev_revision: u64_at(17),
            key,
            value: &bytes[HEADER + key_len..],
        })
    }

    fn key_value(&self, revision: Revision) -> KeyValue {
        KeyValue {
            key: self.key.to_string(),
            value: Bytes::copy_from_slice(self.value),
            create_revision: self.create_revision,
            mod_revision: revision,
            version: self.version,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("corrupt history record")]
struct CorruptRecord;

enum Request {
    Txn {
        ops: Vec<Op>,
        reply: oneshot::Sender<Result<TxnResult, StoreError>>,
    },
    Compact {
        revision: Revision,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

struct Inner {
    /// `None` while the writer reopens it after an I/O error.
    db: RwLock<Option<Arc<Database>>>,
    /// Opens the database again after a failure.
    opener: Opener,
    /// The file, when the database is one (for its filesystem's free space).
    path: Option<PathBuf>,
    /// Why the store takes no writes now, if it does not.
    down: Mutex<Option<Down>>,
    /// Bytes of free space under which writes that create keys are refused.
    min_free: AtomicU64,
    /// Whether new records carry a checksum (off only to price them in `berth bench api`).
    checksums: AtomicBool,
    revision: AtomicU64,
    compacted: AtomicU64,
    hub: Hub,
}

#[derive(Clone, Debug)]
struct Down {
    reason: String,
    no_space: bool,
}

impl Inner {
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| self.unavailable())
    }

    fn unavailable(&self) -> StoreError {
        let down = self.down.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let down = down.unwrap_or(Down {
            reason: "the store is reopening".into(),
            no_space: false,
        });
        StoreError::Unavailable {
            reason: down.reason,
            no_space: down.no_space,
        }
    }
}

type Opener = Box<dyn Fn() -> Result<Database, StoreError> + Send + Sync>;

thread_local! {
    static GUARDING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a panic on this thread now would be caught by the store and reported as
/// `StoreError::Corrupt`: a panic hook can leave it out of the log, where it would read as a
/// crash.
pub fn panic_is_caught() -> bool {
    GUARDING.with(std::cell::Cell::get)
}

/// Run `f`, turning a panic inside redb (it asserts on some damaged files) into an error that
/// says the file is damaged.
fn guarded<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let outer = GUARDING.with(|g| g.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDING.with(|g| g.set(outer));
    result.unwrap_or_else(|p| {
        let why = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(StoreError::Corrupt(format!(
            "the store file cannot be read ({why})"
        )))
    })
}

fn open_database(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(StoreError::backend)
}

/// Whether `e` is a failure of the file under the store (after which redb takes nothing
/// until reopened), and if so whether the disk is full.
fn storage_failure(e: &StoreError) -> Option<Down> {
    let StoreError::Backend(b) = e else {
        return None;
    };
    let storage = if let Some(s) = b.downcast_ref::<RedbStorageError>() {
        s
    } else if let Some(redb::CommitError::Storage(s)) = b.downcast_ref::<redb::CommitError>() {
        s
    } else if let Some(redb::TransactionError::Storage(s)) =
        b.downcast_ref::<redb::TransactionError>()
    {
        s
    } else if let Some(redb::TableError::Storage(s)) = b.downcast_ref::<redb::TableError>() {
        s
    } else if let Some(SharedError(inner)) = b.downcast_ref::<SharedError>() {
        return storage_failure(inner);
    } else {
        return None;
    };
    match storage {
        RedbStorageError::Io(io) => {
            let no_space = io.raw_os_error() == Some(nix::libc::ENOSPC)
                || io.kind() == std::io::ErrorKind::StorageFull;
            Some(Down {
                reason: if no_space {
                    "no space left on the store's disk; the write was not stored".into()
                } else {
                    format!("the store's file failed ({io}); the write was not stored")
                },
                no_space,
            })
        }
        RedbStorageError::PreviousIo => Some(Down {
            reason: "the store is recovering from an I/O error".into(),
            no_space: false,
        }),
        _ => None,
    }
}

/// Free bytes for unprivileged writers on the filesystem holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    let dir = path.parent().unwrap_or(path);
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// What `RedbStore::inspect` found.
#[derive(Debug, Default)]
pub struct Inspection {
    pub revision: Revision,
    /// History records read.
    pub records: u64,
    /// Revisions whose record fails its checksum or does not parse.
    pub damaged_records: Vec<Revision>,
    /// Live keys whose current record is whole.
    pub intact: Vec<KeyValue>,
    /// Live keys whose current record is damaged or missing, with its revision.
    pub lost: Vec<(String, Revision)>,
}

impl Inspection {
    pub fn is_clean(&self) -> bool {
        self.damaged_records.is_empty() && self.lost.is_empty()
    }
}

/// A [`Store`] in one redb file.
#[derive(Clone)]
pub struct RedbStore {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Arc<Inner>,
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<thread::JoinHandle<()>>,
}

impl Drop for Shared {
    /// With the last handle gone, let the writer finish what is queued and stop, so that the
    /// file can be opened again at once.
    fn drop(&mut self) {
        self.requests.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl RedbStore {
    /// Open or create the store at `path`. `cache_bytes` bounds redb's page cache.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<RedbStore, StoreError> {
        let file = path.to_path_buf();
        RedbStore::open_with(
            Box::new(move || open_database(&file, cache_bytes)),
            Some(path.to_path_buf()),
        )
    }

    /// Open or create the store on a storage backend of redb's (tests put one that can lose
    /// power under it). `backend` makes a handle on the same storage each time it is called.
    pub fn open_on<B: redb::StorageBackend>(
        backend: impl Fn() -> B + Send + Sync + 'static,
    ) -> Result<RedbStore, StoreError> {
        RedbStore::open_with(
            Box::new(move || {
                Database::builder()
                    .create_with_backend(backend())
                    .map_err(StoreError::backend)
            }),
            None,
        )
    }

    fn open_with(opener: Opener, path: Option<PathBuf>) -> Result<RedbStore, StoreError> {
        let db = guarded(&opener)?;
        let (revision, compacted, compact_done) = {
            let wtx = db.begin_write().map_err(StoreError::backend)?;
            let meta = {
                // Create every table up front so that readers never find one missing.
                wtx.open_table(REVS).map_err(StoreError::backend)?;
                wtx.open_table(INDEX).map_err(StoreError::backend)?;
                let meta = wtx.open_table(META).map_err(StoreError::backend)?;
                let get = |k| -> Result<u64, StoreError> {
                    Ok(meta
                        .get(k)
                        .map_err(StoreError::backend)?
                        .map_or(0, |v| v.value()))
                };
                (
                    get(META_REVISION)?,
                    get(META_COMPACTED)?,
                    get(META_COMPACT_DONE)?,
                )
            };
            wtx.commit().map_err(StoreError::backend)?;
            meta
        };
        debug!(revision, compacted, "opened store");
        let inner = Arc::new(Inner {
            db: RwLock::new(Some(Arc::new(db))),
            opener,
            path,
            down: Mutex::new(None),
            min_free: AtomicU64::new(0),
            checksums: AtomicBool::new(true),
            revision: AtomicU64::new(revision),
            compacted: AtomicU64::new(compacted),
            hub: Hub::new(),
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            inner: inner.clone(),
            requests: rx,
            compaction: (compact_done < compacted).then_some(Compaction {
                target: compacted,
                next: compact_done,
            }),
            under_reserve: false,
        };
        let writer = thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run())
            .map_err(StoreError::backend)?;
        Ok(RedbStore {
            shared: Arc::new(Shared {
                inner,
                requests: Some(tx),
                writer: Some(writer),
            }),
        })
    }

    /// Build a new store at `path` (where none may exist yet) holding `snapshot`'s keys with
    /// their revisions and versions. Its revision becomes the snapshot's plus `bump`, and all
    /// history before that counts as compacted, so a client that knew a later state of the old
    /// store, or watches from an old revision, is told to relist (410) rather than miss events.
    pub fn restore(
        path: &Path,
        snapshot: &crate::snapshot::Snapshot,
        bump: u64,
    ) -> Result<Revision, StoreError> {
        if path.exists() {
            return Err(StoreError::backend(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists already: restore into a new data directory",
                    path.display()
                ),
            )));
        }
        let revision = snapshot.revision + bump;
        let db = open_database(path, 16 << 20)?;
        let wtx = db.begin_write().map_err(StoreError::backend)?;
        {
            let mut revs = wtx.open_table(REVS).map_err(StoreError::backend)?;
            let mut index = wtx.open_table(INDEX).map_err(StoreError::backend)?;
            let mut meta = wtx.open_table(META).map_err(StoreError::backend)?;
            for kv in &snapshot.kvs {
                let record = Record {
                    kind: KIND_PUT,
                    create_revision: kv.create_revision,
                    version: kv.version,
                    prev_revision: 0,
                    key: &kv.key,
                    value: &kv.value,
                };
                let clash = revs
                    .insert(kv.mod_revision, record.encode(true).as_slice())
                    .map_err(StoreError::backend)?
                    .is_some();
                if clash
                    || index
                        .get(kv.key.as_str())
                        .map_err(StoreError::backend)?
                        .is_some()
                {
                    return Err(StoreError::backend(CorruptRecord));
                }
                index
                    .insert(
                        kv.key.as_str(),
                        (kv.mod_revision, kv.create_revision, kv.version),
                    )
                    .map_err(StoreError::backend)?;
            }
            meta.insert(META_REVISION, revision)
                .map_err(StoreError::backend)?;
            meta.insert(META_COMPACTED, revision)
                .map_err(StoreError::backend)?;
            meta.insert(META_COMPACT_DONE, revision + 1)
                .map_err(StoreError::backend)?;
        }
        wtx.commit().map_err(StoreError::backend)?;
        Ok(revision)
    }

    /// Read every record and index entry of the store file at `path` (not open elsewhere)
    /// and say what is intact and what is damaged. Reads only; a damaged file may still make
    /// redb give up, which is an error here, not a panic.
    pub fn inspect(path: &Path) -> Result<Inspection, StoreError> {
        let path = path.to_path_buf();
        let run = move || -> Result<Inspection, StoreError> {
            let db = Database::builder()
                .set_cache_size(16 << 20)
                .open(&path)
                .map_err(StoreError::backend)?;
            let rtx = db.begin_read().map_err(StoreError::backend)?;
            let meta = rtx.open_table(META).map_err(StoreError::backend)?;
            let revision = meta
                .get(META_REVISION)
                .map_err(StoreError::backend)?
                .map_or(0, |v| v.value());
            let revs = rtx.open_table(REVS).map_err(StoreError::backend)?;
            let index = rtx.open_table(INDEX).map_err(StoreError::backend)?;
            let mut out = Inspection {
                revision,
                ..Default::default()
            };
            for item in revs.iter().map_err(StoreError::backend)? {
                let (rev, raw) = item.map_err(StoreError::backend)?;
                out.records += 1;
                if Record::decode(raw.value()).is_err() {
                    out.damaged_records.push(rev.value());
                }
            }
            for item in index.iter().map_err(StoreError::backend)? {
                let (key, entry) = item.map_err(StoreError::backend)?;
                let (mod_revision, _, _) = entry.value();
                match load(&revs, mod_revision) {
                    Ok(Some(kv)) if kv.key == key.value() => out.intact.push(kv),
                    _ => out.lost.push((key.value().to_string(), mod_revision)),
                }
            }
            Ok(out)
        };
        // redb checks what it reads; some damage makes it panic rather than return an error.
        std::thread::spawn(move || guarded(run))
            .join()
            .map_err(|_| StoreError::Corrupt("reading the file failed".into()))?
    }

    /// Refuse writes that create keys while the filesystem has less than `bytes` free, so
    /// that updates and deletions still find room.
    pub fn set_min_free(&self, bytes: u64) {
        self.shared.inner.min_free.store(bytes, Ordering::Relaxed);
    }

    /// Write records without their checksum (they still read, as records from before
    /// checksums do). For `berth bench api`, which prices checksums against this.
    pub fn set_record_checksums(&self, on: bool) {
        self.shared.inner.checksums.store(on, Ordering::Relaxed);
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.shared
            .requests
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(make(reply))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.shared.inner.clone();
        tokio::task::spawn_blocking(move || guarded(|| f(&inner)))
            .await
            .map_err(StoreError::backend)?
    }
}

fn lookup(
    index: &impl ReadableTable<&'static str, (u64, u64, u64)>,
    revs: &impl ReadableTable<u64, &'static [u8]>,
    key: &str,
) -> Result<Option<KeyValue>, StoreError> {
    let Some(entry) = index.get(key).map_err(StoreError::backend)? else {
        return Ok(None);
    };
    let (mod_revision, _, _) = entry.value();
    let kv = load(revs, mod_revision)?;
    match kv {
        Some(kv) if kv.key == key => Ok(Some(kv)),
        Some(kv) => Err(StoreError::Corrupt(format!(
            "the index entry of {key:?} points at revision {mod_revision}, which holds {:?}",
            kv.key
        ))),
        None => Err(StoreError::Corrupt(format!(
            "the index entry of {key:?} points at revision {mod_revision}, which holds nothing"
        ))),
    }
}

fn load(
    revs: &impl ReadableTable<u64, &'static [u8]>,
    revision: Revision,
) -> Result<Option<KeyValue>, StoreError> {
    let Some(raw) = revs.get(revision).map_err(StoreError::backend)? else {
        return Ok(None);
    };
    let bytes = raw.value();
    Ok(Some(decode_at(bytes, revision)?.key_value(revision)))
}

/// Decode the record stored at `revision`, naming it if it is damaged.
fn decode_at(bytes: &[u8], revision: Revision) -> Result<Record<'_>, StoreError> {
    Record::decode(bytes).map_err(|_| {
        StoreError::Corrupt(format!(
            "the record at revision {revision} fails its checksum or does not parse"
        ))
    })
}

impl History for Inner {
    fn history(
        &self,
        prefix: &str,
        after: Revision,
        upto: Revision,
        limit: usize,
    ) -> Result<(Vec<Event>, Revision), StoreError> {
        let rtx = self.db()?.begin_read().map_err(StoreError::backend)?;
        let meta = rtx.open_table(META).map_err(StoreError::backend)?;
        // Compaction records its target in the same commit as its first deletion, so a snapshot
        // that misses any record of the range also shows a compaction point above `after`.
        let compacted = meta
            .get(META_COMPACTED)
            .map_err(StoreError::backend)?
            .map_or(0, |v| v.value());
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        let revs = rtx.open_table(REVS).map_err(StoreError::backend)?;
        let mut events = Vec::new();
        for item in revs.range(after + 1..=upto).map_err(StoreError::backend)? {
            let (rev, raw) = item.map_err(StoreError::backend)?;
            let revision = rev.value();
            let record = decode_at(raw.value(), revision)?;
            if !record.key.starts_with(prefix) {
                continue;
            }
            let prev = if record.prev_revision > 0 {
                load(&revs, record.prev_revision)?
            } else {
                None
            };
            let kind = if record.kind == KIND_DELETE {
                EventKind::Delete
            } else {
                EventKind::Put
            };
            events.push(Event {
                kind,
                kv: record.key_value(revision),
                prev,
            });
            if events.len() == limit {
                return Ok((events, revision));
            }
        }
        Ok((events, upto))
    }

    fn current(&self) -> Revision {
        self.revision.load(Ordering::Acquire)
    }

    fn compacted(&self) -> Revision {
        self.compacted.load(Ordering::Acquire)
    }
}

#[async_trait]
impl Store for RedbStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_string();
        self.read(move |inner| {
            let rtx = inner.db()?.begin_read().map_err(StoreError::backend)?;
            let index = rtx.open_table(INDEX).map_err(StoreError::backend)?;
            let revs = rtx.open_table(REVS).map_err(StoreError::backend)?;
            lookup(&index, &revs, &key)
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let prefix = prefix.to_string();
        self.read(move |inner| {
            let rtx = inner.db()?.begin_read().map_err(StoreError::backend)?;
            let index = rtx.open_table(INDEX).map_err(StoreError::backend)?;
            let revs = rtx.open_table(REVS).map_err(StoreError::backend)?;
            let meta = rtx.open_table(META).map_err(StoreError::backend)?;
            let revision = meta
                .get(META_REVISION)
                .map_err(StoreError::backend)?
                .map_or(0, |v| v.value());
            let mut kvs = Vec::new();
            for item in index
                .range(prefix.as_str()..)
                .map_err(StoreError::backend)?
            {
                let (key, entry) = item.map_err(StoreError::backend)?;
                if !key.value().starts_with(prefix.as_str()) {
                    break;
                }
                let (mod_revision, _, _) = entry.value();
                match load(&revs, mod_revision)? {
                    Some(kv) if kv.key == key.value() => kvs.push(kv),
                    _ => {
                        return Err(StoreError::Corrupt(format!(
                            "the index entry of {:?} points at revision {mod_revision}, which does not hold it",
                            key.value()
                        )));
                    }
                }
            }
            Ok((kvs, revision))
        })
        .await
    }

    async fn txn(&self, ops: Vec<Op>) -> Result<TxnResult, StoreError> {
        check_unique_keys(&ops)?;
        self.request(|reply| Request::Txn { ops, reply }).await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let inner = self.shared.inner.clone();
        inner.hub.watch(inner.clone(), prefix, after)
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.shared.inner.current())
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.request(|reply| Request::Compact { revision, reply })
            .await
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.shared.inner.compacted())
    }

    async fn health(&self) -> Result<(), StoreError> {
        let inner = &self.shared.inner;
        if inner
            .down
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return Err(inner.unavailable());
        }
        Ok(())
    }
}

struct Compaction {
    target: Revision,
    /// Records below this have been visited.
    next: Revision,
}

struct Writer {
    inner: Arc<Inner>,
    requests: mpsc::Receiver<Request>,
    compaction: Option<Compaction>,
    /// Whether the last batch found the disk under the free-space reserve.
    under_reserve: bool,
}

/// A transaction request whose conditions held, waiting for the batch to commit.
struct Applied {
    events: Vec<Event>,
    reply: oneshot::Sender<Result<TxnResult, StoreError>>,
}

impl Writer {
    fn run(mut self) {
        loop {
            if self.is_down() && !self.reopen() {
                // Answer at once while the file cannot be written, and try again soon.
                match self.requests.recv_timeout(REOPEN_EVERY) {
                    Ok(r) => self.refuse(r),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
                while let Ok(r) = self.requests.try_recv() {
                    self.refuse(r);
                }
                continue;
            }
            // With compaction pending, do not sleep on the queue: interleave its steps.
            let first = if self.compaction.is_some() {
                match self.requests.try_recv() {
                    Ok(r) => Some(r),
                    Err(mpsc::TryRecvError::Empty) => None,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            } else {
                match self.requests.recv() {
                    Ok(r) => Some(r),
                    Err(_) => return,
                }
            };
            if let Some(first) = first {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match self.requests.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                self.commit_batch(batch);
            }
            if self.compaction.is_some()
                && !self.is_down()
                && let Err(e) = self.compact_step()
            {
                match storage_failure(&e) {
                    Some(down) => self.go_down(down),
                    None => {
                        error!(error = %e, "compaction step failed; will retry");
                        thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        }
    }

    fn is_down(&self) -> bool {
        self.inner
            .down
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn refuse(&self, r: Request) {
        match r {
            Request::Txn { reply, .. } => {
                let _ = reply.send(Err(self.inner.unavailable()));
            }
            Request::Compact { reply, .. } => {
                let _ = reply.send(Err(self.inner.unavailable()));
            }
        }
    }

    /// The file failed under a write: redb takes nothing more from this handle, so close it
    /// (readers holding it finish first) and reopen it from `run`.
    fn go_down(&mut self, down: Down) {
        if !self.is_down() {
            warn!(reason = %down.reason, "the store stopped taking writes; reopening it until it can");
        }
        *self.inner.down.lock().unwrap_or_else(|e| e.into_inner()) = Some(down);
        self.inner
            .db
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// Try to open the file again; true once it is open and its history is caught up. After
    /// a full disk, not before some space is back: the store stays down (and says so) until
    /// a write can succeed.
    fn reopen(&mut self) -> bool {
        let no_space = self
            .inner
            .down
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|d| d.no_space);
        let free = self.inner.path.as_deref().and_then(free_bytes);
        if no_space && free.is_some_and(|free| free < SPACE_TO_RESUME) {
            return false;
        }
        let db = match guarded(&self.inner.opener) {
            Ok(db) => db,
            Err(e) => {
                debug!(error = %e, "the store cannot be reopened yet");
                return false;
            }
        };
        let on_disk = (|| -> Result<Revision, StoreError> {
            let rtx = db.begin_read().map_err(StoreError::backend)?;
            let meta = rtx.open_table(META).map_err(StoreError::backend)?;
            Ok(meta
                .get(META_REVISION)
                .map_err(StoreError::backend)?
                .map_or(0, |v| v.value()))
        })();
        let on_disk = match on_disk {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "the reopened store cannot be read yet");
                return false;
            }
        };
        *self.inner.db.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(db));
        // A commit reported as failed may still have reached the disk (its last sync failed
        // after the data was written): its events go to the watchers as any other's.
        let known = self.inner.current();
        if on_disk > known {
            match self.inner.history("", known, on_disk, usize::MAX) {
                Ok((events, _)) => {
                    self.inner.revision.store(on_disk, Ordering::Release);
                    self.inner.hub.publish(events);
                }
                Err(e) => {
                    error!(error = %e, "cannot read the writes the failed commit left");
                    self.inner
                        .db
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .take();
                    return false;
                }
            }
        }
        *self.inner.down.lock().unwrap_or_else(|e| e.into_inner()) = None;
        info!(revision = on_disk, "the store takes writes again");
        true
    }

    /// Whether a transaction would create a key (those are refused under the free-space
    /// reserve; updates and deletions are not).
    fn creates(ops: &[Op]) -> bool {
        ops.iter().any(|op| {
            matches!(
                op,
                Op::Put {
                    condition: crate::Condition::Absent,
                    ..
                }
            )
        })
    }

    fn commit_batch(&mut self, batch: Vec<Request>) {
        let mut txns = Vec::with_capacity(batch.len());
        let min_free = self.inner.min_free.load(Ordering::Relaxed);
        let short = (min_free > 0)
            .then(|| self.inner.path.as_deref().and_then(free_bytes))
            .flatten()
            .filter(|free| *free < min_free);
        if short.is_some() != self.under_reserve {
            self.under_reserve = short.is_some();
            if self.under_reserve {
                warn!(
                    free_mib = short.unwrap_or(0) >> 20,
                    reserve_mib = min_free >> 20,
                    "the store's disk is under its free-space reserve: writes that create objects are refused until space is freed"
                );
            } else {
                info!("the store's disk has room again: creating objects is allowed");
            }
        }
        for request in batch {
            match request {
                Request::Txn { ops, reply } if short.is_some() && Self::creates(&ops) => {
                    let free = short.unwrap_or(0);
                    let _ = reply.send(Err(StoreError::Unavailable {
                        reason: format!(
                            "the store's disk has {} MiB free, under the {} MiB kept for updates and deletions (--store-min-free); nothing new is stored until space is freed",
                            free / (1 << 20),
                            min_free / (1 << 20)
                        ),
                        no_space: true,
                    }));
                }
                Request::Txn { ops, reply } => txns.push((ops, reply)),
                Request::Compact { revision, reply } => {
                    let _ = reply.send(self.start_compaction(revision));
                }
            }
        }
        if txns.is_empty() {
            return;
        }
        let base = self.inner.current();
        let started = std::time::Instant::now();
        let count = txns.len();
        let outcome = self.apply(base, txns);
        tracing::trace!(
            txns = count,
            us = started.elapsed().as_micros() as u64,
            "batch committed"
        );
        match outcome {
            Ok((revision, applied)) => {
                self.inner.revision.store(revision, Ordering::Release);
                let mut all = Vec::new();
                let mut replies = Vec::with_capacity(applied.len());
                for a in applied {
                    let result = TxnResult {
                        revision: a.events.last().map_or(revision, Event::revision),
                        results: a.events.iter().map(Event::to_op_result).collect(),
                    };
                    all.extend(a.events);
                    replies.push((a.reply, result));
                }
                // Publish before replying: a writer that reads its own write back through a
                // watch-fed cache must find it there.
                self.inner.hub.publish(all);
                for (reply, result) in replies {
                    let _ = reply.send(Ok(result));
                }
            }
            Err((e, replies)) => {
                if let Some(down) = storage_failure(&e) {
                    // Down before the replies: a caller that checks health after its refused
                    // write must find the store down.
                    let (reason, no_space) = (down.reason.clone(), down.no_space);
                    self.go_down(down);
                    for reply in replies {
                        let _ = reply.send(Err(StoreError::Unavailable {
                            reason: reason.clone(),
                            no_space,
                        }));
                    }
                    return;
                }
                error!(error = %e, "store commit failed");
                let shared = Arc::new(e);
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Backend(Box::new(SharedError(
                        shared.clone(),
                    )))));
                }
            }
        }
    }

    /// Apply every transaction whose conditions hold in one redb commit. On a storage failure
    /// nothing is committed and the replies of the applied transactions come back to the caller.
    #[allow(clippy::type_complexity)]
    fn apply(
        &mut self,
        base: Revision,
        txns: Vec<(Vec<Op>, oneshot::Sender<Result<TxnResult, StoreError>>)>,
    ) -> Result<
        (Revision, Vec<Applied>),
        (
            StoreError,
            Vec<oneshot::Sender<Result<TxnResult, StoreError>>>,
        ),
    > {
        let mut applied: Vec<Applied> = Vec::with_capacity(txns.len());
        let mut pending = txns.into_iter();
        let mut revision = base;
        let checksums = self.inner.checksums.load(Ordering::Relaxed);
        let outcome: Result<(), StoreError> = (|| {
            let wtx = self
                .inner
                .db()?
                .begin_write()
                .map_err(StoreError::backend)?;
            {
                let mut revs = wtx.open_table(REVS).map_err(StoreError::backend)?;
                let mut index = wtx.open_table(INDEX).map_err(StoreError::backend)?;
                let mut meta = wtx.open_table(META).map_err(StoreError::backend)?;
                for (ops, reply) in pending.by_ref() {
                    let mut current = Vec::with_capacity(ops.len());
                    let mut failed = None;
                    for op in &ops {
                        let kv = lookup(&index, &revs, op.key())?;
                        if let Err(e) = check_condition(op, kv.as_ref()) {
                            failed = Some(e);
                            break;
                        }
                        current.push(kv);
                    }
                    if let Some(e) = failed {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                    let mut events = Vec::with_capacity(ops.len());
                    for (op, prev) in ops.iter().zip(current) {
                        revision += 1;
                        let event = apply_op(op, prev.as_ref(), revision);
                        let record = Record {
                            kind: match event.kind {
                                EventKind::Put => KIND_PUT,
                                EventKind::Delete => KIND_DELETE,
                            },
                            create_revision: event.kv.create_revision,
                            version: event.kv.version,
                            prev_revision: prev.as_ref().map_or(0, |p| p.mod_revision),
                            key: &event.kv.key,
                            value: &event.kv.value,
                        };
                        revs.insert(revision, record.encode(checksums).as_slice())
                            .map_err(StoreError::backend)?;
                        match event.kind {
                            EventKind::Put => {
                                let entry = (revision, event.kv.create_revision, event.kv.version);
                                index
                                    .insert(event.kv.key.as_str(), entry)
                                    .map_err(StoreError::backend)?;
                            }
                            EventKind::Delete => {
                                index
                                    .remove(event.kv.key.as_str())
                                    .map_err(StoreError::backend)?;
                            }
                        }
                        events.push(event);
                    }
                    applied.push(Applied { events, reply });
                }
                meta.insert(META_REVISION, revision)
                    .map_err(StoreError::backend)?;
            }
            wtx.commit().map_err(StoreError::backend)?;
            Ok(())
        })();
        match outcome {
            Ok(()) => Ok((revision, applied)),
            Err(e) => {
                let mut replies: Vec<_> = applied.into_iter().map(|a| a.reply).collect();
                replies.extend(pending.map(|(_, reply)| reply));
                Err((e, replies))
            }
        }
    }

    fn start_compaction(&mut self, target: Revision) -> Result<(), StoreError> {
        let target = target.min(self.inner.current());
        if target <= self.inner.compacted() {
            return Ok(());
        }
        let next = self
            .compaction
            .as_ref()
            .map_or(self.inner.compacted() + 1, |c| c.next);
        let wtx = self
            .inner
            .db()?
            .begin_write()
            .map_err(StoreError::backend)?;
        {
            let mut meta = wtx.open_table(META).map_err(StoreError::backend)?;
            meta.insert(META_COMPACTED, target)
                .map_err(StoreError::backend)?;
        }
        wtx.commit().map_err(StoreError::backend)?;
        self.inner.compacted.store(target, Ordering::Release);
        self.compaction = Some(Compaction { target, next });
        debug!(target, "compaction started");
        Ok(())
    }

    /// Visit the next records up to the compaction target, deleting superseded ones.
    fn compact_step(&mut self) -> Result<(), StoreError> {
        let Some(job) = self.compaction.as_mut() else {
            return Ok(());
        };
        let end = job.target.min(job.next + COMPACT_STEP - 1);
        let wtx = self
            .inner
            .db()?
            .begin_write()
            .map_err(StoreError::backend)?;
        {
            let mut revs = wtx.open_table(REVS).map_err(StoreError::backend)?;
            let mut doomed = Vec::new();
            for item in revs.range(job.next..=end).map_err(StoreError::backend)? {
                let (rev, raw) = item.map_err(StoreError::backend)?;
                let record = decode_at(raw.value(), rev.value())?;
                // This record supersedes its predecessor, which is at or below the target.
                if record.prev_revision > 0 {
                    doomed.push(record.prev_revision);
                }
                // A deletion at or below the target leaves nothing of the key to keep.
                if record.kind == KIND_DELETE {
                    doomed.push(rev.value());
                }
            }
            for rev in doomed {
                revs.remove(rev).map_err(StoreError::backend)?;
            }
            let mut meta = wtx.open_table(META).map_err(StoreError::backend)?;
            meta.insert(META_COMPACT_DONE, end + 1)
                .map_err(StoreError::backend)?;
        }
        wtx.commit().map_err(StoreError::backend)?;
        job.next = end + 1;
        if job.next > job.target {
            debug!(target = job.target, "compaction finished");
            self.compaction = None;
        }
        Ok(())
    }
}

/// One commit failure reported to every request of the batch.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct SharedError(Arc<StoreError>);

#[cfg(test)]
mod record_tests {
    use super::*;

    #[test]
    fn records_carry_a_checksum_and_older_ones_still_read() {
        let r = Record {
            kind: KIND_PUT,
            create_revision: 3,
            version: 2,
            prev_revision: 4,
            key: "/registry/configmaps/default/a",
            value: b"{\"data\":{}}",
        };
        let bytes = r.encode(true);
        let back = Record::decode(&bytes).unwrap();
        assert_eq!(
            (back.kind, back.key, back.value, back.version),
            (KIND_PUT, r.key, r.value, 2)
        );
        // Any flipped bit anywhere is caught.
        for at in 0..bytes.len() {
            for bit in [0x01, 0x40] {
                let mut bad = bytes.clone();
                bad[at] ^= bit;
                if let Ok(d) = Record::decode(&bad) {
                    panic!("a flip at {at} went unnoticed: {:?}", d.key);
                }
            }
        }
        // A record from before checksums (no flag, no trailer) reads as it is.
        let old = r.encode(false);
        assert_eq!(old[0], bytes[0] & !CHECKSUMMED);
        assert_eq!(old[1..], bytes[1..bytes.len() - 4]);
        let back = Record::decode(&old).unwrap();
        assert_eq!(back.value, r.value);
    }
}

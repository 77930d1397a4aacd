//! `EtcdStore`: the [`Store`] over an etcd v3 cluster, for several API servers sharing one
//! state. etcd already has the store's semantics (a global revision, create and mod revisions
//! and a version per key, transactions with comparisons, prefix ranges, watches from a
//! revision with the previous value, compaction), so each call is one etcd request:
//!
//! * revisions are etcd's less one, so a fresh cluster (etcd starts at revision 1) begins at
//!   0 as the embedded store does;
//! * a transaction compares each operation's condition, and on failure reads every key it
//!   names in the same etcd transaction, so the error says which condition failed with the
//!   key as it is (`Conflict` carries it) without another round trip;
//! * berth's compaction to `c` keeps what was current at `c`: etcd is compacted at `c`'s etcd
//!   revision, and a watch from before `c` is refused here (etcd would still serve one from
//!   exactly that revision, but without the values it replaced). etcd reports its compaction
//!   point to no request, so the store learns it at connect (a watch from revision 1 is
//!   refused with it) and keeps it current from its own compactions and refused watches;
//! * a watch delivers each revision's events as one batch, as the embedded store does.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;

use crate::{
    Condition, Event, EventKind, KeyValue, Op, Revision, Store, StoreError, TxnResult, WatchStream,
    apply_op, check_condition, check_unique_keys,
};

/// How often the store checks which member leads.
const LEADER_CHECK: Duration = Duration::from_secs(1);
/// How long the compaction probe waits for etcd to refuse it.
const COMPACTION_PROBE: Duration = Duration::from_millis(400);
/// How many keys one page of a list reads.
const PAGE: i64 = 1000;
/// How long one request may take before it fails. etcd answers in milliseconds; a request
/// that a dying leader took is never answered, and the sooner it fails the sooner the caller
/// tries again with the new leader (elected within about a second).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a request that no member could take is tried again (members without a leader
/// during an election refuse at once), before its caller is told.
const UNREACHED_BUDGET: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a server waits at start for the etcd cluster to answer.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// Where and how to reach the etcd cluster.
#[derive(Clone, Debug, Default)]
pub struct EtcdConfig {
    /// `host:port` or `https://host:port` of each member.
    pub endpoints: Vec<String>,
    /// The CA that signed the members' certificates (PEM), for TLS.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate and key (PEM), when the members require one.
    pub cert_pem: Option<Vec<u8>>,
    pub key_pem: Option<Vec<u8>>,
}

/// A client per member, and the one requests go to: the leader when it is known (a follower
/// forwards writes to it, and a follower dying then affects no request in flight).
struct Members {
    clients: Vec<Client>,
    current: AtomicUsize,
}

impl Members {
    /// The index of the member that leads, as the members say.
    async fn leader(&self) -> Option<usize> {
        for (i, c) in self.clients.iter().enumerate() {
            let mut c = c.clone();
            if let Ok(Ok(st)) = tokio::time::timeout(Duration::from_millis(500), c.status()).await
                && st.header().map(|h| h.member_id()) == Some(st.leader())
            {
                return Some(i);
            }
        }
        None
    }

    /// Keep `current` on the leader, looking every second, for as long as the store exists.
    async fn follow_leader(members: std::sync::Weak<Members>) {
        loop {
            tokio::time::sleep(LEADER_CHECK).await;
            let Some(m) = members.upgrade() else { return };
            if m.clients.len() > 1
                && let Some(i) = m.leader().await
            {
                m.current.store(i, Ordering::Relaxed);
            }
        }
    }
}

/// The store over etcd.
pub struct EtcdStore {
    /// One client per member, in the order given: requests go to `current` and move on to
    /// the next member when one cannot be reached (the request never left, so it is safe to
    /// send again). gRPC's own balancing kept sending a share of requests to a dead member.
    members: Arc<Members>,
    /// etcd's compaction point as last known: found at connect, moved by this store's
    /// compactions and by watches etcd refused for another server's.
    compacted: Arc<AtomicI64>,
}

fn to_etcd(r: Revision) -> i64 {
    r as i64 + 1
}

fn from_etcd(r: i64) -> Revision {
    (r - 1).max(0) as Revision
}

/// The end of the range of keys under `prefix` (etcd's "prefix end": the prefix with its last
/// byte incremented).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or the empty prefix): to the end of the keyspace.
    vec![0]
}

fn error(e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    match &e {
        E::GRpcStatus(s) => {
            let message = s.message().to_string();
            match s.code() {
                tonic::Code::ResourceExhausted if message.contains("space") => {
                    StoreError::Unavailable {
                        reason: format!("etcd: {message}"),
                        no_space: true,
                    }
                }
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled
                | tonic::Code::Aborted
                | tonic::Code::Unknown => StoreError::Unavailable {
                    reason: format!("etcd: {message}"),
                    no_space: false,
                },
                _ => StoreError::backend(e),
            }
        }
        E::TransportError(_) | E::IoError(_) => StoreError::Unavailable {
            reason: format!("etcd: {e}"),
            no_space: false,
        },
        _ => StoreError::backend(e),
    }
}

/// Whether a request failed before any member could act on it: it could not connect, or the
/// member has no leader (it refuses before doing anything), so another member may take it.
fn unreached(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            let m = s.message();
            s.code() == tonic::Code::Unavailable
                && (m.contains("connect") || m.contains("no leader") || m.contains("refused"))
        }
        _ => false,
    }
}

fn kv_of(kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    Ok(KeyValue {
        key: String::from_utf8(kv.key().to_vec())
            .map_err(|e| StoreError::Corrupt(format!("a key that is not UTF-8: {e}")))?,
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: from_etcd(kv.create_revision()),
        mod_revision: from_etcd(kv.mod_revision()),
        version: kv.version().max(0) as u64,
    })
}

/// The comparisons that make `op`'s condition hold.
fn compares(op: &Op) -> Vec<Compare> {
    let key = op.key();
    let exists = || Compare::create_revision(key, CompareOp::Greater, 0);
    let absent = || Compare::create_revision(key, CompareOp::Equal, 0);
    let mut out = Vec::new();
    match op.condition() {
        Condition::Any => {}
        Condition::Absent => out.push(absent()),
        Condition::Exists => out.push(exists()),
        Condition::ModRevision(r) => {
            out.push(Compare::mod_revision(key, CompareOp::Equal, to_etcd(r)))
        }
    }
    if matches!(op, Op::Delete { .. }) {
        // Only a key that exists can be deleted.
        out.push(exists());
    }
    out
}

impl EtcdStore {
    /// Connect to the cluster; fails if no member answers.
    pub async fn connect(cfg: &EtcdConfig) -> Result<EtcdStore, StoreError> {
        let mut opts = ConnectOptions::new()
            // A member cut off from the others answers at once instead of waiting.
            .with_require_leader(true)
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        if let Some(ca) = &cfg.ca_pem {
            let mut tls = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(ca));
            if let (Some(cert), Some(key)) = (&cfg.cert_pem, &cfg.key_pem) {
                tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
            }
            opts = opts.with_tls(tls);
        }
        let mut clients = Vec::new();
        for e in &cfg.endpoints {
            clients.push(
                Client::connect([e.as_str()], Some(opts.clone()))
                    .await
                    .map_err(error)?,
            );
        }
        if clients.is_empty() {
            return Err(StoreError::Unavailable {
                reason: "no etcd member named".into(),
                no_space: false,
            });
        }
        let members = Arc::new(Members {
            clients,
            current: AtomicUsize::new(0),
        });
        if let Some(i) = members.leader().await {
            members.current.store(i, Ordering::Relaxed);
        }
        tokio::spawn(Members::follow_leader(Arc::downgrade(&members)));
        let store = EtcdStore {
            members,
            compacted: Arc::default(),
        };
        // Something must answer before the store is handed out: a cluster still electing its
        // first leader (all members just started) gets a few seconds.
        let deadline = tokio::time::Instant::now() + CONNECT_WAIT;
        loop {
            match store.revision().await {
                Ok(_) => break,
                Err(StoreError::Unavailable { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
        let point = store.probe_compaction().await?;
        store.compacted.fetch_max(point, Ordering::SeqCst);
        Ok(store)
    }

    /// etcd's compaction point, which no request reports: a watch from revision 1 is refused
    /// with it once there is one (etcd checks waiting watches every 100 ms), and is not when
    /// nothing has been compacted.
    async fn probe_compaction(&self) -> Result<i64, StoreError> {
        let mut stream = self
            .call(|c| async move {
                c.watch_client()
                    .watch(
                        "\0berth-compaction-probe",
                        Some(WatchOptions::new().with_start_revision(1)),
                    )
                    .await
            })
            .await?;
        let deadline = tokio::time::Instant::now() + COMPACTION_PROBE;
        loop {
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Err(_) => return Ok(0),
                Ok(Ok(Some(r))) if r.canceled() => return Ok(r.compact_revision()),
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => return Ok(0),
                Ok(Err(e)) => return Err(error(e)),
            }
        }
    }

    /// Run `f` on the current member's client, then on each next one while a member cannot
    /// be reached (or has no leader); the member that answers becomes current.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let m = &self.members;
        let n = m.clients.len();
        let first = m.current.load(Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + UNREACHED_BUDGET;
        let mut k = 0;
        loop {
            let at = (first + k) % n;
            match f(m.clients[at].clone()).await {
                Ok(v) => {
                    if k > 0 {
                        m.current.store(at, Ordering::Relaxed);
                    }
                    return Ok(v);
                }
                Err(e) if unreached(&e) && tokio::time::Instant::now() < deadline => {
                    k += 1;
                    // Every member refused: wait a moment for an election to end.
                    if k % n == 0 {
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                }
                Err(e) => {
                    if unreached(&e) {
                        m.current.store((at + 1) % n, Ordering::Relaxed);
                    }
                    return Err(error(e));
                }
            }
        }
    }

    fn client(&self) -> Client {
        let m = &self.members;
        m.clients[m.current.load(Ordering::Relaxed) % m.clients.len()].clone()
    }

    fn compacted_etcd(&self) -> i64 {
        self.compacted.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let resp = self
            .call(|c| async move { c.kv_client().get(key, None).await })
            .await?;
        resp.kvs().first().map(kv_of).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let end = prefix_end(prefix);
        let mut out = Vec::new();
        let mut from = prefix.as_bytes().to_vec();
        let mut at: Option<i64> = None;
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if let Some(r) = at {
                opts = opts.with_revision(r);
            }
            let resp = self
                .call(|c| {
                    let (from, opts) = (from.clone(), opts.clone());
                    async move { c.kv_client().get(from, Some(opts)).await }
                })
                .await?;
            let revision = *at.get_or_insert(resp.header().map_or(1, |h| h.revision()));
            for k in resp.kvs() {
                out.push(kv_of(k)?);
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok((out, from_etcd(revision))),
            }
        }
    }

    async fn txn(&self, ops: Vec<Op>) -> Result<TxnResult, StoreError> {
        check_unique_keys(&ops)?;
        let when: Vec<Compare> = ops.iter().flat_map(compares).collect();
        let then: Vec<TxnOp> = ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value, .. } => TxnOp::put(
                    key.as_str(),
                    value.to_vec(),
                    Some(PutOptions::new().with_prev_key()),
                ),
                Op::Delete { key, .. } => {
                    TxnOp::delete(key.as_str(), Some(DeleteOptions::new().with_prev_key()))
                }
            })
            .collect();
        let otherwise: Vec<TxnOp> = ops.iter().map(|op| TxnOp::get(op.key(), None)).collect();
        let txn = Txn::new().when(when).and_then(then).or_else(otherwise);
        let resp = self
            .call(|c| {
                let txn = txn.clone();
                async move { c.kv_client().txn(txn).await }
            })
            .await?;
        let responses = resp.op_responses();
        if !resp.succeeded() {
            // Which condition failed, judged on the keys as the transaction saw them.
            for (op, r) in ops.iter().zip(&responses) {
                let current = match r {
                    TxnOpResponse::Get(g) => g.kvs().first().map(kv_of).transpose()?,
                    _ => None,
                };
                check_condition(op, current.as_ref())?;
            }
            return Err(StoreError::Backend(
                "etcd refused a transaction whose conditions held".into(),
            ));
        }
        let revision = from_etcd(resp.header().map_or(1, |h| h.revision()));
        let mut results = Vec::with_capacity(ops.len());
        for (op, r) in ops.iter().zip(&responses) {
            let prev = match r {
                TxnOpResponse::Put(p) => p.prev_key().map(kv_of).transpose()?,
                TxnOpResponse::Delete(d) => d.prev_kvs().first().map(kv_of).transpose()?,
                _ => None,
            };
            results.push(apply_op(op, prev.as_ref(), revision).to_op_result());
        }
        Ok(TxnResult { revision, results })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let compacted = from_etcd(self.compacted_etcd());
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        let opts = WatchOptions::new()
            .with_range(prefix_end(prefix))
            .with_start_revision(to_etcd(after) + 1)
            .with_prev_key();
        let mut stream = self
            .call(|c| {
                let opts = opts.clone();
                async move { c.watch_client().watch(prefix, Some(opts)).await }
            })
            .await?;
        let (tx, rx) = mpsc::channel(1024);
        let known = self.compacted.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = stream.message() => m,
                    _ = tx.closed() => return,
                };
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        let _ = tx
                            .send(Err(StoreError::Unavailable {
                                reason: "etcd closed the watch".into(),
                                no_space: false,
                            }))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(error(e))).await;
                        return;
                    }
                };
                if resp.canceled() {
                    let err = if resp.compact_revision() > 0 {
                        known.fetch_max(resp.compact_revision(), Ordering::SeqCst);
                        StoreError::Compacted {
                            requested: after,
                            compacted: from_etcd(resp.compact_revision()),
                        }
                    } else {
                        StoreError::Unavailable {
                            reason: format!("etcd cancelled the watch: {}", resp.cancel_reason()),
                            no_space: false,
                        }
                    };
                    let _ = tx.send(Err(err)).await;
                    return;
                }
                // One batch per revision, as the transactions wrote them.
                let mut batch: Vec<Event> = Vec::new();
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let kind = match ev.event_type() {
                        etcd_client::EventType::Put => EventKind::Put,
                        etcd_client::EventType::Delete => EventKind::Delete,
                    };
                    let event = match (kv_of(kv), ev.prev_kv().map(kv_of).transpose()) {
                        (Ok(kv), Ok(prev)) => Event { kind, kv, prev },
                        (Err(e), _) | (_, Err(e)) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    };
                    if batch
                        .last()
                        .is_some_and(|l| l.revision() != event.revision())
                        && tx.send(Ok(std::mem::take(&mut batch))).await.is_err()
                    {
                        return;
                    }
                    batch.push(event);
                }
                if !batch.is_empty() && tx.send(Ok(batch)).await.is_err() {
                    return;
                }
            }
        });
        Ok(WatchStream { rx })
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        let resp = self
            .call(|c| async move {
                c.kv_client()
                    .get(
                        "\0berth-revision-probe",
                        Some(GetOptions::new().with_count_only()),
                    )
                    .await
            })
            .await?;
        Ok(from_etcd(resp.header().map_or(1, |h| h.revision())))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let target = to_etcd(revision);
        if target <= self.compacted_etcd() {
            return Ok(());
        }
        let mut client = self.client();
        match client.compact(target, None).await {
            // Another server compacted as far already (or further: the next refused watch
            // tells how far).
            Ok(_) => {}
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("compacted") => {}
            Err(e) => return Err(error(e)),
        }
        self.compacted.fetch_max(target, Ordering::SeqCst);
        Ok(())
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        Ok(from_etcd(self.compacted_etcd()))
    }

    async fn health(&self) -> Result<(), StoreError> {
        // A linearizable read goes through the leader: it fails without a quorum.
        self.revision().await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_increment_the_last_byte() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }

    #[test]
    fn revisions_are_etcds_less_one() {
        assert_eq!(from_etcd(1), 0);
        assert_eq!(to_etcd(0), 1);
        assert_eq!(from_etcd(to_etcd(41)), 41);
    }
}

//! The behaviour every [`Store`] backend must show, as runnable checks. Each backend's tests call
//! [`run_all`] with a factory for fresh, empty stores.
#![allow(clippy::unwrap_used)] // a test suite: a failed step should panic where it happened

use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::{Condition, EventKind, Op, OpResult, Store, StoreError, WatchStream};

/// A fresh, empty store under test, and whatever must live as long as it (a temp dir, a server).
pub struct Subject {
    pub store: Arc<dyn Store>,
    pub guard: Box<dyn Any + Send>,
}

/// Run every check, each on a fresh store from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Subject>,
{
    create_and_get(make().await.store).await;
    compare_and_swap(make().await.store).await;
    delete_and_recreate(make().await.store).await;
    transactions_are_atomic(make().await.store).await;
    list_by_prefix(make().await.store).await;
    watch_replays_then_follows(make().await.store).await;
    watch_filters_by_prefix(make().await.store).await;
    compaction(make().await.store).await;
    concurrent_cas_loses_nothing(make().await.store).await;
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn next_events(w: &mut WatchStream, n: usize) -> Vec<crate::Event> {
    let mut out = Vec::new();
    while out.len() < n {
        let batch = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("watch event within 10s")
            .expect("watch still open")
            .expect("watch without error");
        out.extend(batch);
    }
    assert_eq!(out.len(), n, "watch delivered more events than written");
    out
}

pub async fn create_and_get(s: Arc<dyn Store>) {
    assert_eq!(s.revision().await.unwrap(), 0);
    let kv = s.create("/a/1", b("one")).await.unwrap();
    assert_eq!(kv.key, "/a/1");
    assert_eq!(kv.value, b("one"));
    assert_eq!(kv.create_revision, 1);
    assert_eq!(kv.mod_revision, 1);
    assert_eq!(kv.version, 1);
    assert_eq!(s.get("/a/1").await.unwrap(), Some(kv));
    assert_eq!(s.get("/a/2").await.unwrap(), None);
    match s.create("/a/1", b("again")).await {
        Err(StoreError::AlreadyExists { key }) => assert_eq!(key, "/a/1"),
        other => panic!("create of an existing key: {other:?}"),
    }
    assert_eq!(
        s.revision().await.unwrap(),
        1,
        "a failed write takes no revision"
    );
}

pub async fn compare_and_swap(s: Arc<dyn Store>) {
    let first = s.create("/k", b("v1")).await.unwrap();
    s.create("/other", b("x")).await.unwrap();
    let second = s
        .put("/k", b("v2"), Condition::ModRevision(first.mod_revision))
        .await
        .unwrap();
    assert_eq!(second.mod_revision, 3, "revisions are global");
    assert_eq!(second.create_revision, first.create_revision);
    assert_eq!(second.version, 2);
    match s
        .put("/k", b("stale"), Condition::ModRevision(first.mod_revision))
        .await
    {
        Err(StoreError::Conflict { key, current }) => {
            assert_eq!(key, "/k");
            assert_eq!(*current, second, "a conflict reports the current value");
        }
        other => panic!("stale CAS: {other:?}"),
    }
    assert!(matches!(
        s.put("/missing", b("x"), Condition::ModRevision(1)).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.put("/missing", b("x"), Condition::Exists).await,
        Err(StoreError::NotFound { .. })
    ));
    let any = s.put("/k", b("v3"), Condition::Any).await.unwrap();
    assert_eq!(any.version, 3);
    let fresh = s.put("/new", b("n"), Condition::Any).await.unwrap();
    assert_eq!(fresh.version, 1);
    assert_eq!(s.get("/k").await.unwrap().unwrap().value, b("v3"));
}

pub async fn delete_and_recreate(s: Arc<dyn Store>) {
    let kv = s.create("/d", b("x")).await.unwrap();
    assert!(matches!(
        s.delete("/d", Condition::ModRevision(kv.mod_revision + 7))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    let gone = s
        .delete("/d", Condition::ModRevision(kv.mod_revision))
        .await
        .unwrap();
    assert_eq!(gone, kv, "delete returns the deleted key");
    assert_eq!(s.get("/d").await.unwrap(), None);
    assert!(matches!(
        s.delete("/d", Condition::Any).await,
        Err(StoreError::NotFound { .. })
    ));
    let again = s.create("/d", b("y")).await.unwrap();
    assert_eq!(again.version, 1);
    assert_eq!(again.create_revision, 3);
}

pub async fn transactions_are_atomic(s: Arc<dyn Store>) {
    s.create("/t/a", b("a")).await.unwrap();
    let before = s.revision().await.unwrap();
    let failing = vec![
        Op::Put {
            key: "/t/b".into(),
            value: b("b"),
            condition: Condition::Absent,
        },
        Op::Put {
            key: "/t/a".into(),
            value: b("a2"),
            condition: Condition::Absent,
        },
    ];
    assert!(matches!(
        s.txn(failing).await,
        Err(StoreError::AlreadyExists { key }) if key == "/t/a"
    ));
    assert_eq!(s.get("/t/b").await.unwrap(), None, "no partial transaction");
    assert_eq!(s.revision().await.unwrap(), before);
    let dup = vec![
        Op::Put {
            key: "/t/c".into(),
            value: b("1"),
            condition: Condition::Any,
        },
        Op::Delete {
            key: "/t/c".into(),
            condition: Condition::Any,
        },
    ];
    assert!(matches!(
        s.txn(dup).await,
        Err(StoreError::DuplicateKey { .. })
    ));
    let ok = s
        .txn(vec![
            Op::Put {
                key: "/t/b".into(),
                value: b("b"),
                condition: Condition::Absent,
            },
            Op::Delete {
                key: "/t/a".into(),
                condition: Condition::Exists,
            },
        ])
        .await
        .unwrap();
    // Its writes come after everything before it, in order; whether they share one revision
    // (etcd) or take one each (the embedded store) is the backend's.
    assert!(
        ok.revision > before && ok.revision <= before + 2,
        "{} after {before}",
        ok.revision
    );
    assert_eq!(s.revision().await.unwrap(), ok.revision);
    assert!(
        matches!(&ok.results[0], OpResult::Put(kv) if kv.mod_revision > before && kv.mod_revision <= ok.revision)
    );
    assert!(matches!(&ok.results[1], OpResult::Deleted(kv) if kv.value == b("a")));
    assert_eq!(s.get("/t/a").await.unwrap(), None);
}

pub async fn list_by_prefix(s: Arc<dyn Store>) {
    for k in ["/p/b", "/p/a", "/pz", "/p/c", "/q/a"] {
        s.create(k, b(k)).await.unwrap();
    }
    s.delete("/p/c", Condition::Any).await.unwrap();
    let (kvs, rev) = s.list("/p/").await.unwrap();
    let keys: Vec<_> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/p/a", "/p/b"]);
    assert_eq!(rev, 6);
    assert_eq!(kvs[0].value, b("/p/a"));
    let (all, _) = s.list("/").await.unwrap();
    assert_eq!(all.len(), 4);
}

pub async fn watch_replays_then_follows(s: Arc<dyn Store>) {
    let a = s.create("/w/a", b("1")).await.unwrap();
    s.put("/w/a", b("2"), Condition::Any).await.unwrap();
    // From revision 1: the second write is history, the rest arrives live.
    let mut w = s.watch("/w/", a.mod_revision).await.unwrap();
    s.delete("/w/a", Condition::Any).await.unwrap();
    s.create("/w/b", b("3")).await.unwrap();
    let events = next_events(&mut w, 3).await;
    let revs: Vec<_> = events.iter().map(|e| e.revision()).collect();
    assert_eq!(revs, [2, 3, 4], "in order, no gaps, no duplicates");
    assert_eq!(events[0].kind, EventKind::Put);
    assert_eq!(events[0].kv.value, b("2"));
    assert_eq!(events[0].prev.as_ref().unwrap().value, b("1"));
    assert_eq!(events[1].kind, EventKind::Delete);
    assert_eq!(events[1].kv.key, "/w/a");
    assert_eq!(
        events[1].prev.as_ref().unwrap().value,
        b("2"),
        "a delete carries the last value"
    );
    assert_eq!(events[2].kv.create_revision, 4);
    // Watching from the current revision sees only what comes next.
    let mut tail = s.watch("/w/", 4).await.unwrap();
    s.create("/w/c", b("4")).await.unwrap();
    let events = next_events(&mut tail, 1).await;
    assert_eq!(events[0].kv.key, "/w/c");
}

pub async fn watch_filters_by_prefix(s: Arc<dyn Store>) {
    let mut w = s.watch("/x/", 0).await.unwrap();
    s.create("/y/1", b("no")).await.unwrap();
    s.create("/x/1", b("yes")).await.unwrap();
    s.create("/xx", b("no")).await.unwrap();
    s.create("/x/2", b("yes")).await.unwrap();
    let events = next_events(&mut w, 2).await;
    let keys: Vec<_> = events.iter().map(|e| e.kv.key.as_str()).collect();
    assert_eq!(keys, ["/x/1", "/x/2"]);
}

pub async fn compaction(s: Arc<dyn Store>) {
    s.create("/c/a", b("a1")).await.unwrap(); // 1
    s.put("/c/a", b("a2"), Condition::Any).await.unwrap(); // 2
    s.create("/c/b", b("b1")).await.unwrap(); // 3
    s.delete("/c/b", Condition::Any).await.unwrap(); // 4
    s.create("/c/c", b("c1")).await.unwrap(); // 5
    s.put("/c/a", b("a3"), Condition::Any).await.unwrap(); // 6
    s.compact(4).await.unwrap();
    assert_eq!(s.compacted_revision().await.unwrap(), 4);
    match s.watch("/c/", 3).await {
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) => assert_eq!((requested, compacted), (3, 4)),
        Err(e) => panic!("watch before the compaction point: {e}"),
        Ok(_) => panic!("watch before the compaction point succeeded"),
    }
    let mut w = s.watch("/c/", 4).await.unwrap();
    let events = next_events(&mut w, 2).await;
    assert_eq!(events[0].kv.key, "/c/c");
    assert_eq!(events[1].kv.value, b("a3"));
    assert_eq!(
        events[1].prev.as_ref().unwrap().value,
        b("a2"),
        "the value current at the compaction point is kept"
    );
    let (kvs, _) = s.list("/c/").await.unwrap();
    let vals: Vec<_> = kvs.iter().map(|kv| kv.value.clone()).collect();
    assert_eq!(vals, [b("a3"), b("c1")]);
    // Compacting backwards is a no-op; compacting everything keeps current values.
    s.compact(2).await.unwrap();
    assert_eq!(s.compacted_revision().await.unwrap(), 4);
    s.compact(6).await.unwrap();
    // Let a backend that compacts in steps finish.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.get("/c/a").await.unwrap().unwrap().value, b("a3"));
    assert_eq!(s.get("/c/c").await.unwrap().unwrap().mod_revision, 5);
    assert_eq!(s.get("/c/b").await.unwrap(), None);
    let later = s.create("/c/d", b("d")).await.unwrap();
    assert_eq!(later.mod_revision, 7);
}

pub async fn concurrent_cas_loses_nothing(s: Arc<dyn Store>) {
    const WRITERS: usize = 16;
    const INCREMENTS: usize = 25;
    s.create("/n/counter", b("0")).await.unwrap();
    let start = s.revision().await.unwrap();
    let mut w = s.watch("/n/", start).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..INCREMENTS {
                let mut cur = s.get("/n/counter").await.unwrap().unwrap();
                loop {
                    let n: usize = std::str::from_utf8(&cur.value).unwrap().parse().unwrap();
                    let next = Bytes::from((n + 1).to_string());
                    match s
                        .put("/n/counter", next, Condition::ModRevision(cur.mod_revision))
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict { current, .. }) => cur = *current,
                        Err(e) => panic!("unexpected: {e}"),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = WRITERS * INCREMENTS;
    let kv = s.get("/n/counter").await.unwrap().unwrap();
    assert_eq!(kv.value, Bytes::from(total.to_string()));
    assert_eq!(kv.version as usize, total + 1);
    let events = next_events(&mut w, total).await;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.revision(),
            start + 1 + i as u64,
            "watch order without gaps"
        );
        assert_eq!(e.kv.value, Bytes::from((i + 1).to_string()));
    }
}

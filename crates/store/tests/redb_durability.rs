//! What the embedded backend keeps across a restart.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use store::{Condition, RedbStore, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_values_revisions_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    {
        let s = Arc::new(RedbStore::open(&path, 1 << 20).unwrap());
        let mut tasks = Vec::new();
        for i in 0..8 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                for j in 0..50 {
                    s.create(&format!("/k/{i}/{j}"), Bytes::from(format!("{i}-{j}")))
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        s.put("/k/0/0", Bytes::from("changed"), Condition::Any)
            .await
            .unwrap();
        s.delete("/k/0/1", Condition::Any).await.unwrap();
        s.compact(100).await.unwrap();
    }
    let s = RedbStore::open(&path, 1 << 20).unwrap();
    assert_eq!(s.revision().await.unwrap(), 402);
    assert_eq!(s.compacted_revision().await.unwrap(), 100);
    let (kvs, rev) = s.list("/k/").await.unwrap();
    assert_eq!(rev, 402);
    assert_eq!(kvs.len(), 399);
    assert_eq!(s.get("/k/0/0").await.unwrap().unwrap().value, "changed");
    assert_eq!(s.get("/k/0/1").await.unwrap(), None);
    // History after the compaction point survives the restart.
    let mut w = s.watch("/k/", 100).await.unwrap();
    let mut seen = 0;
    while seen < 302 {
        seen += w.next().await.unwrap().unwrap().len();
    }
    assert_eq!(seen, 302);
    // And writing continues from the stored revision.
    let kv = s.create("/k/new", Bytes::from("x")).await.unwrap();
    assert_eq!(kv.mod_revision, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_snapshot_serves_every_key_and_sends_old_watchers_to_relist() {
    let dir = tempfile::tempdir().unwrap();
    let s = RedbStore::open(&dir.path().join("a.redb"), 1 << 20).unwrap();
    for i in 0..50 {
        s.create(&format!("/k/{i:02}"), Bytes::from(format!("v{i}")))
            .await
            .unwrap();
    }
    s.put("/k/00", Bytes::from("changed"), Condition::Any)
        .await
        .unwrap();
    s.delete("/k/01", Condition::Any).await.unwrap();
    let snap = store::snapshot::take(&s).await.unwrap();
    let bytes = snap.encode();
    let back = store::snapshot::Snapshot::decode(&bytes).unwrap();
    let path = dir.path().join("b.redb");
    let revision = RedbStore::restore(&path, &back, 1000).unwrap();
    assert_eq!(revision, 52 + 1000);
    // Not over an existing store.
    assert!(RedbStore::restore(&path, &back, 1000).is_err());
    let r = RedbStore::open(&path, 1 << 20).unwrap();
    let (before, _) = s.list("/k/").await.unwrap();
    let (after, rev) = r.list("/k/").await.unwrap();
    assert_eq!(after, before, "every key, value, revision and version");
    assert_eq!(rev, revision);
    assert_eq!(r.compacted_revision().await.unwrap(), revision);
    assert!(matches!(
        r.watch("/k/", 10).await,
        Err(store::StoreError::Compacted { .. })
    ));
    // It takes writes after the bumped revision, and updates keep counting versions.
    let kv = r
        .put("/k/00", Bytes::from("again"), Condition::ModRevision(51))
        .await
        .unwrap();
    assert_eq!(kv.mod_revision, revision + 1);
    assert_eq!(kv.version, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_is_reported_never_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    {
        let s = RedbStore::open(&path, 1 << 20).unwrap();
        for i in 0..20 {
            s.create(
                &format!("/k/{i:02}"),
                Bytes::from(format!("marker-{i:02}-{}", "v".repeat(200))),
            )
            .await
            .unwrap();
        }
    }
    // One flipped byte inside one stored value.
    let mut file = std::fs::read(&path).unwrap();
    let needle = b"marker-07-";
    let at = file
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the value is in the file");
    file[at + needle.len() + 50] ^= 0x01;
    std::fs::write(&path, &file).unwrap();
    let s = RedbStore::open(&path, 1 << 20).unwrap();
    match s.list("/k/").await {
        Err(e) => assert!(e.to_string().contains("damaged"), "{e}"),
        Ok((kvs, _)) => panic!("a damaged store listed {} keys as if whole", kvs.len()),
    }
    assert!(matches!(
        s.get("/k/07").await,
        Err(store::StoreError::Corrupt(_))
    ));
    // The intact keys still read one by one (what a recovery keeps).
    assert_eq!(s.get("/k/08").await.unwrap().unwrap().key, "/k/08");
}

//! The embedded backend under faults below it: a full disk. Needs root (it mounts a small
//! tmpfs for the store; the test script runs the suite as root).
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use store::{Condition, RedbStore, Store, StoreError};

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .expect("mount a tmpfs (the store fault tests need root)");
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fill every byte left with a file; removing it gives the space back.
    fn fill(&self) -> PathBuf {
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        // The last partial pages too.
        let small = [0u8; 512];
        while f.write(&small).is_ok_and(|n| n > 0) {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = umount2(self.dir.path(), MntFlags::MNT_DETACH);
    }
}

fn value(i: usize) -> Bytes {
    Bytes::from(format!("{i:08}").repeat(512))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_clearly_and_they_resume_when_space_returns() {
    let disk = SmallDisk::new("8m");
    let path = disk.path().join("state.redb");
    let store = RedbStore::open(&path, 1 << 20).unwrap();
    let mut watch = store.watch("/k/", 0).await.unwrap();
    for i in 0..20 {
        store.create(&format!("/k/{i:05}"), value(i)).await.unwrap();
    }
    let filler = disk.fill();
    // Writes go on until the file can grow no more; then each is refused, saying why.
    let mut acknowledged: Vec<usize> = (0..20).collect();
    let mut refusal = None;
    for i in 20..5000 {
        match store.create(&format!("/k/{i:05}"), value(i)).await {
            Ok(_) => acknowledged.push(i),
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    match refusal.expect("a full disk refuses writes") {
        StoreError::Unavailable { no_space, reason } => {
            assert!(no_space, "{reason}");
            assert!(reason.contains("no space"), "{reason}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(store.health().await.is_err());
    // Still refused at once while the disk is full.
    let t = Instant::now();
    assert!(matches!(
        store.create("/k/again", value(0)).await,
        Err(StoreError::Unavailable { .. })
    ));
    assert!(t.elapsed() < Duration::from_secs(2));
    // Space returns: writes resume by themselves, with no restart.
    std::fs::remove_file(filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let resumed = loop {
        match store.create("/k/resumed", value(1)).await {
            Ok(kv) => break kv,
            Err(StoreError::Unavailable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("writes did not resume: {e}"),
        }
    };
    store.health().await.unwrap();
    // Every acknowledged write is there, once, and nothing else but the new one.
    let (kvs, revision) = store.list("/k/").await.unwrap();
    assert_eq!(kvs.len(), acknowledged.len() + 1);
    for (kv, i) in kvs.iter().zip(&acknowledged) {
        assert_eq!(kv.key, format!("/k/{i:05}"));
        assert_eq!(kv.value, value(*i));
    }
    assert_eq!(revision, resumed.mod_revision);
    // The watcher saw each write once, in order, across the outage.
    let mut seen = Vec::new();
    while seen.len() < kvs.len() {
        let batch = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("the watch goes on")
            .unwrap()
            .unwrap();
        seen.extend(batch.into_iter().map(|e| e.kv.key));
    }
    let keys: Vec<String> = kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(seen, keys);
    // And all of it is on disk.
    drop(watch);
    drop(store);
    let again = RedbStore::open(&path, 1 << 20).unwrap();
    assert_eq!(again.list("/k/").await.unwrap().0.len(), kvs.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_free_space_reserve_only_creates_are_refused() {
    let disk = SmallDisk::new("16m");
    let path = disk.path().join("state.redb");
    let store = RedbStore::open(&path, 1 << 20).unwrap();
    store.create("/k/a", value(1)).await.unwrap();
    store.create("/k/b", value(2)).await.unwrap();
    // A reserve larger than the whole disk: always under it.
    store.set_min_free(64 << 20);
    match store.create("/k/c", value(3)).await {
        Err(StoreError::Unavailable { no_space, reason }) => {
            assert!(no_space);
            assert!(reason.contains("--store-min-free"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Updates and deletions go through, so the cluster can still clean up.
    store
        .put("/k/a", value(4), Condition::Exists)
        .await
        .unwrap();
    store.delete("/k/b", Condition::Any).await.unwrap();
    store.set_min_free(0);
    store.create("/k/c", value(3)).await.unwrap();
}

//! Power cuts under the embedded backend: redb runs on a storage backend that keeps what was
//! synced and loses power on command. After a cut, the disk holds the synced bytes plus an
//! arbitrary subset of the writes made since the last sync (a disk may have written some of
//! them, in any order, before the power went). Every write the store acknowledged must be
//! there after recovery, round after round.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use store::{RedbStore, Store};

#[derive(Default)]
struct Platter {
    /// What survives a cut for sure.
    synced: Vec<u8>,
    /// What readers see now.
    current: Vec<u8>,
    /// Writes and resizes since the last sync, in order.
    unsynced: Vec<Change>,
    dead: bool,
}

#[derive(Clone)]
enum Change {
    Write(u64, Vec<u8>),
    Len(u64),
}

fn apply(image: &mut Vec<u8>, change: &Change) {
    match change {
        Change::Write(at, data) => {
            let end = *at as usize + data.len();
            if image.len() < end {
                image.resize(end, 0);
            }
            image[*at as usize..end].copy_from_slice(data);
        }
        Change::Len(len) => image.resize(*len as usize, 0),
    }
}

/// A disk that can lose power.
#[derive(Clone, Default)]
struct Disk(Arc<Mutex<Platter>>);

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Disk")
    }
}

fn gone() -> io::Error {
    io::Error::other("the power is off")
}

impl Disk {
    /// Cut the power: from now on every operation fails. Returns the disk as it would be
    /// found afterwards.
    fn cut(&self) -> Disk {
        let mut p = self.0.lock().unwrap();
        p.dead = true;
        let mut image = p.synced.clone();
        for change in &p.unsynced {
            // Resizes happen as the file system records them; each write may or may not have
            // reached the platter.
            if matches!(change, Change::Len(_)) || fastrand::bool() {
                apply(&mut image, change);
            }
        }
        Disk(Arc::new(Mutex::new(Platter {
            synced: image.clone(),
            current: image,
            ..Default::default()
        })))
    }
}

impl redb::StorageBackend for Disk {
    fn len(&self) -> Result<u64, io::Error> {
        let p = self.0.lock().unwrap();
        if p.dead {
            return Err(gone());
        }
        Ok(p.current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let p = self.0.lock().unwrap();
        if p.dead {
            return Err(gone());
        }
        let end = offset as usize + out.len();
        if end > p.current.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        out.copy_from_slice(&p.current[offset as usize..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut p = self.0.lock().unwrap();
        if p.dead {
            return Err(gone());
        }
        let change = Change::Len(len);
        apply(&mut p.current, &change);
        p.unsynced.push(change);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut p = self.0.lock().unwrap();
        if p.dead {
            return Err(gone());
        }
        let changes = std::mem::take(&mut p.unsynced);
        for change in &changes {
            apply(&mut p.synced, change);
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut p = self.0.lock().unwrap();
        if p.dead {
            return Err(gone());
        }
        let change = Change::Write(offset, data.to_vec());
        apply(&mut p.current, &change);
        p.unsynced.push(change);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_write_is_lost_to_a_power_cut() {
    let mut disk = Disk::default();
    let mut acknowledged: BTreeSet<String> = BTreeSet::new();
    for round in 0..100 {
        let d = disk.clone();
        let store = Arc::new(RedbStore::open_on(move || d.clone()).unwrap());
        // Everything acknowledged so far, in every earlier round, is there.
        let (kvs, _) = store.list("/k/").await.unwrap();
        let present: BTreeSet<String> = kvs.iter().map(|kv| kv.key.clone()).collect();
        let lost: Vec<&String> = acknowledged.difference(&present).collect();
        assert!(
            lost.is_empty(),
            "round {round}: lost {} acknowledged writes: {lost:?}",
            lost.len()
        );
        for kv in &kvs {
            assert_eq!(
                kv.value,
                Bytes::from(kv.key.clone()),
                "round {round}: {} damaged",
                kv.key
            );
        }
        // Writers, and a cut at a random moment among their commits.
        let acked = Arc::new(Mutex::new(Vec::new()));
        let mut writers = Vec::new();
        for w in 0..8 {
            let (store, acked) = (store.clone(), acked.clone());
            writers.push(tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("/k/{round:03}/{w}/{i:05}");
                    match store.create(&key, Bytes::from(key.clone())).await {
                        Ok(_) => acked.lock().unwrap().push(key),
                        Err(_) => return,
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(2..25))).await;
        let after = disk.cut();
        for w in writers {
            w.await.unwrap();
        }
        drop(store);
        acknowledged.extend(acked.lock().unwrap().drain(..));
        disk = after;
    }
    assert!(
        acknowledged.len() > 1000,
        "the writers made progress: {}",
        acknowledged.len()
    );
}

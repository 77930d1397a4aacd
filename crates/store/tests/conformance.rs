//! Every backend passes the same conformance suite.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use store::conformance::{Subject, run_all};
use store::{MemStore, RedbStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_store_conforms() {
    run_all(|| async {
        Subject {
            store: Arc::new(MemStore::new()),
            guard: Box::new(()),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_store_conforms() {
    run_all(|| async {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("db.redb"), 1 << 20).unwrap();
        Subject {
            store: Arc::new(store),
            guard: Box::new(dir),
        }
    })
    .await;
}

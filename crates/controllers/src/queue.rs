//! A work queue of object names: duplicates collapse while queued, and failed items come back
//! after a delay.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

#[derive(Clone)]
pub(crate) struct Queue {
    tx: mpsc::UnboundedSender<String>,
    queued: Arc<Mutex<HashSet<String>>>,
}

pub(crate) struct Receiver {
    rx: mpsc::UnboundedReceiver<String>,
    queued: Arc<Mutex<HashSet<String>>>,
}

pub(crate) fn queue() -> (Queue, Receiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(Mutex::new(HashSet::new()));
    (
        Queue {
            tx,
            queued: queued.clone(),
        },
        Receiver { rx, queued },
    )
}

impl Queue {
    pub(crate) fn add(&self, name: &str) {
        let fresh = self
            .queued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string());
        if fresh {
            let _ = self.tx.send(name.to_string());
        }
    }

    pub(crate) fn add_after(&self, name: &str, delay: Duration) {
        let q = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(&name);
        });
    }
}

impl Receiver {
    pub(crate) async fn next(&mut self) -> Option<String> {
        let name = self.rx.recv().await?;
        self.queued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name);
        Some(name)
    }
}

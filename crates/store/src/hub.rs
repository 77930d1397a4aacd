//! Watch fan-out shared by the backends: committed batches are broadcast to live watchers, and
//! a new watcher first replays retained history from its backend, then follows the broadcast
//! without gaps or duplicates.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};

use crate::{Event, Revision, StoreError, WatchStream};

/// How many committed batches a live watcher may fall behind before it is closed.
const LIVE_BACKLOG: usize = 8192;
/// Events per history read, so a long replay does not hold one huge read.
const REPLAY_CHUNK: usize = 2048;

/// What a backend must offer for its history to be replayed to new watchers.
pub(crate) trait History: Send + Sync + 'static {
    /// Events under `prefix` with `after < revision <= upto`, at most `limit` of them, and the
    /// revision the scan reached. Fails with `Compacted` if any of that range is gone.
    fn history(
        &self,
        prefix: &str,
        after: Revision,
        upto: Revision,
        limit: usize,
    ) -> Result<(Vec<Event>, Revision), StoreError>;

    fn current(&self) -> Revision;

    fn compacted(&self) -> Revision;
}

pub(crate) struct Hub {
    tx: broadcast::Sender<Arc<Vec<Event>>>,
}

impl Hub {
    pub(crate) fn new() -> Self {
        Hub {
            tx: broadcast::channel(LIVE_BACKLOG).0,
        }
    }

    /// Announce a committed batch. The backend must have made its revision visible through
    /// `History::current` before calling this.
    pub(crate) fn publish(&self, events: Vec<Event>) {
        if !events.is_empty() {
            // No receivers is fine: nobody is watching.
            let _ = self.tx.send(Arc::new(events));
        }
    }

    pub(crate) fn watch(
        &self,
        source: Arc<dyn History>,
        prefix: &str,
        after: Revision,
    ) -> Result<WatchStream, StoreError> {
        // Subscribe before reading the current revision: anything committed after that read is
        // then certain to arrive live, and anything before it is in history.
        let mut live = self.tx.subscribe();
        let compacted = source.compacted();
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        let upto = source.current();
        let prefix = prefix.to_string();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut last = after;
            while last < upto {
                let src = source.clone();
                let p = prefix.clone();
                let read =
                    tokio::task::spawn_blocking(move || src.history(&p, last, upto, REPLAY_CHUNK))
                        .await;
                let (events, reached) = match read {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    Err(join) => {
                        let _ = tx.send(Err(StoreError::backend(join))).await;
                        return;
                    }
                };
                last = reached;
                if !events.is_empty() && tx.send(Ok(events)).await.is_err() {
                    return;
                }
            }
            // Live events need no history: holding the store past here would keep its file
            // open after its last handle is dropped, for as long as this watch lives.
            drop(source);
            loop {
                tokio::select! {
                    batch = live.recv() => match batch {
                        Ok(batch) => {
                            let events: Vec<Event> = batch
                                .iter()
                                .filter(|e| e.revision() > last && e.kv.key.starts_with(&prefix))
                                .cloned()
                                .collect();
                            if let Some(e) = events.last() {
                                last = e.revision();
                                if tx.send(Ok(events)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let _ = tx.send(Err(StoreError::WatchLagged)).await;
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(WatchStream { rx })
    }
}

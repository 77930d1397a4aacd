//! The pods bound to this node: one list-and-watch (filtered by `spec.nodeName`, so nothing
//! else crosses the wire), a worker per pod, and on start-up the removal of whatever belongs to
//! pods that no longer exist.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use api::k8s_openapi::api::core::v1::Pod;
use client::{ListParams, WatchEvent};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::Shared;
use crate::worker::{Msg, Worker};

/// How long a watch runs before it is renewed with a fresh list.
const WATCH_SECONDS: u32 = 300;

struct Workers {
    shared: Arc<Shared>,
    running: HashMap<String, mpsc::Sender<Msg>>,
    /// Pods whose worker finished with the pod in a final phase; only deletion matters now.
    finished: HashSet<String>,
    done_tx: mpsc::UnboundedSender<String>,
}

fn uid(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_default()
}

impl Workers {
    fn dispatch(&mut self, p: Pod) {
        let id = uid(&p);
        self.shared
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), Arc::new(p.clone()));
        if let Some(tx) = self.running.get(&id) {
            if tx.try_send(Msg::Pod(Arc::new(p.clone()))).is_err() {
                // The worker is busy; it will see the latest object when it gets to it.
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(Msg::Pod(Arc::new(p))).await;
                });
            }
            return;
        }
        if self.finished.contains(&id) && p.metadata.deletion_timestamp.is_none() {
            return;
        }
        let (tx, rx) = mpsc::channel(64);
        let worker = Worker::new(self.shared.clone(), Arc::new(p), tx.clone());
        let done = self.done_tx.clone();
        let key = id.clone();
        tokio::spawn(async move {
            worker.run(rx).await;
            let _ = done.send(key);
        });
        self.running.insert(id, tx);
    }

    fn gone(&mut self, id: &str) {
        self.finished.remove(id);
        self.shared
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(tx) = self.running.get(id) {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(Msg::Gone).await;
            });
        }
    }
}

pub(crate) async fn run(shared: Arc<Shared>) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut w = Workers {
        shared: shared.clone(),
        running: HashMap::new(),
        finished: HashSet::new(),
        done_tx,
    };
    let mut cleaned = false;
    let selector = format!("spec.nodeName={}", shared.node.name);
    loop {
        let params = ListParams {
            field_selector: Some(selector.clone()),
            ..Default::default()
        };
        let (pods, rv) = match shared.client.list::<Pod>(None, &params).await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "cannot list this node's pods; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let present: HashSet<String> = pods.iter().map(uid).collect();
        for id in w.running.keys().cloned().collect::<Vec<_>>() {
            if !present.contains(&id) {
                w.gone(&id);
            }
        }
        w.finished.retain(|id| present.contains(id));
        if !cleaned {
            remove_orphans(&shared, &present).await;
            cleaned = true;
        }
        for p in pods {
            w.dispatch(p);
        }
        let params = ListParams {
            field_selector: Some(selector.clone()),
            resource_version: Some(rv),
            timeout_seconds: Some(WATCH_SECONDS),
            bookmarks: true,
            ..Default::default()
        };
        let mut watch = match shared.client.watch::<Pod>(None, &params).await {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cannot watch this node's pods; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                ev = watch.next() => match ev {
                    Some(WatchEvent::Added(p)) | Some(WatchEvent::Modified(p)) => w.dispatch(p),
                    Some(WatchEvent::Deleted(p)) => w.gone(&uid(&p)),
                    Some(WatchEvent::Bookmark(_)) => {}
                    Some(WatchEvent::Error(e)) => {
                        debug!(error = %e, "pod watch ended");
                        break;
                    }
                    None => break,
                },
                Some(id) = done_rx.recv() => {
                    w.running.remove(&id);
                    w.finished.insert(id);
                }
            }
        }
    }
}

/// Containers, sandboxes, pod directories, logs and cgroups of pods that are not on this node
/// any more (deleted while the agent was down).
async fn remove_orphans(shared: &Shared, present: &HashSet<String>) {
    let owner = |id: &str| id.split('_').next().unwrap_or("").to_string();
    for id in shared.runtime.list() {
        if present.contains(&owner(&id)) {
            continue;
        }
        info!(container = %id, "removing a container of a pod that no longer exists");
        let _ = shared.runtime.kill(&id, libc::SIGKILL).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), shared.runtime.wait(&id)).await;
        if let Err(e) = shared.runtime.remove(&id).await {
            warn!(container = %id, error = %e, "could not remove an orphaned container");
        }
    }
    for pod in shared.runtime.sandboxes() {
        if !present.contains(&pod) {
            let _ = shared.runtime.remove_sandbox(&pod).await;
        }
    }
    for e in std::fs::read_dir(&shared.dirs.pods)
        .into_iter()
        .flatten()
        .flatten()
    {
        let id = e.file_name().to_string_lossy().into_owned();
        if !present.contains(&id) {
            let _ = crate::volumes::teardown(&e.path());
            crate::worker::remove_pod_cgroups(&id);
        }
    }
    for e in std::fs::read_dir(&shared.dirs.logs)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let id = name.rsplit('_').next().unwrap_or("");
        if !present.contains(id) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

//! The pods bound to this node: one list-and-watch (filtered by `spec.nodeName`, so nothing
//! else crosses the wire), a worker per pod, and on start-up the removal of whatever belongs to
//! pods that no longer exist.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::k8s_openapi::api::core::v1::Pod;
use client::{ListParams, Watcher, watcher};
use supervise::panic_message;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::Shared;
use crate::worker::{Msg, Worker};

/// The pod workers, kept across restarts of the dispatching loop (a restart lists again and
/// hands each pod to the worker it already has).
#[derive(Default)]
pub(crate) struct Workers {
    state: Mutex<WorkerState>,
}

#[derive(Default)]
struct WorkerState {
    running: HashMap<String, mpsc::Sender<Msg>>,
    /// To stop each running worker when the agent stops.
    aborts: HashMap<String, tokio::task::AbortHandle>,
    /// Pods whose worker finished with the pod in a final phase; only deletion matters now.
    finished: HashSet<String>,
    /// Leftovers of pods deleted while the agent was down are gone.
    cleaned: bool,
}

fn uid(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_default()
}

impl Workers {
    fn lock(&self) -> std::sync::MutexGuard<'_, WorkerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dispatch(self: &Arc<Self>, shared: &Arc<Shared>, p: Pod) {
        let id = uid(&p);
        let p = Arc::new(p);
        shared
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), p.clone());
        let mut st = self.lock();
        if let Some(tx) = st.running.get(&id) {
            if tx.try_send(Msg::Pod(p.clone())).is_err() {
                // The worker is busy; it will see the latest object when it gets to it.
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(Msg::Pod(p)).await;
                });
            }
            return;
        }
        if st.finished.contains(&id) && p.metadata.deletion_timestamp.is_none() {
            return;
        }
        st.finished.remove(&id);
        let (tx, rx) = mpsc::channel(64);
        let worker = Worker::new(shared.clone(), p, tx.clone());
        let (workers, key) = (self.clone(), id.clone());
        let run = tokio::spawn(worker.run(rx));
        st.aborts.insert(id.clone(), run.abort_handle());
        tokio::spawn(async move {
            let outcome = run.await;
            let mut st = workers.lock();
            st.running.remove(&key);
            st.aborts.remove(&key);
            match outcome {
                Err(e) if e.is_panic() => {
                    // Not finished: the pod's next change starts a fresh worker.
                    error!(pod = %key, panic = %panic_message(&*e.into_panic()), "the pod's worker panicked");
                }
                // Only deletion matters to it now.
                _ => {
                    st.finished.insert(key);
                }
            }
        });
        st.running.insert(id, tx);
    }

    /// Stop every worker (the agent is stopping; its containers carry on without it).
    pub(crate) fn stop_all(&self) {
        for (_, a) in self.lock().aborts.drain() {
            a.abort();
        }
    }

    fn gone(&self, shared: &Shared, id: &str) {
        shared
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        let mut st = self.lock();
        st.finished.remove(id);
        if let Some(tx) = st.running.get(id) {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(Msg::Gone).await;
            });
        }
    }
}

/// Follow the pods bound to this node and keep a worker on each.
pub(crate) async fn run(shared: Arc<Shared>, workers: Arc<Workers>) {
    let params = ListParams {
        field_selector: Some(format!("spec.nodeName={}", shared.node.name)),
        ..Default::default()
    };
    let mut w = Watcher::<Pod>::new(shared.client.clone(), None, params);
    loop {
        match w.next().await {
            watcher::Event::Restarted(pods) => {
                let present: HashSet<String> = pods.iter().map(uid).collect();
                let (missing, clean) = {
                    let mut st = workers.lock();
                    st.finished.retain(|id| present.contains(id));
                    let missing: Vec<String> = st
                        .running
                        .keys()
                        .filter(|id| !present.contains(*id))
                        .cloned()
                        .collect();
                    (missing, !std::mem::replace(&mut st.cleaned, true))
                };
                for id in missing {
                    workers.gone(&shared, &id);
                }
                if clean {
                    remove_orphans(&shared, &present).await;
                }
                for p in pods {
                    workers.dispatch(&shared, p);
                }
            }
            watcher::Event::Applied(p) => workers.dispatch(&shared, p),
            watcher::Event::Deleted(p) => workers.gone(&shared, &uid(&p)),
        }
    }
}

/// Containers, sandboxes, pod directories, logs and cgroups of pods that are not on this node
/// any more (deleted while the agent was down).
pub(crate) async fn remove_orphans(shared: &Shared, present: &HashSet<String>) {
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
    if let Some(network) = shared.network.get() {
        for pod in network.attached() {
            if !present.contains(&pod)
                && let Err(e) = network.detach(&pod).await
            {
                warn!(pod = %pod, error = %e, "could not free the network of a pod that no longer exists");
            }
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

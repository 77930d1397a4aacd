//! Events about pods, as the kubelet writes them (`kubectl describe` shows them). Recording
//! never blocks a pod's worker: events go through a bounded queue to one writer, which folds
//! repeats into a count the way Kubernetes' event recorder does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use api::k8s_openapi::api::core::v1::{Event, ObjectReference, Pod};
use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use client::Client;
use serde_json::json;
use tokio::sync::mpsc;
use tracing::debug;

/// Events queued beyond this are dropped (they are informational; pods are not).
const QUEUE: usize = 1024;
/// A repeat later than this starts a new Event object instead of bumping the old one's count.
const FOLD_WINDOW: Duration = Duration::from_secs(600);

struct Record {
    reference: ObjectReference,
    kind: String,
    reason: String,
    message: String,
}

#[derive(Clone)]
pub struct Events {
    tx: mpsc::Sender<Record>,
}

impl Events {
    /// Start the writer; `component` and `host` go into each event's source.
    pub fn start(client: Client, component: &str, host: &str) -> Events {
        let (tx, rx) = mpsc::channel(QUEUE);
        // The queue outlives a writer that panicked; the next one carries on from it.
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let (component, host) = (component.to_string(), host.to_string());
        supervise::supervise("event-writer", move || {
            write(client.clone(), rx.clone(), component.clone(), host.clone())
        });
        Events { tx }
    }

    /// A recorder that drops everything (for tests of code that records).
    pub fn discard() -> Events {
        let (tx, _) = mpsc::channel(1);
        Events { tx }
    }

    pub fn record(&self, pod: &Pod, kind: &str, reason: &str, message: &str) {
        self.record_about(pod, None, kind, reason, message);
    }

    /// An event about one container of the pod (`fieldPath: spec.containers{name}`).
    pub fn record_about(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: &str,
        reason: &str,
        message: &str,
    ) {
        let reference = api::events::pod_reference(pod, container.map(|c| field_path(pod, c)));
        let r = Record {
            reference,
            kind: kind.into(),
            reason: reason.into(),
            message: message.into(),
        };
        if self.tx.try_send(r).is_err() {
            debug!(reason, "event queue full; event dropped");
        }
    }
}

fn field_path(pod: &Pod, container: &str) -> String {
    let init = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.name == container));
    if init {
        format!("spec.initContainers{{{container}}}")
    } else {
        format!("spec.containers{{{container}}}")
    }
}

struct Folded {
    name: String,
    namespace: String,
    count: i32,
    at: tokio::time::Instant,
}

async fn write(
    client: Client,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Record>>>,
    component: String,
    host: String,
) {
    let mut rx = rx.lock().await;
    let mut seen: HashMap<(String, String, String, String, String), Folded> = HashMap::new();
    while let Some(r) = rx.recv().await {
        let now = jiff::Timestamp::now();
        let ns = r
            .reference
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let key = (
            r.reference.uid.clone().unwrap_or_default(),
            r.reference.field_path.clone().unwrap_or_default(),
            r.kind.clone(),
            r.reason.clone(),
            r.message.clone(),
        );
        if let Some(f) = seen.get_mut(&key)
            && f.at.elapsed() < FOLD_WINDOW
        {
            f.count += 1;
            f.at = tokio::time::Instant::now();
            let patch = json!({"count": f.count, "lastTimestamp": Time(now)});
            if client
                .merge_patch::<Event>(Some(&f.namespace), &f.name, &patch)
                .await
                .is_ok()
            {
                continue;
            }
        }
        let name = format!(
            "{}.{:x}",
            r.reference.name.clone().unwrap_or_default(),
            now.as_nanosecond() as u64 ^ fastrand::u64(..) & 0xffff
        );
        let by = api::events::Reporter {
            component: &component,
            host: Some(&host),
        };
        let ev = api::events::new(
            r.reference,
            Some(name.clone()),
            &r.kind,
            &r.reason,
            &r.message,
            &by,
            now,
        );
        match client.create(Some(&ns), &ev).await {
            Ok(_) => {
                seen.retain(|_, f| f.at.elapsed() < FOLD_WINDOW);
                seen.insert(
                    key,
                    Folded {
                        name,
                        namespace: ns,
                        count: 1,
                        at: tokio::time::Instant::now(),
                    },
                );
            }
            Err(e) => debug!(error = %e, "could not write an event"),
        }
    }
}

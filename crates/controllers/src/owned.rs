//! What the workload controllers share: owner references, pods made from a template, a pod's
//! readiness and availability, expectations of writes the mirrors have not shown yet, and
//! events about any object.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use api::k8s_openapi::api::core::v1::{Event, ObjectReference, Pod, PodTemplateSpec};
use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use api::k8s_openapi::{Metadata, Resource};
use client::{Client, ClientError};
use tracing::debug;

/// The owner reference that makes `owner` the controller of a dependent.
pub fn controller_ref<K: Resource + Metadata<Ty = ObjectMeta>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::API_VERSION.into(),
        kind: K::KIND.into(),
        name: owner.metadata().name.clone().unwrap_or_default(),
        uid: owner.metadata().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The controlling owner of an object, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// Is `meta` controlled by the object of kind K with this uid?
pub fn controlled_by<K: Resource>(meta: &ObjectMeta, uid: Option<&str>) -> bool {
    controller_of(meta).is_some_and(|r| r.kind == K::KIND && Some(r.uid.as_str()) == uid)
}

/// A pod for `owner`, from its template; the API server completes the name.
pub fn pod_from_template(
    template: &PodTemplateSpec,
    namespace: &str,
    generate_name: Option<String>,
    name: Option<String>,
    owner: OwnerReference,
) -> Pod {
    let t = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            name,
            generate_name,
            namespace: Some(namespace.into()),
            labels: t.labels,
            annotations: t.annotations,
            finalizers: t.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Not finished and not on its way out: a pod that counts toward a controller's replicas.
pub fn is_active(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && !is_terminal(p)
}

pub fn is_terminal(p: &Pod) -> bool {
    matches!(phase(p), "Succeeded" | "Failed")
}

pub fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// When the pod last became Ready, if it is Ready now.
pub fn ready_since(p: &Pod) -> Option<Option<jiff::Timestamp>> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

pub fn is_ready(p: &Pod) -> bool {
    ready_since(p).is_some()
}

/// Ready for at least `min_ready` seconds at `now`; otherwise, when it will be (if Ready).
pub fn availability(p: &Pod, min_ready: i32, now: jiff::Timestamp) -> Result<(), Option<Duration>> {
    let since = ready_since(p).ok_or(None)?;
    if min_ready <= 0 {
        return Ok(());
    }
    let Some(since) = since else { return Ok(()) };
    let at = since + jiff::SignedDuration::from_secs(i64::from(min_ready));
    if at <= now {
        Ok(())
    } else {
        let left = (at - now).total(jiff::Unit::Millisecond).unwrap_or(0.0);
        Err(Some(Duration::from_millis(left.max(0.0) as u64 + 10)))
    }
}

/// Writes a controller made that its mirror has not shown yet, per owner. Until the mirror
/// catches up, the owner's counts are stale and acting on them would create or delete twice.
#[derive(Default)]
pub struct Expectations {
    m: Mutex<HashMap<String, Pending>>,
}

struct Pending {
    adds: HashSet<String>,
    dels: HashSet<String>,
    since: Instant,
}

/// After this long the mirror is assumed to have missed an event.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(60);

impl Expectations {
    pub fn expect(&self, owner: &str, adds: &[String], dels: &[String]) {
        let mut m = self.m.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(owner.to_string()).or_insert_with(|| Pending {
            adds: HashSet::new(),
            dels: HashSet::new(),
            since: Instant::now(),
        });
        e.adds.extend(adds.iter().cloned());
        e.dels.extend(dels.iter().cloned());
        e.since = Instant::now();
    }

    /// Have all expected writes shown up? `seen(name)` says whether the mirror holds the
    /// object and whether it is still live (not being deleted).
    pub fn satisfied(&self, owner: &str, seen: impl Fn(&str) -> Option<bool>) -> bool {
        let mut m = self.m.lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = m.get_mut(owner) else {
            return true;
        };
        e.adds.retain(|n| seen(n).is_none());
        e.dels.retain(|n| seen(n) == Some(true));
        if (e.adds.is_empty() && e.dels.is_empty()) || e.since.elapsed() > EXPECTATION_TIMEOUT {
            m.remove(owner);
            true
        } else {
            false
        }
    }

    pub fn forget(&self, owner: &str) {
        self.m
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(owner);
    }
}

/// A reference to any object, for events.
pub fn reference<K: Resource + Metadata<Ty = ObjectMeta>>(obj: &K) -> ObjectReference {
    let m = obj.metadata();
    ObjectReference {
        api_version: Some(K::API_VERSION.into()),
        kind: Some(K::KIND.into()),
        namespace: m.namespace.clone(),
        name: m.name.clone(),
        uid: m.uid.clone(),
        resource_version: m.resource_version.clone(),
        field_path: None,
    }
}

/// Record an event about `obj` from `component`, in the background; a failure only matters
/// to the log.
pub fn event<K: Resource + Metadata<Ty = ObjectMeta>>(
    client: &Client,
    component: &'static str,
    obj: &K,
    kind: &str,
    reason: &str,
    message: &str,
) {
    let by = api::events::Reporter {
        component,
        host: None,
    };
    let ev = api::events::new(
        reference(obj),
        None,
        kind,
        reason,
        message,
        &by,
        jiff::Timestamp::now(),
    );
    let client = client.clone();
    tokio::spawn(async move {
        let ns = ev.metadata.namespace.clone();
        let r: Result<Event, ClientError> = client.create(ns.as_deref(), &ev).await;
        if let Err(e) = r {
            debug!(error = %e, "could not record an event");
        }
    });
}

pub fn now_time() -> Time {
    Time(jiff::Timestamp::now())
}

//! The Deployment controller: one ReplicaSet per pod template, named by a hash of the template,
//! numbered by revision. A template change creates (or revives) the new set and moves replicas
//! over to it: RollingUpdate within maxSurge and maxUnavailable, Recreate by scaling the old
//! sets to zero and waiting for their pods to go. Scaling a deployment mid-rollout is shared out
//! in proportion. It keeps revisionHistoryLimit old sets, honours paused, writes the
//! Available and Progressing conditions (with progressDeadlineSeconds) and is the one writer
//! of the Deployment's status. `kubectl rollout undo` works by restoring an old template.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use api::k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use api::k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use api::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use api::selector::LabelSelectorExpr;
use client::{Client, ClientError};
use serde_json::json;
use tracing::{debug, info};

use crate::harness::{Outcome, Queue, Reconciler};
use crate::mirror::{Mirror, key_of};
use crate::owned::{self, controlled_by, controller_of, controller_ref};

const COMPONENT: &str = "deployment-controller";

pub const REVISION: &str = "deployment.kubernetes.io/revision";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const HASH_LABEL: &str = "pod-template-hash";
/// Annotations of a Deployment that are not copied onto its ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

pub struct DeploymentController {
    client: Client,
    deployments: Arc<Mirror<Deployment>>,
    sets: Arc<Mirror<ReplicaSet>>,
    pods: Arc<Mirror<Pod>>,
    queue: Queue,
}

/// The sets of one deployment, as the rollout sees them.
struct Sets {
    new: Option<ReplicaSet>,
    /// The others, oldest first.
    old: Vec<ReplicaSet>,
}

impl Sets {
    fn all(&self) -> impl Iterator<Item = &ReplicaSet> {
        self.new.iter().chain(self.old.iter())
    }
}

fn replicas_of(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn available_of(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

fn annotation<'a>(meta: &'a ObjectMeta, k: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(k).map(String::as_str)
}

fn revision(rs: &ReplicaSet) -> i64 {
    annotation(&rs.metadata, REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn want(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// An int-or-percent of `total`: percentages round up (surge) or down (unavailability).
pub(crate) fn resolve(v: Option<&IntOrString>, total: i32, round_up: bool) -> i32 {
    match v {
        None => 0,
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => {
            let pct: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
            let x = pct * f64::from(total) / 100.0;
            (if round_up { x.ceil() } else { x.floor() }) as i32
        }
    }
}

/// (maxSurge, maxUnavailable) in pods. Both zero would deadlock, so unavailability is then 1.
fn fenceposts(d: &Deployment) -> (i32, i32) {
    let spec = d.spec.as_ref();
    let rolling = spec
        .and_then(|s| s.strategy.as_ref())
        .filter(|s| s.type_.as_deref() != Some("Recreate"))
        .and_then(|s| s.rolling_update.as_ref());
    let Some(ru) = rolling else { return (0, 0) };
    let n = want(d);
    let surge = resolve(ru.max_surge.as_ref(), n, true);
    let unavailable = resolve(ru.max_unavailable.as_ref(), n, false);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable.min(n))
    }
}

fn is_recreate(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate")
}

/// The template hash, as a label value: FNV-1a of the template (and of the collision count,
/// when there was a collision), its decimal digits spelled in consonants and digits that
/// cannot make words.
pub fn template_hash(t: &PodTemplateSpec, collisions: Option<i32>) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    feed(&serde_json::to_vec(&semantic(t)).unwrap_or_default());
    if let Some(c) = collisions {
        feed(&c.to_le_bytes());
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// Is this set's template the deployment's (ignoring the hash label the set adds)? Compared
/// as Kubernetes compares Go structs: a field set to its zero value (`false`, `0`, `""`, empty)
/// equals one left out, whichever encoding (JSON or protobuf) the client used.
fn same_template(rs: &ReplicaSet, d: &PodTemplateSpec) -> bool {
    let Some(t) = rs.spec.as_ref().and_then(|s| s.template.as_ref()) else {
        return false;
    };
    semantic(t) == semantic(d)
}

fn semantic(t: &PodTemplateSpec) -> serde_json::Value {
    fn prune(v: &mut serde_json::Value) -> bool {
        use serde_json::Value;
        match v {
            Value::Null => true,
            Value::Bool(b) => !*b,
            Value::Number(n) => n.as_f64() == Some(0.0),
            Value::String(s) => s.is_empty(),
            Value::Array(a) => {
                for x in a.iter_mut() {
                    prune(x);
                }
                a.is_empty()
            }
            Value::Object(m) => {
                m.retain(|_, x| !prune(x));
                m.is_empty()
            }
        }
    }
    let mut v = serde_json::to_value(t).unwrap_or_default();
    if let Some(labels) = v["metadata"]["labels"].as_object_mut() {
        labels.remove(HASH_LABEL);
    }
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("creationTimestamp");
    }
    prune(&mut v);
    v
}

pub(crate) fn selector_of(sel: Option<&LabelSelector>) -> Option<LabelSelectorExpr> {
    LabelSelectorExpr::from_object(sel)
        .ok()
        .filter(|s| !s.is_everything())
}

impl DeploymentController {
    /// Subscribe to the mirrors; call before they run.
    pub fn new(
        client: Client,
        deployments: Arc<Mirror<Deployment>>,
        sets: Arc<Mirror<ReplicaSet>>,
        pods: Arc<Mirror<Pod>>,
    ) -> DeploymentController {
        let queue = Queue::new("deployment-controller");
        let q = queue.clone();
        deployments.on_change(move |_, new| {
            if let Some(d) = new {
                q.add(&key_of(&d.metadata));
            }
        });
        let q = queue.clone();
        let ds = deployments.clone();
        sets.on_change(move |old, new| {
            for rs in [old, new].into_iter().flatten() {
                let ns = rs.metadata.namespace.as_deref().unwrap_or("");
                match controller_of(&rs.metadata) {
                    Some(r) if r.kind == "Deployment" => q.add(&format!("{ns}/{}", r.name)),
                    Some(_) => {}
                    None => {
                        let labels = rs.metadata.labels.clone().unwrap_or_default();
                        for d in ds.in_namespace(ns) {
                            let sel = selector_of(d.spec.as_ref().map(|s| &s.selector));
                            if sel.is_some_and(|s| s.matches(&labels)) {
                                q.add(&key_of(&d.metadata));
                            }
                        }
                    }
                }
            }
        });
        // A Recreate rollout waits for the old pods to be gone.
        let q = queue.clone();
        let rss = sets.clone();
        pods.on_change(move |old, new| {
            let (Some(p), None) = (old, new) else { return };
            let ns = p.metadata.namespace.as_deref().unwrap_or("");
            if let Some(r) = controller_of(&p.metadata).filter(|r| r.kind == "ReplicaSet")
                && let Some(rs) = rss.get(ns, &r.name)
                && let Some(d) = controller_of(&rs.metadata).filter(|r| r.kind == "Deployment")
            {
                q.add(&format!("{ns}/{}", d.name));
            }
        });
        DeploymentController {
            client,
            deployments,
            sets,
            pods,
            queue,
        }
    }

    /// The queue its change handlers feed.
    pub fn queue(&self) -> Queue {
        self.queue.clone()
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ClientError> {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let Some(d) = self.deployments.get(ns, name) else {
            return Ok(None);
        };
        let d: Deployment = (*d).clone();
        let Some(sel) = selector_of(d.spec.as_ref().map(|s| &s.selector)) else {
            owned::event(
                &self.client,
                COMPONENT,
                &d,
                "Warning",
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.",
            );
            return Ok(None);
        };
        let mut sets = self.claim(&d, &sel).await;
        if d.metadata.deletion_timestamp.is_some() {
            let s = self.split(&d, std::mem::take(&mut sets));
            return self.sync_status(&d, &s, None).await;
        }
        let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        let template = d
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let has_new = sets.iter().any(|rs| same_template(rs, &template));
        let scaling = has_new
            && sets.iter().filter(|rs| replicas_of(rs) > 0).any(|rs| {
                annotation(&rs.metadata, DESIRED).and_then(|v| v.parse::<i32>().ok())
                    != Some(want(&d))
            });
        if paused || scaling {
            return self.sync_scale(&d, sets, paused).await;
        }
        if is_recreate(&d) {
            self.recreate(&d, sets).await
        } else {
            self.rolling(&d, sets).await
        }
    }

    /// The sets this deployment controls, adopting matching orphans and releasing sets whose
    /// labels stopped matching.
    async fn claim(&self, d: &Deployment, sel: &LabelSelectorExpr) -> Vec<ReplicaSet> {
        let ns = d.metadata.namespace.as_deref().unwrap_or("");
        let uid = d.metadata.uid.as_deref();
        let mut out = Vec::new();
        for rs in self.sets.in_namespace(ns) {
            let labels = rs.metadata.labels.clone().unwrap_or_default();
            let matches = sel.matches(&labels);
            if controlled_by::<Deployment>(&rs.metadata, uid) {
                if matches || d.metadata.deletion_timestamp.is_some() {
                    out.push((*rs).clone());
                } else {
                    let refs: Vec<_> = rs
                        .metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .filter(|r| Some(r.uid.as_str()) != uid)
                        .cloned()
                        .collect();
                    let patch = json!({"metadata": {"ownerReferences": refs,
                        "resourceVersion": rs.metadata.resource_version}});
                    let name = rs.metadata.name.as_deref().unwrap_or("");
                    let _ = self
                        .client
                        .merge_patch::<ReplicaSet>(Some(ns), name, &patch)
                        .await;
                }
            } else if controller_of(&rs.metadata).is_none()
                && matches
                && rs.metadata.deletion_timestamp.is_none()
                && d.metadata.deletion_timestamp.is_none()
            {
                let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
                refs.push(controller_ref(d));
                let patch = json!({"metadata": {"ownerReferences": refs,
                    "resourceVersion": rs.metadata.resource_version}});
                let name = rs.metadata.name.as_deref().unwrap_or("");
                if let Ok(rs) = self
                    .client
                    .merge_patch::<ReplicaSet>(Some(ns), name, &patch)
                    .await
                {
                    out.push(rs);
                }
            }
        }
        out
    }

    /// The new set (whose template is the deployment's) and the old ones, oldest first.
    fn split(&self, d: &Deployment, mut sets: Vec<ReplicaSet>) -> Sets {
        sets.sort_by(|a, b| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        });
        let template = d
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let i = sets.iter().position(|rs| same_template(rs, &template));
        let new = i.map(|i| sets.remove(i));
        Sets { new, old: sets }
    }

    /// Find the new set and bring its annotations (revision, history, copied annotations) up
    /// to date, or create it when `create` and there is none. Keeps the deployment's revision
    /// annotation in step.
    async fn new_set(
        &self,
        d: &Deployment,
        sets: Vec<ReplicaSet>,
        create: bool,
    ) -> Result<Sets, ClientError> {
        let mut s = self.split(d, sets);
        let max_old = s.old.iter().map(revision).max().unwrap_or(0);
        let next = max_old + 1;
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        if let Some(rs) = &s.new {
            let mut annotations = rs.metadata.annotations.clone().unwrap_or_default();
            copy_annotations(d, &mut annotations);
            let current = revision(rs);
            if current < next {
                annotations.insert(REVISION.into(), next.to_string());
                if current > 0 {
                    let mut hist: Vec<String> = annotations
                        .get(REVISION_HISTORY)
                        .map(|h| h.split(',').map(str::to_string).collect())
                        .unwrap_or_default();
                    hist.push(current.to_string());
                    annotations.insert(REVISION_HISTORY.into(), hist.join(","));
                }
            }
            let min_ready = d.spec.as_ref().and_then(|s| s.min_ready_seconds);
            let rs_min_ready = rs.spec.as_ref().and_then(|s| s.min_ready_seconds);
            if Some(&annotations) != rs.metadata.annotations.as_ref()
                || min_ready.unwrap_or(0) != rs_min_ready.unwrap_or(0)
            {
                let patch = json!({
                    "metadata": {"annotations": annotations,
                                 "resourceVersion": rs.metadata.resource_version},
                    "spec": {"minReadySeconds": min_ready.unwrap_or(0)},
                });
                let name = rs.metadata.name.clone().unwrap_or_default();
                s.new = Some(
                    self.client
                        .merge_patch::<ReplicaSet>(Some(&ns), &name, &patch)
                        .await?,
                );
            }
        } else if create {
            s.new = Some(self.create_set(d, &s, next).await?);
        }
        let rev = s.new.as_ref().map(revision).unwrap_or(max_old);
        if rev > 0 && annotation(&d.metadata, REVISION) != Some(rev.to_string().as_str()) {
            let patch = json!({"metadata": {"annotations": {REVISION: rev.to_string()}}});
            let name = d.metadata.name.clone().unwrap_or_default();
            self.client
                .merge_patch::<Deployment>(Some(&ns), &name, &patch)
                .await?;
        }
        Ok(s)
    }

    async fn create_set(
        &self,
        d: &Deployment,
        s: &Sets,
        revision: i64,
    ) -> Result<ReplicaSet, ClientError> {
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let spec = d.spec.clone().unwrap_or_default();
        let mut collisions = d.status.as_ref().and_then(|s| s.collision_count);
        loop {
            let hash = template_hash(&spec.template, collisions);
            let mut template = spec.template.clone();
            template
                .metadata
                .get_or_insert_with(Default::default)
                .labels
                .get_or_insert_with(Default::default)
                .insert(HASH_LABEL.into(), hash.clone());
            let mut selector = spec.selector.clone();
            selector
                .match_labels
                .get_or_insert_with(Default::default)
                .insert(HASH_LABEL.into(), hash.clone());
            let name = format!("{}-{hash}", d.metadata.name.as_deref().unwrap_or(""));
            let replicas = if is_recreate(d) {
                0
            } else {
                new_replicas_rolling(d, s, 0)
            };
            let (surge, _) = fenceposts(d);
            let mut annotations = BTreeMap::new();
            copy_annotations(d, &mut annotations);
            annotations.insert(REVISION.into(), revision.to_string());
            annotations.insert(DESIRED.into(), want(d).to_string());
            annotations.insert(MAX_REPLICAS.into(), (want(d) + surge).to_string());
            let rs = ReplicaSet {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                    annotations: Some(annotations),
                    owner_references: Some(vec![controller_ref(d)]),
                    ..Default::default()
                },
                spec: Some(ReplicaSetSpec {
                    replicas: Some(replicas),
                    min_ready_seconds: spec.min_ready_seconds,
                    selector,
                    template: Some(template),
                }),
                status: None,
            };
            match self.client.create(Some(&ns), &rs).await {
                Ok(rs) => {
                    info!(deployment = %key_of(&d.metadata), replicaset = %name, "new replica set");
                    if replicas > 0 {
                        owned::event(
                            &self.client,
                            COMPONENT,
                            d,
                            "Normal",
                            "ScalingReplicaSet",
                            &format!("Scaled up replica set {name} from 0 to {replicas}"),
                        );
                    }
                    return Ok(rs);
                }
                Err(e) if e.code() == Some(409) => {
                    // A set of that name exists: ours with this template (the mirror lags),
                    // or a hash collision.
                    if let Some(existing) = self.client.get::<ReplicaSet>(Some(&ns), &name).await?
                        && controlled_by::<Deployment>(
                            &existing.metadata,
                            d.metadata.uid.as_deref(),
                        )
                        && same_template(&existing, &spec.template)
                    {
                        return Ok(existing);
                    }
                    let c = collisions.unwrap_or(0) + 1;
                    collisions = Some(c);
                    let patch = json!({"status": {"collisionCount": c}});
                    let dn = d.metadata.name.clone().unwrap_or_default();
                    self.client
                        .patch_status::<Deployment>(Some(&ns), &dn, &patch)
                        .await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Set a set's replicas (and the deployment size annotations); says whether it changed.
    async fn scale(
        &self,
        d: &Deployment,
        rs: &mut ReplicaSet,
        replicas: i32,
    ) -> Result<bool, ClientError> {
        let (surge, _) = fenceposts(d);
        let desired = want(d).to_string();
        let max = (want(d) + surge).to_string();
        let from = replicas_of(rs);
        let same_size = from == replicas;
        if same_size
            && annotation(&rs.metadata, DESIRED) == Some(desired.as_str())
            && annotation(&rs.metadata, MAX_REPLICAS) == Some(max.as_str())
        {
            return Ok(false);
        }
        let ns = rs.metadata.namespace.clone().unwrap_or_default();
        let name = rs.metadata.name.clone().unwrap_or_default();
        let patch = json!({
            "metadata": {"annotations": {DESIRED: desired, MAX_REPLICAS: max},
                         "resourceVersion": rs.metadata.resource_version},
            "spec": {"replicas": replicas},
        });
        *rs = self
            .client
            .merge_patch::<ReplicaSet>(Some(&ns), &name, &patch)
            .await?;
        if !same_size {
            let way = if replicas > from { "up" } else { "down" };
            owned::event(
                &self.client,
                COMPONENT,
                d,
                "Normal",
                "ScalingReplicaSet",
                &format!("Scaled {way} replica set {name} from {from} to {replicas}"),
            );
        }
        Ok(!same_size)
    }

    async fn rolling(
        &self,
        d: &Deployment,
        sets: Vec<ReplicaSet>,
    ) -> Result<Option<Duration>, ClientError> {
        let created_before = sets.iter().any(|rs| {
            same_template(
                rs,
                &d.spec
                    .as_ref()
                    .map(|s| s.template.clone())
                    .unwrap_or_default(),
            )
        });
        let mut s = self.new_set(d, sets, true).await?;
        let event = (!created_before).then(|| {
            s.new.as_ref().map(|rs| {
                (
                    "NewReplicaSetCreated",
                    format!(
                        "Created new replica set \"{}\"",
                        rs.metadata.name.as_deref().unwrap_or("")
                    ),
                )
            })
        });
        let n = want(d);
        // Scale the new set up (or down, if the deployment shrank).
        if let Some(mut new) = s.new.take() {
            let current = replicas_of(&new);
            let target = if current > n {
                n
            } else {
                new_replicas_rolling(d, &s, current)
            };
            let changed = self.scale(d, &mut new, target).await?;
            s.new = Some(new);
            if changed {
                return self.sync_status(d, &s, event.flatten()).await;
            }
        }
        if self.scale_down_old(d, &mut s).await? {
            return self.sync_status(d, &s, event.flatten()).await;
        }
        if complete(d, &s) {
            self.cleanup(d, &s).await?;
        }
        self.sync_status(d, &s, event.flatten()).await
    }

    /// Take replicas away from old sets as far as maxUnavailable allows: first those that
    /// are not available anyway, then available ones, oldest sets first.
    async fn scale_down_old(&self, d: &Deployment, s: &mut Sets) -> Result<bool, ClientError> {
        let old_total: i32 = s.old.iter().map(replicas_of).sum();
        if old_total == 0 {
            return Ok(false);
        }
        let all_total: i32 = s.all().map(replicas_of).sum();
        let (_, unavailable) = fenceposts(d);
        let min_available = want(d) - unavailable;
        let new_unavailable = s
            .new
            .as_ref()
            .map_or(0, |rs| replicas_of(rs) - available_of(rs));
        let max_down = all_total - min_available - new_unavailable;
        if max_down <= 0 {
            return Ok(false);
        }
        let mut changed = false;
        // Unhealthy replicas of old sets cost no availability.
        let mut cleaned = 0;
        for i in 0..s.old.len() {
            if cleaned >= max_down {
                break;
            }
            let rs = &s.old[i];
            let unhealthy = replicas_of(rs) - available_of(rs);
            if replicas_of(rs) == 0 || unhealthy <= 0 {
                continue;
            }
            let down = unhealthy.min(max_down - cleaned);
            let target = replicas_of(rs) - down;
            let mut rs = s.old[i].clone();
            changed |= self.scale(d, &mut rs, target).await?;
            s.old[i] = rs;
            cleaned += down;
        }
        // Then available ones, as long as enough stay available.
        let available: i32 = s.all().map(available_of).sum();
        let budget = available - min_available;
        let mut done = 0;
        if budget > 0 {
            for i in 0..s.old.len() {
                if done >= budget {
                    break;
                }
                let r = replicas_of(&s.old[i]);
                if r == 0 {
                    continue;
                }
                let down = r.min(budget - done);
                let mut rs = s.old[i].clone();
                changed |= self.scale(d, &mut rs, r - down).await?;
                s.old[i] = rs;
                done += down;
            }
        }
        Ok(changed)
    }

    async fn recreate(
        &self,
        d: &Deployment,
        sets: Vec<ReplicaSet>,
    ) -> Result<Option<Duration>, ClientError> {
        let mut s = self.new_set(d, sets, false).await?;
        let mut changed = false;
        for rs in &mut s.old {
            if replicas_of(rs) > 0 {
                changed |= self.scale(d, rs, 0).await?;
            }
        }
        if changed {
            return self.sync_status(d, &s, None).await;
        }
        // Only once every old pod has gone does the new template start.
        let ns = d.metadata.namespace.as_deref().unwrap_or("");
        let old_uids: Vec<&str> = s
            .old
            .iter()
            .filter_map(|rs| rs.metadata.uid.as_deref())
            .collect();
        let old_running = self.pods.in_namespace(ns).iter().any(|p| {
            controller_of(&p.metadata).is_some_and(|r| old_uids.contains(&r.uid.as_str()))
                && !owned::is_terminal(p)
        });
        if old_running {
            return self.sync_status(d, &s, None).await;
        }
        let mut event = None;
        if s.new.is_none() {
            let all: Vec<ReplicaSet> = s.old.drain(..).collect();
            s = self.new_set(d, all, true).await?;
            event = s.new.as_ref().map(|rs| {
                (
                    "NewReplicaSetCreated",
                    format!(
                        "Created new replica set \"{}\"",
                        rs.metadata.name.as_deref().unwrap_or("")
                    ),
                )
            });
        }
        if let Some(mut new) = s.new.take() {
            self.scale(d, &mut new, want(d)).await?;
            s.new = Some(new);
        }
        if complete(d, &s) {
            self.cleanup(d, &s).await?;
        }
        self.sync_status(d, &s, event).await
    }

    /// A paused deployment, or one whose size changed: resize without rolling.
    async fn sync_scale(
        &self,
        d: &Deployment,
        sets: Vec<ReplicaSet>,
        paused: bool,
    ) -> Result<Option<Duration>, ClientError> {
        let mut s = self.new_set(d, sets, false).await?;
        self.proportional(d, &mut s).await?;
        if paused {
            self.cleanup(d, &s).await?;
        }
        self.sync_status(d, &s, None).await
    }

    /// Share a change of size among the active sets in proportion to their sizes (the
    /// largest absorbs the rounding), keeping the rollout's surge allowance.
    async fn proportional(&self, d: &Deployment, s: &mut Sets) -> Result<(), ClientError> {
        let n = want(d);
        let mut all: Vec<ReplicaSet> = s.all().cloned().collect();
        let active: Vec<usize> = (0..all.len())
            .filter(|i| replicas_of(&all[*i]) > 0)
            .collect();
        let targets: Vec<(usize, i32)> = if active.len() <= 1 {
            // One active set (or none: then the new one, or the newest old one) takes it all.
            let i = active.first().copied().or(if all.is_empty() {
                None
            } else if s.new.is_some() {
                Some(0)
            } else {
                Some(all.len() - 1)
            });
            i.map(|i| vec![(i, n)]).unwrap_or_default()
        } else {
            let (surge, _) = fenceposts(d);
            let allowed = if n > 0 { n + surge } else { 0 };
            let total: i32 = active.iter().map(|i| replicas_of(&all[*i])).sum();
            let delta = allowed - total;
            if delta == 0 {
                Vec::new()
            } else {
                let mut shares: Vec<(usize, i32)> = active
                    .iter()
                    .map(|i| {
                        let r = replicas_of(&all[*i]);
                        let share =
                            (i64::from(r) * i64::from(delta) / i64::from(total.max(1))) as i32;
                        (*i, (r + share).max(0))
                    })
                    .collect();
                let given: i32 = shares.iter().map(|(_, r)| *r).sum();
                let left = allowed - given;
                if let Some(big) = shares.iter_mut().max_by_key(|(i, _)| replicas_of(&all[*i])) {
                    big.1 = (big.1 + left).max(0);
                }
                shares
            }
        };
        for (i, r) in targets {
            let mut rs = all[i].clone();
            self.scale(d, &mut rs, r).await?;
            all[i] = rs;
        }
        let has_new = s.new.is_some();
        let mut it = all.into_iter();
        if has_new {
            s.new = it.next();
        }
        s.old = it.collect();
        Ok(())
    }

    /// Delete old sets beyond revisionHistoryLimit, lowest revisions first.
    async fn cleanup(&self, d: &Deployment, s: &Sets) -> Result<(), ClientError> {
        let Some(limit) = d.spec.as_ref().and_then(|s| s.revision_history_limit) else {
            return Ok(());
        };
        let mut idle: Vec<&ReplicaSet> = s
            .old
            .iter()
            .filter(|rs| {
                replicas_of(rs) == 0
                    && rs.status.as_ref().is_none_or(|st| st.replicas == 0)
                    && rs.metadata.deletion_timestamp.is_none()
            })
            .collect();
        let excess = idle.len().saturating_sub(limit.max(0) as usize);
        idle.sort_by_key(|rs| revision(rs));
        let ns = d.metadata.namespace.as_deref();
        for rs in idle.into_iter().take(excess) {
            let name = rs.metadata.name.as_deref().unwrap_or("");
            let path = format!(
                "/apis/apps/v1/namespaces/{}/replicasets/{name}",
                ns.unwrap_or("")
            );
            let opts = json!({"kind": "DeleteOptions", "apiVersion": "v1",
                "propagationPolicy": "Background",
                "preconditions": {"uid": rs.metadata.uid, "resourceVersion": rs.metadata.resource_version}});
            match self.client.delete_with(&path, &opts).await {
                Ok(()) => debug!(replicaset = name, "old replica set cleaned up"),
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Write the status from the sets; returns when to look again (the progress deadline).
    async fn sync_status(
        &self,
        d: &Deployment,
        s: &Sets,
        created: Option<(&str, String)>,
    ) -> Result<Option<Duration>, ClientError> {
        let plan = status_plan(d, s, created, jiff::Timestamp::now());
        if let Some((kind, reason, message)) = &plan.event {
            owned::event(&self.client, COMPONENT, d, kind, reason, message);
        }
        if let Some(new) = &plan.status {
            let ns = d.metadata.namespace.as_deref();
            let name = d.metadata.name.as_deref().unwrap_or("");
            let status = serde_json::to_value(new).unwrap_or_default();
            match self
                .client
                .put_status::<Deployment>(ns, name, &status)
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(plan.recheck)
    }
}

/// What the deployment's status should say, decided from its sets.
#[derive(Debug, Default, PartialEq)]
struct StatusPlan {
    /// The new status, if it changed.
    status: Option<DeploymentStatus>,
    /// An event about the deployment: type, reason, message.
    event: Option<(&'static str, String, String)>,
    /// Look again after this long (the progress deadline).
    recheck: Option<Duration>,
}

/// The deployment's status from its sets at `now`; `created`: the reason and message of a
/// new set made in this pass.
fn status_plan(
    d: &Deployment,
    s: &Sets,
    created: Option<(&str, String)>,
    now: jiff::Timestamp,
) -> StatusPlan {
    let mut plan = StatusPlan::default();
    let old = d.status.clone().unwrap_or_default();
    let n = want(d);
    let active = |rs: &&ReplicaSet| rs.metadata.deletion_timestamp.is_none();
    let replicas: i32 = s
        .all()
        .filter(active)
        .map(|rs| rs.status.as_ref().map_or(0, |st| st.replicas))
        .sum();
    let updated = s
        .new
        .as_ref()
        .map_or(0, |rs| rs.status.as_ref().map_or(0, |st| st.replicas));
    let ready: i32 = s
        .all()
        .filter(active)
        .map(|rs| {
            rs.status
                .as_ref()
                .and_then(|st| st.ready_replicas)
                .unwrap_or(0)
        })
        .sum();
    let available: i32 = s.all().filter(active).map(available_of).sum();
    let (_, max_unavailable) = fenceposts(d);
    let mut conditions = old.conditions.clone().unwrap_or_default();
    let stamp = Time(now);
    let set = |conditions: &mut Vec<DeploymentCondition>,
               type_: &str,
               status: &str,
               reason: &str,
               message: String| {
        if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
            if c.status == status
                && c.reason.as_deref() == Some(reason)
                && c.message.as_deref() == Some(&message)
            {
                return;
            }
            if c.status != status {
                c.last_transition_time = Some(stamp.clone());
            }
            c.status = status.into();
            c.reason = Some(reason.into());
            c.message = Some(message);
            c.last_update_time = Some(stamp.clone());
        } else {
            conditions.push(DeploymentCondition {
                type_: type_.into(),
                status: status.into(),
                reason: Some(reason.into()),
                message: Some(message),
                last_transition_time: Some(stamp.clone()),
                last_update_time: Some(stamp.clone()),
            });
        }
    };
    if available >= n - max_unavailable {
        set(
            &mut conditions,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
        );
    } else {
        set(
            &mut conditions,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
        );
    }
    let new_name = s
        .new
        .as_ref()
        .and_then(|rs| rs.metadata.name.clone())
        .unwrap_or_default();
    let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    let deadline = d.spec.as_ref().and_then(|s| s.progress_deadline_seconds);
    let mut recheck = None;
    let progressing = conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .cloned();
    let was_paused = progressing
        .as_ref()
        .is_some_and(|c| c.reason.as_deref() == Some("DeploymentPaused"));
    let counts_moved = old.replicas != Some(replicas)
        || old.updated_replicas != Some(updated)
        || old.ready_replicas != Some(ready)
        || old.available_replicas != Some(available);
    let done = updated == n && replicas == n && available == n && s.new.is_some();
    if paused {
        if !was_paused {
            set(
                &mut conditions,
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".into(),
            );
        }
    } else if was_paused {
        set(
            &mut conditions,
            "Progressing",
            "Unknown",
            "DeploymentResumed",
            "Deployment is resumed".into(),
        );
    } else if deadline.is_some() {
        if done {
            set(
                &mut conditions,
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{new_name}\" has successfully progressed."),
            );
        } else if let Some((reason, message)) = created {
            set(&mut conditions, "Progressing", "True", reason, message);
        } else if counts_moved || progressing.is_none() {
            let reason = if progressing.is_none() {
                "FoundNewReplicaSet"
            } else {
                "ReplicaSetUpdated"
            };
            let message = if progressing.is_none() {
                format!("Found new replica set \"{new_name}\"")
            } else {
                format!("ReplicaSet \"{new_name}\" is progressing.")
            };
            // Any progress moves the deadline.
            if let Some(c) = conditions.iter_mut().find(|c| c.type_ == "Progressing") {
                c.last_update_time = Some(stamp.clone());
            }
            set(&mut conditions, "Progressing", "True", reason, message);
        } else if let (Some(secs), Some(c)) = (deadline, &progressing) {
            let since = c.last_update_time.as_ref().map(|t| t.0);
            let at = since.map(|t| t + jiff::SignedDuration::from_secs(i64::from(secs)));
            match at {
                Some(at) if at <= now => {
                    if c.reason.as_deref() != Some("ProgressDeadlineExceeded") {
                        plan.event = Some((
                            "Warning",
                            "ProgressDeadlineExceeded".into(),
                            format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                        ));
                    }
                    set(
                        &mut conditions,
                        "Progressing",
                        "False",
                        "ProgressDeadlineExceeded",
                        format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                    );
                }
                Some(at) => {
                    let left = (at - now).total(jiff::Unit::Millisecond).unwrap_or(0.0);
                    recheck = Some(Duration::from_millis(left.max(0.0) as u64 + 100));
                }
                None => {}
            }
        }
    }
    let new = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(replicas),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((n - available).max(0)),
        conditions: Some(conditions),
        collision_count: old.collision_count,
        terminating_replicas: old.terminating_replicas,
    };
    if new != old {
        plan.status = Some(new);
    }
    if recheck.is_none() && !done && !paused && deadline.is_some() {
        recheck = Some(Duration::from_secs(5));
    }
    plan.recheck = recheck;
    plan
}

/// Copy the deployment's annotations that belong on its sets (e.g. kubernetes.io/change-cause).
fn copy_annotations(d: &Deployment, to: &mut BTreeMap<String, String>) {
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if !NOT_COPIED.contains(&k.as_str()) {
            to.insert(k.clone(), v.clone());
        }
    }
}

/// How big the new set may be now in a rolling update: up to maxSurge above the size in
/// total, never above the deployment's size.
fn new_replicas_rolling(d: &Deployment, s: &Sets, current: i32) -> i32 {
    let n = want(d);
    let (surge, _) = fenceposts(d);
    let total: i32 = s.old.iter().map(replicas_of).sum::<i32>() + current;
    let max_total = n + surge;
    if total >= max_total {
        return current;
    }
    current + (max_total - total).min(n - current).max(0)
}

/// Every replica runs the new template and is available, and no old one is left.
fn complete(d: &Deployment, s: &Sets) -> bool {
    let n = want(d);
    let Some(new) = &s.new else { return false };
    let st = new.status.clone().unwrap_or_default();
    st.replicas == n
        && available_of(new) == n
        && s.old
            .iter()
            .all(|rs| rs.status.as_ref().is_none_or(|st| st.replicas == 0))
}

#[async_trait::async_trait]
impl Reconciler for DeploymentController {
    fn name(&self) -> &'static str {
        "deployment-controller"
    }

    async fn ready(&self) {
        self.deployments.synced().await;
        self.sets.synced().await;
        self.pods.synced().await;
    }

    async fn reconcile(&self, key: &str) -> Outcome {
        DeploymentController::reconcile(self, key).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::Value;

    use super::*;

    fn now() -> jiff::Timestamp {
        "2026-01-01T12:00:00Z".parse().unwrap()
    }

    fn deployment(spec: Value, status: Value) -> Deployment {
        let mut spec = spec;
        spec["selector"] = json!({"matchLabels": {"app": "web"}});
        spec["template"] =
            json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}});
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "ns", "generation": 2},
                                      "spec": spec, "status": status}),
        )
        .unwrap()
    }

    /// A set with `replicas` pods of which `available` are available.
    fn set(name: &str, replicas: i32, available: i32) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {}},
            "status": {"replicas": replicas, "readyReplicas": available,
                       "availableReplicas": available},
        }))
        .unwrap()
    }

    fn condition(p: &StatusPlan, ty: &str) -> (String, String) {
        let c = p
            .status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == ty)
            .unwrap();
        (c.status.clone(), c.reason.clone().unwrap_or_default())
    }

    #[test]
    fn a_finished_rollout_reports_its_counts_and_new_set_available() {
        let d = deployment(
            json!({"replicas": 3, "progressDeadlineSeconds": 600}),
            json!({}),
        );
        let sets = Sets {
            new: Some(set("web-2", 3, 3)),
            old: vec![set("web-1", 0, 0)],
        };
        let p = status_plan(&d, &sets, None, now());
        let st = p.status.clone().unwrap();
        assert_eq!(st.observed_generation, Some(2));
        assert_eq!(
            (
                st.replicas,
                st.updated_replicas,
                st.available_replicas,
                st.unavailable_replicas
            ),
            (Some(3), Some(3), Some(3), Some(0))
        );
        assert_eq!(
            condition(&p, "Available"),
            ("True".into(), "MinimumReplicasAvailable".into())
        );
        assert_eq!(
            condition(&p, "Progressing"),
            ("True".into(), "NewReplicaSetAvailable".into())
        );
        assert_eq!((p.event, p.recheck), (None, None));
        // Written once: the same sets again change nothing.
        let again = deployment(
            json!({"replicas": 3, "progressDeadlineSeconds": 600}),
            serde_json::to_value(&st).unwrap(),
        );
        assert_eq!(
            status_plan(&again, &sets, None, now()),
            StatusPlan::default()
        );
    }

    #[test]
    fn a_rollout_that_stops_moving_passes_its_progress_deadline() {
        let stuck_since = (now() - jiff::SignedDuration::from_secs(700)).to_string();
        let status = json!({"replicas": 4, "updatedReplicas": 1, "readyReplicas": 3,
            "availableReplicas": 3,
            "conditions": [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                            "lastUpdateTime": stuck_since, "lastTransitionTime": stuck_since}]});
        let d = deployment(
            json!({"replicas": 3, "progressDeadlineSeconds": 600}),
            status,
        );
        let sets = Sets {
            new: Some(set("web-2", 1, 0)),
            old: vec![set("web-1", 3, 3)],
        };
        let p = status_plan(&d, &sets, None, now());
        assert_eq!(
            condition(&p, "Progressing"),
            ("False".into(), "ProgressDeadlineExceeded".into())
        );
        let (kind, reason, _) = p.event.clone().unwrap();
        assert_eq!(
            (kind, reason.as_str()),
            ("Warning", "ProgressDeadlineExceeded")
        );
        // Before the deadline: looked at again when it would pass.
        let recent = (now() - jiff::SignedDuration::from_secs(500)).to_string();
        let status = json!({"replicas": 4, "updatedReplicas": 1, "readyReplicas": 3,
            "availableReplicas": 3,
            "conditions": [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                            "lastUpdateTime": recent, "lastTransitionTime": recent}]});
        let d = deployment(
            json!({"replicas": 3, "progressDeadlineSeconds": 600}),
            status,
        );
        let p = status_plan(&d, &sets, None, now());
        let wait = p.recheck.unwrap();
        assert!(
            wait > Duration::from_secs(99) && wait < Duration::from_secs(101),
            "{wait:?}"
        );
    }

    #[test]
    fn too_few_available_and_paused_rollouts_say_so() {
        let d = deployment(json!({"replicas": 4, "paused": true}), json!({}));
        let sets = Sets {
            new: Some(set("web-2", 4, 1)),
            old: vec![],
        };
        let p = status_plan(&d, &sets, None, now());
        assert_eq!(
            condition(&p, "Available"),
            ("False".into(), "MinimumReplicasUnavailable".into())
        );
        assert_eq!(
            condition(&p, "Progressing"),
            ("Unknown".into(), "DeploymentPaused".into())
        );
    }

    #[test]
    fn percentages_round_as_kubernetes_does() {
        let pct = IntOrString::String("25%".into());
        assert_eq!(resolve(Some(&pct), 5, true), 2);
        assert_eq!(resolve(Some(&pct), 5, false), 1);
        assert_eq!(resolve(Some(&IntOrString::Int(3)), 5, false), 3);
        assert_eq!(resolve(None, 5, true), 0);
    }

    #[test]
    fn template_hashes_are_stable_and_differ_by_template() {
        let a: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "a"}]}}))
        .unwrap_or_default();
        let mut b = a.clone();
        if let Some(s) = b.spec.as_mut() {
            s.containers[0].image = Some("b".into());
        }
        let h = template_hash(&a, None);
        assert_eq!(h, template_hash(&a, None));
        assert_ne!(h, template_hash(&b, None));
        assert_ne!(h, template_hash(&a, Some(1)));
        assert!(h.chars().all(|c| c.is_ascii_alphanumeric()) && h.len() <= 10);
    }
}

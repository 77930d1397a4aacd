//! The StatefulSet controller: pods with stable names `<set>-0 … <set>-(n-1)` (hostname the
//! pod's name, subdomain the governing service). With OrderedReady, pod i is made only once
//! every pod before it runs and is ready, and pods go from the highest ordinal down, one at a
//! time; with Parallel, all at once. A template change rolls out from the highest ordinal
//! down to `partition`, one pod at a time, each replaced once the previous is ready again
//! (RollingUpdate), or when the user deletes pods (OnDelete). One writer of the status.
//! Each pod's claims (one per `volumeClaimTemplates` entry, `<template>-<set>-<ordinal>`) are
//! made before it and outlive it, unless `persistentVolumeClaimRetentionPolicy` says they go
//! with the set (`whenDeleted`) or with pods removed by scaling down (`whenScaled`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use api::k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use api::k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume,
};
use client::{Client, ClientError};

use crate::daemonset::REVISION_LABEL;
use crate::deployment::template_hash;
use crate::harness::{Outcome, Queue, Reconciler};
use crate::mirror::{Mirror, key_of};
use crate::owned::{self, Expectations, controlled_by, controller_of, controller_ref};

const COMPONENT: &str = "statefulset-controller";
const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

pub struct StatefulSetController {
    client: Client,
    sets: Arc<Mirror<StatefulSet>>,
    revisions: Arc<Mirror<ControllerRevision>>,
    pods: Arc<Mirror<Pod>>,
    expect: Expectations,
    queue: Queue,
}

/// The ordinal in a pod's name, if it is one of this set's.
fn ordinal(set: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

fn revision_of(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()?
        .get(REVISION_LABEL)
        .map(String::as_str)
}

fn revision_name(set: &str, hash: &str) -> String {
    format!("{set}-{hash}")
}

impl StatefulSetController {
    pub fn new(
        client: Client,
        sets: Arc<Mirror<StatefulSet>>,
        pods: Arc<Mirror<Pod>>,
        revisions: Arc<Mirror<ControllerRevision>>,
    ) -> StatefulSetController {
        let queue = Queue::new("statefulset-controller");
        let q = queue.clone();
        sets.on_change(move |_, new| {
            if let Some(s) = new {
                q.add(&key_of(&s.metadata));
            }
        });
        let q = queue.clone();
        pods.on_change(move |old, new| {
            for p in [old, new].into_iter().flatten() {
                if let Some(r) = controller_of(&p.metadata).filter(|r| r.kind == "StatefulSet") {
                    let ns = p.metadata.namespace.as_deref().unwrap_or("");
                    q.add(&format!("{ns}/{}", r.name));
                }
            }
        });
        StatefulSetController {
            client,
            sets,
            revisions,
            pods,
            expect: Expectations::default(),
            queue,
        }
    }

    /// The queue its change handlers feed.
    pub fn queue(&self) -> Queue {
        self.queue.clone()
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ClientError> {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let Some(set) = self.sets.get(ns, name) else {
            self.expect.forget(key);
            return Ok(None);
        };
        let spec = set.spec.clone().unwrap_or_default();
        let want = spec.replicas.unwrap_or(1).max(0);
        let hash = template_hash(
            &spec.template,
            set.status.as_ref().and_then(|s| s.collision_count),
        );
        let update_revision = revision_name(name, &hash);
        let uid = set.metadata.uid.as_deref();
        let mut by_ordinal: BTreeMap<i32, Arc<Pod>> = BTreeMap::new();
        for p in self.pods.in_namespace(ns) {
            if controlled_by::<StatefulSet>(&p.metadata, uid)
                && let Some(i) = ordinal(name, p.metadata.name.as_deref().unwrap_or(""))
            {
                by_ordinal.insert(i, p);
            }
        }
        let mut in_use: std::collections::HashSet<String> = by_ordinal
            .values()
            .filter_map(|p| revision_of(p).map(str::to_string))
            .collect();
        // The current revision's template is what a rollback would need first.
        if let Some(h) = set
            .status
            .as_ref()
            .and_then(|s| s.current_revision.as_deref())
            .and_then(|r| r.strip_prefix(&format!("{name}-")))
        {
            in_use.insert(h.to_string());
        }
        crate::history::record(
            &self.client,
            &self.revisions,
            &*set,
            &spec.template,
            &hash,
            spec.revision_history_limit,
            &in_use,
        )
        .await?;
        let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let now = jiff::Timestamp::now();
        let old = set.status.clone().unwrap_or_default();
        let current_revision = old
            .current_revision
            .clone()
            .unwrap_or_else(|| update_revision.clone());

        let seen = |n: &str| {
            self.pods
                .get(ns, n)
                .map(|p| p.metadata.deletion_timestamp.is_none())
        };
        let settled = self.expect.satisfied(key, seen) && set.metadata.deletion_timestamp.is_none();
        let mut recheck = None;
        if settled {
            'act: {
                // Failed pods are replaced: delete, and the next pass makes them again.
                for (i, p) in &by_ordinal {
                    if *i < want
                        && owned::phase(p) == "Failed"
                        && p.metadata.deletion_timestamp.is_none()
                    {
                        self.delete(key, &set, p).await?;
                        if !parallel {
                            break 'act;
                        }
                    }
                }
                // Make the missing ones, in order unless Parallel.
                for i in 0..want {
                    match by_ordinal.get(&i) {
                        None => {
                            self.create(key, &set, i, &hash).await?;
                            if !parallel {
                                break 'act;
                            }
                        }
                        Some(p) if !parallel => {
                            if p.metadata.deletion_timestamp.is_some() || !owned::is_ready(p) {
                                break 'act;
                            }
                        }
                        Some(_) => {}
                    }
                }
                // Scale down from the top, one at a time unless Parallel.
                let extra: Vec<&Arc<Pod>> =
                    by_ordinal.range(want..).rev().map(|(_, p)| p).collect();
                for p in &extra {
                    if p.metadata.deletion_timestamp.is_some() {
                        if !parallel {
                            break 'act;
                        }
                        continue;
                    }
                    self.delete(key, &set, p).await?;
                    if !parallel {
                        break 'act;
                    }
                }
                if !extra.is_empty() {
                    break 'act;
                }
                // Rolling update: from the top down to the partition, one pod at a time,
                // after every pod is ready again.
                let strategy = spec.update_strategy.clone().unwrap_or_default();
                if strategy.type_.as_deref() == Some("OnDelete") {
                    break 'act;
                }
                let partition = strategy
                    .rolling_update
                    .as_ref()
                    .and_then(|r| r.partition)
                    .unwrap_or(0);
                let all_ready = by_ordinal
                    .range(..want)
                    .all(|(_, p)| owned::is_active(p) && owned::is_ready(p));
                if !all_ready {
                    break 'act;
                }
                for (i, p) in by_ordinal.range(partition.max(0)..want).rev() {
                    let _ = i;
                    if revision_of(p) != Some(&hash) {
                        self.delete(key, &set, p).await?;
                        break;
                    }
                }
            }
        }

        let mut status = StatefulSetStatus {
            observed_generation: set.metadata.generation,
            collision_count: old.collision_count,
            update_revision: Some(update_revision.clone()),
            ..Default::default()
        };
        let mut current = 0;
        let mut updated = 0;
        for p in by_ordinal
            .range(..want)
            .map(|(_, p)| p)
            .filter(|p| owned::is_active(p))
        {
            status.replicas += 1;
            if owned::is_ready(p) {
                status.ready_replicas = Some(status.ready_replicas.unwrap_or(0) + 1);
            }
            match owned::availability(p, min_ready, now) {
                Ok(()) => {
                    status.available_replicas = Some(status.available_replicas.unwrap_or(0) + 1)
                }
                Err(Some(l)) => recheck = Some(recheck.map_or(l, |r: Duration| r.min(l))),
                Err(None) => {}
            }
            if revision_of(p) == Some(&hash) {
                updated += 1;
            }
            if revision_of(p).map(|h| revision_name(name, h)).as_deref()
                == Some(current_revision.as_str())
            {
                current += 1;
            }
        }
        // Once every replica runs the new template, it is the current revision.
        if updated == want && status.replicas == want {
            status.current_revision = Some(update_revision.clone());
            status.current_replicas = Some(updated);
        } else {
            status.current_revision = Some(current_revision);
            status.current_replicas = Some(current);
        }
        status.updated_replicas = Some(updated);
        if set.status.as_ref() != Some(&status) {
            let v = serde_json::to_value(&status).unwrap_or_default();
            match self
                .client
                .put_status::<StatefulSet>(Some(ns), name, &v)
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(recheck)
    }

    async fn create(
        &self,
        key: &str,
        set: &StatefulSet,
        i: i32,
        hash: &str,
    ) -> Result<(), ClientError> {
        let ns = set.metadata.namespace.clone().unwrap_or_default();
        let name = set.metadata.name.clone().unwrap_or_default();
        let spec = set.spec.clone().unwrap_or_default();
        let pod_name = format!("{name}-{i}");
        let mut pod = owned::pod_from_template(
            &spec.template,
            &ns,
            None,
            Some(pod_name.clone()),
            controller_ref(set),
        );
        let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
        labels.insert(POD_NAME_LABEL.into(), pod_name.clone());
        labels.insert(POD_INDEX_LABEL.into(), i.to_string());
        labels.insert(REVISION_LABEL.into(), hash.into());
        if let Some(s) = pod.spec.as_mut() {
            s.hostname = Some(pod_name.clone());
            if !spec.service_name.as_deref().unwrap_or("").is_empty() {
                s.subdomain = spec.service_name.clone();
            }
        }
        // The pod's claims first, each mounted where its template's name is.
        for template in spec.volume_claim_templates.iter().flatten() {
            let claim_name = self.ensure_claim(set, template, i, &pod_name).await?;
            let volumes = pod
                .spec
                .get_or_insert_with(Default::default)
                .volumes
                .get_or_insert_with(Vec::new);
            let tname = template.metadata.name.clone().unwrap_or_default();
            volumes.retain(|v| v.name != tname);
            volumes.push(Volume {
                name: tname,
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name,
                    read_only: Some(false),
                }),
                ..Default::default()
            });
        }
        self.expect
            .expect(key, std::slice::from_ref(&pod_name), &[]);
        match self.client.create(Some(&ns), &pod).await {
            Ok(_) => {
                owned::event(
                    &self.client,
                    COMPONENT,
                    set,
                    "Normal",
                    "SuccessfulCreate",
                    &format!("create Pod {pod_name} in StatefulSet {name} successful"),
                );
                Ok(())
            }
            // Still there from before (being deleted): wait for it.
            Err(e) if e.code() == Some(409) => {
                self.expect.forget(key);
                Ok(())
            }
            Err(e) => {
                self.expect.forget(key);
                owned::event(
                    &self.client,
                    COMPONENT,
                    set,
                    "Warning",
                    "FailedCreate",
                    &format!("create Pod {pod_name} in StatefulSet {name} failed error: {e}"),
                );
                Err(e)
            }
        }
    }

    /// Make sure the claim of `template` for ordinal `i` exists (Kubernetes' name
    /// `<template>-<set>-<i>`, the template's labels and the set's selector), owned by the set
    /// when its claims go with it (`whenDeleted: Delete`); returns its name.
    async fn ensure_claim(
        &self,
        set: &StatefulSet,
        template: &PersistentVolumeClaim,
        i: i32,
        pod_name: &str,
    ) -> Result<String, ClientError> {
        let ns = set.metadata.namespace.clone().unwrap_or_default();
        let set_name = set.metadata.name.clone().unwrap_or_default();
        let tname = template.metadata.name.clone().unwrap_or_default();
        let claim_name = format!("{tname}-{set_name}-{i}");
        let spec = set.spec.as_ref();
        let with_set = spec
            .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref())
            .and_then(|p| p.when_deleted.as_deref())
            == Some("Delete");
        let failed = |e: &ClientError| {
            owned::event(
                &self.client,
                COMPONENT,
                set,
                "Warning",
                "FailedCreate",
                &format!(
                    "create Claim {claim_name} for Pod {pod_name} in StatefulSet {set_name} failed error: {e}"
                ),
            );
        };
        match self
            .client
            .get::<PersistentVolumeClaim>(Some(&ns), &claim_name)
            .await
        {
            Ok(Some(c)) => {
                if c.metadata.deletion_timestamp.is_some() {
                    let e = ClientError::Api {
                        code: 409,
                        reason: "Conflict".into(),
                        message: format!("pvc {claim_name} is being deleted"),
                    };
                    failed(&e);
                    return Err(e);
                }
                // The member is being made again: a claim handed to its former pod when the
                // set shrank is the set's member's again, not the GC's to take.
                let refs = c.metadata.owner_references.clone().unwrap_or_default();
                let mut keep: Vec<_> = refs.iter().filter(|o| o.kind != "Pod").cloned().collect();
                let owned_by_set = keep
                    .iter()
                    .any(|o| Some(&o.uid) == set.metadata.uid.as_ref());
                if with_set && !owned_by_set && keep.iter().all(|o| o.controller != Some(true)) {
                    keep.push(controller_ref(set));
                }
                if keep != refs {
                    let patch = serde_json::json!({"metadata": {
                        "ownerReferences": keep,
                        "resourceVersion": c.metadata.resource_version}});
                    self.client
                        .merge_patch::<PersistentVolumeClaim>(Some(&ns), &claim_name, &patch)
                        .await?;
                }
                return Ok(claim_name);
            }
            Ok(None) => {}
            Err(e) => return Err(e),
        }
        let mut claim = template.clone();
        claim.metadata.name = Some(claim_name.clone());
        claim.metadata.namespace = Some(ns.clone());
        claim.metadata.resource_version = None;
        claim.metadata.uid = None;
        claim.status = None;
        let labels = claim.metadata.labels.get_or_insert_with(BTreeMap::new);
        if let Some(selector) = spec.and_then(|s| s.selector.match_labels.as_ref()) {
            labels.extend(selector.clone());
        }
        if with_set {
            claim.metadata.owner_references = Some(vec![controller_ref(set)]);
        }
        match self.client.create(Some(&ns), &claim).await {
            Ok(_) => owned::event(
                &self.client,
                COMPONENT,
                set,
                "Normal",
                "SuccessfulCreate",
                &format!(
                    "create Claim {claim_name} Pod {pod_name} in StatefulSet {set_name} success"
                ),
            ),
            Err(e) if e.is_already_exists() => {}
            Err(e) => {
                failed(&e);
                return Err(e);
            }
        }
        Ok(claim_name)
    }

    /// Before a pod above the set's size goes (`whenScaled: Delete`): its claims become the
    /// pod's, so they go with it.
    async fn hand_claims_to(&self, set: &StatefulSet, p: &Pod) -> Result<(), ClientError> {
        let Some(spec) = set.spec.as_ref() else {
            return Ok(());
        };
        let scaled_delete = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .and_then(|p| p.when_scaled.as_deref())
            == Some("Delete");
        let set_name = set.metadata.name.as_deref().unwrap_or("");
        let pod_name = p.metadata.name.as_deref().unwrap_or("");
        let Some(i) = ordinal(set_name, pod_name) else {
            return Ok(());
        };
        if !scaled_delete || i < spec.replicas.unwrap_or(1) {
            return Ok(());
        }
        let ns = p.metadata.namespace.as_deref();
        for template in spec.volume_claim_templates.iter().flatten() {
            let claim = format!(
                "{}-{set_name}-{i}",
                template.metadata.name.as_deref().unwrap_or("")
            );
            let patch = serde_json::json!({"metadata": {"ownerReferences": [controller_ref(p)]}});
            match self
                .client
                .merge_patch::<PersistentVolumeClaim>(ns, &claim, &patch)
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn delete(&self, key: &str, set: &StatefulSet, p: &Pod) -> Result<(), ClientError> {
        self.hand_claims_to(set, p).await?;
        let ns = p.metadata.namespace.as_deref();
        let n = p.metadata.name.clone().unwrap_or_default();
        self.expect.expect(key, &[], std::slice::from_ref(&n));
        match self.client.delete::<Pod>(ns, &n).await {
            Ok(()) => {
                owned::event(
                    &self.client,
                    COMPONENT,
                    set,
                    "Normal",
                    "SuccessfulDelete",
                    &format!(
                        "delete Pod {n} in StatefulSet {} successful",
                        set.metadata.name.as_deref().unwrap_or("")
                    ),
                );
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => {
                self.expect.forget(key);
                Err(e)
            }
        }
    }
}

#[async_trait::async_trait]
impl Reconciler for StatefulSetController {
    fn name(&self) -> &'static str {
        "statefulset-controller"
    }

    async fn ready(&self) {
        self.sets.synced().await;
        self.pods.synced().await;
    }

    async fn reconcile(&self, key: &str) -> Outcome {
        StatefulSetController::reconcile(self, key).await
    }
}

//! The volume controller: binds PersistentVolumeClaims to PersistentVolumes, makes volumes for
//! claims of the built-in `berth.dev/local-path` class (a directory on the claim's node, which
//! that node's agent creates on first use and removes when the volume is released under
//! Delete), keeps each side's phase, grows bound volumes, creates the claims of pods' generic
//! ephemeral volumes, and lifts the `pvc-protection` and `pv-protection` finalizers once a
//! claim is no longer used by a pod on a node, or a volume is no longer bound.
//!
//! Keys: `claim/<ns>/<name>`, `volume/<name>` and `pod/<ns>/<name>` (for ephemeral volumes).
//! The decisions are `plan`'s; this module writes them.

pub mod binding;
pub mod plan;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::k8s_openapi::api::core::v1::{
    HostPathVolumeSource, Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec, Pod,
    VolumeNodeAffinity,
};
use api::k8s_openapi::api::storage::v1::StorageClass;
use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use api::k8s_openapi::{Metadata, Resource};
use client::{Client, ClientError};
use serde_json::json;

use self::plan::{ClaimStep, Note, VolumeStep, World};
use crate::harness::{Outcome, Queue, Reconciler};
use crate::mirror::{Mirror, key_of};
use crate::owned;

const COMPONENT: &str = "persistentvolume-controller";
/// How often a claim that waits is looked at again (Kubernetes' claim binder syncs every 15 s).
const RESYNC: Duration = Duration::from_secs(15);

pub struct VolumeController {
    client: Client,
    /// Creates pods' ephemeral volume claims (Kubernetes' ephemeral volume controller's
    /// account; the binder's may not create claims).
    ephemeral_client: Client,
    claims: Arc<Mirror<PersistentVolumeClaim>>,
    volumes: Arc<Mirror<PersistentVolume>>,
    classes: Arc<Mirror<StorageClass>>,
    nodes: Arc<Mirror<Node>>,
    pods: Arc<Mirror<Pod>>,
    queue: Queue,
    /// The last event recorded per key, so a claim that keeps waiting says so once.
    noted: Mutex<HashMap<String, Note>>,
}

fn claim_key(ns: &str, name: &str) -> String {
    format!("claim/{ns}/{name}")
}

impl VolumeController {
    pub fn new(
        client: Client,
        ephemeral_client: Client,
        claims: Arc<Mirror<PersistentVolumeClaim>>,
        volumes: Arc<Mirror<PersistentVolume>>,
        classes: Arc<Mirror<StorageClass>>,
        nodes: Arc<Mirror<Node>>,
        pods: Arc<Mirror<Pod>>,
    ) -> VolumeController {
        let queue = Queue::new(COMPONENT);
        // Claims still looking for a volume hear of new volumes and classes.
        let waiting = {
            let claims = claims.clone();
            let q = queue.clone();
            move || {
                for c in claims.all() {
                    if c.metadata
                        .annotations
                        .as_ref()
                        .is_none_or(|a| !a.contains_key(plan::BIND_COMPLETED))
                    {
                        q.add(&claim_key(
                            c.metadata.namespace.as_deref().unwrap_or(""),
                            c.metadata.name.as_deref().unwrap_or(""),
                        ));
                    }
                }
            }
        };
        let q = queue.clone();
        claims.on_change(move |old, new| {
            let Some(c) = new.or(old) else { return };
            let ns = c.metadata.namespace.as_deref().unwrap_or("");
            q.add(&claim_key(ns, c.metadata.name.as_deref().unwrap_or("")));
            for c in [old, new].into_iter().flatten() {
                if let Some(v) = c.spec.as_ref().and_then(|s| s.volume_name.as_deref())
                    && !v.is_empty()
                {
                    q.add(&format!("volume/{v}"));
                }
            }
        });
        let q = queue.clone();
        let w = waiting.clone();
        volumes.on_change(move |old, new| {
            let Some(v) = new.or(old) else { return };
            q.add(&format!(
                "volume/{}",
                v.metadata.name.as_deref().unwrap_or("")
            ));
            if let Some(r) = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
                q.add(&claim_key(
                    r.namespace.as_deref().unwrap_or(""),
                    r.name.as_deref().unwrap_or(""),
                ));
            }
            w();
        });
        classes.on_change(move |_, _| waiting());
        let q = queue.clone();
        pods.on_change(move |old, new| {
            for p in [old, new].into_iter().flatten() {
                let ns = p.metadata.namespace.as_deref().unwrap_or("");
                for c in plan::claims_of(p) {
                    q.add(&claim_key(ns, &c));
                }
            }
            if let Some(p) = new
                && p.spec
                    .as_ref()
                    .and_then(|s| s.volumes.as_ref())
                    .is_some_and(|v| v.iter().any(|v| v.ephemeral.is_some()))
            {
                q.add(&format!("pod/{}", key_of(&p.metadata)));
            }
        });
        VolumeController {
            client,
            ephemeral_client,
            claims,
            volumes,
            classes,
            nodes,
            pods,
            queue,
            noted: Mutex::new(HashMap::new()),
        }
    }

    pub fn queue(&self) -> Queue {
        self.queue.clone()
    }

    /// Record `note` about `obj` unless it was the last thing said about `key`.
    fn note<K: Resource + Metadata<Ty = ObjectMeta>>(&self, key: &str, obj: &K, note: &Note) {
        // Per object, not per name: a claim made again under the same name starts afresh.
        let key = &format!("{key}@{}", obj.metadata().uid.as_deref().unwrap_or(""));
        let mut noted = self.noted.lock().unwrap_or_else(|p| p.into_inner());
        if noted.get(key) == Some(note) {
            return;
        }
        noted.insert(key.to_string(), note.clone());
        let kind = if note.warning { "Warning" } else { "Normal" };
        owned::event(
            &self.client,
            COMPONENT,
            obj,
            kind,
            note.reason,
            &note.message,
        );
    }

    fn forget_notes(&self, key: &str) {
        let prefix = format!("{key}@");
        self.noted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| !k.starts_with(&prefix));
    }

    async fn claim(&self, key: &str, ns: &str, name: &str) -> Outcome {
        let Some(c) = self.claims.get(ns, name) else {
            self.forget_notes(key);
            return Ok(None);
        };
        let volumes = self.volumes.all();
        let classes = self.classes.all();
        let nodes = self.nodes.all();
        let world = World {
            volumes: &volumes,
            classes: &classes,
            nodes: &nodes,
        };
        let in_use = self
            .pods
            .in_namespace(ns)
            .iter()
            .any(|p| plan::pod_uses(p, name));
        match plan::claim_step(&c, &world, in_use) {
            ClaimStep::Settled => Ok(None),
            ClaimStep::Bind { volume } => match self.volumes.get("", &volume) {
                Some(v) => self.bind(&c, (*v).clone()).await,
                None => Ok(Some(Duration::from_secs(1))),
            },
            ClaimStep::Provision { node, dir } => self.provision(key, &c, &node, &dir).await,
            ClaimStep::AssignClass(class) => {
                let patch = json!({"metadata": {"resourceVersion": c.metadata.resource_version},
                                   "spec": {"storageClassName": class}});
                ignore_gone(
                    self.client
                        .merge_patch::<PersistentVolumeClaim>(Some(ns), name, &patch)
                        .await,
                )?;
                Ok(None)
            }
            ClaimStep::Wait(note) => {
                if let Some(n) = &note {
                    self.note(key, &*c, n);
                    // A claim waiting for its first consumer is marked with its provisioner
                    // now, so that provisioning, once the node is known, is one write less.
                    if n.reason == "WaitForFirstConsumer" {
                        self.mark_provisioner(&c).await?;
                    }
                }
                self.claim_phase(&c, "Pending").await?;
                Ok(Some(RESYNC))
            }
            ClaimStep::Lost(note) => {
                // A volume made a moment ago may not have reached the mirror yet.
                let named = c.spec.as_ref().and_then(|s| s.volume_name.as_deref());
                if let Some(v) = named.filter(|v| !v.is_empty())
                    && self
                        .client
                        .get::<PersistentVolume>(None, v)
                        .await?
                        .is_some()
                    && self.volumes.get("", v).is_none()
                {
                    return Ok(Some(Duration::from_millis(100)));
                }
                self.note(key, &*c, &note);
                self.claim_phase(&c, "Lost").await?;
                Ok(None)
            }
            ClaimStep::Expand { volume, size } => {
                let patch = json!({"spec": {"capacity": {"storage": size}}});
                ignore_gone(
                    self.client
                        .merge_patch::<PersistentVolume>(None, &volume, &patch)
                        .await,
                )?;
                let status = json!({"status": {"capacity": {"storage": size}}});
                ignore_gone(
                    self.client
                        .patch_status::<PersistentVolumeClaim>(Some(ns), name, &status)
                        .await,
                )?;
                self.note(
                    key,
                    &*c,
                    &Note {
                        warning: false,
                        reason: "VolumeResizeSuccessful",
                        message: format!(
                            "resize volume \"{volume}\" by resizer \"{}\" finished successfully",
                            plan::PROVISIONER
                        ),
                    },
                );
                Ok(None)
            }
            ClaimStep::Unprotect => {
                remove_finalizer::<PersistentVolumeClaim>(
                    &self.client,
                    Some(ns),
                    name,
                    &c.metadata,
                    plan::PVC_PROTECTION,
                )
                .await?;
                Ok(None)
            }
        }
    }

    /// Set a claim's phase; leaving Bound clears what binding filled in.
    async fn claim_phase(&self, c: &PersistentVolumeClaim, phase: &str) -> Result<(), ClientError> {
        if c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(phase) {
            return Ok(());
        }
        let mut status = c.status.clone().unwrap_or_default();
        status.phase = Some(phase.into());
        if phase == "Pending" {
            status.capacity = None;
            status.access_modes = None;
        }
        let v = serde_json::to_value(&status).unwrap_or_default();
        ignore_gone(
            self.client
                .put_status::<PersistentVolumeClaim>(
                    c.metadata.namespace.as_deref(),
                    c.metadata.name.as_deref().unwrap_or(""),
                    &v,
                )
                .await,
        )
    }

    /// Bind claim and volume, each step written only if not done yet, in Kubernetes' order:
    /// the volume's claimRef, its phase, the claim's volumeName, its phase.
    async fn bind(&self, c: &PersistentVolumeClaim, mut v: PersistentVolume) -> Outcome {
        let ns = c.metadata.namespace.as_deref().unwrap_or("");
        let name = c.metadata.name.as_deref().unwrap_or("");
        let volume = v.metadata.name.clone().unwrap_or_default();
        let volume = volume.as_str();
        let spec = v.spec.get_or_insert_with(Default::default);
        let current = spec.claim_ref.as_ref();
        // Never take a volume another claim holds (the mirror may have moved on since the
        // plan was made).
        if let Some(r) = current
            && r.uid.as_deref().is_some_and(|u| !u.is_empty())
            && r.uid.as_deref() != c.metadata.uid.as_deref()
        {
            return Ok(Some(Duration::from_secs(1)));
        }
        let needs_ref = current.is_none_or(|r| r.uid.as_deref() != c.metadata.uid.as_deref());
        if needs_ref {
            if current.is_none() {
                v.metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(plan::BOUND_BY_CONTROLLER.into(), "yes".into());
            }
            let spec = v.spec.get_or_insert_with(Default::default);
            spec.claim_ref = Some(claim_reference(c));
            v = match self.client.replace(None, volume, &v).await {
                Ok(v) => v,
                Err(e) if e.is_not_found() => return Ok(None),
                Err(e) => return Err(e),
            };
        }
        if v.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
            ignore_gone(
                self.client
                    .put_status::<PersistentVolume>(None, volume, &json!({"phase": "Bound"}))
                    .await,
            )?;
        }
        let mut claim = c.clone();
        let annotations = claim.metadata.annotations.get_or_insert_with(BTreeMap::new);
        let spec = claim.spec.get_or_insert_with(Default::default);
        let named = spec.volume_name.as_deref() == Some(volume);
        if !named || !annotations.contains_key(plan::BIND_COMPLETED) {
            if !named {
                annotations.insert(plan::BOUND_BY_CONTROLLER.into(), "yes".into());
                spec.volume_name = Some(volume.into());
            }
            annotations.insert(plan::BIND_COMPLETED.into(), "yes".into());
            claim = match self.client.replace(Some(ns), name, &claim).await {
                Ok(c) => c,
                Err(e) if e.is_not_found() => return Ok(None),
                Err(e) => return Err(e),
            };
        }
        if claim.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
            let pv_spec = v.spec.as_ref();
            let status = json!({
                "phase": "Bound",
                "accessModes": pv_spec.and_then(|s| s.access_modes.clone()),
                "capacity": pv_spec.and_then(|s| s.capacity.clone()),
            });
            ignore_gone(
                self.client
                    .put_status::<PersistentVolumeClaim>(Some(ns), name, &status)
                    .await,
            )?;
        }
        Ok(None)
    }

    /// Make a volume for the claim on `node`: a directory under `dir`, which the node's agent
    /// creates when a pod first mounts it.
    async fn provision(
        &self,
        key: &str,
        c: &PersistentVolumeClaim,
        node: &str,
        dir: &str,
    ) -> Outcome {
        let ns = c.metadata.namespace.as_deref().unwrap_or("");
        let name = c.metadata.name.as_deref().unwrap_or("");
        let uid = c.metadata.uid.as_deref().unwrap_or("");
        let class_name = plan::claim_class(c).to_string();
        let Some(class) = self.classes.get("", &class_name) else {
            return Ok(Some(RESYNC));
        };
        if self.mark_provisioner(c).await? {
            self.note(
                key,
                c,
                &Note {
                    warning: false,
                    reason: "Provisioning",
                    message: format!(
                        "External provisioner is provisioning volume for claim \"{ns}/{name}\""
                    ),
                },
            );
        }
        let host = self
            .nodes
            .get("", node)
            .and_then(|n| {
                n.metadata
                    .labels
                    .as_ref()?
                    .get("kubernetes.io/hostname")
                    .cloned()
            })
            .unwrap_or_else(|| node.to_string());
        let pv_name = format!("pvc-{uid}");
        let spec = c.spec.clone().unwrap_or_default();
        let request = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .cloned();
        let volume = PersistentVolume {
            metadata: ObjectMeta {
                name: Some(pv_name.clone()),
                labels: Some(BTreeMap::from([(plan::VOLUME_NODE.into(), host.clone())])),
                annotations: Some(BTreeMap::from([(
                    plan::PROVISIONED_BY.into(),
                    plan::PROVISIONER.into(),
                )])),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                capacity: request.map(|q| BTreeMap::from([("storage".to_string(), q)])),
                access_modes: spec.access_modes.clone(),
                persistent_volume_reclaim_policy: Some(
                    class
                        .reclaim_policy
                        .clone()
                        .unwrap_or_else(|| "Delete".into()),
                ),
                storage_class_name: Some(class_name.clone()),
                mount_options: class.mount_options.clone(),
                volume_mode: Some("Filesystem".into()),
                host_path: Some(HostPathVolumeSource {
                    path: format!("{}/{pv_name}_{ns}_{name}", dir.trim_end_matches('/')),
                    type_: Some("DirectoryOrCreate".into()),
                }),
                node_affinity: Some(VolumeNodeAffinity {
                    required: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: Some(vec![NodeSelectorRequirement {
                                key: "kubernetes.io/hostname".into(),
                                operator: "In".into(),
                                values: Some(vec![host]),
                            }]),
                            match_fields: None,
                        }],
                    }),
                }),
                claim_ref: Some(claim_reference(c)),
                ..Default::default()
            }),
            status: None,
        };
        match self.client.create(None, &volume).await {
            Ok(made) => {
                self.note(
                    key,
                    c,
                    &Note {
                        warning: false,
                        reason: "ProvisioningSucceeded",
                        message: format!("Successfully provisioned volume {pv_name}"),
                    },
                );
                // Bind it now rather than when the volume comes back through the watch (on
                // the claim as it is now: marking it above changed it).
                match self
                    .client
                    .get::<PersistentVolumeClaim>(Some(ns), name)
                    .await?
                {
                    Some(fresh) => self.bind(&fresh, made).await,
                    None => Ok(None),
                }
            }
            Err(e) if e.is_already_exists() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Mark a claim with the provisioner of its class (both of Kubernetes' annotations), if
    /// it is not yet; returns whether it wrote.
    async fn mark_provisioner(&self, c: &PersistentVolumeClaim) -> Result<bool, ClientError> {
        let Some(class) = self.classes.get("", plan::claim_class(c)) else {
            return Ok(false);
        };
        let marked = c.metadata.annotations.as_ref().is_some_and(|a| {
            plan::STORAGE_PROVISIONER
                .iter()
                .all(|k| a.get(*k) == Some(&class.provisioner))
        });
        if marked {
            return Ok(false);
        }
        let mut annotations = serde_json::Map::new();
        for k in plan::STORAGE_PROVISIONER {
            annotations.insert(k.into(), json!(class.provisioner));
        }
        let patch = json!({"metadata": {"annotations": annotations}});
        ignore_gone(
            self.client
                .merge_patch::<PersistentVolumeClaim>(
                    c.metadata.namespace.as_deref(),
                    c.metadata.name.as_deref().unwrap_or(""),
                    &patch,
                )
                .await,
        )?;
        Ok(true)
    }

    async fn volume(&self, key: &str, name: &str) -> Outcome {
        let Some(v) = self.volumes.get("", name) else {
            self.forget_notes(key);
            return Ok(None);
        };
        let claim = v
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .and_then(|r| self.claims.get(r.namespace.as_deref()?, r.name.as_deref()?));
        match plan::volume_step(&v, claim.as_deref()) {
            VolumeStep::Settled => Ok(None),
            VolumeStep::Phase(phase, note) => {
                if let Some(n) = &note {
                    self.note(key, &*v, n);
                }
                let status =
                    json!({"phase": phase, "message": note.as_ref().map(|n| n.message.clone())});
                ignore_gone(
                    self.client
                        .put_status::<PersistentVolume>(None, name, &status)
                        .await,
                )?;
                Ok(None)
            }
            VolumeStep::Unbind => {
                let mut v = (*v).clone();
                if let Some(a) = v.metadata.annotations.as_mut() {
                    a.remove(plan::BOUND_BY_CONTROLLER);
                }
                if let Some(s) = v.spec.as_mut() {
                    s.claim_ref = None;
                }
                ignore_gone(self.client.replace(None, name, &v).await.map(drop))?;
                Ok(None)
            }
            VolumeStep::Unprotect => {
                remove_finalizer::<PersistentVolume>(
                    &self.client,
                    None,
                    name,
                    &v.metadata,
                    plan::PV_PROTECTION,
                )
                .await?;
                Ok(None)
            }
        }
    }

    /// Create the claims of a pod's generic ephemeral volumes, owned by the pod.
    async fn ephemeral(&self, ns: &str, name: &str) -> Outcome {
        let Some(pod) = self.pods.get(ns, name) else {
            return Ok(None);
        };
        if pod.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let uid = pod.metadata.uid.clone();
        for vol in pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
        {
            let Some(template) = vol
                .ephemeral
                .as_ref()
                .and_then(|e| e.volume_claim_template.as_ref())
            else {
                continue;
            };
            let claim_name = format!("{name}-{}", vol.name);
            if let Some(existing) = self.claims.get(ns, &claim_name) {
                if !owned::controlled_by::<Pod>(&existing.metadata, uid.as_deref()) {
                    self.note(
                        &format!("pod/{ns}/{name}"),
                        &*pod,
                        &Note {
                            warning: true,
                            reason: "FailedBinding",
                            message: format!(
                                "ephemeral volume {}: PVC {ns}/{claim_name} was not created for pod {ns}/{name} (pod is not owner)",
                                vol.name
                            ),
                        },
                    );
                }
                continue;
            }
            let meta = template.metadata.clone().unwrap_or_default();
            let claim = PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(claim_name),
                    namespace: Some(ns.into()),
                    labels: meta.labels,
                    annotations: meta.annotations,
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Pod".into(),
                        name: name.into(),
                        uid: uid.clone().unwrap_or_default(),
                        controller: Some(true),
                        block_owner_deletion: Some(true),
                    }]),
                    ..Default::default()
                },
                spec: Some(template.spec.clone()),
                status: None,
            };
            match self.ephemeral_client.create(Some(ns), &claim).await {
                Ok(_) => {}
                Err(e) if e.is_already_exists() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

pub(crate) fn claim_reference(c: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: c.metadata.namespace.clone(),
        name: c.metadata.name.clone(),
        uid: c.metadata.uid.clone(),
        resource_version: c.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// A write to an object that is gone meanwhile has nothing left to do.
fn ignore_gone<T>(r: Result<T, ClientError>) -> Result<(), ClientError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Drop `finalizer` from an object, on the version this controller saw (a conflict retries).
async fn remove_finalizer<K: Resource + serde::de::DeserializeOwned>(
    client: &Client,
    ns: Option<&str>,
    name: &str,
    meta: &ObjectMeta,
    finalizer: &str,
) -> Result<(), ClientError> {
    let rest: Vec<&String> = meta
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != finalizer)
        .collect();
    let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": meta.resource_version}});
    ignore_gone(client.merge_patch::<K>(ns, name, &patch).await)
}

#[async_trait::async_trait]
impl Reconciler for VolumeController {
    fn name(&self) -> &'static str {
        COMPONENT
    }

    async fn ready(&self) {
        self.claims.synced().await;
        self.volumes.synced().await;
        self.classes.synced().await;
        self.nodes.synced().await;
        self.pods.synced().await;
    }

    async fn reconcile(&self, key: &str) -> Outcome {
        let mut parts = key.splitn(3, '/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("claim"), Some(ns), Some(name)) => self.claim(key, ns, name).await,
            (Some("volume"), Some(name), None) => self.volume(key, name).await,
            (Some("pod"), Some(ns), Some(name)) => self.ephemeral(ns, name).await,
            _ => Ok(None),
        }
    }
}

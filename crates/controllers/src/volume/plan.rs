//! What the volume controller does about one claim or one volume, decided from plain objects
//! as Kubernetes' PersistentVolume controller decides it: which volume a claim binds to, when
//! the built-in provisioner makes one, when a claim is lost, when a volume is released, and
//! when the protection finalizers may go. No IO; `super` applies the steps.

use std::collections::BTreeMap;
use std::sync::Arc;

use api::k8s_openapi::api::core::v1::{
    Node, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod,
};
use api::k8s_openapi::api::storage::v1::StorageClass;
use api::quantity::Quantity;
use api::selector::LabelSelectorExpr;

pub use api::kinds::storage::{
    LOCAL_PATH_PROVISIONER as PROVISIONER, NODE_DIR_ANNOTATION as NODE_DIR, PROVISIONED_BY,
    VOLUME_NODE_LABEL as VOLUME_NODE,
};
/// On a claim: the node the scheduler placed its first pod on (WaitForFirstConsumer).
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
pub const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
pub const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// On a claim: who provisions it (both names are set, as Kubernetes does).
pub const STORAGE_PROVISIONER: [&str; 2] = [
    "volume.kubernetes.io/storage-provisioner",
    "volume.beta.kubernetes.io/storage-provisioner",
];
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";

/// An event to record, with Kubernetes' reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Note {
    fn normal(reason: &'static str, message: impl Into<String>) -> Note {
        Note {
            warning: false,
            reason,
            message: message.into(),
        }
    }

    fn warning(reason: &'static str, message: impl Into<String>) -> Note {
        Note {
            warning: true,
            reason,
            message: message.into(),
        }
    }
}

/// The next step for a claim.
#[derive(Debug, PartialEq, Eq)]
pub enum ClaimStep {
    /// Nothing to do.
    Settled,
    /// Bind it to `volume` (or finish a binding begun before).
    Bind { volume: String },
    /// Make a volume for it on `node` with the built-in provisioner; `dir` is where the node
    /// keeps them.
    Provision { node: String, dir: String },
    /// Give it the default class (a claim made before there was one).
    AssignClass(String),
    /// It waits, Pending; say why if there is something to say.
    Wait(Option<Note>),
    /// Its volume is gone or taken: phase Lost.
    Lost(Note),
    /// Grow its volume to what it asks for now.
    Expand { volume: String, size: String },
    /// It is being deleted and no pod on a node uses it: its protection finalizer may go.
    Unprotect,
}

/// The next step for a volume.
#[derive(Debug, PartialEq, Eq)]
pub enum VolumeStep {
    Settled,
    /// Set its phase (and say why, for Failed).
    Phase(&'static str, Option<Note>),
    /// Its claim is bound to another volume: forget the claim.
    Unbind,
    /// It is being deleted and not bound: its protection finalizer may go.
    Unprotect,
}

/// What the controller sees of the cluster.
pub struct World<'a> {
    pub volumes: &'a [Arc<PersistentVolume>],
    pub classes: &'a [Arc<StorageClass>],
    pub nodes: &'a [Arc<Node>],
}

fn annotation<'a>(
    meta: &'a api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

fn has_finalizer(
    meta: &api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    f: &str,
) -> bool {
    meta.finalizers.iter().flatten().any(|x| x == f)
}

/// An object's class as Kubernetes reads it: the beta annotation first, then the field; ""
/// for none.
fn class_of<'a>(
    meta: &'a api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    field: Option<&'a String>,
) -> &'a str {
    annotation(meta, api::kinds::storage::BETA_CLASS_ANNOTATION)
        .or(field.map(String::as_str))
        .unwrap_or("")
}

pub fn claim_class(c: &PersistentVolumeClaim) -> &str {
    class_of(
        &c.metadata,
        c.spec.as_ref().and_then(|s| s.storage_class_name.as_ref()),
    )
}

fn volume_class(v: &PersistentVolume) -> &str {
    class_of(
        &v.metadata,
        v.spec.as_ref().and_then(|s| s.storage_class_name.as_ref()),
    )
}

pub fn claim_request(spec: Option<&PersistentVolumeClaimSpec>) -> Option<Quantity> {
    spec?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .and_then(|q| Quantity::parse(&q.0).ok())
}

fn volume_size(v: &PersistentVolume) -> Option<Quantity> {
    v.spec
        .as_ref()?
        .capacity
        .as_ref()?
        .get("storage")
        .and_then(|q| Quantity::parse(&q.0).ok())
}

fn phase_of_volume(v: &PersistentVolume) -> &str {
    v.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn phase_of_claim(c: &PersistentVolumeClaim) -> &str {
    c.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Whether the volume's claimRef names this claim (by uid once the binding began).
fn names_claim(v: &PersistentVolume, c: &PersistentVolumeClaim) -> bool {
    let Some(r) = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    r.name == c.metadata.name
        && r.namespace == c.metadata.namespace
        && r.uid
            .as_deref()
            .is_none_or(|u| u.is_empty() || Some(u) == c.metadata.uid.as_deref())
}

/// Why `v` cannot serve claim `c`, if it cannot (Kubernetes' checkVolumeSatisfyClaim).
fn mismatch(v: &PersistentVolume, c: &PersistentVolumeClaim) -> Option<&'static str> {
    let spec = c.spec.as_ref();
    if v.metadata.deletion_timestamp.is_some() {
        return Some("the volume is marked for deletion");
    }
    let want = claim_request(spec).map_or(0, |q| q.milli());
    if volume_size(v).map_or(0, |q| q.milli()) < want {
        return Some("requested PV is too small");
    }
    if volume_class(v) != claim_class(c) {
        return Some("storageClassName does not match");
    }
    let mode = |m: Option<&String>| m.map_or("Filesystem", String::as_str).to_string();
    if mode(v.spec.as_ref().and_then(|s| s.volume_mode.as_ref()))
        != mode(spec.and_then(|s| s.volume_mode.as_ref()))
    {
        return Some("incompatible volumeMode");
    }
    let has: Vec<&String> = v
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.as_ref())
        .into_iter()
        .flatten()
        .collect();
    if spec
        .and_then(|s| s.access_modes.as_ref())
        .into_iter()
        .flatten()
        .any(|m| !has.contains(&m))
    {
        return Some("incompatible accessMode");
    }
    None
}

/// The smallest available volume that serves the claim, or one made for it (Kubernetes'
/// findBestMatchForClaim). With `delayed` (WaitForFirstConsumer), only volumes made for this
/// claim are taken: the others wait for the scheduler to pick a node.
fn best_match<'a>(
    c: &PersistentVolumeClaim,
    volumes: &'a [Arc<PersistentVolume>],
    delayed: bool,
) -> Option<&'a PersistentVolume> {
    let selector = c
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .map(|s| LabelSelectorExpr::from_object(Some(s)));
    let empty = BTreeMap::new();
    let mut best: Option<&PersistentVolume> = None;
    for v in volumes {
        let claimed = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some();
        if claimed && !names_claim(v, c) {
            continue;
        }
        if mismatch(v, c).is_some() {
            continue;
        }
        if claimed {
            return Some(v);
        }
        if delayed || phase_of_volume(v) != "Available" {
            continue;
        }
        match &selector {
            Some(Ok(sel)) if !sel.matches(v.metadata.labels.as_ref().unwrap_or(&empty)) => {
                continue;
            }
            Some(Err(_)) => continue,
            _ => {}
        }
        let smaller = best.is_none_or(|b| {
            volume_size(v).map_or(0, |q| q.milli()) < volume_size(b).map_or(0, |q| q.milli())
        });
        if smaller {
            best = Some(v);
        }
    }
    best
}

/// The available volumes, made by hand, that could serve the claim (before any node is
/// looked at).
pub fn candidates(
    c: &PersistentVolumeClaim,
    volumes: &[Arc<PersistentVolume>],
) -> Vec<Arc<PersistentVolume>> {
    let selector = c
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .map(|s| LabelSelectorExpr::from_object(Some(s)));
    let empty = BTreeMap::new();
    volumes
        .iter()
        .filter(|v| v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_none())
        .filter(|v| phase_of_volume(v) == "Available" && mismatch(v, c).is_none())
        .filter(|v| match &selector {
            Some(Ok(sel)) => sel.matches(v.metadata.labels.as_ref().unwrap_or(&empty)),
            Some(Err(_)) => false,
            None => true,
        })
        .cloned()
        .collect()
}

/// A volume's capacity in milli-units (0 when unreadable).
pub fn size_of(v: &PersistentVolume) -> i64 {
    volume_size(v).map_or(0, |q| q.milli())
}

/// The default class, if any: the newest of those marked so.
pub fn default_class(classes: &[Arc<StorageClass>]) -> Option<&StorageClass> {
    classes
        .iter()
        .filter(|c| api::kinds::storage::is_default_class(c))
        .max_by(|a, b| {
            (
                a.metadata.creation_timestamp.as_ref().map(|t| t.0),
                std::cmp::Reverse(&a.metadata.name),
            )
                .cmp(&(
                    b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    std::cmp::Reverse(&b.metadata.name),
                ))
        })
        .map(|c| &**c)
}

fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Where `node` keeps provisioned volumes, as its agent published it.
fn node_dir<'a>(nodes: &'a [Arc<Node>], node: &str) -> Result<&'a str, String> {
    let n = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(node))
        .ok_or_else(|| format!("node {node:?} not found"))?;
    annotation(&n.metadata, NODE_DIR).ok_or_else(|| {
        format!(
            "node {node:?} has no berth agent that keeps local volumes (no {NODE_DIR} annotation)"
        )
    })
}

/// The next step for a claim. `in_use`: a pod on a node uses it.
pub fn claim_step(c: &PersistentVolumeClaim, w: &World, in_use: bool) -> ClaimStep {
    if c.metadata.deletion_timestamp.is_some() {
        return if has_finalizer(&c.metadata, PVC_PROTECTION) && !in_use {
            ClaimStep::Unprotect
        } else {
            ClaimStep::Settled
        };
    }
    let name = c
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .unwrap_or("");
    let volume = |n: &str| {
        w.volumes
            .iter()
            .find(|v| v.metadata.name.as_deref() == Some(n))
    };
    if annotation(&c.metadata, BIND_COMPLETED).is_some() {
        if name.is_empty() {
            return ClaimStep::Lost(Note::warning(
                "ClaimLost",
                "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!",
            ));
        }
        let Some(v) = volume(name) else {
            return ClaimStep::Lost(Note::warning(
                "ClaimLost",
                "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
            ));
        };
        let claimed_by = v
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .and_then(|r| r.uid.as_deref());
        if claimed_by.is_some_and(|u| Some(u) != c.metadata.uid.as_deref()) {
            return ClaimStep::Lost(Note::warning(
                "ClaimMisbound",
                "Two claims are bound to the same volume, this one is bound incorrectly",
            ));
        }
        if claimed_by.is_none() || phase_of_volume(v) != "Bound" || phase_of_claim(c) != "Bound" {
            return ClaimStep::Bind {
                volume: name.to_string(),
            };
        }
        // A bound claim that asks for more than its volume holds grows it, when its class
        // allows (admission has checked that already).
        let want = claim_request(c.spec.as_ref());
        if let (Some(want), Some(has)) = (want, volume_size(v))
            && want.milli() > has.milli()
        {
            let size = c
                .spec
                .as_ref()
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .map(|q| q.0.clone())
                .unwrap_or_default();
            return ClaimStep::Expand {
                volume: name.to_string(),
                size,
            };
        }
        return ClaimStep::Settled;
    }
    if !name.is_empty() {
        // The user named the volume.
        let Some(v) = volume(name) else {
            return ClaimStep::Wait(None);
        };
        let claimed = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some();
        if claimed && !names_claim(v, c) {
            return ClaimStep::Wait(Some(Note::warning(
                "FailedBinding",
                format!("volume \"{name}\" already bound to a different claim."),
            )));
        }
        if !claimed && let Some(why) = mismatch(v, c) {
            return ClaimStep::Wait(Some(Note::warning(
                "VolumeMismatch",
                format!("Cannot bind to requested volume \"{name}\": {why}"),
            )));
        }
        return ClaimStep::Bind {
            volume: name.to_string(),
        };
    }
    let class_name = claim_class(c);
    let class = w
        .classes
        .iter()
        .find(|k| k.metadata.name.as_deref() == Some(class_name));
    let delayed =
        class.is_some_and(|k| k.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
    if let Some(v) = best_match(c, w.volumes, delayed) {
        return ClaimStep::Bind {
            volume: v.metadata.name.clone().unwrap_or_default(),
        };
    }
    let unset = c
        .spec
        .as_ref()
        .is_none_or(|s| s.storage_class_name.is_none())
        && annotation(&c.metadata, api::kinds::storage::BETA_CLASS_ANNOTATION).is_none();
    if unset && let Some(d) = default_class(w.classes) {
        return ClaimStep::AssignClass(d.metadata.name.clone().unwrap_or_default());
    }
    let selected = annotation(&c.metadata, SELECTED_NODE);
    if delayed && selected.is_none() {
        return ClaimStep::Wait(Some(Note::normal(
            "WaitForFirstConsumer",
            "waiting for first consumer to be created before binding",
        )));
    }
    if class_name.is_empty() {
        return ClaimStep::Wait(Some(Note::normal(
            "FailedBinding",
            "no persistent volumes available for this claim and no storage class is set",
        )));
    }
    let Some(class) = class else {
        return ClaimStep::Wait(Some(Note::warning(
            "ProvisioningFailed",
            format!("storageclass.storage.k8s.io \"{class_name}\" not found"),
        )));
    };
    if class.provisioner != PROVISIONER {
        return ClaimStep::Wait(Some(Note::normal(
            "ExternalProvisioning",
            format!(
                "Waiting for a volume to be created either by the external provisioner '{}' or \
                 manually by the system administrator. If volume creation is delayed, please \
                 verify that the provisioner is running and correctly registered.",
                class.provisioner
            ),
        )));
    }
    let failed = |why: String| {
        ClaimStep::Wait(Some(Note::warning(
            "ProvisioningFailed",
            format!("Failed to provision volume with StorageClass \"{class_name}\": {why}"),
        )))
    };
    if c.spec.as_ref().and_then(|s| s.selector.as_ref()).is_some() {
        return failed("claim.Spec.Selector is not supported".into());
    }
    if c.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block") {
        return failed("only Filesystem volumes are supported".into());
    }
    // Immediate binding: the node is chosen now, the first Ready one by name.
    let node = match selected {
        Some(n) => n.to_string(),
        None => {
            let mut ready: Vec<&str> = w
                .nodes
                .iter()
                .filter(|n| node_ready(n) && annotation(&n.metadata, NODE_DIR).is_some())
                .filter_map(|n| n.metadata.name.as_deref())
                .collect();
            ready.sort_unstable();
            match ready.first() {
                Some(n) => n.to_string(),
                None => return failed("no Ready node keeps local volumes".into()),
            }
        }
    };
    match node_dir(w.nodes, &node) {
        Ok(dir) => ClaimStep::Provision {
            node,
            dir: dir.to_string(),
        },
        Err(why) => failed(why),
    }
}

/// The next step for a volume; `claim` is the claim its claimRef names, if that exists.
pub fn volume_step(v: &PersistentVolume, claim: Option<&PersistentVolumeClaim>) -> VolumeStep {
    let phase = phase_of_volume(v);
    // A volume being deleted loses its protection once it is not bound; while it is, it
    // follows its claim like any other (so it is released when the claim goes).
    if v.metadata.deletion_timestamp.is_some()
        && has_finalizer(&v.metadata, PV_PROTECTION)
        && phase != "Bound"
    {
        return VolumeStep::Unprotect;
    }
    let set = |p: &'static str| {
        if phase == p {
            VolumeStep::Settled
        } else {
            VolumeStep::Phase(p, None)
        }
    };
    let Some(r) = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return set("Available");
    };
    if r.uid.as_deref().is_none_or(str::is_empty) {
        return set("Available");
    }
    let claim = claim.filter(|c| c.metadata.uid == r.uid);
    let Some(claim) = claim else {
        if phase == "Released" || phase == "Failed" {
            return VolumeStep::Settled;
        }
        // The claim is gone: what happens next is the reclaim policy's.
        let policy = v
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
            .unwrap_or("Retain");
        let ours = annotation(&v.metadata, PROVISIONED_BY) == Some(PROVISIONER);
        return match policy {
            "Delete" if !ours => VolumeStep::Phase(
                "Failed",
                Some(Note::warning(
                    "VolumeFailedDelete",
                    "berth deletes only the volumes its provisioner made",
                )),
            ),
            "Recycle" => VolumeStep::Phase(
                "Failed",
                Some(Note::warning(
                    "VolumeFailedRecycle",
                    "recycling is not supported: Kubernetes deprecated it",
                )),
            ),
            _ => VolumeStep::Phase("Released", None),
        };
    };
    let bound_to = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .unwrap_or("");
    if bound_to.is_empty() {
        // The claim finishes the binding.
        return VolumeStep::Settled;
    }
    if Some(bound_to) == v.metadata.name.as_deref() {
        return set("Bound");
    }
    if annotation(&v.metadata, PROVISIONED_BY) == Some(PROVISIONER) {
        return set("Released");
    }
    VolumeStep::Unbind
}

/// Whether a pod keeps claim `name` in use: it is on a node and names the claim, directly
/// or as its ephemeral volume's (Kubernetes' pvc-protection rule: finished pods count too).
pub fn pod_uses(pod: &Pod, name: &str) -> bool {
    let Some(spec) = &pod.spec else { return false };
    if spec.node_name.as_deref().is_none_or(str::is_empty) {
        return false;
    }
    claims_of(pod).iter().any(|c| c == name)
}

/// The claims a pod's volumes name: its own and those of its ephemeral volumes
/// (`<pod>-<volume>`).
pub fn claims_of(pod: &Pod) -> Vec<String> {
    let pod_name = pod.metadata.name.as_deref().unwrap_or("");
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|v| {
            if let Some(c) = &v.persistent_volume_claim {
                Some(c.claim_name.clone())
            } else {
                v.ephemeral
                    .as_ref()
                    .map(|_| format!("{pod_name}-{}", v.name))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claim(extra: serde_json::Value) -> PersistentVolumeClaim {
        let mut v = json!({"metadata": {"name": "data", "namespace": "ns", "uid": "c1"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"phase": "Pending"}});
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn volume(name: &str, size: &str, extra: serde_json::Value) -> Arc<PersistentVolume> {
        let mut v = json!({"metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": size},
                     "hostPath": {"path": format!("/srv/{name}")}},
            "status": {"phase": "Available"}});
        merge(&mut v, extra);
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn class(name: &str, mode: &str, default: bool) -> Arc<StorageClass> {
        let mut v = json!({"metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "provisioner": PROVISIONER, "volumeBindingMode": mode});
        if default {
            v["metadata"]["annotations"] =
                json!({"storageclass.kubernetes.io/is-default-class": "true"});
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn node(name: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name,
                "annotations": {NODE_DIR: "/var/lib/berth/storage"}},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]}}))
            .unwrap(),
        )
    }

    fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
        match (into, from) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn step(
        c: &PersistentVolumeClaim,
        vols: &[Arc<PersistentVolume>],
        classes: &[Arc<StorageClass>],
    ) -> ClaimStep {
        let nodes = [node("n1"), node("n2")];
        claim_step(
            c,
            &World {
                volumes: vols,
                classes,
                nodes: &nodes,
            },
            false,
        )
    }

    #[test]
    fn a_claim_takes_the_smallest_volume_that_serves_it() {
        let vols = [
            volume("big", "10Gi", json!({})),
            volume("small", "2Gi", json!({})),
            volume("tiny", "512Mi", json!({})),
            volume(
                "rox",
                "1Gi",
                json!({"spec": {"accessModes": ["ReadOnlyMany"]}}),
            ),
            volume(
                "taken",
                "1Gi",
                json!({"spec": {"claimRef": {"namespace": "ns", "name": "other", "uid": "x"}}}),
            ),
            volume(
                "classy",
                "1Gi",
                json!({"spec": {"storageClassName": "fast"}}),
            ),
        ];
        assert_eq!(
            step(&claim(json!({})), &vols, &[]),
            ClaimStep::Bind {
                volume: "small".into()
            }
        );
        // A selector narrows the choice; a class must match exactly.
        let picky = claim(json!({"spec": {"selector": {"matchLabels": {"tier": "gold"}}}}));
        assert!(
            matches!(step(&picky, &vols, &[]), ClaimStep::Wait(Some(n)) if n.reason == "FailedBinding")
        );
        let fast = claim(json!({"spec": {"storageClassName": "fast"}}));
        assert_eq!(
            step(&fast, &vols, &[]),
            ClaimStep::Bind {
                volume: "classy".into()
            }
        );
    }

    #[test]
    fn a_claim_waits_for_its_class_or_its_consumer_then_is_provisioned() {
        let wffc = class("local-path", "WaitForFirstConsumer", true);
        // No class named: the default is given first.
        assert_eq!(
            step(&claim(json!({})), &[], std::slice::from_ref(&wffc)),
            ClaimStep::AssignClass("local-path".into())
        );
        let waiting = claim(json!({"spec": {"storageClassName": "local-path"}}));
        match step(&waiting, &[], std::slice::from_ref(&wffc)) {
            ClaimStep::Wait(Some(n)) => assert_eq!(n.reason, "WaitForFirstConsumer"),
            other => panic!("{other:?}"),
        }
        let placed = claim(json!({"metadata": {"annotations": {SELECTED_NODE: "n2"}},
                                  "spec": {"storageClassName": "local-path"}}));
        assert_eq!(
            step(&placed, &[], std::slice::from_ref(&wffc)),
            ClaimStep::Provision {
                node: "n2".into(),
                dir: "/var/lib/berth/storage".into()
            }
        );
        // Immediate: the first Ready node.
        let now = class("now", "Immediate", false);
        let c = claim(json!({"spec": {"storageClassName": "now"}}));
        assert_eq!(
            step(&c, &[], &[now]),
            ClaimStep::Provision {
                node: "n1".into(),
                dir: "/var/lib/berth/storage".into()
            }
        );
        // A class that does not exist: Kubernetes' event.
        let missing = claim(json!({"spec": {"storageClassName": "gold"}}));
        match step(&missing, &[], &[wffc]) {
            ClaimStep::Wait(Some(n)) => {
                assert_eq!(
                    (n.reason, n.message.as_str()),
                    (
                        "ProvisioningFailed",
                        r#"storageclass.storage.k8s.io "gold" not found"#
                    )
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bound_claims_finish_binding_grow_and_notice_a_lost_volume() {
        let bound = claim(json!({"metadata": {"annotations": {BIND_COMPLETED: "yes"}},
                                 "spec": {"volumeName": "v"}, "status": {"phase": "Bound"}}));
        let mine = json!({"spec": {"claimRef": {"namespace": "ns", "name": "data", "uid": "c1"}}, "status": {"phase": "Bound"}});
        let v = volume("v", "1Gi", mine.clone());
        assert_eq!(
            step(&bound, std::slice::from_ref(&v), &[]),
            ClaimStep::Settled
        );
        let half = volume(
            "v",
            "1Gi",
            json!({"spec": {"claimRef": {"namespace": "ns", "name": "data", "uid": "c1"}}}),
        );
        assert_eq!(
            step(&bound, &[half], &[]),
            ClaimStep::Bind { volume: "v".into() }
        );
        assert!(matches!(step(&bound, &[], &[]), ClaimStep::Lost(n) if n.reason == "ClaimLost"));
        let mut grown = bound.clone();
        grown
            .spec
            .as_mut()
            .unwrap()
            .resources
            .as_mut()
            .unwrap()
            .requests
            .as_mut()
            .unwrap()
            .insert(
                "storage".into(),
                api::k8s_openapi::apimachinery::pkg::api::resource::Quantity("2Gi".into()),
            );
        assert_eq!(
            step(&grown, &[v], &[]),
            ClaimStep::Expand {
                volume: "v".into(),
                size: "2Gi".into()
            }
        );
    }

    #[test]
    fn volumes_follow_their_claims_and_policies() {
        let mine = json!({"spec": {"claimRef": {"namespace": "ns", "name": "data", "uid": "c1"}}, "status": {"phase": "Bound"}});
        let bound_claim = claim(json!({"spec": {"volumeName": "v"}}));
        assert_eq!(
            volume_step(&volume("v", "1Gi", mine.clone()), Some(&bound_claim)),
            VolumeStep::Settled
        );
        assert_eq!(
            volume_step(
                &volume("v", "1Gi", json!({"status": {"phase": "Pending"}})),
                None
            ),
            VolumeStep::Phase("Available", None)
        );
        // Claim gone: Retain keeps it Released; Delete of a hand-made volume fails; ours is
        // released for its node's agent to remove.
        assert_eq!(
            volume_step(&volume("v", "1Gi", mine.clone()), None),
            VolumeStep::Phase("Released", None)
        );
        let mut delete = mine.clone();
        delete["spec"]["persistentVolumeReclaimPolicy"] = json!("Delete");
        assert!(matches!(
            volume_step(&volume("v", "1Gi", delete.clone()), None),
            VolumeStep::Phase("Failed", Some(_))
        ));
        delete["metadata"] = json!({"annotations": {PROVISIONED_BY: PROVISIONER}});
        assert_eq!(
            volume_step(&volume("v", "1Gi", delete), None),
            VolumeStep::Phase("Released", None)
        );
        // A volume being deleted keeps its finalizer while bound.
        let mut going = mine;
        going["metadata"] =
            json!({"deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": [PV_PROTECTION]});
        assert_eq!(
            volume_step(&volume("v", "1Gi", going.clone()), Some(&bound_claim)),
            VolumeStep::Settled
        );
        going["status"]["phase"] = json!("Released");
        assert_eq!(
            volume_step(&volume("v", "1Gi", going), None),
            VolumeStep::Unprotect
        );
    }

    #[test]
    fn a_claim_in_use_on_a_node_stays_until_its_pod_goes() {
        let going = claim(
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": [PVC_PROTECTION]}}),
        );
        let w = World {
            volumes: &[],
            classes: &[],
            nodes: &[],
        };
        assert_eq!(claim_step(&going, &w, true), ClaimStep::Settled);
        assert_eq!(claim_step(&going, &w, false), ClaimStep::Unprotect);
        let pod = |node: Option<&str>| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "web-0"}, "spec": {"nodeName": node,
                "containers": [], "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}},
                                              {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}]}}))
            .unwrap()
        };
        assert!(pod_uses(&pod(Some("n1")), "data"));
        assert!(pod_uses(&pod(Some("n1")), "web-0-scratch"));
        assert!(!pod_uses(&pod(None), "data"));
    }
}

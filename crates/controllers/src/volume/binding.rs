//! Volume binding for the scheduler (kube-scheduler's VolumeBinding plugin): what a pod's
//! claims ask of a node, and, once a node is chosen, what is written before the pod is bound
//! (a claim of a WaitForFirstConsumer class is told the node, so its volume is made there; a
//! claim that waits for a volume made by hand gets one on that node).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use api::k8s_openapi::api::core::v1::{
    NodeSelectorRequirement, NodeSelectorTerm, PersistentVolume, PersistentVolumeClaim, Pod,
};
use api::k8s_openapi::api::storage::v1::StorageClass;
use client::{Client, ClientError};
use scheduler::VolumeNodes;
use serde_json::json;
use tokio::sync::Notify;

use super::plan;

/// The storage objects the scheduler follows.
#[derive(Default)]
pub struct Storage {
    /// By `namespace/name`.
    pub claims: HashMap<String, Arc<PersistentVolumeClaim>>,
    pub volumes: HashMap<String, Arc<PersistentVolume>>,
    pub classes: HashMap<String, Arc<StorageClass>>,
}

/// A claim that waits for its pod's node.
#[derive(Clone, Debug)]
pub struct Delayed {
    pub claim: Arc<PersistentVolumeClaim>,
    /// Volumes made by hand it could bind to (none: its class provisions one).
    pub candidates: Vec<Arc<PersistentVolume>>,
}

/// What a pod's claims need.
#[derive(Default, Debug)]
pub struct Needs {
    pub nodes: Vec<VolumeNodes>,
    pub delayed: Vec<Delayed>,
}

fn affinity_terms(v: &PersistentVolume) -> Option<Vec<NodeSelectorTerm>> {
    v.spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()
        .map(|r| r.node_selector_terms.clone())
}

/// What `pod`'s claims ask of a node; an error (Kubernetes' words) when the pod cannot be
/// placed anywhere yet.
pub fn needs(pod: &Pod, s: &Storage) -> Result<Needs, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let pod_name = pod.metadata.name.as_deref().unwrap_or("");
    let mut out = Needs::default();
    for vol in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
    {
        let (name, ephemeral) = match (&vol.persistent_volume_claim, &vol.ephemeral) {
            (Some(c), _) => (c.claim_name.clone(), false),
            (None, Some(_)) => (format!("{pod_name}-{}", vol.name), true),
            _ => continue,
        };
        let Some(claim) = s.claims.get(&format!("{ns}/{name}")) else {
            return Err(if ephemeral {
                format!(
                    "waiting for ephemeral volume controller to create the persistentvolumeclaim \"{name}\""
                )
            } else {
                format!("persistentvolumeclaim \"{name}\" not found")
            });
        };
        if ephemeral
            && !claim
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true) && Some(&o.uid) == pod.metadata.uid.as_ref())
        {
            return Err(format!(
                "PVC {ns}/{name} was not created for pod {ns}/{pod_name} (pod is not owner)"
            ));
        }
        if claim.metadata.deletion_timestamp.is_some() {
            return Err(format!("persistentvolumeclaim \"{name}\" is being deleted"));
        }
        let bound_to = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .unwrap_or("");
        if !bound_to.is_empty() {
            let Some(v) = s.volumes.get(bound_to) else {
                return Err(format!(
                    "persistentvolumeclaim \"{name}\" bound to non-existent persistentvolume \"{bound_to}\""
                ));
            };
            if let Some(terms) = affinity_terms(v) {
                out.nodes.push(VolumeNodes { terms, bound: true });
            }
            continue;
        }
        let class = s.classes.get(plan::claim_class(claim));
        let delayed =
            class.is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
        if !delayed {
            return Err("pod has unbound immediate PersistentVolumeClaims".into());
        }
        // A claim already promised to a node (for another pod) binds there only.
        if let Some(node) = claim
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(plan::SELECTED_NODE))
        {
            out.nodes.push(VolumeNodes {
                terms: vec![NodeSelectorTerm {
                    match_expressions: None,
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".into(),
                        operator: "In".into(),
                        values: Some(vec![node.clone()]),
                    }]),
                }],
                bound: false,
            });
        }
        let provisions = class.is_some_and(|c| c.provisioner != "kubernetes.io/no-provisioner");
        let volumes: Vec<Arc<PersistentVolume>> = s.volumes.values().cloned().collect();
        let candidates = plan::candidates(claim, &volumes);
        if !provisions {
            // Only a volume made by hand will do: the pod goes where one of them can be used.
            let mut terms = Vec::new();
            for v in &candidates {
                match affinity_terms(v) {
                    Some(t) => terms.extend(t),
                    // A volume usable anywhere: no constraint from this claim.
                    None => {
                        terms.clear();
                        break;
                    }
                }
            }
            if candidates.is_empty() {
                // No node will do; an empty term matches nothing.
                out.nodes.push(VolumeNodes {
                    terms: Vec::new(),
                    bound: false,
                });
            } else if !terms.is_empty() {
                out.nodes.push(VolumeNodes {
                    terms,
                    bound: false,
                });
            }
        }
        out.delayed.push(Delayed {
            claim: claim.clone(),
            candidates: if provisions { Vec::new() } else { candidates },
        });
    }
    Ok(out)
}

/// Before the pod is bound to `node`: tell each waiting claim where its pod went (its
/// provisioner makes the volume there), or give it the smallest volume made by hand that
/// can be used there.
pub async fn prebind(
    client: &Client,
    delayed: &[Delayed],
    node: &str,
    labels: &BTreeMap<String, String>,
    claims_changed: &Notify,
) -> Result<(), ClientError> {
    for d in delayed {
        let ns = d.claim.metadata.namespace.as_deref().unwrap_or("");
        let name = d.claim.metadata.name.as_deref().unwrap_or("");
        if d.candidates.is_empty() {
            let patch = json!({"metadata": {"annotations": {plan::SELECTED_NODE: node}}});
            client
                .merge_patch::<PersistentVolumeClaim>(Some(ns), name, &patch)
                .await?;
            continue;
        }
        let usable = d.candidates.iter().filter(|v| {
            affinity_terms(v).is_none_or(|terms| {
                terms
                    .iter()
                    .any(|t| scheduler::term_matches(t, node, labels))
            })
        });
        let Some(v) = usable.min_by_key(|v| plan::size_of(v)) else {
            continue;
        };
        let mut v = (**v).clone();
        v.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(plan::BOUND_BY_CONTROLLER.into(), "yes".into());
        if let Some(spec) = v.spec.as_mut() {
            spec.claim_ref = Some(super::claim_reference(&d.claim));
        }
        let vname = v.metadata.name.clone().unwrap_or_default();
        client.replace(None, &vname, &v).await?;
    }
    // As kube-scheduler does, bind the pod only once its claims are: its node's agent then
    // finds their volumes at once.
    for d in delayed {
        let volume = wait_bound(client, &d.claim, claims_changed).await?;
        // Two pods placed in one cycle may share a claim: the volume is where the first one
        // went, and the other must be placed again.
        let usable = match client.get::<PersistentVolume>(None, &volume).await? {
            Some(v) => affinity_terms(&v).is_none_or(|terms| {
                terms
                    .iter()
                    .any(|t| scheduler::term_matches(t, node, labels))
            }),
            None => false,
        };
        if !usable {
            return Err(ClientError::Api {
                code: 409,
                reason: "Conflict".into(),
                message: format!("volume {volume:?} cannot be used on node {node:?}"),
            });
        }
    }
    Ok(())
}

/// How long a pod's binding waits for its claims (kube-scheduler waits up to 10 minutes; a
/// pod whose claims take longer is tried again).
const BIND_TIMEOUT: Duration = Duration::from_secs(60);

/// Wait until the claim is bound, looking again whenever the scheduler hears of a change to
/// any claim (and now and then regardless).
/// Returns the name of its volume.
async fn wait_bound(
    client: &Client,
    claim: &PersistentVolumeClaim,
    changed: &Notify,
) -> Result<String, ClientError> {
    let ns = claim.metadata.namespace.as_deref().unwrap_or("");
    let name = claim.metadata.name.as_deref().unwrap_or("");
    let deadline = tokio::time::Instant::now() + BIND_TIMEOUT;
    loop {
        // Listen before looking, so that a change between the two is not missed.
        let next = changed.notified();
        let Some(c) = client.get::<PersistentVolumeClaim>(Some(ns), name).await? else {
            return Err(ClientError::Api {
                code: 404,
                reason: "NotFound".into(),
                message: format!("persistentvolumeclaim \"{name}\" not found"),
            });
        };
        if c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound") {
            return Ok(c.spec.and_then(|s| s.volume_name).unwrap_or_default());
        }

        if tokio::time::Instant::now() > deadline {
            return Err(ClientError::Api {
                code: 504,
                reason: "Timeout".into(),
                message: format!("persistentvolumeclaim \"{name}\" was not bound in time"),
            });
        }
        let _ = tokio::time::timeout(Duration::from_millis(250), next).await;
    }
}

//! ControllerRevisions: the templates a DaemonSet or StatefulSet has had, numbered, as
//! Kubernetes keeps them, so that `kubectl rollout history` lists them and `kubectl rollout
//! undo` patches one back. A revision is named `<owner>-<template hash>`, carries the
//! template's labels (so the owner's selector finds it) and the owner's annotations (the
//! change cause), and holds a strategic merge patch that restores the template whole. Going
//! back to an older template renumbers its revision as the newest.

use std::collections::HashSet;
use std::sync::Arc;

use api::k8s_openapi::api::apps::v1::ControllerRevision;
use api::k8s_openapi::api::core::v1::PodTemplateSpec;
use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use api::k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use api::k8s_openapi::{Metadata, Resource};
use client::{Client, ClientError};
use serde_json::{Value, json};
use tracing::debug;

use crate::daemonset::REVISION_LABEL;
use crate::mirror::Mirror;
use crate::owned::controller_ref;

/// Revisions kept when the owner does not say (`revisionHistoryLimit`).
const DEFAULT_LIMIT: i32 = 10;

/// The revision's data: a strategic merge patch that puts `template` back whole.
pub fn patch_for(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(m) = t.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The revisions `uid` controls in `namespace`, oldest first.
fn owned(
    revisions: &Mirror<ControllerRevision>,
    namespace: &str,
    uid: &str,
) -> Vec<Arc<ControllerRevision>> {
    let mut out: Vec<Arc<ControllerRevision>> = revisions
        .in_namespace(namespace)
        .into_iter()
        .filter(|r| crate::owned::controller_of(&r.metadata).is_some_and(|o| o.uid == uid))
        .collect();
    out.sort_by_key(|r| r.revision);
    out
}

/// Make the template with `hash` the owner's newest revision and drop the oldest ones beyond
/// `limit` (the owner's `revisionHistoryLimit`, 10 when unset) that no pod runs (`in_use`:
/// the hashes live pods carry). An owner being deleted records nothing.
pub async fn record<K>(
    client: &Client,
    revisions: &Mirror<ControllerRevision>,
    owner: &K,
    template: &PodTemplateSpec,
    hash: &str,
    limit: Option<i32>,
    in_use: &HashSet<String>,
) -> Result<(), ClientError>
where
    K: Resource + Metadata<Ty = ObjectMeta>,
{
    let meta = owner.metadata();
    if meta.deletion_timestamp.is_some() {
        return Ok(());
    }
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    let ns = meta.namespace.clone().unwrap_or_default();
    let owner_name = meta.name.clone().unwrap_or_default();
    let uid = meta.uid.clone().unwrap_or_default();
    let mine = owned(revisions, &ns, &uid);
    let newest = mine.last().map_or(0, |r| r.revision);
    let name = format!("{owner_name}-{hash}");
    match mine
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(&name))
    {
        Some(r) if r.revision == newest => {}
        Some(_) => {
            // Back to an older template: it is the newest revision again.
            let patch = json!({"revision": newest + 1});
            match client
                .merge_patch::<ControllerRevision>(Some(&ns), &name, &patch)
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        None => {
            let mut labels = template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert(REVISION_LABEL.into(), hash.into());
            let mut annotations = meta.annotations.clone().unwrap_or_default();
            annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
            let revision = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    annotations: (!annotations.is_empty()).then_some(annotations),
                    owner_references: Some(vec![controller_ref(owner)]),
                    ..Default::default()
                },
                data: Some(RawExtension(patch_for(template))),
                revision: newest + 1,
            };
            match client.create(Some(&ns), &revision).await {
                Ok(_) => {}
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e),
            }
        }
    };
    // History beyond the limit goes, oldest first, unless pods still run it.
    let old: Vec<&Arc<ControllerRevision>> = mine
        .iter()
        .filter(|r| r.metadata.name.as_deref() != Some(&name))
        .collect();
    let excess = old
        .len()
        .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
    for r in old.into_iter().take(excess) {
        let running = r
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(REVISION_LABEL))
            .is_some_and(|h| in_use.contains(h));
        if running {
            continue;
        }
        let rname = r.metadata.name.clone().unwrap_or_default();
        let path = format!("/apis/apps/v1/namespaces/{ns}/controllerrevisions/{rname}");
        if let Err(e) = client.delete_with(&path, &json!({})).await
            && !e.is_not_found()
        {
            debug!(revision = %rname, error = %e, "could not drop an old revision");
        }
    }
    Ok(())
}

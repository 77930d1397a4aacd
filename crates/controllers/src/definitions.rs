//! The CustomResourceDefinition finalizer, as apiextensions-apiserver's: a definition being
//! deleted is marked `Terminating`, every object of its kind is deleted (each through its own
//! finalizers), and once none is left the definition's cleanup finalizer is removed so that it
//! goes too. New objects are refused meanwhile by the API server.

use std::sync::Arc;
use std::time::Duration;

use api::custom::{CRD_FINALIZER, TERMINATING};
use api::k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use client::Client;
use http::Method;
use serde_json::json;
use tracing::{debug, info};

use crate::harness::{Outcome, Queue, Reconciler};
use crate::mirror::Mirror;

/// How long to wait before looking again while objects are still going away.
const RECHECK: Duration = Duration::from_millis(500);

pub struct DefinitionFinalizer {
    client: Client,
    definitions: Arc<Mirror<CustomResourceDefinition>>,
    queue: Queue,
}

impl DefinitionFinalizer {
    pub fn new(client: Client, definitions: Arc<Mirror<CustomResourceDefinition>>) -> Self {
        let queue = Queue::new("customresourcedefinition-finalizer");
        let q = queue.clone();
        definitions.on_change(move |_, new| {
            if let Some(d) = new.filter(|d| d.metadata.deletion_timestamp.is_some())
                && let Some(name) = d.metadata.name.as_deref()
            {
                q.add(name);
            }
        });
        DefinitionFinalizer {
            client,
            definitions,
            queue,
        }
    }

    pub fn queue(&self) -> Queue {
        self.queue.clone()
    }
}

/// The collection path of a definition's objects, in a version it serves.
fn objects_path(crd: &CustomResourceDefinition) -> Option<String> {
    let version = crd.spec.versions.iter().find(|v| v.served)?;
    Some(format!(
        "/apis/{}/{}/{}",
        crd.spec.group, version.name, crd.spec.names.plural
    ))
}

#[async_trait::async_trait]
impl Reconciler for DefinitionFinalizer {
    fn name(&self) -> &'static str {
        "customresourcedefinition-finalizer"
    }

    async fn ready(&self) {
        self.definitions.synced().await;
    }

    async fn reconcile(&self, name: &str) -> Outcome {
        let Some(crd) = self
            .client
            .get::<CustomResourceDefinition>(None, name)
            .await?
        else {
            return Ok(None);
        };
        let holds = crd
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == CRD_FINALIZER);
        if crd.metadata.deletion_timestamp.is_none() || !holds {
            return Ok(None);
        }
        let terminating = crd
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == TERMINATING && c.status == "True")
            });
        if !terminating {
            let mut status = serde_json::to_value(crd.status.clone().unwrap_or_default())
                .unwrap_or_else(|_| json!({}));
            let mut conditions = status["conditions"].as_array().cloned().unwrap_or_default();
            conditions.retain(|c| c["type"] != TERMINATING);
            conditions.push(json!({
                "type": TERMINATING, "status": "True", "reason": "InstanceDeletionInProgress",
                "message": "CustomResource deletion is in progress",
                "lastTransitionTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            }));
            status["conditions"] = json!(conditions);
            self.client
                .put_status::<CustomResourceDefinition>(None, name, &status)
                .await?;
        }
        if let Some(path) = objects_path(&crd) {
            match self.client.request_json(Method::DELETE, &path, None).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
            let left = self
                .client
                .request_json(Method::GET, &format!("{path}?limit=1"), None)
                .await;
            match left {
                Ok(list) if list["items"].as_array().is_some_and(|a| !a.is_empty()) => {
                    debug!(definition = name, "waiting for its objects to go");
                    return Ok(Some(RECHECK));
                }
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        let finalizers: Vec<String> = crd
            .metadata
            .finalizers
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f != CRD_FINALIZER)
            .collect();
        let patch = json!({"metadata": {"finalizers": finalizers,
                                        "resourceVersion": crd.metadata.resource_version}});
        match self
            .client
            .merge_patch::<CustomResourceDefinition>(None, name, &patch)
            .await
        {
            Ok(_) => {
                info!(definition = name, "objects deleted; definition released");
                Ok(None)
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

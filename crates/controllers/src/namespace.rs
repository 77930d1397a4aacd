//! The namespace controller. For a namespace being deleted it deletes everything inside, then
//! removes the `kubernetes` finalizer so the API server can delete the namespace itself. For a
//! live namespace it makes sure the `default` ServiceAccount and the `kube-root-ca.crt`
//! ConfigMap exist, as pods expect.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use api::k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use api::kinds::NAMESPACE_FINALIZER;
use client::{Client, ClientError, collection_path};
use http::Method;
use serde_json::json;
use tracing::{debug, info};

use crate::harness::{Outcome, Queue, Reconciler};
use crate::mirror::Mirror;

/// How long to wait before looking again at a namespace whose content is still going away.
const RECHECK: Duration = Duration::from_secs(1);

/// The accounts the namespace controller's three jobs act as, as in Kubernetes where they
/// are three controllers.
pub struct Clients {
    /// Reads namespaces and empties the deleted ones.
    pub namespaces: Client,
    /// Creates each namespace's `default` ServiceAccount.
    pub accounts: Client,
    /// Publishes `kube-root-ca.crt`.
    pub publisher: Client,
}

pub struct NamespaceController {
    client: Client,
    accounts: Client,
    publisher: Client,
    namespaces: Arc<Mirror<Namespace>>,
    queue: Queue,
    /// The cluster CA, published in every namespace as `kube-root-ca.crt`.
    ca_pem: String,
}

impl NamespaceController {
    pub fn new(
        clients: Clients,
        namespaces: Arc<Mirror<Namespace>>,
        ca_pem: String,
    ) -> NamespaceController {
        let queue = Queue::new("namespace-controller");
        let q = queue.clone();
        namespaces.on_change(move |_, new| {
            if let Some(n) = new.and_then(|ns| ns.metadata.name.as_deref()) {
                q.add(n);
            }
        });
        NamespaceController {
            client: clients.namespaces,
            accounts: clients.accounts,
            publisher: clients.publisher,
            namespaces,
            queue,
            ca_pem,
        }
    }

    /// The queue its change handler feeds.
    pub fn queue(&self) -> Queue {
        self.queue.clone()
    }
}

#[async_trait::async_trait]
impl Reconciler for NamespaceController {
    fn name(&self) -> &'static str {
        "namespace-controller"
    }

    async fn ready(&self) {
        self.namespaces.synced().await;
    }

    /// Reads the namespace from the API server, not the mirror: deciding to delete a
    /// namespace's content wants the latest word.
    async fn reconcile(&self, name: &str) -> Outcome {
        let Some(ns) = self.client.get::<Namespace>(None, name).await? else {
            return Ok(None);
        };
        if ns.metadata.deletion_timestamp.is_some() {
            return self.finalize(&ns, name).await;
        }
        self.ensure_defaults(name).await?;
        Ok(None)
    }
}

impl NamespaceController {
    async fn ensure_defaults(&self, ns: &str) -> Result<(), ClientError> {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        if self
            .client
            .get::<ServiceAccount>(Some(ns), "default")
            .await?
            .is_none()
        {
            ignore_exists(self.accounts.create(Some(ns), &sa).await)?;
        }
        if self
            .client
            .get::<ConfigMap>(Some(ns), "kube-root-ca.crt")
            .await?
            .is_none()
        {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some("kube-root-ca.crt".into()),
                    annotations: Some(BTreeMap::from([(
                        "kubernetes.io/description".to_string(),
                        "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.".to_string(),
                    )])),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([("ca.crt".to_string(), self.ca_pem.clone())])),
                ..Default::default()
            };
            ignore_exists(self.publisher.create(Some(ns), &cm).await)?;
        }
        Ok(())
    }

    /// Delete everything in the namespace; once nothing is left, release it.
    async fn finalize(&self, ns: &Namespace, name: &str) -> Outcome {
        let holds = ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.as_ref())
            .is_some_and(|f| f.iter().any(|x| x == NAMESPACE_FINALIZER));
        if !holds {
            return Ok(None);
        }
        let mut remaining = 0;
        let mut paths: Vec<String> = api::resources::all()
            .iter()
            .filter(|r| r.namespaced)
            .map(|r| collection_path(r, Some(name)))
            .collect();
        paths.extend(
            crate::discovered::custom_resources(&self.client, &["deletecollection", "list"])
                .await?
                .iter()
                .filter(|d| d.namespaced)
                .map(|d| d.path(Some(name))),
        );
        for path in paths {
            match self.client.request_json(Method::DELETE, &path, None).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
            let left = self
                .client
                .request_json(Method::GET, &format!("{path}?limit=1"), None)
                .await?;
            remaining += left["items"].as_array().map_or(0, |a| a.len());
        }
        if remaining > 0 {
            debug!(namespace = name, "waiting for content to go");
            return Ok(Some(RECHECK));
        }
        let finalizers: Vec<String> = ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f != NAMESPACE_FINALIZER)
            .collect();
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
                          "spec": {"finalizers": finalizers}});
        match self
            .client
            .request_json(
                Method::PUT,
                &format!("/api/v1/namespaces/{name}/finalize"),
                Some(&body),
            )
            .await
        {
            Ok(_) => {
                info!(
                    namespace = name,
                    "namespace content deleted; namespace released"
                );
                Ok(None)
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn ignore_exists<T>(r: Result<T, ClientError>) -> Result<(), ClientError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.is_conflict() => Ok(()),
        Err(e) => Err(e),
    }
}

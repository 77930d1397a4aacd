//! The built-in Ingress controller's status: every node serves the Ingresses of class
//! `berth` (and those naming no class while `berth` is the default), so their
//! `status.loadBalancer.ingress` lists the Ready nodes' InternalIPs. One writer, in the control
//! plane, as the Service load balancer has; the nodes only serve.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use api::k8s_openapi::api::core::v1::{Node, Service};
use api::k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use api::kinds::more::{ingress_served_by, is_default_ingress_class};
use async_trait::async_trait;
use client::Client;
use serde_json::json;

use crate::harness::{Outcome, Queue, Reconciler};
use crate::mirror::{Mirror, key_of};

/// The class the built-in controller serves.
pub const CLASS: &str = "berth";

fn addresses_of(ing: &Ingress) -> Vec<String> {
    ing.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone())
        .collect()
}

/// The addresses an Ingress should list: the nodes' when the built-in controller serves it,
/// none otherwise (another controller's are its own to write, and left alone).
pub fn plan(ing: &Ingress, class_is_default: bool, node_ips: &[String]) -> Option<Vec<String>> {
    ingress_served_by(ing, CLASS, class_is_default).then(|| node_ips.to_vec())
}

/// The Services an Ingress sends requests to (in its namespace).
pub fn services_named(ing: &Ingress) -> BTreeSet<String> {
    let Some(spec) = &ing.spec else {
        return BTreeSet::new();
    };
    let paths = spec
        .rules
        .iter()
        .flatten()
        .filter_map(|r| r.http.as_ref())
        .flat_map(|h| h.paths.iter().map(|p| &p.backend));
    paths
        .chain(spec.default_backend.iter())
        .filter_map(|b| b.service.as_ref().map(|s| s.name.clone()))
        .collect()
}

/// The Secrets an Ingress's `spec.tls` names.
pub fn secrets_named(ing: &Ingress) -> BTreeSet<String> {
    ing.spec
        .iter()
        .flat_map(|s| s.tls.iter().flatten())
        .filter_map(|t| t.secret_name.clone())
        .filter(|n| !n.is_empty())
        .collect()
}

pub struct IngressStatusController {
    client: Client,
    ingresses: Arc<Mirror<Ingress>>,
    classes: Arc<Mirror<IngressClass>>,
    nodes: Arc<Mirror<Node>>,
    services: Arc<Mirror<Service>>,
    /// The missing Services last reported per Ingress (and for which generation), so that a
    /// problem is told once, not on every pass.
    reported: Mutex<HashMap<String, (i64, BTreeSet<String>)>>,
    /// The TLS Secrets last looked for per Ingress (and for which generation).
    secrets_checked: Mutex<HashMap<String, (i64, BTreeSet<String>)>>,
    queue: Queue,
}

impl IngressStatusController {
    pub fn new(
        client: Client,
        ingresses: Arc<Mirror<Ingress>>,
        classes: Arc<Mirror<IngressClass>>,
        nodes: Arc<Mirror<Node>>,
        services: Arc<Mirror<Service>>,
    ) -> IngressStatusController {
        let queue = Queue::new("ingress-status-controller");
        let q = queue.clone();
        ingresses.on_change(move |old, new| {
            if let Some(i) = new.or(old) {
                q.add(&key_of(&i.metadata));
            }
        });
        // The nodes' addresses, or which class is the default, touch every Ingress.
        let (q, all) = (queue.clone(), ingresses.clone());
        nodes.on_change(move |_, _| {
            for i in all.all() {
                q.add(&key_of(&i.metadata));
            }
        });
        let (q, all) = (queue.clone(), ingresses.clone());
        classes.on_change(move |_, _| {
            for i in all.all() {
                q.add(&key_of(&i.metadata));
            }
        });
        IngressStatusController {
            client,
            ingresses,
            classes,
            nodes,
            services,
            reported: Mutex::default(),
            secrets_checked: Mutex::default(),
            queue,
        }
    }

    pub fn queue(&self) -> Queue {
        self.queue.clone()
    }
}

impl IngressStatusController {
    /// A Warning event on an Ingress naming Services that do not exist (its requests for
    /// them are answered 503), once per generation and set of names.
    fn report_missing(&self, key: &str, ns: &str, ing: &Ingress) {
        let missing: BTreeSet<String> = services_named(ing)
            .into_iter()
            .filter(|s| self.services.get(ns, s).is_none())
            .collect();
        let generation = ing.metadata.generation.unwrap_or(0);
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        let now = (generation, missing.clone());
        if reported.get(key) == Some(&now) {
            return;
        }
        reported.insert(key.to_string(), now);
        for s in missing {
            crate::owned::event(
                &self.client,
                "ingress-controller",
                ing,
                "Warning",
                "ServiceNotFound",
                &format!("service \"{s}\" not found: requests routed to it are answered 503"),
            );
        }
    }
}

impl IngressStatusController {
    /// A Warning event on an Ingress whose TLS Secret does not exist (its hosts get no
    /// certificate from it), looked up once per generation and set of names.
    async fn report_missing_secrets(
        &self,
        key: &str,
        ns: &str,
        ing: &Ingress,
    ) -> Result<(), client::ClientError> {
        let names = secrets_named(ing);
        let now = (ing.metadata.generation.unwrap_or(0), names.clone());
        if self
            .secrets_checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            == Some(&now)
        {
            return Ok(());
        }
        for s in &names {
            if self
                .client
                .get::<api::k8s_openapi::api::core::v1::Secret>(Some(ns), s)
                .await?
                .is_none()
            {
                crate::owned::event(
                    &self.client,
                    "ingress-controller",
                    ing,
                    "Warning",
                    "SecretNotFound",
                    &format!(
                        "secret \"{s}\" not found: the hosts of its TLS entry get no certificate from it"
                    ),
                );
            }
        }
        self.secrets_checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string(), now);
        Ok(())
    }
}

#[async_trait]
impl Reconciler for IngressStatusController {
    fn name(&self) -> &'static str {
        "ingress-status-controller"
    }

    async fn ready(&self) {
        self.ingresses.synced().await;
        self.classes.synced().await;
        self.nodes.synced().await;
        self.services.synced().await;
    }

    async fn reconcile(&self, key: &str) -> Outcome {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let Some(ing) = self.ingresses.get(ns, name) else {
            self.reported
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(key);
            self.secrets_checked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(key);
            return Ok(None);
        };
        let default = self
            .classes
            .get("", CLASS)
            .is_some_and(|c| is_default_ingress_class(&c));
        let ips = crate::servicelb::node_ips(&self.nodes.all());
        let Some(want) = plan(&ing, default, &ips) else {
            return Ok(None);
        };
        self.report_missing(key, ns, &ing);
        self.report_missing_secrets(key, ns, &ing).await?;
        if want == addresses_of(&ing) {
            return Ok(None);
        }
        let ingress: Vec<BTreeMap<&str, &str>> = want
            .iter()
            .map(|ip| BTreeMap::from([("ip", ip.as_str())]))
            .collect();
        let ingress = if ingress.is_empty() {
            json!(null)
        } else {
            json!(ingress)
        };
        self.client
            .patch_status::<Ingress>(
                Some(ns),
                name,
                &json!({"status": {"loadBalancer": {"ingress": ingress}}}),
            )
            .await?;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingress(class: Option<&str>) -> Ingress {
        let mut v = json!({"metadata": {"name": "i", "namespace": "ns"}, "spec": {}});
        if let Some(c) = class {
            v["spec"]["ingressClassName"] = json!(c);
        }
        serde_json::from_value(v).expect("an ingress")
    }

    #[test]
    fn only_the_built_in_class_gets_the_nodes_addresses() {
        let ips = vec!["192.0.2.1".to_string()];
        assert_eq!(
            plan(&ingress(Some("berth")), false, &ips),
            Some(ips.clone())
        );
        assert_eq!(plan(&ingress(None), true, &ips), Some(ips.clone()));
        assert_eq!(plan(&ingress(None), false, &ips), None);
        assert_eq!(plan(&ingress(Some("nginx")), true, &ips), None);
    }
}

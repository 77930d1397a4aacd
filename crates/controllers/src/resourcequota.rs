//! The resource quota controller: writes each ResourceQuota's `status.hard` and `status.used`
//! (what `kubectl describe quota` shows), from the pods that run in its namespace and the
//! number of objects of each counted kind. Admission enforces quotas from live counts; this
//! status is the report.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use api::k8s_openapi::api::core::v1::{Pod, ResourceQuota, ResourceQuotaStatus};
use api::k8s_openapi::apimachinery::pkg::api::resource::Quantity as Q;
use api::quantity::Quantity;
use client::{Client, ClientError, ListParams, collection_path};

use crate::harness::{Outcome, Queue, Reconciler};
use crate::mirror::{Mirror, key_of};
use crate::owned;

/// Object counts are read from the API server; they are refreshed this often.
const RESYNC: Duration = Duration::from_secs(10);

pub struct ResourceQuotaController {
    client: Client,
    quotas: Arc<Mirror<ResourceQuota>>,
    pods: Arc<Mirror<Pod>>,
    queue: Queue,
}

impl ResourceQuotaController {
    pub fn new(
        client: Client,
        quotas: Arc<Mirror<ResourceQuota>>,
        pods: Arc<Mirror<Pod>>,
    ) -> ResourceQuotaController {
        let queue = Queue::new("resourcequota-controller");
        let q = queue.clone();
        quotas.on_change(move |_, new| {
            if let Some(x) = new {
                q.add(&key_of(&x.metadata));
            }
        });
        let q = queue.clone();
        let all = quotas.clone();
        pods.on_change(move |old, new| {
            let Some(p) = new.or(old) else { return };
            let ns = p.metadata.namespace.as_deref().unwrap_or("");
            for x in all.in_namespace(ns) {
                q.add(&key_of(&x.metadata));
            }
        });
        ResourceQuotaController {
            client,
            quotas,
            pods,
            queue,
        }
    }

    /// The queue its change handlers feed.
    pub fn queue(&self) -> Queue {
        self.queue.clone()
    }

    async fn reconcile(&self, key: &str) -> Result<bool, ClientError> {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let Some(quota) = self.quotas.get(ns, name) else {
            return Ok(false);
        };
        let hard = quota
            .spec
            .as_ref()
            .and_then(|s| s.hard.clone())
            .unwrap_or_default();
        let mut pods_used: BTreeMap<String, Quantity> = BTreeMap::new();
        for p in self.pods.in_namespace(ns) {
            if owned::is_terminal(&p) {
                continue;
            }
            if let Some(spec) = &p.spec {
                for (k, v) in api::quota::pod_usage(spec) {
                    let e = pods_used.entry(k).or_insert(Quantity::ZERO);
                    *e = e.checked_add(v).unwrap_or(*e);
                }
            }
        }
        let mut used: BTreeMap<String, Q> = BTreeMap::new();
        for k in hard.keys() {
            let counted = k.strip_prefix("count/").map(str::to_string).or_else(|| {
                matches!(
                    k.as_str(),
                    "services" | "configmaps" | "secrets" | "resourcequotas"
                )
                .then(|| k.clone())
            });
            let value = match counted.filter(|c| c != "pods") {
                Some(what) => {
                    let (plural, group) = what.split_once('.').unwrap_or((what.as_str(), ""));
                    let r = api::resources::all()
                        .iter()
                        .find(|r| r.plural == plural && r.group == group);
                    match r {
                        Some(r) => {
                            let (items, _) = self
                                .client
                                .list_at(&collection_path(r, Some(ns)), &ListParams::default())
                                .await?;
                            Quantity::from_units(items.len() as i64)
                        }
                        None => Quantity::ZERO,
                    }
                }
                None => pods_used.get(k).copied().unwrap_or(Quantity::ZERO),
            };
            used.insert(k.clone(), Q(api::quota::format(k, value)));
        }
        let status = ResourceQuotaStatus {
            hard: Some(hard),
            used: Some(used),
        };
        if quota.status.as_ref() != Some(&status) {
            let v = serde_json::to_value(&status).unwrap_or_default();
            match self
                .client
                .put_status::<ResourceQuota>(Some(ns), name, &v)
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

#[async_trait::async_trait]
impl Reconciler for ResourceQuotaController {
    fn name(&self) -> &'static str {
        "resourcequota-controller"
    }

    async fn ready(&self) {
        self.quotas.synced().await;
        self.pods.synced().await;
    }

    async fn reconcile(&self, key: &str) -> Outcome {
        // Counts of other kinds are read from the API server: refreshed now and then.
        let again = ResourceQuotaController::reconcile(self, key).await?;
        Ok(again.then_some(RESYNC))
    }
}

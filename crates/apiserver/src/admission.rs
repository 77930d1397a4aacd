//! Admission that reads other objects, after a new object has been decoded, defaulted and
//! validated: a pod's priority from its PriorityClass, its containers' defaults and bounds
//! from the namespace's LimitRanges, and every create against the namespace's ResourceQuotas
//! (Borg's rule: quota decides what is admitted). Creates in a namespace with quotas are
//! admitted one at a time, each against a cache that holds every write acknowledged before,
//! so two creates cannot both take the last of a quota.

use std::collections::BTreeMap;
use std::sync::Arc;

use api::Resource;
use api::k8s_openapi::api::core::v1::{LimitRange, PodSpec, ResourceQuota};
use api::quantity::Quantity;
use serde_json::{Value, json};

use crate::errors::{ApiError, ApiResult};
use crate::server::ApiServer;

/// Quota names for counting objects of a resource: `count/deployments.apps`, and for a few
/// core kinds their older names (`services`, `configmaps`, ...).
fn count_keys(r: &Resource) -> Vec<String> {
    let mut keys = vec![if r.group.is_empty() {
        format!("count/{}", r.plural)
    } else {
        format!("count/{}.{}", r.plural, r.group)
    }];
    if r.group.is_empty()
        && matches!(
            r.plural,
            "pods" | "services" | "configmaps" | "secrets" | "resourcequotas"
        )
    {
        keys.push(r.plural.to_string());
    }
    keys
}

/// Kept on a claim while a pod that uses it is on a node.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// Kept on a volume while it is bound.
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";

/// Add `finalizer` to a new object unless it is there.
fn add_finalizer(obj: &mut Value, finalizer: &str) {
    let list = &mut obj["metadata"]["finalizers"];
    if !list.is_array() {
        *list = Value::Array(Vec::new());
    }
    if let Some(a) = list.as_array_mut()
        && !a.iter().any(|f| f == finalizer)
    {
        a.push(Value::from(finalizer));
    }
}

fn forbidden(r: &Resource, name: &str, why: String) -> ApiError {
    let plural = if r.group.is_empty() {
        r.plural.to_string()
    } else {
        format!("{}.{}", r.plural, r.group)
    };
    let mut e = ApiError::forbidden(format!("{plural} \"{name}\" is forbidden: {why}"));
    e.details.name = Some(name.to_string());
    e.details.kind = Some(r.plural.to_string());
    e
}

impl ApiServer {
    /// Every object of `kind` in `namespace` (all, for cluster-scoped kinds), from the cache.
    pub(crate) fn cached(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
    ) -> Vec<Value> {
        let Some(r) = api::resources::by_kind(api_version, kind) else {
            return Vec::new();
        };
        let snap = self.cache.resource(r).snapshot(self.cache.synced());
        match namespace {
            Some(ns) => {
                let prefix = format!("{ns}/");
                snap.items
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(_, e)| e.value())
                    .collect()
            }
            None => snap.items.values().map(|e| e.value()).collect(),
        }
    }

    /// Whether a namespace without LimitRanges in the cache is due for a fresh look.
    fn recheck_due(&self, ns: &str) -> bool {
        const TTL: std::time::Duration = std::time::Duration::from_secs(30);
        let mut seen = self.limit_checks.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        // Forget expired looks, so deleted namespaces do not pile up.
        if seen.len() > 1024 {
            seen.retain(|_, t| now.duration_since(*t) < TTL);
        }
        match seen.get(ns) {
            Some(t) if now.duration_since(*t) < TTL => false,
            _ => {
                seen.insert(ns.to_string(), now);
                true
            }
        }
    }

    /// The lock that serializes creates in a namespace with quotas.
    pub(crate) async fn quota_lock(
        &self,
        namespace: Option<&str>,
    ) -> ApiResult<Option<tokio::sync::OwnedMutexGuard<()>>> {
        let Some(ns) = namespace else { return Ok(None) };
        // Without waiting: a quota created this very moment may be missed, as Kubernetes'
        // informer-fed quota admission may miss it too; creates elsewhere pay nothing.
        if self.cached("v1", "ResourceQuota", Some(ns)).is_empty() {
            return Ok(None);
        }
        let lock = {
            let mut locks = self.quota_locks.lock().unwrap_or_else(|p| p.into_inner());
            locks
                .entry(ns.to_string())
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
                .clone()
        };
        let guard = lock.lock_owned().await;
        // Everything admitted before us is in the cache now.
        self.cache.wait_fresh().await?;
        Ok(Some(guard))
    }

    /// Admission for a new object that needs the cluster's other objects.
    pub(crate) async fn admit_with_context(
        &self,
        r: &'static Resource,
        namespace: Option<&str>,
        obj: &mut Value,
    ) -> ApiResult<()> {
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        if r.kind == "Pod" {
            // A class or range created just before the pod applies to it: when the cache has
            // none, look again once it holds every acknowledged write (for LimitRanges, at
            // most every 30 s per namespace, as Kubernetes' live lookup).
            let class = obj["spec"]["priorityClassName"].as_str().unwrap_or("");
            let class_missing = !class.is_empty()
                && !self
                    .cached("scheduling.k8s.io/v1", "PriorityClass", None)
                    .iter()
                    .any(|c| c["metadata"]["name"] == class);
            let ranges_unknown = namespace.is_some_and(|ns| {
                self.cached("v1", "LimitRange", Some(ns)).is_empty() && self.recheck_due(ns)
            });
            if class_missing || ranges_unknown {
                self.cache.wait_fresh().await?;
            }
            self.admit_priority(r, &name, obj)?;
            self.admit_limits(r, &name, namespace, obj)?;
            self.admit_tolerations(obj)?;
            if let Some(ns) = namespace {
                self.admit_service_account(&name, ns, obj).await?;
            }
        }
        match r.kind {
            "PersistentVolumeClaim" => {
                // A class made default just before the claim applies to it.
                self.cache.wait_fresh().await?;
                self.admit_default_class(obj);
                add_finalizer(obj, PVC_PROTECTION);
            }
            "PersistentVolume" => add_finalizer(obj, PV_PROTECTION),
            "Ingress" => {
                self.cache.wait_fresh().await?;
                self.admit_default_ingress_class(obj);
            }
            _ => {}
        }
        if let Some(ns) = namespace {
            self.admit_quota(r, &name, ns, obj)?;
        }
        Ok(())
    }

    /// A claim grows only when it is bound and its class allows it (Kubernetes'
    /// PersistentVolumeClaimResize admission).
    pub(crate) fn admit_resize(
        &self,
        r: &Resource,
        name: &str,
        new: &Value,
        old: &Value,
    ) -> ApiResult<()> {
        let size = |c: &Value| {
            c["spec"]["resources"]["requests"]["storage"]
                .as_str()
                .and_then(|q| api::quantity::Quantity::parse(q).ok())
                .map(|q| q.milli())
        };
        let (Some(grown), Some(was)) = (size(new), size(old)) else {
            return Ok(());
        };
        if grown <= was {
            return Ok(());
        }
        if old["status"]["phase"] != "Bound" {
            return Err(forbidden(
                r,
                name,
                "Only bound persistent volume claims can be expanded".into(),
            ));
        }
        let class = old["spec"]["storageClassName"].as_str().unwrap_or("");
        let allowed = !class.is_empty()
            && new["spec"]["storageClassName"] == old["spec"]["storageClassName"]
            && self
                .cached("storage.k8s.io/v1", "StorageClass", None)
                .iter()
                .any(|c| c["metadata"]["name"] == class && c["allowVolumeExpansion"] == true);
        if !allowed {
            return Err(forbidden(
                r,
                name,
                "only dynamically provisioned pvc can be resized and the storageclass that \
                 provisions the pvc must support resize"
                    .into(),
            ));
        }
        Ok(())
    }

    /// A claim that names no class gets the default one, if there is one: the newest of those
    /// marked default (Kubernetes' DefaultStorageClass admission). An empty name is a choice
    /// (no class) and stays.
    fn admit_default_class(&self, claim: &mut Value) {
        let beta = api::kinds::storage::BETA_CLASS_ANNOTATION;
        if !claim["spec"]["storageClassName"].is_null()
            || !claim["metadata"]["annotations"][beta].is_null()
        {
            return;
        }
        if let Some(name) = self.default_class(
            "storage.k8s.io/v1",
            "StorageClass",
            &api::kinds::storage::DEFAULT_CLASS_ANNOTATIONS,
        ) {
            claim["spec"]["storageClassName"] = name;
        }
    }

    /// An Ingress created naming no class (neither `ingressClassName` nor the old annotation)
    /// gets the default IngressClass, as Kubernetes' DefaultIngressClass admission does.
    fn admit_default_ingress_class(&self, ingress: &mut Value) {
        if !ingress["spec"]["ingressClassName"].is_null()
            || !ingress["metadata"]["annotations"][api::kinds::more::INGRESS_CLASS_ANNOTATION]
                .is_null()
        {
            return;
        }
        if let Some(name) = self.default_class(
            "networking.k8s.io/v1",
            "IngressClass",
            &[api::kinds::more::DEFAULT_INGRESS_CLASS_ANNOTATION],
        ) {
            ingress["spec"]["ingressClassName"] = name;
        }
    }

    /// The name of the newest class of `kind` marked default by one of `annotations` (ties
    /// go to the lower name), as Kubernetes picks it.
    fn default_class(&self, api_version: &str, kind: &str, annotations: &[&str]) -> Option<Value> {
        let classes = self.cached(api_version, kind, None);
        classes
            .iter()
            .filter(|c| {
                annotations
                    .iter()
                    .any(|a| c["metadata"]["annotations"][*a] == "true")
            })
            .max_by(|a, b| {
                let key = |c: &Value| {
                    (
                        c["metadata"]["creationTimestamp"]
                            .as_str()
                            .unwrap_or("")
                            .to_string(),
                        std::cmp::Reverse(c["metadata"]["name"].as_str().unwrap_or("").to_string()),
                    )
                };
                key(a).cmp(&key(b))
            })
            .map(|c| c["metadata"]["name"].clone())
    }

    /// The not-ready and unreachable tolerations every new pod gets, for as long as this
    /// server is configured to keep pods on such nodes.
    fn admit_tolerations(&self, pod: &mut Value) -> ApiResult<()> {
        let mut tolerations: Vec<api::k8s_openapi::api::core::v1::Toleration> =
            match pod["spec"].get("tolerations") {
                Some(t) if !t.is_null() => serde_json::from_value(t.clone())
                    .map_err(|e| ApiError::internal(e.to_string()))?,
                _ => Vec::new(),
            };
        api::kinds::add_default_tolerations(
            &mut tolerations,
            self.config.default_toleration_seconds,
        );
        pod["spec"]["tolerations"] =
            serde_json::to_value(tolerations).map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(())
    }

    fn admit_priority(&self, r: &Resource, name: &str, pod: &mut Value) -> ApiResult<()> {
        let classes = self.cached("scheduling.k8s.io/v1", "PriorityClass", None);
        let asked = pod["spec"]["priorityClassName"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let class = if asked.is_empty() {
            classes.iter().find(|c| c["globalDefault"] == true)
        } else {
            let found = classes
                .iter()
                .find(|c| c["metadata"]["name"] == asked.as_str());
            if found.is_none() {
                return Err(forbidden(
                    r,
                    name,
                    format!("no PriorityClass with name {asked} was found"),
                ));
            }
            found
        };
        let (value, policy) = match class {
            Some(c) => {
                if asked.is_empty() {
                    pod["spec"]["priorityClassName"] = c["metadata"]["name"].clone();
                }
                (
                    c["value"].as_i64().unwrap_or(0),
                    c["preemptionPolicy"]
                        .as_str()
                        .unwrap_or("PreemptLowerPriority")
                        .to_string(),
                )
            }
            None => (0, "PreemptLowerPriority".to_string()),
        };
        if let Some(given) = pod["spec"]["priority"].as_i64()
            && given != value
        {
            return Err(forbidden(
                r,
                name,
                format!(
                    "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
                ),
            ));
        }
        pod["spec"]["priority"] = json!(value);
        if pod["spec"]["preemptionPolicy"].is_null() {
            pod["spec"]["preemptionPolicy"] = json!(policy);
        }
        Ok(())
    }

    fn admit_limits(
        &self,
        r: &Resource,
        name: &str,
        namespace: Option<&str>,
        pod: &mut Value,
    ) -> ApiResult<()> {
        let ranges: Vec<LimitRange> = self
            .cached("v1", "LimitRange", namespace)
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect();
        if ranges.is_empty() {
            return Ok(());
        }
        let mut spec: PodSpec = serde_json::from_value(pod["spec"].clone())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        api::quota::apply_limit_ranges(&mut spec, &ranges)
            .map_err(|errs| forbidden(r, name, format!("[{}]", errs.join(", "))))?;
        pod["spec"] = serde_json::to_value(spec).map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(())
    }

    fn admit_quota(&self, r: &Resource, name: &str, ns: &str, obj: &Value) -> ApiResult<()> {
        let quotas: Vec<ResourceQuota> = self
            .cached("v1", "ResourceQuota", Some(ns))
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect();
        if quotas.is_empty() {
            return Ok(());
        }
        // What this object asks, and what the namespace uses already.
        let mut requested: BTreeMap<String, Quantity> = BTreeMap::new();
        let mut used: BTreeMap<String, Quantity> = BTreeMap::new();
        let keys = count_keys(r);
        let existing = self.cached(&r.group_version(), r.kind, Some(ns));
        for k in &keys {
            requested.insert(k.clone(), Quantity::from_units(1));
            used.insert(k.clone(), Quantity::from_units(existing.len() as i64));
        }
        let spec: Option<PodSpec> = if r.kind == "Pod" {
            serde_json::from_value(obj["spec"].clone()).ok()
        } else {
            None
        };
        if let Some(spec) = &spec {
            requested.extend(api::quota::pod_usage(spec));
            // Pods count while they run: finished ones hold nothing.
            let mut pods_used: BTreeMap<String, Quantity> = BTreeMap::new();
            for p in &existing {
                if matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) {
                    continue;
                }
                if let Ok(s) = serde_json::from_value::<PodSpec>(p["spec"].clone()) {
                    for (k, v) in api::quota::pod_usage(&s) {
                        let e = pods_used.entry(k).or_insert(Quantity::ZERO);
                        *e = e.checked_add(v).unwrap_or(*e);
                    }
                }
            }
            used.extend(pods_used);
        }
        for q in &quotas {
            let qname = q.metadata.name.as_deref().unwrap_or("");
            let hard = q
                .spec
                .as_ref()
                .and_then(|s| s.hard.clone())
                .unwrap_or_default();
            if let Some(spec) = &spec
                && let Some(missing) = api::quota::unspecified(&hard, spec)
            {
                return Err(forbidden(
                    r,
                    name,
                    format!("failed quota: {qname}: must specify {missing}"),
                ));
            }
            if let Some(why) = api::quota::exceeds(&hard, &used, &requested) {
                return Err(forbidden(
                    r,
                    name,
                    format!("exceeded quota: {qname}, {why}"),
                ));
            }
        }
        Ok(())
    }
}

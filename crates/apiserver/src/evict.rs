//! `pods/{name}/eviction`: a deletion that respects PodDisruptionBudgets, as `kubectl drain`
//! uses it. A pod covered by a budget with no disruption left is refused with 429 (kubectl
//! retries); otherwise the budget's `disruptionsAllowed` is taken down by one (with
//! compare-and-swap, so two evictions cannot spend the same disruption) and the pod deleted.

use bytes::Bytes;
use http::{Request, StatusCode};
use serde_json::{Value, json};

use crate::errors::{ApiError, ApiResult, Cause};
use crate::request::{Params, Target};
use crate::server::{ApiServer, Identity, Reply, parse_body};
use crate::write::{DeleteOptions, write_opts};

const MAX_ATTEMPTS: usize = 10;

fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

impl ApiServer {
    pub(crate) async fn evict(
        &self,
        t: &Target,
        name: &str,
        req: &Request<Bytes>,
        params: &Params,
        who: &Identity,
    ) -> ApiResult<Reply> {
        let r = t.resource;
        let opts = write_opts(req, params, who)?;
        let body = parse_body(req, false)?;
        if let Some(n) = body["metadata"]["name"].as_str()
            && !n.is_empty()
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "name in URL does not match name in Eviction object ({n} != {name})"
            )));
        }
        let del = DeleteOptions::from_value(&body["deleteOptions"], params)?;
        let ns = t.namespace.clone().unwrap_or_default();
        let pdb_r = api::resources::by_kind("policy/v1", "PodDisruptionBudget")
            .ok_or_else(|| ApiError::internal("PodDisruptionBudgets are not served"))?;
        for _ in 0..MAX_ATTEMPTS {
            let pod = self.fresh(t, name).await?.value();
            let phase = pod["status"]["phase"].as_str().unwrap_or("");
            // Finished or never-started pods disrupt nothing.
            let ignore_budgets = matches!(phase, "Succeeded" | "Failed" | "Pending")
                || !pod["metadata"]["deletionTimestamp"].is_null();
            let labels = pod["metadata"]["labels"].clone();
            let labels: std::collections::BTreeMap<String, String> =
                serde_json::from_value(labels).unwrap_or_default();
            let snap = self.cache.resource(pdb_r).snapshot(self.cache.synced());
            let prefix = format!("{ns}/");
            let budgets: Vec<(Value, u64)> = snap
                .items
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(_, e)| (e.value(), e.rev))
                .filter(|(b, _)| {
                    let sel = serde_json::from_value(b["spec"]["selector"].clone()).ok();
                    api::selector::LabelSelectorExpr::from_object(sel.as_ref())
                        .is_ok_and(|s| !s.is_everything() && s.matches(&labels))
                })
                .collect();
            if !ignore_budgets && budgets.len() > 1 {
                return Err(ApiError::internal(
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                ));
            }
            if let (false, Some((pdb, rev))) = (ignore_budgets, budgets.first()) {
                let pdb_name = pdb["metadata"]["name"].as_str().unwrap_or("").to_string();
                let generation = pdb["metadata"]["generation"].as_i64().unwrap_or(0);
                let observed = pdb["status"]["observedGeneration"].as_i64().unwrap_or(0);
                let allowed = pdb["status"]["disruptionsAllowed"].as_i64().unwrap_or(0);
                let healthy = pdb["status"]["currentHealthy"].as_i64().unwrap_or(0);
                let desired = pdb["status"]["desiredHealthy"].as_i64().unwrap_or(0);
                let always = pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow";
                // An unready pod may go if the budget is met without it (or the policy says so).
                let unhealthy_ok = !pod_ready(&pod) && (always || healthy >= desired);
                if !unhealthy_ok {
                    if observed < generation {
                        return Err(too_many_requests(
                            "Cannot evict pod as it would violate the pod's disruption budget.",
                            &format!(
                                "The disruption budget {pdb_name} is still being processed by the server."
                            ),
                        ));
                    }
                    if allowed <= 0 {
                        return Err(too_many_requests(
                            "Cannot evict pod as it would violate the pod's disruption budget.",
                            &format!(
                                "The disruption budget {pdb_name} needs {desired} healthy pods and has {healthy} currently"
                            ),
                        ));
                    }
                    // Spend one disruption, only if the budget has not changed meanwhile.
                    let mut spent = pdb.clone();
                    spent["status"]["disruptionsAllowed"] = json!(allowed - 1);
                    let now = jiff::Timestamp::now()
                        .strftime("%Y-%m-%dT%H:%M:%SZ")
                        .to_string();
                    spent["status"]["disruptedPods"][name] = json!(now);
                    let pdb_t = Target {
                        resource: pdb_r,
                        namespace: Some(ns.clone()),
                        name: Some(pdb_name.clone()),
                        subresource: Some("status".into()),
                        view: None,
                    };
                    if !opts.dry_run()
                        && !self
                            .write_status_at(&pdb_t, &pdb_name, spent, *rev, &opts)
                            .await?
                    {
                        continue;
                    }
                }
            }
            let target = Target {
                resource: r,
                namespace: Some(ns.clone()),
                name: Some(name.to_string()),
                subresource: None,
                view: None,
            };
            self.delete_object(&target, name, &opts, &del).await?;
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Success", "code": 201});
            return Ok(Reply::json(StatusCode::CREATED, &status));
        }
        Err(ApiError::unavailable(
            "the disruption budget kept changing; try again",
        ))
    }
}

fn too_many_requests(message: &str, cause: &str) -> ApiError {
    let mut e = ApiError::unavailable(message);
    e.code = 429;
    e.reason = "TooManyRequests";
    e.details.causes.push(Cause {
        reason: "DisruptionBudget".into(),
        message: cause.into(),
        field: None,
    });
    e
}

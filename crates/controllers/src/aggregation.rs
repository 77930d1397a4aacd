//! The cluster role aggregation controller: a ClusterRole with an `aggregationRule` gets as
//! its rules those of every other ClusterRole its selectors pick (in name order, each rule
//! once), so `admin`, `edit` and `view` grow with the roles labelled to join them.

use std::sync::Arc;

use api::k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use api::selector::LabelSelectorExpr;
use client::{Client, ClientError};

use crate::harness::{Outcome, Queue, Reconciler};
use crate::mirror::Mirror;

pub struct AggregationController {
    client: Client,
    roles: Arc<Mirror<ClusterRole>>,
    queue: Queue,
}

/// The rules `target` aggregates from `roles` (pure).
pub fn aggregate(target: &ClusterRole, roles: &[Arc<ClusterRole>]) -> Vec<PolicyRule> {
    let mut rules: Vec<PolicyRule> = Vec::new();
    let selectors = target
        .aggregation_rule
        .as_ref()
        .and_then(|a| a.cluster_role_selectors.as_deref())
        .unwrap_or_default();
    let mut sorted: Vec<&Arc<ClusterRole>> = roles.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for sel in selectors {
        // A selector that cannot be read (or selects everything) picks nothing.
        let Ok(sel) = LabelSelectorExpr::from_object(Some(sel)) else {
            continue;
        };
        if sel.is_everything() {
            continue;
        }
        for role in &sorted {
            if role.metadata.name == target.metadata.name {
                continue;
            }
            if !sel.matches(&role.metadata.labels.clone().unwrap_or_default()) {
                continue;
            }
            for r in role.rules.iter().flatten() {
                if !rules.contains(r) {
                    rules.push(r.clone());
                }
            }
        }
    }
    rules
}

impl AggregationController {
    pub fn new(client: Client, roles: Arc<Mirror<ClusterRole>>) -> AggregationController {
        let queue = Queue::new("clusterrole-aggregation-controller");
        let q = queue.clone();
        let all = roles.clone();
        // Any change may feed any aggregated role; there are few of them.
        roles.on_change(move |_, _| {
            for r in all.all() {
                if r.aggregation_rule.is_some() {
                    q.add(r.metadata.name.as_deref().unwrap_or(""));
                }
            }
        });
        AggregationController {
            client,
            roles,
            queue,
        }
    }

    pub fn queue(&self) -> Queue {
        self.queue.clone()
    }

    async fn reconcile(&self, name: &str) -> Result<Option<std::time::Duration>, ClientError> {
        let Some(role) = self.roles.get("", name) else {
            return Ok(None);
        };
        if role.aggregation_rule.is_none() {
            return Ok(None);
        }
        let rules = aggregate(&role, &self.roles.all());
        if role.rules.as_deref().unwrap_or_default() == rules.as_slice() {
            return Ok(None);
        }
        let mut new = (*role).clone();
        new.rules = Some(rules);
        match self.client.replace(None, name, &new).await {
            Ok(_) => Ok(None),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[async_trait::async_trait]
impl Reconciler for AggregationController {
    fn name(&self) -> &'static str {
        "clusterrole-aggregation-controller"
    }

    async fn ready(&self) {
        self.roles.synced().await;
    }

    async fn reconcile(&self, key: &str) -> Outcome {
        AggregationController::reconcile(self, key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn role(v: serde_json::Value) -> Arc<ClusterRole> {
        Arc::new(serde_json::from_value(v).expect("a cluster role"))
    }

    #[test]
    fn aggregated_roles_take_selected_rules_in_name_order_once() {
        let target = role(
            json!({"metadata": {"name": "view", "labels": {"agg": "view"}},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg": "view"}}]}}),
        );
        let b = role(json!({"metadata": {"name": "b", "labels": {"agg": "view"}},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}));
        let a = role(json!({"metadata": {"name": "a", "labels": {"agg": "view"}},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]},
                      {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}));
        let other = role(json!({"metadata": {"name": "c", "labels": {"agg": "edit"}},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}));
        let rules = aggregate(&target, &[b, other, a, target.clone()]);
        let resources: Vec<_> = rules
            .iter()
            .map(|r| r.resources.clone().unwrap_or_default()[0].clone())
            .collect();
        assert_eq!(resources, ["configmaps", "pods"]);
    }
}

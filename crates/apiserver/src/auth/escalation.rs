//! Escalation prevention on RBAC writes: a role may only hold, and a binding may only grant,
//! permissions its writer holds, unless the writer may `escalate` (roles) or `bind` (the
//! role a binding names), as Kubernetes' RBAC storage checks.

use api::Resource;
use api::k8s_openapi::api::rbac::v1::PolicyRule;
use api::rbac::{self, MASTERS, RoleRefKind, Rule};
use serde_json::Value;

use super::Identity;
use super::authz::{Authorizer, RequestAttributes};
use crate::errors::{ApiError, ApiResult};

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

impl Authorizer {
    /// Refuse an RBAC object that would give `who` (or anyone they bind) more than `who`
    /// holds. `obj` is the admitted object.
    pub(crate) fn check_escalation(
        &self,
        r: &Resource,
        obj: &Value,
        old: Option<&Value>,
        who: &Identity,
    ) -> ApiResult<()> {
        if r.group != RBAC_GROUP || who.user.in_group(MASTERS) {
            return Ok(());
        }
        let user = who.user.as_ref();
        let name = obj["metadata"]["name"].as_str().unwrap_or("");
        let namespace = obj["metadata"]["namespace"].as_str().unwrap_or("");
        let refuse = |why: String| ApiError::forbidden_on(r, name, &why);
        let may = |verb: &str, resource: &str, ns: &str, object: &str| {
            let a = RequestAttributes::resource(verb, ns, RBAC_GROUP, resource, "", object);
            self.allowed(&a.borrow(user))
        };
        let wanted: Vec<Rule> = match r.kind {
            "Role" | "ClusterRole" => {
                // Setting or changing an aggregation rule needs every permission (it can
                // gather any role's rules); other edits of an aggregated role do not.
                let aggregated = r.kind == "ClusterRole"
                    && !obj["aggregationRule"].is_null()
                    && old.is_none_or(|o| o["aggregationRule"] != obj["aggregationRule"]);
                if aggregated && !self.holds_everything(who) {
                    return Err(refuse(
                        "must have cluster-admin privileges to use the aggregationRule".into(),
                    ));
                }
                if may("escalate", r.plural, namespace, name) {
                    return Ok(());
                }
                let rules: Vec<PolicyRule> =
                    serde_json::from_value(obj["rules"].clone()).unwrap_or_default();
                rules.iter().map(Rule::from_policy).collect()
            }
            "RoleBinding" | "ClusterRoleBinding" => {
                let role = obj["roleRef"]["name"].as_str().unwrap_or("");
                let (kind, plural) = match obj["roleRef"]["kind"].as_str() {
                    Some("Role") => (RoleRefKind::Role, "roles"),
                    _ => (RoleRefKind::ClusterRole, "clusterroles"),
                };
                if may("bind", plural, namespace, role) {
                    return Ok(());
                }
                match self.role_rules(kind, namespace, role) {
                    Some(rules) => rules.to_vec(),
                    None => {
                        return Err(refuse(format!(
                            "{plural}.rbac.authorization.k8s.io \"{role}\" not found"
                        )));
                    }
                }
            }
            _ => return Ok(()),
        };
        let (held, errors) = self.rules_for(user, namespace);
        let held: Vec<&Rule> = held.iter().collect();
        let missing = rbac::covers(&held, &wanted);
        if missing.is_empty() {
            return Ok(());
        }
        let groups = user
            .groups
            .iter()
            .map(|g| format!("{g:?}"))
            .collect::<Vec<_>>()
            .join(" ");
        let mut why = format!(
            "user {:?} (groups=[{groups}]) is attempting to grant RBAC permissions not currently held:\n{}",
            user.name,
            missing
                .iter()
                .map(rbac::describe_rule)
                .collect::<Vec<_>>()
                .join("\n")
        );
        if !errors.is_empty() {
            why.push_str(&format!("; resolution errors: [{}]", errors.join(", ")));
        }
        Err(refuse(why))
    }

    /// Whether `who` holds every permission everywhere (what cluster-admin grants).
    fn holds_everything(&self, who: &Identity) -> bool {
        let all = vec!["*".to_string()];
        let everything = [
            Rule {
                verbs: all.clone(),
                api_groups: all.clone(),
                resources: all.clone(),
                ..Rule::default()
            },
            Rule {
                verbs: all.clone(),
                non_resource_urls: all,
                ..Rule::default()
            },
        ];
        let (held, _) = self.rules_for(&who.user, "");
        let held: Vec<&Rule> = held.iter().collect();
        rbac::covers(&held, &everything).is_empty()
    }
}

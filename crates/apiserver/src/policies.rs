//! ValidatingAdmissionPolicies (admissionregistration.k8s.io/v1): CEL validations run in the
//! API server, no webhook. A policy applies to a write through each binding that names it,
//! when both the policy's `matchConstraints` and the binding's `matchResources` choose the
//! write and its `matchConditions` hold; its `variables` are bound, its `params` come from
//! the object the binding's `paramRef` names, and a failed validation refuses the write
//! (`Deny`) or warns (`Warn`) as the binding's `validationActions` say.

use api::k8s_openapi::api::admissionregistration::v1::{
    MatchResources, NamedRuleWithOperations, RuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
};
use serde_json::{Map, Value, json};
use tracing::warn;

use crate::errors::{ApiError, ApiResult};
use crate::server::ApiServer;
use crate::webhooks::{Call, labels_of, rules_match, selects};

/// `params_of`'s word for "no params, and that is allowed": skip the binding.
const SKIP: &str = "skip";

fn as_rules(named: &[NamedRuleWithOperations]) -> Vec<RuleWithOperations> {
    named
        .iter()
        .map(|n| RuleWithOperations {
            api_groups: n.api_groups.clone(),
            api_versions: n.api_versions.clone(),
            operations: n.operations.clone(),
            resources: n.resources.clone(),
            scope: n.scope.clone(),
        })
        .collect()
}

/// Whether rules naming resources (and, optionally, object names) choose `c`.
fn named_rules_match(rules: &[NamedRuleWithOperations], c: &Call<'_>) -> bool {
    rules.iter().any(|n| {
        rules_match(&as_rules(std::slice::from_ref(n)), c)
            && n.resource_names
                .as_ref()
                .is_none_or(|names| names.is_empty() || names.iter().any(|x| x == c.name))
    })
}

impl ApiServer {
    /// Whether `m` chooses `c`: its rules (and not its exclusions) and its selectors. A
    /// binding's rules may be left out (`rules_optional`): then its selectors alone narrow
    /// what its policy matches.
    fn resources_match(&self, m: &MatchResources, c: &Call<'_>, rules_optional: bool) -> bool {
        let rules = m.resource_rules.as_deref().unwrap_or_default();
        let chosen_by_rules = (rules_optional && rules.is_empty()) || named_rules_match(rules, c);
        if !chosen_by_rules {
            return false;
        }
        if named_rules_match(m.exclude_resource_rules.as_deref().unwrap_or_default(), c) {
            return false;
        }
        let object = c.object.or(c.old);
        if c.resource.namespaced {
            let namespaces = api::resources::find("", "v1", "namespaces").expect("served");
            let labels = self
                .cache
                .resource(namespaces)
                .get(c.namespace.unwrap_or(""))
                .map(|e| e.labels.clone())
                .unwrap_or_default();
            if !selects(m.namespace_selector.as_ref(), &labels) {
                return false;
            }
        }
        selects(m.object_selector.as_ref(), &labels_of(object))
            || (c.old.is_some() && selects(m.object_selector.as_ref(), &labels_of(c.old)))
    }

    /// The object a binding's `paramRef` names, for a policy with a `paramKind`.
    fn params_of(
        &self,
        policy: &ValidatingAdmissionPolicy,
        binding: &ValidatingAdmissionPolicyBinding,
        c: &Call<'_>,
    ) -> Result<Option<Value>, String> {
        let Some(kind) = policy.spec.as_ref().and_then(|s| s.param_kind.as_ref()) else {
            return Ok(None);
        };
        let Some(pref) = binding.spec.as_ref().and_then(|s| s.param_ref.as_ref()) else {
            return Err("the policy has a paramKind but the binding no paramRef".into());
        };
        let av = kind.api_version.as_deref().unwrap_or("");
        let k = kind.kind.as_deref().unwrap_or("");
        let r = self.cache.registry().by_kind(av, k).ok_or_else(|| {
            format!("failed to find resource referenced by paramKind: '{av}, Kind={k}'")
        })?;
        let name = pref.name.as_deref().unwrap_or("");
        let key = if r.namespaced {
            let ns = pref.namespace.as_deref().or(c.namespace).unwrap_or("");
            format!("{ns}/{name}")
        } else {
            name.to_string()
        };
        match self.cache.resource(r).get(&key) {
            Some(e) => Ok(Some(e.value())),
            // Allowed without params: the binding does not apply (its validations are skipped).
            None if pref.parameter_not_found_action.as_deref() == Some("Allow") => {
                Err(SKIP.to_string())
            }
            None => Err(
                "no params found for policy binding with `Deny` parameterNotFoundAction"
                    .to_string(),
            ),
        }
    }

    /// Run the policies bound to `c`. Returns warnings, or the first refusal.
    pub(crate) fn check_policies(&self, c: &Call<'_>) -> ApiResult<Vec<String>> {
        if c.resource.group == "admissionregistration.k8s.io" {
            return Ok(Vec::new());
        }
        let bindings: Vec<ValidatingAdmissionPolicyBinding> =
            self.configurations("validatingadmissionpolicybindings");
        if bindings.is_empty() {
            return Ok(Vec::new());
        }
        let policies: Vec<ValidatingAdmissionPolicy> =
            self.configurations("validatingadmissionpolicies");
        let mut warnings = Vec::new();
        for binding in &bindings {
            let Some(spec) = &binding.spec else { continue };
            let Some(policy) = policies
                .iter()
                .find(|p| p.metadata.name.as_deref() == spec.policy_name.as_deref())
            else {
                continue;
            };
            let Some(pspec) = &policy.spec else { continue };
            let policy_name = policy.metadata.name.as_deref().unwrap_or("");
            let binding_name = binding.metadata.name.as_deref().unwrap_or("");
            let ignore = pspec.failure_policy.as_deref() == Some("Ignore");
            let chosen = pspec
                .match_constraints
                .as_ref()
                .is_some_and(|m| self.resources_match(m, c, false))
                && spec
                    .match_resources
                    .as_ref()
                    .is_none_or(|m| self.resources_match(m, c, true));
            if !chosen {
                continue;
            }
            let failed = |why: String| -> ApiResult<()> {
                if ignore {
                    warn!(policy = policy_name, error = %why, "a policy could not be evaluated; its failure policy ignores it");
                    Ok(())
                } else {
                    Err(ApiError::new(
                        422,
                        "Invalid",
                        format!(
                            "ValidatingAdmissionPolicy '{policy_name}' with binding '{binding_name}' denied request: {why}"
                        ),
                    ))
                }
            };
            let params = match self.params_of(policy, binding, c) {
                Ok(p) => p,
                Err(e) if e == SKIP => continue,
                Err(e) => {
                    failed(e)?;
                    continue;
                }
            };
            let request = json!({
                "operation": c.operation,
                "name": c.name,
                "namespace": c.namespace.unwrap_or(""),
                "kind": {"group": c.resource.group, "version": c.resource.version, "kind": c.resource.kind},
                "resource": {"group": c.resource.group, "version": c.resource.version, "resource": c.resource.plural},
                "subResource": c.subresource.unwrap_or(""),
                "userInfo": {"username": c.user.name, "uid": c.user.uid, "groups": c.user.groups},
                "dryRun": c.dry_run,
            });
            let namespace_object = c.namespace.and_then(|ns| {
                let namespaces = api::resources::find("", "v1", "namespaces")?;
                self.cache.resource(namespaces).get(ns).map(|e| e.value())
            });
            let mut vars: Vec<(String, Value)> = vec![
                ("object".into(), c.object.cloned().unwrap_or(Value::Null)),
                ("oldObject".into(), c.old.cloned().unwrap_or(Value::Null)),
                ("request".into(), request),
                ("params".into(), params.unwrap_or(Value::Null)),
                (
                    "namespaceObject".into(),
                    namespace_object.unwrap_or(Value::Null),
                ),
            ];
            let mut variables = Map::new();
            let mut broken = None;
            for v in pspec.variables.iter().flatten() {
                let mut with = vars.clone();
                with.push(("variables".into(), Value::Object(variables.clone())));
                match api::custom::cel::evaluate(&v.expression, &with) {
                    Ok(value) => {
                        variables.insert(v.name.clone(), value);
                    }
                    Err(e) => {
                        broken = Some(format!("variable {:?}: {e}", v.name));
                        break;
                    }
                }
            }
            if let Some(e) = broken {
                failed(e)?;
                continue;
            }
            vars.push(("variables".into(), Value::Object(variables)));
            let mut skip = false;
            for m in pspec.match_conditions.iter().flatten() {
                match api::custom::cel::evaluate(&m.expression, &vars) {
                    Ok(Value::Bool(true)) => {}
                    Ok(Value::Bool(false)) => {
                        skip = true;
                        break;
                    }
                    Ok(other) => {
                        failed(format!(
                            "match condition {:?} returned {other}, not a bool",
                            m.name
                        ))?;
                        skip = true;
                        break;
                    }
                    Err(e) => {
                        failed(format!("match condition {:?}: {e}", m.name))?;
                        skip = true;
                        break;
                    }
                }
            }
            if skip {
                continue;
            }
            let actions = spec.validation_actions.clone().unwrap_or_default();
            for v in pspec.validations.iter().flatten() {
                let message = match api::custom::cel::evaluate(&v.expression, &vars) {
                    Ok(Value::Bool(true)) => continue,
                    Ok(Value::Bool(false)) => {
                        let from_expression = v
                            .message_expression
                            .as_deref()
                            .filter(|m| !m.is_empty())
                            .and_then(|m| match api::custom::cel::evaluate(m, &vars) {
                                Ok(Value::String(s)) if !s.trim().is_empty() => Some(s),
                                _ => None,
                            });
                        from_expression
                            .or_else(|| v.message.clone().filter(|m| !m.is_empty()))
                            .unwrap_or_else(|| format!("failed expression: {}", v.expression))
                    }
                    Ok(other) => {
                        failed(format!(
                            "expression '{}' resulted in {other}, not a bool",
                            v.expression
                        ))?;
                        continue;
                    }
                    Err(e) => {
                        failed(format!(
                            "expression '{}' resulted in error: {e}",
                            v.expression
                        ))?;
                        continue;
                    }
                };
                if actions.iter().any(|a| a == "Warn") {
                    warnings.push(format!(
                        "Validation failed for ValidatingAdmissionPolicy '{policy_name}' with binding '{binding_name}': {message}"
                    ));
                }
                if actions.iter().any(|a| a == "Deny") {
                    let (code, reason) = match v.reason.as_deref() {
                        Some("Unauthorized") => (401, "Unauthorized"),
                        Some("Forbidden") => (403, "Forbidden"),
                        Some("RequestEntityTooLarge") => (413, "RequestEntityTooLarge"),
                        _ => (422, "Invalid"),
                    };
                    return Err(ApiError::new(
                        code,
                        reason,
                        format!(
                            "ValidatingAdmissionPolicy '{policy_name}' with binding '{binding_name}' denied request: {message}"
                        ),
                    ));
                }
            }
        }
        Ok(warnings)
    }
}

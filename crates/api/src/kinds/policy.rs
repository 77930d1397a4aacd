//! Kinds that govern other objects: PodDisruptionBudgets (policy/v1), PriorityClasses
//! (scheduling.k8s.io/v1), HorizontalPodAutoscalers (autoscaling/v2), ResourceQuotas and
//! LimitRanges (core/v1).

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{LimitRange, ResourceQuota};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::scheduling::v1::PriorityClass;

use super::apps::validate_int_or_percent;
use super::{Kind, default_if_none, default_str};
use crate::errors::{FieldErrors, Path};
use crate::quantity::Quantity;
use crate::selector::LabelSelectorExpr;

/// The highest priority a user's class may have; above it are the system classes.
pub const HIGHEST_USER_PRIORITY: i32 = 1_000_000_000;

impl Kind for PodDisruptionBudget {
    fn validate(&self, _old: Option<&Self>, errs: &mut FieldErrors) {
        let path = Path::root("spec");
        let Some(spec) = &self.spec else { return };
        if spec.min_available.is_some() && spec.max_unavailable.is_some() {
            errs.invalid(
                &path,
                "",
                "minAvailable and maxUnavailable cannot be both set",
            );
        }
        if let Some(v) = &spec.min_available {
            validate_int_or_percent(v, &path.child("minAvailable"), true, errs);
        }
        if let Some(v) = &spec.max_unavailable {
            validate_int_or_percent(v, &path.child("maxUnavailable"), true, errs);
        }
        if let Err(e) = LabelSelectorExpr::from_object(spec.selector.as_ref()) {
            errs.invalid(&path.child("selector"), "", e.to_string());
        }
        if let Some(p) = spec.unhealthy_pod_eviction_policy.as_deref() {
            errs.one_of(
                &path.child("unhealthyPodEvictionPolicy"),
                p,
                &["IfHealthyBudget", "AlwaysAllow"],
            );
        }
    }
}

impl Kind for PriorityClass {
    fn default(&mut self) {
        default_str(&mut self.preemption_policy, "PreemptLowerPriority");
    }

    fn validate(&self, old: Option<&Self>, errs: &mut FieldErrors) {
        let name = self.metadata.name.as_deref().unwrap_or("");
        if !name.starts_with("system-") && self.value > HIGHEST_USER_PRIORITY {
            errs.forbidden(
                &Path::root("value"),
                format!(
                    "maximum allowed value of a user defined priority is {HIGHEST_USER_PRIORITY}"
                ),
            );
        }
        if let Some(p) = self.preemption_policy.as_deref() {
            errs.one_of(
                &Path::root("preemptionPolicy"),
                p,
                &["PreemptLowerPriority", "Never"],
            );
        }
        if let Some(old) = old {
            errs.immutable(&Path::root("value"), &self.value, &old.value);
            errs.immutable(
                &Path::root("preemptionPolicy"),
                &self.preemption_policy,
                &old.preemption_policy,
            );
        }
    }
}

impl Kind for HorizontalPodAutoscaler {
    fn default(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        default_if_none(&mut spec.min_replicas, 1);
        if spec.metrics.as_ref().is_none_or(|m| m.is_empty()) {
            // Kubernetes' default: 80% of the CPU requested.
            spec.metrics = serde_json::from_value(serde_json::json!([{
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}
            }]))
            .ok();
        }
    }

    fn validate(&self, _old: Option<&Self>, errs: &mut FieldErrors) {
        let path = Path::root("spec");
        let Some(spec) = &self.spec else {
            errs.required(&path, "");
            return;
        };
        let target = path.child("scaleTargetRef");
        if spec.scale_target_ref.kind.is_empty() {
            errs.required(&target.child("kind"), "");
        }
        if spec.scale_target_ref.name.is_empty() {
            errs.required(&target.child("name"), "");
        }
        if spec.max_replicas < 1 {
            errs.invalid(
                &path.child("maxReplicas"),
                spec.max_replicas,
                "must be greater than or equal to 1",
            );
        }
        if let Some(min) = spec.min_replicas {
            if min < 1 {
                errs.invalid(
                    &path.child("minReplicas"),
                    min,
                    "must be greater than or equal to 1",
                );
            }
            if min > spec.max_replicas {
                errs.invalid(
                    &path.child("minReplicas"),
                    min,
                    "must be less than or equal to maxReplicas",
                );
            }
        }
    }
}

fn validate_quantities<'a>(
    items: impl Iterator<
        Item = (
            &'a String,
            &'a k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        ),
    >,
    path: &Path,
    errs: &mut FieldErrors,
) {
    for (k, v) in items {
        match Quantity::parse(&v.0) {
            Ok(q) if q.is_negative() => {
                errs.invalid(&path.key(k), &v.0, "must be greater than or equal to 0")
            }
            Ok(_) => {}
            Err(e) => errs.invalid(&path.key(k), &v.0, e.to_string()),
        }
    }
}

impl Kind for ResourceQuota {
    fn validate(&self, _old: Option<&Self>, errs: &mut FieldErrors) {
        if let Some(hard) = self.spec.as_ref().and_then(|s| s.hard.as_ref()) {
            validate_quantities(hard.iter(), &Path::root("spec").child("hard"), errs);
        }
    }
}

impl Kind for LimitRange {
    fn validate(&self, _old: Option<&Self>, errs: &mut FieldErrors) {
        let path = Path::root("spec").child("limits");
        for (i, l) in self
            .spec
            .as_ref()
            .map(|s| s.limits.as_slice())
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let p = path.index(i);
            errs.one_of(
                &p.child("type"),
                &l.type_,
                &["Container", "Pod", "PersistentVolumeClaim"],
            );
            for (field, m) in [
                ("default", &l.default),
                ("defaultRequest", &l.default_request),
                ("max", &l.max),
                ("min", &l.min),
                ("maxLimitRequestRatio", &l.max_limit_request_ratio),
            ] {
                if let Some(m) = m {
                    validate_quantities(m.iter(), &p.child(field), errs);
                }
            }
        }
    }
}

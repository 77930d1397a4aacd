//! apps/v1: Deployments, ReplicaSets, DaemonSets, StatefulSets and the ControllerRevisions
//! that record DaemonSet and StatefulSet templates.

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, DaemonSetUpdateStrategy, Deployment, DeploymentStrategy,
    ReplicaSet, RollingUpdateDaemonSet, RollingUpdateDeployment, RollingUpdateStatefulSetStrategy,
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{PersistentVolumeClaimVolumeSource, PodTemplateSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::pod::{default_pod_spec, validate_template};
use super::{Kind, default_if_none, default_str};
use crate::errors::{FieldErrors, Path};
use crate::selector::LabelSelectorExpr;

pub(crate) fn default_template(t: &mut PodTemplateSpec) {
    default_pod_spec(t.spec.get_or_insert_with(Default::default));
}

/// A controller's selector must be non-empty and select its own template's pods.
pub(crate) fn validate_selector_and_template(
    selector: &LabelSelector,
    template: Option<&PodTemplateSpec>,
    spec: &Path,
    template_path: &Path,
    errs: &mut FieldErrors,
) {
    let sel_path = spec.child("selector");
    let empty = selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|m| m.is_empty());
    if empty {
        errs.required(&sel_path, "");
    } else {
        match LabelSelectorExpr::from_object(Some(selector)) {
            Err(e) => errs.invalid(&sel_path, "", e.to_string()),
            Ok(sel) => {
                let labels = template
                    .and_then(|t| t.metadata.as_ref())
                    .and_then(|m| m.labels.clone())
                    .unwrap_or_default();
                if !sel.matches(&labels) {
                    errs.invalid(
                        &template_path.child("metadata").child("labels"),
                        &labels,
                        "`selector` does not match template `labels`",
                    );
                }
            }
        }
    }
    validate_template(template, template_path, errs);
}

/// A long-running controller's selector and template: the selector picks the template's pods,
/// which must restart always.
fn validate_controller(
    selector: &LabelSelector,
    template: Option<&PodTemplateSpec>,
    spec: &Path,
    errs: &mut FieldErrors,
) {
    let tp = spec.child("template");
    validate_selector_and_template(selector, template, spec, &tp, errs);
    require_restart_always(template, &tp, errs);
}

/// Pods managed by a long-running controller must restart always.
pub(crate) fn require_restart_always(
    template: Option<&PodTemplateSpec>,
    template_path: &Path,
    errs: &mut FieldErrors,
) {
    if let Some(rp) = template
        .and_then(|t| t.spec.as_ref())
        .and_then(|s| s.restart_policy.as_deref())
        && rp != "Always"
    {
        errs.not_supported(
            &template_path.child("spec").child("restartPolicy"),
            rp,
            &["Always"],
        );
    }
}

/// An int or a percentage, not negative, at most 100% where it bounds unavailability.
pub(crate) fn validate_int_or_percent(
    v: &IntOrString,
    path: &Path,
    max_100: bool,
    errs: &mut FieldErrors,
) {
    match v {
        IntOrString::Int(n) if *n < 0 => errs.invalid(path, n, "must be greater than or equal to 0"),
        IntOrString::Int(_) => {}
        IntOrString::String(s) => match s.strip_suffix('%').and_then(|n| n.parse::<i32>().ok()) {
            Some(p) if p < 0 => errs.invalid(path, s, "must be greater than or equal to 0"),
            Some(p) if max_100 && p > 100 => errs.invalid(path, s, "must not be greater than 100%"),
            Some(_) => {}
            None => errs.invalid(path, s, "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%')"),
        },
    }
}

fn is_zero(v: Option<&IntOrString>) -> bool {
    match v {
        None => true,
        Some(IntOrString::Int(n)) => *n == 0,
        Some(IntOrString::String(s)) => s == "0%" || s == "0",
    }
}

impl Kind for Deployment {
    fn default(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        default_if_none(&mut spec.replicas, 1);
        default_if_none(&mut spec.revision_history_limit, 10);
        default_if_none(&mut spec.progress_deadline_seconds, 600);
        let strategy = spec
            .strategy
            .get_or_insert_with(DeploymentStrategy::default);
        default_str(&mut strategy.type_, "RollingUpdate");
        if strategy.type_.as_deref() == Some("RollingUpdate") {
            let ru = strategy
                .rolling_update
                .get_or_insert_with(RollingUpdateDeployment::default);
            default_if_none(&mut ru.max_surge, IntOrString::String("25%".into()));
            default_if_none(&mut ru.max_unavailable, IntOrString::String("25%".into()));
        }
        default_template(&mut spec.template);
    }

    fn validate(&self, old: Option<&Self>, errs: &mut FieldErrors) {
        let path = Path::root("spec");
        let Some(spec) = &self.spec else {
            errs.required(&path, "");
            return;
        };
        validate_controller(&spec.selector, Some(&spec.template), &path, errs);
        errs.non_negative(&path.child("replicas"), spec.replicas.map(i64::from));
        errs.non_negative(
            &path.child("revisionHistoryLimit"),
            spec.revision_history_limit.map(i64::from),
        );
        errs.non_negative(
            &path.child("minReadySeconds"),
            spec.min_ready_seconds.map(i64::from),
        );
        if let (Some(pd), min) = (
            spec.progress_deadline_seconds,
            spec.min_ready_seconds.unwrap_or(0),
        ) && pd <= min
        {
            errs.invalid(
                &path.child("progressDeadlineSeconds"),
                pd,
                "must be greater than minReadySeconds",
            );
        }
        if let Some(strategy) = &spec.strategy {
            let sp = path.child("strategy");
            let ty = strategy.type_.as_deref().unwrap_or("RollingUpdate");
            errs.one_of(&sp.child("type"), ty, &["Recreate", "RollingUpdate"]);
            match (&strategy.rolling_update, ty) {
                (Some(_), "Recreate") => {
                    errs.forbidden(
                        &sp.child("rollingUpdate"),
                        "may not be specified when strategy `type` is 'Recreate'",
                    );
                }
                (Some(ru), _) => {
                    let rp = sp.child("rollingUpdate");
                    if let Some(v) = &ru.max_surge {
                        validate_int_or_percent(v, &rp.child("maxSurge"), false, errs);
                    }
                    if let Some(v) = &ru.max_unavailable {
                        validate_int_or_percent(v, &rp.child("maxUnavailable"), true, errs);
                    }
                    if is_zero(ru.max_surge.as_ref()) && is_zero(ru.max_unavailable.as_ref()) {
                        errs.invalid(
                            &rp.child("maxUnavailable"),
                            0,
                            "may not be 0 when `maxSurge` is 0",
                        );
                    }
                }
                (None, _) => {}
            }
        }
        if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
            errs.immutable(&path.child("selector"), &spec.selector, &old_spec.selector);
        }
    }
}

impl Kind for ReplicaSet {
    fn default(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        default_if_none(&mut spec.replicas, 1);
        if let Some(t) = spec.template.as_mut() {
            default_template(t);
        }
    }

    fn validate(&self, old: Option<&Self>, errs: &mut FieldErrors) {
        let path = Path::root("spec");
        let Some(spec) = &self.spec else {
            errs.required(&path, "");
            return;
        };
        validate_controller(&spec.selector, spec.template.as_ref(), &path, errs);
        errs.non_negative(&path.child("replicas"), spec.replicas.map(i64::from));
        errs.non_negative(
            &path.child("minReadySeconds"),
            spec.min_ready_seconds.map(i64::from),
        );
        if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
            errs.immutable(&path.child("selector"), &spec.selector, &old_spec.selector);
        }
    }
}

impl Kind for DaemonSet {
    fn default(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        default_if_none(&mut spec.revision_history_limit, 10);
        let us = spec
            .update_strategy
            .get_or_insert_with(DaemonSetUpdateStrategy::default);
        default_str(&mut us.type_, "RollingUpdate");
        if us.type_.as_deref() == Some("RollingUpdate") {
            let ru = us
                .rolling_update
                .get_or_insert_with(RollingUpdateDaemonSet::default);
            default_if_none(&mut ru.max_unavailable, IntOrString::Int(1));
            default_if_none(&mut ru.max_surge, IntOrString::Int(0));
        }
        default_template(&mut spec.template);
    }

    fn validate(&self, old: Option<&Self>, errs: &mut FieldErrors) {
        let path = Path::root("spec");
        let Some(spec) = &self.spec else {
            errs.required(&path, "");
            return;
        };
        validate_controller(&spec.selector, Some(&spec.template), &path, errs);
        errs.non_negative(
            &path.child("minReadySeconds"),
            spec.min_ready_seconds.map(i64::from),
        );
        if let Some(us) = &spec.update_strategy {
            let ty = us.type_.as_deref().unwrap_or("RollingUpdate");
            errs.one_of(
                &path.child("updateStrategy").child("type"),
                ty,
                &["OnDelete", "RollingUpdate"],
            );
            if let Some(ru) = &us.rolling_update {
                let rp = path.child("updateStrategy").child("rollingUpdate");
                if let Some(v) = &ru.max_unavailable {
                    validate_int_or_percent(v, &rp.child("maxUnavailable"), true, errs);
                }
                if let Some(v) = &ru.max_surge {
                    validate_int_or_percent(v, &rp.child("maxSurge"), true, errs);
                }
                if is_zero(ru.max_surge.as_ref()) && is_zero(ru.max_unavailable.as_ref()) {
                    errs.invalid(
                        &rp.child("maxUnavailable"),
                        0,
                        "may not be 0 when `maxSurge` is 0",
                    );
                }
            }
        }
        if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
            errs.immutable(&path.child("selector"), &spec.selector, &old_spec.selector);
        }
    }
}

impl Kind for StatefulSet {
    fn default(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        default_if_none(&mut spec.replicas, 1);
        default_if_none(&mut spec.revision_history_limit, 10);
        default_str(&mut spec.pod_management_policy, "OrderedReady");
        let us = spec
            .update_strategy
            .get_or_insert_with(StatefulSetUpdateStrategy::default);
        default_str(&mut us.type_, "RollingUpdate");
        if us.type_.as_deref() == Some("RollingUpdate") {
            let ru = us
                .rolling_update
                .get_or_insert_with(RollingUpdateStatefulSetStrategy::default);
            default_if_none(&mut ru.partition, 0);
        }
        let retention = spec
            .persistent_volume_claim_retention_policy
            .get_or_insert_with(StatefulSetPersistentVolumeClaimRetentionPolicy::default);
        default_str(&mut retention.when_deleted, "Retain");
        default_str(&mut retention.when_scaled, "Retain");
        default_template(&mut spec.template);
        for c in spec.volume_claim_templates.iter_mut().flatten() {
            default_str(
                &mut c.spec.get_or_insert_with(Default::default).volume_mode,
                "Filesystem",
            );
        }
    }

    fn validate(&self, old: Option<&Self>, errs: &mut FieldErrors) {
        let path = Path::root("spec");
        let Some(spec) = &self.spec else {
            errs.required(&path, "");
            return;
        };
        // Containers may mount the claims made from the templates, by the templates' names.
        let mut template = spec.template.clone();
        let claims = spec.volume_claim_templates.as_deref().unwrap_or(&[]);
        if !claims.is_empty() {
            let volumes = template
                .spec
                .get_or_insert_with(Default::default)
                .volumes
                .get_or_insert_with(Vec::new);
            for c in claims {
                let name = c.metadata.name.clone().unwrap_or_default();
                if !volumes.iter().any(|v| v.name == name) {
                    volumes.push(Volume {
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: name.clone(),
                            read_only: None,
                        }),
                        name,
                        ..Default::default()
                    });
                }
            }
        }
        validate_controller(&spec.selector, Some(&template), &path, errs);
        for (i, c) in claims.iter().enumerate() {
            let at = path.child("volumeClaimTemplates").index(i);
            if c.metadata.name.as_deref().is_none_or(str::is_empty) {
                errs.required(&at.child("metadata").child("name"), "");
            }
            match &c.spec {
                Some(s) => super::storage::check_claim_spec(s, &at.child("spec"), errs),
                None => errs.required(&at.child("spec"), ""),
            }
        }
        errs.non_negative(&path.child("replicas"), spec.replicas.map(i64::from));
        if let Some(p) = &spec.pod_management_policy {
            errs.one_of(
                &path.child("podManagementPolicy"),
                p,
                &["OrderedReady", "Parallel"],
            );
        }
        if let Some(us) = &spec.update_strategy {
            let ty = us.type_.as_deref().unwrap_or("RollingUpdate");
            errs.one_of(
                &path.child("updateStrategy").child("type"),
                ty,
                &["OnDelete", "RollingUpdate"],
            );
        }
        if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
            // Only these may change; everything else is fixed at creation.
            let mut a = spec.clone();
            let mut b = old_spec.clone();
            for s in [&mut a, &mut b] {
                s.replicas = None;
                s.ordinals = None;
                s.template = Default::default();
                s.update_strategy = None;
                s.persistent_volume_claim_retention_policy = None;
                s.min_ready_seconds = None;
                s.revision_history_limit = None;
            }
            if a != b {
                errs.forbidden(
                    &path,
                    "updates to statefulset spec for fields other than 'replicas', 'ordinals', \
                     'template', 'updateStrategy', 'revisionHistoryLimit', \
                     'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
                );
            }
        }
    }
}

impl Kind for ControllerRevision {
    fn validate(&self, old: Option<&Self>, errs: &mut FieldErrors) {
        if self.revision < 0 {
            errs.invalid(
                &Path::root("revision"),
                self.revision,
                "must be greater than or equal to 0",
            );
        }
        // What a revision recorded does not change; only its number and metadata may.
        if let Some(old) = old
            && old.data != self.data
        {
            errs.invalid(&Path::root("data"), "", "field is immutable");
        }
    }
}

//! batch/v1: Jobs and CronJobs.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, Job, JobSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::apps::validate_selector_and_template;
use super::pod::{default_pod_spec, validate_template};
use super::{Kind, default_if_none, default_str};
use crate::cron::Schedule;
use crate::errors::{FieldErrors, Path};

/// Labels the server puts on a Job's pods (and selects them by) unless the user chose a
/// selector with `manualSelector: true`.
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
const LEGACY_CONTROLLER_UID_LABEL: &str = "controller-uid";
const LEGACY_JOB_NAME_LABEL: &str = "job-name";

/// The longest CronJob name: Job names append a timestamp suffix of 11 characters.
const CRONJOB_NAME_MAX: usize = 52;

fn default_job_spec(spec: &mut JobSpec) {
    match (spec.completions, spec.parallelism) {
        (None, None) => {
            spec.completions = Some(1);
            spec.parallelism = Some(1);
        }
        (_, None) => spec.parallelism = Some(1),
        _ => {}
    }
    if spec.backoff_limit_per_index.is_none() {
        default_if_none(&mut spec.backoff_limit, 6);
    }
    default_str(&mut spec.completion_mode, "NonIndexed");
    default_if_none(&mut spec.suspend, false);
    if spec.pod_failure_policy.is_none() {
        default_str(&mut spec.pod_replacement_policy, "TerminatingOrFailed");
    }
    default_pod_spec(spec.template.spec.get_or_insert_with(Default::default));
}

fn validate_job_spec(spec: &JobSpec, path: &Path, manual: bool, errs: &mut FieldErrors) {
    let tp = path.child("template");
    if manual {
        match &spec.selector {
            Some(sel) => validate_selector_and_template(sel, Some(&spec.template), path, &tp, errs),
            None => errs.required(&path.child("selector"), ""),
        }
    } else {
        validate_template(Some(&spec.template), &tp, errs);
    }
    match spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
    {
        Some("OnFailure" | "Never") => {}
        Some(rp) => errs.not_supported(
            &tp.child("spec").child("restartPolicy"),
            rp,
            &["OnFailure", "Never"],
        ),
        None => errs.required(
            &tp.child("spec").child("restartPolicy"),
            "valid values: \"OnFailure\", \"Never\"",
        ),
    }
    for (field, v) in [
        ("parallelism", spec.parallelism),
        ("completions", spec.completions),
        ("backoffLimit", spec.backoff_limit),
        ("ttlSecondsAfterFinished", spec.ttl_seconds_after_finished),
    ] {
        errs.non_negative(&path.child(field), v.map(i64::from));
    }
    if let Some(a) = spec.active_deadline_seconds
        && a <= 0
    {
        errs.invalid(
            &path.child("activeDeadlineSeconds"),
            a,
            "must be greater than 0",
        );
    }
    if let Some(m) = &spec.completion_mode {
        errs.one_of(&path.child("completionMode"), m, &["NonIndexed", "Indexed"]);
        if m == "Indexed" && spec.completions.is_none() {
            errs.required(
                &path.child("completions"),
                "when completion mode is Indexed",
            );
        }
    }
}

impl Kind for Job {
    fn prepare_create(&mut self) {
        let uid = self.metadata.uid.clone().unwrap_or_default();
        let name = self.metadata.name.clone().unwrap_or_default();
        let spec = self.spec.get_or_insert_with(Default::default);
        if spec.manual_selector == Some(true) {
            return;
        }
        let labels = spec
            .template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(BTreeMap::new);
        for (k, v) in [
            (CONTROLLER_UID_LABEL, &uid),
            (JOB_NAME_LABEL, &name),
            (LEGACY_CONTROLLER_UID_LABEL, &uid),
            (LEGACY_JOB_NAME_LABEL, &name),
        ] {
            labels.insert(k.to_string(), v.clone());
        }
        spec.selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(CONTROLLER_UID_LABEL.to_string(), uid)])),
            match_expressions: None,
        });
    }

    fn default(&mut self) {
        default_job_spec(self.spec.get_or_insert_with(Default::default));
    }

    fn validate(&self, old: Option<&Self>, errs: &mut FieldErrors) {
        let path = Path::root("spec");
        let Some(spec) = &self.spec else {
            errs.required(&path, "");
            return;
        };
        validate_job_spec(spec, &path, true, errs);
        if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
            errs.immutable(&path.child("selector"), &spec.selector, &old_spec.selector);
            errs.immutable(
                &path.child("completions"),
                &spec.completions,
                &old_spec.completions,
            );
            errs.immutable(
                &path.child("completionMode"),
                &spec.completion_mode,
                &old_spec.completion_mode,
            );
            if spec.template != old_spec.template && old_spec.suspend != Some(true) {
                errs.invalid(&path.child("template"), "", "field is immutable");
            }
        }
    }
}

impl Kind for CronJob {
    fn default(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        default_str(&mut spec.concurrency_policy, "Allow");
        default_if_none(&mut spec.suspend, false);
        default_if_none(&mut spec.successful_jobs_history_limit, 3);
        default_if_none(&mut spec.failed_jobs_history_limit, 1);
        default_job_spec(spec.job_template.spec.get_or_insert_with(Default::default));
    }

    fn validate(&self, _old: Option<&Self>, errs: &mut FieldErrors) {
        if let Some(name) = &self.metadata.name
            && name.len() > CRONJOB_NAME_MAX
        {
            errs.invalid(
                &Path::root("metadata").child("name"),
                name,
                format!("must be no more than {CRONJOB_NAME_MAX} characters"),
            );
        }
        let path = Path::root("spec");
        let Some(spec) = &self.spec else {
            errs.required(&path, "");
            return;
        };
        if spec.schedule.trim().is_empty() {
            errs.required(&path.child("schedule"), "");
        } else if let Err(e) = Schedule::parse(&spec.schedule) {
            errs.invalid(&path.child("schedule"), &spec.schedule, e.to_string());
        }
        if let Some(tz) = spec.time_zone.as_deref()
            && jiff::tz::TimeZone::get(tz).is_err()
        {
            errs.invalid(&path.child("timeZone"), tz, "unknown time zone");
        }
        if let Some(p) = &spec.concurrency_policy {
            errs.one_of(
                &path.child("concurrencyPolicy"),
                p,
                &["Allow", "Forbid", "Replace"],
            );
        }
        errs.non_negative(
            &path.child("startingDeadlineSeconds"),
            spec.starting_deadline_seconds,
        );
        errs.non_negative(
            &path.child("successfulJobsHistoryLimit"),
            spec.successful_jobs_history_limit.map(i64::from),
        );
        errs.non_negative(
            &path.child("failedJobsHistoryLimit"),
            spec.failed_jobs_history_limit.map(i64::from),
        );
        let jp = path.child("jobTemplate").child("spec");
        match &spec.job_template.spec {
            Some(js) => validate_job_spec(js, &jp, js.manual_selector == Some(true), errs),
            None => errs.required(&jp, ""),
        }
    }
}

//! The CronJob controller: at each time the schedule names (on the clocks of `timeZone`, UTC
//! by default) it creates a Job from the template, named after the CronJob and the minute, so
//! a time is never run twice. `concurrencyPolicy` decides what happens while an earlier Job
//! still runs (Allow, Forbid: skip, Replace: delete it first); `startingDeadlineSeconds` drops
//! times missed by more than that; `suspend` pauses. Finished Jobs beyond the success and
//! failure history limits are deleted, oldest first. One writer of the CronJob's status.

use std::sync::Arc;
use std::time::Duration;

use api::cron::Schedule;
use api::k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use api::k8s_openapi::api::core::v1::ObjectReference;
use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use client::{Client, ClientError};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::harness::{Outcome, Queue, Reconciler};
use crate::mirror::{Mirror, key_of};
use crate::owned::{self, controlled_by, controller_of, controller_ref};

const COMPONENT: &str = "cronjob-controller";
const SCHEDULED_AT: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// More missed times than this and the controller says so (and still runs the latest).
const TOO_MANY_MISSED: usize = 100;

pub struct CronJobController {
    client: Client,
    cronjobs: Arc<Mirror<CronJob>>,
    jobs: Arc<Mirror<Job>>,
    queue: Queue,
}

/// The Job's outcome, if it has one.
fn outcome(job: &Job) -> Option<&str> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.status == "True" && (c.type_ == "Complete" || c.type_ == "Failed"))
        .map(|c| c.type_.as_str())
}

fn job_ref(job: &Job) -> ObjectReference {
    owned::reference(job)
}

impl CronJobController {
    pub fn new(
        client: Client,
        cronjobs: Arc<Mirror<CronJob>>,
        jobs: Arc<Mirror<Job>>,
    ) -> CronJobController {
        let queue = Queue::new("cronjob-controller");
        let q = queue.clone();
        cronjobs.on_change(move |_, new| {
            if let Some(c) = new {
                q.add(&key_of(&c.metadata));
            }
        });
        let q = queue.clone();
        jobs.on_change(move |old, new| {
            for j in [old, new].into_iter().flatten() {
                if let Some(r) = controller_of(&j.metadata).filter(|r| r.kind == "CronJob") {
                    let ns = j.metadata.namespace.as_deref().unwrap_or("");
                    q.add(&format!("{ns}/{}", r.name));
                }
            }
        });
        CronJobController {
            client,
            cronjobs,
            jobs,
            queue,
        }
    }

    /// The queue its change handlers feed.
    pub fn queue(&self) -> Queue {
        self.queue.clone()
    }

    async fn reconcile(&self, key: &str) -> Outcome {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let Some(cj) = self.cronjobs.get(ns, name) else {
            return Ok(None);
        };
        let uid = cj.metadata.uid.as_deref();
        let jobs: Vec<Arc<Job>> = self
            .jobs
            .in_namespace(ns)
            .into_iter()
            .filter(|j| controlled_by::<CronJob>(&j.metadata, uid))
            .collect();
        let plan = plan(&cj, jobs, jiff::Timestamp::now());
        self.apply(&cj, key, plan).await
    }

    /// Carry a plan out: old Jobs go, the due Job is made, and the status says so.
    async fn apply(&self, cj: &CronJob, key: &str, plan: Plan) -> Outcome {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        for (kind, reason, message) in &plan.events {
            owned::event(&self.client, COMPONENT, cj, kind, reason, message);
        }
        for n in &plan.trim {
            match self.delete_job(cj, ns, n).await {
                Ok(()) => {}
                Err(e) => warn!(job = %n, error = %e, "could not delete an old job"),
            }
        }
        let mut status = plan.status;
        if let Some(at) = plan.create {
            for n in &plan.replace {
                self.delete_job(cj, ns, n).await?;
            }
            match self.create_job(cj, at).await {
                Ok(job) => {
                    let n = job.metadata.name.clone().unwrap_or_default();
                    owned::event(
                        &self.client,
                        COMPONENT,
                        cj,
                        "Normal",
                        "SuccessfulCreate",
                        &format!("Created job {n}"),
                    );
                    status
                        .active
                        .get_or_insert_with(Vec::new)
                        .push(job_ref(&job));
                }
                // Made already (the mirror lags): the time is done.
                Err(e) if e.code() == Some(409) => {}
                Err(e) => {
                    owned::event(
                        &self.client,
                        COMPONENT,
                        cj,
                        "Warning",
                        "FailedCreate",
                        &format!("Error creating job: {e}"),
                    );
                    return Err(e);
                }
            }
        }
        if Some(&status) != cj.status.as_ref() && status != CronJobStatus::default() {
            let v = serde_json::to_value(&status).unwrap_or_default();
            match self.client.put_status::<CronJob>(Some(ns), name, &v).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(plan.recheck)
    }

    /// Delete one of its Jobs (and, in the background, the Job's pods).
    async fn delete_job(&self, cj: &CronJob, ns: &str, n: &str) -> Result<(), ClientError> {
        let path = format!("/apis/batch/v1/namespaces/{ns}/jobs/{n}");
        let opts = json!({"kind": "DeleteOptions", "apiVersion": "v1",
                          "propagationPolicy": "Background"});
        match self.client.delete_with(&path, &opts).await {
            Ok(()) => {
                let message = format!("Deleted job {n}");
                owned::event(
                    &self.client,
                    COMPONENT,
                    cj,
                    "Normal",
                    "SuccessfulDelete",
                    &message,
                );
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn create_job(&self, cj: &CronJob, at: jiff::Timestamp) -> Result<Job, ClientError> {
        let ns = cj.metadata.namespace.clone().unwrap_or_default();
        let template = cj
            .spec
            .as_ref()
            .map(|s| s.job_template.clone())
            .unwrap_or_default();
        let meta = template.metadata.unwrap_or_default();
        let minutes = at.as_second() / 60;
        let name = format!("{}-{minutes}", cj.metadata.name.as_deref().unwrap_or(""));
        let mut annotations = meta.annotations.unwrap_or_default();
        annotations.insert(SCHEDULED_AT.into(), at.to_string());
        let job = Job {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(ns.clone()),
                labels: meta.labels,
                annotations: Some(annotations),
                owner_references: Some(vec![controller_ref(cj)]),
                ..Default::default()
            },
            spec: template.spec,
            status: None,
        };
        self.client.create(Some(&ns), &job).await
    }
}

/// What the controller intends for one CronJob, decided from what it observed.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Plan {
    /// Finished Jobs beyond the history limits, oldest first: to delete.
    trim: Vec<String>,
    /// Run the Job for this scheduled time.
    create: Option<jiff::Timestamp>,
    /// Running Jobs to delete before (concurrencyPolicy Replace).
    replace: Vec<String>,
    /// Events about the CronJob: type, reason, message.
    events: Vec<(&'static str, String, String)>,
    /// The CronJob's status, without the Job about to be made.
    status: CronJobStatus,
    /// Look again after this long (the next scheduled time).
    recheck: Option<Duration>,
}

/// The CronJob controller's decision for `cj`, whose Jobs are `jobs`, at `now`.
pub(crate) fn plan(cj: &CronJob, mut jobs: Vec<Arc<Job>>, now: jiff::Timestamp) -> Plan {
    let old = cj.status.clone().unwrap_or_default();
    let mut plan = Plan {
        status: old.clone(),
        ..Default::default()
    };
    if cj.metadata.deletion_timestamp.is_some() {
        return plan;
    }
    let spec = cj.spec.clone().unwrap_or_default();
    jobs.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
    });
    let mut last_success = old.last_successful_time.clone();
    for j in &jobs {
        if outcome(j) == Some("Complete") {
            let t = j.status.as_ref().and_then(|s| s.completion_time.clone());
            if t.as_ref().map(|t| t.0) > last_success.as_ref().map(|t| t.0) {
                last_success = t;
            }
        }
    }
    let was_active: Vec<String> = old
        .active
        .iter()
        .flatten()
        .filter_map(|r| r.name.clone())
        .collect();
    for j in &jobs {
        let n = j.metadata.name.clone().unwrap_or_default();
        if let Some(o) = outcome(j)
            && was_active.contains(&n)
        {
            plan.events.push((
                "Normal",
                "SawCompletedJob".into(),
                format!("Saw completed job: {n}, condition: {o}"),
            ));
        }
    }
    let mut active: Vec<ObjectReference> = jobs
        .iter()
        .filter(|j| outcome(j).is_none() && j.metadata.deletion_timestamp.is_none())
        .map(|j| job_ref(j))
        .collect();
    for (kind, limit) in [
        ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
        ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let done: Vec<&Arc<Job>> = jobs
            .iter()
            .filter(|j| outcome(j) == Some(kind) && j.metadata.deletion_timestamp.is_none())
            .collect();
        let excess = done.len().saturating_sub(limit.max(0) as usize);
        plan.trim.extend(
            done.into_iter()
                .take(excess)
                .map(|j| j.metadata.name.clone().unwrap_or_default()),
        );
    }

    let tz = match spec.time_zone.as_deref() {
        Some(z) => match jiff::tz::TimeZone::get(z) {
            Ok(tz) => tz,
            Err(_) => {
                plan.events.push((
                    "Warning",
                    "UnknownTimeZone".into(),
                    format!("invalid timeZone: {z:?}"),
                ));
                return plan;
            }
        },
        None => jiff::tz::TimeZone::UTC,
    };
    let schedule = match Schedule::parse(&spec.schedule) {
        Ok(s) => s,
        Err(e) => {
            plan.events.push((
                "Warning",
                "UnparseableSchedule".into(),
                format!("unparseable schedule: {:?} : {e}", spec.schedule),
            ));
            return plan;
        }
    };
    let since = old
        .last_schedule_time
        .as_ref()
        .or(cj.metadata.creation_timestamp.as_ref())
        .map_or(now, |t| t.0);
    // The latest time due, and how many were missed before it.
    let mut due = None;
    let mut missed = 0;
    let mut t = since;
    while let Some(n) = schedule.next_after(t, &tz) {
        if n > now {
            break;
        }
        due = Some(n);
        missed += 1;
        t = n;
        if missed > 10 * TOO_MANY_MISSED {
            // Long gone by: jump to the recent past.
            t = now - jiff::SignedDuration::from_secs(3600);
        }
    }
    let mut last_schedule = old.last_schedule_time.clone();
    if missed > TOO_MANY_MISSED {
        plan.events.push((
            "Warning",
            "TooManyMissedTimes".into(),
            "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
        ));
    }
    let suspended = spec.suspend.unwrap_or(false);
    if let Some(at) = due
        && !suspended
    {
        let late = spec
            .starting_deadline_seconds
            .is_some_and(|d| at + jiff::SignedDuration::from_secs(d) < now);
        let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
        let name = cj.metadata.name.as_deref().unwrap_or("");
        if late {
            info!(
                cronjob = name,
                "missed the starting deadline; skipping this time"
            );
            last_schedule = Some(Time(at));
        } else if policy == "Forbid" && !active.is_empty() {
            // Wait: the time is taken once the running Job ends, if still in the deadline.
            debug!(cronjob = name, "an earlier job still runs; Forbid");
        } else {
            if policy == "Replace" {
                plan.replace = active.drain(..).filter_map(|r| r.name).collect();
            }
            plan.create = Some(at);
            last_schedule = Some(Time(at));
        }
    }
    plan.status.active = (!active.is_empty()).then_some(active);
    plan.status.last_schedule_time = last_schedule;
    plan.status.last_successful_time = last_success;
    if !suspended {
        // Look again at the next time (or then, while a Forbid waits).
        plan.recheck = schedule.next_after(now, &tz).map(|n| {
            let ms = (n - now).total(jiff::Unit::Millisecond).unwrap_or(0.0);
            Duration::from_millis(ms.max(0.0) as u64 + 50)
        });
    }
    plan
}

#[async_trait::async_trait]
impl Reconciler for CronJobController {
    fn name(&self) -> &'static str {
        "cronjob-controller"
    }

    async fn ready(&self) {
        self.cronjobs.synced().await;
        self.jobs.synced().await;
    }

    async fn reconcile(&self, key: &str) -> Outcome {
        CronJobController::reconcile(self, key).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::Value;

    use super::*;

    /// 12:00:30 UTC: the every-minute schedule was due at 12:00:00.
    fn now() -> jiff::Timestamp {
        "2026-01-01T12:00:30Z".parse().unwrap()
    }

    fn cronjob(spec: Value, status: Value) -> CronJob {
        let mut spec = spec;
        if spec.get("schedule").is_none() {
            spec["schedule"] = json!("* * * * *");
        }
        spec["jobTemplate"] = json!({"spec": {"template": {"spec": {"containers": []}}}});
        serde_json::from_value(json!({
            "metadata": {"name": "cj", "namespace": "ns", "uid": "u1",
                         "creationTimestamp": "2026-01-01T11:59:30Z"},
            "spec": spec, "status": status,
        }))
        .unwrap()
    }

    /// A Job of the CronJob, created at `created`; `outcome` Complete or Failed, or running.
    fn job(name: &str, created: &str, outcome: Option<&str>) -> Arc<Job> {
        let mut j = json!({"metadata": {"name": name, "namespace": "ns", "uid": name,
                                        "creationTimestamp": created}});
        if let Some(o) = outcome {
            j["status"] = json!({"completionTime": created,
                                 "conditions": [{"type": o, "status": "True"}]});
        }
        Arc::new(serde_json::from_value(j).unwrap())
    }

    fn names(refs: &Option<Vec<ObjectReference>>) -> Vec<String> {
        refs.iter()
            .flatten()
            .filter_map(|r| r.name.clone())
            .collect()
    }

    #[test]
    fn a_due_time_makes_a_job_and_the_next_time_is_rechecked() {
        let cj = cronjob(json!({}), json!({}));
        let p = plan(&cj, Vec::new(), now());
        assert_eq!(p.create, Some("2026-01-01T12:00:00Z".parse().unwrap()));
        assert_eq!(
            p.status.last_schedule_time.as_ref().unwrap().0.to_string(),
            "2026-01-01T12:00:00Z"
        );
        let wait = p.recheck.unwrap();
        assert!(
            wait >= Duration::from_secs(30) && wait < Duration::from_secs(31),
            "{wait:?}"
        );
    }

    #[test]
    fn a_time_already_run_is_not_run_again() {
        let cj = cronjob(
            json!({}),
            json!({"lastScheduleTime": "2026-01-01T12:00:00Z"}),
        );
        let p = plan(&cj, Vec::new(), now());
        assert_eq!(p.create, None);
    }

    #[test]
    fn forbid_waits_for_the_running_job_and_replace_deletes_it() {
        let running = || vec![job("cj-1", "2026-01-01T11:59:00Z", None)];
        let forbid = cronjob(json!({"concurrencyPolicy": "Forbid"}), json!({}));
        let p = plan(&forbid, running(), now());
        assert_eq!(p.create, None);
        assert_eq!(names(&p.status.active), ["cj-1"]);
        let replace = cronjob(json!({"concurrencyPolicy": "Replace"}), json!({}));
        let p = plan(&replace, running(), now());
        assert!(p.create.is_some());
        assert_eq!(p.replace, ["cj-1"]);
        assert!(
            p.status.active.is_none(),
            "the new job joins once it is made"
        );
        let allow = cronjob(json!({}), json!({}));
        let p = plan(&allow, running(), now());
        assert!(p.create.is_some() && p.replace.is_empty());
        assert_eq!(names(&p.status.active), ["cj-1"]);
    }

    #[test]
    fn a_time_missed_by_more_than_the_starting_deadline_is_skipped() {
        let cj = cronjob(json!({"startingDeadlineSeconds": 10}), json!({}));
        let p = plan(&cj, Vec::new(), now());
        assert_eq!(p.create, None);
        assert_eq!(
            p.status.last_schedule_time.as_ref().unwrap().0.to_string(),
            "2026-01-01T12:00:00Z",
            "taken, so not tried again"
        );
    }

    #[test]
    fn suspended_cronjobs_make_nothing_and_sleep() {
        let cj = cronjob(json!({"suspend": true}), json!({}));
        let p = plan(&cj, Vec::new(), now());
        assert_eq!((p.create, p.recheck), (None, None));
    }

    #[test]
    fn finished_jobs_beyond_the_history_limits_go_oldest_first() {
        let cj = cronjob(
            json!({"successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 1}),
            json!({"lastScheduleTime": "2026-01-01T12:00:00Z", "active": [{"name": "c"}]}),
        );
        let jobs = vec![
            job("b", "2026-01-01T11:57:00Z", Some("Complete")),
            job("a", "2026-01-01T11:56:00Z", Some("Complete")),
            job("c", "2026-01-01T11:58:00Z", Some("Complete")),
            job("f1", "2026-01-01T11:50:00Z", Some("Failed")),
            job("f2", "2026-01-01T11:51:00Z", Some("Failed")),
        ];
        let p = plan(&cj, jobs, now());
        assert_eq!(p.trim, ["a", "b", "f1"]);
        // c was active: its end is noticed, and it is the last success.
        assert_eq!(
            p.events,
            [(
                "Normal",
                "SawCompletedJob".into(),
                "Saw completed job: c, condition: Complete".into()
            )]
        );
        assert!(p.status.active.is_none());
        assert_eq!(
            p.status.last_successful_time.unwrap().0.to_string(),
            "2026-01-01T11:58:00Z"
        );
    }

    #[test]
    fn bad_schedules_and_time_zones_are_reported_not_run() {
        let cj = cronjob(json!({"schedule": "every minute"}), json!({}));
        let p = plan(&cj, Vec::new(), now());
        assert_eq!(p.create, None);
        assert_eq!(p.events[0].1, "UnparseableSchedule");
        let cj = cronjob(json!({"timeZone": "Mars/Olympus"}), json!({}));
        let p = plan(&cj, Vec::new(), now());
        assert_eq!(p.create, None);
        assert_eq!(p.events[0].1, "UnknownTimeZone");
    }
}

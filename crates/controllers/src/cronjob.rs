//! The CronJob controller: at each time the schedule names (on the clocks of `timeZone`, UTC
//! by default) it creates a Job from the template, named after the CronJob and the minute, so
//! a time is never run twice. `concurrencyPolicy` decides what happens while an earlier Job
//! still runs (Allow, Forbid: skip, Replace: delete it first); `startingDeadlineSeconds` drops
//! times missed by more than that; `suspend` pauses. Finished Jobs beyond the success and
//! failure history limits are deleted, oldest first. One writer of the CronJob's status.

use std::sync::Arc;
use std::time::Duration;

use api::cron::Schedule;
use api::k8s_openapi::api::batch::v1::{CronJob, Job};
use api::k8s_openapi::api::core::v1::ObjectReference;
use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use client::{Client, ClientError};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::mirror::{Mirror, key_of};
use crate::owned::{self, controlled_by, controller_of, controller_ref};
use crate::queue::{self, Queue};

const COMPONENT: &str = "cronjob-controller";
const RETRY: Duration = Duration::from_secs(1);
const SCHEDULED_AT: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// More missed times than this and the controller says so (and still runs the latest).
const TOO_MANY_MISSED: usize = 100;

pub struct CronJobController {
    client: Client,
    cronjobs: Arc<Mirror<CronJob>>,
    jobs: Arc<Mirror<Job>>,
    queue: Queue,
    rx: queue::Receiver,
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
        let (queue, rx) = queue::queue();
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
            rx,
        }
    }

    pub async fn run(mut self) {
        self.cronjobs.synced().await;
        self.jobs.synced().await;
        while let Some(key) = self.rx.next().await {
            match self.reconcile(&key).await {
                Ok(Some(after)) => self.queue.add_after(&key, after),
                Ok(None) => {}
                Err(e) => {
                    debug!(cronjob = %key, error = %e, "reconcile failed; retrying");
                    self.queue.add_after(&key, RETRY);
                }
            }
        }
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ClientError> {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let Some(cj) = self.cronjobs.get(ns, name) else {
            return Ok(None);
        };
        if cj.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let spec = cj.spec.clone().unwrap_or_default();
        let uid = cj.metadata.uid.as_deref();
        let mut jobs: Vec<Arc<Job>> = self
            .jobs
            .in_namespace(ns)
            .into_iter()
            .filter(|j| controlled_by::<CronJob>(&j.metadata, uid))
            .collect();
        jobs.sort_by(|a, b| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
        });
        let old = cj.status.clone().unwrap_or_default();
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
                owned::event(
                    &self.client,
                    COMPONENT,
                    &*cj,
                    "Normal",
                    "SawCompletedJob",
                    &format!("Saw completed job: {n}, condition: {o}"),
                );
            }
        }
        let mut active: Vec<ObjectReference> = jobs
            .iter()
            .filter(|j| outcome(j).is_none() && j.metadata.deletion_timestamp.is_none())
            .map(|j| job_ref(j))
            .collect();
        self.trim_history(&cj, &jobs).await;

        let tz = match spec.time_zone.as_deref() {
            Some(z) => match jiff::tz::TimeZone::get(z) {
                Ok(tz) => tz,
                Err(_) => {
                    owned::event(
                        &self.client,
                        COMPONENT,
                        &*cj,
                        "Warning",
                        "UnknownTimeZone",
                        &format!("invalid timeZone: {z:?}"),
                    );
                    return Ok(None);
                }
            },
            None => jiff::tz::TimeZone::UTC,
        };
        let schedule = match Schedule::parse(&spec.schedule) {
            Ok(s) => s,
            Err(e) => {
                owned::event(
                    &self.client,
                    COMPONENT,
                    &*cj,
                    "Warning",
                    "UnparseableSchedule",
                    &format!("unparseable schedule: {:?} : {e}", spec.schedule),
                );
                return Ok(None);
            }
        };
        let now = jiff::Timestamp::now();
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
            owned::event(
                &self.client,
                COMPONENT,
                &*cj,
                "Warning",
                "TooManyMissedTimes",
                "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
            );
        }
        let suspended = spec.suspend.unwrap_or(false);
        if let Some(at) = due
            && !suspended
        {
            let late = spec
                .starting_deadline_seconds
                .is_some_and(|d| at + jiff::SignedDuration::from_secs(d) < now);
            let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
            if late {
                info!(cronjob = %key, "missed the starting deadline; skipping this time");
                last_schedule = Some(Time(at));
            } else if policy == "Forbid" && !active.is_empty() {
                // Wait: the time is taken once the running Job ends, if still in the deadline.
                debug!(cronjob = %key, "an earlier job still runs; Forbid");
            } else {
                if policy == "Replace" {
                    for r in active.drain(..) {
                        let job_name = r.name.clone().unwrap_or_default();
                        let path = format!("/apis/batch/v1/namespaces/{ns}/jobs/{job_name}");
                        let opts = json!({"kind": "DeleteOptions", "apiVersion": "v1",
                                          "propagationPolicy": "Background"});
                        match self.client.delete_with(&path, &opts).await {
                            Ok(()) | Err(ClientError::Api { code: 404, .. }) => {
                                owned::event(
                                    &self.client,
                                    COMPONENT,
                                    &*cj,
                                    "Normal",
                                    "SuccessfulDelete",
                                    &format!("Deleted job {job_name}"),
                                );
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
                match self.create_job(&cj, at).await {
                    Ok(job) => {
                        let n = job.metadata.name.clone().unwrap_or_default();
                        owned::event(
                            &self.client,
                            COMPONENT,
                            &*cj,
                            "Normal",
                            "SuccessfulCreate",
                            &format!("Created job {n}"),
                        );
                        active.push(job_ref(&job));
                    }
                    // Made already (the mirror lags): the time is done.
                    Err(e) if e.code() == Some(409) => {}
                    Err(e) => {
                        owned::event(
                            &self.client,
                            COMPONENT,
                            &*cj,
                            "Warning",
                            "FailedCreate",
                            &format!("Error creating job: {e}"),
                        );
                        return Err(e);
                    }
                }
                last_schedule = Some(Time(at));
            }
        }
        let mut status = old.clone();
        status.active = (!active.is_empty()).then_some(active);
        status.last_schedule_time = last_schedule;
        status.last_successful_time = last_success;
        if status != old {
            let v = serde_json::to_value(&status).unwrap_or_default();
            match self.client.put_status::<CronJob>(Some(ns), name, &v).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        if suspended {
            return Ok(None);
        }
        // Look again at the next time (or soon, while a Forbid waits).
        let next = schedule.next_after(now, &tz).map(|n| {
            let ms = (n - now).total(jiff::Unit::Millisecond).unwrap_or(0.0);
            Duration::from_millis(ms.max(0.0) as u64 + 50)
        });
        Ok(next)
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

    /// Delete finished Jobs beyond the history limits, oldest first.
    async fn trim_history(&self, cj: &CronJob, jobs: &[Arc<Job>]) {
        let spec = cj.spec.clone().unwrap_or_default();
        for (kind, limit) in [
            ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
            ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
        ] {
            let done: Vec<&Arc<Job>> = jobs
                .iter()
                .filter(|j| outcome(j) == Some(kind) && j.metadata.deletion_timestamp.is_none())
                .collect();
            let excess = done.len().saturating_sub(limit.max(0) as usize);
            for j in done.into_iter().take(excess) {
                let ns = j.metadata.namespace.as_deref().unwrap_or("");
                let n = j.metadata.name.as_deref().unwrap_or("");
                let path = format!("/apis/batch/v1/namespaces/{ns}/jobs/{n}");
                let opts = json!({"kind": "DeleteOptions", "apiVersion": "v1",
                                  "propagationPolicy": "Background"});
                match self.client.delete_with(&path, &opts).await {
                    Ok(()) => owned::event(
                        &self.client,
                        COMPONENT,
                        cj,
                        "Normal",
                        "SuccessfulDelete",
                        &format!("Deleted job {n}"),
                    ),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => warn!(job = n, error = %e, "could not delete an old job"),
                }
            }
        }
    }
}

//! The Job controller: runs a Job's pods until enough succeed (`completions`, or, without it,
//! until one succeeds and the rest finish), `parallelism` at a time, with one pod per index in
//! Indexed mode. Failed pods are replaced after an exponential back-off (10 s doubling, at
//! most 6 min) until `backoffLimit` is passed; `activeDeadlineSeconds` bounds the whole run;
//! `suspend` stops the pods. It is the one writer of the Job's status (counts, start and
//! completion times, the Complete / Failed / Suspended conditions) and deletes finished Jobs
//! after `ttlSecondsAfterFinished`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use api::k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use api::k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use client::{Client, ClientError};
use futures_util::StreamExt;
use serde_json::json;
use tracing::{debug, info};

use crate::mirror::{Mirror, key_of};
use crate::owned::{self, Expectations, controlled_by, controller_of, controller_ref};
use crate::queue::{self, Queue};

const COMPONENT: &str = "job-controller";
const RETRY: Duration = Duration::from_secs(1);
pub const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
const INDEX_LABEL: &str = "batch.kubernetes.io/job-completion-index";
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(360);

pub struct JobController {
    client: Client,
    jobs: Arc<Mirror<Job>>,
    pods: Arc<Mirror<Pod>>,
    expect: Expectations,
    queue: Queue,
    rx: queue::Receiver,
}

fn finished(job: &Job) -> Option<(&'static str, Option<Time>)> {
    for c in job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
    {
        if c.status == "True" {
            match c.type_.as_str() {
                "Complete" => return Some(("Complete", c.last_transition_time.clone())),
                "Failed" => return Some(("Failed", c.last_transition_time.clone())),
                _ => {}
            }
        }
    }
    None
}

fn index_of(p: &Pod) -> Option<i32> {
    p.metadata
        .annotations
        .as_ref()?
        .get(INDEX_ANNOTATION)?
        .parse()
        .ok()
}

/// "0-2,4,6-7": Kubernetes' compact form of a set of indexes.
pub(crate) fn compress(indexes: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut it = indexes.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end = it.next().unwrap_or(end);
        }
        out.push(if end == start {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

fn parse_indexes(s: Option<&str>) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.unwrap_or("").split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

impl JobController {
    pub fn new(client: Client, jobs: Arc<Mirror<Job>>, pods: Arc<Mirror<Pod>>) -> JobController {
        let (queue, rx) = queue::queue();
        let q = queue.clone();
        jobs.on_change(move |_, new| {
            if let Some(j) = new {
                q.add(&key_of(&j.metadata));
            }
        });
        let q = queue.clone();
        pods.on_change(move |old, new| {
            for p in [old, new].into_iter().flatten() {
                if let Some(r) = controller_of(&p.metadata).filter(|r| r.kind == "Job") {
                    let ns = p.metadata.namespace.as_deref().unwrap_or("");
                    q.add(&format!("{ns}/{}", r.name));
                }
            }
        });
        JobController {
            client,
            jobs,
            pods,
            expect: Expectations::default(),
            queue,
            rx,
        }
    }

    pub async fn run(mut self) {
        self.jobs.synced().await;
        self.pods.synced().await;
        while let Some(key) = self.rx.next().await {
            match self.reconcile(&key).await {
                Ok(Some(after)) => self.queue.add_after(&key, after),
                Ok(None) => {}
                Err(e) => {
                    debug!(job = %key, error = %e, "reconcile failed; retrying");
                    self.queue.add_after(&key, RETRY);
                }
            }
        }
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ClientError> {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let Some(job) = self.jobs.get(ns, name) else {
            self.expect.forget(key);
            return Ok(None);
        };
        let now = jiff::Timestamp::now();
        if let Some((_, at)) = finished(&job) {
            return self.expire(&job, at, now).await;
        }
        if job.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let spec = job.spec.clone().unwrap_or_default();
        let uid = job.metadata.uid.as_deref();
        let pods: Vec<Arc<Pod>> = self
            .pods
            .in_namespace(ns)
            .into_iter()
            .filter(|p| controlled_by::<Job>(&p.metadata, uid))
            .collect();
        let old = job.status.clone().unwrap_or_default();
        let indexed = spec.completion_mode.as_deref() == Some("Indexed");
        let on_failure = spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            == Some("OnFailure");
        let active: Vec<&Arc<Pod>> = pods.iter().filter(|p| owned::is_active(p)).collect();
        let terminating = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some() && !owned::is_terminal(p))
            .count() as i32;
        let ready = active.iter().filter(|p| owned::is_ready(p)).count() as i32;
        let succeeded_pods: Vec<&Arc<Pod>> = pods
            .iter()
            .filter(|p| owned::phase(p) == "Succeeded")
            .collect();
        let failed_pods = pods.iter().filter(|p| owned::phase(p) == "Failed").count() as i32;
        let mut done_indexes = parse_indexes(old.completed_indexes.as_deref());
        let completions = spec.completions;
        for p in &succeeded_pods {
            if let Some(i) = index_of(p).filter(|i| completions.is_none_or(|c| *i < c)) {
                done_indexes.insert(i);
            }
        }
        let succeeded = if indexed {
            done_indexes.len() as i32
        } else {
            (succeeded_pods.len() as i32).max(old.succeeded.unwrap_or(0))
        };
        let failed = failed_pods.max(old.failed.unwrap_or(0));
        // With OnFailure the kubelet restarts containers in place: restarts are failures.
        let restarts: i32 = if on_failure {
            active
                .iter()
                .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
                .flatten()
                .map(|c| c.restart_count)
                .sum()
        } else {
            0
        };
        let suspended = spec.suspend.unwrap_or(false);
        let start = old
            .start_time
            .clone()
            .or_else(|| (!suspended).then_some(Time(now)));

        let mut conditions = old.conditions.clone().unwrap_or_default();
        let mut outcome: Option<(&str, &str, String)> = None;
        let parallelism = spec.parallelism.unwrap_or(1).max(0);
        let backoff_limit = spec.backoff_limit.unwrap_or(6);
        if failed + restarts > backoff_limit {
            outcome = Some((
                "Failed",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit".into(),
            ));
        } else if let (Some(deadline), Some(s)) = (spec.active_deadline_seconds, &start)
            && !suspended
            && now >= s.0 + jiff::SignedDuration::from_secs(deadline)
        {
            outcome = Some((
                "Failed",
                "DeadlineExceeded",
                "Job was active longer than specified deadline".into(),
            ));
        } else {
            let complete = match completions {
                Some(c) if indexed => (0..c).all(|i| done_indexes.contains(&i)),
                Some(c) => succeeded >= c,
                None => succeeded > 0 && active.is_empty(),
            };
            if complete {
                outcome = Some((
                    "Complete",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods".into(),
                ));
            }
        }

        let mut recheck: Option<Duration> = None;
        let seen = |n: &str| {
            self.pods
                .get(ns, n)
                .map(|p| p.metadata.deletion_timestamp.is_none())
        };
        let settled = self.expect.satisfied(key, seen);
        if let Some((ty, reason, message)) = &outcome {
            // Finished: whatever still runs is stopped.
            self.delete_pods(key, ns, &active).await;
            if *ty == "Failed" {
                owned::event(&self.client, COMPONENT, &*job, "Warning", reason, message);
            } else {
                owned::event(
                    &self.client,
                    COMPONENT,
                    &*job,
                    "Normal",
                    "Completed",
                    "Job completed",
                );
            }
            let t = owned::now_time();
            if *ty == "Failed" {
                set_condition(&mut conditions, "FailureTarget", reason, message, &t);
            } else {
                set_condition(&mut conditions, "SuccessCriteriaMet", reason, message, &t);
            }
            set_condition(&mut conditions, ty, reason, message, &t);
        } else if suspended {
            self.delete_pods(key, ns, &active).await;
            set_condition(
                &mut conditions,
                "Suspended",
                "JobSuspended",
                "Job suspended",
                &owned::now_time(),
            );
        } else if settled {
            if let Some(c) = conditions
                .iter_mut()
                .find(|c| c.type_ == "Suspended" && c.status == "True")
            {
                c.status = "False".into();
                c.reason = Some("JobResumed".into());
                c.message = Some("Job resumed".into());
                c.last_transition_time = Some(owned::now_time());
            }
            // How many should run now.
            let want_active = match completions {
                Some(c) if indexed => {
                    let running: BTreeSet<i32> =
                        active.iter().filter_map(|p| index_of(p)).collect();
                    let left = (0..c)
                        .filter(|i| !done_indexes.contains(i) && !running.contains(i))
                        .count() as i32;
                    (active.len() as i32 + left).min(parallelism)
                }
                Some(c) => (c - succeeded).min(parallelism).max(0),
                None if succeeded > 0 => 0,
                None => parallelism,
            };
            let have = active.len() as i32;
            if have > want_active {
                let mut extra: Vec<&Arc<Pod>> = active.clone();
                extra.sort_by_key(|p| {
                    (
                        owned::is_ready(p),
                        std::cmp::Reverse(p.metadata.creation_timestamp.clone()),
                    )
                });
                extra.truncate((have - want_active) as usize);
                self.delete_pods(key, ns, &extra).await;
            } else if have < want_active {
                // Replacements for failed pods wait out the back-off.
                let wait = if failed > 0 {
                    let last_failure = pods
                        .iter()
                        .filter(|p| owned::phase(p) == "Failed")
                        .filter_map(|p| finish_time(p))
                        .max();
                    let backoff = BACKOFF_BASE
                        .saturating_mul(2u32.saturating_pow((failed - 1).max(0) as u32))
                        .min(BACKOFF_MAX);
                    last_failure.and_then(|t| {
                        let due = t + jiff::SignedDuration::try_from(backoff).ok()?;
                        (due > now).then(|| {
                            let ms = (due - now).total(jiff::Unit::Millisecond).unwrap_or(0.0);
                            Duration::from_millis(ms.max(0.0) as u64 + 10)
                        })
                    })
                } else {
                    None
                };
                match wait {
                    Some(w) => recheck = Some(w),
                    None => {
                        let indexes: Vec<Option<i32>> = if indexed {
                            let running: BTreeSet<i32> =
                                active.iter().filter_map(|p| index_of(p)).collect();
                            (0..completions.unwrap_or(0))
                                .filter(|i| !done_indexes.contains(i) && !running.contains(i))
                                .take((want_active - have) as usize)
                                .map(Some)
                                .collect()
                        } else {
                            vec![None; (want_active - have) as usize]
                        };
                        self.create_pods(&job, key, &indexes).await;
                    }
                }
            }
            if let Some(deadline) = spec.active_deadline_seconds
                && let Some(s) = &start
            {
                let due = s.0 + jiff::SignedDuration::from_secs(deadline);
                let ms = (due - now).total(jiff::Unit::Millisecond).unwrap_or(0.0);
                let left = Duration::from_millis(ms.max(0.0) as u64 + 10);
                recheck = Some(recheck.map_or(left, |r| r.min(left)));
            }
        }

        let finished_now = outcome.is_some();
        let new = JobStatus {
            active: Some(if finished_now { 0 } else { active.len() as i32 }).filter(|n| *n > 0),
            ready: Some(if finished_now { 0 } else { ready }),
            succeeded: Some(succeeded).filter(|n| *n > 0),
            failed: Some(failed).filter(|n| *n > 0),
            terminating: Some(terminating),
            start_time: start,
            completion_time: match &outcome {
                Some(("Complete", _, _)) => Some(owned::now_time()),
                _ => old.completion_time.clone(),
            },
            completed_indexes: (indexed && !done_indexes.is_empty())
                .then(|| compress(&done_indexes)),
            conditions: (!conditions.is_empty()).then_some(conditions),
            failed_indexes: old.failed_indexes.clone(),
            uncounted_terminated_pods: old.uncounted_terminated_pods.clone(),
        };
        if new != old {
            let status = serde_json::to_value(&new).unwrap_or_default();
            match self.client.put_status::<Job>(Some(ns), name, &status).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(recheck)
    }

    async fn create_pods(&self, job: &Job, key: &str, indexes: &[Option<i32>]) {
        let ns = job.metadata.namespace.clone().unwrap_or_default();
        let name = job.metadata.name.clone().unwrap_or_default();
        let template = job
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let results: Vec<Result<Pod, ClientError>> = futures_util::stream::iter(indexes.to_vec())
            .map(|index| {
                let mut pod = owned::pod_from_template(
                    &template,
                    &ns,
                    Some(match index {
                        Some(i) => format!("{name}-{i}-"),
                        None => format!("{name}-"),
                    }),
                    None,
                    controller_ref(job),
                );
                if let Some(i) = index {
                    pod.metadata
                        .annotations
                        .get_or_insert_with(Default::default)
                        .insert(INDEX_ANNOTATION.into(), i.to_string());
                    pod.metadata
                        .labels
                        .get_or_insert_with(Default::default)
                        .insert(INDEX_LABEL.into(), i.to_string());
                    // The pod learns its index from the environment, as in Kubernetes.
                    if let Some(spec) = pod.spec.as_mut() {
                        for c in spec
                            .containers
                            .iter_mut()
                            .chain(spec.init_containers.iter_mut().flatten())
                        {
                            c.env.get_or_insert_with(Vec::new).push(EnvVar {
                                name: "JOB_COMPLETION_INDEX".into(),
                                value: None,
                                value_from: Some(EnvVarSource {
                                    field_ref: Some(ObjectFieldSelector {
                                        api_version: Some("v1".into()),
                                        field_path: format!(
                                            "metadata.annotations['{INDEX_ANNOTATION}']"
                                        ),
                                    }),
                                    ..Default::default()
                                }),
                            });
                        }
                    }
                }
                let client = self.client.clone();
                let ns = ns.clone();
                async move { client.create(Some(&ns), &pod).await }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        let mut made = Vec::new();
        for r in results {
            match r {
                Ok(p) => {
                    let n = p.metadata.name.unwrap_or_default();
                    owned::event(
                        &self.client,
                        COMPONENT,
                        job,
                        "Normal",
                        "SuccessfulCreate",
                        &format!("Created pod: {n}"),
                    );
                    made.push(n);
                }
                Err(e) => {
                    owned::event(
                        &self.client,
                        COMPONENT,
                        job,
                        "Warning",
                        "FailedCreate",
                        &format!("Error creating: {e}"),
                    );
                }
            }
        }
        self.expect.expect(key, &made, &[]);
    }

    async fn delete_pods(&self, key: &str, ns: &str, pods: &[&Arc<Pod>]) {
        if pods.is_empty() {
            return;
        }
        let names: Vec<String> = pods
            .iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        self.expect.expect(key, &[], &names);
        let client = &self.client;
        futures_util::stream::iter(names)
            .for_each_concurrent(64, |n| async move {
                if let Err(e) = client.delete::<Pod>(Some(ns), &n).await
                    && !e.is_not_found()
                {
                    debug!(pod = %n, error = %e, "could not delete a job's pod");
                }
            })
            .await;
    }

    /// A finished Job goes `ttlSecondsAfterFinished` after it finished, with its pods.
    async fn expire(
        &self,
        job: &Job,
        at: Option<Time>,
        now: jiff::Timestamp,
    ) -> Result<Option<Duration>, ClientError> {
        let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
            return Ok(None);
        };
        if job.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let finished_at = job
            .status
            .as_ref()
            .and_then(|s| s.completion_time.clone())
            .or(at)
            .map_or(now, |t| t.0);
        let due = finished_at + jiff::SignedDuration::from_secs(i64::from(ttl));
        if due > now {
            let ms = (due - now).total(jiff::Unit::Millisecond).unwrap_or(0.0);
            return Ok(Some(Duration::from_millis(ms.max(0.0) as u64 + 10)));
        }
        let ns = job.metadata.namespace.as_deref().unwrap_or("");
        let name = job.metadata.name.as_deref().unwrap_or("");
        info!(job = %format!("{ns}/{name}"), "finished job expired");
        let path = format!("/apis/batch/v1/namespaces/{ns}/jobs/{name}");
        let opts = json!({"kind": "DeleteOptions", "apiVersion": "v1",
            "propagationPolicy": "Foreground", "preconditions": {"uid": job.metadata.uid}});
        match self.client.delete_with(&path, &opts).await {
            Ok(()) => Ok(None),
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn finish_time(p: &Pod) -> Option<jiff::Timestamp> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max()
}

fn set_condition(
    conditions: &mut Vec<JobCondition>,
    ty: &str,
    reason: &str,
    message: &str,
    t: &Time,
) {
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == ty) {
        if c.status == "True" && c.reason.as_deref() == Some(reason) {
            return;
        }
        if c.status != "True" {
            c.last_transition_time = Some(t.clone());
        }
        c.status = "True".into();
        c.reason = Some(reason.into());
        c.message = Some(message.into());
        c.last_probe_time = Some(t.clone());
        return;
    }
    conditions.push(JobCondition {
        type_: ty.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(t.clone()),
        last_transition_time: Some(t.clone()),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_in_compact_form() {
        let s: BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into_iter().collect();
        assert_eq!(compress(&s), "0-2,4,6-7");
        assert_eq!(parse_indexes(Some("0-2,4,6-7")), s);
        assert_eq!(compress(&BTreeSet::new()), "");
    }
}

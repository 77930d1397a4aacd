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

use crate::harness::{Outcome, Queue, Reconciler};
use crate::mirror::{Mirror, key_of};
use crate::owned::{self, Expectations, controlled_by, controller_of, controller_ref};

const COMPONENT: &str = "job-controller";
pub const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
const INDEX_LABEL: &str = "batch.kubernetes.io/job-completion-index";
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(360);

pub struct JobController {
    client: Client,
    /// Deletes finished Jobs past their TTL (Kubernetes' ttl-after-finished controller's
    /// account, which may delete Jobs; the Job controller's may not).
    ttl_client: Client,
    jobs: Arc<Mirror<Job>>,
    pods: Arc<Mirror<Pod>>,
    expect: Expectations,
    queue: Queue,
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
    pub fn new(
        client: Client,
        ttl_client: Client,
        jobs: Arc<Mirror<Job>>,
        pods: Arc<Mirror<Pod>>,
    ) -> JobController {
        let queue = Queue::new("job-controller");
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
            ttl_client,
            jobs,
            pods,
            expect: Expectations::default(),
            queue,
        }
    }

    /// The queue its change handlers feed.
    pub fn queue(&self) -> Queue {
        self.queue.clone()
    }

    async fn reconcile(&self, key: &str) -> Outcome {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let Some(job) = self.jobs.get(ns, name) else {
            self.expect.forget(key);
            return Ok(None);
        };
        let uid = job.metadata.uid.as_deref();
        let pods: Vec<Arc<Pod>> = self
            .pods
            .in_namespace(ns)
            .into_iter()
            .filter(|p| controlled_by::<Job>(&p.metadata, uid))
            .collect();
        let seen = |n: &str| {
            self.pods
                .get(ns, n)
                .map(|p| p.metadata.deletion_timestamp.is_none())
        };
        let settled = self.expect.satisfied(key, seen);
        let plan = plan(&job, &pods, settled, jiff::Timestamp::now());
        self.apply(&job, key, plan).await
    }

    /// Carry a plan out: pods first, then what the Job's status says about them.
    async fn apply(&self, job: &Job, key: &str, plan: Plan) -> Outcome {
        let ns = job.metadata.namespace.as_deref().unwrap_or("");
        let name = job.metadata.name.as_deref().unwrap_or("");
        if plan.expire {
            return self.expire(job).await;
        }
        self.delete_pods(key, ns, &plan.delete).await;
        self.create_pods(job, key, &plan.create).await;
        for (kind, reason, message) in &plan.events {
            owned::event(&self.client, COMPONENT, job, kind, reason, message);
        }
        if let Some(status) = &plan.status {
            let status = serde_json::to_value(status).unwrap_or_default();
            match self.client.put_status::<Job>(Some(ns), name, &status).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(plan.recheck)
    }

    async fn create_pods(&self, job: &Job, key: &str, indexes: &[Option<i32>]) {
        if indexes.is_empty() {
            return;
        }
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

    async fn delete_pods(&self, key: &str, ns: &str, names: &[String]) {
        if names.is_empty() {
            return;
        }
        self.expect.expect(key, &[], names);
        let client = &self.client;
        futures_util::stream::iter(names.iter().cloned())
            .for_each_concurrent(64, |n| async move {
                if let Err(e) = client.delete::<Pod>(Some(ns), &n).await
                    && !e.is_not_found()
                {
                    debug!(pod = %n, error = %e, "could not delete a job's pod");
                }
            })
            .await;
    }

    /// Delete a finished Job whose `ttlSecondsAfterFinished` has passed, with its pods.
    async fn expire(&self, job: &Job) -> Outcome {
        let ns = job.metadata.namespace.as_deref().unwrap_or("");
        let name = job.metadata.name.as_deref().unwrap_or("");
        info!(job = %format!("{ns}/{name}"), "finished job expired");
        let path = format!("/apis/batch/v1/namespaces/{ns}/jobs/{name}");
        let opts = json!({"kind": "DeleteOptions", "apiVersion": "v1",
            "propagationPolicy": "Foreground", "preconditions": {"uid": job.metadata.uid}});
        match self.ttl_client.delete_with(&path, &opts).await {
            Ok(()) => Ok(None),
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// What the controller intends for one Job, decided from what it observed.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Plan {
    /// Pods to create, one per entry: with its completion index in Indexed mode.
    create: Vec<Option<i32>>,
    /// Pods to delete, by name.
    delete: Vec<String>,
    /// Events about the Job: type, reason, message.
    events: Vec<(&'static str, String, String)>,
    /// The Job's new status, if it changed.
    status: Option<JobStatus>,
    /// Delete the Job: it finished and its time to live has passed.
    expire: bool,
    /// Look again after this long (a back-off or a deadline runs out).
    recheck: Option<Duration>,
}

/// How long from `now` until `due` (a little after, so that a recheck finds it passed).
fn until(due: jiff::Timestamp, now: jiff::Timestamp) -> Duration {
    let ms = (due - now).total(jiff::Unit::Millisecond).unwrap_or(0.0);
    Duration::from_millis(ms.max(0.0) as u64 + 10)
}

/// The Job controller's decision for `job`, whose pods are `pods`. `settled`: the pods this
/// controller created or deleted earlier are all seen (it creates and deletes only then).
pub(crate) fn plan(job: &Job, pods: &[Arc<Pod>], settled: bool, now: jiff::Timestamp) -> Plan {
    let mut plan = Plan::default();
    if let Some((_, at)) = finished(job) {
        // Finished: only its time to live is left to watch.
        let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
            return plan;
        };
        if job.metadata.deletion_timestamp.is_some() {
            return plan;
        }
        let finished_at = job
            .status
            .as_ref()
            .and_then(|s| s.completion_time.clone())
            .or(at)
            .map_or(now, |t| t.0);
        let due = finished_at + jiff::SignedDuration::from_secs(i64::from(ttl));
        if due > now {
            plan.recheck = Some(until(due, now));
        } else {
            plan.expire = true;
        }
        return plan;
    }
    if job.metadata.deletion_timestamp.is_some() {
        return plan;
    }
    let spec = job.spec.clone().unwrap_or_default();
    let old = job.status.clone().unwrap_or_default();
    let t = Time(now);
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let on_failure = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    let active: Vec<&Arc<Pod>> = pods.iter().filter(|p| owned::is_active(p)).collect();
    let name_of = |p: &Arc<Pod>| p.metadata.name.clone().unwrap_or_default();
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
        .or_else(|| (!suspended).then(|| t.clone()));

    let mut conditions = old.conditions.clone().unwrap_or_default();
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let outcome: Option<(&str, &str, &str)> = if failed + restarts > backoff_limit {
        Some((
            "Failed",
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        ))
    } else if let (Some(deadline), Some(s)) = (spec.active_deadline_seconds, &start)
        && !suspended
        && now >= s.0 + jiff::SignedDuration::from_secs(deadline)
    {
        Some((
            "Failed",
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        ))
    } else {
        let complete = match completions {
            Some(c) if indexed => (0..c).all(|i| done_indexes.contains(&i)),
            Some(c) => succeeded >= c,
            None => succeeded > 0 && active.is_empty(),
        };
        complete.then_some((
            "Complete",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
        ))
    };

    if let Some((ty, reason, message)) = outcome {
        // Finished: whatever still runs is stopped.
        plan.delete = active.iter().map(|p| name_of(p)).collect();
        if ty == "Failed" {
            plan.events.push(("Warning", reason.into(), message.into()));
            set_condition(&mut conditions, "FailureTarget", reason, message, &t);
        } else {
            plan.events
                .push(("Normal", "Completed".into(), "Job completed".into()));
            set_condition(&mut conditions, "SuccessCriteriaMet", reason, message, &t);
        }
        set_condition(&mut conditions, ty, reason, message, &t);
    } else if suspended {
        plan.delete = active.iter().map(|p| name_of(p)).collect();
        set_condition(
            &mut conditions,
            "Suspended",
            "JobSuspended",
            "Job suspended",
            &t,
        );
    } else if settled {
        if let Some(c) = conditions
            .iter_mut()
            .find(|c| c.type_ == "Suspended" && c.status == "True")
        {
            c.status = "False".into();
            c.reason = Some("JobResumed".into());
            c.message = Some("Job resumed".into());
            c.last_transition_time = Some(t.clone());
        }
        let running: BTreeSet<i32> = active.iter().filter_map(|p| index_of(p)).collect();
        let missing = || {
            (0..completions.unwrap_or(0))
                .filter(|i| !done_indexes.contains(i) && !running.contains(i))
        };
        // How many should run now.
        let want_active = match completions {
            Some(_) if indexed => (active.len() as i32 + missing().count() as i32).min(parallelism),
            Some(c) => (c - succeeded).min(parallelism).max(0),
            None if succeeded > 0 => 0,
            None => parallelism,
        };
        let have = active.len() as i32;
        if have > want_active {
            // The ones that are not ready yet go first, the newest first among them.
            let mut extra: Vec<&Arc<Pod>> = active.clone();
            extra.sort_by_key(|p| {
                (
                    owned::is_ready(p),
                    std::cmp::Reverse(p.metadata.creation_timestamp.clone()),
                )
            });
            extra.truncate((have - want_active) as usize);
            plan.delete = extra.iter().map(|p| name_of(p)).collect();
        } else if have < want_active {
            // Replacements for failed pods wait out the back-off.
            let wait = (failed > 0)
                .then(|| {
                    let last_failure = pods
                        .iter()
                        .filter(|p| owned::phase(p) == "Failed")
                        .filter_map(|p| finish_time(p))
                        .max()?;
                    let backoff = BACKOFF_BASE
                        .saturating_mul(2u32.saturating_pow((failed - 1).max(0) as u32))
                        .min(BACKOFF_MAX);
                    let due = last_failure + jiff::SignedDuration::try_from(backoff).ok()?;
                    (due > now).then(|| until(due, now))
                })
                .flatten();
            match wait {
                Some(w) => plan.recheck = Some(w),
                None if indexed => {
                    plan.create = missing()
                        .take((want_active - have) as usize)
                        .map(Some)
                        .collect();
                }
                None => plan.create = vec![None; (want_active - have) as usize],
            }
        }
        if let Some(deadline) = spec.active_deadline_seconds
            && let Some(s) = &start
        {
            let left = until(s.0 + jiff::SignedDuration::from_secs(deadline), now);
            plan.recheck = Some(plan.recheck.map_or(left, |r| r.min(left)));
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
        completion_time: match outcome {
            Some(("Complete", _, _)) => Some(t.clone()),
            _ => old.completion_time.clone(),
        },
        completed_indexes: (indexed && !done_indexes.is_empty()).then(|| compress(&done_indexes)),
        conditions: (!conditions.is_empty()).then_some(conditions),
        failed_indexes: old.failed_indexes.clone(),
        uncounted_terminated_pods: old.uncounted_terminated_pods.clone(),
    };
    if new != old {
        plan.status = Some(new);
    }
    plan
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

#[async_trait::async_trait]
impl Reconciler for JobController {
    fn name(&self) -> &'static str {
        "job-controller"
    }

    async fn ready(&self) {
        self.jobs.synced().await;
        self.pods.synced().await;
    }

    async fn reconcile(&self, key: &str) -> Outcome {
        JobController::reconcile(self, key).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::Value;

    use super::*;

    const NOW: &str = "2026-01-01T12:00:00Z";

    fn now() -> jiff::Timestamp {
        NOW.parse().unwrap()
    }

    fn ago(secs: i64) -> String {
        (now() - jiff::SignedDuration::from_secs(secs)).to_string()
    }

    fn job(spec: Value, status: Value) -> Job {
        let mut spec = spec;
        spec["template"] = json!({"spec": {"restartPolicy": "Never", "containers": []}});
        serde_json::from_value(json!({
            "metadata": {"name": "j", "namespace": "ns", "uid": "u1"},
            "spec": spec, "status": status,
        }))
        .unwrap()
    }

    /// A pod of the Job: `phase`, created `age` seconds ago, finished `ended` seconds ago.
    fn pod(name: &str, phase: &str, index: Option<i32>, ready: bool) -> Arc<Pod> {
        let mut p = json!({
            "metadata": {"name": name, "namespace": "ns", "creationTimestamp": ago(60)},
            "status": {"phase": phase,
                       "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        });
        if let Some(i) = index {
            p["metadata"]["annotations"] = json!({INDEX_ANNOTATION: i.to_string()});
        }
        if phase == "Failed" || phase == "Succeeded" {
            p["status"]["containerStatuses"] = json!([{"name": "c", "image": "i", "imageID": "",
                "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 1, "finishedAt": ago(5)}}}]);
        }
        Arc::new(serde_json::from_value(p).unwrap())
    }

    fn status(plan: &Plan) -> Value {
        serde_json::to_value(plan.status.as_ref().unwrap()).unwrap()
    }

    fn condition(plan: &Plan, ty: &str) -> Option<Value> {
        status(plan)["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == ty)
            .cloned()
    }

    #[test]
    fn a_new_job_starts_parallelism_pods_and_its_clock() {
        let j = job(json!({"completions": 5, "parallelism": 2}), json!({}));
        let plan = plan(&j, &[], true, now());
        assert_eq!(plan.create, [None, None]);
        assert!(plan.delete.is_empty());
        assert_eq!(status(&plan)["startTime"], NOW);
        assert_eq!(status(&plan)["ready"], 0);
    }

    #[test]
    fn nothing_is_created_or_deleted_until_earlier_writes_are_seen() {
        let j = job(
            json!({"completions": 5, "parallelism": 2}),
            json!({"startTime": NOW}),
        );
        let plan = plan(&j, &[], false, now());
        assert!(plan.create.is_empty() && plan.delete.is_empty());
    }

    #[test]
    fn the_pods_needed_are_completions_left_at_most_parallelism() {
        let j = job(
            json!({"completions": 3, "parallelism": 2}),
            json!({"startTime": NOW}),
        );
        let pods = [
            pod("a", "Succeeded", None, false),
            pod("b", "Succeeded", None, false),
            pod("c", "Running", None, true),
        ];
        // One left to succeed, and one running for it.
        let p = plan(&j, &pods, true, now());
        assert!(p.create.is_empty() && p.delete.is_empty(), "{p:?}");
        assert_eq!(status(&p)["succeeded"], 2);
        assert_eq!(status(&p)["active"], 1);
        assert_eq!(status(&p)["ready"], 1);
        // Parallelism lowered to none: the running one goes.
        let j = job(
            json!({"completions": 3, "parallelism": 0}),
            json!({"startTime": NOW}),
        );
        assert_eq!(plan(&j, &pods, true, now()).delete, ["c"]);
    }

    #[test]
    fn extra_pods_go_not_ready_ones_first() {
        let j = job(json!({"parallelism": 1}), json!({"startTime": NOW}));
        let pods = [
            pod("ready", "Running", None, true),
            pod("starting", "Pending", None, false),
        ];
        assert_eq!(plan(&j, &pods, true, now()).delete, ["starting"]);
    }

    #[test]
    fn enough_successes_complete_the_job_and_stop_the_rest() {
        let j = job(
            json!({"completions": 2, "parallelism": 3}),
            json!({"startTime": NOW}),
        );
        let pods = [
            pod("a", "Succeeded", None, false),
            pod("b", "Succeeded", None, false),
            pod("c", "Running", None, true),
        ];
        let p = plan(&j, &pods, true, now());
        assert_eq!(p.delete, ["c"]);
        assert_eq!(condition(&p, "Complete").unwrap()["status"], "True");
        assert_eq!(
            condition(&p, "SuccessCriteriaMet").unwrap()["reason"],
            "CompletionsReached"
        );
        assert_eq!(status(&p)["completionTime"], NOW);
        assert_eq!(
            p.events,
            [("Normal", "Completed".into(), "Job completed".into())]
        );
        assert!(status(&p).get("active").is_none());
    }

    #[test]
    fn failed_pods_are_replaced_after_their_back_off_then_the_job_fails() {
        let j = job(json!({"backoffLimit": 2}), json!({"startTime": NOW}));
        // One failure, 5 s ago: the replacement waits out the rest of the 10 s back-off.
        let p = plan(&j, &[pod("a", "Failed", None, false)], true, now());
        assert!(p.create.is_empty());
        let wait = p.recheck.unwrap();
        assert!(
            wait > Duration::from_secs(4) && wait <= Duration::from_secs(6),
            "{wait:?}"
        );
        assert_eq!(status(&p)["failed"], 1);
        // Three failures pass a limit of two.
        let pods = [
            pod("a", "Failed", None, false),
            pod("b", "Failed", None, false),
            pod("c", "Failed", None, false),
            pod("d", "Running", None, false),
        ];
        let p = plan(&j, &pods, true, now());
        assert_eq!(p.delete, ["d"]);
        assert_eq!(
            condition(&p, "Failed").unwrap()["reason"],
            "BackoffLimitExceeded"
        );
        assert_eq!(p.events[0].0, "Warning");
    }

    #[test]
    fn an_active_deadline_fails_the_job_and_is_rechecked_until_then() {
        let j = job(
            json!({"activeDeadlineSeconds": 30}),
            json!({"startTime": ago(10)}),
        );
        let running = [pod("a", "Running", None, true)];
        let p = plan(&j, &running, true, now());
        let wait = p.recheck.unwrap();
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(21),
            "{wait:?}"
        );
        let j = job(
            json!({"activeDeadlineSeconds": 30}),
            json!({"startTime": ago(40)}),
        );
        let p = plan(&j, &running, true, now());
        assert_eq!(
            condition(&p, "Failed").unwrap()["reason"],
            "DeadlineExceeded"
        );
        assert_eq!(p.delete, ["a"]);
    }

    #[test]
    fn indexed_jobs_run_the_indexes_neither_done_nor_running() {
        let j = job(
            json!({"completions": 4, "parallelism": 3, "completionMode": "Indexed"}),
            json!({"startTime": NOW}),
        );
        let pods = [
            pod("j-0", "Succeeded", Some(0), false),
            pod("j-2", "Running", Some(2), true),
        ];
        let p = plan(&j, &pods, true, now());
        assert_eq!(p.create, [Some(1), Some(3)]);
        assert_eq!(status(&p)["completedIndexes"], "0");
    }

    #[test]
    fn a_suspended_job_stops_its_pods_and_says_so() {
        let j = job(json!({"suspend": true}), json!({"startTime": NOW}));
        let p = plan(&j, &[pod("a", "Running", None, true)], true, now());
        assert_eq!(p.delete, ["a"]);
        assert_eq!(
            condition(&p, "Suspended").unwrap()["reason"],
            "JobSuspended"
        );
        assert!(p.create.is_empty());
    }

    #[test]
    fn a_finished_job_expires_after_its_time_to_live() {
        let finished = |secs: i64| {
            job(
                json!({"ttlSecondsAfterFinished": 60}),
                json!({"completionTime": ago(secs), "conditions": [
                    {"type": "Complete", "status": "True", "lastTransitionTime": ago(secs)}]}),
            )
        };
        let p = plan(&finished(30), &[], true, now());
        assert!(!p.expire && p.status.is_none());
        let wait = p.recheck.unwrap();
        assert!(
            wait > Duration::from_secs(29) && wait <= Duration::from_secs(31),
            "{wait:?}"
        );
        assert!(plan(&finished(90), &[], true, now()).expire);
    }

    #[test]
    fn a_job_in_its_desired_state_writes_nothing() {
        let j = job(
            json!({"completions": 1}),
            json!({"startTime": NOW, "active": 1, "ready": 1, "terminating": 0}),
        );
        let p = plan(&j, &[pod("a", "Running", None, true)], true, now());
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn completed_indexes_in_compact_form() {
        let s: BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into_iter().collect();
        assert_eq!(compress(&s), "0-2,4,6-7");
        assert_eq!(parse_indexes(Some("0-2,4,6-7")), s);
        assert_eq!(compress(&BTreeSet::new()), "");
    }
}

//! Reconcilers: each watches the objects it cares about and, level-triggered and idempotent,
//! moves the cluster toward what those objects say.

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod gc;
pub mod history;
pub mod hpa;
pub mod job;
pub mod mirror;
pub mod namespace;
pub mod nodelifecycle;
mod owned;
mod queue;
pub mod replicaset;
pub mod resourcequota;
pub mod scheduling;
pub mod statefulset;

use api::k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use api::k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use api::k8s_openapi::api::batch::v1::{CronJob, Job};
use api::k8s_openapi::api::coordination::v1::Lease;
use api::k8s_openapi::api::core::v1::{Node, Pod, ReplicationController, ResourceQuota};
use api::k8s_openapi::api::policy::v1::PodDisruptionBudget;
use client::Client;

use crate::cronjob::CronJobController;
use crate::daemonset::DaemonSetController;
use crate::deployment::DeploymentController;
use crate::disruption::DisruptionController;
use crate::gc::GarbageCollector;
use crate::hpa::HpaController;
use crate::job::JobController;
use crate::mirror::Mirror;
use crate::nodelifecycle::NodeLifecycleController;
use crate::replicaset::ReplicaSetController;
use crate::resourcequota::ResourceQuotaController;
use crate::statefulset::StatefulSetController;

/// Start the workload controllers, node lifecycle and the garbage collector on shared
/// mirrors.
pub fn start_workloads(client: &Client, nodes_cfg: nodelifecycle::Config) {
    let pods = Mirror::<Pod>::new();
    let sets = Mirror::<ReplicaSet>::new();
    let rcs = Mirror::<ReplicationController>::new();
    let deployments = Mirror::<Deployment>::new();
    let daemons = Mirror::<DaemonSet>::new();
    let stateful = Mirror::<StatefulSet>::new();
    let jobs = Mirror::<Job>::new();
    let cronjobs = Mirror::<CronJob>::new();
    let nodes = Mirror::<Node>::new();
    let leases = Mirror::<Lease>::new();
    let budgets = Mirror::<PodDisruptionBudget>::new();
    let quotas = Mirror::<ResourceQuota>::new();
    let hpas = Mirror::<HorizontalPodAutoscaler>::new();
    let revisions = Mirror::<ControllerRevision>::new();
    let c = || client.clone();
    tokio::spawn(ReplicaSetController::new(c(), pods.clone(), sets.clone()).run());
    tokio::spawn(ReplicaSetController::new(c(), pods.clone(), rcs.clone()).run());
    tokio::spawn(
        DeploymentController::new(c(), deployments.clone(), sets.clone(), pods.clone()).run(),
    );
    tokio::spawn(
        DaemonSetController::new(
            c(),
            daemons.clone(),
            pods.clone(),
            nodes.clone(),
            revisions.clone(),
        )
        .run(),
    );
    tokio::spawn(
        StatefulSetController::new(c(), stateful.clone(), pods.clone(), revisions.clone()).run(),
    );
    tokio::spawn(JobController::new(c(), jobs.clone(), pods.clone()).run());
    tokio::spawn(CronJobController::new(c(), cronjobs.clone(), jobs.clone()).run());
    tokio::spawn(
        DisruptionController::new(
            c(),
            budgets.clone(),
            pods.clone(),
            sets.clone(),
            stateful.clone(),
        )
        .run(),
    );
    tokio::spawn(ResourceQuotaController::new(c(), quotas.clone(), pods.clone()).run());
    tokio::spawn(HpaController::new(c(), hpas.clone()).run());
    tokio::spawn(GarbageCollector::new(c()).run());
    tokio::spawn(
        NodeLifecycleController::new(c(), nodes_cfg, nodes.clone(), leases.clone(), pods.clone())
            .run(),
    );
    // Mirrors run last, so that every subscriber hears the first list.
    tokio::spawn(pods.run(c()));
    tokio::spawn(sets.run(c()));
    tokio::spawn(rcs.run(c()));
    tokio::spawn(deployments.run(c()));
    tokio::spawn(daemons.run(c()));
    tokio::spawn(stateful.run(c()));
    tokio::spawn(jobs.run(c()));
    tokio::spawn(cronjobs.run(c()));
    tokio::spawn(nodes.run(c()));
    tokio::spawn(leases.run(c()));
    tokio::spawn(budgets.run(c()));
    tokio::spawn(quotas.run(c()));
    tokio::spawn(hpas.run(c()));
    tokio::spawn(revisions.run(c()));
}

//! Reconcilers: each watches the objects it cares about and, level-triggered and idempotent,
//! moves the cluster toward what those objects say.

pub mod deployment;
pub mod gc;
pub mod mirror;
pub mod namespace;
mod owned;
mod queue;
pub mod replicaset;
pub mod scheduling;

use api::k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use api::k8s_openapi::api::core::v1::Pod;
use client::Client;

use crate::deployment::DeploymentController;
use crate::gc::GarbageCollector;
use crate::mirror::Mirror;
use crate::replicaset::ReplicaSetController;

/// Start the workload controllers and the garbage collector on shared mirrors.
pub fn start_workloads(client: &Client) {
    let pods = Mirror::<Pod>::new();
    let sets = Mirror::<ReplicaSet>::new();
    let deployments = Mirror::<Deployment>::new();
    let rs = ReplicaSetController::new(client.clone(), pods.clone(), sets.clone());
    let dc = DeploymentController::new(
        client.clone(),
        deployments.clone(),
        sets.clone(),
        pods.clone(),
    );
    tokio::spawn(rs.run());
    tokio::spawn(dc.run());
    tokio::spawn(GarbageCollector::new(client.clone()).run());
    // Mirrors run last, so that every subscriber hears the first list.
    tokio::spawn(pods.run(client.clone()));
    tokio::spawn(sets.run(client.clone()));
    tokio::spawn(deployments.run(client.clone()));
}

//! Reconcilers: each watches the objects it cares about and, level-triggered and idempotent,
//! moves the cluster toward what those objects say.

pub mod aggregation;
pub mod cronjob;
pub mod daemonset;
pub mod definitions;
pub mod deployment;
pub mod discovered;
pub mod disruption;
pub mod endpointslice;
pub mod gc;
pub mod harness;
pub mod history;
pub mod hpa;
pub mod ingressstatus;
pub mod job;
pub mod leader;
pub mod mirror;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
mod owned;
pub mod replicaset;
pub mod resourcequota;
pub mod scheduling;
pub mod servicelb;
pub mod statefulset;
pub mod volume;

use api::k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use api::k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use api::k8s_openapi::api::batch::v1::{CronJob, Job};
use api::k8s_openapi::api::coordination::v1::Lease;
use api::k8s_openapi::api::core::v1::{
    Endpoints, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod,
    ReplicationController, ResourceQuota, Service,
};
use api::k8s_openapi::api::discovery::v1::EndpointSlice;
use api::k8s_openapi::api::policy::v1::PodDisruptionBudget;
use api::k8s_openapi::api::rbac::v1::ClusterRole;
use api::k8s_openapi::api::storage::v1::StorageClass;
use client::Client;
use std::sync::Arc;
use supervise::supervise;

use crate::aggregation::AggregationController;
use crate::cronjob::CronJobController;
use crate::daemonset::DaemonSetController;
use crate::deployment::DeploymentController;
use crate::disruption::DisruptionController;
use crate::endpointslice::EndpointSliceController;
use crate::gc::GarbageCollector;
use crate::hpa::HpaController;
use crate::job::JobController;
use crate::leader::Leadership;
use crate::mirror::Mirror;
use crate::namespace::NamespaceController;
use crate::nodeipam::NodeIpamController;
use crate::nodelifecycle::NodeLifecycleController;
use crate::replicaset::ReplicaSetController;
use crate::resourcequota::ResourceQuotaController;
use crate::servicelb::ServiceLbController;
use crate::statefulset::StatefulSetController;
use crate::volume::VolumeController;

/// Start the workload controllers, node lifecycle, the namespace controller and the garbage
/// collector on shared mirrors, each supervised and running while `leadership` holds (the
/// mirrors run always, so a new leader starts from a warm copy).
///
/// As kube-controller-manager with `--use-service-account-credentials`, each controller acts
/// as its own account (`client_for` gives the client of kube-system's account of that name,
/// judged by the `system:controller:*` roles), and the shared mirrors list and watch as the
/// manager.
/// Start the CustomResourceDefinition finalizer. It belongs to the API server (as in
/// Kubernetes, where apiextensions-apiserver runs it with the server's own credentials), so it
/// gets a client trusted as the server is, not a controller account.
pub fn start_definition_finalizer(client: &Client, leadership: Leadership) {
    let definitions = Mirror::<api::k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::new();
    let f = Arc::new(definitions::DefinitionFinalizer::new(
        client.clone(),
        definitions.clone(),
    ));
    harness::start(f.clone(), f.queue(), 1, leadership);
    supervise_mirror(
        "mirror/customresourcedefinitions",
        &definitions,
        client.clone(),
    );
}

pub fn start_controllers(
    manager: &Client,
    client_for: &dyn Fn(&'static str) -> Client,
    nodes_cfg: nodelifecycle::Config,
    ipam: nodeipam::Config,
    ca_pem: String,
    leadership: Leadership,
) {
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
    let namespaces = Mirror::<Namespace>::new();
    let services = Mirror::<Service>::new();
    let slices = Mirror::<EndpointSlice>::new();
    let endpoints = Mirror::<Endpoints>::new();
    let claims = Mirror::<PersistentVolumeClaim>::new();
    let volumes = Mirror::<PersistentVolume>::new();
    let classes = Mirror::<StorageClass>::new();
    let cluster_roles = Mirror::<ClusterRole>::new();
    let ingresses = Mirror::<api::k8s_openapi::api::networking::v1::Ingress>::new();
    let ingress_classes = Mirror::<api::k8s_openapi::api::networking::v1::IngressClass>::new();
    let c = || manager.clone();
    let l = || leadership.clone();

    let rs = Arc::new(ReplicaSetController::new(
        client_for("replicaset-controller"),
        pods.clone(),
        sets.clone(),
    ));
    harness::start(rs.clone(), rs.queue(), 1, l());
    let rc = Arc::new(ReplicaSetController::new(
        client_for("replication-controller"),
        pods.clone(),
        rcs.clone(),
    ));
    harness::start(rc.clone(), rc.queue(), 1, l());
    let d = Arc::new(DeploymentController::new(
        client_for("deployment-controller"),
        deployments.clone(),
        sets.clone(),
        pods.clone(),
    ));
    harness::start(d.clone(), d.queue(), 1, l());
    let ds = Arc::new(DaemonSetController::new(
        client_for("daemon-set-controller"),
        daemons.clone(),
        pods.clone(),
        nodes.clone(),
        revisions.clone(),
    ));
    harness::start(ds.clone(), ds.queue(), 1, l());
    let ss = Arc::new(StatefulSetController::new(
        client_for("statefulset-controller"),
        stateful.clone(),
        pods.clone(),
        revisions.clone(),
    ));
    harness::start(ss.clone(), ss.queue(), 1, l());
    let job = Arc::new(JobController::new(
        client_for("job-controller"),
        client_for("ttl-after-finished-controller"),
        jobs.clone(),
        pods.clone(),
    ));
    harness::start(job.clone(), job.queue(), 1, l());
    let cj = Arc::new(CronJobController::new(
        client_for("cronjob-controller"),
        cronjobs.clone(),
        jobs.clone(),
    ));
    harness::start(cj.clone(), cj.queue(), 1, l());
    let pdb = Arc::new(DisruptionController::new(
        client_for("disruption-controller"),
        budgets.clone(),
        pods.clone(),
        sets.clone(),
        stateful.clone(),
    ));
    harness::start(pdb.clone(), pdb.queue(), 1, l());
    let quota = Arc::new(ResourceQuotaController::new(
        client_for("resourcequota-controller"),
        quotas.clone(),
        pods.clone(),
    ));
    harness::start(quota.clone(), quota.queue(), 1, l());
    let hpa = Arc::new(HpaController::new(
        client_for("horizontal-pod-autoscaler"),
        hpas.clone(),
    ));
    harness::start(hpa.clone(), hpa.queue(), 1, l());
    let gc = Arc::new(GarbageCollector::new(client_for(
        "generic-garbage-collector",
    )));
    gc.follow_all();
    let custom = gc.clone();
    supervise::supervise("garbage-collector-discovery", move || {
        custom.clone().follow_custom()
    });
    harness::start(gc.clone(), gc.queue(), 1, l());
    let life = Arc::new(NodeLifecycleController::new(
        client_for("node-controller"),
        nodes_cfg,
        nodes.clone(),
        leases.clone(),
        pods.clone(),
    ));
    harness::start(life.clone(), life.queue(), 1, l());
    // Kubernetes runs node IPAM as the node controller's account too.
    let ipam = Arc::new(NodeIpamController::new(
        client_for("node-controller"),
        nodes.clone(),
        ipam,
    ));
    harness::start(ipam.clone(), ipam.queue(), 1, l());
    let eps = Arc::new(EndpointSliceController::new(
        client_for("endpointslice-controller"),
        client_for("endpoint-controller"),
        services.clone(),
        pods.clone(),
        slices.clone(),
        endpoints.clone(),
    ));
    harness::start(eps.clone(), eps.queue(), 2, l());
    let lb = Arc::new(ServiceLbController::new(
        client_for("service-controller"),
        services.clone(),
        nodes.clone(),
    ));
    harness::start(lb.clone(), lb.queue(), 1, l());
    let ing = Arc::new(ingressstatus::IngressStatusController::new(
        client_for("ingress-controller"),
        ingresses.clone(),
        ingress_classes.clone(),
        nodes.clone(),
        services.clone(),
    ));
    harness::start(ing.clone(), ing.queue(), 1, l());
    let ns = Arc::new(NamespaceController::new(
        namespace::Clients {
            namespaces: client_for("namespace-controller"),
            accounts: client_for("service-account-controller"),
            publisher: client_for("root-ca-cert-publisher"),
        },
        namespaces.clone(),
        ca_pem,
    ));
    harness::start(ns.clone(), ns.queue(), 1, l());
    let vol = Arc::new(VolumeController::new(
        client_for("persistent-volume-binder"),
        client_for("ephemeral-volume-controller"),
        claims.clone(),
        volumes.clone(),
        classes.clone(),
        nodes.clone(),
        pods.clone(),
    ));
    harness::start(vol.clone(), vol.queue(), 1, l());
    let agg = Arc::new(AggregationController::new(
        client_for("clusterrole-aggregation-controller"),
        cluster_roles.clone(),
    ));
    harness::start(agg.clone(), agg.queue(), 1, l());

    // Mirrors start last, so that every subscriber hears the first list.
    supervise_mirror("mirror/pods", &pods, c());
    supervise_mirror("mirror/replicasets", &sets, c());
    supervise_mirror("mirror/replicationcontrollers", &rcs, c());
    supervise_mirror("mirror/deployments", &deployments, c());
    supervise_mirror("mirror/daemonsets", &daemons, c());
    supervise_mirror("mirror/statefulsets", &stateful, c());
    supervise_mirror("mirror/jobs", &jobs, c());
    supervise_mirror("mirror/cronjobs", &cronjobs, c());
    supervise_mirror("mirror/nodes", &nodes, c());
    supervise_mirror("mirror/leases", &leases, c());
    supervise_mirror("mirror/poddisruptionbudgets", &budgets, c());
    supervise_mirror("mirror/resourcequotas", &quotas, c());
    supervise_mirror("mirror/horizontalpodautoscalers", &hpas, c());
    supervise_mirror("mirror/controllerrevisions", &revisions, c());
    supervise_mirror("mirror/namespaces", &namespaces, c());
    supervise_mirror("mirror/services", &services, c());
    supervise_mirror("mirror/endpointslices", &slices, c());
    supervise_mirror("mirror/endpoints", &endpoints, c());
    supervise_mirror("mirror/persistentvolumeclaims", &claims, c());
    supervise_mirror("mirror/persistentvolumes", &volumes, c());
    supervise_mirror("mirror/storageclasses", &classes, c());
    supervise_mirror("mirror/clusterroles", &cluster_roles, c());
    supervise_mirror("mirror/ingresses", &ingresses, c());
    supervise_mirror("mirror/ingressclasses", &ingress_classes, c());
}

fn supervise_mirror<K>(name: &'static str, mirror: &Arc<Mirror<K>>, client: Client)
where
    K: api::k8s_openapi::Resource + api::k8s_openapi::ListableResource,
    K: api::k8s_openapi::Metadata<
            Ty = api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        >,
    K: serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let mirror = mirror.clone();
    supervise(name, move || mirror.clone().run(client.clone()));
}

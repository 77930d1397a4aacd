//! The registry of served resources: names, scope, subresources and the kind rules behind each.
//! Discovery, routing, storage keys and `kubectl get all` all read from this one table.

use std::sync::{Arc, LazyLock, RwLock};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, LimitRange, Namespace, Node, PersistentVolume,
    PersistentVolumeClaim, Pod, ReplicationController, ResourceQuota, Secret, Service,
    ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::api::storage::v1::{
    CSIDriver, CSINode, CSIStorageCapacity, StorageClass, VolumeAttachment,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use serde_json::Value;

use crate::kinds::{KindOps, ops};
use crate::names::NameRule;

/// A field a `fieldSelector` may name, and where its value lives in the object.
#[derive(Debug)]
pub struct FieldLabel {
    pub label: &'static str,
    pub path: &'static [&'static str],
    /// The value a missing field selects as (booleans read "false" when unset).
    pub absent: &'static str,
}

const fn field(label: &'static str, path: &'static [&'static str]) -> FieldLabel {
    FieldLabel {
        label,
        path,
        absent: "",
    }
}

const fn bool_field(label: &'static str, path: &'static [&'static str]) -> FieldLabel {
    FieldLabel {
        label,
        path,
        absent: "false",
    }
}

pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Has a `status` subresource: the main resource cannot write status, and vice versa.
    pub status: bool,
    /// Has a `scale` subresource backed by `spec.replicas`.
    pub scale: bool,
    pub name_rule: NameRule,
    /// `metadata.generation` counts spec changes.
    pub generation: bool,
    /// Clients may not set status on create (everything but nodes, whose agent reports it).
    pub reset_status_on_create: bool,
    /// A delete that removes the object answers with the object, not a `Status` (Kubernetes'
    /// `ReturnDeletedObject`: pods, services, service accounts, namespaces, quotas, ...).
    pub delete_returns_object: bool,
    pub field_labels: &'static [FieldLabel],
    /// Subresources besides `status` and `scale`: what discovery lists and requests may name.
    pub subresources: &'static [Subresource],
    pub ops: &'static dyn KindOps,
}

/// A subresource other than `status` and `scale` (which their flags describe): its name, the
/// group, version and kind it reads or writes, and its verbs.
#[derive(Debug)]
pub struct Subresource {
    pub name: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub verbs: &'static [&'static str],
}

const fn sub(
    name: &'static str,
    group: &'static str,
    kind: &'static str,
    verbs: &'static [&'static str],
) -> Subresource {
    Subresource {
        name,
        group,
        version: "v1",
        kind,
        verbs,
    }
}

const NO_SUBRESOURCES: &[Subresource] = &[];
const PROXY_VERBS: &[&str] = &["create", "delete", "get", "patch", "update"];
const GET_PATCH_UPDATE: &[&str] = &["get", "patch", "update"];

impl std::fmt::Debug for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Resource({}/{})", self.group_version(), self.plural)
    }
}

impl Resource {
    /// `v1` or `apps/v1`.
    pub fn group_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The storage prefix under which every object of this resource lives.
    pub fn key_prefix(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        format!("/registry/{group}/{}/", self.plural)
    }

    /// The storage key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/{name}", self.key_prefix()),
            _ => format!("{}{name}", self.key_prefix()),
        }
    }

    /// The storage prefix of one namespace's objects (or all, for `None`).
    pub fn namespace_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.key_prefix()),
            _ => self.key_prefix(),
        }
    }

    /// `deployments.apps`, the form kubectl prints in `deployment.apps/web`.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    pub fn supported_fields(&self) -> Vec<&'static str> {
        let mut out = vec!["metadata.name", "metadata.namespace"];
        out.extend(self.field_labels.iter().map(|f| f.label));
        out
    }

    /// Every selectable field of `obj` with its value, for field selectors.
    pub fn field_values(&self, obj: &Value) -> Vec<(&'static str, String)> {
        let meta = &obj["metadata"];
        let mut out = vec![
            (
                "metadata.name",
                meta["name"].as_str().unwrap_or("").to_string(),
            ),
            (
                "metadata.namespace",
                meta["namespace"].as_str().unwrap_or("").to_string(),
            ),
        ];
        for f in self.field_labels {
            let mut v = obj;
            for p in f.path {
                v = &v[*p];
            }
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                _ => f.absent.to_string(),
            };
            out.push((f.label, s));
        }
        out
    }
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];

static RESOURCES: LazyLock<Vec<Resource>> = LazyLock::new(|| {
    vec![
        Resource {
            group: "",
            version: "v1",
            kind: "Namespace",
            plural: "namespaces",
            singular: "namespace",
            namespaced: false,
            short_names: &["ns"],
            categories: NONE,
            status: true,
            scale: false,
            name_rule: NameRule::Label,
            generation: false,
            reset_status_on_create: true,
            delete_returns_object: true,
            field_labels: const { &[field("status.phase", &["status", "phase"])] },
            subresources: const { &[sub("finalize", "", "Namespace", &["update"])] },
            ops: ops::<Namespace>(),
        },
        Resource {
            group: "",
            version: "v1",
            kind: "Pod",
            plural: "pods",
            singular: "pod",
            namespaced: true,
            short_names: &["po"],
            categories: ALL,
            status: true,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: false,
            reset_status_on_create: true,
            delete_returns_object: true,
            field_labels: const {
                &[
                    field("spec.nodeName", &["spec", "nodeName"]),
                    field("spec.restartPolicy", &["spec", "restartPolicy"]),
                    field("spec.schedulerName", &["spec", "schedulerName"]),
                    field("spec.serviceAccountName", &["spec", "serviceAccountName"]),
                    bool_field("spec.hostNetwork", &["spec", "hostNetwork"]),
                    field("status.phase", &["status", "phase"]),
                    field("status.podIP", &["status", "podIP"]),
                    field("status.nominatedNodeName", &["status", "nominatedNodeName"]),
                ]
            },
            subresources: const {
                &[
                    sub("attach", "", "PodAttachOptions", &["create", "get"]),
                    sub("binding", "", "Binding", &["create"]),
                    sub("ephemeralcontainers", "", "Pod", GET_PATCH_UPDATE),
                    sub("eviction", "policy", "Eviction", &["create"]),
                    sub("exec", "", "PodExecOptions", &["create", "get"]),
                    sub("log", "", "Pod", &["get"]),
                    sub(
                        "portforward",
                        "",
                        "PodPortForwardOptions",
                        &["create", "get"],
                    ),
                    sub("proxy", "", "PodProxyOptions", PROXY_VERBS),
                ]
            },
            ops: ops::<Pod>(),
        },
        Resource {
            group: "",
            version: "v1",
            kind: "Node",
            plural: "nodes",
            singular: "node",
            namespaced: false,
            short_names: &["no"],
            categories: NONE,
            status: true,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: false,
            reset_status_on_create: false,
            delete_returns_object: false,
            field_labels: const { &[bool_field("spec.unschedulable", &["spec", "unschedulable"])] },
            subresources: const { &[sub("proxy", "", "NodeProxyOptions", PROXY_VERBS)] },
            ops: ops::<Node>(),
        },
        Resource {
            group: "",
            version: "v1",
            kind: "Service",
            plural: "services",
            singular: "service",
            namespaced: true,
            short_names: &["svc"],
            categories: ALL,
            status: true,
            scale: false,
            name_rule: NameRule::Dns1035Label,
            generation: false,
            reset_status_on_create: true,
            delete_returns_object: true,
            field_labels: const {
                &[
                    field("spec.clusterIP", &["spec", "clusterIP"]),
                    field("spec.type", &["spec", "type"]),
                ]
            },
            subresources: const { &[sub("proxy", "", "ServiceProxyOptions", PROXY_VERBS)] },
            ops: ops::<Service>(),
        },
        Resource {
            group: "",
            version: "v1",
            kind: "ReplicationController",
            plural: "replicationcontrollers",
            singular: "replicationcontroller",
            namespaced: true,
            short_names: &["rc"],
            categories: ALL,
            status: true,
            scale: true,
            name_rule: NameRule::Subdomain,
            generation: true,
            reset_status_on_create: true,
            delete_returns_object: false,
            field_labels: const { &[field("status.replicas", &["status", "replicas"])] },
            subresources: NO_SUBRESOURCES,
            ops: ops::<ReplicationController>(),
        },
        Resource {
            group: "",
            version: "v1",
            kind: "Endpoints",
            plural: "endpoints",
            singular: "endpoints",
            namespaced: true,
            short_names: &["ep"],
            categories: NONE,
            status: false,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: false,
            reset_status_on_create: false,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<Endpoints>(),
        },
        Resource {
            group: "",
            version: "v1",
            kind: "PersistentVolume",
            plural: "persistentvolumes",
            singular: "persistentvolume",
            namespaced: false,
            short_names: &["pv"],
            categories: NONE,
            status: true,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: false,
            reset_status_on_create: true,
            delete_returns_object: true,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<PersistentVolume>(),
        },
        Resource {
            group: "",
            version: "v1",
            kind: "PersistentVolumeClaim",
            plural: "persistentvolumeclaims",
            singular: "persistentvolumeclaim",
            namespaced: true,
            short_names: &["pvc"],
            categories: NONE,
            status: true,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: false,
            reset_status_on_create: true,
            delete_returns_object: true,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<PersistentVolumeClaim>(),
        },
        Resource {
            group: "",
            version: "v1",
            kind: "ConfigMap",
            plural: "configmaps",
            singular: "configmap",
            namespaced: true,
            short_names: &["cm"],
            categories: NONE,
            status: false,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: false,
            reset_status_on_create: false,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<ConfigMap>(),
        },
        Resource {
            group: "",
            version: "v1",
            kind: "Secret",
            plural: "secrets",
            singular: "secret",
            namespaced: true,
            short_names: NONE,
            categories: NONE,
            status: false,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: false,
            reset_status_on_create: false,
            delete_returns_object: false,
            field_labels: const { &[field("type", &["type"])] },
            subresources: NO_SUBRESOURCES,
            ops: ops::<Secret>(),
        },
        Resource {
            group: "",
            version: "v1",
            kind: "ServiceAccount",
            plural: "serviceaccounts",
            singular: "serviceaccount",
            namespaced: true,
            short_names: &["sa"],
            categories: NONE,
            status: false,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: false,
            reset_status_on_create: false,
            delete_returns_object: true,
            field_labels: &[],
            subresources: const {
                &[sub(
                    "token",
                    "authentication.k8s.io",
                    "TokenRequest",
                    &["create"],
                )]
            },
            ops: ops::<ServiceAccount>(),
        },
        Resource {
            group: "",
            version: "v1",
            kind: "Event",
            plural: "events",
            singular: "event",
            namespaced: true,
            short_names: &["ev"],
            categories: NONE,
            status: false,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: false,
            reset_status_on_create: false,
            delete_returns_object: false,
            field_labels: const {
                &[
                    field("involvedObject.kind", &["involvedObject", "kind"]),
                    field("involvedObject.namespace", &["involvedObject", "namespace"]),
                    field("involvedObject.name", &["involvedObject", "name"]),
                    field("involvedObject.uid", &["involvedObject", "uid"]),
                    field(
                        "involvedObject.apiVersion",
                        &["involvedObject", "apiVersion"],
                    ),
                    field(
                        "involvedObject.resourceVersion",
                        &["involvedObject", "resourceVersion"],
                    ),
                    field("involvedObject.fieldPath", &["involvedObject", "fieldPath"]),
                    field("reason", &["reason"]),
                    field("reportingComponent", &["reportingComponent"]),
                    field("source", &["source", "component"]),
                    field("type", &["type"]),
                ]
            },
            subresources: NO_SUBRESOURCES,
            ops: ops::<Event>(),
        },
        Resource {
            group: "apps",
            version: "v1",
            kind: "Deployment",
            plural: "deployments",
            singular: "deployment",
            namespaced: true,
            short_names: &["deploy"],
            categories: ALL,
            status: true,
            scale: true,
            name_rule: NameRule::Subdomain,
            generation: true,
            reset_status_on_create: true,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<Deployment>(),
        },
        Resource {
            group: "apps",
            version: "v1",
            kind: "ReplicaSet",
            plural: "replicasets",
            singular: "replicaset",
            namespaced: true,
            short_names: &["rs"],
            categories: ALL,
            status: true,
            scale: true,
            name_rule: NameRule::Subdomain,
            generation: true,
            reset_status_on_create: true,
            delete_returns_object: false,
            field_labels: const { &[field("status.replicas", &["status", "replicas"])] },
            subresources: NO_SUBRESOURCES,
            ops: ops::<ReplicaSet>(),
        },
        Resource {
            group: "apps",
            version: "v1",
            kind: "DaemonSet",
            plural: "daemonsets",
            singular: "daemonset",
            namespaced: true,
            short_names: &["ds"],
            categories: ALL,
            status: true,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: true,
            reset_status_on_create: true,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<DaemonSet>(),
        },
        Resource {
            group: "apps",
            version: "v1",
            kind: "StatefulSet",
            plural: "statefulsets",
            singular: "statefulset",
            namespaced: true,
            short_names: &["sts"],
            categories: ALL,
            status: true,
            scale: true,
            name_rule: NameRule::Subdomain,
            generation: true,
            reset_status_on_create: true,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<StatefulSet>(),
        },
        Resource {
            group: "batch",
            version: "v1",
            kind: "Job",
            plural: "jobs",
            singular: "job",
            namespaced: true,
            short_names: NONE,
            categories: ALL,
            status: true,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: true,
            reset_status_on_create: true,
            delete_returns_object: false,
            field_labels: const { &[field("status.successful", &["status", "succeeded"])] },
            subresources: NO_SUBRESOURCES,
            ops: ops::<Job>(),
        },
        Resource {
            group: "batch",
            version: "v1",
            kind: "CronJob",
            plural: "cronjobs",
            singular: "cronjob",
            namespaced: true,
            short_names: &["cj"],
            categories: ALL,
            status: true,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: true,
            reset_status_on_create: true,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<CronJob>(),
        },
        Resource {
            group: "",
            version: "v1",
            kind: "ResourceQuota",
            plural: "resourcequotas",
            singular: "resourcequota",
            namespaced: true,
            short_names: &["quota"],
            categories: NONE,
            status: true,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: false,
            reset_status_on_create: true,
            delete_returns_object: true,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<ResourceQuota>(),
        },
        Resource {
            group: "",
            version: "v1",
            kind: "LimitRange",
            plural: "limitranges",
            singular: "limitrange",
            namespaced: true,
            short_names: &["limits"],
            categories: NONE,
            status: false,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: false,
            reset_status_on_create: false,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<LimitRange>(),
        },
        Resource {
            group: "autoscaling",
            version: "v2",
            kind: "HorizontalPodAutoscaler",
            plural: "horizontalpodautoscalers",
            singular: "horizontalpodautoscaler",
            namespaced: true,
            short_names: &["hpa"],
            categories: ALL,
            status: true,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: false,
            reset_status_on_create: true,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<HorizontalPodAutoscaler>(),
        },
        Resource {
            group: "policy",
            version: "v1",
            kind: "PodDisruptionBudget",
            plural: "poddisruptionbudgets",
            singular: "poddisruptionbudget",
            namespaced: true,
            short_names: &["pdb"],
            categories: NONE,
            status: true,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: true,
            reset_status_on_create: true,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<PodDisruptionBudget>(),
        },
        Resource {
            group: "scheduling.k8s.io",
            version: "v1",
            kind: "PriorityClass",
            plural: "priorityclasses",
            singular: "priorityclass",
            namespaced: false,
            short_names: &["pc"],
            categories: NONE,
            status: false,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: false,
            reset_status_on_create: false,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<PriorityClass>(),
        },
        Resource {
            group: "apps",
            version: "v1",
            kind: "ControllerRevision",
            plural: "controllerrevisions",
            singular: "controllerrevision",
            namespaced: true,
            short_names: NONE,
            categories: NONE,
            status: false,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: false,
            reset_status_on_create: false,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<ControllerRevision>(),
        },
        Resource {
            group: "coordination.k8s.io",
            version: "v1",
            kind: "Lease",
            plural: "leases",
            singular: "lease",
            namespaced: true,
            short_names: NONE,
            categories: NONE,
            status: false,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: false,
            reset_status_on_create: false,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<Lease>(),
        },
        Resource {
            group: "discovery.k8s.io",
            version: "v1",
            kind: "EndpointSlice",
            plural: "endpointslices",
            singular: "endpointslice",
            namespaced: true,
            short_names: &[],
            categories: NONE,
            status: false,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: true,
            reset_status_on_create: false,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<EndpointSlice>(),
        },
        Resource {
            group: "networking.k8s.io",
            version: "v1",
            kind: "Ingress",
            plural: "ingresses",
            singular: "ingress",
            namespaced: true,
            short_names: &["ing"],
            categories: NONE,
            status: true,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: true,
            reset_status_on_create: true,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<Ingress>(),
        },
        Resource {
            group: "networking.k8s.io",
            version: "v1",
            kind: "IngressClass",
            plural: "ingressclasses",
            singular: "ingressclass",
            namespaced: false,
            short_names: &[],
            categories: NONE,
            status: false,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: true,
            reset_status_on_create: false,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<IngressClass>(),
        },
        Resource {
            group: "networking.k8s.io",
            version: "v1",
            kind: "NetworkPolicy",
            plural: "networkpolicies",
            singular: "networkpolicy",
            namespaced: true,
            short_names: &["netpol"],
            categories: NONE,
            status: false,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: true,
            reset_status_on_create: false,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<NetworkPolicy>(),
        },
        Resource {
            group: "storage.k8s.io",
            version: "v1",
            kind: "StorageClass",
            plural: "storageclasses",
            singular: "storageclass",
            namespaced: false,
            short_names: &["sc"],
            categories: NONE,
            status: false,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: false,
            reset_status_on_create: false,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<StorageClass>(),
        },
        Resource {
            group: "storage.k8s.io",
            version: "v1",
            kind: "CSIDriver",
            plural: "csidrivers",
            singular: "csidriver",
            namespaced: false,
            short_names: &[],
            categories: NONE,
            status: false,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: false,
            reset_status_on_create: false,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<CSIDriver>(),
        },
        Resource {
            group: "storage.k8s.io",
            version: "v1",
            kind: "CSINode",
            plural: "csinodes",
            singular: "csinode",
            namespaced: false,
            short_names: &[],
            categories: NONE,
            status: false,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: false,
            reset_status_on_create: false,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<CSINode>(),
        },
        Resource {
            group: "storage.k8s.io",
            version: "v1",
            kind: "VolumeAttachment",
            plural: "volumeattachments",
            singular: "volumeattachment",
            namespaced: false,
            short_names: &[],
            categories: NONE,
            status: true,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: false,
            reset_status_on_create: true,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<VolumeAttachment>(),
        },
        Resource {
            group: "storage.k8s.io",
            version: "v1",
            kind: "CSIStorageCapacity",
            plural: "csistoragecapacities",
            singular: "csistoragecapacity",
            namespaced: true,
            short_names: &[],
            categories: NONE,
            status: false,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: false,
            reset_status_on_create: false,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<CSIStorageCapacity>(),
        },
        Resource {
            group: "certificates.k8s.io",
            version: "v1",
            kind: "CertificateSigningRequest",
            plural: "certificatesigningrequests",
            singular: "certificatesigningrequest",
            namespaced: false,
            short_names: &["csr"],
            categories: NONE,
            status: true,
            scale: false,
            name_rule: NameRule::PathSegment,
            generation: false,
            reset_status_on_create: true,
            delete_returns_object: false,
            field_labels: const { &[field("spec.signerName", &["spec", "signerName"])] },
            subresources: const {
                &[sub(
                    "approval",
                    "certificates.k8s.io",
                    "CertificateSigningRequest",
                    GET_PATCH_UPDATE,
                )]
            },
            ops: ops::<CertificateSigningRequest>(),
        },
        Resource {
            group: "rbac.authorization.k8s.io",
            version: "v1",
            kind: "ClusterRoleBinding",
            plural: "clusterrolebindings",
            singular: "clusterrolebinding",
            namespaced: false,
            short_names: &[],
            categories: NONE,
            status: false,
            scale: false,
            name_rule: NameRule::PathSegment,
            generation: false,
            reset_status_on_create: false,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<ClusterRoleBinding>(),
        },
        Resource {
            group: "rbac.authorization.k8s.io",
            version: "v1",
            kind: "ClusterRole",
            plural: "clusterroles",
            singular: "clusterrole",
            namespaced: false,
            short_names: &[],
            categories: NONE,
            status: false,
            scale: false,
            name_rule: NameRule::PathSegment,
            generation: false,
            reset_status_on_create: false,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<ClusterRole>(),
        },
        Resource {
            group: "rbac.authorization.k8s.io",
            version: "v1",
            kind: "RoleBinding",
            plural: "rolebindings",
            singular: "rolebinding",
            namespaced: true,
            short_names: &[],
            categories: NONE,
            status: false,
            scale: false,
            name_rule: NameRule::PathSegment,
            generation: false,
            reset_status_on_create: false,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<RoleBinding>(),
        },
        Resource {
            group: "rbac.authorization.k8s.io",
            version: "v1",
            kind: "Role",
            plural: "roles",
            singular: "role",
            namespaced: true,
            short_names: &[],
            categories: NONE,
            status: false,
            scale: false,
            name_rule: NameRule::PathSegment,
            generation: false,
            reset_status_on_create: false,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<Role>(),
        },
        Resource {
            group: "admissionregistration.k8s.io",
            version: "v1",
            kind: "MutatingWebhookConfiguration",
            plural: "mutatingwebhookconfigurations",
            singular: "mutatingwebhookconfiguration",
            namespaced: false,
            short_names: NONE,
            categories: &["api-extensions"],
            status: false,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: true,
            reset_status_on_create: false,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<MutatingWebhookConfiguration>(),
        },
        Resource {
            group: "admissionregistration.k8s.io",
            version: "v1",
            kind: "ValidatingWebhookConfiguration",
            plural: "validatingwebhookconfigurations",
            singular: "validatingwebhookconfiguration",
            namespaced: false,
            short_names: NONE,
            categories: &["api-extensions"],
            status: false,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: true,
            reset_status_on_create: false,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<ValidatingWebhookConfiguration>(),
        },
        Resource {
            group: "admissionregistration.k8s.io",
            version: "v1",
            kind: "ValidatingAdmissionPolicy",
            plural: "validatingadmissionpolicies",
            singular: "validatingadmissionpolicy",
            namespaced: false,
            short_names: NONE,
            categories: &["api-extensions"],
            status: true,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: true,
            reset_status_on_create: true,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<ValidatingAdmissionPolicy>(),
        },
        Resource {
            group: "admissionregistration.k8s.io",
            version: "v1",
            kind: "ValidatingAdmissionPolicyBinding",
            plural: "validatingadmissionpolicybindings",
            singular: "validatingadmissionpolicybinding",
            namespaced: false,
            short_names: NONE,
            categories: &["api-extensions"],
            status: false,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: true,
            reset_status_on_create: false,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<ValidatingAdmissionPolicyBinding>(),
        },
        Resource {
            group: "apiregistration.k8s.io",
            version: "v1",
            kind: "APIService",
            plural: "apiservices",
            singular: "apiservice",
            namespaced: false,
            short_names: NONE,
            categories: &["api-extensions"],
            status: true,
            scale: false,
            name_rule: NameRule::PathSegment,
            generation: true,
            reset_status_on_create: true,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<APIService>(),
        },
        Resource {
            group: "apiextensions.k8s.io",
            version: "v1",
            kind: "CustomResourceDefinition",
            plural: "customresourcedefinitions",
            singular: "customresourcedefinition",
            namespaced: false,
            short_names: &["crd", "crds"],
            categories: &["api-extensions"],
            status: true,
            scale: false,
            name_rule: NameRule::Subdomain,
            generation: true,
            reset_status_on_create: true,
            delete_returns_object: false,
            field_labels: &[],
            subresources: NO_SUBRESOURCES,
            ops: ops::<CustomResourceDefinition>(),
        },
    ]
});

/// The served resources: the built-in ones, and those CustomResourceDefinitions add while the
/// server runs. The API server holds one; everything that routes, lists kinds or describes the
/// API asks it rather than the built-in table.
#[derive(Default)]
pub struct Registry {
    custom: RwLock<Arc<CustomSet>>,
}

/// The custom part of a registry at one moment.
#[derive(Default)]
struct CustomSet {
    /// Bumped on every change, so that documents built from the registry know they are stale.
    generation: u64,
    /// By definition name, in the order definitions were added.
    by_definition: Vec<(String, Vec<&'static Resource>)>,
}

impl CustomSet {
    fn resources(&self) -> impl Iterator<Item = &'static Resource> + '_ {
        self.by_definition
            .iter()
            .flat_map(|(_, rs)| rs.iter().copied())
    }
}

impl Registry {
    fn custom(&self) -> Arc<CustomSet> {
        self.custom
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Serve what definition `name` defines (nothing, to stop serving it).
    pub fn set_definition(&self, name: &str, resources: Vec<&'static Resource>) {
        let mut guard = self.custom.write().unwrap_or_else(|p| p.into_inner());
        let current = guard.by_definition.iter().find(|(n, _)| n == name);
        let unchanged = match current {
            Some((_, rs)) => {
                rs.len() == resources.len()
                    && rs.iter().zip(&resources).all(|(a, b)| std::ptr::eq(*a, *b))
            }
            None => resources.is_empty(),
        };
        if unchanged {
            // The schema behind a descriptor may still have changed: documents are rebuilt.
            *guard = Arc::new(CustomSet {
                generation: guard.generation + 1,
                by_definition: guard.by_definition.clone(),
            });
            return;
        }
        let mut by_definition: Vec<(String, Vec<&'static Resource>)> = guard
            .by_definition
            .iter()
            .filter(|(n, _)| n != name)
            .cloned()
            .collect();
        if !resources.is_empty() {
            by_definition.push((name.to_string(), resources));
        }
        *guard = Arc::new(CustomSet {
            generation: guard.generation + 1,
            by_definition,
        });
    }

    /// Changes with every change of what is served.
    pub fn generation(&self) -> u64 {
        self.custom().generation
    }

    /// What definition `name` serves.
    pub fn of_definition(&self, name: &str) -> Vec<&'static Resource> {
        self.custom()
            .by_definition
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, rs)| rs.clone())
            .unwrap_or_default()
    }

    /// Every served resource: built-in ones in discovery order, then custom ones.
    pub fn all(&self) -> Vec<&'static Resource> {
        let custom = self.custom();
        all().iter().chain(custom.resources()).collect()
    }

    /// The custom resources only.
    pub fn custom_resources(&self) -> Vec<&'static Resource> {
        self.custom().resources().collect()
    }

    /// The resource served at `group/version/plural`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
        find(group, version, plural).or_else(|| {
            self.custom()
                .resources()
                .find(|r| r.group == group && r.version == version && r.plural == plural)
        })
    }

    /// The resource of a kind, as named by `apiVersion` and `kind` in an object.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&'static Resource> {
        by_kind(api_version, kind).or_else(|| {
            self.custom()
                .resources()
                .find(|r| r.kind == kind && r.group_version() == api_version)
        })
    }

    /// The API groups in discovery order, each with its versions (custom groups after the
    /// built-in ones).
    pub fn groups(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        let mut out = groups();
        for r in self.custom().resources() {
            match out.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, versions)) => {
                    if !versions.contains(&r.version) {
                        versions.push(r.version);
                    }
                }
                None => out.push((r.group, vec![r.version])),
            }
        }
        for (_, versions) in &mut out {
            versions.sort_by_key(|v| std::cmp::Reverse(crate::versions::priority(v)));
        }
        out
    }

    /// The resources served at `group/version`.
    pub fn served(&self, group: &str, version: &str) -> Vec<Served> {
        let mut out = served(group, version);
        out.extend(
            self.custom()
                .resources()
                .filter(|r| r.group == group && r.version == version)
                .map(|r| Served {
                    resource: r,
                    group: r.group,
                    version: r.version,
                }),
        );
        out
    }

    /// An object's name as Kubernetes' messages give it, from its storage key.
    pub fn describe_key(&self, key: &str) -> Option<String> {
        describe_key(key).or_else(|| self.custom().resources().find_map(|r| describe_in(r, key)))
    }
}

/// Every built-in resource, in discovery order.
pub fn all() -> &'static [Resource] {
    &RESOURCES
}

/// The resource served at `group/version/plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    all()
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource of a kind, as named by `apiVersion` and `kind` in an object.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
    all()
        .iter()
        .find(|r| r.kind == kind && r.group_version() == api_version)
}

/// An object's name as Kubernetes' messages give it (`configmaps "web" in namespace "default"`,
/// `nodes "n1"`), from its storage key; `None` for keys that hold no object.
pub fn describe_key(key: &str) -> Option<String> {
    all().iter().find_map(|r| describe_in(r, key))
}

fn describe_in(r: &Resource, key: &str) -> Option<String> {
    let rest = key.strip_prefix(r.key_prefix().as_str())?;
    let what = r.group_resource();
    match rest.split_once('/') {
        Some((ns, name)) if r.namespaced => Some(format!("{what} {name:?} in namespace {ns:?}")),
        None if !r.namespaced && !rest.is_empty() => Some(format!("{what} {rest:?}")),
        _ => None,
    }
}

/// The API groups in discovery order, each with its versions.
pub fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for r in all() {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, versions)) => {
                if !versions.contains(&r.version) {
                    versions.push(r.version);
                }
            }
            None => out.push((r.group, vec![r.version])),
        }
    }
    for v in crate::versions::all() {
        match out.iter_mut().find(|(g, _)| *g == v.group) {
            Some((_, versions)) => {
                if !versions.contains(&v.version) {
                    versions.push(v.version);
                }
            }
            None => out.push((v.group, vec![v.version])),
        }
    }
    out
}

/// A resource as one group-version serves it: what is stored, and the group and version it is
/// shown in there.
#[derive(Clone, Copy, Debug)]
pub struct Served {
    pub resource: &'static Resource,
    pub group: &'static str,
    pub version: &'static str,
}

/// The resources served at `group/version`: stored ones as they are, and those a view
/// converts.
pub fn served(group: &str, version: &str) -> Vec<Served> {
    let mut out: Vec<Served> = all()
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| Served {
            resource: r,
            group: r.group,
            version: r.version,
        })
        .collect();
    for v in crate::versions::all() {
        if v.group == group && v.version == version {
            out.push(Served {
                resource: v.storage(),
                group: v.group,
                version: v.version,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn storage_keys_name_their_objects() {
        let cm = find("", "v1", "configmaps").unwrap();
        let node = find("", "v1", "nodes").unwrap();
        let deploy = find("apps", "v1", "deployments").unwrap();
        for (key, want) in [
            (
                cm.key(Some("default"), "web"),
                Some(r#"configmaps "web" in namespace "default""#),
            ),
            (node.key(None, "n1"), Some(r#"nodes "n1""#)),
            (
                deploy.key(Some("prod"), "api"),
                Some(r#"deployments.apps "api" in namespace "prod""#),
            ),
            ("/registry/ranges/serviceips/10.43.0.1".into(), None),
            (cm.key_prefix(), None),
        ] {
            assert_eq!(describe_key(&key).as_deref(), want, "{key}");
        }
    }

    #[test]
    fn registry_is_consistent() {
        let mut seen = std::collections::HashSet::new();
        for r in all() {
            assert!(seen.insert(r.key_prefix()), "{r:?} shares a storage prefix");
            assert_eq!(
                find(r.group, r.version, r.plural).map(|f| f.kind),
                Some(r.kind)
            );
            assert_eq!(
                by_kind(&r.group_version(), r.kind).map(|f| f.plural),
                Some(r.plural)
            );
        }
        assert_eq!(groups()[0], ("", vec!["v1"]));
        assert!(groups().iter().any(|(g, _)| *g == "apps"));
    }

    #[test]
    fn field_values_read_paths() {
        let pods = find("", "v1", "pods").unwrap();
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"},
            "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let values = pods.field_values(&pod);
        let get = |k: &str| {
            values
                .iter()
                .find(|(f, _)| *f == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("metadata.name"), Some("p"));
        assert_eq!(get("spec.nodeName"), Some("n1"));
        assert_eq!(get("status.phase"), Some("Running"));
        assert_eq!(get("spec.hostNetwork"), Some("false"));
        assert_eq!(pods.key(Some("ns"), "p"), "/registry/core/pods/ns/p");
        let nodes = find("", "v1", "nodes").unwrap();
        assert_eq!(nodes.key(None, "n1"), "/registry/core/nodes/n1");
    }
}

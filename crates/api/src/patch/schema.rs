//! How lists and structs of the built-in kinds merge: which lists are maps keyed by a field
//! (containers by `name`), which are sets (finalizers), and which are replaced whole. Strategic
//! merge patch and server-side apply both read this. Fields not described here merge as plain
//! JSON: objects field by field, lists replaced whole.

use std::collections::BTreeMap;
use std::sync::LazyLock;

/// The merge shape of one object type.
#[derive(Debug, Default)]
pub struct Type {
    fields: BTreeMap<&'static str, Elem>,
}

/// The merge shape of one field.
#[derive(Debug, Clone, Copy)]
pub enum Elem {
    /// A nested object with its own shape.
    Struct(&'static Type),
    /// A list of objects identified by these key fields, which strategic merge patch and
    /// server-side apply both match items by. Keys the server defaults (a port's protocol) are
    /// left out so that a manifest and the stored object identify items alike.
    MapList {
        keys: &'static [&'static str],
        item: &'static Type,
    },
    /// A list of scalars merged as a set.
    SetList,
    /// Replaced whole, and owned whole by server-side apply (label selectors, for one).
    Atomic,
}

static EMPTY: Type = Type {
    fields: BTreeMap::new(),
};

impl Type {
    pub fn empty() -> &'static Type {
        &EMPTY
    }

    pub fn elem(&self, field: &str) -> Option<Elem> {
        self.fields.get(field).copied()
    }

    /// The shape of a nested object field: its own if known, else the empty shape.
    pub fn child(&self, field: &str) -> &'static Type {
        match self.elem(field) {
            Some(Elem::Struct(t)) => t,
            _ => &EMPTY,
        }
    }
}

/// A merge shape made at run time (a custom kind's, from its schema's list and map types).
/// Leaked: callers make each distinct shape once.
pub fn made(fields: Vec<(&'static str, Elem)>) -> &'static Type {
    leak(fields)
}

/// How object metadata merges (finalizers as a set, owner references by uid).
pub fn metadata() -> &'static Type {
    SCHEMAS.other.child("metadata")
}

fn leak(fields: Vec<(&'static str, Elem)>) -> &'static Type {
    Box::leak(Box::new(Type {
        fields: fields.into_iter().collect(),
    }))
}

fn map_list(keys: &'static [&'static str], item: &'static Type) -> Elem {
    Elem::MapList { keys, item }
}

struct Schemas {
    by_kind: BTreeMap<&'static str, &'static Type>,
    /// Every other kind: its metadata merges as all metadata does.
    other: &'static Type,
}

static SCHEMAS: LazyLock<Schemas> = LazyLock::new(build);

fn build() -> Schemas {
    use Elem::{Atomic, SetList, Struct};
    let empty = Type::empty();
    let meta = leak(vec![
        ("finalizers", SetList),
        ("ownerReferences", map_list(&["uid"], empty)),
        ("managedFields", Atomic),
    ]);
    let conditions = || map_list(&["type"], empty);
    let container = leak(vec![
        ("env", map_list(&["name"], empty)),
        ("ports", map_list(&["containerPort"], empty)),
        ("volumeMounts", map_list(&["mountPath"], empty)),
        ("volumeDevices", map_list(&["devicePath"], empty)),
        ("command", Atomic),
        ("args", Atomic),
        ("envFrom", Atomic),
    ]);
    let pod_spec = leak(vec![
        ("containers", map_list(&["name"], container)),
        ("initContainers", map_list(&["name"], container)),
        ("ephemeralContainers", map_list(&["name"], container)),
        ("volumes", map_list(&["name"], empty)),
        ("imagePullSecrets", map_list(&["name"], empty)),
        ("hostAliases", map_list(&["ip"], empty)),
        (
            "topologySpreadConstraints",
            map_list(&["topologyKey", "whenUnsatisfiable"], empty),
        ),
        ("schedulingGates", map_list(&["name"], empty)),
        ("resourceClaims", map_list(&["name"], empty)),
        ("tolerations", Atomic),
        ("readinessGates", Atomic),
    ]);
    let pod_status = leak(vec![
        ("conditions", conditions()),
        ("podIPs", map_list(&["ip"], empty)),
        ("hostIPs", map_list(&["ip"], empty)),
    ]);
    let template = leak(vec![("metadata", Struct(meta)), ("spec", Struct(pod_spec))]);
    let status_with_conditions = leak(vec![("conditions", conditions())]);
    let workload_spec = leak(vec![("template", Struct(template)), ("selector", Atomic)]);
    let workload = leak(vec![
        ("metadata", Struct(meta)),
        ("spec", Struct(workload_spec)),
        ("status", Struct(status_with_conditions)),
    ]);
    let job_spec = leak(vec![("template", Struct(template)), ("selector", Atomic)]);
    let job = leak(vec![
        ("metadata", Struct(meta)),
        ("spec", Struct(job_spec)),
        ("status", Struct(status_with_conditions)),
    ]);
    let job_template = leak(vec![("metadata", Struct(meta)), ("spec", Struct(job_spec))]);
    let cron_job = leak(vec![
        ("metadata", Struct(meta)),
        (
            "spec",
            Struct(leak(vec![("jobTemplate", Struct(job_template))])),
        ),
        ("status", Struct(leak(vec![("active", Atomic)]))),
    ]);
    let pod = leak(vec![
        ("metadata", Struct(meta)),
        ("spec", Struct(pod_spec)),
        ("status", Struct(pod_status)),
    ]);
    let service = leak(vec![
        ("metadata", Struct(meta)),
        (
            "spec",
            Struct(leak(vec![
                ("ports", map_list(&["port"], empty)),
                ("selector", Atomic),
                ("clusterIPs", Atomic),
                ("ipFamilies", Atomic),
                ("externalIPs", Atomic),
            ])),
        ),
        ("status", Struct(status_with_conditions)),
    ]);
    let node = leak(vec![
        ("metadata", Struct(meta)),
        (
            "spec",
            Struct(leak(vec![("podCIDRs", SetList), ("taints", Atomic)])),
        ),
        (
            "status",
            Struct(leak(vec![
                ("conditions", conditions()),
                ("addresses", map_list(&["type"], empty)),
                ("images", Atomic),
            ])),
        ),
    ]);
    let with_meta = leak(vec![("metadata", Struct(meta))]);
    let webhook_configuration = leak(vec![
        ("metadata", Struct(meta)),
        ("webhooks", map_list(&["name"], empty)),
    ]);
    let namespace = leak(vec![
        ("metadata", Struct(meta)),
        ("status", Struct(status_with_conditions)),
    ]);
    let service_account = leak(vec![
        ("metadata", Struct(meta)),
        ("secrets", map_list(&["name"], empty)),
        ("imagePullSecrets", Atomic),
    ]);
    let endpoints = leak(vec![("metadata", Struct(meta)), ("subsets", Atomic)]);
    let endpoint_slice = leak(vec![
        ("metadata", Struct(meta)),
        ("endpoints", Atomic),
        ("ports", Atomic),
    ]);
    let replication_controller = leak(vec![
        ("metadata", Struct(meta)),
        (
            "spec",
            Struct(leak(vec![
                ("template", Struct(template)),
                ("selector", Atomic),
            ])),
        ),
        ("status", Struct(status_with_conditions)),
    ]);
    let volume = leak(vec![
        ("metadata", Struct(meta)),
        (
            "spec",
            Struct(leak(vec![
                ("accessModes", Atomic),
                ("mountOptions", Atomic),
            ])),
        ),
        ("status", Struct(status_with_conditions)),
    ]);
    let storage_class = leak(vec![
        ("metadata", Struct(meta)),
        ("mountOptions", Atomic),
        ("allowedTopologies", Atomic),
    ]);
    let csi_node = leak(vec![
        ("metadata", Struct(meta)),
        (
            "spec",
            Struct(leak(vec![("drivers", map_list(&["name"], empty))])),
        ),
    ]);
    let by_kind = BTreeMap::from([
        ("Pod", pod),
        ("Deployment", workload),
        ("ReplicaSet", workload),
        ("DaemonSet", workload),
        ("StatefulSet", workload),
        ("Job", job),
        ("CronJob", cron_job),
        ("Service", service),
        ("Node", node),
        ("Namespace", namespace),
        ("ServiceAccount", service_account),
        ("Endpoints", endpoints),
        ("EndpointSlice", endpoint_slice),
        ("ConfigMap", with_meta),
        ("Secret", with_meta),
        ("Event", with_meta),
        ("Lease", with_meta),
        ("ControllerRevision", with_meta),
        ("PodDisruptionBudget", with_meta),
        ("PriorityClass", with_meta),
        ("ResourceQuota", with_meta),
        ("LimitRange", with_meta),
        ("HorizontalPodAutoscaler", with_meta),
        ("ReplicationController", replication_controller),
        ("PersistentVolume", volume),
        ("PersistentVolumeClaim", volume),
        ("Ingress", with_meta),
        ("IngressClass", with_meta),
        ("StorageClass", storage_class),
        ("CSIDriver", with_meta),
        ("CSINode", csi_node),
        ("VolumeAttachment", with_meta),
        ("CSIStorageCapacity", with_meta),
        ("CertificateSigningRequest", with_meta),
        ("MutatingWebhookConfiguration", webhook_configuration),
        ("ValidatingWebhookConfiguration", webhook_configuration),
        ("ClusterRole", with_meta),
        ("ClusterRoleBinding", with_meta),
        ("Role", with_meta),
        ("RoleBinding", with_meta),
    ]);
    Schemas {
        by_kind,
        other: with_meta,
    }
}

/// The merge shape of a kind's objects; kinds without special lists merge as plain JSON but
/// for their metadata.
pub fn for_kind(kind: &str) -> &'static Type {
    SCHEMAS.by_kind.get(kind).copied().unwrap_or(SCHEMAS.other)
}

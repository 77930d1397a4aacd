//! The columns `kubectl get` prints. kubectl has no printers of its own any more: the server
//! sends a `meta.k8s.io` Table whose cells it computed, so these follow Kubernetes' printers.
//! Cells are computed once when an object enters the cache; only relative times (AGE) are
//! rendered per request.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use api::k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceColumnDefinition;
use api::selector;
use jiff::Timestamp;
use serde_json::{Value, json};

pub struct Column {
    pub name: &'static str,
    pub ty: &'static str,
    pub format: &'static str,
    pub priority: u8,
    pub description: &'static str,
}

const fn col(
    name: &'static str,
    ty: &'static str,
    priority: u8,
    description: &'static str,
) -> Column {
    Column {
        name,
        ty,
        format: "",
        priority,
        description,
    }
}

const NAME: Column = Column {
    name: "Name",
    ty: "string",
    format: "name",
    priority: 0,
    description: "Name must be unique within a namespace.",
};
const AGE: Column = col(
    "Age",
    "string",
    0,
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);
const CONTAINERS: Column = col(
    "Containers",
    "string",
    1,
    "Names of each container in the template.",
);
const IMAGES: Column = col(
    "Images",
    "string",
    1,
    "Images referenced by each container in the template.",
);
const SELECTOR: Column = col("Selector", "string", 1, "Label selector for pods.");

/// One computed cell.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Text(String),
    Int(i64),
    /// Time since the instant, rendered like `5m` when the response is built; `<none>` if unset.
    Since(Option<Timestamp>),
    /// A duration between two instants, or since the first if the second is unset.
    Between(Option<Timestamp>, Option<Timestamp>),
}

impl Cell {
    fn text(s: impl Into<String>) -> Cell {
        Cell::Text(s.into())
    }

    pub fn render(&self, now: Timestamp) -> Value {
        match self {
            Cell::Text(s) => json!(s),
            Cell::Int(n) => json!(n),
            Cell::Since(Some(t)) => json!(human_duration(now.duration_since(*t))),
            Cell::Since(None) => json!("<none>"),
            Cell::Between(Some(a), b) => {
                json!(human_duration(b.unwrap_or(now).duration_since(*a)))
            }
            Cell::Between(None, _) => json!(""),
        }
    }
}

/// Durations as Kubernetes prints them: `45s`, `3m20s`, `2d3h`, `5y12d`.
pub fn human_duration(d: jiff::SignedDuration) -> String {
    let secs = d.as_secs();
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    let (mins, hours) = (secs / 60, secs / 3600);
    if secs < 120 {
        format!("{secs}s")
    } else if mins < 10 {
        match secs % 60 {
            0 => format!("{mins}m"),
            s => format!("{mins}m{s}s"),
        }
    } else if mins < 180 {
        format!("{mins}m")
    } else if hours < 8 {
        match mins % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        }
    } else if hours < 24 * 365 * 2 {
        format!("{}d", hours / 24)
    } else if hours < 24 * 365 * 8 {
        let days = hours / 24;
        match days % 365 {
            0 => format!("{}y", days / 365),
            dd => format!("{}y{dd}d", days / 365),
        }
    } else {
        format!("{}y", hours / 24 / 365)
    }
}

fn ts(v: &Value) -> Option<Timestamp> {
    v.as_str().and_then(|s| s.parse().ok())
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s.to_string()
    }
}

fn created(obj: &Value) -> Cell {
    Cell::Since(ts(&obj["metadata"]["creationTimestamp"]))
}

fn name(obj: &Value) -> Cell {
    Cell::text(s(&obj["metadata"]["name"]))
}

/// Container names and images of a pod spec, comma separated.
fn containers_and_images(pod_spec: &Value) -> (Cell, Cell) {
    let cs = pod_spec["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = cs.iter().map(|c| s(&c["name"])).collect();
    let images: Vec<&str> = cs.iter().map(|c| s(&c["image"])).collect();
    (Cell::text(names.join(",")), Cell::text(images.join(",")))
}

fn selector_cell(sel: &Value) -> Cell {
    let parsed: Option<api::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector> =
        serde_json::from_value(sel.clone()).ok();
    Cell::text(selector::describe(parsed.as_ref()))
}

fn map_selector(m: &Value) -> String {
    match m.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", s(v)))
            .collect::<Vec<_>>()
            .join(","),
        _ => "<none>".into(),
    }
}

/// `RWO,ROX`: access modes as kubectl abbreviates them, in its fixed order.
fn access_modes(modes: &Value) -> String {
    let has = |m: &str| {
        modes
            .as_array()
            .is_some_and(|a| a.iter().any(|x| s(x) == m))
    };
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .into_iter()
    .filter(|(m, _)| has(m))
    .map(|(_, short)| short)
    .collect::<Vec<_>>()
    .join(",")
}

/// A boolean cell as kubectl prints it, `default` when unset.
fn flag(v: &Value, default: bool) -> String {
    v.as_bool().unwrap_or(default).to_string()
}

/// `Terminating` for an object being deleted, else its phase.
fn phase_or_terminating(obj: &Value) -> String {
    if obj["metadata"]["deletionTimestamp"].is_string() {
        "Terminating".into()
    } else {
        s(&obj["status"]["phase"]).to_string()
    }
}

fn or_unset(s: &str) -> String {
    if s.is_empty() {
        "<unset>".into()
    } else {
        s.to_string()
    }
}

/// An ingress's class, hosts, addresses and ports, as kubectl prints them.
fn ingress_cells(obj: &Value) -> Vec<Cell> {
    let spec = &obj["spec"];
    let class = s(&spec["ingressClassName"]);
    let hosts: Vec<&str> = spec["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| s(&r["host"]))
        .map(|h| if h.is_empty() { "*" } else { h })
        .collect();
    let addresses: Vec<&str> = obj["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let ip = s(&i["ip"]);
            if ip.is_empty() { s(&i["hostname"]) } else { ip }
        })
        .collect();
    let tls = spec["tls"].as_array().is_some_and(|t| !t.is_empty());
    vec![
        name(obj),
        Cell::text(if class.is_empty() { "<none>" } else { class }),
        Cell::text(if hosts.is_empty() {
            "*".to_string()
        } else {
            hosts.join(",")
        }),
        Cell::text(addresses.join(",")),
        Cell::text(if tls { "80, 443" } else { "80" }),
        created(obj),
    ]
}

/// The columns of a kind's table.
pub fn columns(kind: &str) -> Vec<Column> {
    match kind {
        "Pod" => vec![
            NAME,
            col(
                "Ready",
                "string",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            col(
                "Status",
                "string",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            col(
                "Restarts",
                "string",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            AGE,
            col("IP", "string", 1, "IP address allocated to the pod."),
            col("Node", "string", 1, "The node the pod is bound to."),
            col(
                "Nominated Node",
                "string",
                1,
                "The node the scheduler nominated the pod for.",
            ),
            col(
                "Readiness Gates",
                "string",
                1,
                "Readiness gates of the pod and how many are satisfied.",
            ),
        ],
        "Namespace" => vec![
            NAME,
            col("Status", "string", 0, "The status of the namespace"),
            AGE,
        ],
        "Node" => vec![
            NAME,
            col("Status", "string", 0, "The status of the node"),
            col("Roles", "string", 0, "The roles of the node"),
            AGE,
            col(
                "Version",
                "string",
                0,
                "Kubelet Version reported by the node.",
            ),
            col(
                "Internal-IP",
                "string",
                1,
                "List of addresses reachable to the node.",
            ),
            col(
                "External-IP",
                "string",
                1,
                "List of addresses reachable to the node.",
            ),
            col(
                "OS-Image",
                "string",
                1,
                "OS Image reported by the node from /etc/os-release.",
            ),
            col(
                "Kernel-Version",
                "string",
                1,
                "Kernel Version reported by the node.",
            ),
            col(
                "Container-Runtime",
                "string",
                1,
                "ContainerRuntime Version reported by the node.",
            ),
        ],
        "Service" => vec![
            NAME,
            col("Type", "string", 0, "How the service is exposed."),
            col(
                "Cluster-IP",
                "string",
                0,
                "The virtual IP of the service inside the cluster.",
            ),
            col(
                "External-IP",
                "string",
                0,
                "Addresses outside the cluster that reach the service.",
            ),
            col(
                "Port(s)",
                "string",
                0,
                "The list of ports that are exposed by this service.",
            ),
            AGE,
            col(
                "Selector",
                "string",
                1,
                "Route service traffic to pods with label keys and values matching this selector.",
            ),
        ],
        "Endpoints" => vec![
            NAME,
            col(
                "Endpoints",
                "string",
                0,
                "Addresses and ports behind the service.",
            ),
            AGE,
        ],
        "EndpointSlice" => vec![
            NAME,
            col(
                "AddressType",
                "string",
                0,
                "The type of addresses in the slice.",
            ),
            col("Ports", "string", 0, "Ports in the slice."),
            col(
                "Endpoints",
                "string",
                0,
                "Addresses of the endpoints in the slice.",
            ),
            AGE,
        ],
        "ConfigMap" => vec![NAME, col("Data", "integer", 0, "Number of data keys."), AGE],
        "Secret" => vec![
            NAME,
            col("Type", "string", 0, "The type of secret"),
            col("Data", "integer", 0, "Number of data keys."),
            AGE,
        ],
        "ServiceAccount" => vec![
            NAME,
            col("Secrets", "integer", 0, "Number of secrets."),
            AGE,
        ],
        "Event" => vec![
            col(
                "Last Seen",
                "string",
                0,
                "Time when this event was last seen.",
            ),
            col("Type", "string", 0, "Type of this event (Normal, Warning)."),
            col("Reason", "string", 0, "Why the action was taken."),
            col("Object", "string", 0, "The object this event is about."),
            col(
                "Subobject",
                "string",
                1,
                "The part of the object the event is about.",
            ),
            col("Source", "string", 1, "The component reporting this event."),
            col("Message", "string", 0, "A description of the event."),
            col(
                "First Seen",
                "string",
                1,
                "Time when this event was first seen.",
            ),
            col(
                "Count",
                "string",
                1,
                "The number of times this event has occurred.",
            ),
            Column {
                priority: 1,
                ..NAME
            },
        ],
        "Deployment" => vec![
            NAME,
            col("Ready", "string", 0, "Number of the pod with ready state"),
            col(
                "Up-to-date",
                "string",
                0,
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            col(
                "Available",
                "string",
                0,
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        "ReplicaSet" => vec![
            NAME,
            col("Desired", "integer", 0, "Number of desired pods."),
            col(
                "Current",
                "integer",
                0,
                "Number of pods observed by the controller.",
            ),
            col(
                "Ready",
                "integer",
                0,
                "Number of pods with a Ready condition.",
            ),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        "ReplicationController" => vec![
            NAME,
            col("Desired", "integer", 0, "Number of desired pods."),
            col("Current", "integer", 0, "Number of actually running pods."),
            col("Ready", "integer", 0, "Number of ready pods."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        "PersistentVolume" => vec![
            NAME,
            col(
                "Capacity",
                "string",
                0,
                "The storage capacity of the volume.",
            ),
            col(
                "Access Modes",
                "string",
                0,
                "The ways the volume can be mounted.",
            ),
            col(
                "Reclaim Policy",
                "string",
                0,
                "What happens to the volume when it is released from its claim.",
            ),
            col("Status", "string", 0, "The phase of the volume."),
            col("Claim", "string", 0, "The claim bound to the volume."),
            col(
                "StorageClass",
                "string",
                0,
                "The storage class of the volume.",
            ),
            col(
                "VolumeAttributesClass",
                "string",
                0,
                "The volume attributes class of the volume.",
            ),
            col("Reason", "string", 0, "Why the volume is in its phase."),
            AGE,
            col("VolumeMode", "string", 1, "Filesystem or raw block device."),
        ],
        "PersistentVolumeClaim" => vec![
            NAME,
            col("Status", "string", 0, "The phase of the claim."),
            col("Volume", "string", 0, "The volume the claim is bound to."),
            col(
                "Capacity",
                "string",
                0,
                "The storage capacity of the bound volume.",
            ),
            col(
                "Access Modes",
                "string",
                0,
                "The ways the volume can be mounted.",
            ),
            col(
                "StorageClass",
                "string",
                0,
                "The storage class the claim asks for.",
            ),
            col(
                "VolumeAttributesClass",
                "string",
                0,
                "The volume attributes class the claim asks for.",
            ),
            AGE,
            col("VolumeMode", "string", 1, "Filesystem or raw block device."),
        ],
        "Ingress" => vec![
            NAME,
            col("Class", "string", 0, "The ingress class of the ingress."),
            col("Hosts", "string", 0, "The hosts the ingress routes."),
            col("Address", "string", 0, "Where the ingress is reachable."),
            col("Ports", "string", 0, "The ports the ingress listens on."),
            AGE,
        ],
        "NetworkPolicy" => vec![
            NAME,
            col(
                "Pod-Selector",
                "string",
                0,
                "The pods the policy applies to.",
            ),
            AGE,
        ],
        "IngressClass" => vec![
            NAME,
            col(
                "Controller",
                "string",
                0,
                "The controller that implements the class.",
            ),
            col("Parameters", "string", 0, "The class's parameters, if any."),
            AGE,
        ],
        "StorageClass" => vec![
            NAME,
            col("Provisioner", "string", 0, "The provisioner of the class."),
            col(
                "ReclaimPolicy",
                "string",
                0,
                "What happens to a volume of the class when its claim goes.",
            ),
            col(
                "VolumeBindingMode",
                "string",
                0,
                "When claims of the class are bound.",
            ),
            col(
                "AllowVolumeExpansion",
                "string",
                0,
                "Whether claims of the class may grow.",
            ),
            AGE,
        ],
        "CSIDriver" => vec![
            NAME,
            col(
                "AttachRequired",
                "string",
                0,
                "Whether volumes are attached.",
            ),
            col(
                "PodInfoOnMount",
                "string",
                0,
                "Whether mounts get pod details.",
            ),
            col(
                "StorageCapacity",
                "string",
                0,
                "Whether the driver reports capacity.",
            ),
            col(
                "TokenRequests",
                "string",
                0,
                "Audiences of service-account tokens.",
            ),
            col(
                "RequiresRepublish",
                "string",
                0,
                "Whether volumes are mounted again periodically.",
            ),
            col("Modes", "string", 0, "The volume lifecycle modes."),
            AGE,
        ],
        "CSINode" => vec![
            NAME,
            col(
                "Drivers",
                "integer",
                0,
                "The drivers installed on the node.",
            ),
            AGE,
        ],
        "VolumeAttachment" => vec![
            NAME,
            col(
                "Attacher",
                "string",
                0,
                "The driver that attaches the volume.",
            ),
            col("PV", "string", 0, "The attached persistent volume."),
            col("Node", "string", 0, "The node the volume is attached to."),
            col("Attached", "boolean", 0, "Whether the volume is attached."),
            AGE,
        ],
        "CSIStorageCapacity" => vec![
            NAME,
            col(
                "StorageClassName",
                "string",
                0,
                "The storage class the capacity is for.",
            ),
            col("Capacity", "string", 0, "The capacity available."),
        ],
        "DaemonSet" => vec![
            NAME,
            col(
                "Desired",
                "integer",
                0,
                "The number of nodes that should be running the daemon pod.",
            ),
            col(
                "Current",
                "integer",
                0,
                "The number of nodes running at least one daemon pod and are supposed to.",
            ),
            col(
                "Ready",
                "integer",
                0,
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
            ),
            col(
                "Up-to-date",
                "integer",
                0,
                "The total number of nodes that are running updated daemon pod.",
            ),
            col(
                "Available",
                "integer",
                0,
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available.",
            ),
            col(
                "Node Selector",
                "string",
                0,
                "The node labels the daemon pods require.",
            ),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        "StatefulSet" => vec![
            NAME,
            col("Ready", "string", 0, "Number of the pod with ready state"),
            AGE,
            CONTAINERS,
            IMAGES,
        ],
        "Job" => vec![
            NAME,
            col("Status", "string", 0, "Status of the job."),
            col(
                "Completions",
                "string",
                0,
                "The completed job pods out of the desired count.",
            ),
            col(
                "Duration",
                "string",
                0,
                "Time required to complete the job.",
            ),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        "CronJob" => vec![
            NAME,
            col("Schedule", "string", 0, "The schedule in Cron format."),
            col("Timezone", "string", 0, "The time zone of the schedule."),
            col("Suspend", "boolean", 0, "Whether new jobs are suspended."),
            col(
                "Active",
                "integer",
                0,
                "The number of currently running jobs.",
            ),
            col(
                "Last Schedule",
                "string",
                0,
                "When a job was last scheduled.",
            ),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        "ControllerRevision" => vec![
            NAME,
            col(
                "Controller",
                "string",
                0,
                "The object that owns the revision.",
            ),
            col("Revision", "integer", 0, "The revision's number."),
            AGE,
        ],
        "Lease" => vec![
            NAME,
            col("Holder", "string", 0, "The holder of the lease."),
            AGE,
        ],
        "PodDisruptionBudget" => vec![
            NAME,
            col(
                "Min Available",
                "string",
                0,
                "The minimum number of pods that must be available.",
            ),
            col(
                "Max Unavailable",
                "string",
                0,
                "The maximum number of pods that may be unavailable.",
            ),
            col(
                "Allowed Disruptions",
                "integer",
                0,
                "Calculated number of pods that may be disrupted at this time.",
            ),
            AGE,
        ],
        "RoleBinding" | "ClusterRoleBinding" => vec![
            NAME,
            col("Role", "string", 0, "The role the binding grants."),
            AGE,
            col("Users", "string", 1, "The users the binding names."),
            col("Groups", "string", 1, "The groups the binding names."),
            col(
                "ServiceAccounts",
                "string",
                1,
                "The service accounts the binding names.",
            ),
        ],
        "CertificateSigningRequest" => vec![
            NAME,
            AGE,
            col("SignerName", "string", 0, "The signer the request is for."),
            col("Requestor", "string", 0, "Who made the request."),
            col(
                "RequestedDuration",
                "string",
                0,
                "How long the certificate is asked to last.",
            ),
            col(
                "Condition",
                "string",
                0,
                "Whether the request is approved, denied or pending, and issued or failed.",
            ),
        ],
        "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" => vec![
            NAME,
            col(
                "Webhooks",
                "integer",
                0,
                "Webhooks is a list of webhooks and the affected resources and operations.",
            ),
            AGE,
        ],
        "ValidatingAdmissionPolicy" => vec![
            NAME,
            col(
                "Validations",
                "integer",
                0,
                "Validations contain CEL expressions which is used to apply the validation.",
            ),
            col(
                "ParamKind",
                "string",
                0,
                "ParamKind specifies the kind of resources used to parameterize this policy",
            ),
            AGE,
        ],
        "ValidatingAdmissionPolicyBinding" => vec![
            NAME,
            col(
                "PolicyName",
                "string",
                0,
                "PolicyName references a ValidatingAdmissionPolicy name which the ValidatingAdmissionPolicyBinding binds to.",
            ),
            col(
                "ParamRef",
                "string",
                0,
                "ParamRef specifies the parameter resource used to configure the admission control policy.",
            ),
            AGE,
        ],
        "APIService" => vec![
            NAME,
            col(
                "Service",
                "string",
                0,
                "The service that serves this API, or Local.",
            ),
            col("Available", "string", 0, "Whether this API is available."),
            AGE,
        ],
        "PriorityClass" => vec![
            NAME,
            col("Value", "integer", 0, "The priority of pods of this class."),
            col(
                "Global-Default",
                "boolean",
                0,
                "Whether pods without a class get this one.",
            ),
            AGE,
            col(
                "PreemptionPolicy",
                "string",
                0,
                "Whether pods of this class may preempt others.",
            ),
        ],
        "ResourceQuota" => vec![
            NAME,
            AGE,
            col(
                "Request",
                "string",
                0,
                "Request represents a minimum amount of cpu/memory that a container may consume.",
            ),
            col(
                "Limit",
                "string",
                0,
                "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node.",
            ),
        ],
        "HorizontalPodAutoscaler" => vec![
            NAME,
            col(
                "Reference",
                "string",
                0,
                "The object whose scale is controlled.",
            ),
            col("Targets", "string", 0, "The metrics and their targets."),
            col(
                "MinPods",
                "string",
                0,
                "The lower limit for the number of replicas.",
            ),
            col(
                "MaxPods",
                "integer",
                0,
                "The upper limit for the number of replicas.",
            ),
            col("Replicas", "integer", 0, "Current number of replicas."),
            AGE,
        ],
        _ => vec![
            NAME,
            Column {
                name: "Created At",
                ty: "date",
                format: "",
                priority: 0,
                description: "The time the object was created.",
            },
        ],
    }
}

/// The cells of one object's row, in `columns(kind)` order.
pub fn cells(kind: &str, obj: &Value) -> Vec<Cell> {
    let spec = &obj["spec"];
    let status = &obj["status"];
    match kind {
        "Pod" => pod_cells(obj),
        "Namespace" => vec![name(obj), Cell::text(s(&status["phase"])), created(obj)],
        "Node" => node_cells(obj),
        "Service" => service_cells(obj),
        "Endpoints" => vec![
            name(obj),
            Cell::text(endpoints_summary(&obj["subsets"])),
            created(obj),
        ],
        "EndpointSlice" => vec![
            name(obj),
            Cell::text(s(&obj["addressType"])),
            Cell::text(slice_ports(&obj["ports"])),
            Cell::text(slice_endpoints(&obj["endpoints"])),
            created(obj),
        ],
        "ConfigMap" => {
            let n = obj["data"].as_object().map_or(0, |m| m.len())
                + obj["binaryData"].as_object().map_or(0, |m| m.len());
            vec![name(obj), Cell::Int(n as i64), created(obj)]
        }
        "Secret" => vec![
            name(obj),
            Cell::text(s(&obj["type"])),
            Cell::Int(obj["data"].as_object().map_or(0, |m| m.len()) as i64),
            created(obj),
        ],
        "ServiceAccount" => vec![
            name(obj),
            Cell::Int(obj["secrets"].as_array().map_or(0, |a| a.len()) as i64),
            created(obj),
        ],
        "Event" => event_cells(obj),
        "Deployment" => {
            let (c, i) = containers_and_images(&spec["template"]["spec"]);
            vec![
                name(obj),
                Cell::text(format!(
                    "{}/{}",
                    int(&status["readyReplicas"]),
                    int(&spec["replicas"])
                )),
                Cell::Int(int(&status["updatedReplicas"])),
                Cell::Int(int(&status["availableReplicas"])),
                created(obj),
                c,
                i,
                selector_cell(&spec["selector"]),
            ]
        }
        "ReplicaSet" => {
            let (c, i) = containers_and_images(&spec["template"]["spec"]);
            vec![
                name(obj),
                Cell::Int(int(&spec["replicas"])),
                Cell::Int(int(&status["replicas"])),
                Cell::Int(int(&status["readyReplicas"])),
                created(obj),
                c,
                i,
                selector_cell(&spec["selector"]),
            ]
        }
        "ReplicationController" => {
            let (c, i) = containers_and_images(&spec["template"]["spec"]);
            vec![
                name(obj),
                Cell::Int(int(&spec["replicas"])),
                Cell::Int(int(&status["replicas"])),
                Cell::Int(int(&status["readyReplicas"])),
                created(obj),
                c,
                i,
                Cell::text(map_selector(&spec["selector"])),
            ]
        }
        "PersistentVolume" => {
            let claim = &spec["claimRef"];
            let claim = if claim.is_object() {
                format!("{}/{}", s(&claim["namespace"]), s(&claim["name"]))
            } else {
                String::new()
            };
            vec![
                name(obj),
                Cell::text(s(&spec["capacity"]["storage"])),
                Cell::text(access_modes(&spec["accessModes"])),
                Cell::text(s(&spec["persistentVolumeReclaimPolicy"])),
                Cell::text(phase_or_terminating(obj)),
                Cell::text(claim),
                Cell::text(s(&spec["storageClassName"])),
                Cell::text(or_unset(s(&spec["volumeAttributesClassName"]))),
                Cell::text(s(&status["reason"])),
                created(obj),
                Cell::text(s(&spec["volumeMode"])),
            ]
        }
        "PersistentVolumeClaim" => {
            // kubectl shows the claim's size and modes once it names its volume.
            let bound = !s(&spec["volumeName"]).is_empty();
            vec![
                name(obj),
                Cell::text(phase_or_terminating(obj)),
                Cell::text(s(&spec["volumeName"])),
                Cell::text(if bound {
                    s(&status["capacity"]["storage"])
                } else {
                    ""
                }),
                Cell::text(if bound {
                    access_modes(&status["accessModes"])
                } else {
                    String::new()
                }),
                Cell::text(s(&spec["storageClassName"])),
                Cell::text(or_unset(s(&spec["volumeAttributesClassName"]))),
                created(obj),
                Cell::text(s(&spec["volumeMode"])),
            ]
        }
        "Ingress" => ingress_cells(obj),
        "StorageClass" => {
            let default = api::kinds::storage::DEFAULT_CLASS_ANNOTATIONS
                .iter()
                .any(|a| s(&obj["metadata"]["annotations"][*a]) == "true");
            let mut name = s(&obj["metadata"]["name"]).to_string();
            if default {
                name.push_str(" (default)");
            }
            let or = |v: &Value, d: &str| {
                let v = s(v);
                if v.is_empty() {
                    d.to_string()
                } else {
                    v.to_string()
                }
            };
            vec![
                Cell::text(name),
                Cell::text(s(&obj["provisioner"])),
                Cell::text(or(&obj["reclaimPolicy"], "Delete")),
                Cell::text(or(&obj["volumeBindingMode"], "Immediate")),
                Cell::text(flag(&obj["allowVolumeExpansion"], false)),
                created(obj),
            ]
        }
        "CSIDriver" => {
            let tokens = spec["tokenRequests"]
                .as_array()
                .map_or("<unset>".to_string(), |t| {
                    t.iter()
                        .map(|r| s(&r["audience"]))
                        .collect::<Vec<_>>()
                        .join(",")
                });
            let modes = spec["volumeLifecycleModes"]
                .as_array()
                .filter(|m| !m.is_empty())
                .map_or("<none>".to_string(), |m| {
                    m.iter().map(s).collect::<Vec<_>>().join(",")
                });
            vec![
                name(obj),
                Cell::text(flag(&spec["attachRequired"], true)),
                Cell::text(flag(&spec["podInfoOnMount"], false)),
                Cell::text(flag(&spec["storageCapacity"], false)),
                Cell::text(tokens),
                Cell::text(flag(&spec["requiresRepublish"], false)),
                Cell::text(modes),
                created(obj),
            ]
        }
        "CSINode" => vec![
            name(obj),
            Cell::Int(spec["drivers"].as_array().map_or(0, Vec::len) as i64),
            created(obj),
        ],
        "VolumeAttachment" => vec![
            name(obj),
            Cell::text(s(&spec["attacher"])),
            Cell::text(s(&spec["source"]["persistentVolumeName"])),
            Cell::text(s(&spec["nodeName"])),
            Cell::text(flag(&status["attached"], false)),
            created(obj),
        ],
        "CSIStorageCapacity" => vec![
            name(obj),
            Cell::text(s(&obj["storageClassName"])),
            Cell::text(or_unset(s(&obj["capacity"]))),
        ],
        "NetworkPolicy" => vec![name(obj), selector_cell(&spec["podSelector"]), created(obj)],
        "IngressClass" => {
            let p = &spec["parameters"];
            let params = if p.is_object() {
                let group = s(&p["apiGroup"]);
                let kind = if group.is_empty() {
                    s(&p["kind"]).to_string()
                } else {
                    format!("{}.{group}", s(&p["kind"]))
                };
                format!("{kind}/{}", s(&p["name"]))
            } else {
                "<none>".into()
            };
            vec![
                name(obj),
                Cell::text(s(&spec["controller"])),
                Cell::text(params),
                created(obj),
            ]
        }
        "DaemonSet" => {
            let (c, i) = containers_and_images(&spec["template"]["spec"]);
            vec![
                name(obj),
                Cell::Int(int(&status["desiredNumberScheduled"])),
                Cell::Int(int(&status["currentNumberScheduled"])),
                Cell::Int(int(&status["numberReady"])),
                Cell::Int(int(&status["updatedNumberScheduled"])),
                Cell::Int(int(&status["numberAvailable"])),
                Cell::text(map_selector(&spec["template"]["spec"]["nodeSelector"])),
                created(obj),
                c,
                i,
                selector_cell(&spec["selector"]),
            ]
        }
        "StatefulSet" => {
            let (c, i) = containers_and_images(&spec["template"]["spec"]);
            vec![
                name(obj),
                Cell::text(format!(
                    "{}/{}",
                    int(&status["readyReplicas"]),
                    int(&spec["replicas"])
                )),
                created(obj),
                c,
                i,
            ]
        }
        "Job" => job_cells(obj),
        "CronJob" => {
            let (c, i) = containers_and_images(&spec["jobTemplate"]["spec"]["template"]["spec"]);
            vec![
                name(obj),
                Cell::text(s(&spec["schedule"])),
                Cell::text(or_none(s(&spec["timeZone"]))),
                Cell::text(if spec["suspend"].as_bool() == Some(true) {
                    "True"
                } else {
                    "False"
                }),
                Cell::Int(status["active"].as_array().map_or(0, |a| a.len()) as i64),
                Cell::Since(ts(&status["lastScheduleTime"])),
                created(obj),
                c,
                i,
                selector_cell(&spec["jobTemplate"]["spec"]["selector"]),
            ]
        }
        "ControllerRevision" => {
            let owner = obj["metadata"]["ownerReferences"]
                .as_array()
                .and_then(|o| o.iter().find(|r| r["controller"] == true))
                .map(|r| {
                    let kind = s(&r["kind"]).to_lowercase();
                    let group = s(&r["apiVersion"])
                        .split_once('/')
                        .map(|(g, _)| g.to_string())
                        .unwrap_or_default();
                    let kind = if group.is_empty() {
                        kind
                    } else {
                        format!("{kind}.{group}")
                    };
                    format!("{kind}/{}", s(&r["name"]))
                })
                .unwrap_or_else(|| "<none>".into());
            vec![
                name(obj),
                Cell::text(owner),
                Cell::Int(obj["revision"].as_i64().unwrap_or(0)),
                created(obj),
            ]
        }
        "Lease" => vec![
            name(obj),
            Cell::text(s(&spec["holderIdentity"])),
            created(obj),
        ],
        "PodDisruptionBudget" => {
            let show = |v: &Value| match v {
                Value::Null => "N/A".to_string(),
                Value::String(x) => x.clone(),
                other => other.to_string(),
            };
            vec![
                name(obj),
                Cell::text(show(&spec["minAvailable"])),
                Cell::text(show(&spec["maxUnavailable"])),
                Cell::Int(int(&status["disruptionsAllowed"])),
                created(obj),
            ]
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let subjects = |kind: &str| {
                obj["subjects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|x| x["kind"] == kind)
                    .map(|x| match s(&x["namespace"]) {
                        ns if kind == "ServiceAccount" => format!("{ns}/{}", s(&x["name"])),
                        _ => s(&x["name"]).to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                name(obj),
                Cell::text(format!(
                    "{}/{}",
                    s(&obj["roleRef"]["kind"]),
                    s(&obj["roleRef"]["name"])
                )),
                created(obj),
                Cell::text(subjects("User")),
                Cell::text(subjects("Group")),
                Cell::text(subjects("ServiceAccount")),
            ]
        }
        "CertificateSigningRequest" => {
            let has = |t: &str| {
                obj["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == t)
            };
            let mut condition = if has("Denied") {
                "Denied"
            } else if has("Approved") {
                "Approved"
            } else {
                "Pending"
            }
            .to_string();
            if has("Failed") {
                condition.push_str(",Failed");
            }
            if !s(&obj["status"]["certificate"]).is_empty() {
                condition.push_str(",Issued");
            }
            let requested = obj["spec"]["expirationSeconds"].as_i64().map_or_else(
                || "<none>".to_string(),
                |secs| human_duration(jiff::SignedDuration::from_secs(secs)),
            );
            let signer = match s(&obj["spec"]["signerName"]) {
                "" => "<none>",
                n => n,
            };
            vec![
                name(obj),
                created(obj),
                Cell::text(signer),
                Cell::text(s(&obj["spec"]["username"])),
                Cell::text(requested),
                Cell::text(condition),
            ]
        }
        "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" => vec![
            name(obj),
            Cell::Int(obj["webhooks"].as_array().map_or(0, |w| w.len() as i64)),
            created(obj),
        ],
        "ValidatingAdmissionPolicy" => vec![
            name(obj),
            Cell::Int(spec["validations"].as_array().map_or(0, |v| v.len() as i64)),
            Cell::text(match spec["paramKind"]["kind"].as_str() {
                Some(k) => format!("{}/{k}", s(&spec["paramKind"]["apiVersion"])),
                None => "<unset>".to_string(),
            }),
            created(obj),
        ],
        "ValidatingAdmissionPolicyBinding" => vec![
            name(obj),
            Cell::text(s(&spec["policyName"])),
            Cell::text(match spec["paramRef"]["name"].as_str() {
                Some(n) => match spec["paramRef"]["namespace"].as_str() {
                    Some(ns) => format!("{ns}/{n}"),
                    None => format!("*/{n}"),
                },
                None => "<unset>".to_string(),
            }),
            created(obj),
        ],
        "APIService" => {
            let service = match spec["service"]["name"].as_str() {
                Some(n) => format!("{}/{n}", s(&spec["service"]["namespace"])),
                None => "Local".to_string(),
            };
            let available = status["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Available"))
                .map_or_else(
                    || "Unknown".to_string(),
                    |c| match (s(&c["status"]), s(&c["reason"])) {
                        ("True", _) => "True".to_string(),
                        (st, "") => st.to_string(),
                        (st, reason) => format!("{st} ({reason})"),
                    },
                );
            vec![
                name(obj),
                Cell::text(service),
                Cell::text(available),
                created(obj),
            ]
        }
        "PriorityClass" => vec![
            name(obj),
            Cell::Int(int(&obj["value"])),
            Cell::text(if obj["globalDefault"].as_bool() == Some(true) {
                "true"
            } else {
                "false"
            }),
            created(obj),
            Cell::text(or_none(s(&obj["preemptionPolicy"]))),
        ],
        "ResourceQuota" => {
            let usage = |limits: bool| {
                let hard = status["hard"].as_object().or(spec["hard"].as_object());
                hard.into_iter()
                    .flatten()
                    .filter(|(k, _)| k.starts_with("limits.") == limits)
                    .map(|(k, v)| {
                        let used = status["used"][k].as_str().unwrap_or("0");
                        format!("{k}: {used}/{}", s(v))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                name(obj),
                created(obj),
                Cell::text(usage(false)),
                Cell::text(usage(true)),
            ]
        }
        "HorizontalPodAutoscaler" => {
            let r = &spec["scaleTargetRef"];
            let targets: Vec<String> = spec["metrics"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| hpa_target(m, &status["currentMetrics"]))
                .collect();
            vec![
                name(obj),
                Cell::text(format!("{}/{}", s(&r["kind"]), s(&r["name"]))),
                Cell::text(if targets.is_empty() {
                    "<none>".into()
                } else {
                    targets.join(", ")
                }),
                Cell::text(
                    spec["minReplicas"]
                        .as_i64()
                        .map_or("<unset>".into(), |n| n.to_string()),
                ),
                Cell::Int(int(&spec["maxReplicas"])),
                Cell::Int(int(&status["currentReplicas"])),
                created(obj),
            ]
        }
        _ => vec![
            name(obj),
            Cell::text(s(&obj["metadata"]["creationTimestamp"])),
        ],
    }
}

/// One metric of an HPA as kubectl shows it: `cpu: 12%/50%`, `<unknown>` until measured.
fn hpa_target(m: &Value, current: &Value) -> String {
    let r = &m["resource"];
    let res = s(&r["name"]);
    let target = &r["target"];
    let now = current
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Resource" && c["resource"]["name"] == res)
        .map(|c| &c["resource"]["current"]);
    match s(&target["type"]) {
        "Utilization" => {
            let cur = now
                .and_then(|c| c["averageUtilization"].as_i64())
                .map_or("<unknown>".to_string(), |u| format!("{u}%"));
            format!("{res}: {cur}/{}%", int(&target["averageUtilization"]))
        }
        _ => {
            let cur = now
                .and_then(|c| c["averageValue"].as_str())
                .map_or("<unknown>".to_string(), str::to_string);
            format!("{res}: {cur}/{}", s(&target["averageValue"]))
        }
    }
}

fn pod_cells(obj: &Value) -> Vec<Cell> {
    let spec = &obj["spec"];
    let status = &obj["status"];
    let containers = spec["containers"].as_array().map_or(0, |a| a.len());
    let mut reason = s(&status["phase"]).to_string();
    if !s(&status["reason"]).is_empty() {
        reason = s(&status["reason"]).to_string();
    }
    let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
    let condition = |ty: &str| {
        conditions
            .iter()
            .find(|c| s(&c["type"]) == ty)
            .map(|c| s(&c["status"]).to_string())
    };
    if let Some(c) = conditions.iter().find(|c| s(&c["type"]) == "PodScheduled")
        && s(&c["reason"]) == "SchedulingGated"
    {
        reason = "SchedulingGated".into();
    }
    let mut restarts = 0;
    let mut last_restart: Option<Timestamp> = None;
    let mut note_restart = |cs: &Value, restarts: &mut i64| {
        *restarts += int(&cs["restartCount"]);
        if let Some(t) = ts(&cs["lastState"]["terminated"]["finishedAt"])
            && last_restart.is_none_or(|l| t > l)
        {
            last_restart = Some(t);
        }
    };
    let init_specs = spec["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let init_statuses = status["initContainerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut initializing = false;
    for (i, cs) in init_statuses.iter().enumerate() {
        note_restart(cs, &mut restarts);
        let term = &cs["state"]["terminated"];
        let waiting = &cs["state"]["waiting"];
        let sidecar = init_specs
            .iter()
            .any(|c| s(&c["name"]) == s(&cs["name"]) && s(&c["restartPolicy"]) == "Always");
        if !term.is_null() && int(&term["exitCode"]) == 0 {
            continue;
        }
        if sidecar && cs["started"].as_bool() == Some(true) {
            continue;
        }
        reason = if !term.is_null() {
            if !s(&term["reason"]).is_empty() {
                format!("Init:{}", s(&term["reason"]))
            } else if int(&term["signal"]) != 0 {
                format!("Init:Signal:{}", int(&term["signal"]))
            } else {
                format!("Init:ExitCode:{}", int(&term["exitCode"]))
            }
        } else if !s(&waiting["reason"]).is_empty() && s(&waiting["reason"]) != "PodInitializing" {
            format!("Init:{}", s(&waiting["reason"]))
        } else {
            format!("Init:{}/{}", i, init_specs.len())
        };
        initializing = true;
        break;
    }
    let mut ready = 0;
    if !initializing || condition("Initialized").as_deref() == Some("True") {
        let mut has_running = false;
        let statuses = status["containerStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for cs in statuses.iter().rev() {
            note_restart(cs, &mut restarts);
            let st = &cs["state"];
            if !s(&st["waiting"]["reason"]).is_empty() {
                reason = s(&st["waiting"]["reason"]).to_string();
            } else if !st["terminated"].is_null() {
                let t = &st["terminated"];
                reason = if !s(&t["reason"]).is_empty() {
                    s(&t["reason"]).to_string()
                } else if int(&t["signal"]) != 0 {
                    format!("Signal:{}", int(&t["signal"]))
                } else {
                    format!("ExitCode:{}", int(&t["exitCode"]))
                };
            } else if cs["ready"].as_bool() == Some(true) && !st["running"].is_null() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if condition("Ready").as_deref() == Some("True") {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }
    if !obj["metadata"]["deletionTimestamp"].is_null() {
        reason = if s(&status["reason"]) == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    let restarts_cell = match last_restart {
        Some(t) if restarts > 0 => Cell::Text(format!(
            "{restarts} ({} ago)",
            human_duration(Timestamp::now().duration_since(t))
        )),
        _ => Cell::text(restarts.to_string()),
    };
    let gates = spec["readinessGates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let gates_cell = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let met = gates
            .iter()
            .filter(|g| condition(s(&g["conditionType"])).as_deref() == Some("True"))
            .count();
        format!("{met}/{}", gates.len())
    };
    vec![
        name(obj),
        Cell::text(format!("{ready}/{containers}")),
        Cell::text(reason),
        restarts_cell,
        created(obj),
        Cell::text(or_none(s(&status["podIP"]))),
        Cell::text(or_none(s(&spec["nodeName"]))),
        Cell::text(or_none(s(&status["nominatedNodeName"]))),
        Cell::text(gates_cell),
    ]
}

fn node_cells(obj: &Value) -> Vec<Cell> {
    let status = &obj["status"];
    let ready = status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| s(&c["type"]) == "Ready"))
        .map(|c| match s(&c["status"]) {
            "True" => "Ready",
            "False" => "NotReady",
            _ => "Unknown",
        })
        .unwrap_or("Unknown");
    let mut state = ready.to_string();
    if obj["spec"]["unschedulable"].as_bool() == Some(true) {
        state.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = Vec::new();
    if let Some(labels) = obj["metadata"]["labels"].as_object() {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.push(role.to_string());
                }
            } else if k == "kubernetes.io/role" && !s(v).is_empty() {
                roles.push(s(v).to_string());
            }
        }
    }
    roles.sort();
    roles.dedup();
    let address = |ty: &str| -> String {
        status["addresses"]
            .as_array()
            .and_then(|a| a.iter().find(|x| s(&x["type"]) == ty))
            .map_or("<none>".to_string(), |x| s(&x["address"]).to_string())
    };
    let info = &status["nodeInfo"];
    vec![
        name(obj),
        Cell::text(state),
        Cell::text(if roles.is_empty() {
            "<none>".to_string()
        } else {
            roles.join(",")
        }),
        created(obj),
        Cell::text(s(&info["kubeletVersion"])),
        Cell::text(address("InternalIP")),
        Cell::text(address("ExternalIP")),
        Cell::text(or_none(s(&info["osImage"]))),
        Cell::text(or_none(s(&info["kernelVersion"]))),
        Cell::text(or_none(s(&info["containerRuntimeVersion"]))),
    ]
}

fn service_cells(obj: &Value) -> Vec<Cell> {
    let spec = &obj["spec"];
    let ty = s(&spec["type"]);
    let cluster_ip = match s(&spec["clusterIP"]) {
        "" => "<none>",
        ip => ip,
    };
    let mut external: Vec<String> = spec["externalIPs"]
        .as_array()
        .map(|a| a.iter().map(|v| s(v).to_string()).collect())
        .unwrap_or_default();
    let external = match ty {
        "ExternalName" => s(&spec["externalName"]).to_string(),
        "LoadBalancer" => {
            for ing in obj["status"]["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let addr = if s(&ing["ip"]).is_empty() {
                    s(&ing["hostname"])
                } else {
                    s(&ing["ip"])
                };
                external.push(addr.to_string());
            }
            if external.is_empty() {
                "<pending>".to_string()
            } else {
                external.join(",")
            }
        }
        _ if external.is_empty() => "<none>".to_string(),
        _ => external.join(","),
    };
    let mut ports = Vec::new();
    for p in spec["ports"].as_array().into_iter().flatten() {
        let proto = match s(&p["protocol"]) {
            "" => "TCP",
            x => x,
        };
        match p["nodePort"].as_i64().filter(|n| *n != 0) {
            Some(np) => ports.push(format!("{}:{np}/{proto}", int(&p["port"]))),
            None => ports.push(format!("{}/{proto}", int(&p["port"]))),
        }
    }
    vec![
        name(obj),
        Cell::text(ty),
        Cell::text(cluster_ip),
        Cell::text(external),
        Cell::text(if ports.is_empty() {
            "<none>".to_string()
        } else {
            ports.join(",")
        }),
        created(obj),
        Cell::text(map_selector(&spec["selector"])),
    ]
}

/// An EndpointSlice's ports as `kubectl get` prints them: `80,443`, `<unset>` for a port that
/// means all, `<none>` for none.
fn slice_ports(ports: &Value) -> String {
    let list: Vec<String> = ports
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| match p["port"].as_i64() {
            Some(n) => n.to_string(),
            None => "<unset>".into(),
        })
        .collect();
    if list.is_empty() {
        "<none>".into()
    } else {
        list.join(",")
    }
}

/// The first three addresses of an EndpointSlice, and how many more.
fn slice_endpoints(endpoints: &Value) -> String {
    const SHOWN: usize = 3;
    let all: Vec<&str> = endpoints
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["addresses"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    if all.is_empty() {
        return "<none>".into();
    }
    let mut out = all[..all.len().min(SHOWN)].join(",");
    if all.len() > SHOWN {
        let _ = write!(out, " + {} more...", all.len() - SHOWN);
    }
    out
}

fn endpoints_summary(subsets: &Value) -> String {
    const SHOWN: usize = 3;
    let mut all = Vec::new();
    for subset in subsets.as_array().into_iter().flatten() {
        let ports: Vec<i64> = subset["ports"]
            .as_array()
            .map(|a| a.iter().map(|p| int(&p["port"])).collect())
            .unwrap_or_default();
        for addr in subset["addresses"].as_array().into_iter().flatten() {
            if ports.is_empty() {
                all.push(s(&addr["ip"]).to_string());
            }
            for p in &ports {
                all.push(format!("{}:{p}", s(&addr["ip"])));
            }
        }
    }
    if all.is_empty() {
        return "<none>".into();
    }
    let mut out = all[..all.len().min(SHOWN)].join(",");
    if all.len() > SHOWN {
        let _ = write!(out, " + {} more...", all.len() - SHOWN);
    }
    out
}

fn event_cells(obj: &Value) -> Vec<Cell> {
    let involved = &obj["involvedObject"];
    let last = ts(&obj["lastTimestamp"])
        .or_else(|| ts(&obj["eventTime"]))
        .or_else(|| ts(&obj["metadata"]["creationTimestamp"]));
    let first = ts(&obj["firstTimestamp"]).or_else(|| ts(&obj["eventTime"]));
    let object = format!(
        "{}/{}",
        s(&involved["kind"]).to_lowercase(),
        s(&involved["name"])
    );
    let source = {
        let component = s(&obj["source"]["component"]);
        let component = if component.is_empty() {
            s(&obj["reportingComponent"])
        } else {
            component
        };
        match s(&obj["source"]["host"]) {
            "" => component.to_string(),
            host => format!("{component}, {host}"),
        }
    };
    vec![
        Cell::Since(last),
        Cell::text(s(&obj["type"])),
        Cell::text(s(&obj["reason"])),
        Cell::text(object),
        Cell::text(s(&involved["fieldPath"])),
        Cell::text(source),
        Cell::text(s(&obj["message"]).trim()),
        Cell::Since(first),
        Cell::text(
            obj["count"]
                .as_i64()
                .map_or(String::new(), |c| c.to_string()),
        ),
        name(obj),
    ]
}

fn job_cells(obj: &Value) -> Vec<Cell> {
    let spec = &obj["spec"];
    let status = &obj["status"];
    let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
    let has = |ty: &str| {
        conditions
            .iter()
            .any(|c| s(&c["type"]) == ty && s(&c["status"]) == "True")
    };
    let state = if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else if spec["suspend"].as_bool() == Some(true) || has("Suspended") {
        "Suspended"
    } else {
        "Running"
    };
    let succeeded = int(&status["succeeded"]);
    let completions = match spec["completions"].as_i64() {
        Some(c) => format!("{succeeded}/{c}"),
        None => {
            let parallelism = spec["parallelism"].as_i64().unwrap_or(0);
            if parallelism > 1 {
                format!("{succeeded}/1 of {parallelism}")
            } else {
                format!("{succeeded}/1")
            }
        }
    };
    let (c, i) = containers_and_images(&spec["template"]["spec"]);
    vec![
        name(obj),
        Cell::text(state),
        Cell::text(completions),
        Cell::Between(ts(&status["startTime"]), ts(&status["completionTime"])),
        created(obj),
        c,
        i,
        selector_cell(&spec["selector"]),
    ]
}

/// `PartialObjectMetadata` for a table row: the metadata kubectl reads for `--show-labels`
/// and `-L`, without the (large) managed fields.
pub fn partial_metadata(obj: &Value) -> Value {
    let mut meta = obj["metadata"].clone();
    if let Some(m) = meta.as_object_mut() {
        m.remove("managedFields");
    }
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta})
}

/// The cells of one object of `r`: its kind's columns, or a custom kind's printer columns.
pub fn cells_of(r: &api::Resource, obj: &Value) -> Vec<Cell> {
    match r.ops.custom() {
        Some(c) => custom_cells(&c.kind().columns, obj),
        None => cells(r.kind, obj),
    }
}

/// A custom kind's row: its name, then each printer column's value (or its age, without
/// printer columns).
fn custom_cells(columns: &[CustomResourceColumnDefinition], obj: &Value) -> Vec<Cell> {
    let mut out = vec![Cell::text(s(&obj["metadata"]["name"]))];
    if columns.is_empty() {
        out.push(created(obj));
        return out;
    }
    for c in columns {
        let v = api::custom::at_path(obj, &c.json_path).unwrap_or(&Value::Null);
        out.push(match (c.type_.as_str(), v) {
            (_, Value::Null) => Cell::text("<none>"),
            ("date", v) => Cell::Since(ts(v)),
            ("integer", Value::Number(n)) if n.is_i64() => Cell::Int(n.as_i64().unwrap_or(0)),
            (_, Value::String(x)) => Cell::text(x.clone()),
            (_, other) => Cell::text(other.to_string()),
        });
    }
    out
}

/// The column definitions as the Table carries them.
pub fn column_definitions(r: &api::Resource) -> Value {
    if let Some(c) = r.ops.custom() {
        let kind = c.kind();
        let mut cols = vec![
            json!({"name": NAME.name, "type": NAME.ty, "format": NAME.format,
                                   "description": NAME.description, "priority": 0}),
        ];
        if kind.columns.is_empty() {
            cols.push(json!({"name": AGE.name, "type": "date", "format": "",
                             "description": AGE.description, "priority": 0}));
        }
        for col in &kind.columns {
            cols.push(json!({"name": col.name, "type": col.type_,
                             "format": col.format.clone().unwrap_or_default(),
                             "description": col.description.clone().unwrap_or_default(),
                             "priority": col.priority.unwrap_or(0)}));
        }
        return Value::Array(cols);
    }
    Value::Array(
        columns(r.kind)
            .iter()
            .map(|c| {
                json!({"name": c.name, "type": c.ty, "format": c.format,
                       "description": c.description, "priority": c.priority})
            })
            .collect(),
    )
}

/// Labels as a sorted map, for selectors.
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), s(v).to_string()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;

    #[test]
    fn durations_print_like_kubectl() {
        let cases = [
            (0, "0s"),
            (59, "59s"),
            (119, "119s"),
            (120, "2m"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 - 1, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60, "3h1m"),
            (9 * 3600, "9h"),
            (2 * 86400, "2d"),
            (2 * 86400 + 3600, "2d1h"),
            (10 * 86400, "10d"),
            (3 * 365 * 86400, "3y"),
            (3 * 365 * 86400 + 86400, "3y1d"),
            (9 * 365 * 86400, "9y"),
        ];
        for (secs, want) in cases {
            assert_eq!(
                human_duration(SignedDuration::from_secs(secs)),
                want,
                "{secs}s"
            );
        }
        assert_eq!(human_duration(SignedDuration::from_secs(-5)), "<invalid>");
    }

    #[test]
    fn pod_status_column() {
        let running = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let c = cells("Pod", &running);
        assert_eq!(c[1], Cell::text("1/2"));
        assert_eq!(c[2], Cell::text("CrashLoopBackOff"));
        assert_eq!(c[3], Cell::text("2"));
        assert_eq!(c[5], Cell::text("10.0.0.5"));
        let mut deleting = running.clone();
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert_eq!(cells("Pod", &deleting)[2], Cell::text("Terminating"));
        let init = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}], "initContainers": [{"name": "i"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [{"name": "i", "state": {"running": {}}}]}});
        assert_eq!(cells("Pod", &init)[2], Cell::text("Init:0/1"));
        let pending = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Pending"}});
        assert_eq!(cells("Pod", &pending)[2], Cell::text("Pending"));
        assert_eq!(cells("Pod", &pending)[6], Cell::text("<none>"));
    }

    #[test]
    fn service_and_deployment_columns() {
        let svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "clusterIP": "10.43.0.10",
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}, {"port": 53, "protocol": "UDP"}],
            "selector": {"app": "web"}}});
        let c = cells("Service", &svc);
        assert_eq!(c[3], Cell::text("<none>"));
        assert_eq!(c[4], Cell::text("80:30080/TCP,53/UDP"));
        assert_eq!(c[6], Cell::text("app=web"));
        let d = json!({"metadata": {"name": "web"}, "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
            "template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        let c = cells("Deployment", &d);
        assert_eq!(c[1], Cell::text("2/3"));
        assert_eq!(c[2], Cell::Int(3));
        assert_eq!(c[6], Cell::text("nginx:1.27"));
        assert_eq!(c[7], Cell::text("app=web"));
        assert_eq!(columns("Deployment").len(), c.len());
        for kind in api::resources::all()
            .iter()
            .map(|r| r.kind)
            .chain(["Other"])
        {
            assert_eq!(columns(kind).len(), cells(kind, &json!({})).len(), "{kind}");
        }
    }
}

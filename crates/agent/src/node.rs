//! The node: registered with what the machine has, kept alive with a Lease renewed every few
//! seconds, its Ready condition reported now and then.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use api::k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use api::k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo,
};
use api::k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use client::{Client, ClientError};
use serde_json::json;
use tracing::{debug, info, warn};

/// How often the Lease is renewed: four renewals fit in the control plane's default grace
/// period of 8 s, so a dead node is noticed within 10 s (the kubelet renews every 10 s for a
/// 40 s grace). A renewal is one small write: 500 a second for 1,000 nodes.
pub const LEASE_RENEW: Duration = Duration::from_secs(2);
pub const LEASE_DURATION_SECONDS: i32 = 8;
/// How soon a failed renewal is tried again, once.
const LEASE_RETRY: Duration = Duration::from_millis(250);
/// How often the Node's status is refreshed even when nothing changed.
pub const STATUS_EVERY: Duration = Duration::from_secs(60);
const LEASE_NAMESPACE: &str = "kube-node-lease";

#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub name: String,
    pub ip: IpAddr,
    pub max_pods: u32,
    /// Where pods' data lives, for ephemeral-storage capacity.
    pub data_dir: std::path::PathBuf,
    /// Where the built-in provisioner's volumes live on this node (published on the Node).
    pub storage_dir: std::path::PathBuf,
    /// Most claim-backed volumes this node's pods use at once (`None`: no limit).
    pub max_volumes: Option<u32>,
    pub runtime_version: String,
    /// The port of the node's HTTPS endpoint, published in `daemonEndpoints`.
    pub endpoint_port: u16,
}

fn now_time() -> Time {
    Time(jiff::Timestamp::now())
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// `PRETTY_NAME` from /etc/os-release.
fn os_image() -> String {
    read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

fn memory_kib() -> u64 {
    read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn disk_kib(path: &std::path::Path) -> u64 {
    nix::sys::statvfs::statvfs(path)
        .map(|s| s.blocks() * s.fragment_size() / 1024)
        .unwrap_or(0)
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl NodeInfo {
    pub fn object(&self) -> Node {
        let labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), self.name.clone()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            (
                "kubernetes.io/arch".to_string(),
                runtime::images::host_arch().to_string(),
            ),
            ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
            (
                "beta.kubernetes.io/arch".to_string(),
                runtime::images::host_arch().to_string(),
            ),
        ]);
        Node {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(labels),
                annotations: Some(self.annotations()),
                ..Default::default()
            },
            spec: Some(Default::default()),
            status: Some(self.status()),
        }
    }

    /// What the agent says about its node in annotations.
    fn annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(
            api::kinds::storage::NODE_DIR_ANNOTATION.to_string(),
            self.storage_dir.to_string_lossy().into_owned(),
        )])
    }

    pub fn status(&self) -> NodeStatus {
        let mut capacity = BTreeMap::from([
            ("cpu".to_string(), Quantity(cpus().to_string())),
            (
                "memory".to_string(),
                Quantity(format!("{}Ki", memory_kib())),
            ),
            ("pods".to_string(), Quantity(self.max_pods.to_string())),
            (
                "ephemeral-storage".to_string(),
                Quantity(format!("{}Ki", disk_kib(&self.data_dir))),
            ),
        ]);
        if let Some(n) = self.max_volumes {
            capacity.insert(
                api::kinds::storage::VOLUMES_RESOURCE.to_string(),
                Quantity(n.to_string()),
            );
        }
        let now = now_time();
        let condition = |ty: &str, status: &str, reason: &str, message: &str| NodeCondition {
            type_: ty.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(now.clone()),
        };
        let uname = nix::sys::utsname::uname().ok();
        let kernel = uname
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        NodeStatus {
            capacity: Some(capacity.clone()),
            allocatable: Some(capacity),
            conditions: Some(vec![
                condition(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "berth agent has sufficient memory available",
                ),
                condition(
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "berth agent has no disk pressure",
                ),
                condition(
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "berth agent has sufficient PID available",
                ),
                condition(
                    "Ready",
                    "True",
                    "KubeletReady",
                    "berth agent is posting ready status",
                ),
            ]),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: self.ip.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: self.name.clone(),
                },
            ]),
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint {
                    port: i32::from(self.endpoint_port),
                }),
            }),
            node_info: Some(NodeSystemInfo {
                architecture: runtime::images::host_arch().into(),
                boot_id: read("/proc/sys/kernel/random/boot_id"),
                container_runtime_version: self.runtime_version.clone(),
                kernel_version: kernel,
                kube_proxy_version: String::new(),
                kubelet_version: format!(
                    "v{}.{}.{}",
                    api::KUBERNETES_VERSION.0,
                    api::KUBERNETES_VERSION.1,
                    api::KUBERNETES_VERSION.2
                ),
                machine_id: read("/etc/machine-id"),
                operating_system: "linux".into(),
                os_image: os_image(),
                system_uuid: read("/sys/class/dmi/id/product_uuid"),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// Create the Node, or refresh its status if it exists (the agent restarted).
/// The node's pod address ranges, as the control plane assigned them (none yet: empty).
pub async fn pod_cidrs(c: &Client, name: &str) -> Result<Vec<net::Cidr>, ClientError> {
    let node = c.get::<Node>(None, name).await?;
    let spec = node.and_then(|n| n.spec);
    let list = spec
        .as_ref()
        .and_then(|s| s.pod_cidrs.clone())
        .filter(|l| !l.is_empty())
        .or_else(|| spec.and_then(|s| s.pod_cidr).map(|c| vec![c]))
        .unwrap_or_default();
    Ok(list.iter().filter_map(|c| c.parse().ok()).collect())
}

pub async fn register(c: &Client, info: &NodeInfo) -> Result<(), ClientError> {
    let node = match c.get::<Node>(None, &info.name).await? {
        None => {
            let node = c.create(None, &info.object()).await?;
            info!(node = %info.name, "node registered");
            node
        }
        Some(_) => {
            let patch = json!({"metadata": {"annotations": info.annotations()}});
            let node = c.merge_patch::<Node>(None, &info.name, &patch).await?;
            report_status(c, info).await?;
            info!(node = %info.name, "node re-registered");
            node
        }
    };
    publish_csi_node(c, info, &node).await?;
    if let Err(e) = publish_capacity(c, info).await {
        warn!(error = %e, "could not report the node's storage capacity");
    }
    Ok(())
}

/// The node's CSINode, as the kubelet keeps one: the drivers it has (berth's local-path
/// provisioner) and how many of their volumes it takes (`--max-volumes`). Owned by the Node.
async fn publish_csi_node(c: &Client, info: &NodeInfo, node: &Node) -> Result<(), ClientError> {
    use api::k8s_openapi::api::storage::v1::{
        CSINode, CSINodeDriver, CSINodeSpec, VolumeNodeResources,
    };
    let mut want = CSINode {
        metadata: ObjectMeta {
            name: Some(info.name.clone()),
            owner_references: Some(vec![
                api::k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: info.name.clone(),
                    uid: node.metadata.uid.clone().unwrap_or_default(),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        },
        spec: CSINodeSpec {
            drivers: vec![CSINodeDriver {
                name: api::kinds::storage::LOCAL_PATH_PROVISIONER.into(),
                node_id: info.name.clone(),
                topology_keys: Some(vec!["kubernetes.io/hostname".into()]),
                allocatable: info.max_volumes.map(|n| VolumeNodeResources {
                    count: Some(i32::try_from(n).unwrap_or(i32::MAX)),
                }),
            }],
        },
    };
    match c.get::<CSINode>(None, &info.name).await? {
        None => match c.create(None, &want).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_already_exists() => Ok(()),
            Err(e) => Err(e),
        },
        Some(have)
            if have.spec == want.spec
                && have.metadata.owner_references == want.metadata.owner_references =>
        {
            Ok(())
        }
        Some(have) => {
            want.metadata.resource_version = have.metadata.resource_version;
            c.replace(None, &info.name, &want).await.map(drop)
        }
    }
}

pub async fn report_status(c: &Client, info: &NodeInfo) -> Result<(), ClientError> {
    let mut status = serde_json::to_value(info.status()).map_err(ClientError::Decode)?;
    if info.max_volumes.is_none() {
        // A limit given before and dropped since goes (a merge patch keeps what it omits).
        for list in ["capacity", "allocatable"] {
            status[list][api::kinds::storage::VOLUMES_RESOURCE] = serde_json::Value::Null;
        }
    }
    c.request(
        http::Method::PATCH,
        &format!("/api/v1/nodes/{}/status", info.name),
        "application/merge-patch+json",
        bytes::Bytes::from(json!({"status": status}).to_string()),
    )
    .await?;
    Ok(())
}

/// How often the agent checks that the Node still says Ready (the control plane marks it
/// Unknown while its Lease lapses; the kubelet checks every 10 s too).
const READY_CHECK_EVERY: u32 = 5;

/// Whether a Node's Ready condition is True.
pub fn is_ready(n: &Node) -> bool {
    n.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Whether the Node object says the node is Ready.
async fn says_ready(c: &Client, node: &str) -> bool {
    c.get::<Node>(None, node)
        .await
        .ok()
        .flatten()
        .is_some_and(|n| is_ready(&n))
}

/// Renew the node's Lease forever; refresh its status now and then, and at once when the
/// control plane has stopped believing it (after a partition, say).
pub async fn heartbeat(c: Client, info: NodeInfo) {
    let mut last_status = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(LEASE_RENEW);
    let mut ticks: u32 = 0;
    let mut lapsed = false;
    loop {
        tick.tick().await;
        ticks = ticks.wrapping_add(1);
        match renew_lease(&c, &info.name).await {
            Ok(()) => {
                // Back after renewals failed, or marked unknown meanwhile: say so now.
                let stale = lapsed
                    || (ticks.is_multiple_of(READY_CHECK_EVERY)
                        && !says_ready(&c, &info.name).await);
                if stale {
                    last_status = tokio::time::Instant::now() - STATUS_EVERY;
                }
                lapsed = false;
            }
            Err(e) => {
                warn!(error = %e, "could not renew the node lease");
                lapsed = true;
                // Once more soon: a server that just went away has peers to take the renewal.
                tokio::time::sleep(LEASE_RETRY).await;
                if renew_lease(&c, &info.name).await.is_ok() {
                    last_status = tokio::time::Instant::now() - STATUS_EVERY;
                    lapsed = false;
                }
            }
        }
        if last_status.elapsed() >= STATUS_EVERY {
            match report_status(&c, &info).await {
                Ok(()) => last_status = tokio::time::Instant::now(),
                Err(e) => warn!(error = %e, "could not report node status"),
            }
            if let Err(e) = publish_capacity(&c, &info).await {
                warn!(error = %e, "could not report the node's storage capacity");
            }
        }
    }
}

/// The free space for new `local-path` volumes on this node, as a CSIStorageCapacity in
/// kube-system (what external provisioners publish for capacity-aware tools): the free
/// space of the filesystem under `--storage-dir`.
pub async fn publish_capacity(c: &Client, info: &NodeInfo) -> Result<(), ClientError> {
    use api::k8s_openapi::api::storage::v1::CSIStorageCapacity;
    use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    let mut dir = info.storage_dir.as_path();
    while !dir.exists() {
        match dir.parent() {
            Some(p) => dir = p,
            None => break,
        }
    }
    let free = nix::sys::statvfs::statvfs(dir)
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(0);
    let name = format!("local-path-{}", info.name);
    let ns = "kube-system";
    let free = Quantity(format!("{}Mi", free >> 20));
    let mut want = CSIStorageCapacity {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.into()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/hostname".to_string(),
                info.name.clone(),
            )])),
            ..Default::default()
        },
        storage_class_name: "local-path".into(),
        capacity: Some(free.clone()),
        maximum_volume_size: Some(free),
        node_topology: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/hostname".to_string(),
                info.name.clone(),
            )])),
            match_expressions: None,
        }),
    };
    match c.get::<CSIStorageCapacity>(Some(ns), &name).await? {
        None => match c.create(Some(ns), &want).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_already_exists() => Ok(()),
            Err(e) => Err(e),
        },
        Some(have) if have.capacity == want.capacity => Ok(()),
        Some(have) => {
            want.metadata.resource_version = have.metadata.resource_version;
            c.replace(Some(ns), &name, &want).await.map(drop)
        }
    }
}

async fn renew_lease(c: &Client, node: &str) -> Result<(), ClientError> {
    let now = MicroTime(jiff::Timestamp::now());
    match c.get::<Lease>(Some(LEASE_NAMESPACE), node).await? {
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.renew_time = Some(now);
            spec.holder_identity = Some(node.to_string());
            spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
            c.replace(Some(LEASE_NAMESPACE), node, &lease).await?;
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(node.to_string()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(node.to_string()),
                    lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
                    renew_time: Some(now),
                    ..Default::default()
                }),
            };
            c.create(Some(LEASE_NAMESPACE), &lease).await?;
        }
    }
    debug!(node, "lease renewed");
    Ok(())
}

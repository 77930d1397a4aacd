//! Endpoints of Services, as Kubernetes' EndpointSlice, Endpoints and EndpointSlice mirroring
//! controllers keep them:
//! * a Service with a selector gets EndpointSlices (discovery.k8s.io/v1, at most 100 endpoints
//!   each, one set per address type and per set of resolved ports) listing its pods with their
//!   `ready`, `serving` and `terminating` conditions, and a core/v1 Endpoints object for older
//!   clients (ready addresses, not-ready ones apart, terminating pods left out unless the
//!   Service publishes not-ready addresses);
//! * a Service without a selector gets EndpointSlices mirrored from the Endpoints its user
//!   wrote (unless they carry `endpointslice.kubernetes.io/skip-mirror: "true"`).
//!
//! What a Service's endpoints should be is computed by pure functions (`pod_endpoints`,
//! `mirrored`, `plan`) from the objects seen; the reconciler only writes the difference.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, ObjectReference, Pod,
    Service,
};
use api::k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort, EndpointSlice,
};
use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use api::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use async_trait::async_trait;
use client::{Client, ClientError};

use crate::harness::{Outcome, Queue, Reconciler};
use crate::mirror::{Mirror, key_of};
use crate::owned::{controller_ref, is_ready};

pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const CONTROLLER: &str = "endpointslice-controller.k8s.io";
pub const MIRRORING: &str = "endpointslicemirroring-controller.k8s.io";
pub const SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
const HEADLESS: &str = "service.kubernetes.io/headless";
/// Kubernetes' default `--max-endpoints-per-slice`.
pub const MAX_PER_SLICE: usize = 100;

/// What one EndpointSlice holds, apart from its metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct SliceBody {
    pub address_type: String,
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<Endpoint>,
}

fn selects(selector: &BTreeMap<String, String>, labels: Option<&BTreeMap<String, String>>) -> bool {
    let labels = labels.cloned().unwrap_or_default();
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The port a Service port reaches on a pod: a number, or a container port found by name
/// (and protocol). `None` when the pod has no such named port.
fn resolve(target: Option<&IntOrString>, port: i32, protocol: &str, pod: &Pod) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(0)) => Some(port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let spec = pod.spec.as_ref()?;
            spec.containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
    }
}

fn family_of(ip: &str) -> Option<&'static str> {
    match ip.parse::<IpAddr>().ok()? {
        IpAddr::V4(_) => Some("IPv4"),
        IpAddr::V6(_) => Some("IPv6"),
    }
}

fn pod_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

fn pod_ips(pod: &Pod) -> Vec<String> {
    let status = pod.status.as_ref();
    let mut ips: Vec<String> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|l| l.iter().map(|p| p.ip.clone()).collect())
        .unwrap_or_default();
    if ips.is_empty()
        && let Some(ip) = status
            .and_then(|s| s.pod_ip.clone())
            .filter(|i| !i.is_empty())
    {
        ips.push(ip);
    }
    ips
}

/// Whether a pod has endpoints at all: it has an address, a node, and has not finished.
fn eligible(pod: &Pod, with_terminating: bool) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !pod_ips(pod).is_empty()
        && pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
        && !matches!(phase, Some("Succeeded" | "Failed"))
        && (with_terminating || pod.metadata.deletion_timestamp.is_none())
}

/// The hostname a pod has in the Service's DNS records: its `hostname` when its `subdomain`
/// names the Service.
fn hostname(pod: &Pod, svc: &Service) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    (spec.subdomain.as_deref() == svc.metadata.name.as_deref())
        .then(|| spec.hostname.clone())
        .flatten()
        .filter(|h| !h.is_empty())
}

/// A port of a Service as resolved on one pod: name, protocol, number, app protocol.
type Resolved = (String, String, i32, Option<String>);

/// The pods a Service with a selector picks (in name order), and the Service's ports as each
/// resolves them; `None` for a Service without a selector.
fn selected<'a>(
    svc: &Service,
    pods: &'a [Arc<Pod>],
    with_terminating: bool,
) -> Option<Vec<(&'a Arc<Pod>, Vec<Resolved>)>> {
    let spec = svc.spec.as_ref()?;
    let selector = spec.selector.as_ref().filter(|s| !s.is_empty())?;
    let mut chosen: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|p| p.metadata.namespace == svc.metadata.namespace)
        .filter(|p| selects(selector, p.metadata.labels.as_ref()))
        .filter(|p| eligible(p, with_terminating))
        .collect();
    chosen.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Some(
        chosen
            .into_iter()
            .map(|pod| {
                let ports = spec
                    .ports
                    .iter()
                    .flatten()
                    .filter_map(|p| {
                        let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                        let port = resolve(p.target_port.as_ref(), p.port, &protocol, pod)?;
                        Some((
                            p.name.clone().unwrap_or_default(),
                            protocol,
                            port,
                            p.app_protocol.clone(),
                        ))
                    })
                    .collect();
                (pod, ports)
            })
            .collect(),
    )
}

/// The EndpointSlice contents a Service with a selector should have, from its pods.
pub fn pod_endpoints(svc: &Service, pods: &[Arc<Pod>]) -> Vec<SliceBody> {
    let Some(chosen) = selected(svc, pods, true) else {
        return Vec::new();
    };
    let spec = svc.spec.as_ref().expect("a selected Service has a spec");
    let publish = spec.publish_not_ready_addresses == Some(true);
    let families: Vec<String> = spec
        .ip_families
        .clone()
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| vec!["IPv4".into()]);
    // Endpoints grouped by (address type, resolved ports), in a stable order.
    let mut groups: BTreeMap<(String, String), (Vec<EndpointPort>, Vec<Endpoint>)> =
        BTreeMap::new();
    for (pod, resolved) in chosen {
        let ports: Vec<EndpointPort> = resolved
            .into_iter()
            .map(|(name, protocol, port, app_protocol)| EndpointPort {
                name: Some(name),
                port: Some(port),
                protocol: Some(protocol),
                app_protocol,
            })
            .collect();
        let port_key = serde_json::to_string(&ports).unwrap_or_default();
        let serving = is_ready(pod);
        let terminating = pod.metadata.deletion_timestamp.is_some();
        for ip in pod_ips(pod) {
            let Some(family) = family_of(&ip).filter(|f| families.iter().any(|w| w == f)) else {
                continue;
            };
            let endpoint = Endpoint {
                addresses: vec![ip],
                conditions: Some(EndpointConditions {
                    ready: Some(publish || (serving && !terminating)),
                    serving: Some(serving),
                    terminating: Some(terminating),
                }),
                hostname: hostname(pod, svc),
                node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                target_ref: Some(pod_ref(pod)),
                ..Default::default()
            };
            groups
                .entry((family.to_string(), port_key.clone()))
                .or_insert_with(|| (ports.clone(), Vec::new()))
                .1
                .push(endpoint);
        }
    }
    let mut out = Vec::new();
    for ((address_type, _), (ports, endpoints)) in groups {
        for chunk in endpoints.chunks(MAX_PER_SLICE) {
            out.push(SliceBody {
                address_type: address_type.clone(),
                ports: ports.clone(),
                endpoints: chunk.to_vec(),
            });
        }
    }
    out
}

/// The core/v1 Endpoints subsets of a Service with a selector: per set of resolved ports, the
/// ready addresses and the not-ready ones.
pub fn core_subsets(svc: &Service, pods: &[Arc<Pod>]) -> Vec<EndpointSubset> {
    let publish = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        == Some(true);
    let Some(chosen) = selected(svc, pods, publish) else {
        return Vec::new();
    };
    let mut groups: BTreeMap<String, EndpointSubset> = BTreeMap::new();
    for (pod, resolved) in chosen {
        let ports: Vec<CorePort> = resolved
            .into_iter()
            .map(|(name, protocol, port, app_protocol)| CorePort {
                name: Some(name).filter(|n| !n.is_empty()),
                port,
                protocol: Some(protocol),
                app_protocol,
            })
            .collect();
        let Some(ip) = pod_ips(pod).into_iter().next() else {
            continue;
        };
        let address = EndpointAddress {
            ip,
            hostname: hostname(pod, svc),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(pod_ref(pod)),
        };
        let subset = groups
            .entry(serde_json::to_string(&ports).unwrap_or_default())
            .or_insert_with(|| EndpointSubset {
                ports: (!ports.is_empty()).then_some(ports),
                ..Default::default()
            });
        let ready = publish || (is_ready(pod) && pod.metadata.deletion_timestamp.is_none());
        let list = if ready {
            subset.addresses.get_or_insert_with(Vec::new)
        } else {
            subset.not_ready_addresses.get_or_insert_with(Vec::new)
        };
        list.push(address);
    }
    groups.into_values().collect()
}

/// The EndpointSlice contents mirrored from a selector-less Service's Endpoints.
pub fn mirrored(endpoints: &Endpoints) -> Vec<SliceBody> {
    let mut out = Vec::new();
    for subset in endpoints.subsets.iter().flatten() {
        let ports: Vec<EndpointPort> = subset
            .ports
            .iter()
            .flatten()
            .map(|p| EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some(p.port),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        let mut by_type: BTreeMap<&str, Vec<Endpoint>> = BTreeMap::new();
        for (list, ready) in [
            (&subset.addresses, true),
            (&subset.not_ready_addresses, false),
        ] {
            for a in list.iter().flatten() {
                let Some(family) = family_of(&a.ip) else {
                    continue;
                };
                by_type.entry(family).or_default().push(Endpoint {
                    addresses: vec![a.ip.clone()],
                    conditions: Some(EndpointConditions {
                        ready: Some(ready),
                        serving: Some(ready),
                        terminating: Some(false),
                    }),
                    hostname: a.hostname.clone(),
                    node_name: a.node_name.clone(),
                    target_ref: a.target_ref.clone(),
                    ..Default::default()
                });
            }
        }
        for (address_type, endpoints) in by_type {
            for chunk in endpoints.chunks(MAX_PER_SLICE) {
                out.push(SliceBody {
                    address_type: address_type.to_string(),
                    ports: ports.clone(),
                    endpoints: chunk.to_vec(),
                });
            }
        }
    }
    out
}

/// One write to bring a Service's slices to what they should be.
#[derive(Clone, Debug, PartialEq)]
pub enum SliceWrite {
    Create(SliceBody),
    /// Replace the contents of the named slice.
    Update(String, SliceBody),
    Delete(String),
}

fn body_of(s: &EndpointSlice) -> SliceBody {
    SliceBody {
        address_type: s.address_type.clone(),
        ports: s.ports.clone().unwrap_or_default(),
        endpoints: s.endpoints.clone(),
    }
}

/// The writes from the slices a Service has (`existing`, named) to the contents it should
/// have: slices that already say the right thing are kept, others of the same address type
/// are reused before new ones are made, and what is left over is deleted.
pub fn plan(want: &[SliceBody], existing: &[(String, SliceBody)]) -> Vec<SliceWrite> {
    let mut unused: Vec<&(String, SliceBody)> = existing.iter().collect();
    unused.sort_by(|a, b| a.0.cmp(&b.0));
    let mut pending = Vec::new();
    for body in want {
        if let Some(i) = unused.iter().position(|(_, b)| b == body) {
            unused.remove(i);
        } else {
            pending.push(body);
        }
    }
    let mut writes = Vec::new();
    for body in pending {
        match unused
            .iter()
            .position(|(_, b)| b.address_type == body.address_type)
        {
            Some(i) => {
                let (name, _) = unused.remove(i);
                writes.push(SliceWrite::Update(name.clone(), body.clone()));
            }
            None => writes.push(SliceWrite::Create(body.clone())),
        }
    }
    writes.extend(
        unused
            .into_iter()
            .map(|(n, _)| SliceWrite::Delete(n.clone())),
    );
    writes
}

/// Writes made and not yet seen in the mirror, per Service: slice name -> the
/// resourceVersion written (or `None` for a deletion).
#[derive(Default)]
struct Written(Mutex<HashMap<String, HashMap<String, Option<u64>>>>);

fn revision(meta: &ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

impl Written {
    fn record(&self, key: &str, name: &str, rev: Option<u64>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_default()
            .insert(name.to_string(), rev);
    }

    /// Whether the mirror shows every write made for `key` (and forget them if so).
    fn seen(&self, key: &str, slices: &Mirror<EndpointSlice>, ns: &str) -> bool {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(writes) = all.get(key) else {
            return true;
        };
        let done = writes.iter().all(|(name, rev)| {
            let now = slices.get(ns, name);
            match rev {
                Some(r) => now.is_some_and(|s| revision(&s.metadata) >= *r),
                None => now.is_none(),
            }
        });
        if done {
            all.remove(key);
        }
        done
    }
}

/// Keeps the EndpointSlices (and, for Services with a selector, the Endpoints) of every
/// Service.
pub struct EndpointSliceController {
    client: Client,
    /// Writes core/v1 Endpoints (Kubernetes' endpoint controller's account, not the slice
    /// controller's).
    endpoints_client: Client,
    services: Arc<Mirror<Service>>,
    pods: Arc<Mirror<Pod>>,
    slices: Arc<Mirror<EndpointSlice>>,
    endpoints: Arc<Mirror<Endpoints>>,
    written: Written,
    /// Services seen deleted whose Endpoints are still to go (Endpoints without a Service
    /// that was never seen are a user's, and stay).
    deleted: Arc<Mutex<std::collections::HashSet<String>>>,
    queue: Queue,
}

fn service_key(ns: Option<&str>, name: &str) -> String {
    format!("{}/{name}", ns.unwrap_or(""))
}

impl EndpointSliceController {
    pub fn new(
        client: Client,
        endpoints_client: Client,
        services: Arc<Mirror<Service>>,
        pods: Arc<Mirror<Pod>>,
        slices: Arc<Mirror<EndpointSlice>>,
        endpoints: Arc<Mirror<Endpoints>>,
    ) -> EndpointSliceController {
        let queue = Queue::new("endpointslice-controller");
        let q = queue.clone();
        let deleted: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
        let gone = deleted.clone();
        services.on_change(move |old, new| {
            if let Some(s) = new.or(old) {
                let key = key_of(&s.metadata);
                if new.is_none() {
                    gone.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key.clone());
                }
                q.add(&key);
            }
        });
        let (q, all) = (queue.clone(), services.clone());
        pods.on_change(move |old, new| {
            let Some(p) = new.or(old) else { return };
            let ns = p.metadata.namespace.as_deref().unwrap_or("");
            for svc in all.in_namespace(ns) {
                let Some(sel) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
                    continue;
                };
                if sel.is_empty() {
                    continue;
                }
                let hit =
                    |p: Option<&Pod>| p.is_some_and(|p| selects(sel, p.metadata.labels.as_ref()));
                if hit(old) || hit(new) {
                    q.add(&key_of(&svc.metadata));
                }
            }
        });
        let q = queue.clone();
        slices.on_change(move |old, new| {
            let Some(s) = new.or(old) else { return };
            if let Some(svc) = s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME)) {
                q.add(&service_key(s.metadata.namespace.as_deref(), svc));
            }
        });
        let q = queue.clone();
        endpoints.on_change(move |old, new| {
            if let Some(e) = new.or(old) {
                q.add(&key_of(&e.metadata));
            }
        });
        EndpointSliceController {
            client,
            endpoints_client,
            services,
            pods,
            slices,
            endpoints,
            written: Written::default(),
            deleted,
            queue,
        }
    }

    pub fn queue(&self) -> Queue {
        self.queue.clone()
    }

    /// The slices of a Service written by `manager`.
    fn slices_of(&self, ns: &str, name: &str, manager: &str) -> Vec<Arc<EndpointSlice>> {
        self.slices
            .in_namespace(ns)
            .into_iter()
            .filter(|s| {
                let l = s.metadata.labels.as_ref();
                l.and_then(|l| l.get(SERVICE_NAME)).map(String::as_str) == Some(name)
                    && l.and_then(|l| l.get(MANAGED_BY)).map(String::as_str) == Some(manager)
            })
            .collect()
    }

    /// Bring a Service's endpoints up to date; `false` if earlier writes are not yet in the
    /// mirror (acting on it now could write twice).
    async fn sync(&self, key: &str) -> Result<bool, ClientError> {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        if !self.written.seen(key, &self.slices, ns) {
            return Ok(false);
        }
        let svc = self.services.get(ns, name);
        let spec = svc.as_ref().and_then(|s| s.spec.as_ref());
        let external = spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName");
        let selector = spec
            .and_then(|s| s.selector.as_ref())
            .is_some_and(|s| !s.is_empty());
        let (want, manager) = match &svc {
            Some(svc) if selector && !external => {
                let pods = self.pods.in_namespace(ns);
                self.sync_endpoints(svc, &pods).await?;
                (pod_endpoints(svc, &pods), CONTROLLER)
            }
            Some(_) if !external => {
                let mirror = self
                    .endpoints
                    .get(ns, name)
                    .filter(|e| {
                        e.metadata.labels.as_ref().and_then(|l| l.get(SKIP_MIRROR))
                            != Some(&"true".to_string())
                    })
                    .map(|e| mirrored(&e))
                    .unwrap_or_default();
                (mirror, MIRRORING)
            }
            Some(_) => (Vec::new(), CONTROLLER),
            None => {
                let was = self
                    .deleted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(key);
                if was && self.endpoints.get(ns, name).is_some() {
                    match self
                        .endpoints_client
                        .delete::<Endpoints>(Some(ns), name)
                        .await
                    {
                        Err(e) if !e.is_not_found() => {
                            self.deleted
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(key.to_string());
                            return Err(e);
                        }
                        _ => {}
                    }
                }
                (Vec::new(), CONTROLLER)
            }
        };
        // Slices of the other manager (the Service changed between having a selector and
        // not) go.
        let mut stale: Vec<String> = Vec::new();
        for other in [CONTROLLER, MIRRORING]
            .into_iter()
            .filter(|m| *m != manager)
        {
            stale.extend(
                self.slices_of(ns, name, other)
                    .iter()
                    .filter_map(|s| s.metadata.name.clone()),
            );
        }
        let existing: Vec<(String, SliceBody)> = self
            .slices_of(ns, name, manager)
            .iter()
            .map(|s| (s.metadata.name.clone().unwrap_or_default(), body_of(s)))
            .collect();
        let mut writes = plan(&want, &existing);
        writes.extend(stale.into_iter().map(SliceWrite::Delete));
        for w in writes {
            self.apply(key, ns, name, svc.as_deref(), manager, w)
                .await?;
        }
        Ok(true)
    }

    async fn apply(
        &self,
        key: &str,
        ns: &str,
        name: &str,
        svc: Option<&Service>,
        manager: &str,
        write: SliceWrite,
    ) -> Result<(), ClientError> {
        let meta = |slice_name: Option<String>| {
            let mut labels: BTreeMap<String, String> = svc
                .and_then(|s| s.metadata.labels.clone())
                .unwrap_or_default();
            labels.insert(SERVICE_NAME.into(), name.into());
            labels.insert(MANAGED_BY.into(), manager.into());
            ObjectMeta {
                name: slice_name.clone(),
                generate_name: slice_name.is_none().then(|| format!("{name}-")),
                namespace: Some(ns.into()),
                labels: Some(labels),
                owner_references: svc.map(|s| vec![controller_ref(s)]),
                ..Default::default()
            }
        };
        let object = |meta: ObjectMeta, body: SliceBody| EndpointSlice {
            metadata: meta,
            address_type: body.address_type,
            endpoints: body.endpoints,
            ports: Some(body.ports),
        };
        match write {
            SliceWrite::Create(body) => {
                let made = self
                    .client
                    .create(Some(ns), &object(meta(None), body))
                    .await?;
                let n = made.metadata.name.clone().unwrap_or_default();
                self.written.record(key, &n, Some(revision(&made.metadata)));
            }
            SliceWrite::Update(slice, body) => {
                let Some(current) = self.slices.get(ns, &slice) else {
                    return Ok(());
                };
                let mut m = meta(Some(slice.clone()));
                m.resource_version = current.metadata.resource_version.clone();
                m.generate_name = current.metadata.generate_name.clone();
                let made = self
                    .client
                    .replace(Some(ns), &slice, &object(m, body))
                    .await?;
                self.written
                    .record(key, &slice, Some(revision(&made.metadata)));
            }
            SliceWrite::Delete(slice) => {
                match self.client.delete::<EndpointSlice>(Some(ns), &slice).await {
                    Err(e) if !e.is_not_found() => return Err(e),
                    _ => {}
                }
                self.written.record(key, &slice, None);
            }
        }
        Ok(())
    }

    /// The core/v1 Endpoints of a Service with a selector.
    async fn sync_endpoints(&self, svc: &Service, pods: &[Arc<Pod>]) -> Result<(), ClientError> {
        let ns = svc.metadata.namespace.as_deref().unwrap_or("");
        let name = svc.metadata.name.as_deref().unwrap_or("");
        let subsets = core_subsets(svc, pods);
        let mut labels = svc.metadata.labels.clone().unwrap_or_default();
        if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
            labels.insert(HEADLESS.into(), String::new());
        }
        let subsets = (!subsets.is_empty()).then_some(subsets);
        let current = self.endpoints.get(ns, name);
        if let Some(cur) = &current
            && cur.subsets == subsets
            && cur.metadata.labels.clone().unwrap_or_default() == labels
        {
            return Ok(());
        }
        let object = Endpoints {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: Some(labels),
                resource_version: current
                    .as_ref()
                    .and_then(|c| c.metadata.resource_version.clone()),
                ..Default::default()
            },
            subsets,
        };
        match current {
            Some(_) => self
                .endpoints_client
                .replace(Some(ns), name, &object)
                .await
                .map(|_| ()),
            None => match self.endpoints_client.create(Some(ns), &object).await {
                Err(e) if e.code() != Some(409) => Err(e),
                _ => Ok(()),
            },
        }
    }
}

#[async_trait]
impl Reconciler for EndpointSliceController {
    fn name(&self) -> &'static str {
        "endpointslice-controller"
    }

    async fn ready(&self) {
        self.services.synced().await;
        self.pods.synced().await;
        self.slices.synced().await;
        self.endpoints.synced().await;
    }

    async fn reconcile(&self, key: &str) -> Outcome {
        match self.sync(key).await? {
            true => Ok(None),
            // Our own writes not yet seen: look again shortly, without counting a failure.
            false => Ok(Some(Duration::from_millis(50))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn svc(spec: Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "svc-uid"},
            "spec": spec,
        }))
        .unwrap()
    }

    /// A pod `name` with `labels`, an address, on node n1; `how` adjusts it.
    fn pod(name: &str, ip: &str, ready: bool, how: Value) -> Arc<Pod> {
        let mut p = json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                         "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [
                {"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        });
        merge(&mut p, how);
        Arc::new(serde_json::from_value(p).unwrap())
    }

    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn names(s: &SliceBody) -> Vec<String> {
        s.endpoints
            .iter()
            .map(|e| e.target_ref.as_ref().unwrap().name.clone().unwrap())
            .collect()
    }

    fn conditions(s: &SliceBody, pod: &str) -> (bool, bool, bool) {
        let e = s
            .endpoints
            .iter()
            .find(|e| e.target_ref.as_ref().unwrap().name.as_deref() == Some(pod))
            .unwrap();
        let c = e.conditions.clone().unwrap();
        (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
    }

    fn spec(publish: bool) -> Value {
        json!({"selector": {"app": "web"}, "publishNotReadyAddresses": publish,
               "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                         {"name": "raw", "port": 9000, "targetPort": 9100, "protocol": "TCP"}]})
    }

    fn pods() -> Vec<Arc<Pod>> {
        vec![
            pod("a", "10.42.0.2", true, json!({})),
            pod("b", "10.42.0.3", false, json!({})),
            pod(
                "c",
                "10.42.0.4",
                true,
                json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
            ),
            pod(
                "d",
                "",
                true,
                json!({"status": {"podIP": null, "podIPs": null}}),
            ),
            pod(
                "e",
                "10.42.0.6",
                true,
                json!({"metadata": {"labels": {"app": "other"}}}),
            ),
            pod(
                "f",
                "10.42.0.7",
                false,
                json!({"status": {"phase": "Succeeded"}}),
            ),
            // No container port named http: only the numeric port resolves.
            pod(
                "g",
                "10.42.0.8",
                true,
                json!({"spec": {"containers": [{"name": "c"}]}}),
            ),
            pod(
                "h",
                "10.42.0.9",
                true,
                json!({"metadata": {"namespace": "elsewhere"}}),
            ),
        ]
    }

    #[test]
    fn slices_list_selected_pods_with_their_conditions_and_resolved_ports() {
        let got = pod_endpoints(&svc(spec(false)), &pods());
        assert_eq!(got.len(), 2, "{got:#?}");
        // Pods whose named port resolves share a slice; g, with one port fewer, has its own.
        let full = got.iter().find(|s| s.ports.len() == 2).unwrap();
        assert_eq!(names(full), ["a", "b", "c"]);
        assert_eq!(full.address_type, "IPv4");
        assert_eq!(full.ports[0].port, Some(8080));
        assert_eq!(full.ports[0].name.as_deref(), Some("http"));
        assert_eq!(full.ports[1].port, Some(9100));
        assert_eq!(conditions(full, "a"), (true, true, false));
        assert_eq!(conditions(full, "b"), (false, false, false));
        // Terminating: serving while its readiness holds, never ready.
        assert_eq!(conditions(full, "c"), (false, true, true));
        let short = got.iter().find(|s| s.ports.len() == 1).unwrap();
        assert_eq!(names(short), ["g"]);
        assert_eq!(short.ports[0].port, Some(9100));
        let e = &full.endpoints[0];
        assert_eq!(e.node_name.as_deref(), Some("n1"));
        assert_eq!(e.addresses, ["10.42.0.2"]);

        // Publishing not-ready addresses makes every endpoint ready.
        let got = pod_endpoints(&svc(spec(true)), &pods());
        let full = got.iter().find(|s| s.ports.len() == 2).unwrap();
        assert_eq!(conditions(full, "b"), (true, false, false));
        assert_eq!(conditions(full, "c"), (true, true, true));
    }

    #[test]
    fn services_without_selector_or_external_names_select_nothing() {
        assert!(pod_endpoints(&svc(json!({"ports": [{"port": 80}]})), &pods()).is_empty());
        assert!(
            pod_endpoints(
                &svc(json!({"selector": {}, "ports": [{"port": 80}]})),
                &pods()
            )
            .is_empty()
        );
    }

    #[test]
    fn hostnames_come_from_pods_in_the_services_subdomain() {
        let p = vec![
            pod(
                "s-0",
                "10.42.0.2",
                true,
                json!({"spec": {"hostname": "s-0", "subdomain": "web"}}),
            ),
            pod(
                "s-1",
                "10.42.0.3",
                true,
                json!({"spec": {"hostname": "s-1", "subdomain": "other"}}),
            ),
        ];
        let got = pod_endpoints(
            &svc(json!({"selector": {"app": "web"}, "clusterIP": "None"})),
            &p,
        );
        let hosts: Vec<_> = got[0]
            .endpoints
            .iter()
            .map(|e| e.hostname.clone())
            .collect();
        assert_eq!(hosts, [Some("s-0".to_string()), None]);
        // No ports: one slice with none.
        assert!(got[0].ports.is_empty());
    }

    #[test]
    fn a_slice_holds_at_most_a_hundred_endpoints() {
        let many: Vec<_> = (0..250)
            .map(|i| {
                pod(
                    &format!("p{i:03}"),
                    &format!("10.42.{}.{}", i / 200, i % 200 + 2),
                    true,
                    json!({}),
                )
            })
            .collect();
        let got = pod_endpoints(&svc(spec(false)), &many);
        let sizes: Vec<_> = got.iter().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
    }

    #[test]
    fn endpoints_keep_ready_and_not_ready_apart_and_leave_terminating_pods_out() {
        let subsets = core_subsets(&svc(spec(false)), &pods());
        assert_eq!(subsets.len(), 2);
        let full = subsets
            .iter()
            .find(|s| s.ports.as_ref().unwrap().len() == 2)
            .unwrap();
        let ips = |l: &Option<Vec<EndpointAddress>>| -> Vec<String> {
            l.iter().flatten().map(|a| a.ip.clone()).collect()
        };
        assert_eq!(ips(&full.addresses), ["10.42.0.2"]);
        assert_eq!(ips(&full.not_ready_addresses), ["10.42.0.3"]);
        let published = core_subsets(&svc(spec(true)), &pods());
        let full = published
            .iter()
            .find(|s| s.ports.as_ref().unwrap().len() == 2)
            .unwrap();
        assert_eq!(
            ips(&full.addresses),
            ["10.42.0.2", "10.42.0.3", "10.42.0.4"]
        );
    }

    #[test]
    fn endpoints_written_by_hand_are_mirrored_by_address_type() {
        let eps: Endpoints = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns"},
            "subsets": [{"addresses": [{"ip": "192.0.2.1"}, {"ip": "2001:db8::1"}],
                         "notReadyAddresses": [{"ip": "192.0.2.2"}],
                         "ports": [{"port": 5432}]}]
        }))
        .unwrap();
        let got = mirrored(&eps);
        let types: Vec<_> = got.iter().map(|s| s.address_type.as_str()).collect();
        assert_eq!(types, ["IPv4", "IPv6"]);
        let v4 = &got[0];
        assert_eq!(v4.endpoints.len(), 2);
        assert_eq!(
            v4.endpoints[1].conditions.as_ref().unwrap().ready,
            Some(false)
        );
        assert_eq!(v4.ports[0].port, Some(5432));
        assert_eq!(v4.ports[0].protocol.as_deref(), Some("TCP"));
    }

    fn body(t: &str, ips: &[&str]) -> SliceBody {
        SliceBody {
            address_type: t.into(),
            ports: Vec::new(),
            endpoints: ips
                .iter()
                .map(|ip| Endpoint {
                    addresses: vec![ip.to_string()],
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn plans_keep_what_is_right_reuse_slices_and_delete_the_rest() {
        let a = body("IPv4", &["10.0.0.1"]);
        let b = body("IPv4", &["10.0.0.2"]);
        let c = body("IPv4", &["10.0.0.3"]);
        let six = body("IPv6", &["fd00::1"]);
        let existing = vec![("s1".to_string(), a.clone()), ("s2".to_string(), b.clone())];
        // Nothing to do.
        assert!(plan(&[a.clone(), b.clone()], &existing).is_empty());
        // One changed: the other slice of its type is updated in place.
        assert_eq!(
            plan(&[a.clone(), c.clone()], &existing),
            [SliceWrite::Update("s2".into(), c.clone())]
        );
        // A new address type needs a new slice; the one left over goes.
        assert_eq!(
            plan(std::slice::from_ref(&six), &existing),
            [
                SliceWrite::Create(six.clone()),
                SliceWrite::Delete("s1".into()),
                SliceWrite::Delete("s2".into())
            ]
        );
        // Nothing wanted: all go.
        assert_eq!(plan(&[], &existing).len(), 2);
        assert_eq!(plan(std::slice::from_ref(&a), &[]), [SliceWrite::Create(a)]);
    }
}

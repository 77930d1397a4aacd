//! What a pod asks of a node, taken out of its spec once: resource requests (as Kubernetes
//! sums them), the node it names, selectors and affinity, tolerations and host ports, and
//! the key of its equivalence class.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use api::k8s_openapi::api::core::v1::{NodeSelectorTerm, Pod, PodSpec, Toleration};
use api::quantity::Quantity;

/// CPU (millicores) and memory (bytes) that scoring counts for a container asking for none,
/// as kube-scheduler does, so that request-less pods still spread.
pub const DEFAULT_CPU_MILLI: i64 = 100;
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DemandError {
    #[error("pod {pod}: invalid quantity {value:?} for {resource}")]
    Quantity {
        pod: String,
        resource: String,
        value: String,
        #[source]
        source: api::quantity::QuantityError,
    },
}

/// A host port a pod binds: (protocol, host IP, port).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub protocol: String,
    pub ip: String,
    pub port: i32,
}

impl HostPort {
    /// Whether two bindings collide: same protocol and port, and an IP in common (`0.0.0.0`
    /// is every IP).
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.protocol == other.protocol
            && self.port == other.port
            && (self.ip == other.ip || self.ip == "0.0.0.0" || other.ip == "0.0.0.0")
    }
}

/// A topology spread constraint: pods matching `selector` (in the pod's namespace) may differ
/// by at most `max_skew` between the domains of `key` (zones, hostnames, ...).
#[derive(Clone, Debug)]
pub struct Spread {
    pub max_skew: i32,
    pub key: String,
    /// `DoNotSchedule` (a filter) rather than `ScheduleAnyway` (a preference, not enforced).
    pub hard: bool,
    pub selector: api::selector::LabelSelectorExpr,
}

/// An inter-pod (anti-)affinity term: pods matching `selector` in `namespaces` and in the
/// namespaces whose labels `namespace_selector` matches (the pod's own namespace when there
/// are neither; an empty selector is every namespace), counted per domain of the node label
/// `key`.
#[derive(Clone, Debug)]
pub struct PodTerm {
    pub key: String,
    pub selector: api::selector::LabelSelectorExpr,
    pub namespaces: Vec<String>,
    pub namespace_selector: Option<api::selector::LabelSelectorExpr>,
}

/// Namespace name -> its labels, for terms that select namespaces by label.
pub type NamespaceLabels = std::collections::HashMap<String, BTreeMap<String, String>>;

impl PodTerm {
    /// Whether a pod in `ns` with `labels` is one the term is about, for a pod in `own`.
    pub(crate) fn matches(
        &self,
        namespaces: &NamespaceLabels,
        own: &str,
        ns: &str,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        let in_ns = match &self.namespace_selector {
            None if self.namespaces.is_empty() => ns == own,
            None => self.namespaces.iter().any(|n| n == ns),
            Some(sel) => {
                self.namespaces.iter().any(|n| n == ns)
                    || namespaces.get(ns).is_some_and(|l| sel.matches(l))
            }
        };
        in_ns && self.selector.matches(labels)
    }
}

#[derive(Clone, Debug)]
pub struct Demand {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Resource name -> amount: millicores for `cpu`, whole units (bytes, devices) otherwise.
    /// Every pod also takes one of the node's `pods`.
    pub requests: BTreeMap<String, i64>,
    /// CPU and memory as scoring counts them (with the defaults for containers asking none).
    pub score_cpu: i64,
    pub score_memory: i64,
    pub node_name: Option<String>,
    pub node_selector: BTreeMap<String, String>,
    /// Required node affinity: any one term must hold. `None` when there is none.
    pub required: Option<Vec<NodeSelectorTerm>>,
    /// Preferred node affinity: (weight, term).
    pub preferred: Vec<(i32, NodeSelectorTerm)>,
    pub tolerations: Vec<Toleration>,
    pub host_ports: Vec<HostPort>,
    /// The pod's own labels (it counts toward other pods' spread once placed).
    pub labels: BTreeMap<String, String>,
    pub spread: Vec<Spread>,
    /// Required pod affinity: each term's domain must already hold a matching pod.
    pub pod_affinity: Vec<PodTerm>,
    /// Required pod anti-affinity: no term's domain may hold a matching pod.
    pub pod_anti_affinity: Vec<PodTerm>,
    /// Preferred pod affinity: (weight, term); domains holding a matching pod score higher.
    pub preferred_pod_affinity: Vec<(i32, PodTerm)>,
    /// Preferred pod anti-affinity: (weight, term); such domains score lower.
    pub preferred_pod_anti_affinity: Vec<(i32, PodTerm)>,
    /// What the pod's persistent volumes ask of a node, one entry per volume: any of its
    /// terms must hold.
    pub volumes: Vec<VolumeNodes>,
    /// Pods with the same class ask for the same things and are evaluated once together.
    pub class: u64,
}

/// The nodes a pod's volume can be used on.
#[derive(Clone, Debug, PartialEq)]
pub struct VolumeNodes {
    /// Any one must hold (a volume's node affinity, or those of the volumes a claim could
    /// still bind to).
    pub terms: Vec<NodeSelectorTerm>,
    /// The claim is bound: its volume's affinity conflicts; else no volume is available.
    pub bound: bool,
}

fn amount(resource: &str, q: &Quantity) -> i64 {
    if resource == "cpu" {
        q.milli()
    } else {
        q.value()
    }
}

impl Demand {
    /// What `pod` asks, with its equivalence class.
    pub fn of(pod: &Pod) -> Result<Demand, DemandError> {
        let mut d = Demand::usage(pod)?;
        d.class = d.class_key();
        Ok(d)
    }

    /// The demand with what its volumes ask of a node (the scheduler's shell reads claims
    /// and volumes), its class worked out again.
    pub fn with_volumes(mut self, volumes: Vec<VolumeNodes>) -> Demand {
        self.volumes = volumes;
        self.class = self.class_key();
        self
    }

    /// What `pod` asks, without working out its class (for pods already placed).
    pub fn usage(pod: &Pod) -> Result<Demand, DemandError> {
        let meta = &pod.metadata;
        let name = meta.name.clone().unwrap_or_default();
        let no_spec;
        let spec = match &pod.spec {
            Some(s) => s,
            None => {
                no_spec = PodSpec::default();
                &no_spec
            }
        };
        let parse = |resource: &str, value: &str| {
            Quantity::parse(value)
                .map(|q| amount(resource, &q))
                .map_err(|source| DemandError::Quantity {
                    pod: name.clone(),
                    resource: resource.to_string(),
                    value: value.to_string(),
                    source,
                })
        };
        // Containers run together (their requests add up); init containers one at a time
        // before them (the largest counts); the pod's overhead comes on top.
        let mut sum: BTreeMap<String, i64> = BTreeMap::new();
        let (mut score_cpu, mut score_memory) = (0, 0);
        for c in &spec.containers {
            let req = c.resources.as_ref().and_then(|r| r.requests.as_ref());
            let mut cpu = None;
            let mut memory = None;
            for (k, v) in req.into_iter().flatten() {
                let n = parse(k, &v.0)?;
                *sum.entry(k.clone()).or_default() += n;
                match k.as_str() {
                    "cpu" => cpu = Some(n),
                    "memory" => memory = Some(n),
                    _ => {}
                }
            }
            score_cpu += cpu.unwrap_or(DEFAULT_CPU_MILLI);
            score_memory += memory.unwrap_or(DEFAULT_MEMORY);
        }
        let mut requests = sum;
        for c in spec.init_containers.iter().flatten() {
            let req = c.resources.as_ref().and_then(|r| r.requests.as_ref());
            for (k, v) in req.into_iter().flatten() {
                let n = parse(k, &v.0)?;
                let e = requests.entry(k.clone()).or_default();
                *e = (*e).max(n);
                match k.as_str() {
                    "cpu" => score_cpu = score_cpu.max(n),
                    "memory" => score_memory = score_memory.max(n),
                    _ => {}
                }
            }
        }
        for (k, v) in spec.overhead.iter().flatten() {
            let n = parse(k, &v.0)?;
            *requests.entry(k.clone()).or_default() += n;
            match k.as_str() {
                "cpu" => score_cpu += n,
                "memory" => score_memory += n,
                _ => {}
            }
        }
        // Each claim the pod mounts takes one of the node's volumes, when the node has a limit.
        let claims = spec
            .volumes
            .iter()
            .flatten()
            .filter(|v| v.persistent_volume_claim.is_some() || v.ephemeral.is_some())
            .count() as i64;
        requests.retain(|_, v| *v != 0);
        if claims > 0 {
            requests.insert(api::kinds::storage::VOLUMES_RESOURCE.to_string(), claims);
        }
        let node_affinity = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref());
        let required = node_affinity
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|r| r.node_selector_terms.clone());
        let preferred = node_affinity
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .map(|p| (p.weight, p.preference.clone()))
            .collect();
        let mut host_ports: Vec<HostPort> = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let port = p.host_port.filter(|p| *p > 0)?;
                Some(HostPort {
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    ip: p
                        .host_ip
                        .clone()
                        .filter(|i| !i.is_empty())
                        .unwrap_or_else(|| "0.0.0.0".into()),
                    port,
                })
            })
            .collect();
        host_ports.sort();
        host_ports.dedup();
        let spread = spec
            .topology_spread_constraints
            .iter()
            .flatten()
            .map(|c| Spread {
                max_skew: c.max_skew.max(1),
                key: c.topology_key.clone(),
                hard: c.when_unsatisfiable != "ScheduleAnyway",
                // A constraint whose selector cannot be read matches nothing.
                selector: api::selector::LabelSelectorExpr::from_object(c.label_selector.as_ref())
                    .unwrap_or_else(|_| api::selector::LabelSelectorExpr::nothing()),
            })
            .collect();
        let term = |t: &api::k8s_openapi::api::core::v1::PodAffinityTerm| PodTerm {
            key: t.topology_key.clone(),
            selector: api::selector::LabelSelectorExpr::from_object(t.label_selector.as_ref())
                .unwrap_or_else(|_| api::selector::LabelSelectorExpr::nothing()),
            namespaces: t.namespaces.clone().unwrap_or_default(),
            namespace_selector: t.namespace_selector.as_ref().map(|s| {
                api::selector::LabelSelectorExpr::from_object(Some(s))
                    .unwrap_or_else(|_| api::selector::LabelSelectorExpr::nothing())
            }),
        };
        let terms = |ts: Option<&Vec<api::k8s_openapi::api::core::v1::PodAffinityTerm>>| {
            ts.into_iter().flatten().map(term).collect::<Vec<_>>()
        };
        let weighted =
            |ts: Option<&Vec<api::k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>| {
                ts.into_iter()
                    .flatten()
                    .map(|w| (w.weight, term(&w.pod_affinity_term)))
                    .collect::<Vec<_>>()
            };
        let affinity = spec.affinity.as_ref();
        let near = affinity.and_then(|a| a.pod_affinity.as_ref());
        let apart = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let pod_affinity = terms(near.and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        }));
        let pod_anti_affinity = terms(apart.and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        }));
        let preferred_pod_affinity = weighted(near.and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        }));
        let preferred_pod_anti_affinity = weighted(apart.and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        }));
        Ok(Demand {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name,
            uid: meta.uid.clone().unwrap_or_default(),
            requests,
            score_cpu,
            score_memory,
            node_name: spec.node_name.clone().filter(|n| !n.is_empty()),
            node_selector: spec.node_selector.clone().unwrap_or_default(),
            required,
            preferred,
            tolerations: spec.tolerations.clone().unwrap_or_default(),
            host_ports,
            labels: meta.labels.clone().unwrap_or_default(),
            spread,
            pod_affinity,
            pod_anti_affinity,
            preferred_pod_affinity,
            preferred_pod_anti_affinity,
            volumes: Vec::new(),
            class: 0,
        })
    }

    /// Whether placement depends on the pods around (spread or inter-pod rules, required or
    /// preferred), not only on the node: such pods are placed one at a time.
    pub(crate) fn has_pod_rules(&self) -> bool {
        !self.spread.is_empty()
            || !self.pod_affinity.is_empty()
            || !self.pod_anti_affinity.is_empty()
            || self.has_pod_preferences()
    }

    /// Whether scoring looks at the pods around: ScheduleAnyway spread or preferred inter-pod
    /// terms.
    pub(crate) fn has_pod_preferences(&self) -> bool {
        self.spread.iter().any(|s| !s.hard)
            || !self.preferred_pod_affinity.is_empty()
            || !self.preferred_pod_anti_affinity.is_empty()
    }

    /// A hash of everything placement looks at, and nothing else.
    fn class_key(&self) -> u64 {
        let shape_of = |t: &PodTerm| {
            let ns_sel = t.namespace_selector.as_ref().map(|s| s.to_string());
            format!("{}:{}:{:?}:{ns_sel:?}", t.key, t.selector, t.namespaces)
        };
        let terms: Vec<Vec<String>> = [&self.pod_affinity, &self.pod_anti_affinity]
            .iter()
            .map(|ts| ts.iter().map(shape_of).collect())
            .collect();
        let weighted: Vec<Vec<String>> = [
            &self.preferred_pod_affinity,
            &self.preferred_pod_anti_affinity,
        ]
        .iter()
        .map(|ts| {
            ts.iter()
                .map(|(w, t)| format!("{w}:{}", shape_of(t)))
                .collect()
        })
        .collect();
        // Serialized straight into the hasher: no tree, no string.
        let shape = (
            &self.requests,
            self.score_cpu,
            self.score_memory,
            &self.node_name,
            &self.node_selector,
            &self.required,
            &self.preferred,
            &self.tolerations,
            self.host_ports
                .iter()
                .map(|p| (&p.protocol, &p.ip, p.port))
                .collect::<Vec<_>>(),
            self.spread
                .iter()
                .map(|s| (s.max_skew, &s.key, s.hard, s.selector.to_string()))
                .collect::<Vec<_>>(),
            terms,
            weighted,
            self.volumes
                .iter()
                .map(|v| (&v.terms, v.bound))
                .collect::<Vec<_>>(),
            // Spread and pod (anti-)affinity look at the pod's own namespace and labels.
            if !self.has_pod_rules() {
                String::new()
            } else {
                format!("{}/{:?}", self.namespace, self.labels)
            },
        );
        let mut h = DefaultHasher::new();
        serde_json::to_writer(HashWriter(&mut h), &shape)
            .expect("serializing plain data into a hasher cannot fail");
        h.finish()
    }
}

/// Bytes written to it go into a hasher.
struct HashWriter<'a, H>(&'a mut H);

impl<H: Hasher> std::io::Write for HashWriter<'_, H> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

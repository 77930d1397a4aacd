//! NetworkPolicy enforcement as nftables set elements (pure): namespaces, pods and policies
//! in, the element changes of the node's `berth-policy` tables out.
//!
//! Pods are grouped into identities: pods with the same namespace, labels and named ports are
//! alike to every policy (Deployment replicas share one). Each identity has a number, and the
//! `ids` map gives every pod address of the cluster its identity's number. A node enforces
//! for its own pods only: egress where its pods send, ingress where they receive. Per own pod
//! the tables hold whether it is isolated each way and, for each identity it may talk to,
//! the protocols and ports allowed (`in_pod`: source identity . pod; `out_pod`: pod .
//! destination identity), and the address ranges it may talk to (`in_cidr`, `out_cidr`, for
//! `ipBlock`s and rules open to everyone). The chains (`skeleton`) never change: a packet of
//! a new connection to or from an isolated pod looks its peer's identity up into the
//! connection mark, then matches one of the sets or is dropped; replies pass by conntrack.
//!
//! A change costs what it touches: a pod of a known identity adds one `ids` element; a new
//! identity is checked against the policies of its namespace and those selecting namespaces;
//! a policy change recomputes the own identities it selects. Elements of ranges must not
//! overlap in the kernel's set, so each own pod's ranges are made disjoint before they are
//! written, and the changes are the difference between what the kernel holds and what it
//! should.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use api::k8s_openapi::api::core::v1::Pod;
use api::k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use api::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use api::selector::LabelSelectorExpr;

use crate::nftnl::{Data, Element, Family, Fields, Op, SetOp};
use crate::{Cidr, Protocol};

/// The two names the node's policy table takes in turn: a full load fills the one not in
/// use, then drops the other, so a reload never leaves a moment without rules.
pub const TABLES: [&str; 2] = ["berth-policy-a", "berth-policy-b"];

pub fn is_policy_table(name: &str) -> bool {
    name.starts_with("berth-policy")
}

pub type Labels = BTreeMap<String, String>;

/// A container port with a name, which a policy may name instead of a number.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// A pod as policies see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub labels: Labels,
    pub ports: Vec<NamedPort>,
    pub ips: Vec<IpAddr>,
}

impl PodInfo {
    /// A pod's part, with the addresses in its status; `None` for a pod that holds no
    /// address of the pod network (host network, finished).
    pub fn from_pod(pod: &Pod) -> Option<PodInfo> {
        let spec = pod.spec.as_ref()?;
        if spec.host_network == Some(true) {
            return None;
        }
        let status = pod.status.as_ref();
        if matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            return None;
        }
        let mut ports: Vec<NamedPort> = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(NamedPort {
                    name: p.name.clone().filter(|n| !n.is_empty())?,
                    protocol: Protocol::from_kubernetes(p.protocol.as_deref().unwrap_or("TCP"))?,
                    port: u16::try_from(p.container_port).ok()?,
                })
            })
            .collect();
        ports.sort();
        ports.dedup();
        let mut ips: Vec<IpAddr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|a| a.ip.parse().ok())
            .collect();
        if ips.is_empty()
            && let Some(ip) = status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|s| s.parse().ok())
        {
            ips.push(ip);
        }
        Some(PodInfo {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ports,
            ips,
        })
    }
}

/// Which ports a rule opens: every protocol and port (`None` in `Rule::ports`), or these.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PortSpec {
    /// A protocol, every port.
    Any(Protocol),
    Range(Protocol, u16, u16),
    /// A container port of the destination pod, by name.
    Named(Protocol, String),
}

#[derive(Clone, Debug)]
struct Peer {
    pods: LabelSelectorExpr,
    /// `None`: the policy's own namespace.
    namespaces: Option<LabelSelectorExpr>,
}

#[derive(Clone, Debug)]
struct Rule {
    /// An egress rule (its peers are destinations).
    egress: bool,
    /// No peers given: everyone.
    everyone: bool,
    peers: Vec<Peer>,
    /// Address ranges (`ipBlock` less its `except`s), per family.
    ranges: Vec<AddrRange>,
    /// `None`: every protocol and port.
    ports: Option<Vec<PortSpec>>,
}

impl Rule {
    fn named_ports(&self) -> impl Iterator<Item = (Protocol, &str)> {
        self.ports.iter().flatten().filter_map(|p| match p {
            PortSpec::Named(proto, n) => Some((*proto, n.as_str())),
            _ => None,
        })
    }

    /// An egress rule open to everyone on ports named: it reaches the pods with such a port.
    fn by_port_name(&self) -> bool {
        self.egress && self.everyone && self.named_ports().next().is_some()
    }

    /// Whether the rule admits pods of other namespaces (so a new identity anywhere may
    /// change what it matches).
    fn reaches_other_namespaces(&self) -> bool {
        self.peers.iter().any(|p| p.namespaces.is_some()) || self.by_port_name()
    }
}

/// A NetworkPolicy, read for enforcement.
#[derive(Clone, Debug)]
pub struct Policy {
    namespace: String,
    selector: LabelSelectorExpr,
    /// `None` when the policy does not isolate for ingress.
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
}

fn selector(
    sel: Option<&api::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> LabelSelectorExpr {
    // A selector the API accepted always parses; anything else selects nothing.
    LabelSelectorExpr::from_object(sel).unwrap_or_else(|_| LabelSelectorExpr::nothing())
}

fn rule(
    egress: bool,
    peers: Option<&Vec<NetworkPolicyPeer>>,
    ports: Option<&Vec<NetworkPolicyPort>>,
) -> Rule {
    let peers = peers.map(Vec::as_slice).unwrap_or_default();
    let mut r = Rule {
        egress,
        everyone: peers.is_empty(),
        peers: Vec::new(),
        ranges: Vec::new(),
        ports: None,
    };
    for p in peers {
        if let Some(b) = &p.ip_block {
            let Ok(cidr) = b.cidr.parse::<Cidr>() else {
                continue;
            };
            let except: Vec<Cidr> = b
                .except
                .iter()
                .flatten()
                .filter_map(|e| e.parse().ok())
                .collect();
            r.ranges.extend(subtract(&cidr, &except));
            continue;
        }
        if p.pod_selector.is_none() && p.namespace_selector.is_none() {
            continue;
        }
        r.peers.push(Peer {
            // Without a pod selector, every pod of the selected namespaces.
            pods: match &p.pod_selector {
                Some(s) => selector(Some(s)),
                None => LabelSelectorExpr::everything(),
            },
            namespaces: p.namespace_selector.as_ref().map(|s| selector(Some(s))),
        });
    }
    if let Some(ports) = ports.filter(|p| !p.is_empty()) {
        let mut specs = Vec::new();
        for p in ports {
            let Some(proto) = Protocol::from_kubernetes(p.protocol.as_deref().unwrap_or("TCP"))
            else {
                continue;
            };
            specs.push(match &p.port {
                None => PortSpec::Any(proto),
                Some(IntOrString::Int(n)) => {
                    let Ok(lo) = u16::try_from(*n) else { continue };
                    let hi = p.end_port.and_then(|e| u16::try_from(e).ok()).unwrap_or(lo);
                    PortSpec::Range(proto, lo, hi.max(lo))
                }
                Some(IntOrString::String(name)) => match name.parse::<u16>() {
                    Ok(n) => PortSpec::Range(proto, n, n),
                    Err(_) => PortSpec::Named(proto, name.clone()),
                },
            });
        }
        r.ports = Some(specs);
    }
    r
}

impl Policy {
    pub fn from_object(p: &NetworkPolicy) -> Policy {
        let namespace = p.metadata.namespace.clone().unwrap_or_default();
        let Some(spec) = &p.spec else {
            return Policy {
                namespace,
                selector: LabelSelectorExpr::nothing(),
                ingress: None,
                egress: None,
            };
        };
        let types: Vec<&str> = match spec.policy_types.as_deref() {
            Some(t) if !t.is_empty() => t.iter().map(String::as_str).collect(),
            // Kubernetes' default, had the API not filled it in.
            _ if spec.egress.is_some() => vec!["Ingress", "Egress"],
            _ => vec!["Ingress"],
        };
        let ingress = types.contains(&"Ingress").then(|| {
            spec.ingress
                .iter()
                .flatten()
                .map(|r| rule(false, r.from.as_ref(), r.ports.as_ref()))
                .collect()
        });
        let egress = types.contains(&"Egress").then(|| {
            spec.egress
                .iter()
                .flatten()
                .map(|r| rule(true, r.to.as_ref(), r.ports.as_ref()))
                .collect()
        });
        Policy {
            namespace,
            // An absent pod selector is the empty one: every pod of the namespace.
            selector: spec
                .pod_selector
                .as_ref()
                .map_or_else(LabelSelectorExpr::everything, |s| selector(Some(s))),
            ingress,
            egress,
        }
    }

    fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.ingress
            .iter()
            .flatten()
            .chain(self.egress.iter().flatten())
    }

    fn reaches_other_namespaces(&self) -> bool {
        self.rules().any(Rule::reaches_other_namespaces)
    }
}

/// An address range of one family, as numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct AddrRange {
    v6: bool,
    lo: u128,
    hi: u128,
}

fn to_num(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn to_ip(v6: bool, n: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(n))
    } else {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    }
}

fn family_max(v6: bool) -> u128 {
    if v6 { u128::MAX } else { u32::MAX as u128 }
}

fn whole(v6: bool) -> AddrRange {
    AddrRange {
        v6,
        lo: 0,
        hi: family_max(v6),
    }
}

fn range_of(c: &Cidr) -> AddrRange {
    let lo = to_num(c.network());
    AddrRange {
        v6: c.is_ipv6(),
        lo,
        hi: lo + (c.size() - 1),
    }
}

/// A block less the parts it excepts, as disjoint ranges.
fn subtract(cidr: &Cidr, except: &[Cidr]) -> Vec<AddrRange> {
    let whole = range_of(cidr);
    let mut cuts: Vec<AddrRange> = except
        .iter()
        .filter(|e| e.is_ipv6() == cidr.is_ipv6())
        .map(range_of)
        .collect();
    cuts.sort();
    let mut out = Vec::new();
    let mut at = whole.lo;
    let mut done = false;
    for c in cuts {
        if c.hi < at || c.lo > whole.hi {
            continue;
        }
        if c.lo > at {
            out.push(AddrRange {
                lo: at,
                hi: c.lo - 1,
                ..whole
            });
        }
        match c.hi.checked_add(1) {
            Some(n) if c.hi < whole.hi => at = at.max(n),
            _ => {
                done = true;
                break;
            }
        }
    }
    if !done && at <= whole.hi {
        out.push(AddrRange { lo: at, ..whole });
    }
    out
}

/// Protocols and ports: a range of protocol numbers by a range of ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct PortBox {
    proto: (u8, u8),
    port: (u16, u16),
}

const EVERY_PORT: PortBox = PortBox {
    proto: (0, 255),
    port: (0, 65535),
};

/// The boxes a rule's ports open toward a pod with `named` ports (`None`: a destination
/// that is not a pod, where names mean nothing).
fn port_boxes(ports: &Option<Vec<PortSpec>>, named: Option<&[NamedPort]>) -> Vec<PortBox> {
    let Some(specs) = ports else {
        return vec![EVERY_PORT];
    };
    let mut out = Vec::new();
    for s in specs {
        match s {
            PortSpec::Any(p) => out.push(PortBox {
                proto: (p.number(), p.number()),
                port: (0, 65535),
            }),
            PortSpec::Range(p, lo, hi) => out.push(PortBox {
                proto: (p.number(), p.number()),
                port: (*lo, *hi),
            }),
            PortSpec::Named(p, name) => {
                for np in named.into_iter().flatten() {
                    if np.name == *name && np.protocol == *p {
                        out.push(PortBox {
                            proto: (p.number(), p.number()),
                            port: (np.port, np.port),
                        });
                    }
                }
            }
        }
    }
    out
}

/// The union of boxes as disjoint ones: everything, or per protocol its merged port ranges.
fn normalize(boxes: &[PortBox]) -> Vec<PortBox> {
    if boxes.contains(&EVERY_PORT) {
        return vec![EVERY_PORT];
    }
    let mut sorted: Vec<PortBox> = boxes.to_vec();
    sorted.sort();
    let mut out: Vec<PortBox> = Vec::new();
    for b in sorted {
        match out.last_mut() {
            Some(last) if last.proto == b.proto && b.port.0 as u32 <= last.port.1 as u32 + 1 => {
                last.port.1 = last.port.1.max(b.port.1);
            }
            _ => out.push(b),
        }
    }
    out
}

/// Address ranges with their boxes, made disjoint: cut at every range's ends, each piece
/// gets the union of the boxes of the ranges covering it, and neighbours alike are joined.
fn normalize_ranges(items: &[(AddrRange, PortBox)]) -> Vec<(AddrRange, PortBox)> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        let mine: Vec<&(AddrRange, PortBox)> = items.iter().filter(|(r, _)| r.v6 == v6).collect();
        if mine.is_empty() {
            continue;
        }
        let mut cuts: BTreeSet<u128> = BTreeSet::new();
        for (r, _) in &mine {
            cuts.insert(r.lo);
            if let Some(n) = r.hi.checked_add(1).filter(|n| *n <= family_max(v6)) {
                cuts.insert(n);
            }
        }
        let cuts: Vec<u128> = cuts.into_iter().collect();
        let mut pieces: Vec<(u128, u128, Vec<PortBox>)> = Vec::new();
        for (i, &lo) in cuts.iter().enumerate() {
            let hi = cuts.get(i + 1).map_or(family_max(v6), |n| n - 1);
            let boxes: Vec<PortBox> = mine
                .iter()
                .filter(|(r, _)| r.lo <= lo && hi <= r.hi)
                .map(|(_, b)| *b)
                .collect();
            if boxes.is_empty() {
                continue;
            }
            let boxes = normalize(&boxes);
            match pieces.last_mut() {
                Some(last) if last.2 == boxes && last.1.checked_add(1) == Some(lo) => last.1 = hi,
                _ => pieces.push((lo, hi, boxes)),
            }
        }
        for (lo, hi, boxes) in pieces {
            for b in boxes {
                out.push((AddrRange { v6, lo, hi }, b));
            }
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct IdentKey {
    namespace: String,
    labels: Labels,
    ports: Vec<NamedPort>,
}

struct Ident {
    key: IdentKey,
    pods: BTreeSet<String>,
    /// The pods of this node among them.
    local: BTreeSet<String>,
}

/// What the kernel should hold for the pods of one own identity, without their addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Shape {
    in_isolated: bool,
    out_isolated: bool,
    /// Source identity -> boxes.
    in_pod: BTreeMap<u32, Vec<PortBox>>,
    in_ranges: Vec<(AddrRange, PortBox)>,
    /// Destination identity -> boxes.
    out_pod: BTreeMap<u32, Vec<PortBox>>,
    out_ranges: Vec<(AddrRange, PortBox)>,
}

struct PolicyEntry {
    policy: Policy,
    /// Per rule (ingress rules, then egress rules), the identities its peers select (for an
    /// egress rule open to everyone with named ports: the identities having such a port).
    matched: Vec<BTreeSet<u32>>,
}

/// One element of a set of a family's table.
type Item = (&'static str, Family, Element);

/// Everything the node's policy tables should hold, kept up to date by changes; `take_ops`
/// says what to write.
#[derive(Default)]
pub struct Engine {
    namespaces: HashMap<String, Labels>,
    policies: BTreeMap<(String, String), PolicyEntry>,
    /// Policies by namespace, and those whose peers may be in any namespace.
    by_namespace: HashMap<String, BTreeSet<(String, String)>>,
    reaching: BTreeSet<(String, String)>,
    idents: HashMap<u32, Ident>,
    /// Identities by namespace.
    idents_by_namespace: HashMap<String, BTreeSet<u32>>,
    numbers: HashMap<IdentKey, u32>,
    last_number: u32,
    /// Own identities by namespace.
    local_idents: HashMap<String, BTreeSet<u32>>,
    /// Pods as the watch shows them, and this node's pods as it wired them.
    watched: HashMap<String, PodInfo>,
    local: HashMap<String, PodInfo>,
    /// The identity each pod (with an address) is counted in.
    pod_ident: HashMap<String, u32>,
    /// Which pod holds an address (the newest claim wins).
    owner: HashMap<IpAddr, String>,
    applied_ids: HashMap<IpAddr, u32>,
    applied_local: HashMap<String, BTreeSet<Item>>,
    shapes: HashMap<u32, Shape>,
    dirty_ips: BTreeSet<IpAddr>,
    dirty_idents: BTreeSet<u32>,
    dirty_pods: BTreeSet<String>,
    /// Addresses of pods that the last changes may refuse something they had (their
    /// connections are worth checking); new pods and gone ones are not among them.
    narrowed: BTreeSet<IpAddr>,
    /// The node's pods whose elements a `take_ops` has written (or found empty).
    written: HashSet<String>,
}

fn policy_key(ns: &str, name: &str) -> (String, String) {
    (ns.to_string(), name.to_string())
}

impl Engine {
    pub fn new() -> Engine {
        Engine::default()
    }

    /// A namespace's labels changed (`None`: it is gone).
    pub fn set_namespace(&mut self, name: &str, labels: Option<Labels>) {
        let old = self.namespaces.get(name);
        if old == labels.as_ref() {
            return;
        }
        match labels {
            Some(l) => self.namespaces.insert(name.to_string(), l),
            None => self.namespaces.remove(name),
        };
        // Rules selecting namespaces look again at this one's identities.
        let in_ns: Vec<u32> = self
            .idents_by_namespace
            .get(name)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        if in_ns.is_empty() {
            return;
        }
        let reaching: Vec<(String, String)> = self.reaching.iter().cloned().collect();
        for k in reaching {
            self.rematch(&k, &in_ns);
        }
    }

    /// Every namespace there is (a fresh list).
    pub fn restart_namespaces(&mut self, all: Vec<(String, Labels)>) {
        let keep: HashSet<&String> = all.iter().map(|(n, _)| n).collect();
        let gone: Vec<String> = self
            .namespaces
            .keys()
            .filter(|n| !keep.contains(n))
            .cloned()
            .collect();
        for n in gone {
            self.set_namespace(&n, None);
        }
        for (n, l) in all {
            self.set_namespace(&n, Some(l));
        }
    }

    /// A policy was written (`None`: deleted).
    pub fn set_policy(&mut self, namespace: &str, name: &str, policy: Option<Policy>) {
        let k = policy_key(namespace, name);
        if let Some(old) = self.policies.remove(&k) {
            self.mark_selected(&old.policy);
            self.reaching.remove(&k);
            if let Some(set) = self.by_namespace.get_mut(namespace) {
                set.remove(&k);
            }
        }
        let Some(policy) = policy else {
            return;
        };
        let rules: Vec<&Rule> = policy.rules().collect();
        let matched = rules
            .iter()
            .map(|r| {
                self.reachable(&policy, r)
                    .into_iter()
                    .filter(|n| {
                        self.idents
                            .get(n)
                            .is_some_and(|i| self.admits(&policy, r, &i.key))
                    })
                    .collect()
            })
            .collect();
        if policy.reaches_other_namespaces() {
            self.reaching.insert(k.clone());
        }
        self.by_namespace
            .entry(namespace.to_string())
            .or_default()
            .insert(k.clone());
        self.mark_selected(&policy);
        self.policies.insert(k, PolicyEntry { policy, matched });
    }

    /// The policies there are (a fresh list).
    pub fn restart_policies(&mut self, all: Vec<(String, String, Policy)>) {
        let keep: HashSet<(String, String)> =
            all.iter().map(|(ns, n, _)| policy_key(ns, n)).collect();
        let gone: Vec<(String, String)> = self
            .policies
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for (ns, n) in gone {
            self.set_policy(&ns, &n, None);
        }
        for (ns, n, p) in all {
            self.set_policy(&ns, &n, Some(p));
        }
    }

    /// A pod as the watch shows it (`None`: gone, or holding no pod address).
    pub fn observe_pod(&mut self, uid: &str, pod: Option<PodInfo>) {
        match pod {
            Some(p) => self.watched.insert(uid.to_string(), p),
            None => self.watched.remove(uid),
        };
        self.refresh_pod(uid);
    }

    /// Every pod there is (a fresh list).
    pub fn restart_pods(&mut self, all: Vec<(String, PodInfo)>) {
        let keep: HashSet<&String> = all.iter().map(|(u, _)| u).collect();
        let gone: Vec<String> = self
            .watched
            .keys()
            .filter(|u| !keep.contains(u))
            .cloned()
            .collect();
        for u in gone {
            self.observe_pod(&u, None);
        }
        for (u, p) in all {
            self.observe_pod(&u, Some(p));
        }
    }

    /// One of this node's pods got its addresses (before its first container starts).
    pub fn attach(&mut self, uid: &str, pod: PodInfo) {
        self.local.insert(uid.to_string(), pod);
        self.refresh_pod(uid);
    }

    /// One of this node's pods gave its addresses back.
    pub fn detach(&mut self, uid: &str) {
        if self.local.remove(uid).is_some() {
            self.refresh_pod(uid);
        }
    }

    /// Whether the engine has this pod as one of the node's.
    pub fn is_local(&self, uid: &str) -> bool {
        self.local.contains_key(uid)
    }

    /// The pod as policies should see it: the node's own addresses for its pods, the
    /// watch's labels when it has them.
    fn effective(&self, uid: &str) -> Option<(PodInfo, bool)> {
        match (self.local.get(uid), self.watched.get(uid)) {
            (Some(l), Some(w)) => Some((
                PodInfo {
                    ips: l.ips.clone(),
                    ..w.clone()
                },
                true,
            )),
            (Some(l), None) => Some((l.clone(), true)),
            (None, Some(w)) => Some((w.clone(), false)),
            (None, None) => None,
        }
        .filter(|(p, _)| !p.ips.is_empty())
    }

    fn refresh_pod(&mut self, uid: &str) {
        let want = self.effective(uid);
        let want_key = want.as_ref().map(|(p, _)| IdentKey {
            namespace: p.namespace.clone(),
            labels: p.labels.clone(),
            ports: p.ports.clone(),
        });
        let current = self.pod_ident.get(uid).copied();
        let same = current
            .and_then(|n| self.idents.get(&n))
            .is_some_and(|i| Some(&i.key) == want_key.as_ref());
        if !same && let Some(n) = current {
            self.leave(uid, n);
        }
        // Addresses no longer the pod's.
        let keep: BTreeSet<IpAddr> = want
            .iter()
            .flat_map(|(p, _)| p.ips.iter().copied())
            .collect();
        let dropped: Vec<IpAddr> = self
            .owner
            .iter()
            .filter(|(ip, u)| u.as_str() == uid && !keep.contains(ip))
            .map(|(ip, _)| *ip)
            .collect();
        for ip in dropped {
            self.owner.remove(&ip);
            self.dirty_ips.insert(ip);
            self.dirty_pods.insert(uid.to_string());
        }
        let (Some((pod, local)), Some(key)) = (want, want_key) else {
            return;
        };
        let n = match (same, current) {
            (true, Some(n)) => n,
            _ => match self.numbers.get(&key) {
                Some(n) => *n,
                None => self.make_ident(key),
            },
        };
        let ident = self
            .idents
            .get_mut(&n)
            .expect("identity just found or made");
        ident.pods.insert(uid.to_string());
        if local && ident.local.insert(uid.to_string()) {
            if ident.local.len() == 1 {
                self.local_idents
                    .entry(pod.namespace.clone())
                    .or_default()
                    .insert(n);
                self.dirty_idents.insert(n);
            }
            self.dirty_pods.insert(uid.to_string());
        } else if !local && ident.local.remove(uid) {
            if ident.local.is_empty()
                && let Some(set) = self.local_idents.get_mut(&pod.namespace)
            {
                set.remove(&n);
            }
            self.dirty_pods.insert(uid.to_string());
        }
        self.pod_ident.insert(uid.to_string(), n);
        for ip in pod.ips {
            let before = self.owner.insert(ip, uid.to_string());
            if !same {
                // The address names another identity now.
                self.dirty_ips.insert(ip);
            }
            if before.as_deref() != Some(uid) {
                self.dirty_ips.insert(ip);
                if local {
                    self.dirty_pods.insert(uid.to_string());
                }
                // The pod that held it before no longer gets elements for it.
                if let Some(b) = before.filter(|b| self.local.contains_key(b)) {
                    self.dirty_pods.insert(b);
                }
            }
        }
    }

    /// Take a pod out of identity `n`, which goes with its last pod.
    fn leave(&mut self, uid: &str, n: u32) {
        self.pod_ident.remove(uid);
        let Some(i) = self.idents.get_mut(&n) else {
            return;
        };
        i.pods.remove(uid);
        if i.local.remove(uid) {
            self.dirty_pods.insert(uid.to_string());
            if i.local.is_empty()
                && let Some(set) = self.local_idents.get_mut(&i.key.namespace)
            {
                set.remove(&n);
            }
        }
        if i.pods.is_empty() {
            self.drop_ident(n);
        }
    }

    /// The identities rule `r` of `policy` could admit: those of its own namespace, of the
    /// namespaces its selectors pick, or (port names toward everyone) all.
    fn reachable(&self, policy: &Policy, r: &Rule) -> Vec<u32> {
        if r.by_port_name() {
            return self.idents.keys().copied().collect();
        }
        let empty = Labels::new();
        let mut namespaces: BTreeSet<&str> = BTreeSet::new();
        for p in &r.peers {
            match &p.namespaces {
                None => {
                    namespaces.insert(&policy.namespace);
                }
                Some(sel) => namespaces.extend(
                    self.idents_by_namespace
                        .keys()
                        .filter(|ns| sel.matches(self.namespaces.get(*ns).unwrap_or(&empty)))
                        .map(String::as_str),
                ),
            }
        }
        namespaces
            .into_iter()
            .filter_map(|ns| self.idents_by_namespace.get(ns))
            .flatten()
            .copied()
            .collect()
    }

    /// Policies that may name an identity of namespace `ns` as a peer.
    fn candidates(&self, ns: &str) -> Vec<(String, String)> {
        let mut out: BTreeSet<(String, String)> = self.reaching.clone();
        if let Some(set) = self.by_namespace.get(ns) {
            out.extend(set.iter().cloned());
        }
        out.into_iter().collect()
    }

    fn make_ident(&mut self, key: IdentKey) -> u32 {
        // Numbers are not reused, so an element naming a gone identity can never be read as
        // naming a new one.
        self.last_number += 1;
        let n = self.last_number;
        self.numbers.insert(key.clone(), n);
        let ns = key.namespace.clone();
        self.idents_by_namespace
            .entry(ns.clone())
            .or_default()
            .insert(n);
        self.idents.insert(
            n,
            Ident {
                key,
                pods: BTreeSet::new(),
                local: BTreeSet::new(),
            },
        );
        for k in self.candidates(&ns) {
            self.rematch(&k, &[n]);
        }
        n
    }

    fn drop_ident(&mut self, n: u32) {
        let Some(i) = self.idents.remove(&n) else {
            return;
        };
        self.numbers.remove(&i.key);
        self.shapes.remove(&n);
        if let Some(set) = self.idents_by_namespace.get_mut(&i.key.namespace) {
            set.remove(&n);
            if set.is_empty() {
                self.idents_by_namespace.remove(&i.key.namespace);
            }
        }
        for k in self.candidates(&i.key.namespace) {
            let Some(entry) = self.policies.get_mut(&k) else {
                continue;
            };
            let mut changed = false;
            for m in &mut entry.matched {
                changed |= m.remove(&n);
            }
            if changed {
                let p = entry.policy.clone();
                self.mark_selected(&p);
            }
        }
    }

    /// Look again whether policy `k`'s rules admit the identities `ns`; mark what changed.
    fn rematch(&mut self, k: &(String, String), idents: &[u32]) {
        let Some(entry) = self.policies.get(k) else {
            return;
        };
        let mut updates = Vec::new();
        for (ri, r) in entry.policy.rules().enumerate() {
            for n in idents {
                let Some(i) = self.idents.get(n) else {
                    continue;
                };
                let now = self.admits(&entry.policy, r, &i.key);
                if now != entry.matched[ri].contains(n) {
                    updates.push((ri, *n, now));
                }
            }
        }
        if updates.is_empty() {
            return;
        }
        let entry = self.policies.get_mut(k).expect("looked up above");
        for (ri, n, now) in updates {
            if now {
                entry.matched[ri].insert(n);
            } else {
                entry.matched[ri].remove(&n);
            }
        }
        let p = entry.policy.clone();
        self.mark_selected(&p);
    }

    /// Whether rule `r` of `policy` names pods of identity `key` as peers.
    fn admits(&self, policy: &Policy, r: &Rule, key: &IdentKey) -> bool {
        if r.everyone {
            // Open to everyone (the address ranges say so); an egress rule's port names
            // reach the pods that have such a port.
            return r.by_port_name()
                && r.named_ports().any(|(proto, name)| {
                    key.ports
                        .iter()
                        .any(|p| p.protocol == proto && p.name == name)
                });
        }
        let empty = Labels::new();
        r.peers.iter().any(|peer| {
            let ns_ok = match &peer.namespaces {
                None => key.namespace == policy.namespace,
                Some(sel) => sel.matches(self.namespaces.get(&key.namespace).unwrap_or(&empty)),
            };
            ns_ok && peer.pods.matches(&key.labels)
        })
    }

    /// The node's identities `policy` selects need their elements computed again.
    fn mark_selected(&mut self, policy: &Policy) {
        let Some(own) = self.local_idents.get(&policy.namespace) else {
            return;
        };
        for n in own {
            if let Some(i) = self.idents.get(n)
                && policy.selector.matches(&i.key.labels)
            {
                self.dirty_idents.insert(*n);
            }
        }
    }

    fn shape(&self, n: u32) -> Shape {
        let mut s = Shape::default();
        let Some(me) = self.idents.get(&n) else {
            return s;
        };
        let empty = BTreeSet::new();
        let keys = self.by_namespace.get(&me.key.namespace).unwrap_or(&empty);
        let mut in_pod: BTreeMap<u32, Vec<PortBox>> = BTreeMap::new();
        let mut out_pod: BTreeMap<u32, Vec<PortBox>> = BTreeMap::new();
        let (mut in_ranges, mut out_ranges) = (Vec::new(), Vec::new());
        for k in keys {
            let Some(entry) = self.policies.get(k) else {
                continue;
            };
            let p = &entry.policy;
            if !p.selector.matches(&me.key.labels) {
                continue;
            }
            let mut ri = 0;
            if let Some(rules) = &p.ingress {
                s.in_isolated = true;
                for r in rules {
                    // Names are those of this pod's ports: it is the destination.
                    let boxes = port_boxes(&r.ports, Some(&me.key.ports));
                    for src in &entry.matched[ri] {
                        in_pod.entry(*src).or_default().extend(&boxes);
                    }
                    let ranges = if r.everyone {
                        vec![whole(false), whole(true)]
                    } else {
                        r.ranges.clone()
                    };
                    for range in ranges {
                        in_ranges.extend(boxes.iter().map(|b| (range, *b)));
                    }
                    ri += 1;
                }
            }
            if let Some(rules) = &p.egress {
                s.out_isolated = true;
                for r in rules {
                    // Names are the destination's; toward addresses, only numbers count.
                    for dst in &entry.matched[ri] {
                        if let Some(d) = self.idents.get(dst) {
                            out_pod
                                .entry(*dst)
                                .or_default()
                                .extend(port_boxes(&r.ports, Some(&d.key.ports)));
                        }
                    }
                    let boxes = port_boxes(&r.ports, None);
                    let ranges = if r.everyone {
                        vec![whole(false), whole(true)]
                    } else {
                        r.ranges.clone()
                    };
                    for range in ranges {
                        out_ranges.extend(boxes.iter().map(|b| (range, *b)));
                    }
                    ri += 1;
                }
            }
        }
        s.in_pod = in_pod
            .into_iter()
            .map(|(k, v)| (k, normalize(&v)))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        s.out_pod = out_pod
            .into_iter()
            .map(|(k, v)| (k, normalize(&v)))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        s.in_ranges = normalize_ranges(&in_ranges);
        s.out_ranges = normalize_ranges(&out_ranges);
        s
    }

    /// What the kernel should hold for one of the node's pods.
    fn items(&self, uid: &str) -> BTreeSet<Item> {
        let mut out = BTreeSet::new();
        let (Some(n), Some((pod, true))) = (self.pod_ident.get(uid), self.effective(uid)) else {
            return out;
        };
        let Some(shape) = self.shapes.get(n) else {
            return out;
        };
        for ip in pod.ips {
            // An address another pod has claimed since is that pod's.
            if self.owner.get(&ip).map(String::as_str) != Some(uid) {
                continue;
            }
            let v6 = ip.is_ipv6();
            let fam = Family::of(v6);
            let one = |f: Fields| Element::new(f, Data::None);
            if shape.in_isolated {
                out.insert(("in_iso", fam, one(Fields::new().ip(ip))));
            }
            if shape.out_isolated {
                out.insert(("out_iso", fam, one(Fields::new().ip(ip))));
            }
            let ports = |f: Fields, b: &PortBox, end: bool| {
                if end {
                    f.proto_number(b.proto.1).port(b.port.1)
                } else {
                    f.proto_number(b.proto.0).port(b.port.0)
                }
            };
            for (src, boxes) in &shape.in_pod {
                for b in boxes {
                    let k = |end| ports(Fields::new().ranged_number(*src).ip(ip), b, end);
                    out.insert(("in_pod", fam, Element::range(k(false), k(true))));
                }
            }
            for (dst, boxes) in &shape.out_pod {
                for b in boxes {
                    let k = |end| ports(Fields::new().ip(ip).ranged_number(*dst), b, end);
                    out.insert(("out_pod", fam, Element::range(k(false), k(true))));
                }
            }
            for (r, b) in shape.in_ranges.iter().filter(|(r, _)| r.v6 == v6) {
                let k = |end: bool| {
                    let a = to_ip(v6, if end { r.hi } else { r.lo });
                    ports(Fields::new().ip(a).ip(ip), b, end)
                };
                out.insert(("in_cidr", fam, Element::range(k(false), k(true))));
            }
            for (r, b) in shape.out_ranges.iter().filter(|(r, _)| r.v6 == v6) {
                let k = |end: bool| {
                    let a = to_ip(v6, if end { r.hi } else { r.lo });
                    ports(Fields::new().ip(ip).ip(a), b, end)
                };
                out.insert(("out_cidr", fam, Element::range(k(false), k(true))));
            }
        }
        out
    }

    /// The element changes since the last call, deletions first, as one batch.
    pub fn take_ops(&mut self) -> Vec<SetOp> {
        for n in std::mem::take(&mut self.dirty_idents) {
            let Some(i) = self.idents.get(&n) else {
                continue;
            };
            if i.local.is_empty() {
                self.shapes.remove(&n);
                continue;
            }
            let shape = self.shape(n);
            if self.shapes.get(&n) != Some(&shape) {
                self.dirty_pods.extend(i.local.iter().cloned());
                self.shapes.insert(n, shape);
            }
        }
        let mut removed: BTreeMap<(&'static str, Family), Vec<Element>> = BTreeMap::new();
        let mut added: BTreeMap<(&'static str, Family), Vec<Element>> = BTreeMap::new();
        for ip in std::mem::take(&mut self.dirty_ips) {
            let want = self
                .owner
                .get(&ip)
                .and_then(|u| self.pod_ident.get(u))
                .copied();
            let have = self.applied_ids.get(&ip).copied();
            if want == have {
                continue;
            }
            if want.is_some() && have.is_some() {
                // Another identity: what its peers allowed the old one may not hold.
                self.narrowed.insert(ip);
            }
            let fam = Family::of(ip.is_ipv6());
            if have.is_some() {
                removed
                    .entry(("ids", fam))
                    .or_default()
                    .push(Element::new(Fields::new().ip(ip), Data::None));
                self.applied_ids.remove(&ip);
            }
            if let Some(n) = want {
                added.entry(("ids", fam)).or_default().push(Element::new(
                    Fields::new().ip(ip),
                    Data::Value(Fields::new().number(n)),
                ));
                self.applied_ids.insert(ip, n);
            }
        }
        for uid in std::mem::take(&mut self.dirty_pods) {
            let want = self.items(&uid);
            let have = self.applied_local.remove(&uid).unwrap_or_default();
            for (set, fam, e) in have.difference(&want) {
                let mut e = e.clone();
                e.data = Data::None;
                removed.entry((set, *fam)).or_default().push(e);
            }
            for (set, fam, e) in want.difference(&have) {
                added.entry((set, *fam)).or_default().push(e.clone());
            }
            let lost = have.difference(&want).next().is_some()
                || want
                    .difference(&have)
                    .any(|(set, _, _)| *set == "in_iso" || *set == "out_iso");
            // A pod seen before that is still here (a new one has no connections yet).
            let existed = self.written.contains(&uid);
            match self.local.get(&uid) {
                Some(p) => {
                    if lost && existed {
                        self.narrowed.extend(p.ips.iter().copied());
                    }
                    self.written.insert(uid.clone());
                }
                None => {
                    self.written.remove(&uid);
                }
            }
            if !want.is_empty() {
                self.applied_local.insert(uid, want);
            }
        }
        let mut ops = Vec::new();
        for (op, parts) in [(Op::Delete, removed), (Op::Add, added)] {
            for ((set, family), elements) in parts {
                ops.push(SetOp {
                    op,
                    family,
                    set: set.to_string(),
                    elements,
                });
            }
        }
        ops
    }

    /// Whether the rules the kernel holds (as of the last `take_ops`) let a new connection
    /// from `src` to `dst` (`proto`, destination `port`) pass: the chains' decision, for
    /// finding the tracked connections a change no longer allows.
    pub fn allows(&self, src: IpAddr, dst: IpAddr, proto: u8, port: u16) -> bool {
        let fam = Family::of(src.is_ipv6());
        let items = |ip: IpAddr| {
            self.owner
                .get(&ip)
                .filter(|u| self.local.contains_key(*u))
                .and_then(|u| self.applied_local.get(u))
        };
        let id = |ip: IpAddr| self.applied_ids.get(&ip).copied().unwrap_or(0);
        let has = |items: &BTreeSet<Item>, set: &str, key: Fields| {
            items
                .iter()
                .any(|(s, f, e)| *s == set && *f == fam && e.holds(&key))
        };
        let tail = |f: Fields| f.proto_number(proto).port(port);
        if let Some(mine) = items(src)
            && has(mine, "out_iso", Fields::new().ip(src))
            && !has(
                mine,
                "out_pod",
                tail(Fields::new().ip(src).ranged_number(id(dst))),
            )
            && !has(mine, "out_cidr", tail(Fields::new().ip(src).ip(dst)))
        {
            return false;
        }
        if let Some(theirs) = items(dst)
            && has(theirs, "in_iso", Fields::new().ip(dst))
            && !has(
                theirs,
                "in_pod",
                tail(Fields::new().ranged_number(id(src)).ip(dst)),
            )
            && !has(theirs, "in_cidr", tail(Fields::new().ip(src).ip(dst)))
        {
            return false;
        }
        true
    }

    /// The addresses narrowed since the last call (see `narrowed`).
    pub fn take_narrowed(&mut self) -> BTreeSet<IpAddr> {
        std::mem::take(&mut self.narrowed)
    }

    /// Whether `ip` is the address of a pod the engine knows.
    pub fn is_pod_address(&self, ip: IpAddr) -> bool {
        self.owner.contains_key(&ip)
    }

    /// Forget what was written: the next `take_ops` writes everything (into a fresh table).
    pub fn rewrite_all(&mut self) {
        self.applied_ids.clear();
        self.applied_local.clear();
        self.written.clear();
        self.dirty_ips.extend(self.owner.keys().copied());
        self.dirty_pods.extend(self.local.keys().cloned());
    }

    /// How many identities and own pods there are (for logs).
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.policies.len(), self.idents.len(), self.local.len())
    }
}

/// The table of one family: its sets and the chains that read them. `dns` is the cluster
/// DNS address the node serves itself, which pods may always ask.
pub fn skeleton(v6: bool, table: &str, dns: Option<IpAddr>) -> String {
    let f = if v6 { "ip6" } else { "ip" };
    let addr = if v6 { "ipv6_addr" } else { "ipv4_addr" };
    let mut s = String::new();
    let _ = writeln!(s, "add table {f} {table}\ndelete table {f} {table}");
    let _ = writeln!(s, "table {f} {table} {{");
    let _ = writeln!(s, "  map ids {{ type {addr} : mark; }}");
    let _ = writeln!(
        s,
        "  set in_iso {{ type {addr}; }}\n  set out_iso {{ type {addr}; }}"
    );
    for (set, ty) in [
        ("in_pod", format!("mark . {addr}")),
        ("in_cidr", format!("{addr} . {addr}")),
        ("out_pod", format!("{addr} . mark")),
        ("out_cidr", format!("{addr} . {addr}")),
    ] {
        let _ = writeln!(
            s,
            "  set {set} {{ type {ty} . inet_proto . inet_service; flags interval; }}"
        );
    }
    // Established and related packets were allowed when their connection began; a new
    // connection is checked where it leaves an isolated pod and where it reaches one.
    let _ = writeln!(
        s,
        "  chain forward {{\n    type filter hook forward priority filter - 5; policy accept;\n    \
         ct state established,related accept\n    \
         {f} saddr @out_iso jump egress\n    \
         {f} daddr @in_iso jump ingress\n  }}"
    );
    let _ = write!(
        s,
        "  chain input {{\n    type filter hook input priority filter - 5; policy accept;\n    \
         ct state established,related accept\n"
    );
    if let Some(dns) = dns.filter(|d| d.is_ipv6() == v6) {
        let _ = writeln!(
            s,
            "    {f} daddr {dns} meta l4proto {{ tcp, udp }} th dport 53 accept"
        );
    }
    let _ = writeln!(s, "    {f} saddr @out_iso jump egress\n  }}");
    let _ = writeln!(
        s,
        "  chain egress {{\n    ct mark set 0\n    ct mark set {f} daddr map @ids\n    \
         {f} saddr . ct mark . meta l4proto . th dport @out_pod return\n    \
         {f} saddr . {f} daddr . meta l4proto . th dport @out_cidr return\n    \
         drop\n  }}"
    );
    let _ = writeln!(
        s,
        "  chain ingress {{\n    ct mark set 0\n    ct mark set {f} saddr map @ids\n    \
         ct mark . {f} daddr . meta l4proto . th dport @in_pod return\n    \
         {f} saddr . {f} daddr . meta l4proto . th dport @in_cidr return\n    \
         drop\n  }}"
    );
    let _ = writeln!(s, "}}");
    s
}

#[cfg(test)]
mod tests;

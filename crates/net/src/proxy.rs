//! The Service proxy's data plane, as pure logic: Services and their EndpointSlices in, the
//! nftables state out, and the script that moves the kernel from one state to the next.
//!
//! The rule shape does not grow with the number of Services (no chain per Service; see
//! network-notes). A Service port with N endpoints has N elements in the map `beN`, keyed
//! `clusterIP . protocol . port . (random mod N)`; for N up to `DIRECT` one rule per N in the
//! NAT chains DNATs through `beN`, so such a Service has no verdict element at all (adding a
//! `goto` element makes the kernel re-check every verdict map of the table, a cost that grows
//! with their size). Larger counts, and ports with client affinity, go through the verdict map
//! `services` to the shared chain `svcN` (or their affinity chain). A Service port with no
//! endpoint is in the set `noendpoints`, which a filter rule rejects at once. A pod that
//! reaches itself through its Service (hairpin) is masqueraded, so its reply comes back
//! through the node. A change writes only the elements of the Service ports it touches, in one
//! transaction.
//!
//! A full load builds a fresh table beside the live one and then drops the old (the two
//! names of `TABLES` take turns), so no packet ever meets a half-loaded table: its chains and
//! maps come from an `nft` script (`skeleton`), its elements from `elements`, written over
//! netlink (`nftnl`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::IpAddr;

use api::k8s_openapi::api::core::v1::Service;
use api::k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::Protocol;
use crate::nftnl::{Data, Element, Family, Fields, Op, SetOp};

/// The proxy's tables: a full load fills the one not in use, then drops the other.
pub const TABLES: [&str; 2] = ["berth-proxy-a", "berth-proxy-b"];

/// Endpoint counts up to this one are dispatched by a rule each in the NAT chains; a new
/// connection not to such a Service meets this many map lookups, so it stays small.
pub const DIRECT: usize = 16;

/// Whether a port with `n` endpoints (and no client affinity) reaches its `beN` map through
/// the `services` verdict map rather than a rule of the NAT chains.
fn routed_by_verdict(n: usize) -> bool {
    n > DIRECT
}

/// Whether a table is (or was, under an older name) the proxy's.
pub fn is_proxy_table(name: &str) -> bool {
    name.starts_with("berth-proxy")
}

/// A Service port as packets address it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub ip: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

/// Where a Service port's traffic goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub ip: IpAddr,
    pub port: u16,
}

/// A port opened on every node address (a Service's `nodePort`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodePort {
    pub protocol: Protocol,
    pub port: u16,
}

/// A Service as the proxy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub cluster_ips: Vec<IpAddr>,
    /// Name, protocol, port.
    pub ports: Vec<(String, Protocol, u16)>,
    /// Name, protocol, node port (NodePort and LoadBalancer Services).
    pub node_ports: Vec<(String, Protocol, u16)>,
    /// `internalTrafficPolicy: Local`: cluster IP traffic goes to this node's endpoints only.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local`: node-port traffic goes to this node's endpoints only,
    /// and keeps its client's address (no masquerade).
    pub external_local: bool,
    /// `sessionAffinity: ClientIP`: seconds a client sticks to the endpoint it first got.
    pub affinity: Option<u32>,
}

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

/// An endpoint of an EndpointSlice, as the proxy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub ip: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// The node it runs on, if known.
    pub node: Option<String>,
}

/// A slice: its ports (name, protocol, number) and endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceInfo {
    pub ports: Vec<(String, Protocol, u16)>,
    pub endpoints: Vec<EndpointInfo>,
}

/// A port as the proxy keys it: name, protocol (TCP when unset), number; `None` when the
/// protocol is unknown or the number missing or out of range.
fn port_of(
    name: Option<&String>,
    protocol: Option<&str>,
    number: Option<i32>,
) -> Option<(String, Protocol, u16)> {
    Some((
        name.cloned().unwrap_or_default(),
        Protocol::from_kubernetes(protocol.unwrap_or("TCP"))?,
        u16::try_from(number?).ok()?,
    ))
}

impl ServiceInfo {
    /// What the proxy needs of a Service; `None` for one it has nothing to do for (headless,
    /// ExternalName, or at `local`, an address the node serves itself).
    pub fn from_service(s: &Service, local: Option<IpAddr>) -> Option<ServiceInfo> {
        let spec = s.spec.as_ref()?;
        if spec.type_.as_deref() == Some("ExternalName") {
            return None;
        }
        let mut ips: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
        if ips.is_empty()
            && let Some(ip) = spec.cluster_ip.clone()
        {
            ips.push(ip);
        }
        let cluster_ips: Vec<IpAddr> = ips.iter().filter_map(|i| i.parse().ok()).collect();
        if cluster_ips.is_empty() {
            // Headless: DNS answers with the pods; nothing to proxy.
            return None;
        }
        if local.is_some_and(|l| cluster_ips.contains(&l)) {
            // Served by the node itself (the cluster DNS).
            return None;
        }
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| port_of(p.name.as_ref(), p.protocol.as_deref(), Some(p.port)))
            .collect();
        let node_port = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
        let mut node_ports: Vec<(String, Protocol, u16)> = spec
            .ports
            .iter()
            .flatten()
            .filter(|_| node_port)
            .filter_map(|p| port_of(p.name.as_ref(), p.protocol.as_deref(), p.node_port))
            .collect();
        // A Service the built-in load balancer has given the nodes' addresses is served there
        // at its own ports, like a node port.
        let balanced = spec.type_.as_deref() == Some("LoadBalancer")
            && spec.load_balancer_class.is_none()
            && s.status
                .as_ref()
                .and_then(|st| st.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .is_some_and(|i| !i.is_empty());
        if balanced {
            node_ports.extend(
                spec.ports
                    .iter()
                    .flatten()
                    .filter_map(|p| port_of(p.name.as_ref(), p.protocol.as_deref(), Some(p.port))),
            );
        }
        Some(ServiceInfo {
            cluster_ips,
            ports,
            node_ports,
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
            affinity: (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
                spec.session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .and_then(|t| u32::try_from(t).ok())
                    .filter(|t| *t > 0)
                    .unwrap_or(DEFAULT_AFFINITY_SECONDS)
            }),
        })
    }
}

impl SliceInfo {
    /// What the proxy needs of an EndpointSlice.
    pub fn from_slice(s: &EndpointSlice) -> SliceInfo {
        SliceInfo {
            ports: s
                .ports
                .iter()
                .flatten()
                .filter_map(|p| port_of(p.name.as_ref(), p.protocol.as_deref(), p.port))
                .collect(),
            endpoints: s
                .endpoints
                .iter()
                .filter_map(|e| {
                    let c = e.conditions.clone().unwrap_or_default();
                    Some(EndpointInfo {
                        ip: e.addresses.first()?.parse().ok()?,
                        // Unset means ready (and serving), as Kubernetes reads it.
                        ready: c.ready != Some(false),
                        serving: c.serving.or(c.ready) != Some(false),
                        terminating: c.terminating == Some(true),
                        node: e.node_name.clone(),
                    })
                })
                .collect(),
        }
    }
}

/// What the kernel should hold: every Service port's and node port's backends (empty:
/// reject).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub frontends: BTreeMap<Frontend, Vec<Backend>>,
    /// Node ports lead to IPv4 endpoints.
    pub node_ports: BTreeMap<NodePort, Vec<Backend>>,
    /// Node ports whose traffic keeps its source address (`externalTrafficPolicy: Local`).
    pub local_node_ports: BTreeSet<NodePort>,
    /// Frontends whose clients stick to one endpoint, and for how many seconds.
    pub affinity: BTreeMap<Frontend, u32>,
}

/// The proxy state kept as the union of every Service's part, so that a change recomputes
/// only the Services it touched, not all of them.
#[derive(Default)]
pub struct Combined {
    /// Service key -> the keys its part holds in `state`.
    parts: std::collections::HashMap<String, (Vec<Frontend>, Vec<NodePort>)>,
    state: State,
}

impl Combined {
    /// Put (or with `None`, take out) the part of Service `key`.
    pub fn set(&mut self, key: &str, part: Option<State>) {
        if let Some((frontends, node_ports)) = self.parts.remove(key) {
            for f in &frontends {
                self.state.frontends.remove(f);
                self.state.affinity.remove(f);
            }
            for np in &node_ports {
                self.state.node_ports.remove(np);
                self.state.local_node_ports.remove(np);
            }
        }
        if let Some(p) = part {
            let keys = (
                p.frontends.keys().copied().collect(),
                p.node_ports.keys().copied().collect(),
            );
            self.state.frontends.extend(p.frontends);
            self.state.node_ports.extend(p.node_ports);
            self.state.local_node_ports.extend(p.local_node_ports);
            self.state.affinity.extend(p.affinity);
            self.parts.insert(key.to_string(), keys);
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }
}

/// The mark a packet gets when it came in through a node port, so that it is masqueraded
/// (its reply must come back through this node).
pub const MASQ_MARK: u32 = 0x4000;

/// The backends of the Service port `name`/`protocol` of the family `v6`: the ready
/// endpoints, or, if none is ready, those still serving while they terminate.
pub(crate) fn backends(
    slices: &[SliceInfo],
    name: &str,
    protocol: Protocol,
    v6: bool,
    only_on: Option<&str>,
) -> Vec<Backend> {
    let mut ready = BTreeSet::new();
    let mut fallback = BTreeSet::new();
    for slice in slices {
        let Some((_, _, target)) = slice
            .ports
            .iter()
            .find(|(n, p, _)| n == name && *p == protocol)
        else {
            continue;
        };
        let here = |e: &&EndpointInfo| only_on.is_none() || e.node.as_deref() == only_on;
        for e in slice
            .endpoints
            .iter()
            .filter(|e| e.ip.is_ipv6() == v6)
            .filter(here)
        {
            let b = Backend {
                ip: e.ip,
                port: *target,
            };
            if e.ready {
                ready.insert(b);
            } else if e.serving && e.terminating {
                fallback.insert(b);
            }
        }
    }
    let chosen = if ready.is_empty() { fallback } else { ready };
    chosen.into_iter().collect()
}

/// The proxy state of one Service from its slices: per cluster IP and port, the ready
/// endpoints, or, if none is ready, those still serving while they terminate (Kubernetes'
/// rule, so connections drain instead of failing during a rollout).
/// `node` is the node the proxy runs on, for the traffic policies.
pub fn service_state(svc: &ServiceInfo, slices: &[SliceInfo], node: &str, out: &mut State) {
    let internal = svc.internal_local.then_some(node);
    let external = svc.external_local.then_some(node);
    for &ip in &svc.cluster_ips {
        for (name, protocol, port) in &svc.ports {
            let f = Frontend {
                ip,
                protocol: *protocol,
                port: *port,
            };
            out.frontends
                .insert(f, backends(slices, name, *protocol, ip.is_ipv6(), internal));
            if let Some(t) = svc.affinity {
                out.affinity.insert(f, t);
            }
        }
    }
    for (name, protocol, port) in &svc.node_ports {
        let np = NodePort {
            protocol: *protocol,
            port: *port,
        };
        out.node_ports
            .insert(np, backends(slices, name, *protocol, false, external));
        if svc.external_local {
            out.local_node_ports.insert(np);
        }
    }
}

fn fam(ip: IpAddr) -> &'static str {
    if ip.is_ipv6() { "ip6" } else { "ip" }
}

/// The name of an affinity frontend's chain (its endpoints' chains and sets add `_<i>`).
fn affinity_chain(k: &Frontend) -> String {
    format!(
        "aff_{}_{}_{}",
        k.ip.to_string().replace(['.', ':'], "_"),
        k.protocol.as_str(),
        k.port
    )
}

/// The sets and chains of a frontend with client affinity, as commands: per endpoint a set
/// of the clients it has (each kept for `timeout` seconds after its last packet) and a chain
/// that refreshes it and DNATs; the frontend's chain sends a known client to its endpoint and
/// a new one to a random endpoint. Written only for Services that ask for affinity, so the
/// common path keeps no chain per Service.
fn affinity_add(t: &str, k: &Frontend, backends: &[Backend], timeout: u32) -> String {
    let f = fam(k.ip);
    let addr = if k.ip.is_ipv6() {
        "ipv6_addr"
    } else {
        "ipv4_addr"
    };
    let chain = affinity_chain(k);
    let proto = k.protocol.as_str();
    let mut s = String::new();
    for (i, b) in backends.iter().enumerate() {
        let to = match b.ip {
            IpAddr::V6(ip) => format!("[{ip}]:{}", b.port),
            IpAddr::V4(ip) => format!("{ip}:{}", b.port),
        };
        let _ = writeln!(
            s,
            "add set {f} {t} {chain}_{i} {{ type {addr}; flags dynamic,timeout; timeout {timeout}s; }}
             add chain {f} {t} {chain}_{i}
             add rule {f} {t} {chain}_{i} update @{chain}_{i} {{ {f} saddr }}
             add rule {f} {t} {chain}_{i} meta l4proto {proto} dnat {f} to {to}"
        );
    }
    let _ = writeln!(s, "add chain {f} {t} {chain}");
    for i in 0..backends.len() {
        let _ = writeln!(
            s,
            "add rule {f} {t} {chain} {f} saddr @{chain}_{i} goto {chain}_{i}"
        );
    }
    let picks: Vec<String> = (0..backends.len())
        .map(|i| format!("{i} : goto {chain}_{i}"))
        .collect();
    let _ = writeln!(
        s,
        "add rule {f} {t} {chain} numgen random mod {} vmap {{ {} }}",
        backends.len(),
        picks.join(", ")
    );
    s
}

/// Removing what `affinity_add` made (after the `services` element that leads there).
fn affinity_delete(t: &str, k: &Frontend, n: usize) -> String {
    let f = fam(k.ip);
    let chain = affinity_chain(k);
    let mut s = format!(
        "delete chain {f} {t} {chain}
"
    );
    for i in 0..n {
        let _ = writeln!(
            s,
            "delete chain {f} {t} {chain}_{i}
delete set {f} {t} {chain}_{i}"
        );
    }
    s
}

/// The endpoint counts whose `svcN` chain and `beN` map the state needs.
pub fn counts(state: &State) -> BTreeSet<usize> {
    state
        .frontends
        .values()
        .chain(state.node_ports.values())
        .map(Vec::len)
        .filter(|n| *n > 0)
        .collect()
}

/// Table `t` of one family, emptied if it exists, with its maps and sets, the chains for
/// endpoint counts 1..=`max_count`, and the chains and sets of `state`'s frontends with client
/// affinity; its elements come from `elements`.
pub fn skeleton(v6: bool, t: &str, state: &State, max_count: usize) -> String {
    let f = if v6 { "ip6" } else { "ip" };
    let addr = if v6 { "ipv6_addr" } else { "ipv4_addr" };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "add table {f} {t}\ndelete table {f} {t}\ntable {f} {t} {{"
    );
    let _ = writeln!(
        s,
        "  map services {{ type {addr} . inet_proto . inet_service : verdict; }}"
    );
    let _ = writeln!(
        s,
        "  set noendpoints {{ type {addr} . inet_proto . inet_service; }}"
    );
    let _ = writeln!(s, "  set hairpin {{ type {addr} . {addr}; }}");
    let _ = writeln!(
        s,
        "  map nodeports {{ type inet_proto . inet_service : verdict; }}\n  \
         set noendpoint_nodeports {{ type inet_proto . inet_service; }}"
    );
    for n in 1..=max_count {
        let _ = writeln!(
            s,
            "  map nbe{n} {{ typeof meta l4proto . th dport . numgen random mod {n} : {f} daddr . th dport; }}\n  \
             chain nsvc{n} {{\n    meta mark set meta mark | {MASQ_MARK:#x}\n    \
             meta l4proto {{ tcp, udp, sctp }} dnat {f} to meta l4proto . th dport . numgen random mod {n} map @nbe{n}\n  }}\n  \
             chain nlsvc{n} {{\n    \
             meta l4proto {{ tcp, udp, sctp }} dnat {f} to meta l4proto . th dport . numgen random mod {n} map @nbe{n}\n  }}"
        );
    }
    for n in 1..=max_count {
        let _ = writeln!(
            s,
            "  map be{n} {{ typeof {f} daddr . meta l4proto . th dport . numgen random mod {n} : {f} daddr . th dport; }}\n  \
             chain svc{n} {{\n    meta l4proto {{ tcp, udp, sctp }} dnat {f} to {f} daddr . meta l4proto . th dport . numgen random mod {n} map @be{n}\n  }}"
        );
    }
    for (chain, hook, prio) in [
        ("prerouting", "prerouting", "dstnat"),
        ("output", "output", "-100"),
    ] {
        let _ = write!(
            s,
            "  chain {chain} {{\n    type nat hook {hook} priority {prio}; policy accept;\n    \
             {f} daddr . meta l4proto . th dport vmap @services\n"
        );
        for n in 1..=max_count.min(DIRECT) {
            let _ = writeln!(
                s,
                "    meta l4proto {{ tcp, udp, sctp }} dnat {f} to {f} daddr . meta l4proto . th dport . numgen random mod {n} map @be{n}"
            );
        }
        let _ = writeln!(
            s,
            "    fib daddr type local meta l4proto . th dport vmap @nodeports\n  }}"
        );
    }
    let _ = writeln!(
        s,
        "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
         ct status dnat {f} saddr . {f} daddr @hairpin masquerade\n    \
         meta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} masquerade\n  }}"
    );
    for (chain, hook) in [("filter-forward", "forward"), ("filter-output", "output")] {
        let _ = writeln!(
            s,
            "  chain {chain} {{\n    type filter hook {hook} priority filter; policy accept;\n    \
             ct state new {f} daddr . meta l4proto . th dport @noendpoints meta l4proto tcp reject with tcp reset\n    \
             ct state new {f} daddr . meta l4proto . th dport @noendpoints reject\n  }}"
        );
    }
    let _ = writeln!(
        s,
        "  chain filter-input {{\n    type filter hook input priority filter; policy accept;\n    \
         ct state new meta l4proto . th dport @noendpoint_nodeports meta l4proto tcp reject with tcp reset\n    \
         ct state new meta l4proto . th dport @noendpoint_nodeports reject\n  }}"
    );
    let _ = writeln!(s, "}}");
    for (k, backends) in state.frontends.iter().filter(|(k, _)| k.ip.is_ipv6() == v6) {
        if let (Some(timeout), false) = (state.affinity.get(k), backends.is_empty()) {
            s.push_str(&affinity_add(t, k, backends, *timeout));
        }
    }
    s
}

fn frontend_key(k: &Frontend) -> Fields {
    Fields::new().ip(k.ip).proto(k.protocol).port(k.port)
}

fn node_port_key(np: &NodePort) -> Fields {
    Fields::new().proto(np.protocol).port(np.port)
}

fn backend_value(b: &Backend) -> Data {
    Data::Value(Fields::new().ip(b.ip).port(b.port))
}

/// Every element of `state` of one family, by set or map: what `changes` would add to an empty
/// table, for `skeleton`'s table.
pub fn elements(v6: bool, state: &State) -> Vec<SetOp> {
    let mut services = Vec::new();
    let mut empty = Vec::new();
    let mut slots: BTreeMap<usize, Vec<Element>> = BTreeMap::new();
    let mut pods = BTreeSet::new();
    let element = Element::new;
    for (k, backends) in state.frontends.iter().filter(|(k, _)| k.ip.is_ipv6() == v6) {
        let n = backends.len();
        if n == 0 {
            empty.push(element(frontend_key(k), Data::None));
            continue;
        }
        pods.extend(backends.iter().map(|b| b.ip));
        if state.affinity.contains_key(k) {
            services.push(element(frontend_key(k), Data::Goto(affinity_chain(k))));
            continue;
        }
        if routed_by_verdict(n) {
            services.push(element(frontend_key(k), Data::Goto(format!("svc{n}"))));
        }
        let list = slots.entry(n).or_default();
        for (i, b) in backends.iter().enumerate() {
            list.push(element(frontend_key(k).number(i as u32), backend_value(b)));
        }
    }
    let mut node_ports = Vec::new();
    let mut node_empty = Vec::new();
    let mut node_slots: BTreeMap<usize, Vec<Element>> = BTreeMap::new();
    for (np, backends) in state.node_ports.iter().filter(|_| !v6) {
        let n = backends.len();
        if n == 0 {
            node_empty.push(element(node_port_key(np), Data::None));
            continue;
        }
        let chain = if state.local_node_ports.contains(np) {
            "nlsvc"
        } else {
            "nsvc"
        };
        node_ports.push(element(
            node_port_key(np),
            Data::Goto(format!("{chain}{n}")),
        ));
        let list = node_slots.entry(n).or_default();
        for (i, b) in backends.iter().enumerate() {
            list.push(element(
                node_port_key(np).number(i as u32),
                backend_value(b),
            ));
            pods.insert(b.ip);
        }
    }
    let hairpin: Vec<Element> = pods
        .iter()
        .map(|ip| element(Fields::new().ip(*ip).ip(*ip), Data::None))
        .collect();
    let mut out = Vec::new();
    let mut add = |set: String, elements: Vec<Element>| {
        if !elements.is_empty() {
            out.push(SetOp {
                op: Op::Add,
                family: Family::of(v6),
                set,
                elements,
            });
        }
    };
    for (n, items) in slots {
        add(format!("be{n}"), items);
    }
    add("services".into(), services);
    add("noendpoints".into(), empty);
    for (n, items) in node_slots {
        add(format!("nbe{n}"), items);
    }
    add("nodeports".into(), node_ports);
    add("noendpoint_nodeports".into(), node_empty);
    add("hairpin".into(), hairpin);
    out
}

/// The keys whose values differ between `old` and `new` (present in one only, or changed),
/// found by walking both in order.
fn changed_keys<'a, K: Ord, V: PartialEq>(
    old: &'a BTreeMap<K, V>,
    new: &'a BTreeMap<K, V>,
) -> BTreeSet<&'a K> {
    let mut out = BTreeSet::new();
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return out,
            (Some((k, _)), None) => {
                out.insert(*k);
                a.next();
            }
            (None, Some((k, _))) => {
                out.insert(*k);
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    out.insert(*ka);
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    out.insert(*kb);
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if va != vb {
                        out.insert(*ka);
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
}

/// The addresses that may reach themselves through a Service (every backend's).
fn hairpins(state: &State) -> BTreeSet<IpAddr> {
    state
        .frontends
        .values()
        .chain(state.node_ports.values())
        .flatten()
        .map(|b| b.ip)
        .collect()
}

/// What moves the kernel from one state to the next: element deletions, then the affinity
/// chains that go and those that come, then element additions.
#[derive(Debug, Default)]
pub struct Changes {
    pub delete: Vec<SetOp>,
    pub add: Vec<SetOp>,
    /// `nft` commands: chains and sets of frontends with client affinity.
    pub del_chains: String,
    pub add_chains: String,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty()
            && self.add.is_empty()
            && self.del_chains.is_empty()
            && self.add_chains.is_empty()
    }

    /// Whether only elements move (then netlink can write them without `nft`).
    pub fn elements_only(&self) -> bool {
        self.del_chains.is_empty() && self.add_chains.is_empty()
    }

    /// The elements' operations in the order they apply.
    pub fn ops(&self) -> Vec<SetOp> {
        self.delete.iter().chain(&self.add).cloned().collect()
    }

    /// The whole change as one `nft` script for table `t`.
    pub fn script(&self, t: &str) -> String {
        let mut s = String::new();
        for op in &self.delete {
            s.push_str(&op.command(t));
        }
        s.push_str(&self.del_chains);
        s.push_str(&self.add_chains);
        for op in &self.add {
            s.push_str(&op.command(t));
        }
        s
    }
}

/// The changes from `old` to `new` in table `t` (whose tables exist in the families `new`
/// uses). Frontends that did not change are not written.
pub fn changes(t: &str, old: &State, new: &State) -> Changes {
    let mut out = Changes::default();
    let op = |op, v6: bool, set: String, elements: Vec<Element>| SetOp {
        op,
        family: Family::of(v6),
        set,
        elements,
    };
    let keys_only = |n: usize, key: &Fields| -> Vec<Element> {
        (0..n)
            .map(|i| Element::new(key.clone().number(i as u32), Data::None))
            .collect()
    };
    let slots = |backends: &[Backend], key: &Fields| -> Vec<Element> {
        backends
            .iter()
            .enumerate()
            .map(|(i, b)| Element::new(key.clone().number(i as u32), backend_value(b)))
            .collect()
    };
    let one = |key: Fields, data: Data| vec![Element::new(key, data)];
    // Addresses that the changed ports had or have: the only ones whose hairpin pair can move.
    let mut touched: BTreeSet<IpAddr> = BTreeSet::new();
    let mut keys = changed_keys(&old.frontends, &new.frontends);
    keys.extend(changed_keys(&old.affinity, &new.affinity));
    for k in keys {
        let (before, after) = (old.frontends.get(k), new.frontends.get(k));
        let (aff_before, aff_after) = (old.affinity.get(k), new.affinity.get(k));
        if before == after && aff_before == aff_after {
            continue;
        }
        let v6 = k.ip.is_ipv6();
        let key = frontend_key(k);
        touched.extend(before.into_iter().chain(after).flatten().map(|b| b.ip));
        if let Some(b) = before {
            if aff_before.is_some() && !b.is_empty() {
                out.delete.push(op(
                    Op::Delete,
                    v6,
                    "services".into(),
                    one(key.clone(), Data::None),
                ));
                out.del_chains.push_str(&affinity_delete(t, k, b.len()));
            } else if b.is_empty() {
                out.delete.push(op(
                    Op::Delete,
                    v6,
                    "noendpoints".into(),
                    one(key.clone(), Data::None),
                ));
            } else {
                let n = b.len();
                if routed_by_verdict(n) {
                    out.delete.push(op(
                        Op::Delete,
                        v6,
                        "services".into(),
                        one(key.clone(), Data::None),
                    ));
                }
                out.delete
                    .push(op(Op::Delete, v6, format!("be{n}"), keys_only(n, &key)));
            }
        }
        if let Some(a) = after {
            if let (Some(timeout), false) = (aff_after, a.is_empty()) {
                out.add_chains.push_str(&affinity_add(t, k, a, *timeout));
                out.add.push(op(
                    Op::Add,
                    v6,
                    "services".into(),
                    one(key, Data::Goto(affinity_chain(k))),
                ));
            } else if a.is_empty() {
                out.add
                    .push(op(Op::Add, v6, "noendpoints".into(), one(key, Data::None)));
            } else {
                let n = a.len();
                out.add
                    .push(op(Op::Add, v6, format!("be{n}"), slots(a, &key)));
                if routed_by_verdict(n) {
                    out.add.push(op(
                        Op::Add,
                        v6,
                        "services".into(),
                        one(key, Data::Goto(format!("svc{n}"))),
                    ));
                }
            }
        }
    }
    let mut ports = changed_keys(&old.node_ports, &new.node_ports);
    ports.extend(
        old.local_node_ports
            .symmetric_difference(&new.local_node_ports),
    );
    for k in ports {
        let (before, after) = (old.node_ports.get(k), new.node_ports.get(k));
        let (was_local, is_local) = (
            old.local_node_ports.contains(k),
            new.local_node_ports.contains(k),
        );
        if before == after && was_local == is_local {
            continue;
        }
        touched.extend(before.into_iter().chain(after).flatten().map(|b| b.ip));
        let key = node_port_key(k);
        if let Some(b) = before {
            if b.is_empty() {
                out.delete.push(op(
                    Op::Delete,
                    false,
                    "noendpoint_nodeports".into(),
                    one(key.clone(), Data::None),
                ));
            } else {
                out.delete.push(op(
                    Op::Delete,
                    false,
                    "nodeports".into(),
                    one(key.clone(), Data::None),
                ));
                let n = b.len();
                out.delete
                    .push(op(Op::Delete, false, format!("nbe{n}"), keys_only(n, &key)));
            }
        }
        if let Some(a) = after {
            if a.is_empty() {
                out.add.push(op(
                    Op::Add,
                    false,
                    "noendpoint_nodeports".into(),
                    one(key, Data::None),
                ));
            } else {
                let n = a.len();
                out.add
                    .push(op(Op::Add, false, format!("nbe{n}"), slots(a, &key)));
                let chain = if is_local { "nlsvc" } else { "nsvc" };
                out.add.push(op(
                    Op::Add,
                    false,
                    "nodeports".into(),
                    one(key, Data::Goto(format!("{chain}{n}"))),
                ));
            }
        }
    }
    // Hairpin pairs follow the set of backends. Only touched addresses can move: a few are
    // looked for in both states; many, and the sets are rebuilt whole.
    let (was, now) = if touched.len() <= 8 {
        let uses = |st: &State, ip: &IpAddr| {
            st.frontends
                .values()
                .chain(st.node_ports.values())
                .flatten()
                .any(|b| b.ip == *ip)
        };
        (
            touched.iter().filter(|ip| uses(old, ip)).copied().collect(),
            touched.iter().filter(|ip| uses(new, ip)).copied().collect(),
        )
    } else {
        (hairpins(old), hairpins(new))
    };
    let pair = |ip: &IpAddr| Fields::new().ip(*ip).ip(*ip);
    for ip in was.difference(&now) {
        out.delete.push(op(
            Op::Delete,
            ip.is_ipv6(),
            "hairpin".into(),
            one(pair(ip), Data::None),
        ));
    }
    for ip in now.difference(&was) {
        out.add.push(op(
            Op::Add,
            ip.is_ipv6(),
            "hairpin".into(),
            one(pair(ip), Data::None),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ep(a: &str, ready: bool, serving: bool, terminating: bool) -> EndpointInfo {
        EndpointInfo {
            ip: ip(a),
            ready,
            serving,
            terminating,
            node: Some(if a.ends_with(".2") { "n1" } else { "n2" }.into()),
        }
    }

    #[test]
    fn local_traffic_policies_keep_to_this_nodes_endpoints() {
        let slices = vec![SliceInfo {
            ports: vec![("http".into(), Protocol::Tcp, 8080)],
            endpoints: vec![
                ep("10.42.0.2", true, true, false),
                ep("10.42.1.3", true, true, false),
            ],
        }];
        let svc = |internal_local, external_local| ServiceInfo {
            cluster_ips: vec![ip("10.43.0.5")],
            ports: vec![("http".into(), Protocol::Tcp, 80)],
            node_ports: vec![("http".into(), Protocol::Tcp, 30080)],
            internal_local,
            external_local,
            affinity: None,
        };
        let np = NodePort {
            protocol: Protocol::Tcp,
            port: 30080,
        };
        let mut st = State::default();
        service_state(&svc(false, false), &slices, "n1", &mut st);
        assert_eq!(st.frontends.values().next().unwrap().len(), 2);
        assert_eq!(st.node_ports[&np].len(), 2);
        assert!(st.local_node_ports.is_empty());
        let mut st = State::default();
        service_state(&svc(true, true), &slices, "n1", &mut st);
        assert_eq!(st.frontends.values().next().unwrap()[0].ip, ip("10.42.0.2"));
        assert_eq!(st.frontends.values().next().unwrap().len(), 1);
        assert_eq!(st.node_ports[&np].len(), 1);
        assert!(st.local_node_ports.contains(&np));
        // Local node ports go to the chains that keep the client's address.
        let nodeports = elements(false, &st)
            .into_iter()
            .find(|s| s.set == "nodeports")
            .unwrap();
        assert_eq!(nodeports.elements[0].data, Data::Goto("nlsvc1".into()));
        // On a node with none of its endpoints, a local policy has nothing to send to.
        let mut st = State::default();
        service_state(&svc(true, true), &slices, "n3", &mut st);
        assert!(st.frontends.values().next().unwrap().is_empty());
        assert!(st.node_ports[&np].is_empty());
    }

    fn web() -> ServiceInfo {
        ServiceInfo {
            cluster_ips: vec![ip("10.43.0.5")],
            ports: vec![
                ("http".into(), Protocol::Tcp, 80),
                ("dns".into(), Protocol::Udp, 53),
            ],
            node_ports: vec![("http".into(), Protocol::Tcp, 30080)],
            internal_local: false,
            external_local: false,
            affinity: None,
        }
    }

    #[test]
    fn ready_endpoints_back_each_port_by_name_and_protocol() {
        let slices = vec![SliceInfo {
            ports: vec![
                ("http".into(), Protocol::Tcp, 8080),
                ("dns".into(), Protocol::Udp, 5353),
            ],
            endpoints: vec![
                ep("10.42.0.2", true, true, false),
                ep("10.42.0.3", false, false, false),
                ep("10.42.0.4", true, true, false),
            ],
        }];
        let mut st = State::default();
        service_state(&web(), &slices, "n1", &mut st);
        let http = &st.frontends[&Frontend {
            ip: ip("10.43.0.5"),
            protocol: Protocol::Tcp,
            port: 80,
        }];
        assert_eq!(
            http,
            &vec![
                Backend {
                    ip: ip("10.42.0.2"),
                    port: 8080
                },
                Backend {
                    ip: ip("10.42.0.4"),
                    port: 8080
                }
            ]
        );
        let dns = &st.frontends[&Frontend {
            ip: ip("10.43.0.5"),
            protocol: Protocol::Udp,
            port: 53,
        }];
        assert_eq!(dns.len(), 2);
        assert_eq!(dns[0].port, 5353);
        // The node port leads where the port of the same name does.
        let np = &st.node_ports[&NodePort {
            protocol: Protocol::Tcp,
            port: 30080,
        }];
        assert_eq!(np, http);
    }

    #[test]
    fn terminating_endpoints_serve_only_when_nothing_is_ready() {
        let slice = |eps| SliceInfo {
            ports: vec![("http".into(), Protocol::Tcp, 8080)],
            endpoints: eps,
        };
        let svc = ServiceInfo {
            cluster_ips: vec![ip("10.43.0.5")],
            ports: vec![("http".into(), Protocol::Tcp, 80)],
            node_ports: vec![],
            internal_local: false,
            external_local: false,
            affinity: None,
        };
        let mut st = State::default();
        service_state(
            &svc,
            &[slice(vec![
                ep("10.42.0.2", false, true, true),
                ep("10.42.0.3", true, true, false),
            ])],
            "n1",
            &mut st,
        );
        assert_eq!(st.frontends.values().next().unwrap().len(), 1);
        let mut st = State::default();
        service_state(
            &svc,
            &[slice(vec![ep("10.42.0.2", false, true, true)])],
            "n1",
            &mut st,
        );
        assert_eq!(st.frontends.values().next().unwrap()[0].ip, ip("10.42.0.2"));
        let mut st = State::default();
        service_state(
            &svc,
            &[slice(vec![ep("10.42.0.2", false, false, true)])],
            "n1",
            &mut st,
        );
        assert!(st.frontends.values().next().unwrap().is_empty());
    }

    #[test]
    fn changes_write_only_what_moved() {
        let f = Frontend {
            ip: ip("10.43.0.5"),
            protocol: Protocol::Tcp,
            port: 80,
        };
        let g = Frontend {
            ip: ip("10.43.0.6"),
            protocol: Protocol::Tcp,
            port: 80,
        };
        let b = |a: &str| Backend {
            ip: ip(a),
            port: 8080,
        };
        let old = State {
            frontends: BTreeMap::from([(f, vec![b("10.42.0.2")]), (g, vec![])]),
            ..Default::default()
        };
        let new = State {
            frontends: BTreeMap::from([(f, vec![b("10.42.0.2"), b("10.42.0.3")]), (g, vec![])]),
            ..Default::default()
        };
        let script = changes("berth-proxy", &old, &new).script("berth-proxy");
        assert_eq!(
            script,
            "delete element ip berth-proxy be1 { 10.43.0.5 . tcp . 80 . 0 }\n\
             add element ip berth-proxy be2 { 10.43.0.5 . tcp . 80 . 0 : 10.42.0.2 . 8080, 10.43.0.5 . tcp . 80 . 1 : 10.42.0.3 . 8080 }\n\
             add element ip berth-proxy hairpin { 10.42.0.3 . 10.42.0.3 }\n"
        );
        // Past DIRECT endpoints a port goes through the verdict map and its count's chain.
        let many: Vec<Backend> = (0..=DIRECT as u8)
            .map(|i| Backend {
                ip: IpAddr::from([10, 42, 0, 10 + i]),
                port: 8080,
            })
            .collect();
        let big = State {
            frontends: BTreeMap::from([(f, many), (g, vec![])]),
            ..Default::default()
        };
        let grown = changes("t", &new, &big);
        assert!(grown.elements_only());
        let script = grown.script("t");
        assert!(
            script.contains(&format!(
                "add element ip t services {{ 10.43.0.5 . tcp . 80 : goto svc{} }}",
                DIRECT + 1
            )),
            "{script}"
        );
        assert!(
            !changes("t", &big, &new)
                .script("t")
                .contains("add element ip t services")
        );
        assert!(changes("berth-proxy", &new, &new).is_empty());
        // A port losing its last endpoint moves to the reject set.
        let empty = State {
            frontends: BTreeMap::from([(f, vec![]), (g, vec![])]),
            ..Default::default()
        };
        let script = changes("berth-proxy", &new, &empty).script("berth-proxy");
        assert!(script.contains("add element ip berth-proxy noendpoints { 10.43.0.5 . tcp . 80 }"));
        assert!(script.contains("delete element ip berth-proxy hairpin { 10.42.0.2 . 10.42.0.2 }"));
        assert_eq!(counts(&new), BTreeSet::from([2]));
        // Node ports change the same way, in their own maps.
        let np = NodePort {
            protocol: Protocol::Tcp,
            port: 30080,
        };
        let with_port = State {
            node_ports: BTreeMap::from([(np, vec![b("10.42.0.2")])]),
            ..new.clone()
        };
        let script = changes("berth-proxy", &new, &with_port).script("berth-proxy");
        assert_eq!(
            script,
            "add element ip berth-proxy nbe1 { tcp . 30080 . 0 : 10.42.0.2 . 8080 }\n\
             add element ip berth-proxy nodeports { tcp . 30080 : goto nsvc1 }\n"
        );
    }

    #[test]
    fn the_combined_state_is_the_union_of_the_services_parts() {
        let slices = vec![SliceInfo {
            ports: vec![("http".into(), Protocol::Tcp, 8080)],
            endpoints: vec![ep("10.42.0.5", true, true, false)],
        }];
        let part = |svc: &ServiceInfo| {
            let mut st = State::default();
            service_state(svc, &slices, "n1", &mut st);
            st
        };
        let a = web();
        let mut b = web();
        b.cluster_ips = vec![ip("10.43.0.6")];
        b.node_ports = vec![("http".into(), Protocol::Tcp, 30081)];
        b.external_local = true;
        b.affinity = Some(60);
        let mut all = State::default();
        service_state(&a, &slices, "n1", &mut all);
        service_state(&b, &slices, "n1", &mut all);
        let mut c = Combined::default();
        c.set("ns/a", Some(part(&a)));
        c.set("ns/b", Some(part(&b)));
        assert_eq!(c.state(), &all);
        // Changing one Service changes only its entries.
        let mut b2 = b.clone();
        b2.affinity = None;
        b2.external_local = false;
        c.set("ns/b", Some(part(&b2)));
        let mut want = State::default();
        service_state(&a, &slices, "n1", &mut want);
        service_state(&b2, &slices, "n1", &mut want);
        assert_eq!(c.state(), &want);
        c.set("ns/b", None);
        assert_eq!(c.state(), &part(&a));
        c.set("ns/a", None);
        assert_eq!(c.state(), &State::default());
    }
}

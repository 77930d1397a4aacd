//! The cluster's DNS records, answered from Services and EndpointSlices per the Kubernetes DNS
//! specification (schema 1.0.1). Pure: the agent feeds it objects, the server asks it names.
//!
//! Names are not materialised: a query name is matched structurally against the zone
//! (`<svc>.<ns>.svc.<zone>`, `<host>.<svc>.<ns>.svc.<zone>`, `_<port>._<proto>.<svc>...`,
//! `<a-b-c-d>.<ns>.pod.<zone>`), so memory grows with Services and endpoints, not with names.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use api::k8s_openapi::api::core::v1::Service;
use api::k8s_openapi::api::discovery::v1::EndpointSlice;
use hickory_proto::rr::rdata::{CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::Protocol;

/// Seconds a cluster answer may be cached (CoreDNS's default for its Kubernetes zone).
pub const TTL: u32 = 5;
/// The schema version `dns-version.<zone>` answers.
const SCHEMA_VERSION: &str = "1.0.1";

/// A port a Service or endpoint has, as its SRV record names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortEntry {
    /// Lowercase; empty for an unnamed port.
    pub name: Box<str>,
    pub protocol: Protocol,
    pub port: u16,
}

/// A ready endpoint of a headless Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointEntry {
    pub ip: IpAddr,
    /// Lowercase; from the pod's `hostname` when its `subdomain` is the Service.
    pub hostname: Option<Box<str>>,
    /// Its slice's ports, shared by the slice's endpoints.
    pub ports: Arc<[PortEntry]>,
}

impl EndpointEntry {
    /// The label this endpoint answers under: its hostname, else its address with dashes.
    pub fn label(&self) -> String {
        self.hostname
            .as_deref()
            .map_or_else(|| dashed(self.ip), str::to_string)
    }
}

fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// What DNS knows of one Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Empty for a headless Service (its endpoints answer instead).
    pub cluster_ips: Vec<IpAddr>,
    /// The target of an `ExternalName` Service.
    pub external_name: Option<Name>,
    pub ports: Vec<PortEntry>,
    /// Ready endpoints, one per address, for headless Services only.
    pub endpoints: Vec<EndpointEntry>,
}

fn port_entry(name: Option<&str>, protocol: Option<&str>, port: Option<i32>) -> Option<PortEntry> {
    Some(PortEntry {
        name: name.unwrap_or("").to_ascii_lowercase().into(),
        protocol: Protocol::from_kubernetes(protocol.unwrap_or("TCP"))?,
        port: u16::try_from(port?).ok()?,
    })
}

impl ServiceEntry {
    /// The records of a Service, given the EndpointSlices labelled with its name.
    pub fn from_objects(svc: &Service, slices: &[&EndpointSlice]) -> Option<ServiceEntry> {
        let mut e = ServiceEntry::from_service(svc)?;
        let eps: Vec<Vec<EndpointEntry>> = slices.iter().map(|s| slice_endpoints(s)).collect();
        e.set_endpoints(eps.iter().map(Vec::as_slice));
        Some(e)
    }

    /// The records a Service has by itself (a headless one's endpoints come from its slices).
    pub fn from_service(svc: &Service) -> Option<ServiceEntry> {
        let spec = svc.spec.as_ref()?;
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| port_entry(p.name.as_deref(), p.protocol.as_deref(), Some(p.port)))
            .collect();
        if spec.type_.as_deref() == Some("ExternalName") {
            let target = spec.external_name.as_deref()?;
            let mut name = Name::from_ascii(target).ok()?;
            name.set_fqdn(true);
            return Some(ServiceEntry {
                external_name: Some(name),
                ports,
                ..Default::default()
            });
        }
        let mut ips: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
        if ips.is_empty()
            && let Some(ip) = spec.cluster_ip.clone()
        {
            ips.push(ip);
        }
        Some(ServiceEntry {
            cluster_ips: ips.iter().filter_map(|i| i.parse().ok()).collect(),
            external_name: None,
            ports,
            endpoints: Vec::new(),
        })
    }

    /// Give a headless Service the ready endpoints of its slices, one per address.
    pub fn set_endpoints<'a>(&mut self, slices: impl Iterator<Item = &'a [EndpointEntry]>) {
        self.endpoints.clear();
        if !self.headless() {
            return;
        }
        for e in slices.flatten() {
            if !self.endpoints.iter().any(|x| x.ip == e.ip) {
                self.endpoints.push(e.clone());
            }
        }
        self.endpoints.sort_by_key(|e| e.ip);
    }

    fn headless(&self) -> bool {
        self.cluster_ips.is_empty() && self.external_name.is_none()
    }
}

/// The ready endpoints of an EndpointSlice, as DNS names them.
pub fn slice_endpoints(slice: &EndpointSlice) -> Vec<EndpointEntry> {
    let ports: Arc<[PortEntry]> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| port_entry(p.name.as_deref(), p.protocol.as_deref(), p.port))
        .collect();
    let mut out = Vec::new();
    for e in &slice.endpoints {
        // Unset means ready, as Kubernetes reads it.
        if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
            continue;
        }
        for ip in e.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
            out.push(EndpointEntry {
                ip,
                hostname: e.hostname.as_ref().map(|h| h.to_ascii_lowercase().into()),
                ports: ports.clone(),
            });
        }
    }
    out
}

/// The answer to one name and type.
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup {
    Answer {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// The name exists, with no record of this type.
    NoData,
    NxDomain,
    /// The name is an alias (an ExternalName Service): answer with `cname`, then `target`.
    Alias {
        cname: Box<Record>,
        target: Name,
    },
    /// Not a name of the cluster: ask upstream.
    Elsewhere,
}

/// Every Service's records, for one cluster domain.
pub struct Index {
    /// Lowercase, fully qualified (`cluster.local.`).
    zone: Name,
    zone_labels: usize,
    /// `namespace/name` -> records.
    services: HashMap<Arc<str>, Arc<ServiceEntry>>,
    /// Namespace -> how many Services it has (a namespace with none has no name).
    namespaces: HashMap<String, usize>,
    /// Address -> the names pointing at it, for PTR.
    reverse: HashMap<IpAddr, Vec<Pointer>>,
    serial: u32,
}

/// A name an address has: a Service's (`namespace/name`), or one of its endpoints' under it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pointer {
    service: Arc<str>,
    label: Option<Box<str>>,
}

/// A domain that cannot be a cluster zone.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a valid cluster domain")]
pub struct BadDomain(pub String);

impl Index {
    pub fn new(domain: &str) -> Result<Index, BadDomain> {
        let mut zone = Name::from_ascii(domain.trim_end_matches('.'))
            .map_err(|_| BadDomain(domain.into()))?
            .to_lowercase();
        zone.set_fqdn(true);
        if zone.is_root() {
            return Err(BadDomain(domain.into()));
        }
        Ok(Index {
            zone_labels: zone.num_labels() as usize,
            zone,
            services: HashMap::new(),
            namespaces: HashMap::new(),
            reverse: HashMap::new(),
            serial: 1,
        })
    }

    pub fn zone(&self) -> &Name {
        &self.zone
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    fn service_name(&self, ns: &str, name: &str) -> Name {
        Name::from_labels([name.as_bytes(), ns.as_bytes(), b"svc"])
            .and_then(|n| n.append_domain(&self.zone))
            .unwrap_or_else(|_| self.zone.clone())
    }

    /// Put (or with `None`, remove) the records of Service `ns/name`.
    pub fn set(&mut self, ns: &str, name: &str, entry: Option<ServiceEntry>) {
        let key: Arc<str> = Arc::from(format!("{ns}/{name}"));
        if let Some(old) = self.services.remove(&key) {
            for (ip, n) in pointers(&key, &old) {
                if let Some(v) = self.reverse.get_mut(&ip) {
                    v.retain(|x| x != &n);
                    if v.is_empty() {
                        self.reverse.remove(&ip);
                    }
                }
            }
            if let Some(c) = self.namespaces.get_mut(ns) {
                *c -= 1;
                if *c == 0 {
                    self.namespaces.remove(ns);
                }
            }
        }
        if let Some(entry) = entry {
            for (ip, n) in pointers(&key, &entry) {
                self.reverse.entry(ip).or_default().push(n);
            }
            *self.namespaces.entry(ns.to_string()).or_default() += 1;
            self.services.insert(key, Arc::new(entry));
        }
        self.serial = self.serial.wrapping_add(1);
    }

    /// The zone's SOA record, for the authority section of negative answers.
    pub fn soa(&self) -> Record {
        let ns = Name::from_labels([b"ns".as_slice(), b"dns"])
            .and_then(|n| n.append_domain(&self.zone))
            .unwrap_or_else(|_| self.zone.clone());
        let mail = Name::from_labels([b"hostmaster".as_slice()])
            .and_then(|n| n.append_domain(&self.zone))
            .unwrap_or_else(|_| self.zone.clone());
        Record::from_rdata(
            self.zone.clone(),
            TTL,
            RData::SOA(SOA::new(ns, mail, self.serial, 7200, 1800, 86400, TTL)),
        )
    }

    /// Answer `name` (as the client spelled it) for `qtype`.
    pub fn lookup(&self, name: &Name, qtype: RecordType) -> Lookup {
        let lower = name.to_lowercase();
        if !self.zone.zone_of(&lower) {
            if qtype == RecordType::PTR {
                return self.reverse_lookup(name, &lower);
            }
            return Lookup::Elsewhere;
        }
        let labels: Vec<String> = lower
            .iter()
            .take(lower.num_labels() as usize - self.zone_labels)
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        let l: Vec<&str> = labels.iter().map(String::as_str).collect();
        let service = |ns: &str, svc: &str| self.services.get(format!("{ns}/{svc}").as_str());
        match l.as_slice() {
            [] => match qtype {
                RecordType::SOA => answer(vec![self.soa().with_name(name)]),
                _ => Lookup::NoData,
            },
            ["dns-version"] => match qtype {
                RecordType::TXT => answer(vec![Record::from_rdata(
                    name.clone(),
                    TTL,
                    RData::TXT(TXT::new(vec![SCHEMA_VERSION.into()])),
                )]),
                _ => Lookup::NoData,
            },
            ["svc"] | ["pod"] => Lookup::NoData,
            [ns, "svc"] => {
                if self.namespaces.contains_key(*ns) {
                    Lookup::NoData
                } else {
                    Lookup::NxDomain
                }
            }
            [svc, ns, "svc"] => match service(ns, svc) {
                Some(e) => self.service_records(name, e, qtype, ns, svc),
                None => Lookup::NxDomain,
            },
            [first, svc, ns, "svc"] => {
                let Some(e) = service(ns, svc) else {
                    return Lookup::NxDomain;
                };
                if first.starts_with('_') {
                    // `_<proto>.<svc>...`: a name on the way to SRV records.
                    return if e.ports.iter().any(|p| p.protocol.as_str() == &first[1..]) {
                        Lookup::NoData
                    } else {
                        Lookup::NxDomain
                    };
                }
                match e.endpoints.iter().find(|ep| ep.label() == *first) {
                    Some(ep) => addresses(name, std::iter::once(ep.ip), qtype),
                    None => Lookup::NxDomain,
                }
            }
            [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                let Some(e) = service(ns, svc) else {
                    return Lookup::NxDomain;
                };
                self.srv(name, e, ns, svc, Some((&port[1..], &proto[1..])), qtype)
            }
            [pod, _ns, "pod"] => match pod_address(pod) {
                Some(ip) => addresses(name, std::iter::once(ip), qtype),
                None => Lookup::NxDomain,
            },
            _ => Lookup::NxDomain,
        }
    }

    fn service_records(
        &self,
        name: &Name,
        e: &ServiceEntry,
        qtype: RecordType,
        ns: &str,
        svc: &str,
    ) -> Lookup {
        if let Some(target) = &e.external_name {
            let cname = Record::from_rdata(name.clone(), TTL, RData::CNAME(CNAME(target.clone())));
            return match qtype {
                RecordType::CNAME => answer(vec![cname]),
                _ => Lookup::Alias {
                    cname: Box::new(cname),
                    target: target.clone(),
                },
            };
        }
        if qtype == RecordType::SRV {
            return self.srv(name, e, ns, svc, None, qtype);
        }
        if e.headless() {
            if e.endpoints.is_empty() {
                return Lookup::NxDomain;
            }
            return addresses(name, e.endpoints.iter().map(|ep| ep.ip), qtype);
        }
        addresses(name, e.cluster_ips.iter().copied(), qtype)
    }

    /// SRV records for a Service's ports (all of them, or the one named `_<port>._<proto>`).
    fn srv(
        &self,
        name: &Name,
        e: &ServiceEntry,
        ns: &str,
        svc: &str,
        only: Option<(&str, &str)>,
        qtype: RecordType,
    ) -> Lookup {
        let fits = |p: &PortEntry| match only {
            Some((port, proto)) => {
                !p.name.is_empty() && &*p.name == port && p.protocol.as_str() == proto
            }
            None => true,
        };
        let fqdn = self.service_name(ns, svc);
        let mut targets: Vec<(u16, Name, Vec<IpAddr>)> = Vec::new();
        if e.headless() {
            for ep in &e.endpoints {
                let Ok(target) = fqdn.prepend_label(ep.label().as_bytes()) else {
                    continue;
                };
                for p in ep.ports.iter().filter(|p| fits(p)) {
                    targets.push((p.port, target.clone(), vec![ep.ip]));
                }
            }
        } else if e.external_name.is_none() {
            for p in e.ports.iter().filter(|p| fits(p)) {
                targets.push((p.port, fqdn.clone(), e.cluster_ips.clone()));
            }
        }
        if targets.is_empty() {
            return if only.is_some() {
                Lookup::NxDomain
            } else {
                Lookup::NoData
            };
        }
        if qtype != RecordType::SRV {
            return Lookup::NoData;
        }
        let weight = (100 / targets.len()).max(1) as u16;
        let mut answers = Vec::new();
        let mut additionals: Vec<Record> = Vec::new();
        for (port, target, ips) in targets {
            answers.push(Record::from_rdata(
                name.clone(),
                TTL,
                RData::SRV(SRV::new(0, weight, port, target.clone())),
            ));
            for ip in ips {
                let r = Record::from_rdata(target.clone(), TTL, RData::from(ip));
                if !additionals.contains(&r) {
                    additionals.push(r);
                }
            }
        }
        Lookup::Answer {
            answers,
            additionals,
        }
    }

    fn reverse_lookup(&self, name: &Name, lower: &Name) -> Lookup {
        let Ok(net) = lower.parse_arpa_name() else {
            return Lookup::Elsewhere;
        };
        if net.prefix_len() != net.max_prefix_len() {
            return Lookup::Elsewhere;
        }
        match self.reverse.get(&net.addr()) {
            Some(targets) => answer(
                targets
                    .iter()
                    .filter_map(|t| {
                        let (ns, svc) = t.service.split_once('/')?;
                        let mut target = self.service_name(ns, svc);
                        if let Some(l) = &t.label {
                            target = target.prepend_label(l.as_bytes()).ok()?;
                        }
                        Some(Record::from_rdata(
                            name.clone(),
                            TTL,
                            RData::PTR(PTR(target)),
                        ))
                    })
                    .collect(),
            ),
            None => Lookup::Elsewhere,
        }
    }
}

/// The PTR targets a Service gives: its cluster IPs name it, a headless Service's endpoints
/// name themselves under it.
fn pointers(key: &Arc<str>, e: &ServiceEntry) -> Vec<(IpAddr, Pointer)> {
    let mut out: Vec<(IpAddr, Pointer)> = e
        .cluster_ips
        .iter()
        .map(|ip| {
            let p = Pointer {
                service: key.clone(),
                label: None,
            };
            (*ip, p)
        })
        .collect();
    for ep in &e.endpoints {
        let p = Pointer {
            service: key.clone(),
            label: Some(ep.label().into()),
        };
        out.push((ep.ip, p));
    }
    out
}

fn answer(answers: Vec<Record>) -> Lookup {
    Lookup::Answer {
        answers,
        additionals: Vec::new(),
    }
}

/// A and AAAA records of `name` (ANY gets both).
fn addresses(name: &Name, ips: impl Iterator<Item = IpAddr>, qtype: RecordType) -> Lookup {
    let want = |ip: &IpAddr| match qtype {
        RecordType::A => ip.is_ipv4(),
        RecordType::AAAA => ip.is_ipv6(),
        RecordType::ANY => true,
        _ => false,
    };
    let answers: Vec<Record> = ips
        .filter(want)
        .map(|ip| Record::from_rdata(name.clone(), TTL, RData::from(ip)))
        .collect();
    if answers.is_empty() {
        Lookup::NoData
    } else {
        answer(answers)
    }
}

/// The address a pod label spells: `10-42-0-5`, or `fd42--5` for IPv6.
fn pod_address(label: &str) -> Option<IpAddr> {
    if let Ok(ip) = label.replace('-', ".").parse::<std::net::Ipv4Addr>() {
        return Some(IpAddr::V4(ip));
    }
    label
        .replace('-', ":")
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

trait WithName {
    fn with_name(self, name: &Name) -> Self;
}

impl WithName for Record {
    fn with_name(mut self, name: &Name) -> Record {
        self.name = name.clone();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    /// web (ClusterIP, named ports), db (headless, one pod with a hostname, one without, one
    /// not ready), ext (ExternalName), empty (headless, no endpoints) in namespace shop.
    fn index() -> Index {
        let mut ix = Index::new("cluster.local").unwrap();
        let web = svc(
            json!({"metadata": {"name": "web", "namespace": "shop"}, "spec": {
            "clusterIP": "10.43.0.20", "clusterIPs": ["10.43.0.20"],
            "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}}),
        );
        ix.set("shop", "web", ServiceEntry::from_objects(&web, &[]));
        let db = svc(
            json!({"metadata": {"name": "db", "namespace": "shop"}, "spec": {
            "clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}),
        );
        let s = slice(
            json!({"metadata": {"name": "db-x", "namespace": "shop"}, "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.42.0.7"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.42.0.8"], "conditions": {}},
                {"addresses": ["10.42.0.9"], "hostname": "db-2", "conditions": {"ready": false}}]}),
        );
        ix.set("shop", "db", ServiceEntry::from_objects(&db, &[&s]));
        let ext = svc(
            json!({"metadata": {"name": "ext", "namespace": "shop"}, "spec": {
            "type": "ExternalName", "externalName": "www.example.com"}}),
        );
        ix.set("shop", "ext", ServiceEntry::from_objects(&ext, &[]));
        let empty = svc(
            json!({"metadata": {"name": "empty", "namespace": "shop"}, "spec": {
            "clusterIP": "None"}}),
        );
        ix.set("shop", "empty", ServiceEntry::from_objects(&empty, &[]));
        ix
    }

    /// The answer as text: `NXDOMAIN`, `NODATA`, `ELSEWHERE`, `ALIAS target`, or the records'
    /// data joined by spaces (additionals after a `+`).
    fn ask(ix: &Index, name: &str, t: RecordType) -> String {
        match ix.lookup(&n(name), t) {
            Lookup::NxDomain => "NXDOMAIN".into(),
            Lookup::NoData => "NODATA".into(),
            Lookup::Elsewhere => "ELSEWHERE".into(),
            Lookup::Alias { target, .. } => format!("ALIAS {target}"),
            Lookup::Answer {
                answers,
                additionals,
            } => {
                let mut s: Vec<String> = answers.iter().map(|r| r.data.to_string()).collect();
                if !additionals.is_empty() {
                    s.push("+".into());
                    s.extend(additionals.iter().map(|r| format!("{}={}", r.name, r.data)));
                }
                s.join(" ")
            }
        }
    }

    #[test]
    fn services_answer_per_the_specification() {
        use RecordType::*;
        let ix = index();
        let cases: &[(&str, RecordType, &str)] = &[
            ("web.shop.svc.cluster.local.", A, "10.43.0.20"),
            ("WEB.Shop.SVC.cluster.LOCAL.", A, "10.43.0.20"),
            ("web.shop.svc.cluster.local.", AAAA, "NODATA"),
            ("web.shop.svc.cluster.local.", MX, "NODATA"),
            ("nope.shop.svc.cluster.local.", A, "NXDOMAIN"),
            ("web.other.svc.cluster.local.", A, "NXDOMAIN"),
            ("shop.svc.cluster.local.", A, "NODATA"),
            ("other.svc.cluster.local.", A, "NXDOMAIN"),
            ("svc.cluster.local.", A, "NODATA"),
            ("cluster.local.", A, "NODATA"),
            ("deep.web.shop.svc.cluster.local.", A, "NXDOMAIN"),
            ("a.b.c.d.e.svc.cluster.local.", A, "NXDOMAIN"),
            // SRV per named port, with the address as additional data.
            (
                "_http._tcp.web.shop.svc.cluster.local.",
                SRV,
                "0 100 80 web.shop.svc.cluster.local. + web.shop.svc.cluster.local.=10.43.0.20",
            ),
            (
                "_dns._udp.web.shop.svc.cluster.local.",
                SRV,
                "0 100 53 web.shop.svc.cluster.local. + web.shop.svc.cluster.local.=10.43.0.20",
            ),
            ("_dns._tcp.web.shop.svc.cluster.local.", SRV, "NXDOMAIN"),
            ("_http._tcp.web.shop.svc.cluster.local.", A, "NODATA"),
            ("_tcp.web.shop.svc.cluster.local.", SRV, "NODATA"),
            ("_sctp.web.shop.svc.cluster.local.", SRV, "NXDOMAIN"),
            // Headless: the ready endpoints, each under its hostname or dashed address.
            ("db.shop.svc.cluster.local.", A, "10.42.0.7 10.42.0.8"),
            ("db-0.db.shop.svc.cluster.local.", A, "10.42.0.7"),
            ("10-42-0-8.db.shop.svc.cluster.local.", A, "10.42.0.8"),
            ("db-2.db.shop.svc.cluster.local.", A, "NXDOMAIN"),
            (
                "_pg._tcp.db.shop.svc.cluster.local.",
                SRV,
                "0 50 5432 db-0.db.shop.svc.cluster.local. 0 50 5432 10-42-0-8.db.shop.svc.cluster.local. + db-0.db.shop.svc.cluster.local.=10.42.0.7 10-42-0-8.db.shop.svc.cluster.local.=10.42.0.8",
            ),
            ("empty.shop.svc.cluster.local.", A, "NXDOMAIN"),
            // ExternalName is an alias; asked for the CNAME itself, it is the answer.
            ("ext.shop.svc.cluster.local.", A, "ALIAS www.example.com."),
            ("ext.shop.svc.cluster.local.", CNAME, "www.example.com."),
            // Pods by address.
            ("10-42-0-99.shop.pod.cluster.local.", A, "10.42.0.99"),
            ("fd42--5.shop.pod.cluster.local.", AAAA, "fd42::5"),
            ("not-an-ip.shop.pod.cluster.local.", A, "NXDOMAIN"),
            ("dns-version.cluster.local.", TXT, "1.0.1"),
            // Reverse: cluster IPs and headless endpoints; other addresses go upstream.
            (
                "20.0.43.10.in-addr.arpa.",
                PTR,
                "web.shop.svc.cluster.local.",
            ),
            (
                "7.0.42.10.in-addr.arpa.",
                PTR,
                "db-0.db.shop.svc.cluster.local.",
            ),
            (
                "8.0.42.10.in-addr.arpa.",
                PTR,
                "10-42-0-8.db.shop.svc.cluster.local.",
            ),
            ("1.2.0.192.in-addr.arpa.", PTR, "ELSEWHERE"),
            ("www.example.com.", A, "ELSEWHERE"),
            ("local.", A, "ELSEWHERE"),
        ];
        for (name, t, want) in cases {
            assert_eq!(&ask(&ix, name, *t), want, "{name} {t}");
        }
        assert!(matches!(
            ix.lookup(&n("cluster.local."), SOA),
            Lookup::Answer { .. }
        ));
    }

    #[test]
    fn changes_replace_a_services_records_and_reverse_names() {
        let mut ix = index();
        let web = svc(
            json!({"metadata": {"name": "web", "namespace": "shop"}, "spec": {
            "clusterIP": "10.43.0.21", "ports": [{"name": "http", "port": 80}]}}),
        );
        ix.set("shop", "web", ServiceEntry::from_objects(&web, &[]));
        assert_eq!(
            ask(&ix, "web.shop.svc.cluster.local.", RecordType::A),
            "10.43.0.21"
        );
        assert_eq!(
            ask(&ix, "20.0.43.10.in-addr.arpa.", RecordType::PTR),
            "ELSEWHERE"
        );
        assert_eq!(
            ask(&ix, "21.0.43.10.in-addr.arpa.", RecordType::PTR),
            "web.shop.svc.cluster.local."
        );
        for s in ["web", "db", "ext", "empty"] {
            ix.set("shop", s, None);
        }
        assert!(ix.is_empty());
        assert_eq!(
            ask(&ix, "shop.svc.cluster.local.", RecordType::A),
            "NXDOMAIN"
        );
        assert_eq!(
            ask(&ix, "7.0.42.10.in-addr.arpa.", RecordType::PTR),
            "ELSEWHERE"
        );
        assert!(ix.reverse.is_empty() && ix.namespaces.is_empty());
    }

    #[test]
    fn another_domain_is_its_own_zone() {
        let ix = Index::new("corp.internal.").unwrap();
        assert_eq!(ix.zone().to_string(), "corp.internal.");
        assert_eq!(
            ask(&ix, "web.shop.svc.cluster.local.", RecordType::A),
            "ELSEWHERE"
        );
        assert!(Index::new("").is_err());
        assert!(Index::new("bad..domain").is_err());
    }
}

//! core/v1 kinds other than pods, and coordination.k8s.io leases.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, Namespace, NamespaceSpec, NamespaceStatus, Node, Secret, Service,
    ServiceAccount, ServiceSpec, ServiceStatus,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Kind, default_if_none, default_str, validate_labels, validate_port};
use crate::cidr::Cidr;
use crate::errors::{FieldErrors, Path};
use crate::names;

/// The label every namespace carries with its own name, so selectors can pick namespaces.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// The finalizer that keeps a namespace until its content is gone.
pub const NAMESPACE_FINALIZER: &str = "kubernetes";
/// ConfigMaps and Secrets hold at most this many bytes of data.
const DATA_MAX_BYTES: usize = 1024 * 1024;
pub const NODE_PORT_RANGE: (i32, i32) = (30000, 32767);
/// A Secret that holds a long-lived token for the service account it names.
pub const SERVICE_ACCOUNT_TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
/// The account a token Secret is for, and that account's uid once the token is in.
pub const SERVICE_ACCOUNT_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
pub const SERVICE_ACCOUNT_UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";

const SERVICE_TYPES: &[&str] = &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];

impl Kind for Namespace {
    fn prepare_create(&mut self) {
        self.status = Some(NamespaceStatus {
            phase: Some("Active".into()),
            conditions: None,
        });
    }

    fn default(&mut self) {
        let spec = self.spec.get_or_insert_with(NamespaceSpec::default);
        default_if_none(&mut spec.finalizers, vec![NAMESPACE_FINALIZER.to_string()]);
        if let Some(name) = self.metadata.name.clone() {
            self.metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(NAMESPACE_NAME_LABEL.to_string(), name);
        }
    }

    fn validate(&self, _old: Option<&Self>, errs: &mut FieldErrors) {
        for (i, f) in self
            .spec
            .iter()
            .flat_map(|s| s.finalizers.iter().flatten())
            .enumerate()
        {
            for e in names::qualified_name(f) {
                errs.invalid(&Path::root("spec").child("finalizers").index(i), f, e);
            }
        }
    }
}

impl Kind for Node {
    /// `podCIDR` and `podCIDRs` say the same thing in two shapes (the API server's conversion
    /// keeps them in step): whichever a client wrote fills the other.
    fn default(&mut self) {
        let Some(spec) = self.spec.as_mut() else {
            return;
        };
        let single = spec.pod_cidr.clone().filter(|c| !c.is_empty());
        match (&single, spec.pod_cidrs.as_deref()) {
            (Some(c), None | Some([])) => spec.pod_cidrs = Some(vec![c.clone()]),
            (None, Some([first, ..])) => spec.pod_cidr = Some(first.clone()),
            _ => {}
        }
    }

    fn validate(&self, old: Option<&Self>, errs: &mut FieldErrors) {
        let path = Path::root("spec");
        let Some(spec) = &self.spec else { return };
        let mut seen = HashSet::new();
        for (i, t) in spec.taints.iter().flatten().enumerate() {
            let p = path.child("taints").index(i);
            for e in names::qualified_name(&t.key) {
                errs.invalid(&p.child("key"), &t.key, e);
            }
            if t.effect.is_empty() {
                errs.required(&p.child("effect"), "");
            } else {
                errs.one_of(
                    &p.child("effect"),
                    &t.effect,
                    &["NoSchedule", "PreferNoSchedule", "NoExecute"],
                );
            }
            if let Some(v) = t.value.as_deref() {
                for e in names::label_value(v) {
                    errs.invalid(&p.child("value"), v, e);
                }
            }
            if !seen.insert((t.key.as_str(), t.effect.as_str())) {
                errs.duplicate(&p, format!("{}:{}", t.key, t.effect));
            }
        }
        let cidrs = spec.pod_cidrs.clone().unwrap_or_default();
        for (i, cidr) in cidrs.iter().enumerate() {
            if cidr.parse::<Cidr>().is_err() {
                errs.invalid(
                    &path.child("podCIDRs").index(i),
                    cidr,
                    "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                );
            }
        }
        let parsed: Vec<Cidr> = cidrs.iter().filter_map(|c| c.parse().ok()).collect();
        if cidrs.len() > 2 || (parsed.len() == 2 && parsed[0].is_ipv6() == parsed[1].is_ipv6()) {
            errs.invalid(
                &path.child("podCIDRs"),
                cidrs.join(","),
                "may specify no more than one CIDR for each IP family",
            );
        }
        let first = cidrs.first().map(String::as_str).unwrap_or("");
        match spec.pod_cidr.as_deref().filter(|c| !c.is_empty()) {
            Some(cidr) if cidr.parse::<Cidr>().is_err() => errs.invalid(
                &path.child("podCIDR"),
                cidr,
                "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            ),
            Some(cidr) if cidr != first => errs.invalid(
                &path.child("podCIDRs"),
                first,
                "first entry must match podCIDR",
            ),
            _ => {}
        }
        // A node's ranges are assigned once: pods hold addresses from them.
        if let Some(old) = old.and_then(|o| o.spec.as_ref()) {
            let was = old.pod_cidrs.clone().unwrap_or_default();
            if !was.is_empty() && was != cidrs {
                errs.forbidden(
                    &path.child("podCIDRs"),
                    "node updates may not change podCIDR except from \"\" to valid",
                );
            }
        }
    }
}

impl Kind for Service {
    fn prepare_create(&mut self) {
        self.status = Some(ServiceStatus {
            load_balancer: Some(Default::default()),
            conditions: None,
        });
    }

    fn default(&mut self) {
        let spec = self.spec.get_or_insert_with(ServiceSpec::default);
        default_str(&mut spec.type_, "ClusterIP");
        let ty = spec.type_.clone().unwrap_or_default();
        if ty == "ExternalName" {
            return;
        }
        default_str(&mut spec.session_affinity, "None");
        for p in spec.ports.iter_mut().flatten() {
            default_str(&mut p.protocol, "TCP");
            let unset = match &p.target_port {
                None => true,
                Some(IntOrString::Int(0)) => true,
                Some(IntOrString::String(s)) => s.is_empty(),
                Some(IntOrString::Int(_)) => false,
            };
            if unset {
                p.target_port = Some(IntOrString::Int(p.port));
            }
        }
        // ipFamilyPolicy and ipFamilies are set with the cluster IP, by the API server's
        // allocator: they are not defaults a client owns.
        default_str(&mut spec.internal_traffic_policy, "Cluster");
        if ty == "NodePort" || ty == "LoadBalancer" {
            default_str(&mut spec.external_traffic_policy, "Cluster");
        }
        if ty == "LoadBalancer" {
            default_if_none(&mut spec.allocate_load_balancer_node_ports, true);
        }
        if let Some(ip) = spec.cluster_ip.clone().filter(|ip| !ip.is_empty())
            && spec.cluster_ips.as_ref().is_none_or(Vec::is_empty)
        {
            spec.cluster_ips = Some(vec![ip]);
        }
    }

    fn validate(&self, old: Option<&Self>, errs: &mut FieldErrors) {
        let path = Path::root("spec");
        let Some(spec) = &self.spec else {
            errs.required(&path, "");
            return;
        };
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        errs.one_of(&path.child("type"), ty, SERVICE_TYPES);
        let headless = spec.cluster_ip.as_deref() == Some("None");
        let ports = spec.ports.as_deref().unwrap_or(&[]);
        if ty == "ExternalName" {
            match spec.external_name.as_deref() {
                None | Some("") => errs.required(&path.child("externalName"), ""),
                Some(n) => {
                    for e in names::dns1123_subdomain(n.trim_end_matches('.')) {
                        errs.invalid(&path.child("externalName"), n, e);
                    }
                }
            }
        } else if ports.is_empty() && !headless {
            errs.required(&path.child("ports"), "");
        }
        let mut port_names = HashSet::new();
        let mut port_protos = HashSet::new();
        for (i, p) in ports.iter().enumerate() {
            let pp = path.child("ports").index(i);
            match p.name.as_deref() {
                Some(n) if !n.is_empty() => {
                    for e in names::dns1123_label(n) {
                        errs.invalid(&pp.child("name"), n, e);
                    }
                    if !port_names.insert(n) {
                        errs.duplicate(&pp.child("name"), n);
                    }
                }
                _ if ports.len() > 1 => errs.required(&pp.child("name"), ""),
                _ => {}
            }
            validate_port(errs, &pp.child("port"), p.port, false);
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            errs.one_of(&pp.child("protocol"), proto, &["TCP", "UDP", "SCTP"]);
            if !port_protos.insert((p.port, proto)) {
                errs.duplicate(&pp, format!("{}/{proto}", p.port));
            }
            match &p.target_port {
                Some(IntOrString::Int(n)) => {
                    validate_port(errs, &pp.child("targetPort"), *n, false)
                }
                Some(IntOrString::String(s)) => {
                    for e in names::iana_svc_name(s) {
                        errs.invalid(&pp.child("targetPort"), s, e);
                    }
                }
                None => {}
            }
            if let Some(np) = p.node_port.filter(|n| *n != 0) {
                if ty != "NodePort" && ty != "LoadBalancer" {
                    errs.forbidden(
                        &pp.child("nodePort"),
                        "may not be used when `type` is 'ClusterIP'",
                    );
                } else if !(NODE_PORT_RANGE.0..=NODE_PORT_RANGE.1).contains(&np) {
                    errs.invalid(
                        &pp.child("nodePort"),
                        np,
                        format!(
                            "provided port is not in the valid range. The range of valid ports is {}-{}",
                            NODE_PORT_RANGE.0, NODE_PORT_RANGE.1
                        ),
                    );
                }
            }
        }
        validate_labels(spec.selector.as_ref(), &path.child("selector"), errs);
        if let Some(sa) = &spec.session_affinity {
            errs.one_of(&path.child("sessionAffinity"), sa, &["ClientIP", "None"]);
        }
        if let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
            && ip.parse::<IpAddr>().is_err()
        {
            errs.invalid(
                &path.child("clusterIP"),
                ip,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            );
        }
        for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
            if ip.parse::<IpAddr>().is_err() {
                errs.invalid(
                    &path.child("externalIPs").index(i),
                    ip,
                    "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                );
            }
        }
        validate_ip_families(spec, old.and_then(|o| o.spec.as_ref()), &path, errs);
        if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
            let old_ip = old_spec.cluster_ip.as_deref().unwrap_or("");
            let new_ip = spec.cluster_ip.as_deref().unwrap_or("");
            let leaving_ip_types = ty == "ExternalName";
            if !old_ip.is_empty() && old_ip != new_ip && !leaving_ip_types {
                errs.invalid(&path.child("clusterIP"), new_ip, "field is immutable");
            }
        }
    }
}

/// The IP family fields as far as they can be checked without the cluster's configuration
/// (the API server's allocator checks the rest: which families the cluster has).
fn validate_ip_families(
    spec: &ServiceSpec,
    old: Option<&ServiceSpec>,
    path: &Path,
    errs: &mut FieldErrors,
) {
    let families = spec.ip_families.as_deref().unwrap_or(&[]);
    let ips = spec.cluster_ips.as_deref().unwrap_or(&[]);
    if spec.type_.as_deref() == Some("ExternalName") {
        // What a change of type to ExternalName carried over is dropped by the allocator;
        // only what the client newly asked for is an error.
        let old = old.filter(|o| o.type_.as_deref() != Some("ExternalName"));
        if spec.ip_family_policy.is_some()
            && spec.ip_family_policy != old.and_then(|o| o.ip_family_policy.clone())
        {
            errs.forbidden(
                &path.child("ipFamilyPolicy"),
                "must not be set for ExternalName services",
            );
        }
        if !families.is_empty() && spec.ip_families != old.and_then(|o| o.ip_families.clone()) {
            errs.forbidden(
                &path.child("ipFamilies"),
                "must not be set for ExternalName services",
            );
        }
        return;
    }
    if let Some(policy) = &spec.ip_family_policy {
        errs.one_of(
            &path.child("ipFamilyPolicy"),
            policy,
            &["SingleStack", "PreferDualStack", "RequireDualStack"],
        );
    }
    if families.len() > 2 {
        errs.too_many(&path.child("ipFamilies"), 2);
    }
    for (i, f) in families.iter().enumerate() {
        errs.one_of(&path.child("ipFamilies").index(i), f, &["IPv4", "IPv6"]);
        if families[..i].contains(f) {
            errs.duplicate(&path.child("ipFamilies").index(i), f);
        }
    }
    if ips.len() > 2 {
        errs.too_many(&path.child("clusterIPs"), 2);
    }
    let ip = spec.cluster_ip.as_deref().unwrap_or("");
    if let Some(first) = ips.first()
        && !ip.is_empty()
        && first != ip
    {
        errs.invalid(
            &path.child("clusterIPs").index(0),
            first,
            "must match `clusterIP` when both are specified",
        );
    }
    let headless = ips.first().map(String::as_str) == Some("None");
    for (i, a) in ips.iter().enumerate() {
        let p = path.child("clusterIPs").index(i);
        if a == "None" {
            if i > 0 {
                errs.invalid(&p, a, "may only be set on the first entry");
            }
            continue;
        }
        if headless {
            errs.invalid(&p, a, "must not be set when clusterIPs[0] is 'None'");
            continue;
        }
        let Ok(addr) = a.parse::<IpAddr>() else {
            errs.invalid(
                &p,
                a,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            );
            continue;
        };
        let family = if addr.is_ipv6() { "IPv6" } else { "IPv4" };
        if let Some(want) = families.get(i)
            && want != family
        {
            errs.invalid(
                &p,
                a,
                format!("expected an {want} value as indicated by `ipFamilies[{i}]`"),
            );
        }
        if i == 1
            && let Ok(first) = ips[0].parse::<IpAddr>()
            && first.is_ipv6() == addr.is_ipv6()
        {
            errs.invalid(
                &p,
                a,
                "must be of a different IP family than clusterIPs[0] (a second cluster IP is for dual-stack)",
            );
        }
    }
    if let Some(old) = old.filter(|o| o.type_.as_deref() != Some("ExternalName")) {
        let (was, now) = (
            old.ip_families.as_deref().and_then(<[String]>::first),
            families.first(),
        );
        if let (Some(was), Some(now)) = (was, now)
            && was != now
        {
            errs.invalid(
                &path.child("ipFamilies").index(0),
                now,
                "may not change the primary IP family of a Service (field is immutable)",
            );
        }
    }
}

impl Kind for Endpoints {
    fn validate(&self, _old: Option<&Self>, errs: &mut FieldErrors) {
        for (i, subset) in self.subsets.iter().flatten().enumerate() {
            let sp = Path::root("subsets").index(i);
            for (field, addrs) in [
                ("addresses", &subset.addresses),
                ("notReadyAddresses", &subset.not_ready_addresses),
            ] {
                for (j, a) in addrs.iter().flatten().enumerate() {
                    if a.ip.parse::<IpAddr>().is_err() {
                        errs.invalid(
                            &sp.child(field).index(j).child("ip"),
                            &a.ip,
                            "must be a valid IP address",
                        );
                    }
                }
            }
            for (j, p) in subset.ports.iter().flatten().enumerate() {
                validate_port(
                    errs,
                    &sp.child("ports").index(j).child("port"),
                    p.port,
                    false,
                );
            }
        }
    }
}

fn validate_data_keys<'a>(
    keys: impl Iterator<Item = &'a String>,
    path: &Path,
    errs: &mut FieldErrors,
) {
    for k in keys {
        for e in names::config_map_key(k) {
            errs.invalid(&path.key(k), k, e);
        }
    }
}

impl Kind for ConfigMap {
    fn validate(&self, old: Option<&Self>, errs: &mut FieldErrors) {
        validate_data_keys(
            self.data.iter().flatten().map(|(k, _)| k),
            &Path::root("data"),
            errs,
        );
        validate_data_keys(
            self.binary_data.iter().flatten().map(|(k, _)| k),
            &Path::root("binaryData"),
            errs,
        );
        let mut size = 0;
        for (k, v) in self.data.iter().flatten() {
            size += v.len();
            if self.binary_data.as_ref().is_some_and(|b| b.contains_key(k)) {
                errs.invalid(
                    &Path::root("data").key(k),
                    k,
                    "duplicate of key present in binaryData",
                );
            }
        }
        size += self
            .binary_data
            .iter()
            .flatten()
            .map(|(_, v)| v.0.len())
            .sum::<usize>();
        if size > DATA_MAX_BYTES {
            errs.too_long(&Path::root(""), DATA_MAX_BYTES);
        }
        if let Some(old) = old
            && old.immutable == Some(true)
        {
            if self.immutable != Some(true) {
                errs.forbidden(
                    &Path::root("immutable"),
                    "field is immutable when `immutable` is set",
                );
            }
            if self.data != old.data || self.binary_data != old.binary_data {
                errs.forbidden(
                    &Path::root("data"),
                    "field is immutable when `immutable` is set",
                );
            }
        }
    }
}

impl Kind for Secret {
    fn default(&mut self) {
        default_str(&mut self.type_, "Opaque");
        // stringData is a write-only convenience: fold it into data.
        if let Some(string_data) = self.string_data.take() {
            let data = self.data.get_or_insert_with(BTreeMap::new);
            for (k, v) in string_data {
                data.insert(k, ByteString(v.into_bytes()));
            }
        }
    }

    fn validate(&self, old: Option<&Self>, errs: &mut FieldErrors) {
        let data = self.data.clone().unwrap_or_default();
        validate_data_keys(data.keys(), &Path::root("data"), errs);
        let size: usize = data.values().map(|v| v.0.len()).sum();
        if size > DATA_MAX_BYTES {
            errs.too_long(&Path::root("data"), DATA_MAX_BYTES);
        }
        let ty = self.type_.as_deref().unwrap_or("Opaque");
        let need = |errs: &mut FieldErrors, key: &str| {
            if !data.contains_key(key) {
                errs.required(&Path::root("data").key(key), "");
            }
        };
        match ty {
            "kubernetes.io/tls" => {
                need(errs, "tls.crt");
                need(errs, "tls.key");
            }
            "kubernetes.io/dockerconfigjson" => need(errs, ".dockerconfigjson"),
            "kubernetes.io/dockercfg" => need(errs, ".dockercfg"),
            "kubernetes.io/ssh-auth" => need(errs, "ssh-privatekey"),
            "kubernetes.io/basic-auth"
                if !data.contains_key("username") && !data.contains_key("password") =>
            {
                errs.required(
                    &Path::root("data").key("username"),
                    "either username or password is required",
                );
            }
            SERVICE_ACCOUNT_TOKEN_TYPE => {
                let has = self
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(SERVICE_ACCOUNT_NAME_ANNOTATION));
                if !has {
                    errs.required(
                        &Path::root("metadata")
                            .child("annotations")
                            .key(SERVICE_ACCOUNT_NAME_ANNOTATION),
                        "",
                    );
                }
            }
            _ => {}
        }
        if let Some(old) = old {
            errs.immutable(&Path::root("type"), &self.type_, &old.type_);
            if old.immutable == Some(true) {
                if self.immutable != Some(true) {
                    errs.forbidden(
                        &Path::root("immutable"),
                        "field is immutable when `immutable` is set",
                    );
                }
                if self.data != old.data {
                    errs.forbidden(
                        &Path::root("data"),
                        "field is immutable when `immutable` is set",
                    );
                }
            }
        }
    }
}

impl Kind for ServiceAccount {}

impl Kind for Event {
    fn validate(&self, _old: Option<&Self>, errs: &mut FieldErrors) {
        let ns = self.metadata.namespace.as_deref().unwrap_or("");
        if let Some(ion) = self
            .involved_object
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            && ion != ns
        {
            errs.invalid(
                &Path::root("involvedObject").child("namespace"),
                ion,
                "does not match event.namespace",
            );
        }
        if let Some(t) = self.type_.as_deref().filter(|t| !t.is_empty()) {
            errs.one_of(&Path::root("type"), t, &["Normal", "Warning"]);
        }
    }
}

impl Kind for Lease {
    fn validate(&self, _old: Option<&Self>, errs: &mut FieldErrors) {
        if let Some(d) = self.spec.as_ref().and_then(|s| s.lease_duration_seconds)
            && d <= 0
        {
            errs.invalid(
                &Path::root("spec").child("leaseDurationSeconds"),
                d,
                "must be greater than 0",
            );
        }
    }
}

//! The built-in Ingress controller's routing, pure: the Ingresses of the class it serves in,
//! a table out that says which Service port serves a request's host and path (Kubernetes'
//! host and path rules), and which certificate Secret answers for a TLS server name; and,
//! from a Service and its EndpointSlices, the endpoints behind one of its ports.
//!
//! `ImplementationSpecific` paths are matched as `Prefix` here, which is what this
//! implementation specifies.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use api::k8s_openapi::api::core::v1::Service;
use api::k8s_openapi::api::networking::v1::{Ingress, IngressBackend};

use crate::Protocol;
use crate::proxy::SliceInfo;

/// A Service port an Ingress sends requests to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub namespace: String,
    pub service: String,
    pub port: PortRef,
}

/// A Service port by number or by name, as an Ingress backend names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PathKind {
    Exact,
    Prefix,
}

/// One path rule, with what orders it among the rules of its host.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Route {
    /// Exact: the path as written; Prefix: without its trailing slashes.
    path: String,
    kind: PathKind,
    /// Which Ingress wins when two give the same path: the older, then by name.
    created: String,
    owner: String,
    target: Target,
}

impl Route {
    fn matches(&self, path: &str) -> bool {
        match self.kind {
            PathKind::Exact => path == self.path,
            PathKind::Prefix => {
                // Whole elements: `/foo` matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar`.
                let p = path.trim_end_matches('/');
                self.path.is_empty()
                    || p == self.path
                    || p.strip_prefix(self.path.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            }
        }
    }

    /// The order rules are tried in: the longest path first, Exact before Prefix on a tie,
    /// then the older Ingress.
    fn order(&self) -> (std::cmp::Reverse<usize>, PathKind, &str, &str) {
        (
            std::cmp::Reverse(self.path.len()),
            self.kind,
            self.created.as_str(),
            self.owner.as_str(),
        )
    }
}

/// Every route of the Ingresses served, by host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    exact: BTreeMap<String, Vec<Route>>,
    /// By the suffix after `*.`.
    wildcard: BTreeMap<String, Vec<Route>>,
    /// Rules without a host.
    any: Vec<Route>,
    default_backend: Option<Target>,
    /// TLS server names (exact, or `*.suffix`) to the Secret with their certificate.
    tls: BTreeMap<String, (String, String)>,
    /// The certificate for names no entry lists (a `tls` entry without hosts).
    default_tls: Option<(String, String)>,
}

/// Which Ingresses a controller serves: those of `class`, and those naming no class when it
/// is the default class.
pub fn serves(ing: &Ingress, class: &str, default_class: bool) -> bool {
    api::kinds::more::ingress_served_by(ing, class, default_class)
}

fn target_of(namespace: &str, b: &IngressBackend) -> Option<Target> {
    let svc = b.service.as_ref()?;
    let port = svc.port.as_ref()?;
    let port = match (&port.name, port.number) {
        (Some(n), _) if !n.is_empty() => PortRef::Name(n.clone()),
        (_, Some(n)) => PortRef::Number(u16::try_from(n).ok()?),
        _ => return None,
    };
    Some(Target {
        namespace: namespace.to_string(),
        service: svc.name.clone(),
        port,
    })
}

/// A Host header or server name as hosts are compared: lower case, without a port or a
/// final dot.
pub fn normalize_host(host: &str) -> String {
    let h = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h)
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

impl Table {
    /// The table of `ingresses` (those this controller serves).
    pub fn build<'a>(ingresses: impl IntoIterator<Item = &'a Ingress>) -> Table {
        let mut t = Table::default();
        let mut default_from: Option<(String, String)> = None;
        for ing in ingresses {
            let Some(spec) = &ing.spec else { continue };
            let namespace = ing.metadata.namespace.clone().unwrap_or_default();
            let name = ing.metadata.name.clone().unwrap_or_default();
            let created = ing
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default();
            let owner = format!("{namespace}/{name}");
            if let Some(target) = spec
                .default_backend
                .as_ref()
                .and_then(|b| target_of(&namespace, b))
            {
                let key = (created.clone(), owner.clone());
                if default_from.as_ref().is_none_or(|d| key < *d) {
                    default_from = Some(key);
                    t.default_backend = Some(target);
                }
            }
            for rule in spec.rules.iter().flatten() {
                let host = rule.host.as_deref().unwrap_or("").to_ascii_lowercase();
                let routes = match host.strip_prefix("*.") {
                    _ if host.is_empty() => &mut t.any,
                    Some(suffix) => t.wildcard.entry(suffix.to_string()).or_default(),
                    None => t.exact.entry(host.clone()).or_default(),
                };
                for p in rule.http.iter().flat_map(|h| h.paths.iter()) {
                    let Some(target) = target_of(&namespace, &p.backend) else {
                        continue;
                    };
                    let path = p.path.clone().unwrap_or_else(|| "/".into());
                    let (kind, path) = match p.path_type.as_str() {
                        "Exact" => (PathKind::Exact, path),
                        _ => (PathKind::Prefix, path.trim_end_matches('/').to_string()),
                    };
                    routes.push(Route {
                        path,
                        kind,
                        created: created.clone(),
                        owner: owner.clone(),
                        target,
                    });
                }
            }
            for tls in spec.tls.iter().flatten() {
                let Some(secret) = tls.secret_name.clone().filter(|s| !s.is_empty()) else {
                    continue;
                };
                let hosts = tls.hosts.clone().unwrap_or_default();
                if hosts.is_empty() {
                    t.default_tls
                        .get_or_insert_with(|| (namespace.clone(), secret.clone()));
                }
                for h in hosts {
                    t.tls
                        .entry(h.to_ascii_lowercase())
                        .or_insert_with(|| (namespace.clone(), secret.clone()));
                }
            }
        }
        for routes in t
            .exact
            .values_mut()
            .chain(t.wildcard.values_mut())
            .chain(std::iter::once(&mut t.any))
        {
            routes.sort_by(|a, b| a.order().cmp(&b.order()));
        }
        t
    }

    /// The Service port for a request to `host` (a Host header) and `path` (without the
    /// query): the rules of the exact host, then of a wildcard covering it, then those without
    /// a host, then the default backend.
    pub fn route(&self, host: &str, path: &str) -> Option<&Target> {
        let host = normalize_host(host);
        let wildcard = host
            .split_once('.')
            .and_then(|(_, suffix)| self.wildcard.get(suffix));
        let groups = [self.exact.get(&host), wildcard, Some(&self.any)];
        groups
            .into_iter()
            .flatten()
            .find_map(|routes| routes.iter().find(|r| r.matches(path)))
            .map(|r| &r.target)
            .or(self.default_backend.as_ref())
    }

    /// The Secret (namespace, name) holding the certificate for TLS server name `sni`.
    pub fn secret_for(&self, sni: &str) -> Option<(&str, &str)> {
        let sni = normalize_host(sni);
        let wildcard = sni
            .split_once('.')
            .and_then(|(_, suffix)| self.tls.get(&format!("*.{suffix}")));
        self.tls
            .get(&sni)
            .or(wildcard)
            .or(self.default_tls.as_ref())
            .map(|(ns, name)| (ns.as_str(), name.as_str()))
    }

    /// Every Secret the table names, for the certificates to load.
    pub fn secrets(&self) -> BTreeSet<(String, String)> {
        self.tls
            .values()
            .chain(self.default_tls.iter())
            .cloned()
            .collect()
    }

    /// Every Service port the table sends requests to.
    pub fn targets(&self) -> BTreeSet<&Target> {
        self.exact
            .values()
            .chain(self.wildcard.values())
            .chain(std::iter::once(&self.any))
            .flatten()
            .map(|r| &r.target)
            .chain(self.default_backend.iter())
            .collect()
    }

    /// Whether any Ingress asks for TLS.
    pub fn has_tls(&self) -> bool {
        !self.tls.is_empty() || self.default_tls.is_some()
    }
}

/// The endpoints behind `port` of `svc` (ready ones, or while none is, those still serving
/// as they terminate), from its EndpointSlices.
pub fn endpoints(svc: &Service, slices: &[SliceInfo], port: &PortRef) -> Vec<SocketAddr> {
    let Some(ports) = svc.spec.as_ref().and_then(|s| s.ports.as_ref()) else {
        return Vec::new();
    };
    let chosen = ports.iter().find(|p| {
        p.protocol.as_deref().unwrap_or("TCP") == "TCP"
            && match port {
                PortRef::Number(n) => p.port == i32::from(*n),
                PortRef::Name(n) => p.name.as_deref() == Some(n.as_str()),
            }
    });
    let Some(chosen) = chosen else {
        return Vec::new();
    };
    let name = chosen.name.clone().unwrap_or_default();
    let mut out = Vec::new();
    for v6 in [false, true] {
        out.extend(
            crate::proxy::backends(slices, &name, Protocol::Tcp, v6, None)
                .into_iter()
                .map(|b| SocketAddr::new(b.ip, b.port)),
        );
    }
    out
}

/// The addresses a node reports for Ingresses it serves (`status.loadBalancer.ingress`).
pub fn status_addresses(node_ips: &[IpAddr]) -> Vec<String> {
    let mut v: Vec<String> = node_ips.iter().map(IpAddr::to_string).collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ingress(ns: &str, name: &str, created: &str, spec: serde_json::Value) -> Ingress {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "creationTimestamp": created},
            "spec": spec,
        }))
        .expect("an ingress")
    }

    fn path(p: &str, kind: &str, svc: &str) -> serde_json::Value {
        json!({"path": p, "pathType": kind,
               "backend": {"service": {"name": svc, "port": {"number": 80}}}})
    }

    fn svc(t: Option<&Target>) -> Option<&str> {
        t.map(|t| t.service.as_str())
    }

    #[test]
    fn paths_match_as_kubernetes_specifies() {
        let ing = ingress(
            "ns",
            "a",
            "2026-01-01T00:00:00Z",
            json!({"rules": [{"http": {"paths": [
                path("/foo", "Prefix", "prefix-foo"),
                path("/foo", "Exact", "exact-foo"),
                path("/aaa/bbb/", "Prefix", "aaa-bbb"),
                path("/", "Prefix", "root"),
                path("/exact/", "Exact", "exact-slash"),
                path("/impl", "ImplementationSpecific", "impl"),
            ]}}]}),
        );
        let t = Table::build([&ing]);
        let cases = [
            ("/foo", "exact-foo"),
            ("/foo/", "prefix-foo"),
            ("/foo/bar", "prefix-foo"),
            ("/foobar", "root"),
            ("/aaa/bbb", "aaa-bbb"),
            ("/aaa/bbb/ccc", "aaa-bbb"),
            ("/aaa/bbbxyz", "root"),
            ("/exact/", "exact-slash"),
            ("/exact", "root"),
            ("/impl/x", "impl"),
            ("/", "root"),
        ];
        for (p, want) in cases {
            assert_eq!(svc(t.route("any.host", p)), Some(want), "{p}");
        }
    }

    #[test]
    fn hosts_exact_then_wildcard_then_any_then_default() {
        let a = ingress(
            "ns",
            "a",
            "2026-01-01T00:00:00Z",
            json!({
            "defaultBackend": {"service": {"name": "fallback", "port": {"number": 80}}},
            "rules": [
                {"host": "foo.example.com", "http": {"paths": [path("/app", "Prefix", "foo-app")]}},
                {"host": "*.example.com", "http": {"paths": [path("/", "Prefix", "wild")]}},
                {"http": {"paths": [path("/shared", "Prefix", "shared")]}},
            ]}),
        );
        let t = Table::build([&a]);
        assert_eq!(svc(t.route("foo.example.com", "/app/x")), Some("foo-app"));
        assert_eq!(
            svc(t.route("FOO.example.com:8080", "/app")),
            Some("foo-app")
        );
        // A path the exact host lacks falls through to the wildcard.
        assert_eq!(svc(t.route("foo.example.com", "/other")), Some("wild"));
        assert_eq!(svc(t.route("bar.example.com", "/x")), Some("wild"));
        // The wildcard covers exactly one label.
        assert_eq!(svc(t.route("a.b.example.com", "/shared")), Some("shared"));
        assert_eq!(svc(t.route("example.com", "/x")), Some("fallback"));
        assert_eq!(svc(t.route("other.org", "/nothing")), Some("fallback"));
    }

    #[test]
    fn the_older_ingress_wins_a_path_both_claim() {
        let old = ingress(
            "ns",
            "old",
            "2026-01-01T00:00:00Z",
            json!({"rules": [
            {"host": "h", "http": {"paths": [path("/", "Prefix", "old-svc")]}}]}),
        );
        let new = ingress(
            "ns",
            "new",
            "2026-02-01T00:00:00Z",
            json!({"rules": [
            {"host": "h", "http": {"paths": [path("/", "Prefix", "new-svc"),
                                             path("/only-new", "Prefix", "new-only")]}}]}),
        );
        let t = Table::build([&new, &old]);
        assert_eq!(svc(t.route("h", "/x")), Some("old-svc"));
        assert_eq!(svc(t.route("h", "/only-new")), Some("new-only"));
        assert_eq!(t.route("elsewhere", "/x"), None);
    }

    #[test]
    fn certificates_by_server_name() {
        let a = ingress(
            "ns",
            "a",
            "2026-01-01T00:00:00Z",
            json!({
            "tls": [{"hosts": ["foo.example.com"], "secretName": "foo-cert"},
                    {"hosts": ["*.apps.example.com"], "secretName": "apps-cert"},
                    {"secretName": "default-cert"}],
            "rules": [{"host": "foo.example.com", "http": {"paths": [path("/", "Prefix", "s")]}}]}),
        );
        let t = Table::build([&a]);
        assert_eq!(t.secret_for("foo.example.com"), Some(("ns", "foo-cert")));
        assert_eq!(
            t.secret_for("x.apps.example.com"),
            Some(("ns", "apps-cert"))
        );
        assert_eq!(t.secret_for("other"), Some(("ns", "default-cert")));
        assert_eq!(t.secrets().len(), 3);
    }

    #[test]
    fn classes_and_the_default() {
        let named = |class: Option<&str>, annotation: Option<&str>| {
            let mut v = json!({"metadata": {"name": "x"}, "spec": {}});
            if let Some(c) = class {
                v["spec"]["ingressClassName"] = json!(c);
            }
            if let Some(a) = annotation {
                v["metadata"]["annotations"] =
                    json!({api::kinds::more::INGRESS_CLASS_ANNOTATION: a});
            }
            serde_json::from_value::<Ingress>(v).expect("an ingress")
        };
        assert!(serves(&named(Some("berth"), None), "berth", false));
        assert!(!serves(&named(Some("nginx"), None), "berth", true));
        assert!(serves(&named(None, Some("berth")), "berth", false));
        assert!(serves(&named(None, None), "berth", true));
        assert!(!serves(&named(None, None), "berth", false));
    }

    #[test]
    fn endpoints_by_service_port_number_or_name() {
        let svc: Service = serde_json::from_value(json!({"spec": {"ports": [
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "admin", "port": 9000, "targetPort": "admin"}]}}))
        .expect("a service");
        let slice = SliceInfo {
            ports: vec![
                ("http".into(), Protocol::Tcp, 8080),
                ("admin".into(), Protocol::Tcp, 9001),
            ],
            endpoints: vec![crate::proxy::EndpointInfo {
                ip: "10.42.0.5".parse().expect("ip"),
                ready: true,
                serving: true,
                terminating: false,
                node: None,
            }],
        };
        let want: SocketAddr = "10.42.0.5:8080".parse().expect("addr");
        assert_eq!(
            endpoints(&svc, std::slice::from_ref(&slice), &PortRef::Number(80)),
            vec![want]
        );
        let admin: SocketAddr = "10.42.0.5:9001".parse().expect("addr");
        assert_eq!(
            endpoints(
                &svc,
                std::slice::from_ref(&slice),
                &PortRef::Name("admin".into())
            ),
            vec![admin]
        );
        assert!(endpoints(&svc, &[slice], &PortRef::Number(81)).is_empty());
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("Foo.Example.com:8443"), "foo.example.com");
        assert_eq!(normalize_host("foo.example.com."), "foo.example.com");
        assert_eq!(normalize_host("[::1]:80"), "::1");
    }
}

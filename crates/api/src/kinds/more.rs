//! Kinds served for clients and tools that expect them, with Kubernetes' defaults and checks:
//! ReplicationControllers (run by their controller) and networking.k8s.io Ingresses and
//! IngressClasses (routed by the ingress work).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ReplicationController;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{HTTPIngressPath, Ingress, IngressBackend, IngressClass};

use super::apps::{default_template, require_restart_always};
use super::{Kind, default_if_none, default_str};
use crate::errors::{FieldErrors, Path};
use crate::names;

impl Kind for ReplicationController {
    fn default(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        default_if_none(&mut spec.replicas, 1);
        // An RC without a selector selects its template's labels; without labels, the
        // template gets the selector's.
        let template_labels = spec
            .template
            .as_ref()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        if spec.selector.as_ref().is_none_or(BTreeMap::is_empty) && !template_labels.is_empty() {
            spec.selector = Some(template_labels.clone());
        }
        if let Some(t) = spec.template.as_mut() {
            if template_labels.is_empty()
                && let Some(sel) = spec.selector.clone()
            {
                t.metadata.get_or_insert_with(Default::default).labels = Some(sel);
            }
            default_template(t);
        }
        if self.metadata.labels.as_ref().is_none_or(BTreeMap::is_empty) {
            self.metadata.labels = Some(template_labels).filter(|l| !l.is_empty());
        }
    }

    fn validate(&self, _old: Option<&Self>, errs: &mut FieldErrors) {
        let path = Path::root("spec");
        let Some(spec) = &self.spec else {
            errs.required(&path, "");
            return;
        };
        errs.non_negative(&path.child("replicas"), spec.replicas.map(i64::from));
        errs.non_negative(
            &path.child("minReadySeconds"),
            spec.min_ready_seconds.map(i64::from),
        );
        let selector = spec.selector.clone().unwrap_or_default();
        if selector.is_empty() {
            errs.required(&path.child("selector"), "");
        }
        let Some(template) = &spec.template else {
            errs.required(&path.child("template"), "");
            return;
        };
        let labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        if selector.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            errs.invalid(
                &path.child("template").child("metadata").child("labels"),
                &labels,
                "`selector` does not match template `labels`",
            );
        }
        require_restart_always(Some(template), &path.child("template"), errs);
    }
}

/// The annotation that names an Ingress's class the old way.
pub const INGRESS_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// The annotation that makes an IngressClass the cluster's default.
pub const DEFAULT_INGRESS_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// The class an Ingress names: `spec.ingressClassName`, or else the older annotation.
pub fn ingress_class(ing: &Ingress) -> Option<&str> {
    ing.spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
        .or_else(|| {
            ing.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(INGRESS_CLASS_ANNOTATION))
                .map(String::as_str)
        })
}

/// Whether an IngressClass is marked as the cluster's default.
pub fn is_default_ingress_class(c: &IngressClass) -> bool {
    c.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEFAULT_INGRESS_CLASS_ANNOTATION))
        .is_some_and(|v| v == "true")
}

/// Whether a controller of `class` serves an Ingress: one of its class, or one naming no
/// class while `class` is the default.
pub fn ingress_served_by(ing: &Ingress, class: &str, class_is_default: bool) -> bool {
    match ingress_class(ing) {
        Some(c) => c == class,
        None => class_is_default,
    }
}

/// Kubernetes' Ingress backend checks: exactly one of a Service or a resource; a Service by a
/// DNS-1035 name and a port by exactly one of a name or a number.
fn check_backend(b: &IngressBackend, path: &Path, errs: &mut FieldErrors) {
    match (&b.service, &b.resource) {
        (Some(_), Some(_)) => {
            errs.invalid(path, "", "cannot set both resource and service backends")
        }
        (None, None) => errs.invalid(path, "", "resource or service backend is required"),
        (Some(s), None) => {
            let sp = path.child("service");
            if s.name.is_empty() {
                errs.required(&sp.child("name"), "");
            } else {
                for e in crate::names::dns1035_label(&s.name) {
                    errs.invalid(&sp.child("name"), &s.name, e);
                }
            }
            let port = s.port.clone().unwrap_or_default();
            let name = port.name.filter(|n| !n.is_empty());
            let number = port.number.filter(|n| *n != 0);
            match (name, number) {
                (Some(_), Some(_)) => {
                    errs.invalid(path, "", "cannot set both port name & port number")
                }
                (Some(n), None) => {
                    for e in crate::names::iana_svc_name(&n) {
                        errs.invalid(&sp.child("port").child("name"), &n, e);
                    }
                }
                (None, Some(n)) => {
                    super::validate_port(errs, &sp.child("port").child("number"), n, false)
                }
                (None, None) => errs.required(path, "port name or number is required"),
            }
        }
        (None, Some(r)) => {
            let rp = path.child("resource");
            if r.kind.is_empty() {
                errs.required(&rp.child("kind"), "");
            }
            if r.name.is_empty() {
                errs.required(&rp.child("name"), "");
            }
        }
    }
}

/// A host as an Ingress rule or TLS entry may name it: a DNS subdomain, or a wildcard one.
fn check_host(host: &str, path: &Path, errs: &mut FieldErrors) {
    if host.parse::<std::net::IpAddr>().is_ok() {
        errs.invalid(path, host, "must be a DNS name, not an IP address");
    }
    if host.contains('*') {
        let ok = host
            .strip_prefix("*.")
            .is_some_and(|rest| crate::names::dns1123_subdomain(rest).is_empty());
        if !ok {
            errs.invalid(
                path,
                host,
                "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character (e.g. '*.example.com', regex used for validation is '\\*\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
            );
        }
        return;
    }
    for e in crate::names::dns1123_subdomain(host) {
        errs.invalid(path, host, e);
    }
}

/// Kubernetes' checks of one HTTP path of an Ingress rule.
fn check_http_path(p: &HTTPIngressPath, pp: &Path, errs: &mut FieldErrors) {
    let text = p.path.as_deref().unwrap_or("");
    match p.path_type.as_str() {
        "" => errs.required(&pp.child("pathType"), "pathType must be specified"),
        "Exact" | "Prefix" => {
            if !text.starts_with('/') {
                errs.invalid(&pp.child("path"), text, "must be an absolute path");
            }
            for seq in ["//", "/./", "/../", "%2f", "%2F"] {
                if text.contains(seq) {
                    errs.invalid(&pp.child("path"), text, format!("must not contain '{seq}'"));
                }
            }
            for suffix in ["/..", "/."] {
                if text.ends_with(suffix) {
                    errs.invalid(
                        &pp.child("path"),
                        text,
                        format!("cannot end with '{suffix}'"),
                    );
                }
            }
        }
        "ImplementationSpecific" => {
            if !text.is_empty() && !text.starts_with('/') {
                errs.invalid(&pp.child("path"), text, "must be an absolute path");
            }
        }
        other => errs.one_of(
            &pp.child("pathType"),
            other,
            &["Exact", "ImplementationSpecific", "Prefix"],
        ),
    }
    check_backend(&p.backend, &pp.child("backend"), errs);
}

impl Kind for Ingress {
    fn validate(&self, _old: Option<&Self>, errs: &mut FieldErrors) {
        let path = Path::root("spec");
        let Some(spec) = &self.spec else {
            errs.required(&path, "");
            return;
        };
        if let Some(class) = spec.ingress_class_name.as_deref() {
            for e in crate::names::dns1123_subdomain(class) {
                errs.invalid(&path.child("ingressClassName"), class, e);
            }
        }
        if let Some(b) = &spec.default_backend {
            check_backend(b, &path.child("defaultBackend"), errs);
        }
        let rules = spec.rules.as_deref().unwrap_or(&[]);
        if rules.is_empty() && spec.default_backend.is_none() {
            errs.invalid(
                &path,
                "",
                "either `defaultBackend` or `rules` must be specified",
            );
        }
        for (i, t) in spec.tls.iter().flatten().enumerate() {
            let tp = path.child("tls").index(i);
            for (j, h) in t.hosts.iter().flatten().enumerate() {
                check_host(h, &tp.child("hosts").index(j), errs);
            }
            if let Some(name) = t.secret_name.as_deref().filter(|n| !n.is_empty()) {
                for e in crate::names::dns1123_subdomain(name) {
                    errs.invalid(&tp.child("secretName"), name, e);
                }
            }
        }
        for (i, r) in rules.iter().enumerate() {
            let rp = path.child("rules").index(i);
            if let Some(h) = r.host.as_deref().filter(|h| !h.is_empty()) {
                check_host(h, &rp.child("host"), errs);
            }
            let Some(http) = &r.http else { continue };
            if http.paths.is_empty() {
                errs.required(&rp.child("http").child("paths"), "");
            }
            for (j, p) in http.paths.iter().enumerate() {
                check_http_path(p, &rp.child("http").child("paths").index(j), errs);
            }
        }
    }
}

impl Kind for IngressClass {
    fn validate(&self, old: Option<&Self>, errs: &mut FieldErrors) {
        let path = Path::root("spec");
        let controller = self
            .spec
            .as_ref()
            .and_then(|s| s.controller.clone())
            .unwrap_or_default();
        if controller.is_empty() {
            errs.required(&path.child("controller"), "");
        }
        if let Some(old_controller) = old
            .and_then(|o| o.spec.as_ref())
            .and_then(|s| s.controller.clone())
        {
            errs.immutable(&path.child("controller"), &controller, &old_controller);
        }
    }
}

const ADDRESS_TYPES: &[&str] = &["IPv4", "IPv6", "FQDN"];
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];

impl Kind for EndpointSlice {
    fn default(&mut self) {
        for p in self.ports.iter_mut().flatten() {
            default_str(&mut p.protocol, "TCP");
            default_str(&mut p.name, "");
        }
    }

    fn validate(&self, old: Option<&Self>, errs: &mut FieldErrors) {
        let at = Path::root("addressType");
        if self.address_type.is_empty() {
            errs.required(&at, "");
        } else {
            errs.one_of(&at, &self.address_type, ADDRESS_TYPES);
        }
        if let Some(old) = old
            && old.address_type != self.address_type
        {
            errs.invalid(&at, &self.address_type, "field is immutable");
        }
        let ep = Path::root("endpoints");
        if self.endpoints.len() > 1000 {
            errs.too_many(&ep, 1000);
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            let p = ep.index(i);
            let ap = p.child("addresses");
            if e.addresses.is_empty() {
                errs.required(&ap, "must contain at least 1 address");
            } else if e.addresses.len() > 100 {
                errs.too_many(&ap, 100);
            }
            for (j, a) in e.addresses.iter().enumerate() {
                let problem = match self.address_type.as_str() {
                    "IPv4" => a
                        .parse::<std::net::Ipv4Addr>()
                        .is_err()
                        .then_some("must be a valid IPv4 address"),
                    "IPv6" => a
                        .parse::<std::net::Ipv6Addr>()
                        .is_err()
                        .then_some("must be a valid IPv6 address"),
                    _ => (!names::dns1123_subdomain(a).is_empty()).then_some(
                        "must be a valid DNS subdomain (lower case alphanumeric characters, '-' or '.')",
                    ),
                };
                if let Some(msg) = problem {
                    errs.invalid(&ap.index(j), a, msg);
                }
            }
            if let Some(h) = e.hostname.as_deref() {
                for m in names::dns1123_label(h) {
                    errs.invalid(&p.child("hostname"), h, m);
                }
            }
        }
        let pp = Path::root("ports");
        let ports = self.ports.as_deref().unwrap_or_default();
        if ports.len() > 100 {
            errs.too_many(&pp, 100);
        }
        let mut seen = std::collections::HashSet::new();
        for (i, port) in ports.iter().enumerate() {
            let p = pp.index(i);
            let name = port.name.as_deref().unwrap_or("");
            if !name.is_empty() {
                for m in names::dns1123_label(name) {
                    errs.invalid(&p.child("name"), name, m);
                }
            }
            if !seen.insert(name) {
                errs.duplicate(&p.child("name"), name);
            }
            if let Some(n) = port.port {
                super::validate_port(errs, &p.child("port"), n, true);
            }
            if let Some(proto) = port.protocol.as_deref() {
                errs.one_of(&p.child("protocol"), proto, PROTOCOLS);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn errors(spec: serde_json::Value) -> Vec<String> {
        let ing: Ingress =
            serde_json::from_value(json!({"metadata": {"name": "i"}, "spec": spec})).unwrap();
        let mut errs = FieldErrors::default();
        ing.validate(None, &mut errs);
        errs.0.iter().map(|e| e.to_string()).collect()
    }

    fn rule(host: &str, path: serde_json::Value) -> serde_json::Value {
        json!({"rules": [{"host": host, "http": {"paths": [path]}}]})
    }

    fn to_svc(path: &str, kind: &str) -> serde_json::Value {
        json!({"path": path, "pathType": kind,
               "backend": {"service": {"name": "web", "port": {"number": 80}}}})
    }

    #[test]
    fn ingresses_are_checked_as_kubernetes_checks_them() {
        assert!(errors(rule("a.example.com", to_svc("/", "Prefix"))).is_empty());
        assert!(errors(rule("*.example.com", to_svc("/x", "Exact"))).is_empty());
        let p = "spec.rules[0].http.paths[0]";
        for (spec, want) in [
            (
                rule("10.0.0.1", to_svc("/", "Prefix")),
                r#"spec.rules[0].host: Invalid value: "10.0.0.1": must be a DNS name, not an IP address"#.to_string(),
            ),
            (
                rule("a.example.com", to_svc("x", "Prefix")),
                format!(r#"{p}.path: Invalid value: "x": must be an absolute path"#),
            ),
            (
                rule("a.example.com", to_svc("/a//b", "Exact")),
                format!(r#"{p}.path: Invalid value: "/a//b": must not contain '//'"#),
            ),
            (
                rule("a.example.com", to_svc("/a/..", "Prefix")),
                format!(r#"{p}.path: Invalid value: "/a/..": cannot end with '/..'"#),
            ),
            (
                rule("a.example.com", to_svc("/", "Sometimes")),
                format!(
                    r#"{p}.pathType: Unsupported value: "Sometimes": supported values: "Exact", "ImplementationSpecific", "Prefix""#
                ),
            ),
            (
                rule("a.example.com", json!({"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "web", "port": {}}}})),
                format!("{p}.backend: Required value: port name or number is required"),
            ),
            (
                rule("a.example.com", json!({"path": "/", "pathType": "Prefix", "backend": {}})),
                format!(r#"{p}.backend: Invalid value: "": resource or service backend is required"#),
            ),
        ] {
            let got = errors(spec);
            assert!(got.contains(&want), "{want}\n{got:?}");
        }
        let got = errors(rule("*.*.example.com", to_svc("/", "Prefix")));
        assert!(
            got[0].contains("a wildcard DNS-1123 subdomain must start with '*.'"),
            "{got:?}"
        );
        let got = errors(json!({}));
        assert!(
            got[0].contains("either `defaultBackend` or `rules` must be specified"),
            "{got:?}"
        );
    }
}

//! Kinds served for clients and tools that expect them, with Kubernetes' defaults and checks:
//! ReplicationControllers (run by their controller) and networking.k8s.io Ingresses and
//! IngressClasses (routed by the ingress work).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ReplicationController;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};

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

fn check_backend(b: &IngressBackend, path: &Path, errs: &mut FieldErrors) {
    match (&b.service, &b.resource) {
        (Some(_), Some(_)) => {
            errs.invalid(path, "", "cannot set both resource and service backends")
        }
        (None, None) => errs.required(path, "one of `service` or `resource` is required"),
        (Some(s), None) => {
            if s.name.is_empty() {
                errs.required(&path.child("service").child("name"), "");
            }
            match &s.port {
                Some(p)
                    if p.number.is_some() == p.name.as_deref().is_some_and(|n| !n.is_empty()) =>
                {
                    errs.invalid(
                        &path.child("service").child("port"),
                        "",
                        "cannot set both port name & port number",
                    );
                }
                Some(_) => {}
                None => errs.required(&path.child("service").child("port"), ""),
            }
        }
        (None, Some(_)) => {}
    }
}

impl Kind for Ingress {
    fn validate(&self, _old: Option<&Self>, errs: &mut FieldErrors) {
        let path = Path::root("spec");
        let Some(spec) = &self.spec else {
            errs.required(&path, "");
            return;
        };
        if let Some(b) = &spec.default_backend {
            check_backend(b, &path.child("defaultBackend"), errs);
        }
        let rules = spec.rules.as_deref().unwrap_or(&[]);
        if rules.is_empty() && spec.default_backend.is_none() {
            errs.invalid(
                &path.child("rules"),
                "[]",
                "either `defaultBackend` or `rules` must be specified",
            );
        }
        for (i, r) in rules.iter().enumerate() {
            let rp = path.child("rules").index(i);
            if let Some(h) = r.host.as_deref().filter(|h| !h.is_empty()) {
                let bare = h.strip_prefix("*.").unwrap_or(h);
                if !crate::names::dns1123_subdomain(bare).is_empty() {
                    errs.invalid(
                        &rp.child("host"),
                        h,
                        "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain",
                    );
                }
            }
            let Some(http) = &r.http else { continue };
            for (j, p) in http.paths.iter().enumerate() {
                let pp = rp.child("http").child("paths").index(j);
                let path_type = p.path_type.as_str();
                errs.one_of(
                    &pp.child("pathType"),
                    path_type,
                    &["Exact", "Prefix", "ImplementationSpecific"],
                );
                let text = p.path.as_deref().unwrap_or("");
                if path_type != "ImplementationSpecific" && !text.starts_with('/') {
                    errs.invalid(&pp.child("path"), text, "must be an absolute path");
                }
                check_backend(&p.backend, &pp.child("backend"), errs);
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

//! NetworkPolicy (networking.k8s.io/v1): Kubernetes' defaults (policy types from the rules
//! given, TCP ports) and checks, with its messages.

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Kind;
use crate::errors::{FieldErrors, Path};

const POLICY_TYPES: &[&str] = &["Ingress", "Egress"];

fn check_selector(s: &LabelSelector, path: &Path, errs: &mut FieldErrors) {
    if let Err(e) = crate::selector::LabelSelectorExpr::from_object(Some(s)) {
        errs.invalid(path, "", e.to_string());
    }
}

fn check_port(p: &NetworkPolicyPort, path: &Path, errs: &mut FieldErrors) {
    if let Some(proto) = &p.protocol {
        errs.one_of(&path.child("protocol"), proto, &["TCP", "UDP", "SCTP"]);
    }
    match &p.port {
        Some(IntOrString::Int(n)) => {
            super::validate_port(errs, &path.child("port"), *n, false);
            if let Some(end) = p.end_port {
                if end < *n {
                    errs.invalid(
                        &path.child("endPort"),
                        n,
                        "must be greater than or equal to `port`",
                    );
                }
                super::validate_port(errs, &path.child("endPort"), end, false);
            }
        }
        Some(IntOrString::String(name)) => {
            if let Some(end) = p.end_port {
                errs.invalid(
                    &path.child("endPort"),
                    end,
                    "may not be specified when `port` is non-numeric",
                );
            }
            for e in crate::names::iana_svc_name(name) {
                errs.invalid(&path.child("port"), name, e);
            }
        }
        None => {
            if let Some(end) = p.end_port {
                errs.invalid(
                    &path.child("endPort"),
                    end,
                    "may not be specified when `port` is not specified",
                );
            }
        }
    }
}

const CIDR_MESSAGE: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";

fn check_ip_block(b: &IPBlock, path: &Path, errs: &mut FieldErrors) {
    if b.cidr.is_empty() {
        errs.required(&path.child("cidr"), "");
        return;
    }
    let Ok(cidr) = b.cidr.parse::<crate::cidr::Cidr>() else {
        errs.invalid(&path.child("cidr"), &b.cidr, CIDR_MESSAGE);
        return;
    };
    for (i, e) in b.except.iter().flatten().enumerate() {
        let ep = path.child("except").index(i);
        let Ok(except) = e.parse::<crate::cidr::Cidr>() else {
            errs.invalid(&ep, e, CIDR_MESSAGE);
            continue;
        };
        if !cidr.contains(except.network()) || cidr.prefix() >= except.prefix() {
            errs.invalid(&ep, e, "must be a strict subset of `cidr`");
        }
    }
}

fn check_peer(peer: &NetworkPolicyPeer, path: &Path, errs: &mut FieldErrors) {
    let mut peers = 0;
    if let Some(s) = &peer.pod_selector {
        peers += 1;
        check_selector(s, &path.child("podSelector"), errs);
    }
    if let Some(s) = &peer.namespace_selector {
        peers += 1;
        check_selector(s, &path.child("namespaceSelector"), errs);
    }
    if let Some(b) = &peer.ip_block {
        peers += 1;
        check_ip_block(b, &path.child("ipBlock"), errs);
    }
    if peers == 0 {
        errs.required(path, "must specify a peer");
    } else if peers > 1 && peer.ip_block.is_some() {
        errs.forbidden(path, "may not specify both ipBlock and another peer");
    }
}

impl Kind for NetworkPolicy {
    fn default(&mut self) {
        let Some(spec) = self.spec.as_mut() else {
            return;
        };
        for p in spec
            .ingress
            .iter_mut()
            .flatten()
            .flat_map(|r| r.ports.iter_mut().flatten())
            .chain(
                spec.egress
                    .iter_mut()
                    .flatten()
                    .flat_map(|r| r.ports.iter_mut().flatten()),
            )
        {
            p.protocol.get_or_insert_with(|| "TCP".into());
        }
        if spec.policy_types.as_ref().is_none_or(Vec::is_empty) {
            // Ingress always; Egress when egress rules are given.
            let mut types = vec!["Ingress".to_string()];
            if spec.egress.is_some() {
                types.push("Egress".into());
            }
            spec.policy_types = Some(types);
        }
    }

    fn validate(&self, _old: Option<&Self>, errs: &mut FieldErrors) {
        let sp = Path::root("spec");
        let Some(spec) = &self.spec else {
            return;
        };
        if let Some(s) = &spec.pod_selector {
            check_selector(s, &sp.child("podSelector"), errs);
        }
        for (i, rule) in spec.ingress.iter().flatten().enumerate() {
            let rp = sp.child("ingress").index(i);
            for (j, p) in rule.ports.iter().flatten().enumerate() {
                check_port(p, &rp.child("ports").index(j), errs);
            }
            for (j, peer) in rule.from.iter().flatten().enumerate() {
                check_peer(peer, &rp.child("from").index(j), errs);
            }
        }
        for (i, rule) in spec.egress.iter().flatten().enumerate() {
            let rp = sp.child("egress").index(i);
            for (j, p) in rule.ports.iter().flatten().enumerate() {
                check_port(p, &rp.child("ports").index(j), errs);
            }
            for (j, peer) in rule.to.iter().flatten().enumerate() {
                check_peer(peer, &rp.child("to").index(j), errs);
            }
        }
        let types = spec.policy_types.as_deref().unwrap_or_default();
        if types.len() > POLICY_TYPES.len() {
            let shown: Vec<String> = types.iter().map(|t| format!("{t:?}")).collect();
            errs.invalid_rendered(
                &sp.child("policyTypes"),
                format!("[{}]", shown.join(",")),
                "may not specify more than two policyTypes",
            );
            return;
        }
        for (i, t) in types.iter().enumerate() {
            errs.one_of(&sp.child("policyTypes").index(i), t, POLICY_TYPES);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn errors(spec: serde_json::Value) -> Vec<String> {
        let mut p: NetworkPolicy =
            serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap();
        p.default();
        let mut errs = FieldErrors::default();
        p.validate(None, &mut errs);
        errs.0.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn the_documentations_policies_are_accepted_and_defaulted() {
        for spec in [
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
            json!({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{
                "from": [{"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
                         {"namespaceSelector": {"matchLabels": {"project": "myproject"}}},
                         {"podSelector": {"matchLabels": {"role": "frontend"}}}],
                "ports": [{"protocol": "TCP", "port": 6379}]}]}),
            json!({"podSelector": {}, "egress": [{"ports": [{"port": 53, "protocol": "UDP"},
                                                             {"port": 32000, "endPort": 32768}]}]}),
        ] {
            assert!(errors(spec.clone()).is_empty(), "{spec}");
        }
        let mut p: NetworkPolicy = serde_json::from_value(json!({"metadata": {"name": "p"},
            "spec": {"podSelector": {}, "egress": [{"ports": [{"port": 53}]}]}}))
        .unwrap();
        p.default();
        let spec = p.spec.unwrap();
        assert_eq!(spec.policy_types.unwrap(), vec!["Ingress", "Egress"]);
        assert_eq!(
            spec.egress.unwrap()[0].ports.as_ref().unwrap()[0]
                .protocol
                .as_deref(),
            Some("TCP")
        );
    }

    #[test]
    fn bad_policies_get_kubernetes_messages() {
        let from =
            |peer: serde_json::Value| json!({"podSelector": {}, "ingress": [{"from": [peer]}]});
        let cases = [
            (
                from(json!({"ipBlock": {"cidr": "10.0.0.0/33"}})),
                r#"spec.ingress[0].from[0].ipBlock.cidr: Invalid value: "10.0.0.0/33": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"#,
            ),
            (
                from(json!({"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}})),
                r#"spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: "10.1.0.0/24": must be a strict subset of `cidr`"#,
            ),
            (
                from(json!({})),
                "spec.ingress[0].from[0]: Required value: must specify a peer",
            ),
            (
                from(json!({"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}})),
                "spec.ingress[0].from[0]: Forbidden: may not specify both ipBlock and another peer",
            ),
            (
                json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80, "endPort": 70}]}]}),
                "spec.ingress[0].ports[0].endPort: Invalid value: 80: must be greater than or equal to `port`",
            ),
            (
                json!({"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 90}]}]}),
                "spec.ingress[0].ports[0].endPort: Invalid value: 90: may not be specified when `port` is non-numeric",
            ),
            (
                json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP", "port": 1}]}]}),
                r#"spec.ingress[0].ports[0].protocol: Unsupported value: "ICMP": supported values: "TCP", "UDP", "SCTP""#,
            ),
            (
                json!({"podSelector": {}, "policyTypes": ["Sideways"]}),
                r#"spec.policyTypes[0]: Unsupported value: "Sideways": supported values: "Ingress", "Egress""#,
            ),
        ];
        for (spec, want) in cases {
            let got = errors(spec);
            assert!(got.iter().any(|g| g == want), "{want}\n{got:?}");
        }
    }
}

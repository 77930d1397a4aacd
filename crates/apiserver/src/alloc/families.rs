//! Which IP families a Service gets. From its `ipFamilyPolicy`, `ipFamilies` and `clusterIPs`
//! and the families the cluster's Service ranges cover, settled as Kubernetes' Service registry
//! does: a policy left out is kept from before (or SingleStack; RequireDualStack for a headless
//! Service without selector), families follow the addresses asked for, a dual-stack policy
//! gains the cluster's other family, and only an explicit SingleStack releases a second one.

use crate::request::strings;
use api::cidr::Cidr;
use api::errors::{FieldErrors, Path};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of_cidr(c: &Cidr) -> Family {
        if c.is_ipv6() { Family::V6 } else { Family::V4 }
    }

    fn of_ip(ip: &str) -> Option<Family> {
        let ip: std::net::IpAddr = ip.parse().ok()?;
        Some(if ip.is_ipv6() { Family::V6 } else { Family::V4 })
    }

    pub fn parse(s: &str) -> Option<Family> {
        match s {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn other(self) -> Family {
        match self {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        }
    }
}

/// The cluster's Service ranges, the primary family's first: one, or one per family.
#[derive(Clone, Copy)]
pub struct Ranges<'a>(&'a [Cidr]);

impl<'a> Ranges<'a> {
    /// `ranges` must be non-empty with at most one range per family (the flag's parser
    /// checks it).
    pub fn new(ranges: &'a [Cidr]) -> Ranges<'a> {
        assert!(!ranges.is_empty(), "a cluster has a Service range");
        Ranges(ranges)
    }

    pub fn primary(&self) -> Family {
        Family::of_cidr(&self.0[0])
    }

    pub fn of(&self, f: Family) -> Option<&'a Cidr> {
        self.0.iter().find(|c| Family::of_cidr(c) == f)
    }

    fn dual(&self) -> bool {
        self.0.len() > 1
    }
}

const SINGLE: &str = "SingleStack";
const PREFER: &str = "PreferDualStack";
const REQUIRE: &str = "RequireDualStack";

fn policy_of(svc: &Value) -> Option<&str> {
    svc["spec"]["ipFamilyPolicy"]
        .as_str()
        .filter(|s| !s.is_empty())
}

fn gets_ip(svc: &Value) -> bool {
    matches!(
        svc["spec"]["type"].as_str().unwrap_or("ClusterIP"),
        "ClusterIP" | "NodePort" | "LoadBalancer"
    )
}

fn selectorless(svc: &Value) -> bool {
    svc["spec"]["selector"]
        .as_object()
        .is_none_or(serde_json::Map::is_empty)
}

fn headless(svc: &Value) -> bool {
    svc["spec"]["clusterIP"].as_str() == Some("None")
}

/// A PreferDualStack Service whose addresses and families did not change stays as it is,
/// even if the cluster gained or lost a family since: it changes only when asked to.
fn unchanged_prefer_dual(old: &Value, new: &Value) -> bool {
    old["spec"]["type"] == new["spec"]["type"]
        && gets_ip(new)
        && policy_of(new) == Some(PREFER)
        && policy_of(old).is_none_or(|p| p == PREFER)
        && strings(&old["spec"]["clusterIPs"]) == strings(&new["spec"]["clusterIPs"])
        && strings(&old["spec"]["ipFamilies"]) == strings(&new["spec"]["ipFamilies"])
}

/// Settle `new`'s IP family fields in place. Afterwards a Service that is not ExternalName has
/// its policy and families set, and its `clusterIPs` hold at most one entry per family, in
/// the families' order (entries still to allocate are missing at the end).
pub fn settle(ranges: Ranges, old: Option<&Value>, new: &mut Value) -> Result<(), FieldErrors> {
    if new["spec"]["type"].as_str() == Some("ExternalName") {
        // Validation refused these if the client set them; what remains came from before.
        if let Some(spec) = new["spec"].as_object_mut() {
            spec.remove("ipFamilyPolicy");
            spec.remove("ipFamilies");
        }
        return Ok(());
    }
    if old.is_some_and(|o| unchanged_prefer_dual(o, new)) {
        return Ok(());
    }
    let spec = Path::root("spec");
    let policy = match policy_of(new) {
        Some(p) => p.to_string(),
        None => match old.and_then(policy_of) {
            Some(p) => p.to_string(),
            None if headless(new) && selectorless(new) => REQUIRE.into(),
            None => SINGLE.into(),
        },
    };
    let mut ips = strings(&new["spec"]["clusterIPs"]);
    let mut families = strings(&new["spec"]["ipFamilies"]);
    let mut errs = FieldErrors::default();
    if let Some(old) = old {
        let (old_ips, old_families) = (
            strings(&old["spec"]["clusterIPs"]),
            strings(&old["spec"]["ipFamilies"]),
        );
        if policy == SINGLE {
            // Asking for SingleStack with everything else as it was: release the second.
            if ips == old_ips && ips.len() > 1 {
                ips.truncate(1);
            }
            if families == old_families && families.len() > 1 {
                families.truncate(1);
            }
        } else {
            if !ips.is_empty() && ips.len() < old_ips.len() {
                errs.invalid(
                    &spec.child("ipFamilyPolicy"),
                    &policy,
                    "must be 'SingleStack' to release the secondary cluster IP",
                );
            }
            if !families.is_empty() && families.len() < old_families.len() {
                errs.invalid(
                    &spec.child("ipFamilyPolicy"),
                    &policy,
                    "must be 'SingleStack' to release the secondary IP family",
                );
            }
        }
    }
    if policy == SINGLE {
        if ips.len() == 2 {
            errs.invalid(
                &spec.child("ipFamilyPolicy"),
                &policy,
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified",
            );
        }
        if families.len() == 2 {
            errs.invalid(
                &spec.child("ipFamilyPolicy"),
                &policy,
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified",
            );
        }
    }
    // The addresses asked for name their families.
    for (i, ip) in ips.iter().enumerate() {
        if ip == "None" || ip.is_empty() {
            break;
        }
        let Some(f) = Family::of_ip(ip) else {
            errs.invalid(
                &spec.child("clusterIPs").index(i),
                ip,
                "must be a valid IP address",
            );
            continue;
        };
        if i >= families.len() {
            if ranges.of(f).is_some() {
                families.push(f.name().to_string());
            } else {
                errs.invalid(
                    &spec.child("clusterIPs").index(i),
                    ip,
                    format!("{} is not configured on this cluster", f.name()),
                );
            }
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let mut parsed: Vec<Family> = families.iter().filter_map(|f| Family::parse(f)).collect();
    if headless(new) && selectorless(new) {
        // Its addresses are whatever its Endpoints say, so any family is allowed.
        if parsed.is_empty() {
            parsed.push(ranges.primary());
        }
        if parsed.len() < 2 && policy != SINGLE {
            parsed.push(parsed[0].other());
        }
    } else {
        if policy == REQUIRE && !ranges.dual() {
            errs.invalid(
                &spec.child("ipFamilyPolicy"),
                &policy,
                "this cluster is not configured for dual-stack services",
            );
        }
        for (i, f) in parsed.iter().enumerate() {
            if ranges.of(*f).is_none() {
                errs.invalid(
                    &spec.child("ipFamilies").index(i),
                    f.name(),
                    "not configured on this cluster",
                );
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        if parsed.is_empty() {
            parsed.push(ranges.primary());
        }
        if policy != SINGLE && parsed.len() == 1 && ranges.dual() {
            parsed.push(parsed[0].other());
        }
    }
    new["spec"]["ipFamilyPolicy"] = json!(policy);
    new["spec"]["ipFamilies"] = json!(parsed.iter().map(|f| f.name()).collect::<Vec<_>>());
    if !ips.is_empty() {
        new["spec"]["clusterIPs"] = json!(ips);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4() -> Vec<Cidr> {
        vec!["10.43.0.0/16".parse().unwrap()]
    }

    fn dual() -> Vec<Cidr> {
        vec![
            "10.43.0.0/16".parse().unwrap(),
            "fd43::/112".parse().unwrap(),
        ]
    }

    fn v6_first() -> Vec<Cidr> {
        vec![
            "fd43::/112".parse().unwrap(),
            "10.43.0.0/16".parse().unwrap(),
        ]
    }

    fn settled(ranges: &[Cidr], old: Option<Value>, spec: Value) -> Result<Value, String> {
        let mut svc = json!({ "spec": spec });
        settle(Ranges::new(ranges), old.as_ref(), &mut svc)
            .map(|()| svc["spec"].clone())
            .map_err(|e| e.to_string())
    }

    fn families(spec: &Value) -> (String, Vec<String>) {
        (
            spec["ipFamilyPolicy"].as_str().unwrap_or("").to_string(),
            strings(&spec["ipFamilies"]),
        )
    }

    #[test]
    fn creates_get_families_from_policy_and_cluster() {
        let sel = json!({"app": "web"});
        // (cluster, spec, expected policy, expected families)
        let cases: Vec<(Vec<Cidr>, Value, &str, Vec<&str>)> = vec![
            (v4(), json!({"selector": sel}), SINGLE, vec!["IPv4"]),
            (dual(), json!({"selector": sel}), SINGLE, vec!["IPv4"]),
            (v6_first(), json!({"selector": sel}), SINGLE, vec!["IPv6"]),
            (
                dual(),
                json!({"selector": sel, "ipFamilyPolicy": PREFER}),
                PREFER,
                vec!["IPv4", "IPv6"],
            ),
            (
                v4(),
                json!({"selector": sel, "ipFamilyPolicy": PREFER}),
                PREFER,
                vec!["IPv4"],
            ),
            (
                dual(),
                json!({"selector": sel, "ipFamilyPolicy": REQUIRE, "ipFamilies": ["IPv6"]}),
                REQUIRE,
                vec!["IPv6", "IPv4"],
            ),
            (
                dual(),
                json!({"selector": sel, "ipFamilies": ["IPv6"]}),
                SINGLE,
                vec!["IPv6"],
            ),
            // Families follow the addresses asked for.
            (
                dual(),
                json!({"selector": sel, "clusterIP": "fd43::5", "clusterIPs": ["fd43::5"]}),
                SINGLE,
                vec!["IPv6"],
            ),
            // Headless without selector: both families, even on a one-family cluster.
            (
                v4(),
                json!({"clusterIP": "None", "clusterIPs": ["None"]}),
                REQUIRE,
                vec!["IPv4", "IPv6"],
            ),
            (
                dual(),
                json!({"clusterIP": "None", "clusterIPs": ["None"], "selector": sel}),
                SINGLE,
                vec!["IPv4"],
            ),
        ];
        for (cluster, spec, policy, fams) in cases {
            let got = settled(&cluster, None, spec.clone()).unwrap();
            assert_eq!(
                families(&got),
                (
                    policy.to_string(),
                    fams.iter().map(|s| s.to_string()).collect()
                ),
                "{spec}"
            );
        }
    }

    #[test]
    fn impossible_requests_name_the_field() {
        let sel = json!({"app": "web"});
        let cases = [
            (
                v4(),
                json!({"selector": sel, "ipFamilyPolicy": REQUIRE}),
                "spec.ipFamilyPolicy",
                "not configured for dual-stack",
            ),
            (
                v4(),
                json!({"selector": sel, "ipFamilies": ["IPv6"]}),
                "spec.ipFamilies[0]",
                "not configured on this cluster",
            ),
            (
                v4(),
                json!({"selector": sel, "clusterIP": "fd43::1", "clusterIPs": ["fd43::1"]}),
                "spec.clusterIPs[0]",
                "IPv6 is not configured",
            ),
            (
                dual(),
                json!({"selector": sel, "ipFamilyPolicy": SINGLE, "ipFamilies": ["IPv4", "IPv6"]}),
                "spec.ipFamilyPolicy",
                "when multiple IP families",
            ),
            (
                dual(),
                json!({"selector": sel, "clusterIPs": ["10.43.0.5", "fd43::5"]}),
                "spec.ipFamilyPolicy",
                "when multiple cluster IPs",
            ),
        ];
        for (cluster, spec, field, why) in cases {
            let err = settled(&cluster, None, spec.clone()).unwrap_err();
            assert!(err.contains(field) && err.contains(why), "{spec}: {err}");
        }
    }

    #[test]
    fn updates_upgrade_and_downgrade_only_when_asked() {
        let sel = json!({"app": "web"});
        let single = json!({"spec": {"selector": sel, "type": "ClusterIP", "ipFamilyPolicy": SINGLE,
            "ipFamilies": ["IPv4"], "clusterIP": "10.43.0.5", "clusterIPs": ["10.43.0.5"]}});
        let both = json!({"spec": {"selector": sel, "type": "ClusterIP", "ipFamilyPolicy": PREFER,
            "ipFamilies": ["IPv4", "IPv6"], "clusterIP": "10.43.0.5", "clusterIPs": ["10.43.0.5", "fd43::5"]}});
        // An update that says nothing keeps the policy and families.
        let mut same = single["spec"].clone();
        same.as_object_mut().unwrap().remove("ipFamilyPolicy");
        same.as_object_mut().unwrap().remove("ipFamilies");
        let got = settled(&dual(), Some(single.clone()), same).unwrap();
        assert_eq!(families(&got), (SINGLE.into(), vec!["IPv4".to_string()]));
        // Upgrade: PreferDualStack gains the other family (its address comes later).
        let mut up = single["spec"].clone();
        up["ipFamilyPolicy"] = json!(PREFER);
        let got = settled(&dual(), Some(single.clone()), up).unwrap();
        assert_eq!(families(&got).1, vec!["IPv4", "IPv6"]);
        assert_eq!(strings(&got["clusterIPs"]), vec!["10.43.0.5"]);
        // Downgrade: SingleStack with the rest unchanged drops the second address.
        let mut down = both["spec"].clone();
        down["ipFamilyPolicy"] = json!(SINGLE);
        let got = settled(&dual(), Some(both.clone()), down).unwrap();
        assert_eq!(families(&got), (SINGLE.into(), vec!["IPv4".to_string()]));
        assert_eq!(strings(&got["clusterIPs"]), vec!["10.43.0.5"]);
        // Dropping the second address without saying SingleStack is refused.
        let mut drop = both["spec"].clone();
        drop["clusterIPs"] = json!(["10.43.0.5"]);
        let err = settled(&dual(), Some(both.clone()), drop).unwrap_err();
        assert!(err.contains("must be 'SingleStack' to release"), "{err}");
        // A PreferDualStack Service on a cluster that lost IPv6 is left alone.
        let got = settled(&v4(), Some(both.clone()), both["spec"].clone()).unwrap();
        assert_eq!(families(&got).1, vec!["IPv4", "IPv6"]);
        // ... and one made on a one-family cluster is not upgraded by an unrelated change.
        let mut lone = single.clone();
        lone["spec"]["ipFamilyPolicy"] = json!(PREFER);
        let got = settled(&dual(), Some(lone.clone()), lone["spec"].clone()).unwrap();
        assert_eq!(families(&got).1, vec!["IPv4"]);
    }

    #[test]
    fn external_name_services_carry_no_families() {
        let old = json!({"spec": {"type": "ClusterIP", "ipFamilyPolicy": SINGLE, "ipFamilies": ["IPv4"]}});
        let got = settled(
            &dual(),
            Some(old),
            json!({"type": "ExternalName", "externalName": "db.example.com",
                "ipFamilyPolicy": SINGLE, "ipFamilies": ["IPv4"]}),
        )
        .unwrap();
        assert!(got.get("ipFamilyPolicy").is_none() && got.get("ipFamilies").is_none());
    }
}

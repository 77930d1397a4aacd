//! Service virtual IPs and node ports. Each allocation is a store key written in the same
//! transaction as the Service, so two Services can never get the same address, and releasing
//! is deleting the key with the Service.

mod families;

use std::collections::HashSet;
use std::net::IpAddr;

use api::kinds::NODE_PORT_RANGE;
use bytes::Bytes;
use serde_json::{Value, json};
use store::{Condition, Op};

use families::Family;
pub use families::Ranges;

use crate::errors::{ApiError, ApiResult};

const IP_PREFIX: &str = "/registry/ranges/serviceips/";
const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

pub fn is_allocation_key(key: &str) -> bool {
    key.starts_with(IP_PREFIX) || key.starts_with(PORT_PREFIX)
}

/// The addresses a Service holds.
#[derive(Debug, Default, PartialEq)]
struct Held {
    ips: Vec<IpAddr>,
    ports: Vec<i64>,
}

fn wants_ip(svc: &Value) -> bool {
    svc["spec"]["type"].as_str() != Some("ExternalName")
        && svc["spec"]["clusterIP"].as_str() != Some("None")
}

fn wants_node_ports(svc: &Value) -> bool {
    matches!(
        svc["spec"]["type"].as_str(),
        Some("NodePort" | "LoadBalancer")
    )
}

/// A Service's cluster IPs (all families), as stored.
pub fn cluster_ips(svc: &Value) -> Vec<IpAddr> {
    let listed: Vec<IpAddr> = svc["spec"]["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str()?.parse().ok())
        .collect();
    if !listed.is_empty() {
        return listed;
    }
    svc["spec"]["clusterIP"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .into_iter()
        .collect()
}

fn held(svc: &Value) -> Held {
    Held {
        ips: if svc["spec"]["type"].as_str() == Some("ExternalName") {
            Vec::new()
        } else {
            cluster_ips(svc)
        },
        ports: svc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["nodePort"].as_i64().filter(|n| *n != 0))
            .collect(),
    }
}

/// Whether `ip` may be handed out from `range`: inside it, and neither its first address
/// (the network's) nor its last (IPv4's broadcast; kept free in both families for symmetry).
fn assignable(range: &api::cidr::Cidr, ip: IpAddr) -> bool {
    range
        .index_of(ip)
        .is_some_and(|i| i != 0 && i != range.size() - 1)
}

fn name_of(owner: &str) -> &str {
    owner.rsplit('/').next().unwrap_or(owner)
}

fn invalid(owner: &str, errs: &api::errors::FieldErrors) -> ApiError {
    let services = api::resources::find("", "v1", "services").expect("services are served");
    ApiError::invalid(services, name_of(owner), errs)
}

fn invalid_field(owner: &str, field: &str, value: &str, why: String) -> ApiError {
    let mut errs = api::errors::FieldErrors::default();
    errs.invalid(&api::errors::Path::root("spec").child(field), value, why);
    invalid(owner, &errs)
}

/// A random assignable address of `range` that `in_use` does not list.
fn pick(range: &api::cidr::Cidr, in_use: &HashSet<IpAddr>) -> Option<IpAddr> {
    let size = range.size();
    if size < 3 {
        return None;
    }
    (0..256)
        .filter_map(|_| range.nth(fastrand::u128(1..size - 1)))
        .find(|ip| !in_use.contains(ip))
}

/// Fill in and claim what `new` needs, release what `old` held and `new` does not.
/// `in_use` lists the addresses other Services hold, so that random picks rarely collide;
/// the store's conditions settle any race.
pub fn plan(
    ranges: Ranges,
    old: Option<&Value>,
    new: Option<&mut Value>,
    owner: &str,
    in_use: &HashSet<IpAddr>,
    ports_in_use: &HashSet<i64>,
) -> ApiResult<Vec<Op>> {
    let before = old.map(held).unwrap_or_default();
    let mut ops = Vec::new();
    let claim = |key: String| Op::Put {
        key,
        value: Bytes::from(owner.to_string()),
        condition: Condition::Absent,
    };
    let release = |key: String| Op::Delete {
        key,
        condition: Condition::Any,
    };
    let Some(new) = new else {
        for ip in before.ips {
            ops.push(release(format!("{IP_PREFIX}{ip}")));
        }
        for p in before.ports {
            ops.push(release(format!("{PORT_PREFIX}{p}")));
        }
        return Ok(ops);
    };
    // An update that leaves allocated fields empty keeps what the Service had.
    if let Some(old) = old {
        if wants_ip(old) && wants_ip(new) {
            if new["spec"]["clusterIP"].as_str().is_none_or(str::is_empty)
                && let Some(ip) = old["spec"]["clusterIP"].as_str()
            {
                new["spec"]["clusterIP"] = json!(ip);
            }
            if new["spec"]["clusterIPs"]
                .as_array()
                .is_none_or(Vec::is_empty)
                && !old["spec"]["clusterIPs"].is_null()
            {
                new["spec"]["clusterIPs"] = old["spec"]["clusterIPs"].clone();
            }
        }
        if wants_node_ports(new) {
            let old_ports = old["spec"]["ports"].as_array().cloned().unwrap_or_default();
            for p in new["spec"]
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if p["nodePort"].as_i64().is_none_or(|n| n == 0)
                    && let Some(np) = old_ports
                        .iter()
                        .find(|o| o["port"] == p["port"])
                        .and_then(|o| o["nodePort"].as_i64())
                {
                    p["nodePort"] = json!(np);
                }
            }
        }
    }
    // IP families are the allocator's too (Kubernetes sets them in its Service registry, so
    // they belong to no field manager).
    families::settle(ranges, old, new).map_err(|errs| invalid(owner, &errs))?;
    // Cluster IPs, one per family.
    let mut after = Held::default();
    if wants_ip(new) {
        let wanted: Vec<Family> = new["spec"]["ipFamilies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| Family::parse(f.as_str()?))
            .collect();
        let requested: Vec<String> = new["spec"]["clusterIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect();
        let mut ips = Vec::with_capacity(wanted.len());
        for (i, family) in wanted.iter().enumerate() {
            let range = ranges
                .of(*family)
                .expect("settled families are the cluster's");
            let ip = match requested.get(i).filter(|s| !s.is_empty()) {
                None => pick(range, in_use).ok_or_else(|| {
                    invalid_field(
                        owner,
                        "clusterIPs",
                        "",
                        format!(
                            "failed to allocate an {} address: range {range} is full",
                            family.name()
                        ),
                    )
                })?,
                Some(text) => {
                    let ip: IpAddr = text.parse().map_err(|_| {
                        invalid_field(
                            owner,
                            "clusterIPs",
                            text,
                            "must be a valid IP address".into(),
                        )
                    })?;
                    if !assignable(range, ip) && !before.ips.contains(&ip) {
                        return Err(invalid_field(
                            owner,
                            "clusterIPs",
                            text,
                            format!(
                                "failed to allocate IP {ip}: provided IP is not in the valid range. The range of valid IPs is {range}"
                            ),
                        ));
                    }
                    ip
                }
            };
            ips.push(ip);
        }
        let texts: Vec<String> = ips.iter().map(ToString::to_string).collect();
        new["spec"]["clusterIP"] = json!(texts[0]);
        new["spec"]["clusterIPs"] = json!(texts);
        after.ips = ips;
    } else if new["spec"]["type"].as_str() == Some("ExternalName") {
        if let Some(spec) = new["spec"].as_object_mut() {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
    } else {
        new["spec"]["clusterIPs"] = json!(["None"]);
    }
    // Node ports.
    if wants_node_ports(new) {
        let mut taken: HashSet<i64> = ports_in_use.clone();
        for p in new["spec"]
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let np = match p["nodePort"].as_i64().filter(|n| *n != 0) {
                Some(n) => n,
                None => {
                    let (lo, hi) = (i64::from(NODE_PORT_RANGE.0), i64::from(NODE_PORT_RANGE.1));
                    let mut picked = None;
                    for _ in 0..256 {
                        let c = fastrand::i64(lo..=hi);
                        if !taken.contains(&c) {
                            picked = Some(c);
                            break;
                        }
                    }
                    let c = picked.ok_or_else(|| {
                        invalid_field(
                            owner,
                            "ports",
                            "",
                            "failed to allocate a node port: range is full".into(),
                        )
                    })?;
                    p["nodePort"] = json!(c);
                    c
                }
            };
            taken.insert(np);
            after.ports.push(np);
        }
    } else if let Some(ports) = new["spec"].get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            if let Some(m) = p.as_object_mut() {
                m.remove("nodePort");
            }
        }
    }
    for ip in &before.ips {
        if !after.ips.contains(ip) {
            ops.push(release(format!("{IP_PREFIX}{ip}")));
        }
    }
    for ip in &after.ips {
        if !before.ips.contains(ip) {
            ops.push(claim(format!("{IP_PREFIX}{ip}")));
        }
    }
    for p in &before.ports {
        if !after.ports.contains(p) {
            ops.push(release(format!("{PORT_PREFIX}{p}")));
        }
    }
    for p in &after.ports {
        if !before.ports.contains(p) {
            ops.push(claim(format!("{PORT_PREFIX}{p}")));
        }
    }
    Ok(ops)
}

/// What a failed claim was for, to explain the failure.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    Ip(String),
    Port(i64),
}

pub fn taken(key: &str) -> Option<Taken> {
    if let Some(ip) = key.strip_prefix(IP_PREFIX) {
        return Some(Taken::Ip(ip.to_string()));
    }
    key.strip_prefix(PORT_PREFIX)
        .and_then(|p| p.parse().ok())
        .map(Taken::Port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4() -> Vec<api::cidr::Cidr> {
        vec!["10.43.0.0/16".parse().unwrap()]
    }

    fn range() -> Ranges<'static> {
        Ranges::new(Box::leak(v4().into_boxed_slice()))
    }

    #[test]
    fn allocates_and_releases() {
        let mut svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        let ops = plan(
            range(),
            None,
            Some(&mut svc),
            "default/web",
            &HashSet::new(),
            &HashSet::new(),
        )
        .unwrap();
        let ip: IpAddr = svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!(assignable(&v4()[0], ip));
        assert_eq!(svc["spec"]["ipFamilies"], json!(["IPv4"]));
        assert_eq!(svc["spec"]["ipFamilyPolicy"], "SingleStack");
        let np = svc["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
        assert!((30000..=32767).contains(&np));
        assert_eq!(ops.len(), 2);
        // Switching to ClusterIP releases the node port and keeps the IP.
        let mut next = svc.clone();
        next["spec"]["type"] = json!("ClusterIP");
        let ops = plan(
            range(),
            Some(&svc),
            Some(&mut next),
            "default/web",
            &HashSet::new(),
            &HashSet::new(),
        )
        .unwrap();
        assert_eq!(
            ops,
            vec![Op::Delete {
                key: format!("{PORT_PREFIX}{np}"),
                condition: Condition::Any
            }]
        );
        assert!(next["spec"]["ports"][0].get("nodePort").is_none());
        // Deleting releases the IP.
        let ops = plan(
            range(),
            Some(&next),
            None,
            "default/web",
            &HashSet::new(),
            &HashSet::new(),
        )
        .unwrap();
        assert_eq!(
            ops,
            vec![Op::Delete {
                key: format!("{IP_PREFIX}{ip}"),
                condition: Condition::Any
            }]
        );
    }

    #[test]
    fn requested_addresses_are_checked() {
        let mut svc = json!({"spec": {"type": "ClusterIP", "clusterIP": "10.43.0.1", "clusterIPs": ["10.43.0.1"], "ports": [{"port": 443}]}});
        let ops = plan(
            range(),
            None,
            Some(&mut svc),
            "default/kubernetes",
            &HashSet::new(),
            &HashSet::new(),
        )
        .unwrap();
        assert_eq!(ops.len(), 1);
        let mut outside = json!({"spec": {"type": "ClusterIP", "clusterIP": "192.168.1.1", "clusterIPs": ["192.168.1.1"], "ports": [{"port": 443}]}});
        let err = plan(
            range(),
            None,
            Some(&mut outside),
            "x",
            &HashSet::new(),
            &HashSet::new(),
        )
        .unwrap_err();
        assert_eq!(err.code, 422);
        let mut headless =
            json!({"spec": {"type": "ClusterIP", "clusterIP": "None", "clusterIPs": ["None"]}});
        assert!(
            plan(
                range(),
                None,
                Some(&mut headless),
                "x",
                &HashSet::new(),
                &HashSet::new()
            )
            .unwrap()
            .is_empty()
        );
        assert_eq!(headless["spec"]["clusterIPs"], json!(["None"]));
    }

    #[test]
    fn updates_keep_allocations_the_client_left_out() {
        let old = json!({"spec": {"type": "NodePort", "clusterIP": "10.43.0.9", "clusterIPs": ["10.43.0.9"], "ports": [{"port": 80, "nodePort": 30080}]}});
        let mut new = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        let ops = plan(
            range(),
            Some(&old),
            Some(&mut new),
            "x",
            &HashSet::new(),
            &HashSet::new(),
        )
        .unwrap();
        assert!(ops.is_empty());
        assert_eq!(new["spec"]["clusterIP"], "10.43.0.9");
        assert_eq!(new["spec"]["ports"][0]["nodePort"], 30080);
    }

    #[test]
    fn dual_stack_services_hold_one_address_per_family() {
        let cidrs: Vec<api::cidr::Cidr> = vec![
            "10.43.0.0/16".parse().unwrap(),
            "fd43::/112".parse().unwrap(),
        ];
        let ranges = Ranges::new(&cidrs);
        let none = HashSet::new();
        let mut svc = json!({"spec": {"type": "ClusterIP", "ipFamilyPolicy": "PreferDualStack",
            "selector": {"app": "web"}, "ports": [{"port": 80}]}});
        let ops = plan(
            ranges,
            None,
            Some(&mut svc),
            "default/web",
            &none,
            &HashSet::new(),
        )
        .unwrap();
        let ips = cluster_ips(&svc);
        assert_eq!(ips.len(), 2, "{svc}");
        assert!(
            assignable(&cidrs[0], ips[0]) && assignable(&cidrs[1], ips[1]),
            "{ips:?}"
        );
        assert_eq!(svc["spec"]["clusterIP"], ips[0].to_string());
        assert_eq!(ops.len(), 2);
        // Downgrading releases the IPv6 address only.
        let mut single = svc.clone();
        single["spec"]["ipFamilyPolicy"] = json!("SingleStack");
        let ops = plan(
            ranges,
            Some(&svc),
            Some(&mut single),
            "default/web",
            &none,
            &HashSet::new(),
        )
        .unwrap();
        assert_eq!(
            ops,
            vec![Op::Delete {
                key: format!("{IP_PREFIX}{}", ips[1]),
                condition: Condition::Any
            }]
        );
        assert_eq!(single["spec"]["clusterIPs"], json!([ips[0].to_string()]));
        assert_eq!(single["spec"]["ipFamilies"], json!(["IPv4"]));
        // A requested IPv6 address outside the range is refused, naming the range.
        let mut outside = json!({"spec": {"type": "ClusterIP", "ipFamilies": ["IPv6"],
            "clusterIP": "fd44::1", "clusterIPs": ["fd44::1"], "ports": [{"port": 80}]}});
        let err = plan(
            ranges,
            None,
            Some(&mut outside),
            "default/x",
            &none,
            &HashSet::new(),
        )
        .unwrap_err();
        assert_eq!(err.code, 422);
        assert!(err.message.contains("fd43::/112"), "{}", err.message);
        // Deleting releases both.
        let ops = plan(
            ranges,
            Some(&svc),
            None,
            "default/web",
            &none,
            &HashSet::new(),
        )
        .unwrap();
        assert_eq!(ops.len(), 2);
    }
}

//! Service virtual IPs and node ports. Each allocation is a store key written in the same
//! transaction as the Service, so two Services can never get the same address, and releasing
//! is deleting the key with the Service.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use api::kinds::NODE_PORT_RANGE;
use bytes::Bytes;
use serde_json::{Value, json};
use store::{Condition, Op};

use crate::errors::{ApiError, ApiResult};

const IP_PREFIX: &str = "/registry/ranges/serviceips/";
const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

pub fn is_allocation_key(key: &str) -> bool {
    key.starts_with(IP_PREFIX) || key.starts_with(PORT_PREFIX)
}

/// The addresses a Service holds.
#[derive(Debug, Default, PartialEq)]
struct Held {
    ip: Option<Ipv4Addr>,
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

fn held(svc: &Value) -> Held {
    Held {
        ip: svc["spec"]["clusterIP"]
            .as_str()
            .and_then(|s| s.parse().ok()),
        ports: svc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["nodePort"].as_i64().filter(|n| *n != 0))
            .collect(),
    }
}

pub struct Range {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Range {
    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        };
        let off = u32::from(ip).wrapping_sub(u32::from(self.base));
        (u32::from(ip) & mask) == u32::from(self.base) && off != 0 && off != self.size() - 1
    }

    fn at(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + offset)
    }
}

fn invalid(field: &str, value: &str, why: String) -> ApiError {
    let mut errs = api::errors::FieldErrors::default();
    errs.invalid(&api::errors::Path::root("spec").child(field), value, why);
    let services = api::resources::find("", "v1", "services").expect("services are served");
    ApiError::invalid(services, "", &errs)
}

/// Fill in and claim what `new` needs, release what `old` held and `new` does not.
/// `in_use` lists the addresses other Services hold, so that random picks rarely collide;
/// the store's conditions settle any race.
pub fn plan(
    range: &Range,
    old: Option<&Value>,
    new: Option<&mut Value>,
    owner: &str,
    in_use: &HashSet<Ipv4Addr>,
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
        if let Some(ip) = before.ip {
            ops.push(release(format!("{IP_PREFIX}{ip}")));
        }
        for p in before.ports {
            ops.push(release(format!("{PORT_PREFIX}{p}")));
        }
        return Ok(ops);
    };
    // An update that leaves allocated fields empty keeps what the Service had.
    if let Some(old) = old {
        if wants_ip(new)
            && new["spec"]["clusterIP"].as_str().is_none_or(str::is_empty)
            && let Some(ip) = before.ip
        {
            new["spec"]["clusterIP"] = json!(ip.to_string());
            new["spec"]["clusterIPs"] = json!([ip.to_string()]);
        }
        if wants_node_ports(new) {
            let old_ports = old["spec"]["ports"].as_array().cloned().unwrap_or_default();
            for p in new["spec"]["ports"].as_array_mut().into_iter().flatten() {
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
    // they belong to no field manager): an update that leaves them out keeps the old ones.
    if new["spec"]["type"].as_str() != Some("ExternalName") {
        for (field, default) in [
            ("ipFamilyPolicy", json!("SingleStack")),
            ("ipFamilies", json!(["IPv4"])),
        ] {
            let unset = match &new["spec"][field] {
                Value::Null => true,
                Value::Array(a) => a.is_empty(),
                Value::String(s) => s.is_empty(),
                _ => false,
            };
            if unset {
                new["spec"][field] = old
                    .map(|o| o["spec"][field].clone())
                    .filter(|v| !v.is_null())
                    .unwrap_or(default);
            }
        }
    }
    // Cluster IP.
    let mut after = Held::default();
    if wants_ip(new) {
        let requested = new["spec"]["clusterIP"].as_str().unwrap_or("").to_string();
        let ip = if requested.is_empty() {
            let size = range.size();
            let mut picked = None;
            for _ in 0..256 {
                let candidate = range.at(fastrand::u32(1..size - 1));
                if !in_use.contains(&candidate) {
                    picked = Some(candidate);
                    break;
                }
            }
            picked.ok_or_else(|| {
                invalid(
                    "clusterIPs",
                    "",
                    "failed to allocate IP: range is full".into(),
                )
            })?
        } else {
            let ip: Ipv4Addr = requested.parse().map_err(|_| {
                invalid(
                    "clusterIP",
                    &requested,
                    "must be a valid IPv4 address".into(),
                )
            })?;
            if !range.contains(ip) && Some(ip) != before.ip {
                return Err(invalid(
                    "clusterIPs",
                    &requested,
                    format!(
                        "failed to allocate IP {ip}: provided IP is not in the valid range. The range of valid IPs is {}/{}",
                        range.base, range.prefix
                    ),
                ));
            }
            ip
        };
        new["spec"]["clusterIP"] = json!(ip.to_string());
        new["spec"]["clusterIPs"] = json!([ip.to_string()]);
        after.ip = Some(ip);
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
        for p in new["spec"]["ports"].as_array_mut().into_iter().flatten() {
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
                        invalid(
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
    } else if let Some(ports) = new["spec"]["ports"].as_array_mut() {
        for p in ports {
            if let Some(m) = p.as_object_mut() {
                m.remove("nodePort");
            }
        }
    }
    if after.ip != before.ip {
        if let Some(ip) = before.ip {
            ops.push(release(format!("{IP_PREFIX}{ip}")));
        }
        if let Some(ip) = after.ip {
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

    fn range() -> Range {
        Range {
            base: Ipv4Addr::new(10, 43, 0, 0),
            prefix: 16,
        }
    }

    #[test]
    fn allocates_and_releases() {
        let mut svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        let ops = plan(
            &range(),
            None,
            Some(&mut svc),
            "default/web",
            &HashSet::new(),
            &HashSet::new(),
        )
        .unwrap();
        let ip: Ipv4Addr = svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!(range().contains(ip));
        let np = svc["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
        assert!((30000..=32767).contains(&np));
        assert_eq!(ops.len(), 2);
        // Switching to ClusterIP releases the node port and keeps the IP.
        let mut next = svc.clone();
        next["spec"]["type"] = json!("ClusterIP");
        let ops = plan(
            &range(),
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
            &range(),
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
        let mut svc = json!({"spec": {"type": "ClusterIP", "clusterIP": "10.43.0.1", "ports": [{"port": 443}]}});
        let ops = plan(
            &range(),
            None,
            Some(&mut svc),
            "default/kubernetes",
            &HashSet::new(),
            &HashSet::new(),
        )
        .unwrap();
        assert_eq!(ops.len(), 1);
        let mut outside = json!({"spec": {"type": "ClusterIP", "clusterIP": "192.168.1.1", "ports": [{"port": 443}]}});
        let err = plan(
            &range(),
            None,
            Some(&mut outside),
            "x",
            &HashSet::new(),
            &HashSet::new(),
        )
        .unwrap_err();
        assert_eq!(err.code, 422);
        let mut headless = json!({"spec": {"type": "ClusterIP", "clusterIP": "None"}});
        assert!(
            plan(
                &range(),
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
        let old = json!({"spec": {"type": "NodePort", "clusterIP": "10.43.0.9", "ports": [{"port": 80, "nodePort": 30080}]}});
        let mut new = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        let ops = plan(
            &range(),
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
}

//! The pod network's nftables rules, written as `nft` scripts (pure) and loaded with
//! `nft -f -` (Debian's `nftables`; the netlink library for nftables is GPL, so berth drives
//! the tool instead of linking it). One table per IP family, `berth`, holds:
//! * masquerade for pod traffic leaving the cluster's ranges;
//! * host ports: two maps from the packet's (destination address,) protocol and port to the
//!   pod's address and port, used by one DNAT rule each in prerouting (traffic arriving) and
//!   output (traffic from the node itself), for destinations that are the node's own
//!   addresses. A pod's ports are map elements, so adding or removing a pod writes only them.

use std::fmt::Write;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Cidr, HostPort, NetError};

pub const TABLE: &str = "berth";

fn family(v6: bool) -> &'static str {
    if v6 { "ip6" } else { "ip" }
}

fn addr_type(v6: bool) -> &'static str {
    if v6 { "ipv6_addr" } else { "ipv4_addr" }
}

/// The whole table of one family, replacing whatever was there, with every pod's host ports.
pub fn table(v6: bool, cluster: &[Cidr], ports: &[(IpAddr, HostPort)]) -> String {
    let fam = family(v6);
    let addr = addr_type(v6);
    let mut s = String::new();
    // `add` then `delete` makes the delete succeed whether or not the table existed; the
    // script is one transaction, so the rules are never missing in between.
    let _ = writeln!(s, "add table {fam} {TABLE}\ndelete table {fam} {TABLE}");
    let _ = writeln!(s, "table {fam} {TABLE} {{");
    let _ = writeln!(
        s,
        "  map hostports {{ type inet_proto . inet_service : {addr} . inet_service; }}"
    );
    let _ = writeln!(
        s,
        "  map hostports_ip {{ type {addr} . inet_proto . inet_service : {addr} . inet_service; }}"
    );
    for (chain, hook, prio) in [
        ("prerouting", "prerouting", "dstnat"),
        ("output", "output", "-100"),
    ] {
        let _ = writeln!(
            s,
            "  chain {chain} {{\n    type nat hook {hook} priority {prio}; policy accept;\n    \
             fib daddr type local meta l4proto {{ tcp, udp, sctp }} dnat {fam} to {fam} daddr . meta l4proto . th dport map @hostports_ip\n    \
             fib daddr type local meta l4proto {{ tcp, udp, sctp }} dnat {fam} to meta l4proto . th dport map @hostports\n  }}"
        );
    }
    let _ = writeln!(
        s,
        "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;"
    );
    for c in cluster.iter().filter(|c| c.is_ipv6() == v6) {
        let _ = writeln!(s, "    {fam} saddr {c} {fam} daddr != {c} masquerade");
    }
    // Host-port traffic the node sent to itself leaves with a loopback source the pod could
    // not answer.
    let lo = if v6 { "::1" } else { "127.0.0.0/8" };
    let _ = writeln!(s, "    ct status dnat {fam} saddr {lo} masquerade");
    let _ = writeln!(s, "  }}\n}}");
    let elements = port_elements(v6, ports);
    if !elements.is_empty() {
        s.push_str(&elements);
    }
    s
}

fn element(pod: IpAddr, p: &HostPort) -> (bool, String) {
    let key = format!("{} . {}", p.protocol.as_str(), p.host_port);
    match p.host_ip {
        Some(h) => (true, format!("{h} . {key} : {pod} . {}", p.container_port)),
        None => (false, format!("{key} : {pod} . {}", p.container_port)),
    }
}

/// `add element` lines for pods' host ports of one family.
pub fn port_elements(v6: bool, ports: &[(IpAddr, HostPort)]) -> String {
    let fam = family(v6);
    let mut s = String::new();
    for (pod, p) in ports.iter().filter(|(ip, _)| ip.is_ipv6() == v6) {
        let (with_ip, e) = element(*pod, p);
        let map = if with_ip { "hostports_ip" } else { "hostports" };
        let _ = writeln!(s, "add element {fam} {TABLE} {map} {{ {e} }}");
    }
    s
}

/// `delete element` lines for pods' host ports of one family.
pub fn delete_port_elements(v6: bool, ports: &[(IpAddr, HostPort)]) -> String {
    let fam = family(v6);
    let mut s = String::new();
    for (pod, p) in ports.iter().filter(|(ip, _)| ip.is_ipv6() == v6) {
        let (with_ip, e) = element(*pod, p);
        let key = e.split(" : ").next().unwrap_or_default();
        let map = if with_ip { "hostports_ip" } else { "hostports" };
        let _ = writeln!(s, "delete element {fam} {TABLE} {map} {{ {key} }}");
    }
    s
}

/// Where `nft` is, if installed.
pub fn find() -> Option<PathBuf> {
    [
        "/usr/sbin/nft",
        "/sbin/nft",
        "/usr/bin/nft",
        "/usr/local/sbin/nft",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// Load a script in one transaction.
pub fn apply(nft: &Path, script: &str) -> Result<(), NetError> {
    let mut child = Command::new(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NetError::io(format!("running {}", nft.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(NetError::io("writing to nft"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(NetError::io("waiting for nft"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Load the Service proxy's `state` into table `t` of each family it uses, made afresh:
/// chains and maps by `nft`, then every element over netlink in one transaction. The caller
/// drops the table this one replaces (`drop_tables`) once it holds.
pub fn load_proxy(
    nft: &Path,
    t: &str,
    state: &crate::proxy::State,
    max_count: usize,
) -> Result<(), NetError> {
    use crate::{nftnl, proxy};
    let v6 = state.frontends.keys().any(|f| f.ip.is_ipv6());
    let mut script = proxy::skeleton(false, t, state, max_count);
    if v6 {
        script.push_str(&proxy::skeleton(true, t, state, max_count));
    }
    apply(nft, &script)?;
    let mut ops = proxy::elements(false, state);
    if v6 {
        ops.extend(proxy::elements(true, state));
    }
    nftnl::write(t, &ops)
}

/// Make the NetworkPolicy table `t` afresh in both families (`policy::skeleton`), then write
/// `ops` (everything the engine holds) into it over netlink. The caller drops the table this
/// one replaces once it holds: until then both filter, so nothing passes that either refuses.
pub fn load_policy(
    nft: &Path,
    t: &str,
    dns: Option<IpAddr>,
    ops: &[crate::nftnl::SetOp],
) -> Result<(), NetError> {
    use crate::policy;
    let mut script = policy::skeleton(false, t, dns);
    script.push_str(&policy::skeleton(true, t, dns));
    apply(nft, &script)?;
    crate::nftnl::write(t, ops)
}

/// Apply `changes` to the live table `t`: over netlink when only elements move, else (client
/// affinity chains come or go) as one `nft` script.
pub fn apply_changes(nft: &Path, t: &str, changes: &crate::proxy::Changes) -> Result<(), NetError> {
    if changes.elements_only() {
        crate::nftnl::write(t, &changes.ops())
    } else {
        apply(nft, &changes.script(t))
    }
}

/// The tables there are, as (family, name).
pub fn tables(nft: &Path) -> Result<Vec<(String, String)>, NetError> {
    let out = Command::new(nft)
        .args(["list", "tables"])
        .output()
        .map_err(NetError::io(format!("running {}", nft.display())))?;
    if !out.status.success() {
        return Err(NetError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("table"), Some(fam), Some(name)) => Some((fam.to_string(), name.to_string())),
                _ => None,
            }
        })
        .collect())
}

/// Delete the given tables, in one transaction.
pub fn drop_tables(nft: &Path, tables: &[(String, String)]) -> Result<(), NetError> {
    if tables.is_empty() {
        return Ok(());
    }
    let script: String = tables
        .iter()
        .map(|(fam, name)| format!("delete table {fam} {name}\n"))
        .collect();
    apply(nft, &script)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Protocol;

    #[test]
    fn table_masquerades_leaving_traffic_and_maps_host_ports() {
        let cluster: Vec<Cidr> = vec!["10.42.0.0/16".parse().unwrap()];
        let pod: IpAddr = "10.42.0.5".parse().unwrap();
        let ports = vec![
            (
                pod,
                HostPort {
                    protocol: Protocol::Tcp,
                    host_port: 8080,
                    container_port: 80,
                    host_ip: None,
                },
            ),
            (
                pod,
                HostPort {
                    protocol: Protocol::Udp,
                    host_port: 53,
                    container_port: 5353,
                    host_ip: Some("192.168.1.2".parse().unwrap()),
                },
            ),
        ];
        let t = table(false, &cluster, &ports);
        assert!(t.contains("ip saddr 10.42.0.0/16 ip daddr != 10.42.0.0/16 masquerade"));
        assert!(t.contains("add element ip berth hostports { tcp . 8080 : 10.42.0.5 . 80 }"));
        assert!(t.contains(
            "add element ip berth hostports_ip { 192.168.1.2 . udp . 53 : 10.42.0.5 . 5353 }"
        ));
        // The other family's table carries none of it.
        let t6 = table(true, &cluster, &ports);
        assert!(!t6.contains("10.42"));
        let d = delete_port_elements(false, &ports);
        assert_eq!(
            d,
            "delete element ip berth hostports { tcp . 8080 }\n\
             delete element ip berth hostports_ip { 192.168.1.2 . udp . 53 }\n"
        );
    }
}

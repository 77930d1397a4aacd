//! Routes to the other nodes' pod ranges. A peer whose address is on a subnet this node is on
//! is reached by a plain route through that address (host-gw); any other peer through a VXLAN
//! device (flannel's layout: VNI 1, UDP 8472, learning off, each remote written as a neighbour
//! entry for its VTEP address, the first of its pod range, and a forwarding entry from the
//! VTEP's hardware address to the node's address). `plan` decides (pure); `NodeRoutes` holds
//! the kernel to the plan, touching only what changed.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};

use crate::Cidr;
use crate::netlink::{Netlink, Via};

pub const VXLAN_DEVICE: &str = "berth.vxlan";
pub const VXLAN_VNI: u32 = 1;
pub const VXLAN_PORT: u16 = 8472;
/// What VXLAN adds to each packet (outer IPv4, UDP, VXLAN and Ethernet headers).
pub const VXLAN_OVERHEAD: u32 = 50;

/// How other nodes' pods are reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Routes where the peer shares a subnet with this node, VXLAN elsewhere.
    Auto,
    /// Routes only (a peer on no shared subnet is unreachable).
    HostGw,
    /// VXLAN for every peer.
    Vxlan,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Auto => "auto",
            Backend::HostGw => "host-gw",
            Backend::Vxlan => "vxlan",
        })
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Backend, String> {
        match s {
            "auto" => Ok(Backend::Auto),
            "host-gw" => Ok(Backend::HostGw),
            "vxlan" => Ok(Backend::Vxlan),
            _ => Err(format!("{s:?}: must be auto, host-gw or vxlan")),
        }
    }
}

/// Another node, as its Node object describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub ip: IpAddr,
    pub pod_cidrs: Vec<Cidr>,
    /// Its VXLAN device's hardware address, if it has published one.
    pub vtep_mac: Option<[u8; 6]>,
}

/// A subnet this node has an address on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OnLink {
    pub link: u32,
    pub net: Cidr,
}

/// How one pod range is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    Gateway {
        via: IpAddr,
        link: u32,
    },
    Vxlan {
        vtep: Ipv4Addr,
        mac: [u8; 6],
        remote: Ipv4Addr,
    },
}

/// The VTEP address of a node: the first address of its IPv4 pod range.
pub fn vtep_of(pod_cidrs: &[Cidr]) -> Option<Ipv4Addr> {
    pod_cidrs
        .iter()
        .find(|c| !c.is_ipv6())
        .and_then(|c| match c.network() {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        })
}

/// Every peer pod range this node should route, and how.
pub fn plan(backend: Backend, on_link: &[OnLink], peers: &[Peer]) -> BTreeMap<Cidr, Hop> {
    let mut out = BTreeMap::new();
    for p in peers {
        let shared = on_link
            .iter()
            .find(|o| o.net.contains(p.ip) && o.net.network() != p.ip);
        for cidr in &p.pod_cidrs {
            let direct = shared
                .filter(|_| backend != Backend::Vxlan && cidr.is_ipv6() == p.ip.is_ipv6())
                .map(|o| Hop::Gateway {
                    via: p.ip,
                    link: o.link,
                });
            let tunnel = || {
                let (IpAddr::V4(remote), Some(mac), false) = (p.ip, p.vtep_mac, cidr.is_ipv6())
                else {
                    return None;
                };
                let vtep = vtep_of(std::slice::from_ref(cidr))?;
                Some(Hop::Vxlan { vtep, mac, remote })
            };
            let hop = match backend {
                Backend::HostGw => direct,
                Backend::Vxlan => tunnel(),
                Backend::Auto => direct.or_else(tunnel),
            };
            if let Some(h) = hop {
                out.insert(*cidr, h);
            }
        }
    }
    out
}

/// Parse a hardware address written `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    parts.try_into().ok()
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The MTU pods should have when their traffic may be tunnelled: that of the link holding
/// `local`, less VXLAN's overhead.
pub fn tunnel_mtu(local: IpAddr) -> io::Result<u32> {
    let mut nl = Netlink::open()?;
    let link = nl
        .all_addresses()?
        .into_iter()
        .find(|(_, ip, _)| *ip == local)
        .map(|(l, _, _)| l)
        .ok_or_else(|| io::Error::other(format!("no link has the address {local}")))?;
    let mtu = nl
        .links()?
        .into_iter()
        .find(|l| l.index == link)
        .and_then(|l| l.mtu)
        .unwrap_or(1500);
    Ok(mtu.saturating_sub(VXLAN_OVERHEAD))
}

/// This node's routes to its peers, kept equal to a plan.
pub struct NodeRoutes {
    nl: Netlink,
    have: BTreeMap<Cidr, Hop>,
    vxlan: Option<u32>,
}

impl NodeRoutes {
    /// Start from nothing: routes a previous run left are forgotten only once a plan no longer
    /// names them (so a restart never opens a gap).
    pub fn new() -> io::Result<NodeRoutes> {
        let mut nl = Netlink::open()?;
        let mut have = BTreeMap::new();
        for c in nl.node_routes()? {
            // Unknown hop: any plan that names the range rewrites it.
            have.insert(
                c,
                Hop::Gateway {
                    via: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    link: 0,
                },
            );
        }
        let vxlan = nl.link(VXLAN_DEVICE)?.map(|l| l.index);
        Ok(NodeRoutes { nl, have, vxlan })
    }

    /// The subnets this node is on (not loopback, not single addresses).
    pub fn on_link(&mut self) -> io::Result<Vec<OnLink>> {
        Ok(self
            .nl
            .all_addresses()?
            .into_iter()
            .filter(|(_, ip, prefix)| {
                !ip.is_loopback() && *prefix < if ip.is_ipv6() { 128 } else { 32 }
            })
            .filter_map(|(link, ip, prefix)| {
                Some(OnLink {
                    link,
                    net: Cidr::new(ip, prefix)?,
                })
            })
            .collect())
    }

    /// Make this node's VXLAN device (sending from `local`, on the link that has it; `vtep`
    /// its address) and return its hardware address, for the Node to publish.
    pub fn ensure_vxlan(&mut self, local: Ipv4Addr, vtep: Ipv4Addr) -> io::Result<[u8; 6]> {
        let (link, mtu) = {
            let addrs = self.nl.all_addresses()?;
            let link = addrs
                .iter()
                .find(|(_, ip, _)| *ip == IpAddr::V4(local))
                .map(|(l, _, _)| *l)
                .ok_or_else(|| io::Error::other(format!("no link has the address {local}")))?;
            let mtu = self
                .nl
                .links()?
                .into_iter()
                .find(|l| l.index == link)
                .and_then(|l| l.mtu)
                .unwrap_or(1500);
            (link, mtu)
        };
        let (index, mac) = self.nl.add_vxlan(
            VXLAN_DEVICE,
            VXLAN_VNI,
            VXLAN_PORT,
            local,
            link,
            mtu.saturating_sub(VXLAN_OVERHEAD),
        )?;
        self.nl.add_address(index, IpAddr::V4(vtep), 32)?;
        crate::netlink::tx_checksum_off(VXLAN_DEVICE)?;
        self.vxlan = Some(index);
        mac.try_into()
            .map_err(|_| io::Error::other("the VXLAN device has no Ethernet address"))
    }

    /// Bring the kernel to `want`: new and changed ranges written, gone ones deleted.
    pub fn apply(&mut self, want: &BTreeMap<Cidr, Hop>) -> io::Result<()> {
        for (cidr, hop) in want {
            if self.have.get(cidr) == Some(hop) {
                continue;
            }
            let via = match *hop {
                Hop::Gateway { via, link } => Via {
                    gateway: via,
                    link,
                    onlink: false,
                },
                Hop::Vxlan { vtep, mac, remote } => {
                    let link = self.vxlan.ok_or_else(|| {
                        io::Error::other("a peer needs VXLAN but this node has no VXLAN device")
                    })?;
                    self.nl.set_neighbour(link, IpAddr::V4(vtep), &mac)?;
                    self.nl.set_fdb(link, &mac, IpAddr::V4(remote))?;
                    Via {
                        gateway: IpAddr::V4(vtep),
                        link,
                        onlink: true,
                    }
                }
            };
            self.nl.add_node_route(*cidr, via)?;
            self.have.insert(*cidr, *hop);
        }
        let gone: Vec<Cidr> = self
            .have
            .keys()
            .filter(|c| !want.contains_key(c))
            .copied()
            .collect();
        for c in gone {
            self.nl.delete_node_route(c)?;
            self.have.remove(&c);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cidr(s: &str) -> Cidr {
        api::cidr::parse_list(s).unwrap()[0]
    }

    fn peer(name: &str, ip: &str, pods: &str, mac: Option<[u8; 6]>) -> Peer {
        Peer {
            name: name.into(),
            ip: ip.parse().unwrap(),
            pod_cidrs: api::cidr::parse_list(pods).unwrap(),
            vtep_mac: mac,
        }
    }

    #[test]
    fn peers_on_a_shared_subnet_get_routes_and_others_the_tunnel() {
        let on_link = [OnLink {
            link: 3,
            net: cidr("10.41.0.0/24"),
        }];
        let mac = [2, 0, 0, 0, 0, 9];
        let peers = [
            peer("b", "10.41.0.2", "10.42.1.0/24,fd42:0:0:1::/64", Some(mac)),
            peer("c", "192.168.7.3", "10.42.2.0/24", Some(mac)),
            peer("d", "192.168.7.4", "10.42.3.0/24", None),
        ];
        let auto = plan(Backend::Auto, &on_link, &peers);
        assert_eq!(
            auto[&cidr("10.42.1.0/24")],
            Hop::Gateway {
                via: "10.41.0.2".parse().unwrap(),
                link: 3
            }
        );
        // An IPv6 range cannot go through an IPv4 gateway.
        assert!(!auto.contains_key(&cidr("fd42:0:0:1::/64")));
        assert_eq!(
            auto[&cidr("10.42.2.0/24")],
            Hop::Vxlan {
                vtep: "10.42.2.0".parse().unwrap(),
                mac,
                remote: "192.168.7.3".parse().unwrap()
            }
        );
        // No VTEP published yet: nothing to route through.
        assert!(!auto.contains_key(&cidr("10.42.3.0/24")));
        let host_gw = plan(Backend::HostGw, &on_link, &peers);
        assert_eq!(host_gw.len(), 1);
        let vxlan = plan(Backend::Vxlan, &on_link, &peers);
        assert!(matches!(vxlan[&cidr("10.42.1.0/24")], Hop::Vxlan { .. }));
        assert_eq!(vxlan.len(), 2);
    }

    #[test]
    fn macs_read_and_write() {
        let m = parse_mac("0a:1b:2c:3d:4e:5f").unwrap();
        assert_eq!(format_mac(&m), "0a:1b:2c:3d:4e:5f");
        assert!(parse_mac("0a:1b").is_none());
        assert!(parse_mac("zz:1b:2c:3d:4e:5f").is_none());
    }
}

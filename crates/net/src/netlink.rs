//! A small, blocking route-netlink client: the handful of link, address and route requests a
//! node's pod network needs. A socket belongs to the network namespace it was opened in, so
//! `Netlink::open_in` opens one inside a pod's namespace from a short-lived thread and the
//! caller uses it from anywhere afterwards.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::path::Path;

use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
    NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

/// A link as the kernel reports it.
#[derive(Clone, Debug)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub up: bool,
    pub controller: Option<u32>,
    pub mtu: Option<u32>,
    /// Its hardware address.
    pub mac: Option<Vec<u8>>,
}

pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.set_ext_ack(true).ok();
        Ok(Netlink { socket, seq: 0 })
    }

    /// A socket in the network namespace pinned at `netns`.
    pub fn open_in(netns: &Path) -> io::Result<Netlink> {
        let ns = std::fs::File::open(netns)?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // Only this short-lived thread changes namespace.
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)?;
                Netlink::open()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("netlink thread panicked")))
        })
    }

    /// Send one request and wait for its acknowledgement.
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.exchange(msg, flags, |_| {})
    }

    /// Send a request and collect every answer until the kernel says it is done (a dump) or
    /// acknowledges it.
    fn exchange(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        mut each: impl FnMut(RouteNetlinkMessage),
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut header = NetlinkHeader::default();
        // Every request but a dump is acknowledged, so the answer always has an end.
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut rx = vec![0u8; 32 * 1024];
        loop {
            let n = self.socket.recv(&mut &mut rx[..], 0)?;
            let mut at = 0;
            while at < n {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[at..n])
                    .map_err(|e| io::Error::other(format!("decoding a netlink reply: {e}")))?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number == self.seq {
                    match reply.payload {
                        NetlinkPayload::Error(e) => match e.code {
                            None => return Ok(()),
                            Some(_) => return Err(e.to_io()),
                        },
                        NetlinkPayload::Done(_) => return Ok(()),
                        NetlinkPayload::InnerMessage(m) => each(m),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                at += (len + 3) & !3;
            }
            if n == 0 {
                return Err(io::Error::other("netlink socket closed"));
            }
        }
    }

    /// The link called `name`, if there is one.
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let mut found = None;
        match self.exchange(RouteNetlinkMessage::GetLink(msg), 0, |m| {
            if let RouteNetlinkMessage::NewLink(l) = m {
                found = Some(link_of(&l));
            }
        }) {
            Ok(()) => Ok(found),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link in the namespace.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let mut out = Vec::new();
        self.exchange(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
            |m| {
                if let RouteNetlinkMessage::NewLink(l) = m {
                    out.push(link_of(&l));
                }
            },
        )?;
        Ok(out)
    }

    /// Create a bridge (it is not an error if it exists).
    pub fn add_bridge(&mut self, name: &str, mtu: Option<u32>) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        match self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r,
        }
    }

    /// Create a veth pair whose `host` end is up (and attached to the bridge `controller`, if
    /// given), and whose `peer` end is made directly inside the namespace open at `netns`
    /// (moving an existing end there costs far more).
    pub fn add_veth(
        &mut self,
        host: &str,
        controller: Option<u32>,
        peer: &str,
        netns: &impl AsRawFd,
        mtu: Option<u32>,
    ) -> io::Result<()> {
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_string()));
        peer_msg
            .attributes
            .push(LinkAttribute::NetNsFd(netns.as_raw_fd()));
        let mut msg = LinkMessage::default();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::IfName(host.to_string()));
        if let Some(c) = controller {
            msg.attributes.push(LinkAttribute::Controller(c));
        }
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
            peer_msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Delete a link by name; a link that is gone already is not an error.
    pub fn delete_link(&mut self, name: &str) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::DelLink(msg), 0) {
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
            r => r,
        }
    }

    /// Let a bridge port send frames back out the port they came in on ("hairpin" mode):
    /// a pod that reaches itself through its Service's address needs it.
    pub fn set_hairpin(&mut self, index: u32) -> io::Result<()> {
        const IFLA_PROTINFO: u16 = 12;
        const IFLA_BRPORT_MODE: u16 = 4;
        const NLA_F_NESTED: u16 = 0x8000;
        // One nested attribute: IFLA_BRPORT_MODE = 1 (length 5, padded to 8).
        let mut inner = Vec::with_capacity(8);
        inner.extend_from_slice(&5u16.to_ne_bytes());
        inner.extend_from_slice(&IFLA_BRPORT_MODE.to_ne_bytes());
        inner.extend_from_slice(&[1, 0, 0, 0]);
        let mut msg = LinkMessage::default();
        msg.header.interface_family = AddressFamily::Bridge;
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Other(DefaultNla::new(
            IFLA_PROTINFO | NLA_F_NESTED,
            inner,
        )));
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Set a link's hardware address.
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
    }

    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Give a link an address (replacing it if it has it already).
    pub fn add_address(&mut self, index: u32, ip: IpAddr, prefix: u8) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        msg.header.prefix_len = prefix;
        msg.header.family = family(ip);
        if ip.is_ipv6() {
            // Pod addresses are unique by allocation: duplicate detection only delays them.
            msg.header.flags = AddressHeaderFlags::Nodad;
        }
        msg.attributes.push(AddressAttribute::Local(ip));
        msg.attributes.push(AddressAttribute::Address(ip));
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// The addresses on a link.
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<(IpAddr, u8)>> {
        Ok(self
            .all_addresses()?
            .into_iter()
            .filter(|(link, _, _)| *link == index)
            .map(|(_, ip, prefix)| (ip, prefix))
            .collect())
    }

    /// A route to `dst` straight out of link `index` (no gateway), replacing any.
    pub fn add_link_route(&mut self, dst: crate::Cidr, index: u32) -> io::Result<()> {
        let mut msg = route_message(dst.is_ipv6(), dst.prefix());
        msg.header.scope = RouteScope::Link;
        msg.attributes
            .push(RouteAttribute::Destination(route_address(dst.network())));
        msg.attributes.push(RouteAttribute::Oif(index));
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Make `ip` an address of this host without putting it on an interface: a `local` route
    /// in the local table through `lo`, so sockets can bind it and packets for it are
    /// delivered here (as `ip route add local IP dev lo table local`).
    pub fn add_local_route(&mut self, ip: IpAddr) -> io::Result<()> {
        let lo = self
            .link("lo")?
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no loopback link"))?;
        let mut msg = route_message(ip.is_ipv6(), if ip.is_ipv6() { 128 } else { 32 });
        // The local table (255); the crate names only main and unspec.
        msg.header.table = 255;
        msg.header.kind = RouteType::Local;
        msg.header.scope = RouteScope::Host;
        msg.attributes
            .push(RouteAttribute::Destination(route_address(ip)));
        msg.attributes.push(RouteAttribute::Oif(lo.index));
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// A default route through `gateway`, reached on link `index`.
    pub fn add_default_route(&mut self, index: u32, gateway: IpAddr) -> io::Result<()> {
        let mut msg = route_message(gateway.is_ipv6(), 0);
        msg.header.scope = RouteScope::Universe;
        msg.attributes.push(RouteAttribute::Oif(index));
        msg.attributes
            .push(RouteAttribute::Gateway(route_address(gateway)));
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }
}

/// The protocol number berth's routes to other nodes carry, so that they can be found again
/// (and told from anyone else's) after a restart.
pub const NODE_ROUTE_PROTOCOL: u8 = 0xbe;

/// How a route to another node's pods leaves this one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Via {
    pub gateway: IpAddr,
    pub link: u32,
    /// The gateway is on the link even though no address of this node's says so (VXLAN).
    pub onlink: bool,
}

impl Netlink {
    /// Every address of every link: `(link index, address, prefix length)`.
    pub fn all_addresses(&mut self) -> io::Result<Vec<(u32, IpAddr, u8)>> {
        let mut out = Vec::new();
        self.exchange(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
            |m| {
                if let RouteNetlinkMessage::NewAddress(a) = m {
                    for attr in &a.attributes {
                        if let AddressAttribute::Address(ip) = attr {
                            out.push((a.header.index, *ip, a.header.prefix_len));
                        }
                    }
                }
            },
        )?;
        Ok(out)
    }

    /// A route to `dst` through `via`, marked as berth's node route, replacing any.
    pub fn add_node_route(&mut self, dst: crate::Cidr, via: Via) -> io::Result<()> {
        let mut msg = route_message(dst.is_ipv6(), dst.prefix());
        msg.header.protocol = RouteProtocol::from(NODE_ROUTE_PROTOCOL);
        msg.header.scope = RouteScope::Universe;
        if via.onlink {
            msg.header.flags = netlink_packet_route::route::RouteFlags::Onlink;
        }
        msg.attributes
            .push(RouteAttribute::Destination(route_address(dst.network())));
        msg.attributes.push(RouteAttribute::Oif(via.link));
        msg.attributes
            .push(RouteAttribute::Gateway(route_address(via.gateway)));
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Delete berth's node route to `dst`; one that is gone already is not an error.
    pub fn delete_node_route(&mut self, dst: crate::Cidr) -> io::Result<()> {
        let mut msg = route_message(dst.is_ipv6(), dst.prefix());
        msg.header.protocol = RouteProtocol::from(NODE_ROUTE_PROTOCOL);
        msg.header.scope = RouteScope::Universe;
        msg.attributes
            .push(RouteAttribute::Destination(route_address(dst.network())));
        match self.request(RouteNetlinkMessage::DelRoute(msg), 0) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            r => r,
        }
    }

    /// The destinations of berth's node routes in the main table, both families.
    pub fn node_routes(&mut self) -> io::Result<Vec<crate::Cidr>> {
        let mut out = Vec::new();
        for v6 in [false, true] {
            let msg = route_message(v6, 0);
            self.exchange(RouteNetlinkMessage::GetRoute(msg), NLM_F_DUMP, |m| {
                let RouteNetlinkMessage::NewRoute(r) = m else {
                    return;
                };
                if r.header.protocol != RouteProtocol::from(NODE_ROUTE_PROTOCOL)
                    || r.header.table != RouteHeader::RT_TABLE_MAIN
                {
                    return;
                }
                let dst = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
                    RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
                    _ => None,
                });
                if let Some(c) =
                    dst.and_then(|ip| crate::Cidr::new(ip, r.header.destination_prefix_length))
                {
                    out.push(c);
                }
            })?;
        }
        Ok(out)
    }

    /// Create the VXLAN device `name` (VNI `vni`, UDP `port`, sending from `local` out of link
    /// `link`, learning off: every remote is written as a forwarding entry), or keep it if it is
    /// there. Returns its index and hardware address.
    pub fn add_vxlan(
        &mut self,
        name: &str,
        vni: u32,
        port: u16,
        local: std::net::Ipv4Addr,
        link: u32,
        mtu: u32,
    ) -> io::Result<(u32, Vec<u8>)> {
        use netlink_packet_route::link::InfoVxlan;
        if self.link(name)?.is_none() {
            let mut msg = LinkMessage::default();
            msg.attributes.push(LinkAttribute::IfName(name.to_string()));
            msg.attributes.push(LinkAttribute::Mtu(mtu));
            msg.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vxlan),
                LinkInfo::Data(InfoData::Vxlan(vec![
                    InfoVxlan::Id(vni),
                    InfoVxlan::Local(local),
                    InfoVxlan::Link(link),
                    InfoVxlan::Port(port),
                    InfoVxlan::Learning(false),
                ])),
            ]));
            self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)?;
        }
        let l = self
            .link(name)?
            .ok_or_else(|| io::Error::other("the VXLAN device vanished"))?;
        self.set_up(l.index)?;
        Ok((l.index, l.mac.unwrap_or_default()))
    }

    /// A permanent neighbour entry: `ip` on link `link` is `mac`.
    pub fn set_neighbour(&mut self, link: u32, ip: IpAddr, mac: &[u8]) -> io::Result<()> {
        use netlink_packet_route::neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
        };
        let mut msg = NeighbourMessage::default();
        msg.header.family = family(ip);
        msg.header.ifindex = link;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::Destination(match ip {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }));
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.request(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// A forwarding entry of the VXLAN device `link`: frames for `mac` go to `remote`.
    pub fn set_fdb(&mut self, link: u32, mac: &[u8], remote: IpAddr) -> io::Result<()> {
        use netlink_packet_route::neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
        };
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = link;
        msg.header.state = NeighbourState::Permanent;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        msg.attributes
            .push(NeighbourAttribute::Destination(match remote {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }));
        self.request(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }
}

/// Turn off transmit checksum offload on a link: through a VXLAN device it makes TCP stall
/// (kubernetes#88986).
pub fn tx_checksum_off(name: &str) -> io::Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct Value {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [libc::c_char; libc::IFNAMSIZ],
        data: *mut Value,
        _pad: [u8; 16],
    }
    let mut value = Value {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 16],
    };
    for (d, b) in req
        .name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = b as libc::c_char;
    }
    // SAFETY: a datagram socket with no preconditions; closed by OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned here alone.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: req and value outlive the call; the kernel reads the name and writes nothing
    // past the structures for ETHTOOL_STXCSUM.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn route_message(v6: bool, prefix: u8) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    msg.header.destination_prefix_length = prefix;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Static;
    msg.header.kind = RouteType::Unicast;
    msg
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv6() {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

fn link_of(l: &LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        up: l.header.flags.contains(LinkFlags::Up),
        controller: None,
        mtu: None,
        mac: None,
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Controller(c) => link.controller = Some(*c),
            LinkAttribute::Mtu(m) => link.mtu = Some(*m),
            LinkAttribute::Address(a) => link.mac = Some(a.clone()),
            _ => {}
        }
    }
    link
}

//! The kernel's connection tracking table over netlink (ctnetlink): the connections there
//! are, and deleting some. NetworkPolicy uses it to cut connections a change no longer
//! allows: its rules pass established packets without looking, so a connection admitted
//! before a deny would otherwise outlive it. A deleted TCP connection that is still allowed
//! is picked up again by its next packet (conntrack follows connections it did not see
//! begin) and passes the rules as new.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use crate::nftnl::Message;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 0x2;
const NLMSG_DONE: u16 = 0x3;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// One direction of a connection as conntrack keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// Ports (0 for protocols without them).
    pub sport: u16,
    pub dport: u16,
}

/// A tracked connection: as its first packet left the client, and as replies come back
/// (after address translation, the reply's source is the real destination).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    pub orig: Tuple,
    pub reply: Tuple,
}

impl Connection {
    /// Who talks to whom, after any DNAT: (client, server, protocol, server port).
    pub fn endpoints(&self) -> (IpAddr, IpAddr, u8, u16) {
        (
            self.orig.src,
            self.reply.src,
            self.orig.proto,
            self.reply.sport,
        )
    }
}

fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        b = &b[len.next_multiple_of(4).min(b.len())..];
        Some((kind, payload))
    })
}

fn ip(p: &[u8]) -> Option<IpAddr> {
    match p.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(p[0], p[1], p[2], p[3]))),
        16 => {
            let o: [u8; 16] = p.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}

fn tuple(b: &[u8]) -> Option<Tuple> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, 0, 0);
    for (k, p) in attrs(b) {
        match k {
            CTA_TUPLE_IP => {
                for (k, p) in attrs(p) {
                    match k {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = ip(p),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = ip(p),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, p) in attrs(p) {
                    match (k, p) {
                        (CTA_PROTO_NUM, [n, ..]) => proto = Some(*n),
                        (CTA_PROTO_SRC_PORT, [a, b, ..]) => sport = u16::from_be_bytes([*a, *b]),
                        (CTA_PROTO_DST_PORT, [a, b, ..]) => dport = u16::from_be_bytes([*a, *b]),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple {
        src: src?,
        dst: dst?,
        proto: proto?,
        sport,
        dport,
    })
}

/// A connection from one ctnetlink message's attributes.
fn connection(b: &[u8]) -> Option<Connection> {
    let (mut orig, mut reply) = (None, None);
    for (k, p) in attrs(b) {
        match k {
            CTA_TUPLE_ORIG => orig = tuple(p),
            CTA_TUPLE_REPLY => reply = tuple(p),
            _ => {}
        }
    }
    Some(Connection {
        orig: orig?,
        reply: reply?,
    })
}

fn family(v6: bool) -> u8 {
    if v6 {
        libc::AF_INET6 as u8
    } else {
        libc::AF_INET as u8
    }
}

fn socket() -> io::Result<Socket> {
    let mut s = Socket::new(NETLINK_NETFILTER)?;
    s.bind_auto()?;
    Ok(s)
}

/// Every tracked connection of both families.
pub fn connections() -> io::Result<Vec<Connection>> {
    let s = socket()?;
    let mut out = Vec::new();
    for v6 in [false, true] {
        let m = Message::begin(
            Vec::new(),
            (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
            NLM_F_REQUEST | NLM_F_DUMP,
            1,
            family(v6),
            0,
        );
        s.send(&m.end(), 0)?;
        let mut rx = vec![0u8; 256 * 1024];
        'dump: loop {
            let n = s.recv(&mut &mut rx[..], 0)?;
            if n == 0 {
                break;
            }
            let mut at = 0;
            while at + 16 <= n {
                let len = u32::from_ne_bytes(rx[at..at + 4].try_into().expect("4 bytes")) as usize;
                let kind = u16::from_ne_bytes(rx[at + 4..at + 6].try_into().expect("2 bytes"));
                if len < 16 || at + len > n {
                    break;
                }
                match kind {
                    NLMSG_DONE => break 'dump,
                    NLMSG_ERROR => {
                        let code =
                            i32::from_ne_bytes(rx[at + 16..at + 20].try_into().expect("4 bytes"));
                        if code != 0 {
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                    }
                    // The header, then struct nfgenmsg, then the attributes.
                    _ if len > 20 => out.extend(connection(&rx[at + 20..at + len])),
                    _ => {}
                }
                at += len.next_multiple_of(4);
            }
        }
    }
    Ok(out)
}

fn put_tuple(m: &mut Message, t: &Tuple) {
    let v6 = t.src.is_ipv6();
    let tuple = m.nest(CTA_TUPLE_ORIG);
    let ips = m.nest(CTA_TUPLE_IP);
    let bytes = |a: IpAddr| match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let (s, d) = if v6 {
        (CTA_IP_V6_SRC, CTA_IP_V6_DST)
    } else {
        (CTA_IP_V4_SRC, CTA_IP_V4_DST)
    };
    m.attr(s, &bytes(t.src));
    m.attr(d, &bytes(t.dst));
    m.close(ips);
    let proto = m.nest(CTA_TUPLE_PROTO);
    m.attr(CTA_PROTO_NUM, &[t.proto]);
    if matches!(t.proto, 6 | 17 | 132) {
        m.attr(CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes());
        m.attr(CTA_PROTO_DST_PORT, &t.dport.to_be_bytes());
    }
    m.close(proto);
    m.close(tuple);
}

/// Delete these connections (by their original direction); ones already gone are fine.
/// Returns how many were deleted.
pub fn delete(conns: &[Connection]) -> io::Result<usize> {
    let s = socket()?;
    let mut deleted = 0;
    for chunk in conns.chunks(256) {
        let mut buf = Vec::new();
        for (i, c) in chunk.iter().enumerate() {
            let mut m = Message::begin(
                buf,
                (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE,
                NLM_F_REQUEST | NLM_F_ACK,
                i as u32 + 1,
                family(c.orig.src.is_ipv6()),
                0,
            );
            put_tuple(&mut m, &c.orig);
            buf = m.end();
        }
        s.send(&buf, 0)?;
        // One acknowledgement (or error) per message.
        let mut acks = 0;
        let mut rx = vec![0u8; 64 * 1024];
        while acks < chunk.len() {
            let n = s.recv(&mut &mut rx[..], 0)?;
            if n == 0 {
                break;
            }
            let mut at = 0;
            while at + 20 <= n {
                let len = u32::from_ne_bytes(rx[at..at + 4].try_into().expect("4 bytes")) as usize;
                let kind = u16::from_ne_bytes(rx[at + 4..at + 6].try_into().expect("2 bytes"));
                if len < 16 {
                    break;
                }
                if kind == NLMSG_ERROR {
                    acks += 1;
                    let code =
                        i32::from_ne_bytes(rx[at + 16..at + 20].try_into().expect("4 bytes"));
                    match -code {
                        0 => deleted += 1,
                        libc::ENOENT => {}
                        e => return Err(io::Error::from_raw_os_error(e)),
                    }
                }
                at += len.next_multiple_of(4);
            }
        }
    }
    Ok(deleted)
}

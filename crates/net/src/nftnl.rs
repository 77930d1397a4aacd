//! Set and map elements written to nf_tables over netlink, all in one transaction: what
//! `nft -f` sends for `add element` lines, without its parser, which costs several
//! microseconds an element (most of a 30,000-Service load). Only elements: tables, chains and
//! rules stay with `nft` (`nft.rs`), which writes them once per full load.
//!
//! The encoding is the kernel's (`linux/netfilter/nf_tables.h`): a batch of `NEWSETELEM`
//! messages between `BATCH_BEGIN` and `BATCH_END`, each naming its table and set and holding
//! a list of elements, a key and (for maps) a value or a verdict. A key of several fields
//! (`ip . proto . port`) is their concatenation, each field padded to 4 bytes.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use crate::{NetError, Protocol};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 0x2;
const NLA_F_NESTED: u16 = 0x8000;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_GOTO: i32 = -4;

/// An attribute's length is 16 bits: each message carries at most this much of elements.
const MAX_ELEMENTS_BYTES: usize = 60_000;

/// The table's family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Ip,
    Ip6,
}

impl Family {
    pub fn of(v6: bool) -> Family {
        if v6 { Family::Ip6 } else { Family::Ip }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }

    fn code(self) -> u8 {
        match self {
            Family::Ip => libc::NFPROTO_IPV4 as u8,
            Family::Ip6 => libc::NFPROTO_IPV6 as u8,
        }
    }
}

/// One field of a key or value; several make a concatenation (`ip . proto . port`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    Ip(IpAddr),
    Proto(Protocol),
    /// A protocol number that `Protocol` does not name (the ends of a protocol range).
    ProtoNumber(u8),
    Port(u16),
    /// A 32-bit number, as `numgen` leaves it.
    Number(u32),
    /// A 32-bit number (a mark) in a set of ranges: `nft` turns the register to network
    /// order before such a lookup, so the element holds it that way.
    RangedNumber(u32),
}

/// A key or value: its fields in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fields(pub(crate) Vec<Field>);

impl Fields {
    pub fn new() -> Fields {
        Fields(Vec::with_capacity(4))
    }

    pub fn ip(mut self, ip: IpAddr) -> Fields {
        self.0.push(Field::Ip(ip));
        self
    }

    pub fn proto(mut self, p: Protocol) -> Fields {
        self.0.push(Field::Proto(p));
        self
    }

    pub fn proto_number(mut self, p: u8) -> Fields {
        self.0.push(Field::ProtoNumber(p));
        self
    }

    pub fn port(mut self, p: u16) -> Fields {
        self.0.push(Field::Port(p));
        self
    }

    pub fn number(mut self, n: u32) -> Fields {
        self.0.push(Field::Number(n));
        self
    }

    pub fn ranged_number(mut self, n: u32) -> Fields {
        self.0.push(Field::RangedNumber(n));
        self
    }

    /// The kernel's layout: each field in its register, padded to 4 bytes; addresses and
    /// ports in network order, protocol numbers a byte, `numgen` numbers in host order.
    fn encode(&self, out: &mut Vec<u8>) {
        for f in &self.0 {
            let at = out.len();
            match f {
                Field::Ip(IpAddr::V4(a)) => out.extend_from_slice(&a.octets()),
                Field::Ip(IpAddr::V6(a)) => out.extend_from_slice(&a.octets()),
                Field::Proto(p) => out.push(p.number()),
                Field::ProtoNumber(p) => out.push(*p),
                Field::Port(p) => out.extend_from_slice(&p.to_be_bytes()),
                Field::Number(n) => out.extend_from_slice(&n.to_ne_bytes()),
                Field::RangedNumber(n) => out.extend_from_slice(&n.to_be_bytes()),
            }
            let pad = (4 - (out.len() - at) % 4) % 4;
            out.extend(std::iter::repeat_n(0, pad));
        }
    }

    fn encoded_len(&self) -> usize {
        self.0
            .iter()
            .map(|f| match f {
                Field::Ip(IpAddr::V6(_)) => 16,
                _ => 4,
            })
            .sum()
    }
}

impl Field {
    /// The field as a number, for comparing with a range's ends.
    pub(crate) fn value(&self) -> u128 {
        match self {
            Field::Ip(IpAddr::V4(a)) => u32::from(*a) as u128,
            Field::Ip(IpAddr::V6(a)) => u128::from(*a),
            Field::Proto(p) => p.number() as u128,
            Field::ProtoNumber(p) => *p as u128,
            Field::Port(p) => *p as u128,
            Field::Number(n) | Field::RangedNumber(n) => *n as u128,
        }
    }
}

impl Element {
    /// Whether the element holds `key`: equal to its key, or each field within the range.
    pub(crate) fn holds(&self, key: &Fields) -> bool {
        let end = self.key_end.as_ref().unwrap_or(&self.key);
        self.key.0.len() == key.0.len()
            && key
                .0
                .iter()
                .zip(self.key.0.iter().zip(&end.0))
                .all(|(k, (lo, hi))| lo.value() <= k.value() && k.value() <= hi.value())
    }
}

/// As `nft` reads it: `10.43.0.5 . tcp . 80`.
impl fmt::Display for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, field) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" . ")?;
            }
            match field {
                Field::Ip(ip) => write!(f, "{ip}")?,
                Field::Proto(p) => f.write_str(p.as_str())?,
                Field::ProtoNumber(p) => write!(f, "{p}")?,
                Field::Port(p) => write!(f, "{p}")?,
                Field::Number(n) | Field::RangedNumber(n) => write!(f, "{n}")?,
            }
        }
        Ok(())
    }
}

/// What an element maps its key to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Data {
    /// A set's element, or an element being deleted: the key alone.
    None,
    Value(Fields),
    /// A verdict map's `goto CHAIN`.
    Goto(String),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element {
    pub key: Fields,
    /// In a set of ranges (`flags interval` over a concatenation), where the range ends; a
    /// single value ends where it starts.
    pub key_end: Option<Fields>,
    pub data: Data,
}

impl Element {
    pub fn new(key: Fields, data: Data) -> Element {
        Element {
            key,
            key_end: None,
            data,
        }
    }

    /// A range element of a concatenated interval set: each field from `key`'s to `end`'s.
    pub fn range(key: Fields, end: Fields) -> Element {
        Element {
            key,
            key_end: Some(end),
            data: Data::None,
        }
    }
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(end) = &self.key_end {
            // `nft` writes each field's range on its own: `1 . 10.0.0.0-10.0.0.255 . 6 . 80`.
            for (i, (a, b)) in self.key.0.iter().zip(&end.0).enumerate() {
                if i > 0 {
                    f.write_str(" . ")?;
                }
                let one = |x: &Field| Fields(vec![*x]).to_string();
                if a == b {
                    f.write_str(&one(a))?;
                } else {
                    write!(f, "{}-{}", one(a), one(b))?;
                }
            }
            return Ok(());
        }
        match &self.data {
            Data::None => write!(f, "{}", self.key),
            Data::Value(v) => write!(f, "{} : {v}", self.key),
            Data::Goto(c) => write!(f, "{} : goto {c}", self.key),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Add,
    Delete,
}

/// Elements added to or deleted from one set or map of a family's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetOp {
    pub op: Op,
    pub family: Family,
    pub set: String,
    pub elements: Vec<Element>,
}

impl SetOp {
    /// The `nft` command doing the same.
    pub fn command(&self, table: &str) -> String {
        let verb = match self.op {
            Op::Add => "add",
            Op::Delete => "delete",
        };
        let items: Vec<String> = self.elements.iter().map(ToString::to_string).collect();
        format!(
            "{verb} element {} {table} {} {{ {} }}\n",
            self.family.name(),
            self.set,
            items.join(", ")
        )
    }
}

/// A netlink message under construction: attributes are appended, nests closed by offset.
pub(crate) struct Message {
    buf: Vec<u8>,
    start: usize,
}

impl Message {
    pub(crate) fn begin(
        buf: Vec<u8>,
        kind: u16,
        flags: u16,
        seq: u32,
        family: u8,
        res_id: u16,
    ) -> Message {
        let mut buf = buf;
        let start = buf.len();
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `end`
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        // struct nfgenmsg
        buf.push(family);
        buf.push(0); // NFNETLINK_V0
        buf.extend_from_slice(&res_id.to_be_bytes());
        Message { buf, start }
    }

    pub(crate) fn attr(&mut self, kind: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.align();
    }

    fn fields(&mut self, kind: u16, fields: &Fields) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        fields.encode(&mut self.buf);
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn string(&mut self, kind: u16, s: &str) {
        let mut bytes = Vec::with_capacity(s.len() + 1);
        bytes.extend_from_slice(s.as_bytes());
        bytes.push(0);
        self.attr(kind, &bytes);
    }

    pub(crate) fn nest(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }

    pub(crate) fn close(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn align(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    pub(crate) fn end(mut self) -> Vec<u8> {
        self.align();
        let len = (self.buf.len() - self.start) as u32;
        self.buf[self.start..self.start + 4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn element(m: &mut Message, e: &Element) {
    let item = m.nest(NFTA_LIST_ELEM);
    let key = m.nest(NFTA_SET_ELEM_KEY);
    m.fields(NFTA_DATA_VALUE, &e.key);
    m.close(key);
    if let Some(end) = &e.key_end {
        let at = m.nest(NFTA_SET_ELEM_KEY_END);
        m.fields(NFTA_DATA_VALUE, end);
        m.close(at);
    }
    match &e.data {
        Data::None => {}
        Data::Value(v) => {
            let data = m.nest(NFTA_SET_ELEM_DATA);
            m.fields(NFTA_DATA_VALUE, v);
            m.close(data);
        }
        Data::Goto(chain) => {
            let data = m.nest(NFTA_SET_ELEM_DATA);
            let verdict = m.nest(NFTA_DATA_VERDICT);
            m.attr(NFTA_VERDICT_CODE, &NFT_GOTO.to_be_bytes());
            m.string(NFTA_VERDICT_CHAIN, chain);
            m.close(verdict);
            m.close(data);
        }
    }
    m.close(item);
}

fn element_size(e: &Element) -> usize {
    let data = match &e.data {
        Data::None => 0,
        Data::Value(v) => 8 + v.encoded_len(),
        Data::Goto(c) => 24 + (c.len() + 1).next_multiple_of(4),
    };
    let end = e.key_end.as_ref().map_or(0, |k| 8 + k.encoded_len());
    12 + e.key.encoded_len() + end + data
}

/// The batch applying `ops` to `table`, in order. Only its last message asks for an
/// acknowledgement: the batch is one transaction, so that acknowledgement or the first error
/// says how it went.
pub fn batch(table: &str, ops: &[SetOp]) -> Vec<u8> {
    let subsys = NFNL_SUBSYS_NFTABLES;
    let mut seq = 0u32;
    let begin = Message::begin(
        Vec::new(),
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        libc::AF_UNSPEC as u8,
        subsys,
    );
    let mut buf = begin.end();
    // The elements in messages of bounded size.
    let chunks: Vec<(&SetOp, &[Element])> = ops
        .iter()
        .flat_map(|op| {
            let mut out = Vec::new();
            let mut from = 0;
            let mut size = 0;
            for (i, e) in op.elements.iter().enumerate() {
                let n = element_size(e);
                if size + n > MAX_ELEMENTS_BYTES && i > from {
                    out.push((op, &op.elements[from..i]));
                    from = i;
                    size = 0;
                }
                size += n;
            }
            if from < op.elements.len() {
                out.push((op, &op.elements[from..]));
            }
            out
        })
        .collect();
    for (i, (op, elements)) in chunks.iter().enumerate() {
        seq += 1;
        let ack = if i + 1 == chunks.len() { NLM_F_ACK } else { 0 };
        let (kind, flags) = match op.op {
            Op::Add => (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE | ack),
            Op::Delete => (NFT_MSG_DELSETELEM, NLM_F_REQUEST | ack),
        };
        let mut m = Message::begin(buf, (subsys << 8) | kind, flags, seq, op.family.code(), 0);
        m.string(NFTA_SET_ELEM_LIST_TABLE, table);
        m.string(NFTA_SET_ELEM_LIST_SET, &op.set);
        let list = m.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
        for e in *elements {
            element(&mut m, e);
        }
        m.close(list);
        buf = m.end();
    }
    seq += 1;
    let end = Message::begin(
        buf,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq,
        libc::AF_UNSPEC as u8,
        subsys,
    );
    end.end()
}

/// Apply `ops` to `table` (whose sets exist), in one transaction: all or none.
pub fn write(table: &str, ops: &[SetOp]) -> Result<(), NetError> {
    if ops.iter().all(|o| o.elements.is_empty()) {
        return Ok(());
    }
    send(&batch(table, ops)).map_err(NetError::io(format!(
        "writing set elements of nftables table {table}"
    )))
}

fn send(message: &[u8]) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    // The whole batch goes in one message, as the kernel reads a transaction from one
    // buffer: make room for it (CAP_NET_ADMIN may exceed the system's limit, as nft does).
    let size = (message.len() + 4096) as libc::c_int;
    // SAFETY: setsockopt on an open socket with a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let sent = socket.send(message, 0)?;
    if sent != message.len() {
        return Err(io::Error::other("the kernel took part of the batch"));
    }
    // The kernel runs the batch as it receives it: its answer is waiting. The first error
    // (the transaction is then undone) or the last message's acknowledgement ends it.
    let mut rx = vec![0u8; 64 * 1024];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        let mut at = 0;
        while at + 16 <= n {
            let len = u32::from_ne_bytes(rx[at..at + 4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(rx[at + 4..at + 6].try_into().expect("2 bytes"));
            if kind == NLMSG_ERROR && at + 20 <= n {
                let code = i32::from_ne_bytes(rx[at + 16..at + 20].try_into().expect("4 bytes"));
                return if code == 0 {
                    Ok(())
                } else {
                    Err(io::Error::from_raw_os_error(-code))
                };
            }
            if len < 16 {
                break;
            }
            at += len.next_multiple_of(4);
        }
        if n == 0 {
            return Err(io::Error::other("netlink socket closed"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_padded_to_registers_and_read_as_nft_writes_them() {
        let key = Fields::new()
            .ip("10.43.0.5".parse().unwrap())
            .proto(Protocol::Tcp)
            .port(80)
            .number(1);
        let mut bytes = Vec::new();
        key.encode(&mut bytes);
        let mut want = vec![10, 43, 0, 5, 6, 0, 0, 0, 0, 80, 0, 0];
        want.extend_from_slice(&1u32.to_ne_bytes());
        assert_eq!(bytes, want);
        assert_eq!(key.encoded_len(), 16);
        assert_eq!(key.to_string(), "10.43.0.5 . tcp . 80 . 1");
        let v6 = Fields::new().ip("fd43::1".parse().unwrap()).port(443);
        assert_eq!(v6.encoded_len(), 20);
        let op = SetOp {
            op: Op::Add,
            family: Family::Ip6,
            set: "be1".into(),
            elements: vec![Element::new(
                Fields::new().ip("fd43::1".parse().unwrap()),
                Data::Value(v6),
            )],
        };
        assert_eq!(
            op.command("t"),
            "add element ip6 t be1 { fd43::1 : fd43::1 . 443 }\n"
        );
    }

    #[test]
    fn a_batch_is_framed_and_splits_long_lists() {
        let e = Element::new(
            Fields::new().ip("10.43.0.5".parse().unwrap()),
            Data::Goto("svc1".into()),
        );
        let many = SetOp {
            op: Op::Add,
            family: Family::Ip,
            set: "services".into(),
            elements: vec![e.clone(); 5000],
        };
        let gone = SetOp {
            op: Op::Delete,
            elements: vec![e],
            ..many.clone()
        };
        let buf = batch("t", &[gone, many]);
        // Walk the messages: begin, the element messages, end; only the last asks for an ack.
        let mut at = 0;
        let mut kinds = Vec::new();
        while at < buf.len() {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap());
            let flags = u16::from_ne_bytes(buf[at + 6..at + 8].try_into().unwrap());
            assert!(len <= 65_535 + 20, "message of {len} bytes");
            kinds.push((kind, flags & NLM_F_ACK != 0));
            at += len;
        }
        assert_eq!(at, buf.len());
        assert_eq!(kinds.first(), Some(&(NFNL_MSG_BATCH_BEGIN, false)));
        assert_eq!(kinds.last(), Some(&(NFNL_MSG_BATCH_END, false)));
        let elems: Vec<_> = kinds[1..kinds.len() - 1].to_vec();
        assert_eq!(elems[0], ((10 << 8) | 14, false), "the delete first");
        assert!(elems.len() > 2, "{elems:?}");
        assert!(elems[..elems.len() - 1].iter().all(|(_, ack)| !ack));
        assert_eq!(elems.last(), Some(&((10 << 8) | 12, true)));
    }
}

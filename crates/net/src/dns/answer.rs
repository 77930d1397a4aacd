//! From a query's bytes to a response's bytes, apart from the waits: reading the question,
//! the search-path walk done for the client, and the response with its truncation. Pure.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::CNAME;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::index::{Index, Lookup, TTL};

/// The largest UDP response sent to a client that offers more (the size DNS flag day 2020
/// settled on: no fragmentation on common paths).
pub const MAX_UDP: usize = 1232;
/// What a client without EDNS can take over UDP.
pub const PLAIN_UDP: usize = 512;

/// A question worth answering.
#[derive(Clone, Debug)]
pub struct Request {
    pub message: Message,
    /// The name as the client spelled it.
    pub name: Name,
    pub qtype: RecordType,
}

impl Request {
    /// The largest UDP response this client takes.
    pub fn udp_limit(&self) -> usize {
        match &self.message.edns {
            Some(e) => (e.max_payload() as usize).clamp(PLAIN_UDP, MAX_UDP),
            None => PLAIN_UDP,
        }
    }
}

/// What a query's bytes turn out to be.
#[derive(Debug)]
pub enum Parsed {
    Query(Box<Request>),
    /// Malformed or unsupported: this (encoded) error goes back.
    Refuse(Vec<u8>),
    /// Not even a header: nothing can go back.
    Drop,
}

pub fn parse(bytes: &[u8]) -> Parsed {
    let message = match Message::from_vec(bytes) {
        Ok(m) => m,
        Err(_) if bytes.len() >= 12 => {
            // A readable ID: say the packet was malformed.
            let id = u16::from_be_bytes([bytes[0], bytes[1]]);
            if bytes[2] & 0x80 != 0 {
                return Parsed::Drop; // a response: never answer those
            }
            return Parsed::Refuse(error(id, OpCode::Query, ResponseCode::FormErr, None));
        }
        Err(_) => return Parsed::Drop,
    };
    let md = message.metadata;
    if md.message_type != MessageType::Query {
        return Parsed::Drop;
    }
    if md.op_code != OpCode::Query {
        return Parsed::Refuse(error(md.id, md.op_code, ResponseCode::NotImp, None));
    }
    if message.queries.len() != 1 {
        return Parsed::Refuse(error(md.id, md.op_code, ResponseCode::FormErr, None));
    }
    let q = &message.queries[0];
    if q.query_class() != DNSClass::IN {
        return Parsed::Refuse(error(
            md.id,
            md.op_code,
            ResponseCode::Refused,
            Some(q.clone()),
        ));
    }
    let (name, qtype) = (q.name().clone(), q.query_type());
    Parsed::Query(Box::new(Request {
        message,
        name,
        qtype,
    }))
}

fn error(id: u16, op: OpCode, code: ResponseCode, q: Option<Query>) -> Vec<u8> {
    let mut m = Message::error_msg(id, op, code);
    if let Some(q) = q {
        m.add_query(q);
    }
    m.to_vec().unwrap_or_default()
}

/// The names to try, in order, for a query from a client whose resolver walks `searches`:
/// when the query is `<base>.<searches[0]>` (the first try of the walk), the rest of the
/// walk (`<base>.<searches[1]>`, ..., then `<base>` itself) is done here, so the client gets
/// the first name that exists in one round trip instead of one per search domain. `None`
/// when the query is not the start of a walk.
pub fn search_walk(name: &Name, searches: &[Name]) -> Option<Vec<Name>> {
    let first = searches.first()?;
    let lower = name.to_lowercase();
    if !first.zone_of(&lower) || lower.num_labels() <= first.num_labels() {
        return None;
    }
    let keep = (lower.num_labels() - first.num_labels()) as usize;
    let base = Name::from_labels(lower.iter().take(keep)).ok()?;
    let mut out: Vec<Name> = searches[1..]
        .iter()
        .filter_map(|s| base.clone().append_domain(s).ok())
        .collect();
    let mut bare = base;
    bare.set_fqdn(true);
    out.push(bare);
    Some(out)
}

/// The parts of an answer.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    pub code: ResponseCode,
    pub authoritative: bool,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
}

/// The response to `req`, encoded, cut to `limit` bytes by setting TC (the client then asks
/// again over TCP).
pub fn respond(req: &Request, a: Answer, limit: usize) -> Vec<u8> {
    let md = req.message.metadata;
    let mut m = Message::response(md.id, md.op_code);
    m.metadata.recursion_desired = md.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.authoritative = a.authoritative;
    m.metadata.checking_disabled = md.checking_disabled;
    m.metadata.response_code = a.code;
    m.add_query(req.message.queries[0].clone());
    m.answers = a.answers;
    m.authorities = a.authorities;
    m.additionals = a.additionals;
    if req.message.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(MAX_UDP as u16);
        m.set_edns(e);
    }
    match m.to_vec() {
        Ok(bytes) if bytes.len() <= limit => bytes,
        Ok(_) => {
            // Too big: keep the answers that fit (glibc and musl use them), say TC.
            m.additionals.clear();
            m.metadata.truncation = true;
            while !m.answers.is_empty() {
                m.answers.pop();
                if let Ok(b) = m.to_vec()
                    && b.len() <= limit
                {
                    return b;
                }
            }
            m.authorities.clear();
            m.to_vec().unwrap_or_default()
        }
        Err(_) => error(
            md.id,
            md.op_code,
            ResponseCode::ServFail,
            Some(req.message.queries[0].clone()),
        ),
    }
}

/// A name and type the answer needs from upstream, not yet known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing(pub Name, pub RecordType);

/// Most aliases followed for one answer.
const MAX_CHAIN: usize = 8;

/// Answer `req` from the cluster's records, walking the client's search path for it when
/// `searches` is its resolver's list, and taking names outside the cluster from `upstream`
/// (what is already known of them), or saying which one is missing.
pub fn resolve(
    index: &Index,
    req: &Request,
    searches: Option<&[Name]>,
    upstream: &dyn Fn(&Name, RecordType) -> Option<Answer>,
) -> Result<Answer, Missing> {
    let asked = one(index, &req.name, req.qtype, upstream)?;
    let Some(walk) = searches.and_then(|s| search_walk(&req.name, s)) else {
        return Ok(asked);
    };
    if asked.code != ResponseCode::NXDomain {
        return Ok(asked);
    }
    for candidate in &walk {
        let mut a = one(index, candidate, req.qtype, upstream)?;
        // A step that fails is left for the client's own walk to meet (or not).
        if a.code != ResponseCode::NoError {
            continue;
        }
        // The client asked for the first step of its walk: alias that name to the step that
        // exists, so its resolver takes the answer and stops walking.
        let ttl = a
            .answers
            .iter()
            .map(|r| r.ttl)
            .min()
            .unwrap_or(TTL)
            .min(TTL);
        a.answers.insert(
            0,
            Record::from_rdata(
                req.name.clone(),
                ttl,
                RData::CNAME(CNAME(candidate.clone())),
            ),
        );
        a.authoritative = false;
        return Ok(a);
    }
    Ok(asked)
}

/// One name, following aliases.
fn one(
    index: &Index,
    name: &Name,
    qtype: RecordType,
    upstream: &dyn Fn(&Name, RecordType) -> Option<Answer>,
) -> Result<Answer, Missing> {
    let mut chain: Vec<Record> = Vec::new();
    let mut name = name.clone();
    for _ in 0..MAX_CHAIN {
        let negative = |code| Answer {
            code,
            authoritative: true,
            answers: chain.clone(),
            authorities: vec![index.soa()],
            additionals: Vec::new(),
        };
        match index.lookup(&name, qtype) {
            Lookup::Answer {
                answers,
                additionals,
            } => {
                let authoritative = chain.is_empty();
                chain.extend(answers);
                return Ok(Answer {
                    code: ResponseCode::NoError,
                    authoritative,
                    answers: chain,
                    authorities: Vec::new(),
                    additionals,
                });
            }
            Lookup::NoData => return Ok(negative(ResponseCode::NoError)),
            Lookup::NxDomain => return Ok(negative(ResponseCode::NXDomain)),
            Lookup::Alias { cname, target } => {
                chain.push(*cname);
                name = target;
            }
            Lookup::Elsewhere => {
                let Some(mut a) = upstream(&name, qtype) else {
                    return Err(Missing(name, qtype));
                };
                chain.append(&mut a.answers);
                a.answers = chain;
                a.authoritative = false;
                return Ok(a);
            }
        }
    }
    Ok(Answer {
        code: ResponseCode::ServFail,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    #[test]
    fn a_walk_starts_only_at_the_first_search_domain() {
        let searches = [
            n("shop.svc.cluster.local."),
            n("svc.cluster.local."),
            n("cluster.local."),
            n("example.com."),
        ];
        let walk = search_walk(&n("Google.com.shop.svc.cluster.local."), &searches).unwrap();
        let walk: Vec<String> = walk.iter().map(|x| x.to_string()).collect();
        assert_eq!(
            walk,
            [
                "google.com.svc.cluster.local.",
                "google.com.cluster.local.",
                "google.com.example.com.",
                "google.com."
            ]
        );
        // Later steps of the walk, and names outside it, are answered as asked.
        assert!(search_walk(&n("google.com.svc.cluster.local."), &searches).is_none());
        assert!(search_walk(&n("google.com."), &searches).is_none());
        assert!(search_walk(&n("shop.svc.cluster.local."), &searches).is_none());
        assert!(search_walk(&n("google.com.shop.svc.cluster.local."), &[]).is_none());
    }

    fn query(name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 4242;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(n(name), qtype));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(4096);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn malformed_and_odd_packets_get_an_error_or_nothing() {
        assert!(matches!(parse(&[1, 2, 3]), Parsed::Drop));
        let mut junk = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        junk.extend([0xff; 9]);
        let Parsed::Refuse(bytes) = parse(&junk) else {
            panic!("a readable header must get an answer");
        };
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!(m.metadata.id, 0xabcd);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // Two questions: FORMERR too.
        let mut two = Message::query();
        two.add_query(Query::query(n("a."), RecordType::A));
        two.add_query(Query::query(n("b."), RecordType::A));
        let Parsed::Refuse(bytes) = parse(&two.to_vec().unwrap()) else {
            panic!()
        };
        assert_eq!(
            Message::from_vec(&bytes).unwrap().metadata.response_code,
            ResponseCode::FormErr
        );
        // A response is never answered (no reflection loops).
        let mut resp = Message::response(7, OpCode::Query);
        resp.add_query(Query::query(n("a."), RecordType::A));
        assert!(matches!(parse(&resp.to_vec().unwrap()), Parsed::Drop));
    }

    #[test]
    fn big_answers_are_truncated_to_what_the_client_takes() {
        let Parsed::Query(req) = parse(&query("big.example.", RecordType::A, false)) else {
            panic!()
        };
        assert_eq!(req.udp_limit(), PLAIN_UDP);
        let answers: Vec<Record> = (0..100u8)
            .map(|i| {
                Record::from_rdata(
                    n("big.example."),
                    5,
                    hickory_proto::rr::RData::from(std::net::Ipv4Addr::new(10, 0, 0, i)),
                )
            })
            .collect();
        let a = Answer {
            answers: answers.clone(),
            ..Default::default()
        };
        let bytes = respond(&req, a.clone(), req.udp_limit());
        assert!(bytes.len() <= PLAIN_UDP);
        let m = Message::from_vec(&bytes).unwrap();
        assert!(m.metadata.truncation);
        assert_eq!(m.metadata.id, 4242);
        // Over TCP it all fits.
        let m = Message::from_vec(&respond(&req, a, 65535)).unwrap();
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 100);
        let Parsed::Query(req) = parse(&query("big.example.", RecordType::A, true)) else {
            panic!()
        };
        assert_eq!(req.udp_limit(), MAX_UDP);
    }

    fn ix() -> Index {
        let mut ix = Index::new("cluster.local").unwrap();
        let web: api::k8s_openapi::api::core::v1::Service =
            serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.43.0.20", "ports": [{"port": 80}]}}))
            .unwrap();
        ix.set(
            "shop",
            "web",
            super::super::ServiceEntry::from_objects(&web, &[]),
        );
        let ext: api::k8s_openapi::api::core::v1::Service =
            serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ext", "namespace": "shop"},
            "spec": {"type": "ExternalName", "externalName": "www.example.com"}}))
            .unwrap();
        ix.set(
            "shop",
            "ext",
            super::super::ServiceEntry::from_objects(&ext, &[]),
        );
        ix
    }

    fn req(name: &str, qtype: RecordType) -> Request {
        let Parsed::Query(r) = parse(&query(name, qtype, false)) else {
            panic!()
        };
        *r
    }

    /// An upstream that knows `www.example.com` and `google.com` and nothing else.
    fn upstream(name: &Name, t: RecordType) -> Option<Answer> {
        let known = ["www.example.com.", "google.com."];
        let lower = name.to_lowercase().to_string();
        if lower.ends_with("cluster.local.") {
            panic!("a cluster name must never go upstream: {lower}");
        }
        Some(if known.contains(&lower.as_str()) && t == RecordType::A {
            Answer {
                answers: vec![Record::from_rdata(
                    name.clone(),
                    60,
                    RData::from(std::net::Ipv4Addr::new(192, 0, 2, 80)),
                )],
                ..Default::default()
            }
        } else if known.contains(&lower.as_str()) {
            Answer::default()
        } else {
            Answer {
                code: ResponseCode::NXDomain,
                ..Default::default()
            }
        })
    }

    fn text(a: &Answer) -> String {
        let mut s = vec![a.code.to_string()];
        s.extend(a.answers.iter().map(|r| format!("{} {}", r.name, r.data)));
        s.join(" | ")
    }

    fn searches() -> Vec<Name> {
        [
            "shop.svc.cluster.local.",
            "svc.cluster.local.",
            "cluster.local.",
            "corp.example.",
        ]
        .iter()
        .map(|s| n(s))
        .collect()
    }

    #[test]
    fn names_resolve_with_aliases_followed_and_upstream_asked_last() {
        let ix = ix();
        let r = resolve(
            &ix,
            &req("web.shop.svc.cluster.local.", RecordType::A),
            None,
            &upstream,
        )
        .unwrap();
        assert_eq!(
            text(&r),
            "No Error | web.shop.svc.cluster.local. 10.43.0.20"
        );
        assert!(r.authoritative);
        let r = resolve(
            &ix,
            &req("ext.shop.svc.cluster.local.", RecordType::A),
            None,
            &upstream,
        )
        .unwrap();
        assert_eq!(
            text(&r),
            "No Error | ext.shop.svc.cluster.local. www.example.com. | www.example.com. 192.0.2.80"
        );
        let r = resolve(
            &ix,
            &req("nope.shop.svc.cluster.local.", RecordType::A),
            None,
            &upstream,
        )
        .unwrap();
        assert_eq!(r.code, ResponseCode::NXDomain);
        assert_eq!(r.authorities.len(), 1, "negative answers carry the SOA");
        // Not yet known upstream: the resolver says what it needs.
        let nothing = |_: &Name, _: RecordType| None;
        assert_eq!(
            resolve(&ix, &req("www.example.com.", RecordType::A), None, &nothing).err(),
            Some(Missing(n("www.example.com."), RecordType::A))
        );
    }

    #[test]
    fn the_search_path_is_walked_for_the_client_in_one_round_trip() {
        let ix = ix();
        let s = searches();
        // An external name through the search path: one answer, aliased from the name asked.
        let r = resolve(
            &ix,
            &req("google.com.shop.svc.cluster.local.", RecordType::A),
            Some(&s),
            &upstream,
        )
        .unwrap();
        assert_eq!(
            text(&r),
            "No Error | google.com.shop.svc.cluster.local. google.com. | google.com. 192.0.2.80"
        );
        // A cluster name in another form: found on the walk, without going upstream.
        let r = resolve(
            &ix,
            &req("web.shop.shop.svc.cluster.local.", RecordType::A),
            Some(&s),
            &upstream,
        )
        .unwrap();
        assert_eq!(
            text(&r),
            "No Error | web.shop.shop.svc.cluster.local. web.shop.svc.cluster.local. | web.shop.svc.cluster.local. 10.43.0.20"
        );
        // The name exists as asked: no walk.
        let r = resolve(
            &ix,
            &req("web.shop.svc.cluster.local.", RecordType::A),
            Some(&s),
            &upstream,
        )
        .unwrap();
        assert_eq!(
            text(&r),
            "No Error | web.shop.svc.cluster.local. 10.43.0.20"
        );
        // Exists nowhere: NXDOMAIN for the name asked, the client goes on as usual.
        let r = resolve(
            &ix,
            &req("nope.shop.svc.cluster.local.", RecordType::A),
            Some(&s),
            &upstream,
        )
        .unwrap();
        assert_eq!(text(&r), "Non-Existent Domain");
        // A name with no A record stops the walk with an empty answer (as musl does).
        let r = resolve(
            &ix,
            &req("google.com.shop.svc.cluster.local.", RecordType::AAAA),
            Some(&s),
            &upstream,
        )
        .unwrap();
        assert_eq!(
            text(&r),
            "No Error | google.com.shop.svc.cluster.local. google.com."
        );
        // A step upstream cannot answer does not end the walk with a failure.
        let failing = |n: &Name, t: RecordType| {
            if n.to_string().ends_with("corp.example.") {
                Some(Answer {
                    code: ResponseCode::ServFail,
                    ..Default::default()
                })
            } else {
                upstream(n, t)
            }
        };
        let r = resolve(
            &ix,
            &req("google.com.shop.svc.cluster.local.", RecordType::A),
            Some(&s),
            &failing,
        )
        .unwrap();
        assert_eq!(r.code, ResponseCode::NoError);
        let r = resolve(
            &ix,
            &req(
                "web.shop.svc.cluster.local.shop.svc.cluster.local.",
                RecordType::A,
            ),
            Some(&s),
            &failing,
        )
        .unwrap();
        assert!(
            text(&r).ends_with("web.shop.svc.cluster.local. 10.43.0.20"),
            "{}",
            text(&r)
        );
        // Without the client's search list, nothing is walked.
        let r = resolve(
            &ix,
            &req("google.com.shop.svc.cluster.local.", RecordType::A),
            None,
            &upstream,
        )
        .unwrap();
        assert_eq!(r.code, ResponseCode::NXDomain);
    }
}

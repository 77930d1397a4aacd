//! Answers from upstream resolvers, kept for their TTL (capped), so that names outside the
//! cluster cost one upstream round trip per TTL and node, not one per lookup. Pure: time
//! is passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, RecordType};

use super::answer::Answer;

/// Longest an upstream answer is kept, whatever its TTL (as k3s's CoreDNS `cache 30`).
pub const MAX_TTL: u32 = 30;
/// How long a negative answer without an SOA is kept.
const NEGATIVE_TTL: u32 = 5;

struct Entry {
    stored: Instant,
    expires: Instant,
    answer: Answer,
}

pub struct Cache {
    entries: HashMap<(Name, RecordType), Entry>,
    capacity: usize,
}

impl Cache {
    pub fn new(capacity: usize) -> Cache {
        Cache {
            entries: HashMap::new(),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What is known of `name`, with TTLs counted down to `now`.
    pub fn get(&self, name: &Name, qtype: RecordType, now: Instant) -> Option<Answer> {
        let e = self.entries.get(&(name.to_lowercase(), qtype))?;
        if now >= e.expires {
            return None;
        }
        let spent = now.duration_since(e.stored).as_secs() as u32;
        let mut a = e.answer.clone();
        for r in a
            .answers
            .iter_mut()
            .chain(a.authorities.iter_mut())
            .chain(a.additionals.iter_mut())
        {
            r.ttl = r.ttl.saturating_sub(spent);
        }
        Some(a)
    }

    /// Keep `answer` for as long as its records allow (capped); failures are not kept.
    pub fn put(&mut self, name: &Name, qtype: RecordType, answer: &Answer, now: Instant) {
        let Some(ttl) = lifetime(answer) else {
            return;
        };
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, e| e.expires > now);
            if self.entries.len() >= self.capacity {
                return;
            }
        }
        self.entries.insert(
            (name.to_lowercase(), qtype),
            Entry {
                stored: now,
                expires: now + Duration::from_secs(u64::from(ttl)),
                answer: answer.clone(),
            },
        );
    }
}

/// Seconds an answer may be kept: the least TTL of its answers, or for a negative answer
/// the SOA's (RFC 2308), capped; `None` if it must not be kept.
fn lifetime(a: &Answer) -> Option<u32> {
    let ttl = match a.code {
        ResponseCode::NoError if !a.answers.is_empty() => a.answers.iter().map(|r| r.ttl).min()?,
        ResponseCode::NoError | ResponseCode::NXDomain => a
            .authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
            .unwrap_or(NEGATIVE_TTL),
        _ => return None,
    };
    (ttl > 0).then_some(ttl.min(MAX_TTL))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::SOA;

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn a(ttl: u32) -> Answer {
        Answer {
            code: ResponseCode::NoError,
            answers: vec![Record::from_rdata(
                n("example.com."),
                ttl,
                RData::from(std::net::Ipv4Addr::new(192, 0, 2, 1)),
            )],
            ..Default::default()
        }
    }

    #[test]
    fn answers_are_kept_for_their_ttl_capped_and_counted_down() {
        let t0 = Instant::now();
        let mut c = Cache::new(10);
        c.put(&n("Example.COM."), RecordType::A, &a(3600), t0);
        let got = c
            .get(
                &n("example.com."),
                RecordType::A,
                t0 + Duration::from_secs(10),
            )
            .unwrap();
        assert_eq!(got.answers[0].ttl, 3590);
        assert!(c.get(&n("example.com."), RecordType::AAAA, t0).is_none());
        // Capped at 30 s.
        assert!(
            c.get(
                &n("example.com."),
                RecordType::A,
                t0 + Duration::from_secs(31)
            )
            .is_none()
        );
        c.put(&n("short.example."), RecordType::A, &a(2), t0);
        assert!(
            c.get(
                &n("short.example."),
                RecordType::A,
                t0 + Duration::from_secs(2)
            )
            .is_none()
        );
        // TTL 0 and failures are not kept.
        c.put(&n("zero.example."), RecordType::A, &a(0), t0);
        assert!(c.get(&n("zero.example."), RecordType::A, t0).is_none());
        let fail = Answer {
            code: ResponseCode::ServFail,
            ..Default::default()
        };
        c.put(&n("fail.example."), RecordType::A, &fail, t0);
        assert!(c.get(&n("fail.example."), RecordType::A, t0).is_none());
    }

    #[test]
    fn negative_answers_live_as_long_as_their_soa_says() {
        let t0 = Instant::now();
        let mut c = Cache::new(10);
        let soa = Record::from_rdata(
            n("example."),
            300,
            RData::SOA(SOA::new(n("ns.example."), n("h.example."), 1, 1, 1, 1, 12)),
        );
        let nx = Answer {
            code: ResponseCode::NXDomain,
            authorities: vec![soa],
            ..Default::default()
        };
        c.put(&n("nope.example."), RecordType::A, &nx, t0);
        assert!(
            c.get(
                &n("nope.example."),
                RecordType::A,
                t0 + Duration::from_secs(11)
            )
            .is_some()
        );
        assert!(
            c.get(
                &n("nope.example."),
                RecordType::A,
                t0 + Duration::from_secs(12)
            )
            .is_none()
        );
    }

    #[test]
    fn a_full_cache_makes_room_from_expired_entries_only() {
        let t0 = Instant::now();
        let mut c = Cache::new(2);
        c.put(&n("a."), RecordType::A, &a(1), t0);
        c.put(&n("b."), RecordType::A, &a(30), t0);
        c.put(&n("c."), RecordType::A, &a(30), t0);
        assert!(c.get(&n("c."), RecordType::A, t0).is_none());
        let later = t0 + Duration::from_secs(2);
        c.put(&n("c."), RecordType::A, &a(30), later);
        assert!(c.get(&n("c."), RecordType::A, later).is_some());
        assert_eq!(c.len(), 2);
    }
}

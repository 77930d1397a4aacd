//! Pod address allocation on one node, as pure logic: the node's ranges (its `podCIDRs`, one
//! per IP family) in, one address per range per pod out. Nothing is kept but what the caller
//! restores, so the allocation can always be rebuilt from the pods that are actually wired
//! (their records) and nothing leaks when the agent dies.
//!
//! In each range the network address and the gateway (the first host address, which the
//! node's bridge holds) are never handed out, nor the IPv4 broadcast address. Addresses are
//! handed out round-robin from the last one given, so a freed address is not reused at once:
//! a client that still holds the old pod's address does not reach a new pod by mistake.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use api::cidr::Cidr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("no free address in {0}")]
    Exhausted(Cidr),
    #[error("address {ip} is not in the node's ranges")]
    OutOfRange { ip: IpAddr },
    #[error("address {ip} is held by pod {owner}")]
    Taken { ip: IpAddr, owner: String },
}

#[derive(Clone, Debug)]
struct Pool {
    cidr: Cidr,
    /// Allocated host indexes and their owners.
    used: BTreeMap<u128, String>,
    /// Where the next search starts.
    next: u128,
}

impl Pool {
    fn first(&self) -> u128 {
        2
    }

    /// One past the last usable index.
    fn end(&self) -> u128 {
        let size = self.cidr.size();
        if self.cidr.is_ipv6() {
            size
        } else {
            size.saturating_sub(1)
        }
    }

    fn capacity(&self) -> u128 {
        self.end().saturating_sub(self.first())
    }
}

/// The addresses of one node's pods.
#[derive(Clone, Debug)]
pub struct Ipam {
    pools: Vec<Pool>,
    owners: HashMap<String, Vec<IpAddr>>,
}

impl Ipam {
    pub fn new(ranges: &[Cidr]) -> Ipam {
        Ipam {
            pools: ranges
                .iter()
                .map(|&cidr| Pool {
                    cidr,
                    used: BTreeMap::new(),
                    next: 2,
                })
                .collect(),
            owners: HashMap::new(),
        }
    }

    /// The node's ranges.
    pub fn ranges(&self) -> Vec<Cidr> {
        self.pools.iter().map(|p| p.cidr).collect()
    }

    /// The gateway of each range (the first host address), which the node keeps for itself.
    pub fn gateways(&self) -> Vec<IpAddr> {
        self.pools.iter().filter_map(|p| p.cidr.nth(1)).collect()
    }

    /// The pod's addresses, one per range: the ones it has already, or new ones.
    pub fn allocate(&mut self, owner: &str) -> Result<Vec<IpAddr>, IpamError> {
        if let Some(ips) = self.owners.get(owner) {
            return Ok(ips.clone());
        }
        let mut picked = Vec::with_capacity(self.pools.len());
        for pool in &self.pools {
            if pool.used.len() as u128 >= pool.capacity() {
                return Err(IpamError::Exhausted(pool.cidr));
            }
            let mut i = pool.next.clamp(pool.first(), pool.end() - 1);
            while pool.used.contains_key(&i) {
                i += 1;
                if i >= pool.end() {
                    i = pool.first();
                }
            }
            picked.push(i);
        }
        let mut ips = Vec::with_capacity(picked.len());
        for (pool, i) in self.pools.iter_mut().zip(picked) {
            pool.used.insert(i, owner.to_string());
            pool.next = if i + 1 >= pool.end() {
                pool.first()
            } else {
                i + 1
            };
            ips.push(pool.cidr.nth(i).expect("index within the range"));
        }
        self.owners.insert(owner.to_string(), ips.clone());
        Ok(ips)
    }

    /// Record addresses a pod already holds (rebuilding the allocation after a restart).
    pub fn restore(&mut self, owner: &str, ips: &[IpAddr]) -> Result<(), IpamError> {
        let mut slots = Vec::new();
        for &ip in ips {
            let (p, i) = self
                .pools
                .iter()
                .enumerate()
                .find_map(|(p, pool)| pool.cidr.index_of(ip).map(|i| (p, i)))
                .filter(|&(p, i)| i >= self.pools[p].first() && i < self.pools[p].end())
                .ok_or(IpamError::OutOfRange { ip })?;
            if let Some(o) = self.pools[p].used.get(&i).filter(|o| *o != owner) {
                return Err(IpamError::Taken {
                    ip,
                    owner: o.clone(),
                });
            }
            slots.push((p, i));
        }
        for (p, i) in slots {
            let pool = &mut self.pools[p];
            pool.used.insert(i, owner.to_string());
            // Carry on after the newest address seen, as if it had just been handed out.
            if i >= pool.next {
                pool.next = if i + 1 >= pool.end() {
                    pool.first()
                } else {
                    i + 1
                };
            }
        }
        self.owners.insert(owner.to_string(), ips.to_vec());
        Ok(())
    }

    /// Free a pod's addresses; returns them.
    pub fn release(&mut self, owner: &str) -> Vec<IpAddr> {
        let ips = self.owners.remove(owner).unwrap_or_default();
        for &ip in &ips {
            for pool in &mut self.pools {
                if let Some(i) = pool.cidr.index_of(ip) {
                    pool.used.remove(&i);
                }
            }
        }
        ips
    }

    pub fn addresses(&self, owner: &str) -> Option<&[IpAddr]> {
        self.owners.get(owner).map(Vec::as_slice)
    }

    /// How many pods hold addresses.
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// How many addresses are in use in each range.
    pub fn in_use(&self) -> Vec<usize> {
        self.pools.iter().map(|p| p.used.len()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam(ranges: &[&str]) -> Ipam {
        Ipam::new(
            &ranges
                .iter()
                .map(|r| r.parse().unwrap())
                .collect::<Vec<_>>(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn hands_out_addresses_round_robin_and_never_the_reserved_ones() {
        let mut a = ipam(&["10.42.0.0/29"]);
        assert_eq!(a.gateways(), vec![ip("10.42.0.1")]);
        // .0 network, .1 gateway, .7 broadcast: .2 to .6 are usable.
        let got: Vec<_> = (0..5)
            .map(|i| a.allocate(&format!("p{i}")).unwrap()[0])
            .collect();
        assert_eq!(
            got,
            [
                "10.42.0.2",
                "10.42.0.3",
                "10.42.0.4",
                "10.42.0.5",
                "10.42.0.6"
            ]
            .map(ip)
        );
        assert_eq!(
            a.allocate("p5"),
            Err(IpamError::Exhausted("10.42.0.0/29".parse().unwrap()))
        );
        // A freed address is taken again only when the search comes round to it.
        a.release("p1");
        a.release("p3");
        assert_eq!(a.allocate("q0").unwrap(), vec![ip("10.42.0.3")]);
        assert_eq!(a.allocate("q1").unwrap(), vec![ip("10.42.0.5")]);
        assert_eq!(a.in_use(), vec![5]);
    }

    #[test]
    fn allocation_is_idempotent_per_pod() {
        let mut a = ipam(&["10.42.0.0/24"]);
        let first = a.allocate("p").unwrap();
        assert_eq!(a.allocate("p").unwrap(), first);
        assert_eq!(a.len(), 1);
        assert_eq!(a.release("p"), first);
        assert!(a.release("p").is_empty());
        assert!(a.is_empty());
    }

    #[test]
    fn dual_stack_gives_one_address_per_family() {
        let mut a = ipam(&["10.42.3.0/24", "fd42:0:0:3::/64"]);
        assert_eq!(a.gateways(), vec![ip("10.42.3.1"), ip("fd42:0:0:3::1")]);
        assert_eq!(
            a.allocate("p").unwrap(),
            vec![ip("10.42.3.2"), ip("fd42:0:0:3::2")]
        );
    }

    #[test]
    fn restore_rebuilds_and_refuses_conflicts() {
        let mut a = ipam(&["10.42.0.0/24"]);
        a.restore("old", &[ip("10.42.0.9")]).unwrap();
        a.restore("old", &[ip("10.42.0.9")]).unwrap();
        // New addresses continue after the newest restored one.
        assert_eq!(a.allocate("new").unwrap(), vec![ip("10.42.0.10")]);
        assert_eq!(
            a.restore("other", &[ip("10.42.0.9")]),
            Err(IpamError::Taken {
                ip: ip("10.42.0.9"),
                owner: "old".into()
            })
        );
        for bad in ["10.42.1.9", "10.42.0.1", "10.42.0.255", "10.42.0.0"] {
            assert_eq!(
                a.restore("x", &[ip(bad)]),
                Err(IpamError::OutOfRange { ip: ip(bad) }),
                "{bad}"
            );
        }
    }

    #[test]
    fn churn_frees_every_address() {
        let mut a = ipam(&["10.42.0.0/24"]);
        let mut live = std::collections::VecDeque::new();
        for i in 0..10_000 {
            let name = format!("p{i}");
            a.allocate(&name).unwrap();
            live.push_back(name);
            if live.len() > 200 {
                a.release(&live.pop_front().unwrap());
            }
        }
        while let Some(p) = live.pop_front() {
            a.release(&p);
        }
        assert!(a.is_empty());
        assert_eq!(a.in_use(), vec![0]);
    }
}

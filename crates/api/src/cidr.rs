//! Address ranges (`10.42.0.0/16`, `fd42::/56`): parsing as Kubernetes accepts them, and the
//! arithmetic the cluster's address plan needs (the n-th address of a range, the n-th subnet of
//! a given size, where an address falls). Both families are held as 128-bit numbers.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A network: its first address and prefix length. The host bits are always zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    base: u128,
    prefix: u8,
    v6: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR address: {0}")]
pub struct CidrError(pub String);

impl Cidr {
    /// The network of `ip/prefix` (host bits cleared), or `None` if the prefix is too long.
    pub fn new(ip: IpAddr, prefix: u8) -> Option<Cidr> {
        let (v, v6) = to_u128(ip);
        if prefix > bits(v6) {
            return None;
        }
        Some(Cidr {
            base: v & !host_mask(v6, prefix),
            prefix,
            v6,
        })
    }

    pub fn is_ipv6(&self) -> bool {
        self.v6
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The address bits of the family (32 or 128).
    pub fn family_bits(&self) -> u8 {
        bits(self.v6)
    }

    pub fn network(&self) -> IpAddr {
        from_u128(self.base, self.v6)
    }

    /// How many addresses the range holds (saturating at `u128::MAX` for `::/0`).
    pub fn size(&self) -> u128 {
        1u128
            .checked_shl((bits(self.v6) - self.prefix) as u32)
            .unwrap_or(u128::MAX)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let (v, v6) = to_u128(ip);
        v6 == self.v6 && v & !host_mask(v6, self.prefix) == self.base
    }

    /// Whether the two ranges share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.v6 == other.v6 && (self.contains(other.network()) || other.contains(self.network()))
    }

    /// The address `i` places from the start of the range.
    pub fn nth(&self, i: u128) -> Option<IpAddr> {
        (i < self.size()).then(|| from_u128(self.base + i, self.v6))
    }

    /// Where `ip` falls in the range.
    pub fn index_of(&self, ip: IpAddr) -> Option<u128> {
        self.contains(ip).then(|| to_u128(ip).0 - self.base)
    }

    /// How many subnets of length `prefix` the range holds (0 if `prefix` is shorter than
    /// the range's own or longer than the family allows).
    pub fn subnet_count(&self, prefix: u8) -> u128 {
        if prefix < self.prefix || prefix > bits(self.v6) {
            return 0;
        }
        1u128
            .checked_shl((prefix - self.prefix) as u32)
            .unwrap_or(u128::MAX)
    }

    /// The `i`-th subnet of length `prefix`.
    pub fn subnet(&self, prefix: u8, i: u128) -> Option<Cidr> {
        if i >= self.subnet_count(prefix) {
            return None;
        }
        let step = 1u128
            .checked_shl((bits(self.v6) - prefix) as u32)
            .unwrap_or(0);
        Some(Cidr {
            base: self.base + i * step,
            prefix,
            v6: self.v6,
        })
    }

    /// Which subnet of length `prefix` `sub` is, if it is one of this range's.
    pub fn subnet_index(&self, sub: &Cidr) -> Option<u128> {
        if sub.prefix < self.prefix || !self.contains(sub.network()) {
            return None;
        }
        let shift = (bits(self.v6) - sub.prefix) as u32;
        Some((sub.base - self.base).checked_shr(shift).unwrap_or(0))
    }
}

/// The ranges a comma-separated flag names (`10.42.0.0/16,fd42::/56`): at most one per family.
pub fn parse_list(s: &str) -> Result<Vec<Cidr>, CidrError> {
    let mut out: Vec<Cidr> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let c: Cidr = part.parse()?;
        if out.iter().any(|o| o.v6 == c.v6) {
            return Err(CidrError(format!("{s}: at most one range per IP family")));
        }
        out.push(c);
    }
    if out.is_empty() {
        return Err(CidrError(s.to_string()));
    }
    Ok(out)
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `a.b.c.d/n` or an IPv6 range. Like Go's `net.ParseCIDR`, which Kubernetes uses, host
    /// bits are allowed and cleared.
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let bad = || CidrError(s.to_string());
        let (ip, len) = s.split_once('/').ok_or_else(bad)?;
        let ip: IpAddr = ip.parse().map_err(|_| bad())?;
        if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let len: u8 = len.parse().map_err(|_| bad())?;
        Cidr::new(ip, len).ok_or_else(bad)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

fn bits(v6: bool) -> u8 {
    if v6 { 128 } else { 32 }
}

fn host_mask(v6: bool, prefix: u8) -> u128 {
    let host = (bits(v6) - prefix) as u32;
    1u128.checked_shl(host).map_or(u128::MAX, |v| v - 1)
}

fn to_u128(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(a) => (u32::from(a) as u128, false),
        IpAddr::V6(a) => (u128::from(a), true),
    }
}

fn from_u128(v: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(v))
    } else {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints_both_families() {
        assert_eq!(c("10.42.0.0/16").to_string(), "10.42.0.0/16");
        assert_eq!(c("10.42.7.9/16").to_string(), "10.42.0.0/16");
        assert_eq!(c("fd42::1/56").to_string(), "fd42::/56");
        assert_eq!(c("0.0.0.0/0").size(), 1 << 32);
        assert_eq!(c("::/0").size(), u128::MAX);
        for bad in [
            "10.42.0.0",
            "10.42.0.0/33",
            "10.42.0.0/",
            "10.42.0/16",
            "fd42::/129",
            "x/8",
            "10.0.0.0/+8",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn addresses_and_subnets() {
        let net = c("10.42.0.0/16");
        assert_eq!(net.subnet_count(24), 256);
        assert_eq!(net.subnet(24, 0), Some(c("10.42.0.0/24")));
        assert_eq!(net.subnet(24, 255), Some(c("10.42.255.0/24")));
        assert_eq!(net.subnet(24, 256), None);
        assert_eq!(net.subnet(8, 0), None);
        assert_eq!(net.subnet_index(&c("10.42.3.0/24")), Some(3));
        assert_eq!(net.subnet_index(&c("10.43.3.0/24")), None);
        let node = c("10.42.3.0/24");
        assert_eq!(node.nth(1), Some("10.42.3.1".parse().unwrap()));
        assert_eq!(node.nth(256), None);
        assert_eq!(node.index_of("10.42.3.200".parse().unwrap()), Some(200));
        assert_eq!(node.index_of("10.42.4.1".parse().unwrap()), None);
        assert!(net.overlaps(&node) && node.overlaps(&net));
        assert!(!node.overlaps(&c("10.42.4.0/24")));
        assert!(!node.contains("fd42::1".parse().unwrap()));
        let v6 = c("fd42::/56");
        assert_eq!(v6.subnet_count(64), 256);
        assert_eq!(v6.subnet(64, 2), Some(c("fd42:0:0:2::/64")));
        assert_eq!(v6.subnet_index(&c("fd42:0:0:2::/64")), Some(2));
        assert_eq!(
            c("fd42:0:0:2::/64").nth(1),
            Some("fd42:0:0:2::1".parse().unwrap())
        );
    }

    #[test]
    fn flag_lists() {
        let l = parse_list("10.42.0.0/16, fd42::/56").unwrap();
        assert_eq!(l.len(), 2);
        assert!(parse_list("10.42.0.0/16,10.44.0.0/16").is_err());
        assert!(parse_list("").is_err());
    }
}

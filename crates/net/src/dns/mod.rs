//! Cluster DNS, served by every node: names of Services and pods answered from the watch
//! cache per the Kubernetes DNS specification, other names forwarded to the node's own
//! resolvers and cached. The records (`index`), the answers (`answer`), the cache and the
//! pods' `resolv.conf` (`resolv`) are pure; `server` is the thin IO shell around them.

pub mod answer;
pub mod cache;
pub mod index;
pub mod resolv;
pub mod server;

use std::net::{IpAddr, SocketAddr};

pub use index::{Index, ServiceEntry};
pub use resolv::{PodDns, ResolvConf};
pub use server::DnsServer;

/// The upstream servers in the node's `resolv.conf`, leaving out the cluster DNS itself (a
/// node that resolves through it would otherwise forward to itself forever).
pub fn upstreams(conf: &ResolvConf, cluster_dns: IpAddr) -> Vec<SocketAddr> {
    conf.nameservers
        .iter()
        .filter_map(|s| s.parse::<IpAddr>().ok())
        .filter(|ip| *ip != cluster_dns)
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

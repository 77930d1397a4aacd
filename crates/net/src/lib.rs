//! The pod network: a `PodNetwork` gives each pod's network namespace its addresses and its
//! way out, and takes them back. `BridgeNetwork` is the real one (a node bridge, a veth per
//! pod, masquerade and host ports in nftables); `FakeNetwork` keeps the same books without
//! touching the kernel; both pass `conformance`. Address allocation (`ipam`) and the
//! bookkeeping they share (`book`) are pure. Beside the pod network: the Service proxy's
//! rules (`proxy`, pure, written by `nft`), NetworkPolicy as set elements (`policy`, pure),
//! the Ingress routing table (`ingress`, pure) and the cluster DNS (`dns`).

pub mod book;
pub mod bridge;
pub mod conformance;
pub mod conntrack;
pub mod dns;
pub mod fake;
pub mod ingress;
pub mod ipam;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod nftnl;
pub mod policy;
pub mod proxy;
pub mod routes;

use std::io;
use std::net::IpAddr;
use std::path::Path;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use api::cidr::Cidr;
pub use book::Record;
pub use bridge::{BridgeConfig, BridgeNetwork};
pub use fake::FakeNetwork;
pub use ipam::{Ipam, IpamError};

/// A transport protocol, as a container port names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Kubernetes' spelling (`TCP`, `UDP`, `SCTP`); anything else is `None`.
    pub fn from_kubernetes(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// The IP protocol number.
    pub fn number(&self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

/// A port of the node forwarded to a pod (a container's `hostPort`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostPort {
    pub protocol: Protocol,
    pub host_port: u16,
    pub container_port: u16,
    /// Only traffic to this node address, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
}

/// A pod to connect.
#[derive(Clone, Copy, Debug)]
pub struct Attachment<'a> {
    pub uid: &'a str,
    /// The pod's network namespace (a pinned namespace file).
    pub netns: &'a Path,
    pub host_ports: &'a [HostPort],
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("host port {port}/{protocol} is already used by pod {owner}", protocol = .protocol.as_str())]
    PortTaken {
        port: u16,
        protocol: Protocol,
        owner: String,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("nft: {0}")]
    Nft(String),
}

impl NetError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
        let what = what.into();
        move |source| NetError::Io { what, source }
    }
}

/// A node's pod network.
#[async_trait]
pub trait PodNetwork: Send + Sync {
    /// Connect the pod and return its addresses (one per IP family of the node's ranges). A
    /// pod that is connected already gets the addresses it has.
    async fn attach(&self, pod: &Attachment<'_>) -> Result<Vec<IpAddr>, NetError>;
    /// Disconnect the pod and free what it held. A pod that is not connected is fine.
    async fn detach(&self, uid: &str) -> Result<(), NetError>;
    /// The pods that hold addresses on this node.
    fn attached(&self) -> Vec<String>;
    /// A connected pod's addresses.
    fn addresses(&self, uid: &str) -> Option<Vec<IpAddr>>;
    /// The node's pod address ranges.
    fn ranges(&self) -> Vec<Cidr>;
}

//! What every `PodNetwork` must do, as checks both the fake and the real network run
//! (`crates/net/tests/conformance.rs`).

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::{Attachment, HostPort, NetError, PodNetwork, Protocol};

/// How a suite gets at the network under test.
pub struct Harness<'a> {
    /// Opens the network, the second time over the records the first left (a restart).
    pub open: &'a dyn Fn() -> Box<dyn PodNetwork>,
    /// A network namespace for a pod, pinned at the path returned.
    pub netns: &'a dyn Fn(&str) -> PathBuf,
}

async fn attach(
    net: &dyn PodNetwork,
    h: &Harness<'_>,
    uid: &str,
    ports: &[HostPort],
) -> Result<Vec<IpAddr>, NetError> {
    let ns = (h.netns)(uid);
    net.attach(&Attachment {
        uid,
        netns: &ns,
        host_ports: ports,
    })
    .await
}

fn tcp(host_port: u16, container_port: u16) -> HostPort {
    HostPort {
        protocol: Protocol::Tcp,
        host_port,
        container_port,
        host_ip: None,
    }
}

/// Each pod gets one address per range, inside it, never the gateway, never another pod's;
/// attaching again gives the same addresses.
pub async fn addresses(h: &Harness<'_>) {
    let net = (h.open)();
    let ranges = net.ranges();
    let mut seen = HashSet::new();
    for i in 0..8 {
        let uid = format!("addr-{i}");
        let ips = attach(&*net, h, &uid, &[]).await.expect("attach");
        assert_eq!(ips.len(), ranges.len(), "one address per range");
        for (ip, range) in ips.iter().zip(&ranges) {
            assert!(range.contains(*ip), "{ip} outside {range}");
            assert_ne!(Some(*ip), range.nth(1), "the gateway was handed out");
            assert!(seen.insert(*ip), "{ip} handed out twice");
        }
        assert_eq!(net.addresses(&uid), Some(ips.clone()));
        let again = attach(&*net, h, &uid, &[]).await.expect("attach again");
        assert_eq!(again, ips, "a second attach changed the addresses");
    }
    for i in 0..8 {
        net.detach(&format!("addr-{i}")).await.expect("detach");
    }
    assert!(net.attached().is_empty());
}

/// Detaching frees the pod's addresses, and detaching twice (or a pod never seen) is fine.
pub async fn detach(h: &Harness<'_>) {
    let net = (h.open)();
    attach(&*net, h, "det-a", &[]).await.expect("attach");
    assert_eq!(net.attached(), vec!["det-a".to_string()]);
    net.detach("det-a").await.expect("detach");
    net.detach("det-a").await.expect("detach again");
    net.detach("never-seen")
        .await
        .expect("detach an unknown pod");
    assert!(net.attached().is_empty());
    assert_eq!(net.addresses("det-a"), None);
}

/// A host port belongs to one pod at a time; it is free again once that pod is detached.
pub async fn host_ports(h: &Harness<'_>) {
    let net = (h.open)();
    attach(&*net, h, "hp-a", &[tcp(18080, 80)])
        .await
        .expect("attach with a host port");
    match attach(&*net, h, "hp-b", &[tcp(18080, 8080)]).await {
        Err(NetError::PortTaken { port, owner, .. }) => {
            assert_eq!((port, owner.as_str()), (18080, "hp-a"));
        }
        other => panic!("a taken host port was given again: {other:?}"),
    }
    // The refused pod holds nothing.
    assert_eq!(net.addresses("hp-b"), None);
    net.detach("hp-a").await.expect("detach");
    attach(&*net, h, "hp-b", &[tcp(18080, 8080)])
        .await
        .expect("the port is free again");
    net.detach("hp-b").await.expect("detach");
}

/// A restarted network knows the pods connected before, keeps their addresses, and does
/// not hand those to new pods.
pub async fn restart(h: &Harness<'_>) {
    let before = {
        let net = (h.open)();
        let a = attach(&*net, h, "rs-a", &[tcp(18081, 80)])
            .await
            .expect("attach");
        let b = attach(&*net, h, "rs-b", &[]).await.expect("attach");
        (a, b)
    };
    let net = (h.open)();
    let mut attached = net.attached();
    attached.sort();
    assert_eq!(attached, vec!["rs-a".to_string(), "rs-b".to_string()]);
    assert_eq!(net.addresses("rs-a"), Some(before.0.clone()));
    assert_eq!(
        attach(&*net, h, "rs-a", &[tcp(18081, 80)])
            .await
            .expect("attach again"),
        before.0
    );
    let c = attach(&*net, h, "rs-c", &[]).await.expect("attach new");
    assert!(
        c.iter()
            .all(|ip| !before.0.contains(ip) && !before.1.contains(ip))
    );
    assert!(matches!(
        attach(&*net, h, "rs-d", &[tcp(18081, 81)]).await,
        Err(NetError::PortTaken { .. })
    ));
    for uid in ["rs-a", "rs-b", "rs-c"] {
        net.detach(uid).await.expect("detach");
    }
    assert!(net.attached().is_empty());
}

/// Many pods come and go; at the end nothing is held.
pub async fn churn(h: &Harness<'_>, pods: usize) {
    let net = (h.open)();
    let mut live = std::collections::VecDeque::new();
    for i in 0..pods {
        let uid = format!("churn-{i}");
        attach(&*net, h, &uid, &[]).await.expect("attach");
        live.push_back(uid);
        if live.len() > 20 {
            net.detach(&live.pop_front().expect("a live pod"))
                .await
                .expect("detach");
        }
    }
    for uid in live {
        net.detach(&uid).await.expect("detach");
    }
    assert!(net.attached().is_empty());
}

/// Every check above.
pub async fn run_all(h: &Harness<'_>, churn_pods: usize) {
    addresses(h).await;
    detach(h).await;
    host_ports(h).await;
    restart(h).await;
    churn(h, churn_pods).await;
}

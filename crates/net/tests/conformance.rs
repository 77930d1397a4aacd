//! The pod network conformance suite, run by the fake and by the real bridge network. The real
//! one needs root (the test script runs the suite as root) and works inside a network
//! namespace the test makes for itself, so nothing it does reaches the machine's own network.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use net::conformance::{self, Harness};
use net::netlink::Netlink;
use net::{
    Attachment, BridgeConfig, BridgeNetwork, Cidr, FakeNetwork, HostPort, PodNetwork, Protocol,
};
use nix::sched::{CloneFlags, setns, unshare};

fn cidrs(list: &[&str]) -> Vec<Cidr> {
    list.iter().map(|c| c.parse().unwrap()).collect()
}

#[tokio::test(flavor = "current_thread")]
async fn fake_network_conforms() {
    let ranges = cidrs(&["10.42.0.0/24"]);
    let disk = net::fake::Disk::default();
    let open = || -> Box<dyn PodNetwork> { Box::new(FakeNetwork::reopen(&ranges, disk.clone())) };
    let netns = |_: &str| PathBuf::from("/nonexistent");
    conformance::run_all(
        &Harness {
            open: &open,
            netns: &netns,
        },
        2_000,
    )
    .await;
}

fn new_netns() -> (File, PathBuf) {
    net::netns::create().expect("a network namespace (needs root)")
}

/// Run `f` on a thread inside the namespace at `ns`.
fn inside<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = File::open(ns).expect("open namespace");
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("thread in namespace")
}

fn nft_path() -> PathBuf {
    net::nft::find()
        .expect("the tests need nft (Debian package nftables; the test script installs it)")
}

/// Everything runs on this thread after it moved into a namespace of its own ("the node"):
/// the runtime, the blocking threads it spawns and `nft` all inherit it.
fn on_test_node(test: impl FnOnce(&Path) + Send + 'static) {
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare a network namespace (needs root)");
        let dir = tempfile::tempdir().expect("tempdir");
        test(dir.path());
    })
    .join()
    .expect("the test thread panicked");
}

fn config(state: &Path) -> BridgeConfig {
    BridgeConfig {
        bridge: "berth0".into(),
        pod_cidrs: cidrs(&["10.42.7.0/24"]),
        cluster_cidrs: cidrs(&["10.42.0.0/16"]),
        service_cidrs: cidrs(&["10.43.0.0/16"]),
        state_dir: state.join("net"),
        mtu: None,
        nft: Some(nft_path()),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn bridge_network_conforms() {
    on_test_node(|dir| {
        let cfg = config(dir);
        let open = move || -> Box<dyn PodNetwork> {
            Box::new(BridgeNetwork::new(cfg.clone()).expect("bridge network"))
        };
        let held = Mutex::new(Vec::new());
        let netns = |_: &str| {
            let (f, p) = new_netns();
            held.lock().unwrap().push(f);
            p
        };
        runtime().block_on(conformance::run_all(
            &Harness {
                open: &open,
                netns: &netns,
            },
            300,
        ));
        // Nothing is left on the node: no veth, no record.
        let mut host = Netlink::open().unwrap();
        let left: Vec<String> = host
            .links()
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .filter(|n| n.starts_with("veth"))
            .collect();
        assert!(left.is_empty(), "veths left behind: {left:?}");
        assert_eq!(std::fs::read_dir(dir.join("net")).unwrap().count(), 0);
        // Through all those ports coming and going, the bridge kept its own hardware address
        // (pods' neighbour caches hold it for their gateway).
        let bridge = host.link("berth0").unwrap().unwrap();
        assert_eq!(bridge.mac, Some(vec![0x02, 0xbe, 10, 42, 7, 1]));
    });
}

fn serve_once(ns: &Path, addr: SocketAddr, reply: &'static str) -> std::thread::JoinHandle<String> {
    let file = File::open(ns).expect("open namespace");
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        let l = TcpListener::bind(addr).expect("bind in the pod");
        tx.send(()).unwrap();
        let (mut s, peer) = l.accept().expect("accept");
        s.write_all(reply.as_bytes()).unwrap();
        peer.ip().to_string()
    });
    rx.recv().unwrap();
    h
}

fn fetch(ns: &Path, to: SocketAddr) -> std::io::Result<String> {
    inside(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
}

/// Two pods talk by address; the node reaches a pod; a host port leads to its pod; a pod's
/// traffic to an address outside the cluster leaves with the node's address.
#[test]
fn pods_talk_over_the_bridge_and_leave_masqueraded() {
    on_test_node(|dir| {
        let rt = runtime();
        let net = BridgeNetwork::new(config(dir)).expect("bridge network");
        let (_a, a_ns) = new_netns();
        let (_b, b_ns) = new_netns();
        let port = HostPort {
            protocol: Protocol::Tcp,
            host_port: 8080,
            container_port: 80,
            host_ip: None,
        };
        let a_ip = rt
            .block_on(net.attach(&Attachment {
                uid: "a",
                netns: &a_ns,
                host_ports: &[],
            }))
            .unwrap()[0];
        let b_ip = rt
            .block_on(net.attach(&Attachment {
                uid: "b",
                netns: &b_ns,
                host_ports: std::slice::from_ref(&port),
            }))
            .unwrap()[0];

        // The pod's side: its address on eth0.
        let addrs = inside(&a_ns, || {
            let mut nl = Netlink::open().unwrap();
            let eth0 = nl.link("eth0").unwrap().expect("eth0 in the pod");
            assert!(eth0.up);
            nl.addresses(eth0.index).unwrap()
        });
        let v4: Vec<_> = addrs.into_iter().filter(|(ip, _)| ip.is_ipv4()).collect();
        assert_eq!(v4, vec![(a_ip, 24)]);

        // Pod to pod: the server sees the client's own address.
        let server = serve_once(&b_ns, SocketAddr::new(b_ip, 80), "from b");
        assert_eq!(fetch(&a_ns, SocketAddr::new(b_ip, 80)).unwrap(), "from b");
        assert_eq!(server.join().unwrap(), a_ip.to_string());

        // A host port: from pod a to the node's bridge address, port 8080, lands in b.
        let gw: IpAddr = "10.42.7.1".parse().unwrap();
        let server = serve_once(&b_ns, SocketAddr::new(b_ip, 80), "via host port");
        assert_eq!(
            fetch(&a_ns, SocketAddr::new(gw, 8080)).unwrap(),
            "via host port"
        );
        server.join().unwrap();

        // Outside the cluster: a "remote" namespace linked to the node by a veth pair; the
        // remote has no route to pods, so only a masqueraded connection can be answered.
        let (_r, r_ns) = new_netns();
        let remote: IpAddr = "192.0.2.2".parse().unwrap();
        {
            let mut nl = Netlink::open().unwrap();
            let r_file = File::open(&r_ns).unwrap();
            nl.add_veth("uplink", None, "uplink-r", &r_file, None)
                .unwrap();
            let up = nl.link("uplink").unwrap().unwrap();
            nl.add_address(up.index, "192.0.2.1".parse().unwrap(), 24)
                .unwrap();
        }
        inside(&r_ns, || {
            let mut nl = Netlink::open().unwrap();
            let l = nl.link("uplink-r").unwrap().unwrap();
            nl.add_address(l.index, "192.0.2.2".parse().unwrap(), 24)
                .unwrap();
            nl.set_up(l.index).unwrap();
        });
        let server = serve_once(&r_ns, SocketAddr::new(remote, 80), "outside");
        assert_eq!(
            fetch(&a_ns, SocketAddr::new(remote, 80)).unwrap(),
            "outside"
        );
        assert_eq!(server.join().unwrap(), "192.0.2.1", "not masqueraded");

        rt.block_on(net.detach("a")).unwrap();
        rt.block_on(net.detach("b")).unwrap();
        let mut host = Netlink::open().unwrap();
        assert!(host.link(&net::bridge::host_veth("a")).unwrap().is_none());
        // b's host port is gone with it.
        let rules = Command::new(nft_path())
            .args(["list", "map", "ip", "berth", "hostports"])
            .output()
            .unwrap();
        assert!(!String::from_utf8_lossy(&rules.stdout).contains("8080"));
    });
}

/// Service rules: a ClusterIP leads to its endpoints (the pod itself too: hairpin), a
/// Service port with no endpoint refuses at once, and changes move traffic.
#[test]
fn cluster_ips_reach_endpoints_and_refuse_without_any() {
    use net::proxy::{Backend, Frontend, State};
    on_test_node(|dir| {
        let rt = runtime();
        let net = BridgeNetwork::new(config(dir)).expect("bridge network");
        let (_a, a_ns) = new_netns();
        let (_b, b_ns) = new_netns();
        let attach = |uid: &'static str, ns: &Path| {
            rt.block_on(net.attach(&Attachment {
                uid,
                netns: ns,
                host_ports: &[],
            }))
            .unwrap()[0]
        };
        let a_ip = attach("a", &a_ns);
        let b_ip = attach("b", &b_ns);
        let vip: IpAddr = "10.43.0.10".parse().unwrap();
        let empty: IpAddr = "10.43.0.11".parse().unwrap();
        let front = |ip| Frontend {
            ip,
            protocol: Protocol::Tcp,
            port: 80,
        };
        let state = State {
            frontends: [
                (
                    front(vip),
                    vec![Backend {
                        ip: b_ip,
                        port: 8080,
                    }],
                ),
                (front(empty), vec![]),
            ]
            .into_iter()
            .collect(),
            node_ports: [30080, 30081]
                .map(|port| {
                    (
                        net::proxy::NodePort {
                            protocol: Protocol::Tcp,
                            port,
                        },
                        vec![Backend {
                            ip: b_ip,
                            port: 8080,
                        }],
                    )
                })
                .into_iter()
                .collect(),
            local_node_ports: [net::proxy::NodePort {
                protocol: Protocol::Tcp,
                port: 30081,
            }]
            .into_iter()
            .collect(),
            affinity: Default::default(),
        };
        // A port with more endpoints than the NAT chains dispatch directly goes through the
        // verdict map to its count's chain (its endpoints here: b, many times over).
        let crowded: IpAddr = "10.43.0.12".parse().unwrap();
        let mut state = state;
        let many = vec![
            Backend {
                ip: b_ip,
                port: 8080,
            };
            net::proxy::DIRECT + 1
        ];
        state.frontends.insert(front(crowded), many);
        let first = net::proxy::TABLES[0];
        net::nft::load_proxy(&nft_path(), first, &state, net::proxy::DIRECT + 1).unwrap();

        let server = serve_once(&b_ns, SocketAddr::new(b_ip, 8080), "b via service");
        assert_eq!(
            fetch(&a_ns, SocketAddr::new(vip, 80)).unwrap(),
            "b via service"
        );
        assert_eq!(server.join().unwrap(), a_ip.to_string());
        let server = serve_once(
            &b_ns,
            SocketAddr::new(b_ip, 8080),
            "b via a crowded service",
        );
        assert_eq!(
            fetch(&a_ns, SocketAddr::new(crowded, 80)).unwrap(),
            "b via a crowded service"
        );
        server.join().unwrap();
        state.frontends.remove(&front(crowded));
        // Hairpin: b reaches itself through its Service.
        let server = serve_once(&b_ns, SocketAddr::new(b_ip, 8080), "b to itself");
        assert_eq!(
            fetch(&b_ns, SocketAddr::new(vip, 80)).unwrap(),
            "b to itself"
        );
        server.join().unwrap();
        // No endpoints: refused at once, not timed out.
        let t = std::time::Instant::now();
        let err = fetch(&a_ns, SocketAddr::new(empty, 80)).unwrap_err();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "{err} after {:?}",
            t.elapsed()
        );
        // An address in the service range with no Service at all never leaves the node:
        // it is routed to the bridge, where nobody answers.
        assert!(fetch(&a_ns, SocketAddr::new("10.43.0.99".parse().unwrap(), 80)).is_err());

        // Moving the Service to a itself: only its elements change.
        let moved = State {
            frontends: [
                (
                    front(vip),
                    vec![Backend {
                        ip: a_ip,
                        port: 8080,
                    }],
                ),
                (front(empty), vec![]),
            ]
            .into_iter()
            .collect(),
            node_ports: state.node_ports.clone(),
            local_node_ports: state.local_node_ports.clone(),
            affinity: Default::default(),
        };
        net::nft::apply_changes(
            &nft_path(),
            first,
            &net::proxy::changes(first, &state, &moved),
        )
        .unwrap();
        let server = serve_once(&a_ns, SocketAddr::new(a_ip, 8080), "now a");
        assert_eq!(fetch(&b_ns, SocketAddr::new(vip, 80)).unwrap(), "now a");
        server.join().unwrap();

        // Client affinity: a third pod's connections all go to the endpoint it first got,
        // while without affinity they spread over both.
        let (_c, c_ns) = new_netns();
        attach("c", &c_ns);
        let _a_srv = serve_many(&a_ns, SocketAddr::new(a_ip, 8080), "a");
        let _b_srv = serve_many(&b_ns, SocketAddr::new(b_ip, 8080), "b");
        let both = vec![
            Backend {
                ip: a_ip,
                port: 8080,
            },
            Backend {
                ip: b_ip,
                port: 8080,
            },
        ];
        let spread = State {
            frontends: [(front(vip), both.clone()), (front(empty), vec![])]
                .into_iter()
                .collect(),
            ..moved.clone()
        };
        // The pods that answer `n` connections to the Service.
        let replies = |n: usize| -> std::collections::BTreeSet<String> {
            (0..n)
                .map(|_| fetch(&c_ns, SocketAddr::new(vip, 80)).unwrap())
                .collect()
        };
        net::nft::apply_changes(
            &nft_path(),
            first,
            &net::proxy::changes(first, &moved, &spread),
        )
        .unwrap();
        let seen = replies(30);
        assert_eq!(seen.len(), 2, "{seen:?}");
        let sticky = State {
            affinity: [(front(vip), 60)].into_iter().collect(),
            ..spread.clone()
        };
        net::nft::apply_changes(
            &nft_path(),
            first,
            &net::proxy::changes(first, &spread, &sticky),
        )
        .unwrap();
        let seen = replies(30);
        assert_eq!(seen.len(), 1, "{seen:?}");
        // The same whole, and back to no affinity: the affinity chains and sets go.
        // A full load into the other table, the first dropped after.
        let second = net::proxy::TABLES[1];
        net::nft::load_proxy(&nft_path(), second, &sticky, 4).unwrap();
        net::nft::drop_tables(&nft_path(), &[("ip".into(), first.into())]).unwrap();
        let again = replies(10);
        assert_eq!(again.len(), 1, "{again:?}");
        net::nft::apply_changes(
            &nft_path(),
            second,
            &net::proxy::changes(second, &sticky, &spread),
        )
        .unwrap();
        let listing = Command::new(nft_path())
            .args(["list", "table", "ip", second])
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        assert!(!listing.contains("aff_"), "{listing}");
    });
}

/// Elements written over netlink are the very elements `nft` writes from text: a table loaded
/// whole lists the same as one built up from nothing by the text changes, in both families,
/// with node ports, empty Services and client affinity.
#[test]
fn netlink_elements_match_nft_text() {
    use net::proxy::{Backend, Frontend, NodePort, State};
    on_test_node(|_| {
        let be = |ip: &str, port| Backend {
            ip: ip.parse().unwrap(),
            port,
        };
        let front = |ip: &str, protocol, port| Frontend {
            ip: ip.parse().unwrap(),
            protocol,
            port,
        };
        let mut state = State::default();
        state.frontends.insert(
            front("10.43.0.10", Protocol::Tcp, 80),
            vec![be("10.42.0.2", 8080), be("10.42.0.3", 8080)],
        );
        state.frontends.insert(
            front("10.43.0.11", Protocol::Udp, 53),
            vec![be("10.42.0.4", 5353)],
        );
        state
            .frontends
            .insert(front("10.43.0.12", Protocol::Sctp, 9), vec![]);
        state.frontends.insert(
            front("fd43::10", Protocol::Tcp, 443),
            vec![
                be("fd42::2", 8443),
                be("fd42::3", 8443),
                be("fd42::4", 8443),
            ],
        );
        let sticky = front("10.43.0.13", Protocol::Tcp, 80);
        state.frontends.insert(sticky, vec![be("10.42.0.5", 80)]);
        state.affinity.insert(sticky, 600);
        let np = NodePort {
            protocol: Protocol::Tcp,
            port: 30080,
        };
        state.node_ports.insert(np, vec![be("10.42.0.2", 8080)]);
        state.local_node_ports.insert(np);
        state.node_ports.insert(
            NodePort {
                protocol: Protocol::Udp,
                port: 30053,
            },
            vec![],
        );
        let list = |table: &str| -> String {
            let mut out = String::new();
            for fam in ["ip", "ip6"] {
                let o = Command::new(nft_path())
                    .args(["list", "table", fam, table])
                    .output()
                    .unwrap();
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                out.push_str(&String::from_utf8_lossy(&o.stdout).replace(table, "T"));
            }
            out
        };
        let [by_netlink, by_text] = net::proxy::TABLES;
        net::nft::load_proxy(&nft_path(), by_netlink, &state, 4).unwrap();
        let empty = State::default();
        let mut script = net::proxy::skeleton(false, by_text, &empty, 4);
        script.push_str(&net::proxy::skeleton(true, by_text, &empty, 4));
        script.push_str(&net::proxy::changes(by_text, &empty, &state).script(by_text));
        net::nft::apply(&nft_path(), &script).unwrap();
        let (a, b) = (list(by_netlink), list(by_text));
        assert!(
            a.contains("fd42::3 . 8443") && a.contains("goto aff_"),
            "{a}"
        );
        assert_eq!(a, b);
        // Changes over netlink (deletions too) reach what text builds from nothing.
        let mut next = state.clone();
        next.frontends
            .remove(&front("10.43.0.11", Protocol::Udp, 53));
        next.frontends.insert(
            front("10.43.0.10", Protocol::Tcp, 80),
            vec![be("10.42.0.3", 8080)],
        );
        next.frontends
            .insert(front("fd43::10", Protocol::Tcp, 443), vec![]);
        next.node_ports.remove(&np);
        next.local_node_ports.clear();
        let moves = net::proxy::changes(by_netlink, &state, &next);
        assert!(moves.elements_only());
        net::nft::apply_changes(&nft_path(), by_netlink, &moves).unwrap();
        net::nft::drop_tables(
            &nft_path(),
            &[
                ("ip".into(), by_text.into()),
                ("ip6".into(), by_text.into()),
            ],
        )
        .unwrap();
        let mut script = net::proxy::skeleton(false, by_text, &empty, 4);
        script.push_str(&net::proxy::skeleton(true, by_text, &empty, 4));
        script.push_str(&net::proxy::changes(by_text, &empty, &next).script(by_text));
        net::nft::apply(&nft_path(), &script).unwrap();
        assert_eq!(list(by_netlink), list(by_text));
    });
}

/// Serve `reply` to every connection until the process ends.
fn serve_many(ns: &Path, addr: SocketAddr, reply: &'static str) -> std::thread::JoinHandle<()> {
    let file = File::open(ns).expect("open namespace");
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        let l = TcpListener::bind(addr).expect("bind in the pod");
        tx.send(()).unwrap();
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(reply.as_bytes());
        }
    });
    rx.recv().unwrap();
    h
}

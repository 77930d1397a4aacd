//! NetworkPolicy rules in the kernel: the engine's elements, written over netlink into the
//! policy table, decide real connections between pods on a bridge. Needs root (the test
//! script runs the suite as root); everything happens inside a network namespace the test
//! makes, so no packet reaches the machine's own network.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use net::policy::{Engine, NamedPort, PodInfo, Policy};
use net::{Attachment, BridgeConfig, BridgeNetwork, Cidr, PodNetwork, Protocol};
use nix::sched::{CloneFlags, setns, unshare};
use serde_json::json;

fn nft_path() -> PathBuf {
    net::nft::find()
        .expect("the tests need nft (Debian package nftables; the test script installs it)")
}

fn policy(ns: &str, spec: serde_json::Value) -> Policy {
    let p: api::k8s_openapi::api::networking::v1::NetworkPolicy =
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": ns}, "spec": spec}))
            .unwrap();
    Policy::from_object(&p)
}

/// Serve a short reply to every connection, inside the namespace `ns`.
fn serve(ns: &Path, port: u16) {
    let file = File::open(ns).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).unwrap();
        let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
        tx.send(()).unwrap();
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(b"hello");
        }
    });
    rx.recv().unwrap();
}

/// Whether a connection from namespace `ns` to `to` gets the reply.
fn reaches(ns: &Path, to: SocketAddr) -> bool {
    let file = File::open(ns).unwrap();
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).unwrap();
        let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_millis(300)) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).is_ok() && out == "hello"
    })
    .join()
    .unwrap()
}

#[test]
fn policies_decide_connections_between_pods() {
    std::thread::spawn(|| {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare a network namespace (needs root)");
        let dir = tempfile::tempdir().unwrap();
        let cfg = BridgeConfig {
            bridge: "berth0".into(),
            pod_cidrs: vec!["10.42.7.0/24".parse::<Cidr>().unwrap()],
            cluster_cidrs: vec!["10.42.0.0/16".parse().unwrap()],
            service_cidrs: vec!["10.43.0.0/16".parse().unwrap()],
            state_dir: dir.path().join("net"),
            mtu: None,
            nft: Some(nft_path()),
        };
        let network = BridgeNetwork::new(cfg).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut held = Vec::new();
        let mut pod = |uid: &str| -> (PathBuf, IpAddr) {
            let (f, path) = net::netns::create().unwrap();
            held.push(f);
            let ips = rt
                .block_on(network.attach(&Attachment {
                    uid,
                    netns: &path,
                    host_ports: &[],
                }))
                .unwrap();
            (path, ips[0])
        };
        let (web_ns, web) = pod("web");
        let (client_ns, client) = pod("client");
        let (other_ns, other) = pod("other");
        serve(&web_ns, 8080);
        serve(&client_ns, 8080);
        let info = |labels: &[(&str, &str)], ip: IpAddr| PodInfo {
            namespace: "default".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ports: vec![NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080,
            }],
            ips: vec![ip],
        };
        let mut engine = Engine::new();
        engine.attach("web", info(&[("app", "web")], web));
        engine.attach("client", info(&[("role", "client")], client));
        engine.attach("other", info(&[("role", "other")], other));
        let [table, _] = net::policy::TABLES;
        net::nft::load_policy(&nft_path(), table, None, &engine.take_ops()).unwrap();
        let web_at = SocketAddr::new(web, 8080);
        assert!(reaches(&client_ns, web_at), "no policy: open");

        let write = |engine: &mut Engine| {
            net::nftnl::write(table, &engine.take_ops()).unwrap();
        };
        engine.set_policy(
            "default",
            "deny",
            Some(policy("default", json!({"podSelector": {}}))),
        );
        write(&mut engine);
        // Every new connection is refused, whichever source port it has.
        assert!(
            (0..4).all(|_| !reaches(&client_ns, web_at)),
            "deny all ingress"
        );
        assert!(!reaches(&other_ns, web_at));

        engine.set_policy(
            "default",
            "allow",
            Some(policy(
                "default",
                json!({"podSelector": {"matchLabels": {"app": "web"}},
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                                    "ports": [{"port": "http"}]}]}),
            )),
        );
        write(&mut engine);
        assert!(reaches(&client_ns, web_at), "the client by label, the port by name");
        assert!(!reaches(&other_ns, web_at));
        // The client is isolated too (the deny policy selects every pod): web may answer
        // its connections, but not open one to it.
        assert!(!reaches(&web_ns, SocketAddr::new(client, 8080)));

        // Egress: the client may reach only 10.42.7.0/24 less web's address.
        engine.set_policy(
            "default",
            "egress",
            Some(policy(
                "default",
                json!({"podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"],
                       "egress": [{"to": [{"ipBlock": {"cidr": "10.42.7.0/24",
                                                        "except": [format!("{web}/32")]}}]}]}),
            )),
        );
        write(&mut engine);
        assert!(!reaches(&client_ns, web_at), "egress excepts web");

        // The sets hold ranges as nft reads them.
        let out = Command::new(nft_path())
            .args(["list", "table", "ip", table])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!(". {web} . 6 . 8080")) || text.contains(&format!(". {web} . tcp . 8080")),
            "{text}"
        );

        // Everything removed: open again, and the sets are empty.
        for name in ["deny", "allow", "egress"] {
            engine.set_policy("default", name, None);
        }
        write(&mut engine);
        assert!(reaches(&client_ns, web_at));
        assert!(reaches(&other_ns, web_at));
        for uid in ["web", "client", "other"] {
            engine.detach(uid);
        }
        write(&mut engine);
        let out = Command::new(nft_path())
            .args(["-j", "list", "set", "ip", table, "in_pod"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("\"elem\""), "{text}");
    })
    .join()
    .expect("the test thread panicked");
}

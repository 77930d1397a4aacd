//! `EtcdStore` passes the same conformance suite as the embedded store, against a real etcd
//! (Debian's `etcd-server`; `scripts/test.sh` installs it): a fresh single-member cluster on
//! loopback ports for every check, and a three-member cluster for a write while a member is
//! down.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use store::conformance::{Subject, run_all};
use store::{Condition, EtcdConfig, EtcdStore, Store};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// etcd members on loopback, killed and removed when dropped.
struct Etcd {
    members: Vec<Child>,
    clients: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

impl Etcd {
    fn start(n: usize) -> Etcd {
        let bin = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("etcd is needed (Debian etcd-server; scripts/test.sh installs it)");
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut members = Vec::new();
        let mut clients = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let url = format!("http://127.0.0.1:{client}");
            let child = Command::new(bin)
                .args([
                    "--name",
                    &format!("m{i}"),
                    "--data-dir",
                    dir.path().join(format!("m{i}")).to_str().unwrap(),
                    "--listen-client-urls",
                    &url,
                    "--advertise-client-urls",
                    &url,
                    "--listen-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-cluster",
                    &initial.join(","),
                    "--initial-cluster-state",
                    "new",
                    "--heartbeat-interval",
                    "50",
                    "--election-timeout",
                    "500",
                ])
                .env("ETCD_UNSUPPORTED_ARCH", "")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            members.push(child);
            clients.push(format!("127.0.0.1:{client}"));
        }
        Etcd {
            members,
            clients,
            _dir: dir,
        }
    }

    async fn store(&self) -> EtcdStore {
        let cfg = EtcdConfig {
            endpoints: self.clients.clone(),
            ..Default::default()
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match EtcdStore::connect(&cfg).await {
                Ok(s) => return s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("etcd did not come up: {e}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_conforms() {
    run_all(|| async {
        let etcd = Etcd::start(1);
        let store = etcd.store().await;
        Subject {
            store: Arc::new(store),
            guard: Box::new(etcd),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_on_while_a_member_is_down() {
    let mut etcd = Etcd::start(3);
    let store = etcd.store().await;
    let first = store.create("/k", Bytes::from_static(b"1")).await.unwrap();
    let mut m = etcd.members.remove(0);
    m.kill().unwrap();
    m.wait().unwrap();
    // The other two still make a quorum; the client moves to them.
    let deadline = Instant::now() + Duration::from_secs(20);
    // (Unconditioned: a retry after an answer lost with the member must not conflict with
    // itself.)
    let second = loop {
        match store
            .put("/k", Bytes::from_static(b"2"), Condition::Any)
            .await
        {
            Ok(kv) => break kv,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no write with two of three members: {e}"),
        }
    };
    assert!(second.mod_revision > first.mod_revision);
    assert_eq!(store.get("/k").await.unwrap().unwrap().value, "2");
}

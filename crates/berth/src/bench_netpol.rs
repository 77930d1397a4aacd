//! `berth bench netpol`: what NetworkPolicy enforcement costs and how fast it follows a change.
//! Inside a network namespace made for the run it starts a real `berth server`, wires real
//! pod network namespaces on a `BridgeNetwork` (a server pod, a client pod and `--pods` bare
//! ones), writes their Pod objects and `--policies` NetworkPolicies through the API, and runs
//! the node's enforcement (`agent::policy`) against that server. It measures:
//!
//! - connect() latency from the client pod to the server pod with no policy table, and with
//!   every policy in place (the server pod isolated, the client admitted by a rule);
//! - a pod taken in (`admit`: its namespace's policies read, its rules written), the cost a
//!   pod pays before its first container starts;
//! - a policy change written through the API -> the kernel enforcing it, seen by a prober
//!   in the client pod (a connection refused after a deny, accepted after an allow).
//!
//! Prints a table; asserts nothing.

use std::fs::File;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use api::k8s_openapi::api::core::v1::Pod;
use bytes::Bytes;
use http::Method;
use net::{Attachment, PodNetwork};
use serde_json::json;

use crate::bench::{create_many, ms, percentile, start_server};

#[derive(Clone, Debug, clap::Args)]
pub struct NetpolBenchArgs {
    /// Bare pods (network namespaces), each with a label of its own.
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// NetworkPolicies, each selecting one bare pod and admitting another.
    #[arg(long, default_value_t = 1000)]
    policies: usize,
    /// Policy changes timed (half deny, half allow).
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// Connections timed per connect() figure.
    #[arg(long, default_value_t = 2000)]
    connects: usize,
}

const NS: &str = "bench";
const PORT: u16 = 8080;

/// A thread inside a pod's network namespace that runs what it is sent.
struct InPod {
    tx: mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl InPod {
    fn new(netns: PathBuf) -> Result<InPod> {
        let ns = File::open(&netns)?;
        let (tx, rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::spawn(move || {
            if nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                return;
            }
            for job in rx {
                job();
            }
        });
        Ok(InPod { tx })
    }

    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .ok()
            .context("the pod's thread is gone")?;
        rx.recv().context("the pod's thread is gone")
    }
}

/// Accept and close connections on the pod's port, forever.
fn serve(pod: &InPod, ip: IpAddr) -> Result<()> {
    let listener = pod.run(move || TcpListener::bind(SocketAddr::new(ip, PORT)))??;
    std::thread::spawn(move || for _ in listener.incoming() {});
    Ok(())
}

/// connect() latencies from inside `pod` to `to`, `n` times, and how many got no answer
/// within 3 s.
fn connects(pod: &InPod, to: SocketAddr, n: usize) -> Result<(Vec<Duration>, usize)> {
    let (mut out, failed) = pod.run(move || {
        let mut v = Vec::with_capacity(n);
        let mut failed = 0;
        for _ in 0..n {
            let t = Instant::now();
            match TcpStream::connect_timeout(&to, Duration::from_secs(3)) {
                Ok(s) => {
                    v.push(t.elapsed());
                    drop(s);
                }
                Err(_) => failed += 1,
            }
        }
        (v, failed)
    })?;
    out.sort();
    Ok((out, failed))
}

fn connect_row(name: &str, (d, failed): &(Vec<Duration>, usize)) {
    row(name, d);
    if *failed > 0 {
        println!("    ({failed} connections got no answer within 3 s)");
    }
}

/// Probe from inside `pod` until a connection to `to` succeeds (`open`) or is not answered
/// within 3 ms (`!open`); when that happened.
fn until(pod: &InPod, to: SocketAddr, open: bool) -> Result<Instant> {
    pod.run(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let ok = TcpStream::connect_timeout(&to, Duration::from_millis(3)).is_ok();
            if ok == open {
                return Some(Instant::now());
            }
            if !ok {
                continue;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        None
    })?
    .context("the change was not enforced within 10 s")
}

/// The hardware address of the pod's `eth0`.
fn mac(pod: &InPod) -> Result<String> {
    let out = pod.run(|| {
        std::process::Command::new("ip")
            .args(["-br", "link", "show", "eth0"])
            .output()
    })??;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(2)
        .map(str::to_string)
        .context("no hardware address on eth0")
}

/// Permanent neighbour entries for each other in two pods.
fn neighbours(a: &InPod, b: &InPod, a_ip: IpAddr, b_ip: IpAddr) -> Result<()> {
    let (a_mac, b_mac) = (mac(a)?, mac(b)?);
    for (pod, ip, lladdr) in [(a, b_ip, b_mac), (b, a_ip, a_mac)] {
        let status = pod.run(move || {
            std::process::Command::new("ip")
                .args(["neigh", "replace", &ip.to_string(), "lladdr", &lladdr])
                .args(["dev", "eth0", "nud", "permanent"])
                .status()
        })??;
        if !status.success() {
            bail!("ip neigh replace failed");
        }
    }
    Ok(())
}

fn pod_json(name: &str, app: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NS, "labels": {"app": app}},
           // Nothing schedules or runs them: only their labels matter here.
           "spec": {"schedulerName": "bench-none",
                    "containers": [{"name": "c", "image": "none",
                                    "ports": [{"name": "http", "containerPort": PORT}]}]}})
}

fn admitting(selected: &str, from: &str) -> serde_json::Value {
    json!({"podSelector": {"matchLabels": {"app": selected}}, "policyTypes": ["Ingress"],
           "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": from}}}],
                        "ports": [{"protocol": "TCP", "port": "http"}]}]})
}

fn row(name: &str, d: &[Duration]) {
    println!(
        "  {name:<58} p50 {:>9}   p99 {:>9}",
        ms(percentile(d, 0.50)),
        ms(percentile(d, 0.99))
    );
}

pub async fn run(args: NetpolBenchArgs) -> Result<()> {
    let Some(nft) = net::nft::find() else {
        bail!("berth bench netpol needs nft (Debian: apt-get install nftables)");
    };
    println!(
        "berth bench netpol: {} pods, {} policies, {} changes; a real berth server, pods as network namespaces on the bridge",
        args.pods, args.policies, args.changes
    );
    let server = start_server(&[]).await?;
    let c = server.client.clone();
    let dir = tempfile::tempdir()?;
    let network = crate::bench_net::network(dir.path())?;

    // The pods' network namespaces and addresses.
    let mut held = Vec::new();
    let mut pods: Vec<(String, String, PathBuf, IpAddr)> = Vec::new();
    let names: Vec<(String, String)> = [("srv", "srv"), ("cli", "cli")]
        .iter()
        .map(|(n, a)| (n.to_string(), a.to_string()))
        .chain((0..args.pods).map(|i| (format!("p{i}"), format!("p{i}"))))
        .collect();
    for (name, app) in names {
        let (f, path) = net::netns::create()?;
        held.push(f);
        let ip = network
            .attach(&Attachment {
                uid: &name,
                netns: &path,
                host_ports: &[],
            })
            .await?[0];
        pods.push((name, app, path, ip));
    }
    let srv = InPod::new(pods[0].2.clone())?;
    let cli = InPod::new(pods[1].2.clone())?;
    let srv_at = SocketAddr::new(pods[0].3, PORT);
    serve(&srv, pods[0].3)?;

    // With a thousand ports on the bridge, one ARP broadcast becomes a thousand packets on
    // one CPU's backlog (net.core.netdev_max_backlog, 1,000), and the ports flooded last (the
    // oldest) lose it: the two pods timed here know each other's hardware address instead.
    neighbours(&srv, &cli, pods[0].3, pods[1].3)?;
    println!("\nconnect() from the client pod to the server pod");
    let bare = connects(&cli, srv_at, args.connects)?;
    connect_row("no policy table", &bare);

    // The objects.
    c.request_json(
        Method::POST,
        "/api/v1/namespaces",
        Some(&json!({"metadata": {"name": NS}})),
    )
    .await?;
    let objects: Arc<Vec<serde_json::Value>> =
        Arc::new(pods.iter().map(|(n, a, _, _)| pod_json(n, a)).collect());
    let o = objects.clone();
    create_many(
        &c,
        &format!("/api/v1/namespaces/{NS}/pods"),
        objects.len(),
        8,
        move |i| Bytes::from(o[i].to_string()),
    )
    .await?;
    let n = args.pods.max(1);
    let policy = move |i: usize| {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": format!("pol-{i}"), "namespace": NS},
               "spec": admitting(&format!("p{}", i % n), &format!("p{}", (i + 1) % n))})
    };
    create_many(
        &c,
        &format!("/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies"),
        args.policies,
        8,
        move |i| Bytes::from(policy(i).to_string()),
    )
    .await?;
    let srv_policy =
        format!("/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/srv-allow");
    c.request_json(
        Method::POST,
        &format!("/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies"),
        Some(&json!({"metadata": {"name": "srv-allow"}, "spec": admitting("srv", "cli")})),
    )
    .await?;

    // The node's enforcement, against the server, and every pod taken in as the worker
    // would before its first container.
    let policies = Arc::new(agent::policy::Policies::new(
        agent::policy::PolicyFeed {
            client: c.clone(),
            all_pods: true,
        },
        nft,
        None,
    ));
    let started = Instant::now();
    let follower = tokio::spawn(policies.clone().run("bench-node".into()));
    let (list, _) = c
        .list::<Pod>(Some(NS), &client::ListParams::default())
        .await?;
    let by_name: std::collections::HashMap<String, Pod> = list
        .into_iter()
        .map(|p| (p.metadata.name.clone().unwrap_or_default(), p))
        .collect();
    let mut admits = Vec::with_capacity(pods.len());
    let mut first_load = None;
    for (name, _, _, ip) in &pods {
        let pod = by_name.get(name).context("a pod object is missing")?;
        let t = Instant::now();
        policies
            .admit(pod, &[*ip])
            .await
            .map_err(anyhow::Error::msg)?;
        if first_load.is_none() {
            first_load = Some(started.elapsed());
            continue;
        }
        admits.push(t.elapsed());
    }
    admits.sort();
    println!(
        "  {:<58} {:>9}",
        "with every policy: first load (list, watch, table written)",
        ms(first_load.unwrap_or_default())
    );
    let with = connects(&cli, srv_at, args.connects)?;
    connect_row(
        &format!(
            "{} policies, the server isolated, the client admitted",
            args.policies + 1
        ),
        &with,
    );
    println!("\na pod taken in before its first container (policies read, rules written)");
    row("admit", &admits);

    // Changes through the API: deny the client, allow it again.
    let mut deny = Vec::new();
    let mut allow = Vec::new();
    for i in 0..args.changes {
        let (from, open) = if i % 2 == 0 {
            ("nobody", false)
        } else {
            ("cli", true)
        };
        let patch = json!({"spec": admitting("srv", from)});
        let t = Instant::now();
        c.request(
            Method::PATCH,
            &srv_policy,
            "application/merge-patch+json",
            Bytes::from(patch.to_string()),
        )
        .await?;
        let cli_ref = &cli;
        let seen = tokio::task::block_in_place(|| until(cli_ref, srv_at, open))?;
        let d = seen.saturating_duration_since(t);
        if open { allow.push(d) } else { deny.push(d) }
    }
    deny.sort();
    allow.sort();
    let mut all: Vec<Duration> = deny.iter().chain(&allow).copied().collect();
    all.sort();
    println!("\na policy change written through the API -> enforced (prober resolution 3 ms)");
    row("deny the client (a connection no longer answered)", &deny);
    row("allow it again (a connection accepted)", &allow);
    row("every change", &all);
    println!("goal: change -> enforced p99 <= 100 ms with 1,000 policies and 1,000 pods");

    follower.abort();
    drop(server);
    for (name, ..) in &pods {
        let _ = network.detach(name).await;
    }
    Ok(())
}

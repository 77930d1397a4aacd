//! `berth bench net`: what wiring a pod into the network costs. Everything happens inside a
//! network namespace made for the run (the process moves into it before anything starts), so
//! the machine's own network is never touched. It measures, on the real `BridgeNetwork`:
//!
//! - pod network set-up (attach: address, veth pair made in the pod's namespace, bridge,
//!   address and route inside) and tear-down, one pod at a time (p50/p99);
//! - beside it the floor: a bare veth pair made in the same way, with an address and up,
//!   and nothing else;
//! - churn: many pods attached and detached, the network dropped and rebuilt from its
//!   records half-way with pods still attached (as after an agent `kill -9`), and then the
//!   addresses still held, which must be none.
//!
//! - pod-to-pod TCP throughput (iperf3) over the bridge, beside a bare veth pair;
//! - the Service proxy's data plane at 1, 10,000 and 30,000 Services (2 endpoints each): the
//!   full load of the table, a change (a new Service) -> first connect through it, and
//!   connect() latency through a ClusterIP beside a direct connect to the pod.
//!
//! Prints a table; asserts nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use net::netlink::Netlink;
use net::{Attachment, BridgeConfig, BridgeNetwork, PodNetwork};

use crate::bench::{ms, percentile};

#[derive(Clone, Debug, clap::Args)]
pub struct NetBenchArgs {
    /// Pods attached one after another for the latency figures.
    #[arg(long, default_value_t = 500)]
    pods: usize,
    /// Pods attached and detached in the churn.
    #[arg(long, default_value_t = 10_000)]
    churn: usize,
    /// Seconds each iperf3 run lasts (0: no throughput figures).
    #[arg(long, default_value_t = 5)]
    iperf_seconds: u64,
    /// Service counts the proxy is measured at.
    #[arg(long, value_delimiter = ',', default_value = "1,10000,30000")]
    services: Vec<usize>,
}

/// Move the whole process into a network namespace of its own: call before any thread starts.
pub fn isolate() -> Result<()> {
    net::netns::isolate().context("making a network namespace for the benchmark (needs root)")
}

pub(crate) fn network(state: &Path) -> Result<BridgeNetwork> {
    Ok(BridgeNetwork::new(BridgeConfig {
        bridge: "berth0".into(),
        pod_cidrs: vec!["10.42.0.0/16".parse()?],
        cluster_cidrs: vec!["10.42.0.0/16".parse()?],
        service_cidrs: vec!["10.43.0.0/16".parse()?],
        state_dir: state.join("net"),
        mtu: None,
        nft: net::nft::find(),
    })?)
}

fn summary(name: &str, mut d: Vec<Duration>) {
    d.sort();
    println!(
        "  {name:<44} p50 {:>9}   p99 {:>9}",
        ms(percentile(&d, 0.50)),
        ms(percentile(&d, 0.99))
    );
}

pub async fn run(args: NetBenchArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    println!(
        "berth bench net: {} pods one at a time, {} in the churn",
        args.pods, args.churn
    );

    // The floor: a veth pair with its peer made in the pod's namespace, an address, up.
    let mut floor = Vec::with_capacity(args.pods);
    {
        let mut host = Netlink::open()?;
        for i in 0..args.pods {
            let (ns, path) = net::netns::create()?;
            let t = Instant::now();
            host.add_veth("floor0", None, "eth0", &ns, None)?;
            let mut pod = Netlink::open_in(&path)?;
            let eth0 = pod.link("eth0")?.context("eth0")?;
            let ip = std::net::Ipv4Addr::new(10, 99, (i / 250) as u8, (i % 250 + 2) as u8);
            pod.add_address(eth0.index, ip.into(), 24)?;
            pod.set_up(eth0.index)?;
            floor.push(t.elapsed());
            host.delete_link("floor0")?;
        }
    }

    let net = network(dir.path())?;
    let mut attach = Vec::with_capacity(args.pods);
    let mut detach = Vec::with_capacity(args.pods);
    for i in 0..args.pods {
        let (_ns, path) = net::netns::create()?;
        let uid = format!("bench-{i}");
        let t = Instant::now();
        net.attach(&Attachment {
            uid: &uid,
            netns: &path,
            host_ports: &[],
        })
        .await?;
        attach.push(t.elapsed());
        let t = Instant::now();
        net.detach(&uid).await?;
        detach.push(t.elapsed());
    }
    println!("\none pod at a time");
    summary("pod network set-up (berth: attach)", attach);
    summary("pod network tear-down (berth: detach)", detach);
    summary("floor: bare veth in the pod + address + up", floor);
    println!("  (standard CNI plugins on containerd: ~1.5 s per pod, published)");

    // Churn, with the network rebuilt from its records half-way.
    let t = Instant::now();
    let mut net = net;
    let mut live = std::collections::VecDeque::new();
    let mut namespaces = std::collections::HashMap::new();
    for i in 0..args.churn {
        let (ns, path) = net::netns::create()?;
        let uid = format!("churn-{i}");
        net.attach(&Attachment {
            uid: &uid,
            netns: &path,
            host_ports: &[],
        })
        .await?;
        namespaces.insert(uid.clone(), ns);
        live.push_back(uid);
        if live.len() > 50 {
            let gone = live.pop_front().expect("a live pod");
            net.detach(&gone).await?;
            namespaces.remove(&gone);
        }
        if i == args.churn / 2 {
            // As after `kill -9`: nothing detached, the books rebuilt from the records.
            drop(net);
            net = network(dir.path())?;
        }
    }
    for uid in live.drain(..) {
        net.detach(&uid).await?;
    }
    let took = t.elapsed();
    let left = net.attached().len();
    let veths = Netlink::open()?
        .links()?
        .into_iter()
        .filter(|l| l.name.starts_with("veth"))
        .count();
    println!(
        "\nchurn: {} pods attached and detached, the network rebuilt half-way",
        args.churn
    );
    println!(
        "  {:.0} pods/s; afterwards: {left} pods holding addresses, {veths} veths left",
        args.churn as f64 / took.as_secs_f64()
    );
    if args.iperf_seconds > 0 {
        throughput(&net, args.iperf_seconds).await?;
    }
    proxy(&net, &args.services).await
}

/// TCP throughput (iperf3, one stream) between two pods on the bridge, beside the same
/// between two namespaces joined by a bare veth pair.
async fn throughput(net: &BridgeNetwork, seconds: u64) -> Result<()> {
    let (_a, a_path) = net::netns::create()?;
    let (_b, b_path) = net::netns::create()?;
    let mut ips = Vec::new();
    for (uid, path) in [("iperf-a", &a_path), ("iperf-b", &b_path)] {
        ips.push(
            net.attach(&Attachment {
                uid,
                netns: path,
                host_ports: &[],
            })
            .await?[0],
        );
    }
    let pods = iperf(&a_path, &b_path, ips[1], seconds)?;
    for uid in ["iperf-a", "iperf-b"] {
        net.detach(uid).await?;
    }
    // The floor: two namespaces and one veth pair between them, nothing else.
    let (_c, c_path) = net::netns::create()?;
    let (d, d_path) = net::netns::create()?;
    let mut c = Netlink::open_in(&c_path)?;
    c.add_veth("p0", None, "p1", &d, None)?;
    let p0 = c.link("p0")?.context("p0")?;
    c.add_address(p0.index, "10.99.0.1".parse()?, 24)?;
    c.set_up(p0.index)?;
    let mut dn = Netlink::open_in(&d_path)?;
    let p1 = dn.link("p1")?.context("p1")?;
    dn.add_address(p1.index, "10.99.0.2".parse()?, 24)?;
    dn.set_up(p1.index)?;
    let floor = iperf(&c_path, &d_path, "10.99.0.2".parse()?, seconds)?;
    println!(
        "
pod-to-pod TCP throughput (iperf3, one stream, {seconds} s)"
    );
    println!(
        "  pod to pod over the bridge      {:>7.1} Gbit/s   ({:.0}% of the bare veth pair)",
        pods / 1e9,
        100.0 * pods / floor
    );
    println!(
        "  floor: bare veth pair           {:>7.1} Gbit/s",
        floor / 1e9
    );
    Ok(())
}

/// Bits per second received by an iperf3 server in `server_ns` (at `ip`) from a client in
/// `client_ns`.
fn iperf(client_ns: &Path, server_ns: &Path, ip: std::net::IpAddr, seconds: u64) -> Result<f64> {
    // The namespaces are this process's open files: children reach them through its fd table.
    let me = std::process::id();
    let fd_path = |p: &Path| {
        p.to_string_lossy()
            .replace("/proc/self/", &format!("/proc/{me}/"))
    };
    let mut server = std::process::Command::new("nsenter")
        .arg(format!("--net={}", fd_path(server_ns)))
        .args(["iperf3", "-s", "-1", "-B"])
        .arg(ip.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("running iperf3 (Debian: apt-get install iperf3)")?;
    let mut out = None;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let o = std::process::Command::new("nsenter")
            .arg(format!("--net={}", fd_path(client_ns)))
            .args(["iperf3", "-J", "-c"])
            .arg(ip.to_string())
            .args(["-t", &seconds.to_string()])
            .output()?;
        if o.status.success() {
            out = Some(o.stdout);
            break;
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    let out = out.context("iperf3 never connected")?;
    let v: serde_json::Value = serde_json::from_slice(&out)?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 printed no rate")
}

/// A thread inside a pod's namespace that connects where it is told and reports how long
/// each connect took, and when it (first, retrying) succeeded.
struct Client {
    tx: std::sync::mpsc::Sender<(std::net::SocketAddr, bool)>,
    rx: std::sync::mpsc::Receiver<(Duration, Instant)>,
}

impl Client {
    fn start(ns: &Path) -> Result<Client> {
        let file = std::fs::File::open(ns)?;
        let (tx, jobs) = std::sync::mpsc::channel::<(std::net::SocketAddr, bool)>();
        let (done, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            if nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                return;
            }
            for (addr, retry) in jobs {
                loop {
                    let t = Instant::now();
                    let ok =
                        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok();
                    if ok || !retry {
                        let _ = done.send((t.elapsed(), Instant::now()));
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
        Ok(Client { tx, rx })
    }

    fn connect(&self, addr: std::net::SocketAddr, retry: bool) -> Result<(Duration, Instant)> {
        self.tx.send((addr, retry))?;
        Ok(self.rx.recv()?)
    }
}

fn vip(i: usize) -> std::net::IpAddr {
    std::net::Ipv4Addr::new(10, 43, (i / 250) as u8, (i % 250 + 2) as u8).into()
}

/// The Service proxy's data plane at each Service count.
async fn proxy(net: &BridgeNetwork, counts: &[usize]) -> Result<()> {
    use net::proxy::{Backend, Frontend, State};
    let nft =
        net::nft::find().context("the proxy benchmark needs nft (apt-get install nftables)")?;
    let (_c, client_ns) = net::netns::create()?;
    let (_s, server_ns) = net::netns::create()?;
    net.attach(&Attachment {
        uid: "proxy-client",
        netns: &client_ns,
        host_ports: &[],
    })
    .await?;
    let server_ip = net
        .attach(&Attachment {
            uid: "proxy-server",
            netns: &server_ns,
            host_ports: &[],
        })
        .await?[0];
    // The server accepts and closes, for the rest of the run.
    let file = std::fs::File::open(&server_ns)?;
    let (listening, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
            return;
        }
        if let Ok(l) = std::net::TcpListener::bind((server_ip, 8080)) {
            let _ = listening.send(());
            for s in l.incoming() {
                drop(s);
            }
        }
    });
    ready
        .recv()
        .context("the benchmark's server did not start")?;
    let client = Client::start(&client_ns)?;
    let backends = vec![
        Backend {
            ip: server_ip,
            port: 8080,
        };
        2
    ];
    let frontend = |i: usize| Frontend {
        ip: vip(i),
        protocol: net::Protocol::Tcp,
        port: 80,
    };
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mut direct = Vec::new();
    for _ in 0..500 {
        direct.push(client.connect((server_ip, 8080).into(), false)?.0);
    }
    direct.sort();
    println!("\nService proxy (nftables, no chain per Service), 2 endpoints per Service");
    println!(
        "  {:>8}  {:>10}  {:>27}  {:>30}",
        "services", "full load", "change -> connect p50 / p99", "connect via ClusterIP p50 / p99"
    );
    let mut live: Option<&str> = None;
    for &n in counts {
        let mut state = State::default();
        for i in 0..n {
            state.frontends.insert(frontend(i), backends.clone());
        }
        // A full load as the agent does it: a fresh table beside the live one, then the old
        // one dropped; timed to the end of both.
        let table = net::proxy::TABLES[usize::from(live == Some(net::proxy::TABLES[0]))];
        let t = Instant::now();
        net::nft::load_proxy(&nft, table, &state, 16)?;
        if let Some(old) = live {
            net::nft::drop_tables(&nft, &[("ip".to_string(), old.to_string())])?;
        }
        let full = t.elapsed();
        live = Some(table);
        // A new Service each time: write its elements, then connect until it answers.
        let mut change = Vec::new();
        for k in 0..50 {
            let mut next = state.clone();
            next.frontends.insert(frontend(n + k), backends.clone());
            let t = Instant::now();
            net::nft::apply_changes(&nft, table, &net::proxy::changes(table, &state, &next))?;
            let (_, ok_at) = client.connect((vip(n + k), 80).into(), true)?;
            change.push(ok_at - t);
            state = next;
        }
        change.sort();
        let mut via = Vec::new();
        for _ in 0..500 {
            via.push(client.connect((vip(0), 80).into(), false)?.0);
        }
        via.sort();
        println!(
            "  {n:>8}  {:>10}  {:>13} / {:<13}  {:>11.1} / {:<8.1} us",
            ms(full),
            ms(percentile(&change, 0.5)),
            ms(percentile(&change, 0.99)),
            us(percentile(&via, 0.5)),
            us(percentile(&via, 0.99)),
        );
    }
    println!(
        "  direct connect to the pod: {:.1} / {:.1} us (p50 / p99)",
        us(percentile(&direct, 0.5)),
        us(percentile(&direct, 0.99))
    );
    println!(
        "  (published, kube-proxy iptables mode: first-packet p50 ~47 us at 5k Services, ~272 us at 30k)"
    );
    Ok(())
}

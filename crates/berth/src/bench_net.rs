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
}

/// Move the whole process into a network namespace of its own: call before any thread starts.
pub fn isolate() -> Result<()> {
    net::netns::isolate().context("making a network namespace for the benchmark (needs root)")
}

fn network(state: &Path) -> Result<BridgeNetwork> {
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
    Ok(())
}

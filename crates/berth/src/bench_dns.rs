//! `berth bench dns`: the cluster DNS under load, in a network namespace made for the run
//! (nothing reaches the machine's own network). It builds the records of N Services and M pods
//! (headless Services, 50 pods each) the way the agent keeps them, serves them with the real
//! `DnsServer` on one core (pinned), and drives it with `dnsperf` (Debian) on the other:
//!
//! - memory: what the DNS records and the Service proxy's state take at that size;
//! - cluster names (`svc-N.ns-M.svc.cluster.local`): queries per second on one core, and the
//!   latency of single queries (p50/p99) at light load;
//! - outside names asked through a pod's search path: with the walk done by the server (one
//!   query per lookup), and as a server without it costs (four queries per lookup), against a
//!   local upstream that knows every name.
//!
//! Prints a table with the published anchors beside it; asserts nothing.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use api::k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use api::k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort, EndpointSlice,
};
use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use net::dns::index::{EndpointEntry, slice_endpoints};
use net::dns::{DnsServer, Index, ServiceEntry};
use net::proxy::{ServiceInfo, SliceInfo, State};

use crate::bench::{ms, percentile};

const DNS: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 10);
const PODS_PER_HEADLESS: usize = 50;
const NAMESPACES: usize = 100;

#[derive(Clone, Debug, clap::Args)]
pub struct DnsBenchArgs {
    /// Services with a cluster IP.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Pods, as endpoints of headless Services (50 each).
    #[arg(long, default_value_t = 50_000)]
    pods: usize,
    /// Seconds each dnsperf run lasts.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// Resident memory of this process, after the allocator has given back what was freed (the
/// objects the state was built from are gone; only the state remains).
fn rss_kib() -> u64 {
    // SAFETY: mi_collect only walks mimalloc's own heaps; forcing it is always allowed.
    unsafe { libmimalloc_sys::mi_collect(true) };
    crate::bench_pods::rss_kib(std::process::id())
}

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(ns.into()),
        ..Default::default()
    }
}

fn service(ns: &str, name: &str, ip: Option<Ipv4Addr>) -> Service {
    Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.map_or("None".into(), |i| i.to_string())),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn slice(ns: &str, svc: &str, first_pod: usize, n: usize) -> EndpointSlice {
    let mut m = meta(ns, &format!("{svc}-x"));
    m.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".into(),
        svc.into(),
    )]));
    EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        endpoints: (first_pod..first_pod + n)
            .map(|p| Endpoint {
                addresses: vec![pod_ip(p).to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                hostname: Some(format!("pod-{p}")),
                node_name: Some(format!("node-{}", p % 100)),
                ..Default::default()
            })
            .collect(),
    }
}

fn service_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 43, 1, 0)) + i as u32)
}

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 42, 0, 2)) + i as u32)
}

/// The agent's DNS state at this size: per Service its own records, per slice its
/// endpoints, and the index. Returns it (to keep it alive) with the headless Service count.
type DnsState = (
    HashMap<(String, String), ServiceEntry>,
    HashMap<(String, String), Vec<EndpointEntry>>,
);

fn build_dns(args: &DnsBenchArgs, index: &mut Index) -> DnsState {
    let mut services = HashMap::new();
    let mut slices = HashMap::new();
    for i in 0..args.services {
        let ns = format!("ns-{}", i % NAMESPACES);
        let name = format!("svc-{i}");
        let e = ServiceEntry::from_service(&service(&ns, &name, Some(service_ip(i))))
            .expect("a service with a spec");
        index.set(&ns, &name, Some(e.clone()));
        services.insert((ns, name), e);
    }
    for h in 0..args.pods.div_ceil(PODS_PER_HEADLESS) {
        let ns = format!("ns-{}", h % NAMESPACES);
        let name = format!("headless-{h}");
        let first = h * PODS_PER_HEADLESS;
        let n = PODS_PER_HEADLESS.min(args.pods - first);
        let mut e =
            ServiceEntry::from_service(&service(&ns, &name, None)).expect("a service with a spec");
        let eps = slice_endpoints(&slice(&ns, &name, first, n));
        e.set_endpoints(std::iter::once(eps.as_slice()));
        index.set(&ns, &name, Some(e.clone()));
        services.insert((ns.clone(), name.clone()), e);
        slices.insert((ns, name), eps);
    }
    (services, slices)
}

/// The Service proxy's state at this size: 2 endpoints per ClusterIP Service.
fn build_proxy(args: &DnsBenchArgs) -> (HashMap<String, (ServiceInfo, SliceInfo)>, State) {
    let mut seen = HashMap::new();
    let mut state = State::default();
    for i in 0..args.services {
        let ns = format!("ns-{}", i % NAMESPACES);
        let name = format!("svc-{i}");
        let info = ServiceInfo::from_service(&service(&ns, &name, Some(service_ip(i))), None)
            .expect("a proxied service");
        let sl = SliceInfo::from_slice(&slice(&ns, &name, (i * 5) % args.pods.max(2), 2));
        net::proxy::service_state(&info, std::slice::from_ref(&sl), "node-0", &mut state);
        seen.insert(format!("{ns}/{name}"), (info, sl));
    }
    (seen, state)
}

/// Pin the calling thread to one CPU.
fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// An upstream resolver that knows every name: A 192.0.2.1, TTL 300.
fn fake_upstream() -> Result<SocketAddr> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    let addr = s.local_addr()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = s.recv_from(&mut buf) {
            let Ok(q) = hickory_proto::op::Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = hickory_proto::op::Message::response(q.metadata.id, q.metadata.op_code);
            r.metadata.recursion_available = true;
            r.queries = q.queries.clone();
            if let Some(query) = q.queries.first()
                && query.query_type() == hickory_proto::rr::RecordType::A
            {
                r.answers.push(hickory_proto::rr::Record::from_rdata(
                    query.name().clone(),
                    300,
                    hickory_proto::rr::RData::from(Ipv4Addr::new(192, 0, 2, 1)),
                ));
            }
            if let Ok(b) = r.to_vec() {
                let _ = s.send_to(&b, peer);
            }
        }
    });
    Ok(addr)
}

struct Perf {
    qps: f64,
    avg_ms: f64,
    lost: String,
}

/// Run dnsperf on CPU 1 against the cluster DNS with these query lines.
fn dnsperf(lines: &[String], source: &str, seconds: u64) -> Result<Perf> {
    let mut file = tempfile::NamedTempFile::new()?;
    for l in lines {
        writeln!(file, "{l}")?;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cmd = if cores > 1 {
        let mut c = Command::new("taskset");
        c.args(["-c", "1", "dnsperf"]);
        c
    } else {
        Command::new("dnsperf")
    };
    let out = cmd
        .args(["-s", &DNS.to_string(), "-a", source, "-d"])
        .arg(file.path())
        .args([
            "-l",
            &seconds.to_string(),
            "-c",
            "16",
            "-q",
            "500",
            "-t",
            "2",
        ])
        .output()
        .context("running dnsperf (Debian: apt-get install dnsperf)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "dnsperf failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let field = |key: &str| -> Option<String> {
        text.lines()
            .find(|l| l.trim_start().starts_with(key))
            .map(|l| l.split_once(':').map_or("", |x| x.1).trim().to_string())
    };
    let qps = field("Queries per second")
        .and_then(|v| v.parse().ok())
        .context("dnsperf printed no rate")?;
    let avg_ms = field("Average Latency (s)")
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        * 1e3;
    let lost = field("Queries lost").unwrap_or_default();
    Ok(Perf { qps, avg_ms, lost })
}

/// Single queries one after another: the latency a pod sees when the server is not busy.
fn latencies(name: &str, count: usize) -> Result<Vec<Duration>> {
    let s = UdpSocket::bind("127.0.0.3:0")?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.connect(SocketAddr::new(IpAddr::V4(DNS), 53))?;
    let mut q = hickory_proto::op::Message::query();
    q.add_query(hickory_proto::op::Query::query(
        hickory_proto::rr::Name::from_ascii(name)?,
        hickory_proto::rr::RecordType::A,
    ));
    let bytes = q.to_vec()?;
    let mut buf = [0u8; 1500];
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        s.send(&bytes)?;
        s.recv(&mut buf)?;
        out.push(t.elapsed());
    }
    out.sort();
    Ok(out)
}

pub async fn run(args: DnsBenchArgs) -> Result<()> {
    println!(
        "berth bench dns: {} Services, {} pods (headless Services of {PODS_PER_HEADLESS}), dnsperf {} s per run",
        args.services, args.pods, args.seconds
    );
    let before = rss_kib();
    let mut index = Index::new("cluster.local")?;
    let dns_state = build_dns(&args, &mut index);
    let after_dns = rss_kib();
    let proxy_state = build_proxy(&args);
    let after_proxy = rss_kib();
    let coredns_mb = (args.services + args.pods) as f64 * 0.000858 + 49.1;
    println!("\nmemory at this size (resident, measured in this process)");
    println!(
        "  DNS records (agent's copy and index)        {:>7.1} MiB   (CoreDNS's sizing formula: {coredns_mb:.0} MB)",
        after_dns.saturating_sub(before) as f64 / 1024.0
    );
    println!(
        "  Service proxy state ({} frontends)       {:>7.1} MiB",
        proxy_state.1.frontends.len(),
        after_proxy.saturating_sub(after_dns) as f64 / 1024.0
    );

    // Serve on CPU 0, with the walk for the "pod" at 127.0.0.1.
    net::netlink::Netlink::open()?.add_local_route(IpAddr::V4(DNS))?;
    let upstream = fake_upstream()?;
    let server = DnsServer::new(index, vec![upstream]);
    let searches = [
        "ns-0.svc.cluster.local".to_string(),
        "svc.cluster.local".into(),
        "cluster.local".into(),
    ];
    server.set_client(IpAddr::V4(Ipv4Addr::LOCALHOST), Some(&searches));
    let s = server.clone();
    std::thread::spawn(move || {
        pin(0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the DNS server");
        let _ = rt.block_on(s.serve(SocketAddr::new(IpAddr::V4(DNS), 53), 1));
    });
    // Ready when it answers.
    let deadline = Instant::now() + Duration::from_secs(5);
    while latencies("svc-0.ns-0.svc.cluster.local.", 1).is_err() {
        if Instant::now() > deadline {
            bail!("the DNS server did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let cluster: Vec<String> = (0..50_000)
        .map(|_| {
            let i = fastrand::usize(..args.services.max(1));
            format!("svc-{i}.ns-{}.svc.cluster.local A", i % NAMESPACES)
        })
        .collect();
    let lat = latencies("svc-1.ns-1.svc.cluster.local.", 5_000)?;
    let perf = dnsperf(&cluster, "127.0.0.2", args.seconds)?;
    println!("\ncluster names, server on 1 core, dnsperf on the other");
    println!(
        "  queries per second                          {:>9.0}   (CoreDNS: ~17,000 per core published; dnsmasq, two static names: 127,000 on one core here)",
        perf.qps
    );
    println!(
        "  latency under that load (dnsperf average)   {:>9.3} ms   lost {}",
        perf.avg_ms, perf.lost
    );
    println!(
        "  latency of single queries                   p50 {}   p99 {}",
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99))
    );

    // Outside names asked by a pod in ns-0 (ndots:5): the first step of its search walk.
    let names: Vec<String> = (0..1000)
        .map(|k| format!("host-{k}.example.test"))
        .collect();
    let walked: Vec<String> = names
        .iter()
        .map(|n| format!("{n}.ns-0.svc.cluster.local A"))
        .collect();
    let perf = dnsperf(&walked, "127.0.0.1", args.seconds)?;
    println!("\noutside names through a pod's search path (ndots:5), upstream answers cached");
    println!(
        "  lookups per second, walked by the server    {:>9.0}   (1 query each; avg {:.3} ms, lost {})",
        perf.qps, perf.avg_ms, perf.lost
    );
    // The same lookups as a client must make them when the server does not walk for it.
    let unwalked: Vec<String> = names
        .iter()
        .flat_map(|n| {
            [
                format!("{n}.ns-0.svc.cluster.local A"),
                format!("{n}.svc.cluster.local A"),
                format!("{n}.cluster.local A"),
                format!("{n} A"),
            ]
        })
        .collect();
    let perf = dnsperf(&unwalked, "127.0.0.2", args.seconds)?;
    println!(
        "  lookups per second, walked by the client    {:>9.0}   (4 queries each: {:.0} queries/s)",
        perf.qps / 4.0,
        perf.qps
    );
    println!(
        "  (CoreDNS, 2 vCPU, published: 6,733 lookups/s through the search path, 31,428 with autopath)"
    );
    let stats = &server.stats;
    println!(
        "\nserver counters: {} queries, {} asked upstream, {} malformed",
        stats.queries.load(std::sync::atomic::Ordering::Relaxed),
        stats
            .upstream_queries
            .load(std::sync::atomic::Ordering::Relaxed),
        stats.malformed.load(std::sync::atomic::Ordering::Relaxed)
    );
    drop((dns_state, proxy_state));
    Ok(())
}

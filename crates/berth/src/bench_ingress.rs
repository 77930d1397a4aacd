//! `berth bench ingress`: what the built-in Ingress proxy adds to an HTTP request. Inside a
//! network namespace made for the run, one pod (a real `BridgeNetwork` attachment) serves a
//! small HTTP answer; `hey` (Debian's `hey`) drives it through the proxy and straight to the
//! pod in the same run, at a fixed rate and flat out, and the table prints requests per
//! second and latency percentiles of both, and what the proxy adds. Then, against a real
//! `berth server`, the node's Ingress controller follows the API, and each of
//! `--route-changes` new Ingresses is timed from its create to the first request it routes.
//!
//! Prints a table; asserts nothing.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use net::{Attachment, PodNetwork};

#[derive(Clone, Debug, clap::Args)]
pub struct IngressBenchArgs {
    /// Seconds each `hey` run lasts.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Requests per second of the fixed-rate runs (the goal's 5,000/s per core).
    #[arg(long, default_value_t = 5000)]
    rate: u32,
    /// Ingresses created one at a time, each timed until it routes (0: none).
    #[arg(long, default_value_t = 100)]
    route_changes: usize,
}

/// The status code of a GET of `/` with `Host: host` to `to`, if one came back.
fn status(to: SocketAddr, host: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Ingresses created through the API of a real server, each timed from its create until the
/// node's controller routes a request by it to the backend.
async fn route_changes(args: &IngressBenchArgs, backend: IpAddr) -> Result<Vec<Duration>> {
    use bytes::Bytes;
    use http::Method;
    use serde_json::json;
    let server = crate::bench::start_server(&[]).await?;
    let c = server.client.clone();
    c.request_json(
        Method::POST,
        "/api/v1/namespaces",
        Some(&json!({"metadata": {"name": "bench"}})),
    )
    .await?;
    // A Service without a selector, its one endpoint the backend pod.
    c.request_json(
        Method::POST,
        "/api/v1/namespaces/bench/services",
        Some(&json!({"metadata": {"name": "bench"},
                     "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})),
    )
    .await?;
    c.request_json(
        Method::POST,
        "/apis/discovery.k8s.io/v1/namespaces/bench/endpointslices",
        Some(&json!({"metadata": {"name": "bench-1",
                                  "labels": {"kubernetes.io/service-name": "bench",
                                             "endpointslice.kubernetes.io/managed-by": "bench"}},
                     "addressType": "IPv4",
                     "endpoints": [{"addresses": [backend.to_string()],
                                    "conditions": {"ready": true}}],
                     "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})),
    )
    .await?;
    let at: SocketAddr = "127.0.0.1:18081".parse()?;
    let controller = tokio::spawn(agent::ingress::run(
        c.clone(),
        agent::ingress::IngressConfig {
            http: Some(at),
            https: None,
        },
    ));
    let mut out = Vec::with_capacity(args.route_changes);
    for i in 0..args.route_changes {
        let host = format!("r{i}.example.com");
        let body = json!({"metadata": {"name": format!("r{i}")},
                          "spec": {"ingressClassName": "berth", "rules": [{"host": host, "http": {"paths": [
                              {"path": "/", "pathType": "Prefix",
                               "backend": {"service": {"name": "bench", "port": {"name": "http"}}}}]}}]}});
        let t = Instant::now();
        c.request(
            Method::POST,
            "/apis/networking.k8s.io/v1/namespaces/bench/ingresses",
            "application/json",
            Bytes::from(body.to_string()),
        )
        .await?;
        let h = host.clone();
        let routed = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if status(at, &h) == Some(200) {
                    return Some(Instant::now());
                }
                std::thread::sleep(Duration::from_micros(300));
            }
            None
        })
        .await?
        .with_context(|| format!("{host} was not routed within 10 s"))?;
        out.push(routed.saturating_duration_since(t));
    }
    controller.abort();
    drop(server);
    out.sort();
    Ok(out)
}

/// The backend: a hyper server in the pod's network namespace, on its own thread.
fn backend(netns: std::path::PathBuf, ip: IpAddr) -> Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let run = || -> Result<()> {
            let ns = std::fs::File::open(&netns)?;
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, 8080)).await?;
                let _ = ready_tx.send(());
                loop {
                    let (s, _) = listener.accept().await?;
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(|_req| async {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(
                                    b"hello from the bench backend\n",
                                )),
                            ))
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                            .await;
                    });
                }
            })
        };
        if let Err(e) = run() {
            eprintln!("bench backend: {e:#}");
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .context("the backend did not start")
}

/// What `hey` reports: requests per second, and latency p50/p99 in milliseconds.
struct Load {
    rps: f64,
    p50: f64,
    p99: f64,
    errors: bool,
}

fn hey(url: &str, host: Option<&str>, args: &IngressBenchArgs, rate: Option<u32>) -> Result<Load> {
    let mut cmd = Command::new("hey");
    cmd.args(["-z", &format!("{}s", args.seconds)])
        .args(["-c", &args.connections.to_string()]);
    if let Some(r) = rate {
        // hey's rate is per worker.
        cmd.args(["-q", &(r / args.connections).max(1).to_string()]);
    }
    if let Some(h) = host {
        cmd.args(["-host", h]);
    }
    let out = cmd
        .arg(url)
        .output()
        .context("running hey (apt-get install hey)")?;
    if !out.status.success() {
        bail!("hey failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| -> Option<f64> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Ok(Load {
        rps: field("Requests/sec:").context("hey printed no Requests/sec")?,
        p50: field("50% in").context("hey printed no p50")? * 1000.0,
        p99: field("99% in").context("hey printed no p99")? * 1000.0,
        errors: text.contains("Error distribution"),
    })
}

pub async fn run(args: IngressBenchArgs) -> Result<()> {
    if Command::new("hey").arg("-h").output().is_err() {
        bail!("berth bench ingress needs hey (Debian: apt-get install hey)");
    }
    let dir = tempfile::tempdir()?;
    let net = crate::bench_net::network(dir.path())?;
    let (_ns, path) = net::netns::create()?;
    let ip = net
        .attach(&Attachment {
            uid: "ingress-backend",
            netns: &path,
            host_ports: &[],
        })
        .await?[0];
    backend(path, ip)?;
    let proxy: SocketAddr = "127.0.0.1:18080".parse()?;
    let serving = tokio::spawn(agent::ingress::serve_fixed(
        proxy,
        "bench.example.com",
        vec![SocketAddr::new(ip, 8080)],
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let through = format!("http://{proxy}/");
    let direct = format!("http://{ip}:8080/");
    println!(
        "berth bench ingress: hey, {} connections, {} s per run; the backend is a pod on the bridge",
        args.connections, args.seconds
    );
    println!(
        "{:<44}{:>12}{:>10}{:>10}",
        "run", "requests/s", "p50 ms", "p99 ms"
    );
    let mut rows = Vec::new();
    for (name, rate) in [
        (format!("at {}/s", args.rate), Some(args.rate)),
        ("flat out".to_string(), None),
    ] {
        let d = hey(&direct, None, &args, rate)?;
        let p = hey(&through, Some("bench.example.com"), &args, rate)?;
        for (who, l) in [
            ("straight to the pod", &d),
            ("through the ingress proxy", &p),
        ] {
            println!(
                "{:<44}{:>12.0}{:>10.2}{:>10.2}{}",
                format!("{who}, {name}"),
                l.rps,
                l.p50,
                l.p99,
                if l.errors { "  (errors)" } else { "" }
            );
        }
        rows.push((name, d, p));
    }
    for (name, d, p) in &rows {
        println!(
            "added by the proxy, {name}: p50 +{:.2} ms, p99 +{:.2} ms, {:.0}% of the direct requests/s",
            p.p50 - d.p50,
            p.p99 - d.p99,
            100.0 * p.rps / d.rps
        );
    }
    println!("goal: <= 1 ms p99 added at 5,000 requests/s per core");
    serving.abort();
    if args.route_changes > 0 {
        let d = route_changes(&args, ip).await?;
        println!(
            "a new Ingress created through the API -> routing ({} times): p50 {}, p99 {} (goal: p99 <= 100 ms)",
            d.len(),
            crate::bench::ms(crate::bench::percentile(&d, 0.50)),
            crate::bench::ms(crate::bench::percentile(&d, 0.99)),
        );
    }
    net.detach("ingress-backend").await?;
    Ok(())
}

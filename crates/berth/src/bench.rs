//! `berth bench api`: the API server's figures, measured against a real `berth server` process
//! over HTTPS on this machine. Creates with concurrent clients (throughput and latency), a
//! list of many pods (time and the server's peak memory), watch fan-out (events delivered per
//! second), and the server's idle memory. Prints a table; asserts nothing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use client::{Client, HttpsTransport, ListParams};
use http::{Method, Request};
use http_body_util::BodyExt;
use serde_json::json;
use tokio::sync::Semaphore;

#[derive(Clone, Debug, clap::Args)]
pub struct ApiBenchArgs {
    /// ConfigMaps (1 KiB of data each) created in the write test.
    #[arg(long, default_value_t = 20_000)]
    creates: usize,
    /// Concurrent clients in the write tests.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Pods stored before the list test.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Lists timed in the list test.
    #[arg(long, default_value_t = 10)]
    lists: usize,
    /// Watchers in the fan-out test.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Changes each watcher must receive in the fan-out test.
    #[arg(long, default_value_t = 2_000)]
    events: usize,
    /// Objects in the store when a snapshot is timed (ConfigMaps are added to reach it; 0:
    /// no snapshot test).
    #[arg(long, default_value_t = 100_000)]
    snapshot_objects: usize,
    /// Rounds of the create test on fresh servers with store record checksums on and off,
    /// alternating, to price the checksums (0: skip).
    #[arg(long, default_value_t = 3)]
    checksum_rounds: usize,
    /// RoleBindings in the cluster when the create test is run again as a user RBAC judges
    /// (0: skip that test).
    #[arg(long, default_value_t = 10_000)]
    role_bindings: usize,
    /// Rounds of a Secret write and read test on fresh servers with encryption at rest on and
    /// off, alternating (0: skip). Five: the rate of one fresh server varies by about 10%
    /// between runs, as much as the sealing costs.
    #[arg(long, default_value_t = 5)]
    encryption_rounds: usize,
}

/// Send `count` bodies to `path` from `clients` concurrent tasks, each request acting as
/// `user` (impersonated by the admin) if given; return latencies and the elapsed time.
async fn create_many_as(
    c: &Client,
    path: &str,
    count: usize,
    clients: usize,
    user: Option<&str>,
    body: impl Fn(usize) -> Bytes + Send + Sync + 'static,
) -> Result<(Vec<Duration>, Duration)> {
    let next = Arc::new(AtomicUsize::new(0));
    let body = Arc::new(body);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (c, next, body, path) = (c.clone(), next.clone(), body.clone(), path.to_string());
        let user = user.map(str::to_string);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let mut req = Request::builder()
                    .method(Method::POST)
                    .uri(path.as_str())
                    .header(http::header::CONTENT_TYPE, "application/json");
                if let Some(u) = &user {
                    req = req.header("Impersonate-User", u.as_str());
                }
                let t = Instant::now();
                let resp = c.send(req.body(body(i))?).await?;
                let status = resp.status();
                let bytes = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?
                    .to_bytes();
                if !status.is_success() {
                    return Err(client::api_error(status, &bytes).into());
                }
                lat.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::with_capacity(count);
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed();
    all.sort();
    Ok((all, elapsed))
}

/// The create test again, as a user judged by RBAC among `bindings` RoleBindings, beside the
/// admin (whom RBAC does not judge) on the same server.
async fn rbac_creates(c: &Client, args: &ApiBenchArgs) -> Result<(f64, f64, Duration)> {
    let post = |path: String, body: serde_json::Value| async move {
        c.request_json(Method::POST, &path, Some(&body)).await
    };
    for ns in ["rbac-admin", "rbac-user"] {
        post(
            "/api/v1/namespaces".into(),
            json!({"metadata": {"name": ns}}),
        )
        .await?;
    }
    // Bindings of other users spread over 100 namespaces, and the one that lets the user in.
    let spread = 100;
    for n in 0..spread {
        post(
            "/api/v1/namespaces".into(),
            json!({"metadata": {"name": format!("team-{n}")}}),
        )
        .await?;
    }
    let per_ns = args.role_bindings / spread;
    for n in 0..spread {
        create_many_as(
            c,
            &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/team-{n}/rolebindings"),
            per_ns,
            args.clients.min(16),
            None,
            move |i| {
                Bytes::from(json!({"metadata": {"name": format!("b-{i}")},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
                    "subjects": [{"kind": "User", "name": format!("user-{n}-{i}")}]}).to_string())
            },
        )
        .await?;
    }
    post(
        "/apis/rbac.authorization.k8s.io/v1/namespaces/rbac-user/rolebindings".into(),
        json!({"metadata": {"name": "bench"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
               "subjects": [{"kind": "User", "name": "bench-user"}]}),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let body = |prefix: &'static str| {
        let payload = "x".repeat(1024);
        move |i: usize| {
            Bytes::from(
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("{prefix}-{i}")}, "data": {"payload": payload}})
                .to_string(),
            )
        }
    };
    // Alternate, twice each, so that drift does not favour one.
    let (mut admin, mut user) = (Vec::new(), Vec::new());
    let mut user_lat = Vec::new();
    for round in 0..2 {
        let (_, e) = create_many_as(
            c,
            "/api/v1/namespaces/rbac-admin/configmaps",
            args.creates / 2,
            args.clients,
            None,
            body(if round == 0 { "a0" } else { "a1" }),
        )
        .await?;
        admin.push((args.creates / 2) as f64 / e.as_secs_f64());
        let (lat, e) = create_many_as(
            c,
            "/api/v1/namespaces/rbac-user/configmaps",
            args.creates / 2,
            args.clients,
            Some("bench-user"),
            body(if round == 0 { "u0" } else { "u1" }),
        )
        .await?;
        user.push((args.creates / 2) as f64 / e.as_secs_f64());
        user_lat.extend(lat);
    }
    user_lat.sort();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    Ok((mean(&admin), mean(&user), percentile(&user_lat, 0.99)))
}

/// Write and read back Secrets of 1 KiB: (writes/s, reads/s).
async fn secret_rates(c: &Client, count: usize, clients: usize) -> Result<(f64, f64)> {
    c.request_json(
        Method::POST,
        "/api/v1/namespaces",
        Some(&json!({"metadata": {"name": "sealed"}})),
    )
    .await?;
    let payload = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 1024]);
    let (_, wrote) = create_many_as(
        c,
        "/api/v1/namespaces/sealed/secrets",
        count,
        clients,
        None,
        move |i| {
            Bytes::from(
                json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": format!("s-{i}")}, "data": {"key": payload}})
                .to_string(),
            )
        },
    )
    .await?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (c, next) = (c.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, anyhow::Error>(());
                }
                get(
                    &c,
                    &format!("/api/v1/namespaces/sealed/secrets/s-{i}"),
                    "application/json",
                )
                .await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let read = started.elapsed();
    Ok((
        count as f64 / wrote.as_secs_f64(),
        count as f64 / read.as_secs_f64(),
    ))
}

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) dir: PathBuf,
    pub(crate) client: Client,
    pub(crate) port: u16,
}

impl Server {
    pub(crate) fn rss_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

pub(crate) async fn start_server(extra_args: &[&str]) -> Result<Server> {
    let exe = std::env::current_exe().context("locating the berth binary")?;
    let dir = std::env::temp_dir().join(format!("berth-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let child = Command::new(exe)
        .args([
            "server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&dir)
        .args(extra_args)
        .env("BERTH_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting berth server")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if Instant::now() > deadline {
            bail!("berth server did not start");
        }
        if let Some(client) = try_client(&dir, port)
            && client
                .request(Method::GET, "/readyz", "application/json", Bytes::new())
                .await
                .is_ok()
            && client
                .get::<api::k8s_openapi::api::core::v1::Namespace>(None, "default")
                .await
                .ok()
                .flatten()
                .is_some()
        {
            return Ok(Server {
                child,
                dir,
                client,
                port,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn try_client(dir: &Path, port: u16) -> Option<Client> {
    let ca = std::fs::read(dir.join("tls/ca.crt")).ok()?;
    let token = std::fs::read_to_string(dir.join("credentials/admin.token")).ok()?;
    let t = HttpsTransport::new(
        &format!("https://127.0.0.1:{port}"),
        &ca,
        Some(token.trim()),
    )
    .ok()?;
    Some(Client::new(Arc::new(t)))
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Send `count` bodies to `path` from `clients` concurrent tasks; return latencies and the
/// elapsed time.
pub(crate) async fn create_many(
    c: &Client,
    path: &str,
    count: usize,
    clients: usize,
    body: impl Fn(usize) -> Bytes + Send + Sync + 'static,
) -> Result<(Vec<Duration>, Duration)> {
    create_many_as(c, path, count, clients, None, body).await
}

pub async fn run(args: ApiBenchArgs) -> Result<()> {
    println!("berth bench api: starting a berth server on a scratch data dir");
    let server = start_server(&[]).await?;
    let c = server.client.clone();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = server.rss_kib("VmRSS:");
    // What the process allocated; the rest is the binary's code and data mapped in, clean and
    // shared with every other berth process on the machine.
    let idle_anon = server.rss_kib("RssAnon:");
    println!("{:<54} {:>20}   target", "figure", "value");
    let row =
        |name: &str, value: String, target: &str| println!("{name:<54} {value:>20}   {target}");
    row(
        "idle RSS of berth server",
        format!("{:.1} MiB", idle_rss as f64 / 1024.0),
        "<= 30 MiB",
    );
    row(
        "  of which allocated (anonymous), not code",
        format!("{:.1} MiB", idle_anon as f64 / 1024.0),
        "",
    );

    // Writes: ConfigMaps of 1 KiB.
    c.request_json(
        Method::POST,
        "/api/v1/namespaces",
        Some(&json!({"metadata": {"name": "fan"}})),
    )
    .await?;
    let (lat, elapsed) = create_configmaps(&c, args.creates, args.clients).await?;
    row(
        &format!(
            "create {} ConfigMaps, {} clients",
            args.creates, args.clients
        ),
        format!("{:.0}/s", args.creates as f64 / elapsed.as_secs_f64()),
        ">= 5000/s",
    );
    row("  create latency p50", ms(percentile(&lat, 0.50)), "");
    row(
        "  create latency p99",
        ms(percentile(&lat, 0.99)),
        "<= 20 ms",
    );
    row("  create latency p99.9", ms(percentile(&lat, 0.999)), "");
    row(
        "  create latency max",
        ms(*lat.last().unwrap_or(&Duration::ZERO)),
        "",
    );
    crate::bench_crd::rows(
        &c,
        args.creates,
        args.clients,
        args.creates as f64 / elapsed.as_secs_f64(),
        &row,
    )
    .await?;
    row(
        "RSS after the creates",
        format!("{:.1} MiB", server.rss_kib("VmRSS:") as f64 / 1024.0),
        "",
    );

    // Lists: pods.
    let (_, pods_elapsed) = create_many(&c, "/api/v1/namespaces/bench/pods", args.pods, args.clients, |i| {
        Bytes::from(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("pod-{i}"), "labels": {"app": "bench", "shard": (i % 16).to_string()}},
            "spec": {"containers": [{"name": "app", "image": "registry.local/app:1.0",
                "ports": [{"containerPort": 8080}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}}).to_string())
    })
    .await?;
    row(
        &format!("create {} pods", args.pods),
        format!("{:.0}/s", args.pods as f64 / pods_elapsed.as_secs_f64()),
        "",
    );
    for (label, accept) in [
        ("list pods as JSON", "application/json"),
        (
            "list pods as a Table (kubectl get)",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        ),
    ] {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..args.lists {
            let t = Instant::now();
            let b = get(&c, "/api/v1/namespaces/bench/pods", accept).await?;
            times.push(t.elapsed());
            bytes = b.len();
        }
        times.sort();
        row(
            &format!(
                "{label}, {} items ({:.1} MiB), p50",
                args.pods,
                bytes as f64 / 1048576.0
            ),
            ms(percentile(&times, 0.5)),
            if accept == "application/json" {
                "<= 150 ms"
            } else {
                ""
            },
        );
    }
    row(
        "peak RSS so far (VmHWM)",
        format!("{:.1} MiB", server.rss_kib("VmHWM:") as f64 / 1024.0),
        "",
    );

    // Watch fan-out: every watcher sees every change.
    let received = Arc::new(AtomicUsize::new(0));
    let ready = Arc::new(Semaphore::new(0));
    let (_, rv) = c
        .list::<api::k8s_openapi::api::core::v1::ConfigMap>(Some("fan"), &ListParams::default())
        .await?;
    let mut watchers = Vec::new();
    for _ in 0..args.watchers {
        let (c, received, ready, rv) = (c.clone(), received.clone(), ready.clone(), rv.clone());
        let expect = args.events;
        watchers.push(tokio::spawn(async move {
            let params = ListParams {
                resource_version: Some(rv),
                timeout_seconds: Some(600),
                ..Default::default()
            };
            let mut w = c
                .watch::<api::k8s_openapi::api::core::v1::ConfigMap>(Some("fan"), &params)
                .await?;
            ready.add_permits(1);
            let mut n = 0;
            while n < expect {
                match w.next().await {
                    Some(client::WatchEvent::Added(_) | client::WatchEvent::Modified(_)) => {
                        n += 1;
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(_) => {}
                    None => bail!("watch ended early after {n} events"),
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    let _ = ready.acquire_many(args.watchers as u32).await?;
    let started = Instant::now();
    create_many(&c, "/api/v1/namespaces/fan/configmaps", args.events, args.clients, |i| {
        Bytes::from(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("f-{i}")}}).to_string())
    })
    .await?;
    let written = started.elapsed();
    for w in watchers {
        w.await??;
    }
    let delivered = started.elapsed();
    row(
        &format!(
            "watch fan-out: {} watchers x {} changes",
            args.watchers, args.events
        ),
        format!(
            "{:.0} ev/s",
            received.load(Ordering::Relaxed) as f64 / delivered.as_secs_f64()
        ),
        "",
    );
    row(
        "  writes done / all delivered after",
        format!("{} / {}", ms(written), ms(delivered)),
        "",
    );
    // A snapshot of the whole store (`berth store snapshot`).
    if args.snapshot_objects > 0 {
        let have = args.creates + args.pods + args.events;
        let more = args.snapshot_objects.saturating_sub(have);
        c.request_json(
            Method::POST,
            "/api/v1/namespaces",
            Some(&json!({"metadata": {"name": "snap"}})),
        )
        .await?;
        let payload = "x".repeat(1024);
        create_many(&c, "/api/v1/namespaces/snap/configmaps", more, args.clients, move |i| {
            Bytes::from(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("s-{i}")},
                               "data": {"payload": payload}}).to_string())
        })
        .await?;
        row(
            "RSS before the snapshot",
            format!("{:.1} MiB", server.rss_kib("VmRSS:") as f64 / 1024.0),
            "",
        );
        let t = Instant::now();
        let archive = get(&c, "/berth/v1/snapshot", "application/x-tar").await?;
        let took = t.elapsed();
        row(
            &format!("snapshot of {} objects: time", have + more),
            ms(took),
            "",
        );
        row(
            "  size",
            format!("{:.1} MiB", archive.len() as f64 / 1048576.0),
            "",
        );
    }
    row(
        "final RSS / peak RSS",
        format!(
            "{:.0} / {:.0} MiB",
            server.rss_kib("VmRSS:") as f64 / 1024.0,
            server.rss_kib("VmHWM:") as f64 / 1024.0
        ),
        "",
    );
    if args.role_bindings > 0 {
        let (admin, user, p99) = rbac_creates(&c, &args).await?;
        row(
            &format!(
                "create as a user RBAC judges ({} RoleBindings) / as admin",
                args.role_bindings
            ),
            format!("{user:.0} / {admin:.0}/s"),
            "",
        );
        row(
            "  cost of RBAC",
            format!("{:+.1}%", (admin - user) / admin * 100.0),
            "within 10%",
        );
        row("  create latency p99 as the user", ms(p99), "");
    }
    drop(server);

    // The price of encryption at rest: Secrets written and read on fresh servers with it on
    // and off, alternating which goes first.
    if args.encryption_rounds > 0 {
        let count = args.creates.min(10_000);
        let mut rates: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
        for round in 0..args.encryption_rounds {
            for step in 0..2 {
                let on = (round + step) % 2 == 0;
                let flag = format!("--encrypt-secrets={on}");
                let server = start_server(&[flag.as_str()]).await?;
                rates[usize::from(on)]
                    .push(secret_rates(&server.client, count, args.clients).await?);
            }
        }
        let median = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
            let mut x: Vec<f64> = v.iter().map(f).collect();
            x.sort_by(f64::total_cmp);
            x[x.len() / 2]
        };
        for (what, f) in [
            ("write", (|r: &(f64, f64)| r.0) as fn(&(f64, f64)) -> f64),
            ("read", |r: &(f64, f64)| r.1),
        ] {
            let (off, on) = (median(&rates[0], f), median(&rates[1], f));
            row(
                &format!(
                    "Secrets {what}, sealed / plain (median of {})",
                    args.encryption_rounds
                ),
                format!("{on:.0} / {off:.0}/s"),
                "",
            );
            row(
                "  cost of encryption at rest",
                format!("{:+.1}%", (off - on) / off * 100.0),
                "within 10%",
            );
        }
    }

    // The price of record checksums: the create test again on fresh servers, with and without,
    // alternating which goes first, since this machine's figure drifts between runs.
    if args.checksum_rounds > 0 {
        let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for round in 0..args.checksum_rounds {
            for step in 0..2 {
                let on = (round + step) % 2 == 0;
                let flag = format!("--store-record-checksums={on}");
                let server = start_server(&[flag.as_str()]).await?;
                let (_, elapsed) =
                    create_configmaps(&server.client, args.creates, args.clients).await?;
                rates[usize::from(on)].push(args.creates as f64 / elapsed.as_secs_f64());
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (off, on) = (median(&mut rates[0]), median(&mut rates[1]));
        row(
            &format!(
                "create, record checksums on / off (median of {})",
                args.checksum_rounds
            ),
            format!("{on:.0} / {off:.0}/s"),
            "",
        );
        row(
            "  cost of checksums",
            format!("{:+.1}%", (off - on) / off * 100.0),
            "within 5%",
        );
    }
    Ok(())
}

/// Create `count` ConfigMaps of 1 KiB in namespace `bench` (made here) from `clients`
/// concurrent tasks.
async fn create_configmaps(
    c: &Client,
    count: usize,
    clients: usize,
) -> Result<(Vec<Duration>, Duration)> {
    c.request_json(
        Method::POST,
        "/api/v1/namespaces",
        Some(&json!({"metadata": {"name": "bench"}})),
    )
    .await?;
    let payload = "x".repeat(1024);
    create_many(c, "/api/v1/namespaces/bench/configmaps", count, clients, move |i| {
        Bytes::from(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{i}")},
                           "data": {"payload": payload}}).to_string())
    })
    .await
}

async fn get(c: &Client, path: &str, accept: &str) -> Result<Bytes> {
    let req = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(http::header::ACCEPT, accept)
        .body(Bytes::new())?;
    let resp = c.send(req).await?;
    if !resp.status().is_success() {
        bail!("list failed: {}", resp.status());
    }
    Ok(resp
        .into_body()
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!(e))?
        .to_bytes())
}

#[derive(Clone, Debug, clap::Args)]
pub struct AuthzBenchArgs {
    /// RoleBindings in the policy, spread over namespaces of 10 each, one user each.
    #[arg(long, default_value_t = 10_000)]
    role_bindings: usize,
    /// Decisions timed for each of allow and deny.
    #[arg(long, default_value_t = 200_000)]
    decisions: usize,
}

/// The RBAC decision alone: Kubernetes' bootstrap policy plus `role_bindings` RoleBindings,
/// each decision timed (the clock's own cost, ~20 ns, included).
pub fn authz(args: AuthzBenchArgs) -> Result<()> {
    use api::k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    use api::rbac::{Attributes, Policy, Target, UserInfo};
    let mut policy = Policy::default();
    for o in api::rbac::bootstrap_objects() {
        match o["kind"].as_str() {
            Some("ClusterRole") => {
                policy.put_cluster_role(&serde_json::from_value::<ClusterRole>(o)?)
            }
            Some("Role") => policy.put_role(&serde_json::from_value::<Role>(o)?),
            Some("ClusterRoleBinding") => {
                policy.put_cluster_role_binding(&serde_json::from_value::<ClusterRoleBinding>(o)?)
            }
            Some("RoleBinding") => {
                policy.put_role_binding(&serde_json::from_value::<RoleBinding>(o)?)
            }
            _ => {}
        }
    }
    let per_ns = 10;
    let spaces = args.role_bindings.div_ceil(per_ns);
    let built = Instant::now();
    for n in 0..args.role_bindings {
        let (ns, i) = (n / per_ns, n % per_ns);
        let b: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": format!("b-{i}"), "namespace": format!("team-{ns}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "system:aggregate-to-edit"},
            "subjects": [{"kind": "User", "name": format!("user-{ns}-{i}")}]}))?;
        policy.put_role_binding(&b);
    }
    let build = built.elapsed();
    let user = UserInfo::new(format!("user-{}-5", spaces / 2), &[]).authenticated();
    let ns_own = format!("team-{}", spaces / 2);
    let ns_other = format!("team-{}", spaces / 3);
    fn ask<'a>(user: &'a UserInfo, ns: &'a str) -> Attributes<'a> {
        Attributes {
            user,
            verb: "create",
            target: Target::Resource {
                namespace: ns,
                group: "",
                resource: "configmaps",
                subresource: "",
                name: "",
            },
        }
    }
    let (allow, deny) = (ask(&user, &ns_own), ask(&user, &ns_other));
    assert!(policy.authorize(&allow).allowed && !policy.authorize(&deny).allowed);
    let time = |a: &Attributes<'_>| {
        let mut lat = Vec::with_capacity(args.decisions);
        for _ in 0..args.decisions {
            let t = Instant::now();
            std::hint::black_box(policy.authorize(std::hint::black_box(a)));
            lat.push(t.elapsed());
        }
        lat.sort();
        lat
    };
    let (allowed, denied) = (time(&allow), time(&deny));
    println!(
        "berth bench authz: {} RoleBindings in {} namespaces and the bootstrap policy ({} bindings), indexed in {}",
        args.role_bindings,
        spaces,
        policy.binding_count(),
        ms(build)
    );
    println!("{:<54} {:>20}   target", "figure", "value");
    let ns = |d: Duration| format!("{} ns", d.as_nanos());
    for (what, lat, target) in [
        ("allow", &allowed, "p99 <= 1 us"),
        ("deny", &denied, "p99 <= 2 us"),
    ] {
        println!(
            "{:<54} {:>20}   ",
            format!("{what}: decision p50"),
            ns(percentile(lat, 0.5))
        );
        println!(
            "{:<54} {:>20}   {target}",
            format!("{what}: decision p99"),
            ns(percentile(lat, 0.99))
        );
    }
    Ok(())
}

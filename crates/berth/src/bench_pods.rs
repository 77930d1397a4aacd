//! `berth bench pods`: how fast a node starts pods, and what it costs in memory. It runs a
//! real `berth server` and a real `berth agent` (separate processes, so the agent's memory is
//! its own), with an image built here from the machine's static busybox, and measures:
//!
//! - pod start latency, one pod at a time: API create -> every container running, as a
//!   watch sees it (p50/p99);
//! - a burst: many pods created at once -> all running;
//! - the agent's RSS idle and with the pods running, and the shims' RSS per pod;
//!
//! and in the same run the floor (`runc run -d` of an equivalent bundle) and a peer
//! (`podman run -d`, when podman is installed). Prints a table; asserts nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use api::k8s_openapi::api::core::v1::{Node, Pod};
use bytes::Bytes;
use client::{Client, ListParams, WatchEvent};
use http::Method;
use serde_json::json;
use tokio::sync::{Mutex, Notify};

use crate::bench::{Server, ms, percentile, start_server};

#[derive(Clone, Debug, clap::Args)]
pub struct PodBenchArgs {
    /// Pods started one after another for the latency figures (and per runtime compared).
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Pods created at once in the burst.
    #[arg(long, default_value_t = 100)]
    burst: usize,
    /// The node's OCI runtime (`builtin` or a binary such as `runc`).
    #[arg(long, default_value = "builtin")]
    runtime: String,
    /// Members of the StatefulSet timed with claims and with emptyDir volumes.
    #[arg(long, default_value_t = 10)]
    statefulset_replicas: usize,
    /// Rounds of each StatefulSet, alternating (the median is reported).
    #[arg(long, default_value_t = 3)]
    statefulset_rounds: usize,
}

const IMAGE: &str = "bench.local/busybox:bench";
const NAMESPACE: &str = "bench";

/// A `docker save` archive of a one-layer image: static busybox and a few applets.
fn busybox_archive() -> Result<Vec<u8>> {
    let busybox = std::fs::read("/bin/busybox")
        .context("reading /bin/busybox (apt-get install busybox-static)")?;
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h
    };
    let mut layer = tar::Builder::new(Vec::new());
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        layer.append_data(&mut h, d, &[][..])?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    layer.append_data(&mut h, "bin/busybox", &busybox[..])?;
    for applet in ["sh", "sleep", "true"] {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        h.set_link_name("busybox")?;
        layer.append_data(&mut h, format!("bin/{applet}"), &[][..])?;
    }
    let passwd = b"root:x:0:0:root:/root:/bin/sh\n";
    let mut h = header(tar::EntryType::Regular, 0o644, passwd.len() as u64);
    layer.append_data(&mut h, "etc/passwd", &passwd[..])?;
    let layer = layer.into_inner()?;
    let diff = runtime::images::Digest::of(&layer);
    let config = json!({
        "architecture": runtime::images::host_arch(), "os": "linux",
        "config": {"Cmd": ["sleep", "100000"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff.as_str()]},
    })
    .to_string();
    let manifest = json!([{"Config": "config.json", "RepoTags": [IMAGE], "Layers": ["layer.tar"]}])
        .to_string();
    let mut out = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("config.json", config.as_bytes()),
        ("layer.tar", &layer[..]),
        ("manifest.json", manifest.as_bytes()),
    ] {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        out.append_data(&mut h, path, data)?;
    }
    Ok(out.into_inner()?)
}

/// A process's resident memory, in KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A process's proportional set size (shared pages split among their users), in KiB.
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// PIDs of the shims whose bundles live under `run_dir`.
fn shims(run_dir: &Path) -> Vec<u32> {
    let needle = run_dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.contains("\0shim\0") && cmd.contains(&needle)
        })
        .collect()
}

struct Agent {
    child: Child,
    run_dir: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The agent pins pod namespaces under a private mount of its own; the scratch run
        // directory goes with it.
        let _ = runtime::containers::mount::unmount(&self.run_dir.join("ns"));
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

fn pod(name: &str, node: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                            "command": ["sleep", "100000"]}],
        },
    })
}

fn running(p: &Pod) -> bool {
    let Some(s) = &p.status else { return false };
    let cs = s.container_statuses.as_deref().unwrap_or_default();
    !cs.is_empty()
        && cs
            .iter()
            .all(|c| c.state.as_ref().is_some_and(|st| st.running.is_some()))
}

/// When each pod was first seen with all its containers running (by one watch).
#[derive(Clone, Default)]
struct Seen {
    at: Arc<Mutex<HashMap<String, Instant>>>,
    changed: Arc<Notify>,
}

impl Seen {
    async fn wait_for(&self, names: &[String], timeout: Duration) -> Result<Vec<Instant>> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            {
                let at = self.at.lock().await;
                if names.iter().all(|n| at.contains_key(n)) {
                    return Ok(names.iter().map(|n| at[n]).collect());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                bail!("pods did not start within {timeout:?}");
            }
        }
    }
}

async fn watch_pods(c: Client, seen: Seen) {
    let mut rv = String::new();
    loop {
        let params = ListParams {
            resource_version: Some(rv.clone()).filter(|r| !r.is_empty()),
            ..Default::default()
        };
        let Ok(mut w) = c.watch::<Pod>(Some(NAMESPACE), &params).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while let Some(ev) = w.next().await {
            match ev {
                WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                    rv = p.metadata.resource_version.clone().unwrap_or_default();
                    if running(&p) {
                        let name = p.metadata.name.clone().unwrap_or_default();
                        seen.at
                            .lock()
                            .await
                            .entry(name)
                            .or_insert_with(Instant::now);
                        seen.changed.notify_waiters();
                    }
                }
                WatchEvent::Error(_) => {
                    rv.clear();
                    break;
                }
                _ => {}
            }
        }
    }
}

async fn create(c: &Client, name: &str, node: &str) -> Result<()> {
    c.request(
        Method::POST,
        &format!("/api/v1/namespaces/{NAMESPACE}/pods"),
        "application/json",
        Bytes::from(pod(name, node).to_string()),
    )
    .await
    .with_context(|| format!("creating pod {name}"))?;
    Ok(())
}

/// Create a StatefulSet of `replicas` (OrderedReady, as Kubernetes defaults), each member with
/// a claim of the default class or an emptyDir volume; return the time until all are Ready,
/// and delete it.
async fn statefulset_ready(c: &Client, replicas: usize, claims: bool) -> Result<Duration> {
    let mut spec = json!({
        "serviceName": "bench", "replicas": replicas,
        "selector": {"matchLabels": {"app": "sts"}},
        "template": {"metadata": {"labels": {"app": "sts"}},
                     "spec": {"terminationGracePeriodSeconds": 0,
                              "containers": [{"name": "main", "image": IMAGE,
                                              "imagePullPolicy": "Never",
                                              "command": ["sleep", "100000"],
                                              "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
    });
    if claims {
        spec["volumeClaimTemplates"] = json!([{"metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]);
    } else {
        spec["template"]["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    }
    let set = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                     "metadata": {"name": "bench", "namespace": NAMESPACE}, "spec": spec});
    let path = format!("/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets");
    let t = Instant::now();
    c.request_json(Method::POST, &path, Some(&set)).await?;
    let deadline = t + Duration::from_secs(300);
    loop {
        let s = c
            .request_json(Method::GET, &format!("{path}/bench"), None)
            .await?;
        if s["status"]["readyReplicas"].as_u64() == Some(replicas as u64) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the statefulset did not become ready: {}", s["status"]);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = t.elapsed();
    c.request(
        Method::DELETE,
        &format!("{path}/bench"),
        "application/json",
        Bytes::from(json!({"propagationPolicy": "Foreground"}).to_string()),
    )
    .await?;
    Ok(took)
}

/// Delete every claim and wait until their volumes are gone.
async fn clear_claims(c: &Client) -> Result<()> {
    c.request(
        Method::DELETE,
        &format!("/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims"),
        "application/json",
        Bytes::new(),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (vols, _) = c
            .list::<api::k8s_openapi::api::core::v1::PersistentVolume>(None, &ListParams::default())
            .await?;
        if vols.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} volumes were not removed", vols.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Delete every pod and wait until the node runs none.
async fn clear(c: &Client, run_dir: &Path) -> Result<()> {
    c.request(
        Method::DELETE,
        &format!("/api/v1/namespaces/{NAMESPACE}/pods?gracePeriodSeconds=0"),
        "application/json",
        Bytes::new(),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (pods, _) = c
            .list::<Pod>(Some(NAMESPACE), &ListParams::default())
            .await?;
        let containers = std::fs::read_dir(run_dir.join("containers"))
            .map(|d| d.count())
            .unwrap_or(0);
        if pods.is_empty() && containers == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} pods and {containers} containers still there",
                pods.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn start_agent(server: &Server, runtime_name: &str) -> Result<Agent> {
    let node_dir = server.dir.join("node");
    std::fs::create_dir_all(&node_dir)?;
    let store = crate::images_cli::store_in(&node_dir)?;
    runtime::images::import(&store, &busybox_archive()?[..], &runtime::images::Quiet)
        .context("importing the benchmark image")?;
    let run_dir = std::env::temp_dir().join(format!("berth-bench-run-{}", std::process::id()));
    let child = Command::new(std::env::current_exe()?)
        .args([
            "agent",
            "--server",
            &format!("https://127.0.0.1:{}", server.port),
        ])
        .arg("--token-file")
        .arg(server.dir.join("credentials/admin.token"))
        .arg("--ca-cert")
        .arg(server.dir.join("tls/ca.crt"))
        .arg("--data-dir")
        .arg(&node_dir)
        .arg("--run-dir")
        .arg(&run_dir)
        .args(["--node-name", "bench-node", "--node-ip", "127.0.0.1"])
        .args(["--runtime", runtime_name])
        .env("BERTH_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting berth agent")?;
    let agent = Agent { child, run_dir };
    let deadline = Instant::now() + Duration::from_secs(30);
    while server
        .client
        .get::<Node>(None, "bench-node")
        .await?
        .is_none()
    {
        if Instant::now() > deadline {
            bail!("the agent did not register its node");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(agent)
}

/// The floor: `runc run -d` of a bundle like the agent's (overlay root, same config).
fn runc_floor(n: usize, layer: &Path, scratch: &Path) -> Result<Vec<Duration>> {
    use runtime::containers::{ContainerSpec, SharedNamespaces};
    let runc = ["/usr/sbin/runc", "/usr/bin/runc"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("runc is not installed")?;
    let bundle = scratch.join("bundle");
    let rootfs = bundle.join("rootfs");
    runtime::containers::mount::overlay(&[layer.to_path_buf()], &scratch.join("rw"), &rootfs)?;
    let spec = ContainerSpec {
        id: "floor".into(),
        args: vec!["sleep".into(), "100000".into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        namespaces: SharedNamespaces::default(),
        cgroup: "/berth-bench/floor".into(),
        max_open_files: 1024,
        ..Default::default()
    };
    let config = runtime::containers::spec::runtime_spec(&spec, "rootfs")?;
    std::fs::write(bundle.join("config.json"), serde_json::to_vec(&config)?)?;
    let state = scratch.join("runc-state");
    let mut lat = Vec::new();
    for i in 0..n {
        let id = format!("floor-{i}");
        let t = Instant::now();
        let ok = Command::new(&runc)
            .arg("--root")
            .arg(&state)
            .args(["run", "-d", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?
            .success();
        lat.push(t.elapsed());
        if !ok {
            bail!("runc run failed");
        }
        let _ = Command::new(&runc)
            .arg("--root")
            .arg(&state)
            .args(["delete", "--force", &id])
            .status();
    }
    let _ = runtime::containers::mount::unmount(&rootfs);
    Ok(lat)
}

/// The peer: `podman run -d` of the same image, if podman is installed.
fn podman_peer(n: usize, archive: &Path) -> Result<Option<Vec<Duration>>> {
    let Ok(podman) = which("podman") else {
        return Ok(None);
    };
    let loaded = Command::new(&podman)
        .args(["load", "-q", "-i"])
        .arg(archive)
        .stdout(Stdio::null())
        .status()?;
    if !loaded.success() {
        bail!("podman load failed");
    }
    let mut lat = Vec::new();
    for i in 0..n {
        let name = format!("berth-bench-{i}");
        let t = Instant::now();
        let ok = Command::new(&podman)
            .args(["run", "-d", "--runtime", "runc", "--network", "none"])
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ])
            .args(["--name", &name, IMAGE, "sleep", "100000"])
            .stdout(Stdio::null())
            .status()?
            .success();
        lat.push(t.elapsed());
        if !ok {
            bail!("podman run failed");
        }
        let _ = Command::new(&podman)
            .args(["rm", "-f", "-t", "0", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = Command::new(&podman)
        .args(["rmi", "-f", IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    Ok(Some(lat))
}

fn which(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} is not installed"))
}

fn summary(lat: &mut [Duration]) -> String {
    lat.sort();
    format!(
        "p50 {} p99 {}",
        ms(percentile(lat, 0.5)),
        ms(percentile(lat, 0.99))
    )
}

pub async fn run(args: PodBenchArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the pod benchmark runs containers and needs root");
    }
    println!(
        "berth bench pods: a berth server and a berth agent ({} runtime) on scratch directories",
        args.runtime
    );
    let server = start_server(&[]).await?;
    let c = server.client.clone();
    c.request_json(
        Method::POST,
        "/api/v1/namespaces",
        Some(&json!({"metadata": {"name": NAMESPACE}})),
    )
    .await?;
    let agent = start_agent(&server, &args.runtime).await?;
    let seen = Seen::default();
    let watcher = tokio::spawn(watch_pods(c.clone(), seen.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_kib(agent.child.id());
    let row =
        |name: &str, value: String, target: &str| println!("{name:<52} {value:>34}   {target}");
    println!("{:<52} {:>34}   target", "figure", "value");

    // Warm up once (first start pays for page cache and cgroup setup).
    create(&c, "warmup", "bench-node").await?;
    seen.wait_for(&["warmup".to_string()], Duration::from_secs(60))
        .await?;
    clear(&c, &agent.run_dir).await?;

    let mut lat = Vec::with_capacity(args.pods);
    for i in 0..args.pods {
        let name = format!("seq-{i}");
        let t = Instant::now();
        create(&c, &name, "bench-node").await?;
        let at = seen.wait_for(&[name], Duration::from_secs(60)).await?;
        lat.push(at[0] - t);
    }
    let agent_busy = rss_kib(agent.child.id());
    let shim_pids = shims(&agent.run_dir);
    let mean_mib = |f: fn(u32) -> u64| {
        shim_pids.iter().map(|&p| f(p)).sum::<u64>() as f64 / 1024.0 / shim_pids.len().max(1) as f64
    };
    let (shim_rss, shim_pss) = (mean_mib(rss_kib), mean_mib(pss_kib));
    row(
        &format!(
            "pod start, create -> running ({} pods, one by one)",
            args.pods
        ),
        summary(&mut lat),
        "p50 <= 60 ms, p99 <= 150 ms",
    );
    row(
        "agent RSS idle",
        format!("{:.1} MiB", idle as f64 / 1024.0),
        "<= 20 MiB",
    );
    row(
        &format!("agent RSS with {} pods running", args.pods),
        format!(
            "{:.1} MiB (+{:.2} MiB/pod)",
            agent_busy as f64 / 1024.0,
            (agent_busy.saturating_sub(idle)) as f64 / 1024.0 / args.pods.max(1) as f64
        ),
        "+<= 2 MiB per pod",
    );
    if !shim_pids.is_empty() {
        row(
            "shim memory per running container (mean)",
            format!("RSS {shim_rss:.2} MiB, PSS {shim_pss:.2} MiB"),
            "(with the agent) <= 2 MiB per pod",
        );
    }
    clear(&c, &agent.run_dir).await?;

    let names: Vec<String> = (0..args.burst).map(|i| format!("burst-{i}")).collect();
    let t = Instant::now();
    let mut creates = Vec::new();
    for n in &names {
        let (c, n) = (c.clone(), n.clone());
        creates.push(tokio::spawn(
            async move { create(&c, &n, "bench-node").await },
        ));
    }
    for cr in creates {
        cr.await??;
    }
    let at = seen.wait_for(&names, Duration::from_secs(300)).await?;
    let all = at.iter().max().map(|m| *m - t).unwrap_or_default();
    row(
        &format!("burst: {} pods created at once -> all running", args.burst),
        format!("{:.2} s", all.as_secs_f64()),
        "<= 5 s",
    );
    clear(&c, &agent.run_dir).await?;
    watcher.abort();

    // A Deployment of `burst` replicas, from create to all available, as `kubectl apply`
    // followed by `kubectl rollout status` sees it: the controllers, the scheduler and the
    // agent together.
    let replicas = args.burst;
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "bench", "namespace": NAMESPACE},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "bench"}},
                 "template": {"metadata": {"labels": {"app": "bench"}},
                              "spec": {"terminationGracePeriodSeconds": 0,
                                       "containers": [{"name": "main", "image": IMAGE,
                                                       "imagePullPolicy": "Never",
                                                       "command": ["sleep", "100000"]}]}}},
    });
    let t = Instant::now();
    c.request_json(
        Method::POST,
        &format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments"),
        Some(&deployment),
    )
    .await?;
    let deadline = t + Duration::from_secs(300);
    loop {
        let d = c
            .request_json(
                Method::GET,
                &format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments/bench"),
                None,
            )
            .await?;
        if d["status"]["availableReplicas"].as_u64() == Some(replicas as u64)
            && d["status"]["updatedReplicas"].as_u64() == Some(replicas as u64)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the deployment did not become available: {}", d["status"]);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    row(
        &format!("deployment of {replicas} replicas: create -> {replicas}/{replicas} available"),
        format!("{:.2} s", t.elapsed().as_secs_f64()),
        "seconds",
    );
    c.request(
        Method::DELETE,
        &format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments/bench"),
        "application/json",
        Bytes::from(json!({"propagationPolicy": "Foreground"}).to_string()),
    )
    .await?;
    clear(&c, &agent.run_dir).await?;

    // A StatefulSet whose members each get a claim of the default class (a volume made on the
    // node when the member is placed), beside the same set on emptyDir volumes.
    if args.statefulset_replicas > 0 && args.statefulset_rounds > 0 {
        let mut took: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
        for round in 0..args.statefulset_rounds {
            for step in 0..2 {
                let claims = (round + step) % 2 == 1;
                let t = statefulset_ready(&c, args.statefulset_replicas, claims).await?;
                took[usize::from(claims)].push(t);
                clear(&c, &agent.run_dir).await?;
                clear_claims(&c).await?;
            }
        }
        for t in &mut took {
            t.sort();
        }
        let (plain, claimed) = (took[0][took[0].len() / 2], took[1][took[1].len() / 2]);
        let n = args.statefulset_replicas;
        row(
            &format!("statefulset of {n}, emptyDir: create -> all Ready"),
            format!("{:.2} s", plain.as_secs_f64()),
            "",
        );
        row(
            &format!("statefulset of {n}, a 1Gi claim each: create -> all Ready"),
            format!("{:.2} s", claimed.as_secs_f64()),
            "",
        );
        row(
            "  what the claims add",
            format!(
                "{:+.0}%",
                (claimed.as_secs_f64() / plain.as_secs_f64() - 1.0) * 100.0
            ),
            "< 20%",
        );
    }

    // The floor and the peer, on this machine, now.
    let store = crate::images_cli::store_in(&server.dir.join("node"))?;
    let image = store
        .resolve(IMAGE)?
        .context("the benchmark image is gone")?;
    let layer = store.layer_dirs(&image)[0].clone();
    let scratch = server.dir.join("floor");
    let mut floor = tokio::task::spawn_blocking({
        let (layer, scratch, n) = (layer.clone(), scratch.clone(), args.pods);
        move || runc_floor(n, &layer, &scratch)
    })
    .await??;
    row(
        "floor: runc run -d of the same bundle",
        summary(&mut floor),
        "berth within 2x",
    );
    let archive = server.dir.join("busybox.tar");
    std::fs::write(&archive, busybox_archive()?)?;
    let peer = tokio::task::spawn_blocking({
        let (archive, n) = (archive.clone(), args.pods);
        move || podman_peer(n, &archive)
    })
    .await?;
    match peer {
        Ok(Some(mut p)) => row(
            "peer: podman run -d (runc)",
            summary(&mut p),
            "berth faster",
        ),
        Ok(None) => row(
            "peer: podman run -d",
            "not installed".into(),
            "apt-get install podman",
        ),
        Err(e) => row("peer: podman run -d", format!("failed: {e:#}"), ""),
    }
    drop(agent);
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("berth-bench-run-{}", std::process::id())),
    );
    Ok(())
}

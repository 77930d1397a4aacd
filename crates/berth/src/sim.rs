//! `berth sim`: a what-if run of the real scheduler against simulated nodes. It starts the
//! API server on the real embedded store (in a scratch directory) in this process, creates N
//! Node objects and M pods through the API, runs the scheduler loop exactly as a cluster does
//! (its plans committed through `pods/binding`), and prints placements per second, decision
//! latency and how well the pods were packed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use api::k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use apiserver::ApiServer;
use client::{Client, ListParams};
use controllers::scheduling::SchedulerLoop;
use futures_util::StreamExt;
use serde_json::json;
use store::RedbStore;

use crate::bench::percentile;
use crate::inprocess::InProcess;

#[derive(Clone, Debug, clap::Args)]
pub struct SimArgs {
    /// Simulated nodes.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Pods to place.
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// Each node's allocatable CPU.
    #[arg(long, default_value = "16")]
    node_cpu: String,
    /// Each node's allocatable memory.
    #[arg(long, default_value = "64Gi")]
    node_memory: String,
    /// Each node's pod limit.
    #[arg(long, default_value_t = 110)]
    node_pods: u32,
    /// Each pod's CPU request (pods of template k ask (k mod 4) + 1 times this).
    #[arg(long, default_value = "100m")]
    pod_cpu: String,
    /// Each pod's memory request (scaled like --pod-cpu).
    #[arg(long, default_value = "256Mi")]
    pod_memory: String,
    /// Pod templates; templates differ in their requests (1x to 4x), so pods fall into at
    /// most four equivalence classes.
    #[arg(long, default_value_t = 1)]
    templates: usize,
    /// Zones the nodes are spread over (label topology.kubernetes.io/zone).
    #[arg(long, default_value_t = 1)]
    zones: usize,
    /// Nodes tainted `dedicated=special:NoSchedule` (pods do not tolerate it).
    #[arg(long, default_value_t = 0)]
    tainted: usize,
    /// `least-allocated`, `most-allocated` or `balanced`.
    #[arg(long, default_value = "least-allocated")]
    strategy: String,
    /// Percentage of nodes a lone pod scores (default: kube-scheduler's adaptive share).
    #[arg(long)]
    percentage_of_nodes_to_score: Option<u8>,
    /// Hold the scheduler (it follows the pods as they are made) until every pod exists, then
    /// release it: placements then measure a scheduler in sync working off a backlog, as
    /// scheduler benchmarks do: scheduling and commits alone, not the pods' creation.
    #[arg(long)]
    after_create: bool,
}

const NAMESPACE: &str = "sim";
/// Objects created at once through the API.
const CONCURRENCY: usize = 64;

fn scaled(q: &str, k: usize) -> Result<String> {
    let base = api::quantity::Quantity::parse(q).map_err(|e| anyhow::anyhow!("{q:?}: {e}"))?;
    Ok(format!("{}m", base.milli() * (k as i64 + 1)))
}

async fn create_all<T>(c: &Client, namespace: Option<&str>, objs: Vec<T>) -> Result<()>
where
    T: api::k8s_openapi::Resource + serde::Serialize + serde::de::DeserializeOwned + Send + Sync,
{
    let failures = futures_util::stream::iter(objs)
        .map(|o| async move { c.create(namespace, &o).await.err() })
        .buffer_unordered(CONCURRENCY)
        .filter_map(|e| async move { e })
        .collect::<Vec<_>>()
        .await;
    if let Some(e) = failures.first() {
        bail!("{} creates failed, e.g. {e}", failures.len());
    }
    Ok(())
}

pub async fn run(args: SimArgs) -> Result<()> {
    let strategy: scheduler::Strategy = args.strategy.parse().map_err(anyhow::Error::msg)?;
    let dir = tempfile::Builder::new()
        .prefix("berth-sim-")
        .tempdir()
        .context("creating a scratch directory")?;
    let store = RedbStore::open(&dir.path().join("state.redb"), 64 << 20)?;
    let api = ApiServer::start(Arc::new(store), apiserver::Config::default()).await?;
    let c = InProcess::client(api.clone(), "berth-sim");
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?;
    c.create(None, &ns).await?;
    // Pods run as the namespace's `default` account (no namespace controller runs here).
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
    c.create(Some(NAMESPACE), &sa).await?;
    println!(
        "berth sim: {} nodes ({} CPU, {} memory, {} pods each; {} zones, {} tainted), {} pods \
         in {} templates, {strategy:?}, store {}",
        args.nodes,
        args.node_cpu,
        args.node_memory,
        args.node_pods,
        args.zones,
        args.tainted,
        args.pods,
        args.templates,
        dir.path().display()
    );

    let t = Instant::now();
    let nodes = (0..args.nodes)
        .map(|i| {
            let taints = if i < args.tainted {
                json!([{"key": "dedicated", "value": "special", "effect": "NoSchedule"}])
            } else {
                json!([])
            };
            serde_json::from_value::<Node>(json!({
                "metadata": {"name": format!("sim-{i:05}"), "labels": {
                    "kubernetes.io/hostname": format!("sim-{i:05}"),
                    "topology.kubernetes.io/zone": format!("zone-{}", i % args.zones.max(1))}},
                "spec": {"taints": taints},
                "status": {"allocatable": {"cpu": args.node_cpu, "memory": args.node_memory,
                                           "pods": args.node_pods.to_string()},
                           "capacity": {"cpu": args.node_cpu, "memory": args.node_memory,
                                        "pods": args.node_pods.to_string()},
                           "conditions": [{"type": "Ready", "status": "True"}]},
            }))
        })
        .collect::<Result<Vec<_>, _>>()?;
    create_all(&c, None, nodes).await?;
    println!(
        "{:<44} {:>12.2} s",
        "nodes created",
        t.elapsed().as_secs_f64()
    );

    let sched = SchedulerLoop::new(
        InProcess::client(api.clone(), "default-scheduler"),
        scheduler::Config {
            strategy,
            percentage_of_nodes_to_score: args.percentage_of_nodes_to_score,
            ..Default::default()
        },
    )
    .quiet();
    let stats = sched.stats();
    // With --after-create the scheduler follows the pods as they are made but places none
    // until all exist.
    let (release, held) = tokio::sync::watch::channel(args.after_create);
    tokio::spawn(Arc::new(sched.held(held)).run());

    let templates = args.templates.max(1);
    let pods = (0..args.pods)
        .map(|i| {
            let k = i % templates;
            Ok(serde_json::from_value::<Pod>(json!({
                "metadata": {"name": format!("pod-{i:06}"), "labels": {"template": k.to_string()}},
                "spec": {"containers": [{"name": "app", "image": "sim",
                    "resources": {"requests": {"cpu": scaled(&args.pod_cpu, k % 4)?,
                                               "memory": scaled(&args.pod_memory, k % 4)?}}}]},
            }))?)
        })
        .collect::<Result<Vec<_>>>()?;
    // The measured window: from here (the scheduler already running), or from the
    // scheduler's release with --after-create. CPU is counted over the same window.
    let mut start = Instant::now();
    let mut cpu_start = cpu_time();
    create_all(&c, Some(NAMESPACE), pods).await?;
    let created = start.elapsed();
    println!("{:<44} {:>12.2} s", "pods created", created.as_secs_f64());
    if args.after_create {
        start = Instant::now();
        cpu_start = cpu_time();
        let _ = release.send(false);
    }

    // Until every pod is decided, or nothing has moved for a while (the rest fit nowhere).
    let (mut last, mut still) = (0, Instant::now());
    loop {
        let bound = stats.bound.load(Ordering::Relaxed) as usize;
        if bound >= args.pods {
            break;
        }
        if bound != last {
            (last, still) = (bound, Instant::now());
        } else if still.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let placed = stats.bound.load(Ordering::Relaxed) as usize;
    let cpu_spent = cpu_time().saturating_sub(cpu_start);
    let elapsed = if placed >= args.pods {
        start.elapsed()
    } else {
        still.duration_since(start)
    };

    let mut decided: Vec<Duration> = stats
        .nanos
        .lock()
        .map(|m| {
            m.iter()
                .map(|u| Duration::from_nanos(u64::from(*u)))
                .collect()
        })
        .unwrap_or_default();
    decided.sort();
    let busy: Duration = decided.iter().sum();
    let row = |name: &str, value: String| println!("{name:<44} {value:>14}");
    row("pods bound", format!("{placed} of {}", args.pods));
    row(
        "unschedulable verdicts",
        stats.unschedulable.load(Ordering::Relaxed).to_string(),
    );
    row(
        "placements committed per second",
        format!("{:.0}/s", placed as f64 / elapsed.as_secs_f64()),
    );
    // Steadier than the rate on a shared machine, and what a faster one would divide.
    row(
        "CPU (all threads) per placement",
        format!(
            "{:.0} us",
            cpu_spent.as_secs_f64() * 1e6 / placed.max(1) as f64
        ),
    );
    row(
        "decision latency p50 / p99",
        format!(
            "{:.1} / {:.1} us",
            percentile(&decided, 0.50).as_nanos() as f64 / 1e3,
            percentile(&decided, 0.99).as_nanos() as f64 / 1e3
        ),
    );
    row(
        "decisions per second of scheduler time",
        format!(
            "{:.0}/s",
            decided.len() as f64 / busy.as_secs_f64().max(1e-9)
        ),
    );

    let (all_nodes, _) = c.list::<Node>(None, &ListParams::default()).await?;
    let (all_pods, _) = c.list::<Pod>(None, &ListParams::default()).await?;
    let s = scheduler::Snapshot::new(&all_nodes, &all_pods);
    let (cpu, cpu_total, mem, mem_total) = s.allocated();
    row(
        "allocated CPU / memory",
        format!(
            "{:.1}% / {:.1}%",
            cpu as f64 * 100.0 / cpu_total.max(1) as f64,
            mem as f64 * 100.0 / mem_total.max(1) as f64
        ),
    );
    row(
        "nodes used",
        format!("{} of {}", s.nodes_used(), args.nodes),
    );
    let unplaced = args.pods - placed;
    if unplaced > 0 {
        println!(
            "{unplaced} pods fit nowhere (the cluster is full, or they cannot go where room is)"
        );
    }
    Ok(())
}

/// CPU time this process has used, user and system, over all its threads.
fn cpu_time() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF).map_or(Duration::ZERO, |u| {
        let t = |tv: nix::sys::time::TimeVal| {
            Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000)
        };
        t(u.user_time()) + t(u.system_time())
    })
}

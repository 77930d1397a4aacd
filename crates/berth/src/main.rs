//! `berth`: the command line. One binary for every role of the cluster and its client verbs.

#[global_allocator]
static ALLOC: alloc::PerRole = alloc::PerRole;

mod alloc;
mod approver;
mod bench;
mod bench_crd;
mod bench_dns;
mod bench_ingress;
mod bench_net;
mod bench_netpol;
mod bench_pods;
mod cluster;
mod csr_cleaner;
mod encryption;
mod fleet;
mod images_cli;
mod inprocess;
mod instances;
mod join;
mod node;
mod pki;
mod policy;
mod signer;
mod sim;
mod store_cli;
mod token_secrets;
mod tokens_cli;
mod users_cli;

use anyhow::Result;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "berth", version = apiserver_version(), about = "A container orchestrator that speaks the Kubernetes API")]
struct Cli {
    /// Log filter (tracing's syntax, e.g. `info`, `berth=debug`); `RUST_LOG` also works.
    #[arg(long, global = true, env = "BERTH_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole cluster on this machine, in the foreground: one node, or several with
    /// `--nodes`.
    Up(Box<cluster::UpArgs>),
    /// Run the control plane (API server, store, controllers) without a node agent.
    Server(cluster::ServerArgs),
    /// Run a node agent for a cluster whose API server runs elsewhere.
    Agent(node::RemoteAgentArgs),
    /// Manage the node's images: pull, import, list, remove.
    Image(images_cli::ImageArgs),
    /// The cluster's state: snapshots of a running server, restoring one.
    Store(store_cli::StoreArgs),
    /// The cluster's users: kubeconfigs with client certificates signed by its CA.
    User(users_cli::UserArgs),
    /// Bootstrap tokens for joining nodes.
    Token(tokens_cli::TokenArgs),
    /// The per-container shim (started by the node agent, not by hand).
    #[command(hide = true)]
    Shim(ShimArgs),
    /// Run a process in a container with the built-in runtime (started by the agent).
    #[command(hide = true)]
    OciExec(OciExecArgs),
    /// Measure berth on this machine and print the figures.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// What-if: the real scheduler and store placing pods on simulated nodes.
    Sim(sim::SimArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The API server: create throughput and latency, list time, watch fan-out, memory.
    Api(bench::ApiBenchArgs),
    /// The node: pod start latency, bursts and memory, beside runc and podman.
    Pods(bench_pods::PodBenchArgs),
    /// The pod network: set-up and tear-down per pod beside a bare veth, and churn.
    Net(bench_net::NetBenchArgs),
    /// The Ingress proxy: requests per second and latency through it beside straight to
    /// the pod, at a fixed rate and flat out (needs `hey`).
    Ingress(bench_ingress::IngressBenchArgs),
    /// NetworkPolicy: connect() latency with 1,000 policies beside none, a pod's rules
    /// written before it starts, and a policy change through the API -> enforced.
    Netpol(bench_netpol::NetpolBenchArgs),
    /// The cluster DNS: queries per second on one core (dnsperf), latency, the search-path
    /// walk, and the DNS and proxy memory at 10,000 Services and 50,000 pods.
    Dns(bench_dns::DnsBenchArgs),
    /// RBAC: one authorization decision, allow and deny, among 10,000 RoleBindings.
    Authz(bench::AuthzBenchArgs),
}

#[derive(clap::Args)]
struct ShimArgs {
    #[arg(long)]
    id: String,
    #[arg(long)]
    bundle: std::path::PathBuf,
    #[arg(long)]
    log_file: std::path::PathBuf,
    /// An OCI runtime binary; without it, the built-in runtime.
    #[arg(long)]
    runc: Option<std::path::PathBuf>,
    #[arg(long)]
    state: std::path::PathBuf,
    #[arg(long)]
    cgroup: String,
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    log_max_bytes: u64,
    #[arg(long)]
    stdin: bool,
    #[arg(long)]
    stdin_once: bool,
    #[arg(long)]
    tty: bool,
}

#[derive(clap::Args)]
struct OciExecArgs {
    #[arg(long)]
    root: std::path::PathBuf,
    #[arg(long)]
    process: std::path::PathBuf,
    #[arg(long)]
    console_socket: Option<std::path::PathBuf>,
    #[arg(long)]
    id: String,
}

fn apiserver_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

fn init_logging(filter: Option<&str>) {
    let filter = filter
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_string());
    // youki's crates warn about every cgroup v1 controller the kernel lacks, on every container
    // they touch, and log as errors what are expected races (a container's state read as its
    // shim removes it). Every failure of theirs comes back to berth as an error, which berth
    // reports with its context; so they are quiet unless asked.
    let filter = if filter.contains("libcontainer") || filter.contains("libcgroups") {
        filter
    } else {
        format!("{filter},libcontainer=off,libcgroups=off")
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The shim stays single-threaded: no logging machinery, no async runtime.
    if let Command::Shim(a) = cli.command {
        runtime::containers::shim::main(runtime::containers::ShimArgs {
            id: a.id,
            bundle: a.bundle,
            log: a.log_file,
            runc: a.runc,
            state: a.state,
            log_max_bytes: a.log_max_bytes,
            cgroup: a.cgroup,
            stdin: a.stdin,
            stdin_once: a.stdin_once,
            tty: a.tty,
        });
    }
    if let Command::OciExec(a) = cli.command {
        runtime::containers::youki::exec_main(
            &a.id,
            &a.root,
            &a.process,
            a.console_socket.as_deref(),
        );
    }
    init_logging(cli.log.as_deref());
    // redb asserts on some damaged files; the store catches those panics and reports the
    // damage itself, so the default hook's message and backtrace would only alarm.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if store::panic_is_caught() {
            tracing::debug!(%info, "store library panicked on a damaged file");
        } else {
            report(info);
        }
    }));
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, causes chained: what went wrong, then why.
            eprintln!("berth: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    // Benchmarks that run pods or wire pod networks do it in a network namespace of their
    // own, entered before any thread starts so that every thread and child is in it.
    if matches!(
        cli.command,
        Command::Bench(
            BenchCommand::Pods(_)
                | BenchCommand::Net(_)
                | BenchCommand::Dns(_)
                | BenchCommand::Ingress(_)
                | BenchCommand::Netpol(_)
        )
    ) {
        bench_net::isolate()?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("berth")
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Up(args) => cluster::run_up(*args).await,
            Command::Server(args) => cluster::run(args).await,
            Command::Agent(args) => node::run_remote(args).await,
            Command::Bench(BenchCommand::Api(args)) => bench::run(args).await,
            Command::Bench(BenchCommand::Pods(args)) => bench_pods::run(args).await,
            Command::Bench(BenchCommand::Net(args)) => bench_net::run(args).await,
            Command::Bench(BenchCommand::Ingress(args)) => bench_ingress::run(args).await,
            Command::Bench(BenchCommand::Netpol(args)) => bench_netpol::run(args).await,
            Command::Bench(BenchCommand::Dns(args)) => bench_dns::run(args).await,
            Command::Bench(BenchCommand::Authz(args)) => bench::authz(args),
            Command::Image(args) => images_cli::run(args).await,
            Command::Store(args) => store_cli::run(args).await,
            Command::User(args) => users_cli::run(args).await,
            Command::Token(args) => tokens_cli::run(args).await,
            Command::Sim(args) => sim::run(args).await,
            Command::Shim(_) | Command::OciExec(_) => {
                unreachable!("helpers run before the async runtime starts")
            }
        }
    })
}

//! The control-plane roles: `berth server` (API server, store, controllers) and `berth up`
//! (all of it on one machine). Starts, bootstraps the objects every cluster has, serves until
//! SIGINT or SIGTERM.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use api::cidr::Cidr;
use api::k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Namespace, Service, ServicePort,
    ServiceSpec,
};
use api::k8s_openapi::api::networking::v1::{IngressClass, IngressClassSpec};
use api::k8s_openapi::api::scheduling::v1::PriorityClass;
use api::k8s_openapi::api::storage::v1::StorageClass;
use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use api::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use api::rbac::UserInfo;
use apiserver::ApiServer;
use apiserver::auth::{Authenticator, ServiceAccountTokens};
use apiserver::http::{serve, tls_config};
use client::{Client, ClientError};
use controllers::harness::{self, Outcome, Queue, Reconciler};
use controllers::leader::{self, Leadership};
use controllers::mirror::Mirror;
use controllers::scheduling::SchedulerLoop;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use store::RedbStore;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::inprocess::InProcess;
use crate::pki;

/// Namespaces every cluster has.
const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];
/// The store's page cache; the API server keeps its own decoded cache, so this can be small.
const STORE_CACHE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Clone, Debug, clap::Args)]
pub struct ServerArgs {
    /// Address the Kubernetes API listens on (HTTPS).
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Where the cluster keeps its state, credentials and kubeconfig.
    #[arg(long, env = "BERTH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The address clients and pods use to reach the API server (default: the listen address,
    /// or 127.0.0.1 when listening on all addresses).
    #[arg(long)]
    pub advertise_address: Option<IpAddr>,
    /// How the scheduler scores nodes: `least-allocated` spreads pods, `most-allocated`
    /// packs them onto the fewest nodes, `balanced` keeps each node's CPU and memory use in
    /// proportion.
    #[arg(long, default_value = "least-allocated", value_parser = parse_strategy)]
    pub scheduler_strategy: scheduler::Strategy,
    /// Seconds without a Lease renewal after which a node is unreachable: it gets the
    /// `node.kubernetes.io/unreachable` taints and its pods are evicted once their
    /// toleration runs out. Agents renew every 2 s (Kubernetes: 40 s, renewals every 10 s).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(3..))]
    pub node_monitor_grace_period: u64,
    /// Seconds pods stay on a not-ready or unreachable node before eviction, unless their
    /// spec says otherwise (Kubernetes: 300). Replacing them sooner is safe: a pod of a
    /// StatefulSet is not replaced until its old copy is confirmed gone (its object stays
    /// until the node's agent removes it), and a node that comes back stops the pods that
    /// were replaced; Nomad and Swarm replace a lost node's work at once.
    #[arg(long, default_value_t = 30)]
    pub default_toleration_seconds: i64,
    /// Seconds between compactions of the store's history: each drops what is older than
    /// the previous one, so watches can resume from at least this far back.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub compaction_interval: u64,
    /// The pods' address ranges, one per IP family (`10.42.0.0/16,fd42::/56` for dual-stack);
    /// each node gets a part of each.
    #[arg(long, default_value = "10.42.0.0/16", value_parser = parse_cidrs)]
    pub cluster_cidr: Cidrs,
    /// The Services' address ranges, one per IP family (`10.43.0.0/16,fd43::/112` for
    /// dual-stack Services); the first family is a Service's default.
    #[arg(long, default_value = "10.43.0.0/16", value_parser = parse_service_cidrs)]
    pub service_cidr: Cidrs,
    #[command(flatten)]
    pub dns: DnsArgs,
    /// Free space kept on the store's filesystem for updates and deletions: under it, writes
    /// that create objects are refused (507) until space is freed. A Kubernetes quantity
    /// (`64Mi`, `1Gi`); `0` turns it off.
    #[arg(long, default_value = "64Mi", value_parser = parse_bytes)]
    pub store_min_free: u64,
    /// Write store records without their checksum: only for `berth bench api`, which prices
    /// checksums against it. Records written so are not checked when read.
    #[arg(long, hide = true, default_value_t = true, action = clap::ArgAction::Set)]
    pub store_record_checksums: bool,
    /// Take a snapshot of the cluster's state this often (`12h`, `30m`; `0`: never), into
    /// `--snapshot-dir`; `berth store restore` brings one back.
    #[arg(long, default_value = "0", value_parser = crate::store_cli::parse_interval)]
    pub snapshot_interval: Duration,
    /// How many scheduled snapshots to keep (the oldest go first).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_retain: u64,
    /// Where scheduled snapshots go (default: `<data-dir>/snapshots`).
    #[arg(long)]
    pub snapshot_dir: Option<PathBuf>,
    /// The size of each node's IPv4 pod range.
    #[arg(long = "node-cidr-mask-size-ipv4", default_value_t = 24, value_parser = clap::value_parser!(u8).range(8..=30))]
    pub node_cidr_mask_v4: u8,
    /// The size of each node's IPv6 pod range.
    #[arg(long = "node-cidr-mask-size-ipv6", default_value_t = 64, value_parser = clap::value_parser!(u8).range(16..=120))]
    pub node_cidr_mask_v6: u8,
    /// Read-only requests served at once (long-running ones and system:masters aside); past
    /// it, 429 with Retry-After.
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_requests_inflight: u64,
    /// Mutating requests served at once, as `--max-requests-inflight`.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_mutating_requests_inflight: u64,
    /// Connections one client address may hold open; more are closed at once.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections_per_client: u64,
    /// The Pod Security level (and version, `baseline:v1.29`) of namespaces whose
    /// `pod-security.kubernetes.io/enforce` label names none: `privileged` (Kubernetes'
    /// default), `baseline` or `restricted`. Warn follows it.
    #[arg(long, default_value = "baseline", value_parser = parse_pod_security)]
    pub pod_security_default: api::podsecurity::LevelVersion,
    /// Seal Secrets in the store with AES-GCM (keys in `<data-dir>/credentials/encryption.keys`;
    /// `berth store rotate-key` replaces them). Off only for `berth bench api`'s comparison.
    #[arg(long, hide = true, default_value_t = true, action = clap::ArgAction::Set)]
    pub encrypt_secrets: bool,
    /// Write an audit log (audit.k8s.io/v1 Event lines, one per request over HTTPS) to this
    /// file (mode 0600).
    #[arg(long)]
    pub audit_log_path: Option<PathBuf>,
    /// How much the audit log records: `Metadata` (who, what, from where, the answer),
    /// `Request` (and the request's object) or `RequestResponse` (and the response's).
    #[arg(long, default_value = "Metadata", value_parser = parse_audit_level)]
    pub audit_level: apiserver::audit::Level,
    /// Where the cluster's state lives: the embedded store in the data dir (the default), or
    /// an etcd cluster shared by several servers, `etcd://host:2379,host:2379` (`etcds://` for
    /// TLS, trusting `--etcd-cafile`). With etcd the scheduler and the controllers run on one
    /// server at a time, elected through Leases.
    #[arg(long, value_parser = parse_store)]
    pub store: Option<StoreUrl>,
    /// The CA that signed the etcd members' certificates (PEM).
    #[arg(long)]
    pub etcd_cafile: Option<PathBuf>,
    /// A client certificate for etcd (PEM), with `--etcd-keyfile`.
    #[arg(long)]
    pub etcd_certfile: Option<PathBuf>,
    #[arg(long)]
    pub etcd_keyfile: Option<PathBuf>,
    /// How long the scheduler's and the controllers' Leases stand without renewal when
    /// several servers share an etcd store (Kubernetes: 15s); another server takes over this
    /// long after the leader is gone.
    #[arg(long, default_value = "2s", value_parser = crate::store_cli::parse_interval)]
    pub leader_elect_lease_duration: Duration,
    /// How long a request's body may take to arrive (`60s`, `2m`); a slower one is refused.
    #[arg(long, default_value = "60s", value_parser = crate::store_cli::parse_interval)]
    pub request_body_timeout: Duration,
    /// The issuer (`iss`) of service account tokens, also the audience the API server
    /// accepts them for; `/.well-known/openid-configuration` publishes it.
    #[arg(long, default_value = "https://kubernetes.default.svc.cluster.local")]
    pub service_account_issuer: String,
    /// The longest a requested service account token may live (`1h`, `24h`); longer requests
    /// are shortened to it, with a warning. Unlimited by default.
    #[arg(long, value_parser = crate::store_cli::parse_interval)]
    pub service_account_max_token_expiration: Option<Duration>,
    /// How long the certificates the cluster signs from certificate requests live (`8760h`,
    /// a year, by default); requests that ask for less get less. Nodes renew theirs at 70-90%
    /// of their life.
    #[arg(long, default_value = "8760h", value_parser = parse_signing_duration)]
    pub cluster_signing_duration: Duration,
}

/// An etcd cluster to keep the state in.
#[derive(Clone, Debug)]
pub struct StoreUrl {
    pub endpoints: Vec<String>,
    pub tls: bool,
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.endpoints.join(","))
    }
}

fn parse_store(s: &str) -> Result<StoreUrl, String> {
    let (tls, rest) = if let Some(r) = s.strip_prefix("etcds://") {
        (true, r)
    } else if let Some(r) = s.strip_prefix("etcd://") {
        (false, r)
    } else {
        return Err(format!(
            "{s:?}: name an etcd cluster as etcd://host:port[,host:port...] (or etcds:// for TLS)"
        ));
    };
    let scheme = if tls { "https" } else { "http" };
    let endpoints: Vec<String> = rest
        .trim_end_matches('/')
        .split(',')
        .filter(|e| !e.is_empty())
        .map(|e| format!("{scheme}://{e}"))
        .collect();
    if endpoints.is_empty() {
        return Err(format!("{s:?}: name at least one etcd member"));
    }
    Ok(StoreUrl { endpoints, tls })
}

/// Open the store the flags name: the embedded one in `db_dir`, or etcd.
async fn open_store(args: &ServerArgs, data_dir: &Path) -> Result<Arc<dyn store::Store>> {
    if let Some(url) = &args.store {
        let read = |p: &Option<PathBuf>| -> Result<Option<Vec<u8>>> {
            p.as_ref()
                .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
                .transpose()
        };
        let cfg = store::EtcdConfig {
            endpoints: url.endpoints.clone(),
            ca_pem: read(&args.etcd_cafile)?,
            cert_pem: read(&args.etcd_certfile)?,
            key_pem: read(&args.etcd_keyfile)?,
        };
        if url.tls && cfg.ca_pem.is_none() {
            anyhow::bail!(
                "etcds:// needs --etcd-cafile, the CA that signed the members' certificates"
            );
        }
        let store = store::EtcdStore::connect(&cfg).await.map_err(|e| {
            let why = match e {
                store::StoreError::Unavailable { reason, .. } => {
                    reason.trim_start_matches("etcd: ").to_string()
                }
                e => format!("{e:#}"),
            };
            anyhow::anyhow!("cannot reach etcd at {url}: {why}")
        })?;
        return Ok(Arc::new(store));
    }
    let db_dir = data_dir.join("db");
    std::fs::create_dir_all(&db_dir)?;
    std::fs::set_permissions(&db_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let store = RedbStore::open(&db_dir.join("state.redb"), STORE_CACHE_BYTES)
        .map_err(|e| damaged(e.into(), data_dir))
        .with_context(|| format!("opening the store in {}", db_dir.display()))?;
    store.set_min_free(args.store_min_free);
    store.set_record_checksums(args.store_record_checksums);
    Ok(Arc::new(store))
}

/// File descriptors kept back from clients for the store, the node's containers and the rest.
const RESERVED_FDS: u64 = 2048;

/// Raise the soft limit on open files to the hard one (a server holds a descriptor per
/// client), and return how many connections that leaves for clients.
fn connection_budget() -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    // Without room to spare, clients get a quarter of what there is.
    limit.saturating_sub(RESERVED_FDS).max(limit / 4) as usize
}

/// The cluster DNS, as servers and agents must agree on it.
#[derive(Clone, Debug, clap::Args)]
pub struct DnsArgs {
    /// The cluster DNS address (in the Service range): every node answers there for its own
    /// pods, and pods get it as their nameserver.
    #[arg(long, default_value = "10.43.0.10")]
    pub cluster_dns: IpAddr,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local", value_parser = parse_domain)]
    pub cluster_domain: String,
}

fn parse_domain(s: &str) -> Result<String, String> {
    let d = s.trim_end_matches('.').to_ascii_lowercase();
    net::dns::Index::new(&d).map_err(|e| e.to_string())?;
    Ok(d)
}

fn parse_audit_level(s: &str) -> Result<apiserver::audit::Level, String> {
    apiserver::audit::Level::parse(s)
        .ok_or_else(|| format!("{s:?}: must be Metadata, Request or RequestResponse"))
}

fn parse_pod_security(s: &str) -> Result<api::podsecurity::LevelVersion, String> {
    use api::podsecurity::{Level, LevelVersion, Version};
    let (level, version) = s.split_once(':').unwrap_or((s, "latest"));
    Ok(LevelVersion {
        level: Level::parse(level)
            .ok_or_else(|| format!("{level:?}: must be privileged, baseline or restricted"))?,
        version: Version::parse(version)
            .ok_or_else(|| format!("{version:?}: must be \"latest\" or \"v1.x\""))?,
    })
}

fn parse_strategy(s: &str) -> Result<scheduler::Strategy, String> {
    s.parse()
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let q = api::quantity::Quantity::parse(s).map_err(|e| format!("{s:?}: {e}"))?;
    u64::try_from(q.value()).map_err(|_| format!("{s:?}: must not be negative"))
}

pub fn parse_service_cidrs(s: &str) -> Result<Cidrs, String> {
    let ranges = api::cidr::parse_list(s).map_err(|e| e.to_string())?;
    for c in &ranges {
        let fits = if c.is_ipv6() {
            (64..=124).contains(&c.prefix())
        } else {
            (12..=28).contains(&c.prefix())
        };
        if !fits {
            return Err(format!(
                "{c}: a service range must be an IPv4 range from /12 to /28 or an IPv6 range from /64 to /124"
            ));
        }
    }
    Ok(Cidrs(ranges))
}

/// Address ranges from a flag: at most one per IP family.
#[derive(Clone, Debug)]
pub struct Cidrs(pub Vec<Cidr>);

impl std::fmt::Display for Cidrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&list.join(","))
    }
}

pub fn parse_cidrs(s: &str) -> Result<Cidrs, String> {
    api::cidr::parse_list(s)
        .map(Cidrs)
        .map_err(|e| e.to_string())
}

/// A damaged store's error, with what the operator can do about it.
fn damaged(e: anyhow::Error, data_dir: &Path) -> anyhow::Error {
    let corrupt = e
        .chain()
        .any(|c| matches!(c.downcast_ref(), Some(store::StoreError::Corrupt(_))));
    if !corrupt {
        return e;
    }
    let dir = data_dir.display();
    anyhow::anyhow!(
        "{e:#}. berth does not serve a damaged store: `berth store check --data-dir {dir}` lists \
         what is damaged, `berth store recover --data-dir {dir}` keeps what is intact, or \
         `berth store restore` brings back a snapshot"
    )
}

/// `/var/lib/berth` for root, `$XDG_DATA_HOME/berth` (or `~/.local/share/berth`) otherwise.
pub fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/berth");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("berth");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/berth")
}

pub struct Running {
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
    }
}

/// `berth up`: the control plane and a node agent.
#[derive(Clone, Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub agent: crate::node::AgentArgs,
    /// How many nodes: the first is this process's own; each other runs as a `berth agent` in
    /// a network namespace of its own, joined as a remote machine would be (try multi-node
    /// on one machine). They stop, and leave nothing behind, when this process stops.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=200))]
    pub nodes: u32,
    /// The addresses of the nodes of `--nodes` on the bridge between them (the first node
    /// takes the first).
    #[arg(long, default_value = "10.41.0.0/24", value_parser = parse_nodes_cidr)]
    pub nodes_cidr: Cidr,
}

fn parse_nodes_cidr(s: &str) -> Result<Cidr, String> {
    match api::cidr::parse_list(s)
        .map_err(|e| e.to_string())?
        .as_slice()
    {
        [c] if !c.is_ipv6() && c.prefix() <= 29 => Ok(*c),
        _ => Err(format!("{s:?}: must be one IPv4 range of at least /29")),
    }
}

/// `berth up`: the control plane and this machine's node, and with `--nodes` the other nodes.
pub async fn run_up(mut up: UpArgs) -> Result<()> {
    require_root("berth up")?;
    let first = crate::fleet::node_ip(&up)?;
    if first.is_some() {
        crate::fleet::prepare(&up.nodes_cidr)?;
        if up.agent.node_ip.is_none() {
            up.agent.node_ip = first.map(IpAddr::V4);
        }
    }
    let running = match start(&up.server, Some(&up.agent)).await {
        Ok(r) => r,
        Err(e) => {
            if first.is_some() {
                crate::fleet::remove_base(&up.nodes_cidr);
            }
            return Err(e);
        }
    };
    let data_dir = up.server.data_dir.clone().unwrap_or_else(default_data_dir);
    crate::instances::register(&data_dir);
    let fleet = match first {
        None => None,
        Some(ip) => {
            let server = format!("https://{ip}:{}", running.addr.port());
            let first_node = crate::node::node_name(&up.agent);
            match crate::fleet::Fleet::start(&up, &first_node, &server, &data_dir).await {
                Ok(f) => Some(f),
                Err(e) => {
                    crate::fleet::remove_base(&up.nodes_cidr);
                    running.stop().await;
                    crate::instances::unregister(&data_dir);
                    return Err(e);
                }
            }
        }
    };
    let nodes = if up.nodes > 1 {
        format!(", {} nodes", up.nodes)
    } else {
        String::new()
    };
    serve_until_signalled("berth up", running, &data_dir, nodes, fleet).await
}

/// Start the control plane (and, given agent settings, this machine's node) and return once
/// it serves.
pub async fn start(args: &ServerArgs, node: Option<&crate::node::AgentArgs>) -> Result<Running> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    // Keys, the store (with Secrets) and pods' files: for the owner's eyes only.
    pki::ensure_dir(&data_dir)?;
    // The store first: a cluster whose state cannot be reached has nothing to serve.
    let raw = open_store(args, &data_dir).await?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    // With a node here, pods must reach the API through the `kubernetes` Service: it is
    // also served on the node's address (when the listen address is loopback) and that
    // address is advertised, as k3s does.
    let node_ip = node.map(crate::node::node_ip);
    let node_listener = match node_ip {
        Some(ip) if !ip.is_loopback() && addr.ip().is_loopback() => {
            let at = SocketAddr::new(ip, addr.port());
            Some(
                TcpListener::bind(at)
                    .await
                    .with_context(|| format!("cannot listen on the node's address {at}"))?,
            )
        }
        Some(ip) if ip.is_loopback() && args.advertise_address.is_none() => {
            warn!(
                "the node has no address but loopback (give it one, or --node-ip): pods cannot reach the API server"
            );
            None
        }
        _ => None,
    };
    let advertise_ip = args.advertise_address.unwrap_or(match node_ip {
        Some(ip)
            if !ip.is_loopback() && (addr.ip().is_loopback() || addr.ip().is_unspecified()) =>
        {
            ip
        }
        _ if addr.ip().is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        _ => addr.ip(),
    });
    let advertise = SocketAddr::new(advertise_ip, addr.port());
    let mut config = apiserver::Config {
        advertise,
        default_toleration_seconds: args.default_toleration_seconds,
        compact_every: Duration::from_secs(args.compaction_interval),
        service_cidrs: args.service_cidr.0.clone(),
        snapshot_files: crate::store_cli::IDENTITY_FILES
            .iter()
            .map(|name| (name.to_string(), data_dir.join(name)))
            .collect(),
        body_timeout: args.request_body_timeout,
        pod_security_default: args.pod_security_default,
        audit: args.audit_log_path.clone().map(|p| (p, args.audit_level)),
        limits: apiserver::limits::LimitsConfig {
            max_connections: connection_budget(),
            max_connections_per_client: args.max_connections_per_client as usize,
            max_requests_inflight: args.max_requests_inflight as usize,
            max_mutating_requests_inflight: args.max_mutating_requests_inflight as usize,
        },
        ..Default::default()
    };
    // The kubernetes Service takes the first address of the primary range, as in Kubernetes.
    let primary = args.service_cidr.0[0];
    let service_ip = primary.nth(1).context("the service range has room")?;
    let dns_range = args
        .service_cidr
        .0
        .iter()
        .find(|c| c.contains(args.dns.cluster_dns));
    if dns_range.is_none() || args.dns.cluster_dns == service_ip {
        anyhow::bail!(
            "--cluster-dns {} must be an address of the Service ranges {} other than {service_ip} (the kubernetes Service's)",
            args.dns.cluster_dns,
            args.service_cidr
        );
    }
    let pki = pki::load_or_create(
        &data_dir,
        &pki::Sans::for_server(addr.ip(), advertise_ip, service_ip),
    )?;
    config.front_proxy = Some(apiserver::FrontProxy {
        ca_pem: pki.front_proxy_ca_pem.clone(),
        cert_pem: pki.front_proxy_cert_pem.clone(),
        key_pem: pki.front_proxy_key_pem.clone(),
        client_ca_pem: pki.ca_pem.clone(),
    });

    // Objects include Secrets: the store is for this user's eyes only.
    let mut rotation: Option<Arc<crate::encryption::Rotation>> = None;

    // Secrets are sealed before they reach the disk; snapshots copy them sealed.
    let served: Arc<dyn store::Store> = if args.encrypt_secrets {
        let sealed = crate::encryption::wrap(raw.clone(), &data_dir)?;
        rotation = Some(Arc::new(crate::encryption::Rotation::new(
            sealed.clone(),
            raw.clone(),
            &data_dir,
        )));
        sealed
    } else {
        raw.clone()
    };
    let api = ApiServer::start(served, config)
        .await
        .map_err(|e| damaged(e.into(), &data_dir))
        .context("loading the cluster state")?;
    api.set_snapshot_source(raw);
    if let Some(r) = rotation {
        api.set_key_rotation(r);
    }

    if !args.snapshot_interval.is_zero() {
        let dir = args
            .snapshot_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("snapshots"));
        tokio::spawn(crate::store_cli::schedule(
            api.clone(),
            dir,
            args.snapshot_interval,
            args.snapshot_retain as usize,
        ));
    }
    let bootstrap = InProcess::client(api.clone(), "berth-bootstrap");
    bootstrap_objects(&bootstrap, advertise, service_ip).await?;
    crate::policy::ensure(&bootstrap)
        .await
        .context("putting the bootstrap RBAC policy in place")?;
    // Components judged by RBAC start once the policy is in the authorizer's index.
    api.cache()
        .wait_fresh()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("waiting for the bootstrap RBAC policy")?;
    ensure_dns_service(&bootstrap, args.dns.cluster_dns).await;
    // Controllers and the scheduler run once per cluster. Servers sharing an etcd store elect
    // one for each through a Lease, as kube-controller-manager and kube-scheduler do; a single
    // server is always the leader, and renewing a Lease nobody contends would only cost it a
    // store write every half second.
    let (leadership, scheduling): (Leadership, Leadership) = if args.store.is_some() {
        let identity = format!(
            "{}_{}",
            pki::hostname().unwrap_or_else(|| "berth".into()),
            advertise
        );
        let elect = |lease: &'static str, user: &'static str| {
            let mut cfg = leader::Config::new(lease, &identity);
            cfg.lease_duration = args.leader_elect_lease_duration;
            cfg.renew_deadline = args.leader_elect_lease_duration.mul_f64(0.75);
            cfg.retry_period = args.leader_elect_lease_duration / 4;
            let elector = Arc::new(leader::Elector::new(
                InProcess::client_as(api.clone(), lease, UserInfo::new(user, &[])),
                cfg,
            ));
            let leadership = elector.leadership();
            supervise::supervise(lease, move || {
                let e = elector.clone();
                async move { e.run().await }
            });
            leadership
        };
        (
            elect("kube-controller-manager", "system:kube-controller-manager"),
            elect("kube-scheduler", "system:kube-scheduler"),
        )
    } else {
        (Leadership::Always, Leadership::Always)
    };
    // The kubernetes Service's endpoints: the leading server's address.
    KubernetesService::start(bootstrap.clone(), advertise, service_ip, leadership.clone());
    // Each controller acts as its own kube-system account, judged by Kubernetes' role for
    // it; the shared mirrors list and watch as system:kube-controller-manager.
    let manager = InProcess::client_as(
        api.clone(),
        "kube-controller-manager",
        UserInfo::new("system:kube-controller-manager", &[]),
    );
    let controller_api = api.clone();
    let client_for = move |account: &'static str| {
        InProcess::client_as(
            controller_api.clone(),
            "kube-controller-manager",
            UserInfo::of_service_account("kube-system", account),
        )
    };
    controllers::start_controllers(
        &manager,
        &client_for,
        controllers::nodelifecycle::Config {
            grace: Duration::from_secs(args.node_monitor_grace_period),
        },
        controllers::nodeipam::Config {
            cluster_cidrs: args.cluster_cidr.0.clone(),
            node_mask_v4: args.node_cidr_mask_v4,
            node_mask_v6: args.node_cidr_mask_v6,
        },
        pki.ca_pem.clone(),
        leadership.clone(),
    );
    // kube-aggregator's part: local APIServices, and Service-backed ones checked and proxied.
    let aggregator = api.clone();
    supervise::supervise("kube-aggregator", move || {
        aggregator.clone().run_aggregation()
    });
    controllers::start_definition_finalizer(
        &InProcess::client(api.clone(), "apiextensions-apiserver"),
        leadership.clone(),
    );
    // Approved certificate requests for Kubernetes' built-in signers get the cluster CA's
    // signature.
    let signer = Arc::new(crate::signer::Signer::new(
        pki.ca_pem.clone(),
        pki.ca_key_pem.clone(),
        args.cluster_signing_duration,
    ));
    let signer_client = client_for("certificate-controller");
    let l = leadership.clone();
    supervise::supervise("certificate-signer", move || {
        let (c, s) = (signer_client.clone(), signer.clone());
        leader::while_leading("certificate-signer", l.clone(), move || {
            crate::signer::run(c.clone(), s.clone())
        })
    });
    // Nodes' client certificate requests from joining or renewing nodes are approved by rule.
    let approver_client = client_for("certificate-controller");
    let l = leadership.clone();
    supervise::supervise("certificate-approver", move || {
        let c = approver_client.clone();
        leader::while_leading("certificate-approver", l.clone(), move || {
            crate::approver::run(c.clone())
        })
    });
    let cleaner_client = client_for("certificate-controller");
    let l = leadership.clone();
    supervise::supervise("certificate-cleaner", move || {
        let c = cleaner_client.clone();
        leader::while_leading("certificate-cleaner", l.clone(), move || {
            crate::csr_cleaner::run(c.clone())
        })
    });
    // The scheduler has its own identity and Kubernetes' roles for it
    // (system:kube-scheduler, system:volume-scheduler), not the admin's.
    let scheduler = Arc::new(SchedulerLoop::new(
        InProcess::client_as(
            api.clone(),
            "default-scheduler",
            UserInfo::new("system:kube-scheduler", &[]),
        ),
        scheduler::Config {
            strategy: args.scheduler_strategy,
            ..Default::default()
        },
    ));
    supervise::supervise("scheduler", move || {
        let scheduler = scheduler.clone();
        leader::while_leading("scheduler", scheduling.clone(), move || {
            scheduler.clone().run()
        })
    });

    let mut local_agent = None;
    if let Some(node_args) = node {
        // The node acts as itself (system:node:<name>), judged by the Node authorizer and
        // RBAC like any other node, not as admin.
        let client = InProcess::client_as(
            api.clone(),
            "kubelet",
            UserInfo::new(
                format!(
                    "{}{}",
                    api::rbac::NODE_USER_PREFIX,
                    crate::node::node_name(node_args)
                ),
                &[api::rbac::NODES],
            ),
        );
        // NetworkPolicy enforcement reads every pod, as its own kube-system account (a
        // node may read only its own pods), with Kubernetes-style rights for exactly that.
        let policy_reader = InProcess::client_as(
            api.clone(),
            "berth-network-policy",
            UserInfo::of_service_account("kube-system", "berth-network-policy"),
        );
        let agent = crate::node::build(
            client,
            Some(policy_reader),
            &data_dir,
            node_args,
            &args.cluster_cidr.0,
            &args.service_cidr.0,
            &args.dns,
        )?;
        let name = agent.node_name().to_string();
        // The control plane's own node says so (as kubeadm labels it, with the admin's
        // rights: NodeRestriction keeps a node from giving itself a role).
        let labeller = bootstrap.clone();
        let labelled = name.clone();
        tokio::spawn(async move { label_control_plane(&labeller, &labelled).await });
        local_agent = Some((name, agent.server()));
        tokio::spawn(agent.run());
    }
    let remote = apiserver::AgentClient::new(
        &pki.ca_pem,
        &pki.agent_client_cert_pem,
        &pki.agent_client_key_pem,
    )
    .map_err(anyhow::Error::msg)
    .context("the client certificate for nodes' agents")?;
    let mut agents = crate::node::Agents::new(remote);
    if let Some((name, server)) = local_agent {
        agents = agents.with_local(&name, server);
    }
    api.set_node_connector(Arc::new(agents));

    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.serving_chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .context("parsing the serving certificate")?;
    let key = PrivateKeyDer::from_pem_slice(pki.serving_key_pem.as_bytes())
        .context("parsing the serving key")?;
    let client_ca: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes())
            .collect::<Result<_, _>>()
            .context("parsing the cluster CA")?;
    let tls = tls_config(chain, key, client_ca).context("building the TLS configuration")?;
    let tokens = ServiceAccountTokens::new(
        &pki.service_account_key,
        args.service_account_issuer.clone(),
        vec![args.service_account_issuer.clone()],
        args.service_account_max_token_expiration
            .map(|d| d.as_secs() as i64),
    )
    .map_err(anyhow::Error::msg)?;
    let tokens = Arc::new(tokens);
    if args.service_account_issuer == apiserver::auth::tokens::LEGACY_ISSUER {
        anyhow::bail!(
            "--service-account-issuer cannot be {:?}: that names the tokens of token Secrets",
            apiserver::auth::tokens::LEGACY_ISSUER
        );
    }
    // Token Secrets get their long-lived tokens, as from kube-controller-manager's tokens
    // controller (which acts with the manager's own rights).
    let (token_client, token_issuer, ca) = (manager.clone(), tokens.clone(), pki.ca_pem.clone());
    let l = leadership.clone();
    supervise::supervise("token-secrets", move || {
        let (c, t, ca) = (token_client.clone(), token_issuer.clone(), ca.clone());
        leader::while_leading("token-secrets", l.clone(), move || {
            crate::token_secrets::run(c.clone(), t.clone(), ca.clone())
        })
    });
    let auth = Arc::new(
        Authenticator::new([(
            pki.admin_token.clone(),
            UserInfo::new("admin", &[api::rbac::MASTERS]),
        )])
        .with_service_accounts(api.service_account_auth(tokens)),
    );
    api.set_authenticator(auth.clone());
    let (shutdown, rx) = watch::channel(false);
    if let Some(l) = node_listener {
        let (api, l, tls, auth, rx) = (
            api.clone(),
            Arc::new(l),
            tls.clone(),
            auth.clone(),
            rx.clone(),
        );
        supervise::supervise("api-server-node-address", move || {
            serve(
                api.clone(),
                l.clone(),
                tls.clone(),
                auth.clone(),
                rx.clone(),
            )
        });
    }
    let listener = Arc::new(listener);
    let server = supervise::supervise("api-server", move || {
        serve(
            api.clone(),
            listener.clone(),
            tls.clone(),
            auth.clone(),
            rx.clone(),
        )
    });

    let kubeconfig = pki::kubeconfig_path(&data_dir);
    // The kubeconfig is for this machine's users: the address listened on, unless that is
    // every address (then the advertised one).
    let local = if addr.ip().is_unspecified() {
        advertise
    } else {
        addr
    };
    let server_url = format!("https://{}", format_host(local));
    pki::write_kubeconfig(&kubeconfig, &server_url, &pki)?;
    Ok(Running {
        addr,
        kubeconfig,
        shutdown,
        server,
    })
}

fn format_host(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V6(ip) => format!("[{ip}]:{}", addr.port()),
        IpAddr::V4(ip) => format!("{ip}:{}", addr.port()),
    }
}

/// Puts the `kubernetes` Service and its Endpoints back as soon as either is deleted
/// (in-cluster clients find the API through them), and looks every ten seconds in case a
/// change went unseen, as kube-apiserver's bootstrap controller does.
struct KubernetesService {
    client: Client,
    advertise: SocketAddr,
    service_ip: IpAddr,
    queue: Queue,
}

const KUBERNETES_SERVICE_RECHECK: Duration = Duration::from_secs(10);

impl KubernetesService {
    /// Start it (with the mirrors it follows), supervised.
    fn start(client: Client, advertise: SocketAddr, service_ip: IpAddr, leadership: Leadership) {
        let queue = Queue::new("kubernetes-service");
        let only = || client::ListParams {
            field_selector: Some("metadata.name=kubernetes".into()),
            ..Default::default()
        };
        let services = Mirror::<Service>::narrowed(Some("default"), only());
        let endpoints = Mirror::<Endpoints>::narrowed(Some("default"), only());
        let q = queue.clone();
        services.on_change(move |_, new| {
            if new.is_none() {
                q.add("kubernetes");
            }
        });
        let q = queue.clone();
        endpoints.on_change(move |_, _| q.add("kubernetes"));
        queue.add("kubernetes");
        let keeper = Arc::new(KubernetesService {
            client: client.clone(),
            advertise,
            service_ip,
            queue,
        });
        harness::start(keeper.clone(), keeper.queue.clone(), 1, leadership);
        let c = client.clone();
        supervise::supervise("mirror/kubernetes-service", move || {
            services.clone().run(c.clone())
        });
        supervise::supervise("mirror/kubernetes-endpoints", move || {
            endpoints.clone().run(client.clone())
        });
    }
}

#[async_trait::async_trait]
impl Reconciler for KubernetesService {
    fn name(&self) -> &'static str {
        "kubernetes-service"
    }

    async fn reconcile(&self, _key: &str) -> Outcome {
        ensure_kubernetes_service(&self.client, self.advertise, self.service_ip).await?;
        Ok(Some(KUBERNETES_SERVICE_RECHECK))
    }
}

/// Refuse, before anything is created, to run a role that runs containers without root.
pub fn require_root(role: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "{role} runs containers (namespaces, cgroups, mounts) and needs root: run it with sudo \
             (`berth server` runs the control plane alone, without root)"
        );
    }
    Ok(())
}

/// `berth server`: serve until SIGINT or SIGTERM.
pub async fn run(args: ServerArgs) -> Result<()> {
    let running = start(&args, None).await?;
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    crate::instances::register(&data_dir);
    serve_until_signalled("berth server", running, &data_dir, String::new(), None).await
}

/// Say where the API is, serve until SIGINT or SIGTERM, then stop the extra nodes (if any)
/// and the control plane.
async fn serve_until_signalled(
    role: &str,
    running: Running,
    data_dir: &Path,
    nodes: String,
    fleet: Option<crate::fleet::Fleet>,
) -> Result<()> {
    println!(
        "{role}: Kubernetes API at https://{}{nodes}; run: export KUBECONFIG={}",
        format_host(running.addr),
        running.kubeconfig.display()
    );
    let signalled = wait_for_signal().await;
    info!("shutting down");
    if let Some(f) = fleet {
        f.stop().await;
    }
    tokio::time::timeout(Duration::from_secs(5), running.stop())
        .await
        .ok();
    crate::instances::unregister(data_dir);
    signalled
}

pub(crate) async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

fn exists_ok<T>(r: Result<T, ClientError>) -> Result<(), ClientError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.is_conflict() => Ok(()),
        Err(e) => Err(e),
    }
}

/// The objects every cluster has: system namespaces and the `kubernetes` Service.
async fn bootstrap_objects(c: &Client, advertise: SocketAddr, service_ip: IpAddr) -> Result<()> {
    for ns in SYSTEM_NAMESPACES {
        if c.get::<Namespace>(None, ns).await?.is_none() {
            let obj = Namespace {
                metadata: ObjectMeta {
                    name: Some((*ns).to_string()),
                    ..Default::default()
                },
                ..Default::default()
            };
            exists_ok(c.create(None, &obj).await)
                .with_context(|| format!("creating namespace {ns}"))?;
        }
    }
    // The classes Kubernetes reserves for what keeps a cluster or a node alive.
    for (name, value, about) in [
        (
            "system-cluster-critical",
            2_000_000_000,
            "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
        ),
        (
            "system-node-critical",
            2_000_001_000,
            "Used for system critical pods that must not be moved from their current node.",
        ),
    ] {
        if c.get::<PriorityClass>(None, name).await?.is_none() {
            let pc = PriorityClass {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                value,
                description: Some(about.into()),
                ..Default::default()
            };
            exists_ok(c.create(None, &pc).await)
                .with_context(|| format!("creating priority class {name}"))?;
        }
    }
    // The built-in provisioner's class, the default one, as k3s ships `local-path`.
    if c.get::<StorageClass>(None, "local-path").await?.is_none() {
        let class = StorageClass {
            metadata: ObjectMeta {
                name: Some("local-path".into()),
                annotations: Some(BTreeMap::from([(
                    api::kinds::storage::DEFAULT_CLASS_ANNOTATIONS[0].to_string(),
                    "true".to_string(),
                )])),
                ..Default::default()
            },
            provisioner: api::kinds::storage::LOCAL_PATH_PROVISIONER.into(),
            reclaim_policy: Some("Delete".into()),
            volume_binding_mode: Some("WaitForFirstConsumer".into()),
            allow_volume_expansion: Some(true),
            ..Default::default()
        };
        exists_ok(c.create(None, &class).await).context("creating storage class local-path")?;
    }
    // The built-in Ingress controller's class, the default one, as k3s ships Traefik's.
    if c.get::<IngressClass>(None, agent::ingress::CLASS)
        .await?
        .is_none()
    {
        let class = IngressClass {
            metadata: ObjectMeta {
                name: Some(agent::ingress::CLASS.into()),
                annotations: Some(BTreeMap::from([(
                    api::kinds::more::DEFAULT_INGRESS_CLASS_ANNOTATION.to_string(),
                    "true".to_string(),
                )])),
                ..Default::default()
            },
            spec: Some(IngressClassSpec {
                controller: Some(agent::ingress::CONTROLLER.into()),
                ..Default::default()
            }),
        };
        exists_ok(c.create(None, &class).await).context("creating ingress class berth")?;
    }
    ensure_kubernetes_service(c, advertise, service_ip)
        .await
        .context("creating the kubernetes service")
}

/// The `kube-dns` Service in kube-system, holding the cluster DNS address so no other
/// Service gets it, and where tools look for the cluster's DNS. Every node answers at its
/// address itself; it has no endpoints to forward to.
async fn ensure_dns_service(c: &Client, ip: IpAddr) {
    match c.get::<Service>(Some("kube-system"), "kube-dns").await {
        Ok(Some(s)) => {
            let have = s.spec.as_ref().and_then(|s| s.cluster_ip.clone());
            if have.as_deref() != Some(ip.to_string().as_str()) {
                warn!(have = ?have, want = %ip, "the kube-dns Service has another address than --cluster-dns; pods are given --cluster-dns");
            }
            return;
        }
        Ok(None) => {}
        Err(e) => {
            warn!(error = %e, "could not read the kube-dns Service");
            return;
        }
    }
    let port = |name: &str, port: i32, protocol: &str| ServicePort {
        name: Some(name.into()),
        port,
        protocol: Some(protocol.into()),
        target_port: Some(IntOrString::Int(port)),
        ..Default::default()
    };
    let svc = Service {
        metadata: ObjectMeta {
            name: Some("kube-dns".into()),
            labels: Some(
                [
                    ("k8s-app", "kube-dns"),
                    ("kubernetes.io/cluster-service", "true"),
                    ("kubernetes.io/name", "berth-dns"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.to_string()),
            ports: Some(vec![port("dns", 53, "UDP"), port("dns-tcp", 53, "TCP")]),
            ..Default::default()
        }),
        ..Default::default()
    };
    if let Err(e) = exists_ok(c.create(Some("kube-system"), &svc).await) {
        warn!(error = %e, %ip, "could not create the kube-dns Service");
    }
}

/// The `kubernetes` Service and its Endpoints, naming this server.
async fn ensure_kubernetes_service(
    c: &Client,
    advertise: SocketAddr,
    service_ip: IpAddr,
) -> Result<(), ClientError> {
    if c.get::<Service>(Some("default"), "kubernetes")
        .await?
        .is_none()
    {
        let svc = Service {
            metadata: ObjectMeta {
                name: Some("kubernetes".into()),
                labels: Some(
                    [("component", "apiserver"), ("provider", "kubernetes")]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(service_ip.to_string()),
                ports: Some(vec![ServicePort {
                    name: Some("https".into()),
                    port: 443,
                    protocol: Some("TCP".into()),
                    target_port: Some(IntOrString::Int(i32::from(advertise.port()))),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        exists_ok(c.create(Some("default"), &svc).await)?;
    }
    let subsets = vec![EndpointSubset {
        addresses: Some(vec![EndpointAddress {
            ip: advertise.ip().to_string(),
            ..Default::default()
        }]),
        ports: Some(vec![EndpointPort {
            name: Some("https".into()),
            port: i32::from(advertise.port()),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        ..Default::default()
    }];
    match c.get::<Endpoints>(Some("default"), "kubernetes").await? {
        None => {
            let ep = Endpoints {
                metadata: ObjectMeta {
                    name: Some("kubernetes".into()),
                    ..Default::default()
                },
                subsets: Some(subsets),
            };
            exists_ok(c.create(Some("default"), &ep).await)?;
        }
        Some(mut ep) if ep.subsets.as_ref() != Some(&subsets) => {
            ep.subsets = Some(subsets);
            if let Err(e) = c.replace(Some("default"), "kubernetes", &ep).await {
                warn!(error = %e, "could not update the kubernetes endpoints");
            }
        }
        Some(_) => {}
    }
    Ok(())
}

/// Put `node-role.kubernetes.io/control-plane` on node `name` once it has registered.
async fn label_control_plane(client: &client::Client, name: &str) {
    let patch = serde_json::json!({"metadata": {"labels": {CONTROL_PLANE_LABEL: ""}}});
    let mut delay = Duration::from_millis(50);
    loop {
        match client
            .merge_patch::<api::k8s_openapi::api::core::v1::Node>(None, name, &patch)
            .await
        {
            Ok(_) => return,
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                tracing::debug!(error = %e, "labelling the control plane's node; trying again")
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";

/// `--cluster-signing-duration`: at least 30 s, so that renewing nodes do not ask all the time.
fn parse_signing_duration(s: &str) -> Result<Duration, String> {
    let d = crate::store_cli::parse_interval(s)?;
    if d < Duration::from_secs(30) {
        return Err(format!(
            "{s:?}: at least 30s (nodes renew their certificates at 70-90% of it)"
        ));
    }
    Ok(d)
}

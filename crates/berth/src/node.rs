//! The node role: the agent with its image store and container runtime, started by `berth up`
//! next to the control plane, or by `berth agent` against a remote API server.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use agent::server::{NodeBody, NodeServer};
use agent::{Agent, AgentConfig, Dirs, NodeInfo};
use anyhow::{Context, Result, bail};
use apiserver::{Body, NodeConnector, NodeTarget};
use async_trait::async_trait;
use bytes::Bytes;
use client::Client;
use http::{Request, Response};
use runtime::containers::{ContainerRuntime, Engine, OciConfig, OciRuntime};

#[derive(Clone, Debug, clap::Args)]
pub struct AgentArgs {
    /// The node's name (default: this machine's hostname).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The node's address (default: the address of the default route's interface).
    #[arg(long)]
    pub node_ip: Option<IpAddr>,
    /// Runtime state (bundles, namespaces); containers here outlive an agent restart, not a
    /// reboot (default: /run/berth, or a directory named after --data-dir when it is set).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// The OCI runtime: `builtin` (youki's libcontainer inside berth) or a runc-compatible
    /// binary such as `runc`.
    #[arg(long, default_value = "builtin")]
    pub runtime: String,
    /// A registry (host:port) to pull from over plain HTTP; localhost always may. Repeatable.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Disk usage (percent) at which unused images are removed...
    #[arg(long, default_value_t = 85, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub image_gc_high_percent: u8,
    /// ...until usage is below this.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub image_gc_low_percent: u8,
    /// Seconds an image must have gone unused (or, never used, been stored) before garbage
    /// collection may remove it. Pinned images (`berth image import`, `berth image pin`)
    /// are never removed.
    #[arg(long, default_value_t = 120)]
    pub image_minimum_gc_age: u64,
    /// Most pods this node runs at once.
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// The resolver configuration whose servers the cluster DNS forwards other names to, and
    /// which `dnsPolicy: Default` pods get.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Where the volumes of the built-in `local-path` storage class live on this node
    /// (default: `<data-dir>/storage`).
    #[arg(long)]
    pub storage_dir: Option<PathBuf>,
    /// Most claim-backed volumes this node's pods may use at once (default: no limit). Pods
    /// that would need more wait, as kube-scheduler words it: "node(s) exceed max volume
    /// count".
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_volumes: Option<u32>,
    /// The most processes and threads one pod's containers may have together (the kubelet's
    /// podPidsLimit), so that a fork bomb stays in its pod; `0` for no limit.
    #[arg(long, default_value_t = 4096)]
    pub pod_pids_limit: u64,
    /// The port the built-in Ingress controller serves HTTP on, on every address of the node;
    /// `0` serves none.
    #[arg(long, default_value_t = 80)]
    pub ingress_http_port: u16,
    /// The port it serves HTTPS on (certificates from the Ingresses' TLS Secrets, by server
    /// name); `0` serves none.
    #[arg(long, default_value_t = 443)]
    pub ingress_https_port: u16,
    /// The port of the node's HTTPS endpoint (the kubelet's 10250), where API servers reach a
    /// joined node's agent for logs, exec, attach, port-forward and usage.
    #[arg(long, default_value_t = apiserver::DEFAULT_AGENT_PORT)]
    pub agent_port: u16,
    /// How pods reach pods of other nodes: `auto` (routes through the peer's address where
    /// the nodes share a subnet, VXLAN elsewhere), `host-gw` (routes only) or `vxlan` (always
    /// tunnelled; pods get an MTU 50 bytes below the node's link).
    #[arg(long, default_value = "auto")]
    pub node_network: net::routes::Backend,
}

/// `berth agent`: a node for a cluster whose API server runs elsewhere.
#[derive(Clone, Debug, clap::Args)]
pub struct RemoteAgentArgs {
    /// The API server, e.g. https://10.0.0.1:6443.
    #[arg(long)]
    pub server: String,
    /// A file holding a bootstrap token from `berth token create` (or set `BERTH_TOKEN` in
    /// the environment): never on the command line, where every user of the machine sees it.
    /// The node uses it once, to get its own certificate (kept in the data dir and renewed);
    /// afterwards it is not needed. Any other token is used as the node's credential as is.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The cluster CA certificate (PEM); `<data-dir>/pki/ca.crt` on the server.
    #[arg(long)]
    pub ca_cert: PathBuf,
    /// Where this node keeps images, pod data and logs.
    #[arg(long, env = "BERTH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The cluster's pod ranges, as the servers have them: pod traffic leaving them is
    /// masqueraded.
    #[arg(long, default_value = "10.42.0.0/16", value_parser = crate::cluster::parse_cidrs)]
    pub cluster_cidr: crate::cluster::Cidrs,
    /// The Services' address ranges, as the servers have them.
    #[arg(long, default_value = "10.43.0.0/16", value_parser = crate::cluster::parse_service_cidrs)]
    pub service_cidr: crate::cluster::Cidrs,
    #[command(flatten)]
    pub dns: crate::cluster::DnsArgs,
    #[command(flatten)]
    pub agent: AgentArgs,
    /// On exit, stop every container of this node and free its pods' networks (the extra
    /// nodes of `berth up --nodes`, whose namespace goes with them).
    #[arg(long, hide = true)]
    pub remove_pods_on_exit: bool,
    /// Only stop every container of this node and free its pods' networks, then exit (what a
    /// node of `berth up --nodes` whose agent died left running).
    #[arg(long, hide = true)]
    pub remove_pods_and_exit: bool,
}

/// The pod network of this node: a bridge, made once the control plane has given the node
/// its ranges.
fn network_setup(
    run_dir: &Path,
    cluster_cidrs: &[net::Cidr],
    service_cidrs: &[net::Cidr],
    mtu: Option<u32>,
) -> agent::NetworkSetup {
    let state_dir = run_dir.join("net");
    let cluster_cidrs = cluster_cidrs.to_vec();
    let service_cidrs = service_cidrs.to_vec();
    agent::NetworkSetup::FromNode(Arc::new(move |pod_cidrs| {
        let network = net::BridgeNetwork::new(net::BridgeConfig {
            bridge: "berth0".into(),
            pod_cidrs,
            cluster_cidrs: cluster_cidrs.clone(),
            service_cidrs: service_cidrs.clone(),
            state_dir: state_dir.clone(),
            mtu,
            nft: net::nft::find(),
        })?;
        Ok(Arc::new(network) as Arc<dyn net::PodNetwork>)
    }))
}

/// The node's name: `--node-name`, else the host's name.
pub fn node_name(args: &AgentArgs) -> String {
    args.node_name.clone().unwrap_or_else(hostname)
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.to_lowercase())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The node's address: as given, or the default route's.
pub fn node_ip(args: &AgentArgs) -> IpAddr {
    args.node_ip.unwrap_or_else(primary_ip)
}

/// The address this machine would use to reach the outside (no packet is sent).
fn primary_ip() -> IpAddr {
    UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|()| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// A run directory per data directory, so that two clusters on one machine never share one.
pub(crate) fn default_run_dir(data_dir: &Path, default_data: &Path) -> PathBuf {
    if data_dir == default_data {
        return PathBuf::from("/run/berth");
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data_dir.as_os_str().as_encoded_bytes() {
        h = (h ^ *b as u64).wrapping_mul(0x100_0000_01b3);
    }
    PathBuf::from(format!("/run/berth-{:08x}", h as u32))
}

fn find_binary(name: &str) -> Result<PathBuf> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in
        std::env::split_paths(&path).chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
    {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("the OCI runtime {name:?} is not installed (on Debian: apt-get install runc)")
}

fn runtime_version(runc: &Path) -> String {
    std::process::Command::new(runc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.replace(" version ", "://")))
        .unwrap_or_else(|| "runc://unknown".into())
}

/// Build the agent for this machine.
/// `policy_reader`: an identity that may read every pod, for NetworkPolicy enforcement; without
/// one the node reads its own pods with its own credentials.
pub fn build(
    client: Client,
    policy_reader: Option<Client>,
    data_dir: &Path,
    args: &AgentArgs,
    cluster_cidrs: &[net::Cidr],
    service_cidrs: &[net::Cidr],
    dns: &crate::cluster::DnsArgs,
) -> Result<Agent> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the node agent runs containers and needs root; run `berth server` for the control plane alone"
        );
    }
    let (engine, runtime_version) = if args.runtime == "builtin" {
        (
            Engine::Builtin,
            format!("berth://{}", env!("CARGO_PKG_VERSION")),
        )
    } else {
        let runc = find_binary(&args.runtime)?;
        let version = runtime_version(&runc);
        (Engine::Binary(runc), version)
    };
    let run_dir = args
        .run_dir
        .clone()
        .unwrap_or_else(|| default_run_dir(data_dir, &crate::cluster::default_data_dir()));
    // Container bundles carry environment from Secrets: root's eyes only.
    crate::pki::ensure_dir(&run_dir)?;
    let runtime = OciRuntime::new(OciConfig {
        run_dir: run_dir.clone(),
        rw_dir: data_dir.join("containers"),
        shim: std::env::current_exe().context("finding the berth binary")?,
        engine,
        log_max_bytes: 10 * 1024 * 1024,
    })
    .with_context(|| format!("preparing the container runtime in {}", run_dir.display()))?;
    let images = Arc::new(crate::images_cli::store_in(data_dir)?);
    let mut dirs = Dirs::under(data_dir);
    if let Some(d) = &args.storage_dir {
        dirs.storage = std::path::absolute(d)
            .with_context(|| format!("resolving --storage-dir {}", d.display()))?;
    }
    let node = NodeInfo {
        name: node_name(args),
        ip: node_ip(args),
        max_pods: args.max_pods,
        data_dir: data_dir.to_path_buf(),
        storage_dir: dirs.storage.clone(),
        max_volumes: args.max_volumes,
        runtime_version,
        endpoint_port: args.agent_port,
    };
    let mtu = match args.node_network {
        net::routes::Backend::Vxlan => Some(
            net::routes::tunnel_mtu(node.ip)
                .with_context(|| format!("finding the MTU of the link with {}", node.ip))?,
        ),
        _ => None,
    };
    let network = network_setup(&run_dir, cluster_cidrs, service_cidrs, mtu);
    let cfg = AgentConfig {
        node,
        network,
        service_proxy: net::nft::find(),
        ingress: ingress_config(args),
        dirs,
        insecure_registries: args.insecure_registries.clone(),
        registries_file: data_dir.join("registries.yaml"),
        image_gc: agent::gc::Thresholds {
            high: args.image_gc_high_percent,
            low: args.image_gc_low_percent,
            min_age: std::time::Duration::from_secs(args.image_minimum_gc_age),
        },
        dns: agent::dns::DnsSettings {
            cluster_dns: Some(dns.cluster_dns),
            domain: dns.cluster_domain.clone(),
            resolv_conf: args.resolv_conf.clone(),
            serve: true,
        },
        pod_pids_limit: (args.pod_pids_limit > 0).then_some(args.pod_pids_limit),
        network_policy: Some(agent::policy::PolicyFeed {
            all_pods: policy_reader.is_some(),
            client: policy_reader.unwrap_or_else(|| client.clone()),
        }),
        node_routes: Some(args.node_network),
    };
    Ok(Agent::new(
        client,
        Arc::new(runtime) as Arc<dyn ContainerRuntime>,
        images,
        cfg,
    ))
}

/// Where the node serves Ingresses (every address; none when both ports are 0).
fn ingress_config(args: &AgentArgs) -> Option<agent::ingress::IngressConfig> {
    let at = |port: u16| (port != 0).then(|| SocketAddr::from(([0, 0, 0, 0], port)));
    let cfg = agent::ingress::IngressConfig {
        http: at(args.ingress_http_port),
        https: at(args.ingress_https_port),
    };
    (cfg.http.is_some() || cfg.https.is_some()).then_some(cfg)
}

/// `berth agent`: run this machine's node against a remote API server until signalled.
pub async fn run_remote(args: RemoteAgentArgs) -> Result<()> {
    crate::cluster::require_root("berth agent")?;
    let ca = std::fs::read(&args.ca_cert)
        .with_context(|| format!("reading {}", args.ca_cert.display()))?;
    let token = match (&args.token_file, std::env::var("BERTH_TOKEN")) {
        (Some(path), _) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the token in {}", path.display()))?
                .trim()
                .to_string(),
        ),
        (None, Ok(t)) if !t.trim().is_empty() => Some(t.trim().to_string()),
        _ => None,
    };
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(crate::cluster::default_data_dir);
    crate::pki::ensure_dir(&data_dir)?;
    let client = match token {
        // Any other token (an operator's) is used as it is.
        Some(t) if apiserver::auth::bootstrap::parse(&t).is_none() => Client::new(Arc::new(
            client::HttpsTransport::new(&args.server, &ca, Some(&t))
                .with_context(|| format!("connecting to {}", args.server))?,
        )),
        // The node's own certificate, got with a bootstrap token the first time.
        token => {
            let node = node_name(&args.agent);
            let join = crate::join::Join {
                server: &args.server,
                ca_pem: &ca,
                node: &node,
                data_dir: &data_dir,
            };
            let (client, renewal) = join.credential(token.as_deref()).await?;
            tokio::spawn(renewal);
            client
        }
    };
    // A joined node reads its own pods only (every pod is not a node's to read; see
    // `agent::policy::PolicyFeed`).
    let client_for_endpoint = client.clone();
    let agent = build(
        client,
        None,
        &data_dir,
        &args.agent,
        &args.cluster_cidr.0,
        &args.service_cidr.0,
        &args.dns,
    )?;
    if args.remove_pods_and_exit {
        agent.remove_everything().await;
        return Ok(());
    }
    println!(
        "berth agent: node {} joining {}",
        agent.node_name(),
        args.server
    );
    let endpoint = serve_endpoint(
        client_for_endpoint,
        agent.server(),
        ca.clone(),
        data_dir.clone(),
        agent.node_name().to_string(),
        node_ip(&args.agent),
        args.agent.agent_port,
    );
    crate::instances::register(&data_dir);
    let keep = agent.clone();
    let result = tokio::select! {
        _ = agent.run() => Ok(()),
        r = endpoint => r,
        r = crate::cluster::wait_for_signal() => r,
    };
    if args.remove_pods_on_exit {
        keep.remove_everything().await;
    }
    crate::instances::unregister(&data_dir);
    result
}

/// The node's HTTPS endpoint: once the Node is registered with its address, get a serving
/// certificate for it (kept renewed) and serve the agent's `NodeServer` until the task ends.
/// Returns only if the endpoint cannot be served.
async fn serve_endpoint(
    client: Client,
    server: NodeServer,
    ca_pem: Vec<u8>,
    data_dir: PathBuf,
    node: String,
    ip: IpAddr,
    port: u16,
) -> Result<()> {
    use api::k8s_openapi::api::core::v1::Node;
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
            .await
            .with_context(|| format!("cannot listen on the node endpoint's port {port}"))?;
    // The approver checks the certificate's address against the Node's, so the Node comes
    // first.
    let mut delay = std::time::Duration::from_millis(50);
    loop {
        let registered = client.get::<Node>(None, &node).await.ok().flatten();
        if registered.is_some_and(|n| {
            n.status
                .and_then(|s| s.addresses)
                .is_some_and(|a| a.iter().any(|a| a.address == ip.to_string()))
        }) {
            break;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(2));
    }
    let (cert, renewal) =
        crate::join::serving(&client, &node, &data_dir, vec![ip], vec![node.clone()])
            .await
            .context("getting the node endpoint's serving certificate")?;
    tokio::spawn(renewal);
    let tls = agent::endpoint::tls_config(&ca_pem, cert).map_err(anyhow::Error::msg)?;
    let endpoint = agent::endpoint::Endpoint::new(server, client, &node);
    agent::endpoint::serve(Arc::new(listener), tls, endpoint).await;
    Ok(())
}

/// How the API server reaches nodes' agents for pod `log`/`exec`/`attach`/`portforward`,
/// node proxying and usage: the agent in this process directly, any other over HTTPS.
pub struct Agents {
    local: HashMap<String, NodeServer>,
    remote: apiserver::AgentClient,
}

impl Agents {
    pub fn new(remote: apiserver::AgentClient) -> Agents {
        Agents {
            local: HashMap::new(),
            remote,
        }
    }

    pub fn with_local(mut self, node: &str, server: NodeServer) -> Agents {
        self.local.insert(node.to_string(), server);
        self
    }
}

#[async_trait]
impl NodeConnector for Agents {
    async fn call(&self, node: &NodeTarget, req: Request<Bytes>) -> Result<Response<Body>, String> {
        let Some(server) = self.local.get(&node.name) else {
            return self.remote.call(node, req).await;
        };
        let resp = server.handle(req).await;
        Ok(resp.map(|b| match b {
            NodeBody::Full(b) => Body::from_bytes(b),
            NodeBody::Stream(rx) => Body::from_receiver(rx),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_dirs_follow_data_dirs() {
        let default = Path::new("/var/lib/berth");
        assert_eq!(
            default_run_dir(default, default),
            PathBuf::from("/run/berth")
        );
        let a = default_run_dir(Path::new("/tmp/a"), default);
        let b = default_run_dir(Path::new("/tmp/b"), default);
        assert_ne!(a, b);
        assert_eq!(a, default_run_dir(Path::new("/tmp/a"), default));
    }
}

//! The node agent: registers the node and keeps its Lease fresh, watches the pods bound to
//! it, and gives each one a worker that runs its containers and reports its status. It also
//! serves the node's side of `kubectl logs`, `exec`, `attach` and `port-forward`.

mod backoff;
pub mod dns;
pub mod endpoint;
pub mod events;
mod exec;
pub mod gc;
pub mod images;
pub mod ingress;
pub mod logs;
pub mod node;
mod pods;
pub mod policy;
pub mod portforward;
pub mod probe;
pub mod proxy;
pub mod routes;
pub mod server;
pub mod services;
pub mod spec;
pub mod stats;
pub mod status;
mod storage;
pub mod streams;
pub mod volumes;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use client::Client;
use net::{Cidr, NetError, PodNetwork};
use runtime::containers::ContainerRuntime;
use runtime::images::{ImageStore, Puller};
use supervise::{AbortOnDrop, supervise};

pub use events::Events;
pub use node::NodeInfo;

/// Where the agent keeps pod data on disk.
#[derive(Clone, Debug)]
pub struct Dirs {
    /// `<pods>/<uid>/`: volumes and the pod's `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`.
    pub pods: PathBuf,
    /// `<logs>/<namespace>_<pod>_<uid>/<container>/<restart>.log`, as the kubelet lays them out.
    pub logs: PathBuf,
    /// `<storage>/pvc-<uid>_<namespace>_<claim>/`: the volumes the built-in provisioner makes
    /// on this node (outside `pods`, so that they outlive their pods).
    pub storage: PathBuf,
    /// seccomp profiles pods name as `Localhost` (`localhostProfile` is relative to it), as the
    /// kubelet's `<root>/seccomp`.
    pub seccomp: PathBuf,
}

impl Dirs {
    pub fn under(data_dir: &Path) -> Dirs {
        Dirs {
            pods: data_dir.join("pods"),
            logs: data_dir.join("logs"),
            storage: data_dir.join("storage"),
            seccomp: data_dir.join("seccomp"),
        }
    }
}

pub struct AgentConfig {
    pub node: NodeInfo,
    pub network: NetworkSetup,
    /// The `nft` binary for the Service proxy; `None` runs no proxy.
    pub service_proxy: Option<PathBuf>,
    /// Where the node serves Ingresses; `None` serves none.
    pub ingress: Option<ingress::IngressConfig>,
    pub dirs: Dirs,
    /// Registries (`host:port`) pulled from over plain HTTP besides localhost.
    pub insecure_registries: Vec<String>,
    /// Mirrors and registry settings (`<data-dir>/registries.yaml`; may not exist).
    pub registries_file: PathBuf,
    pub image_gc: gc::Thresholds,
    /// How pods resolve names, and whether this node serves the cluster DNS.
    pub dns: dns::DnsSettings,
    /// The most processes (and threads) one pod may have at once (`None`: no limit).
    pub pod_pids_limit: Option<u64>,
    /// Where NetworkPolicies are read from; enforced when the Service proxy's `nft` is there.
    pub network_policy: Option<policy::PolicyFeed>,
    /// How other nodes' pods are reached; `None` writes no routes to them.
    pub node_routes: Option<net::routes::Backend>,
}

/// Where the node's pod network comes from.
#[derive(Clone)]
pub enum NetworkSetup {
    /// A network to use as it is (tests give a `FakeNetwork`).
    Ready(Arc<dyn PodNetwork>),
    /// Built (blocking) from the node's pod ranges once the control plane has assigned them
    /// (`spec.podCIDRs`, after the node registers).
    FromNode(MakeNetwork),
}

/// Builds the pod network from the node's ranges.
pub type MakeNetwork =
    Arc<dyn Fn(Vec<Cidr>) -> Result<Arc<dyn PodNetwork>, NetError> + Send + Sync>;

/// What every part of the agent shares.
pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) runtime: Arc<dyn ContainerRuntime>,
    pub(crate) images: Arc<ImageStore>,
    pub(crate) puller: Puller,
    pub(crate) pull_locks: images::PullLocks,
    pub(crate) insecure_registries: Vec<String>,
    pub(crate) registries_file: PathBuf,
    pub(crate) node: NodeInfo,
    /// The pod network, set once the node has its ranges (before any pod runs).
    pub(crate) network: std::sync::OnceLock<Arc<dyn PodNetwork>>,
    pub(crate) dirs: Dirs,
    pub(crate) events: Events,
    /// The hard RLIMIT_NOFILE the agent has: containers may not ask for more.
    pub(crate) max_open_files: u64,
    /// The capabilities berth holds, all a privileged container can get.
    pub(crate) host_capabilities: Vec<String>,
    pub(crate) pod_pids_limit: Option<u64>,
    /// The pods on this node by UID, as last seen.
    pub(crate) pods: std::sync::Mutex<
        std::collections::HashMap<String, Arc<api::k8s_openapi::api::core::v1::Pod>>,
    >,
    /// Image ID -> when a container last started from it (seconds since the epoch).
    pub(crate) image_used: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    pub(crate) image_gc: gc::Thresholds,
    pub(crate) stats: Arc<stats::Sampler>,
    /// Every Service, for containers' service environment variables.
    pub(crate) services: Arc<services::Services>,
    pub(crate) dns: dns::DnsSettings,
    /// The cluster DNS this node serves, if it does.
    pub(crate) dns_server: Option<Arc<net::dns::DnsServer>>,
    /// Service account tokens of the node's pods.
    pub(crate) tokens: volumes::Tokens,
    /// NetworkPolicy enforcement, when the node does it.
    pub(crate) policies: Option<Arc<policy::Policies>>,
}

impl Shared {
    pub(crate) fn log_dir(&self, namespace: &str, pod: &str, uid: &str) -> PathBuf {
        self.dirs.logs.join(format!("{namespace}_{pod}_{uid}"))
    }
}

fn hard_nofile() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(1024)
}

#[derive(Clone)]
pub struct Agent {
    shared: Arc<Shared>,
    network: NetworkSetup,
    service_proxy: Option<PathBuf>,
    ingress: Option<ingress::IngressConfig>,
    node_routes: Option<net::routes::Backend>,
}

impl Agent {
    pub fn new(
        client: Client,
        runtime: Arc<dyn ContainerRuntime>,
        images: Arc<ImageStore>,
        cfg: AgentConfig,
    ) -> Agent {
        let events = Events::start(client.clone(), "kubelet", &cfg.node.name);
        let dns_server = cfg.dns.server();
        let policies = match (cfg.network_policy, &cfg.service_proxy) {
            (Some(feed), Some(nft)) => Some(Arc::new(policy::Policies::new(
                feed,
                nft.clone(),
                dns_server.as_ref().and(cfg.dns.cluster_dns),
            ))),
            (Some(_), None) => {
                tracing::warn!(
                    "nft is not installed (Debian package nftables): NetworkPolicies are not enforced"
                );
                None
            }
            (None, _) => None,
        };
        Agent {
            shared: Arc::new(Shared {
                puller: Puller::new(images.clone()),
                client,
                runtime,
                images,
                pull_locks: Default::default(),
                insecure_registries: cfg.insecure_registries,
                registries_file: cfg.registries_file,
                node: cfg.node,
                network: Default::default(),
                dirs: cfg.dirs,
                events,
                max_open_files: hard_nofile(),
                host_capabilities: runtime::containers::host::capabilities(),
                pod_pids_limit: cfg.pod_pids_limit,
                pods: Default::default(),
                image_used: Default::default(),
                image_gc: cfg.image_gc,
                stats: Arc::default(),
                services: Arc::default(),
                dns_server,
                dns: cfg.dns,
                tokens: Default::default(),
                policies,
            }),
            network: cfg.network,
            service_proxy: cfg.service_proxy,
            ingress: cfg.ingress,
            node_routes: cfg.node_routes,
        }
    }

    /// Stop and remove every container, sandbox and pod network of this node (a node that
    /// goes away for good; its pods' objects are the control plane's to handle).
    pub async fn remove_everything(&self) {
        pods::remove_orphans(&self.shared, &std::collections::HashSet::new()).await;
    }

    pub fn node_name(&self) -> &str {
        &self.shared.node.name
    }

    /// The node's endpoints for logs, exec, attach and port-forward, for the API server.
    pub fn server(&self) -> server::NodeServer {
        server::NodeServer::new(self.shared.clone())
    }

    /// Register the node, then keep it alive and run its pods until the task is dropped.
    pub async fn run(self) {
        let c = &self.shared.client;
        let mut delay = std::time::Duration::from_millis(200);
        while let Err(e) = node::register(c, &self.shared.node).await {
            tracing::warn!(error = %e, "could not register the node; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(10));
        }
        // Each loop is supervised; all stop when this future is dropped.
        let (c, node) = (c.clone(), self.shared.node.clone());
        let heartbeat = supervise("node-heartbeat", move || {
            node::heartbeat(c.clone(), node.clone())
        });
        let shared = self.shared.clone();
        let images = supervise("image-gc", move || collect_images(shared.clone()));
        let (stats, weak) = (self.shared.stats.clone(), Arc::downgrade(&self.shared));
        let sampler = supervise("stats-sampler", move || stats.clone().run(weak.clone()));
        let (services, sc) = (self.shared.services.clone(), self.shared.client.clone());
        let services = supervise("service-cache", move || services.clone().run(sc.clone()));
        let (c, host, dir) = (
            self.shared.client.clone(),
            self.shared.node.name.clone(),
            self.shared.dirs.storage.clone(),
        );
        let volumes = supervise("volume-reclaimer", move || {
            storage::reclaim(c.clone(), host.clone(), dir.clone())
        });
        let _stop = [heartbeat, images, sampler, services, volumes].map(AbortOnDrop);
        // Pods run once the network can give them addresses.
        if self.shared.network.get().is_none() {
            let network = self.network().await;
            let _ = self.shared.network.set(network);
        }
        // Routes to other nodes' pods.
        let _routes = self.node_routes.map(|backend| {
            let c = self.shared.client.clone();
            let (node, ip) = (self.shared.node.name.clone(), self.shared.node.ip);
            AbortOnDrop(supervise("node-routes", move || {
                routes::run(c.clone(), node.clone(), ip, backend)
            }))
        });
        // NetworkPolicy rules, which every pod waits for before it starts.
        let _policies = self.shared.policies.clone().map(|p| {
            let node = self.shared.node.name.clone();
            AbortOnDrop(supervise("network-policy", move || {
                p.clone().run(node.clone())
            }))
        });
        // The Service proxy, once the node's routes are there.
        let _proxy = self.service_proxy.clone().map(|nft| {
            let c = self.shared.client.clone();
            let node = self.shared.node.name.clone();
            // The cluster DNS address is this node's own, not a Service to forward.
            let local = self
                .shared
                .dns_server
                .as_ref()
                .and(self.shared.dns.cluster_dns);
            AbortOnDrop(supervise("service-proxy", move || {
                proxy::run(c.clone(), nft.clone(), node.clone(), local)
            }))
        });
        // Ingresses, once pods are reachable.
        let _ingress = self.ingress.clone().map(|cfg| {
            let c = self.shared.client.clone();
            AbortOnDrop(supervise("ingress-proxy", move || {
                ingress::run(c.clone(), cfg.clone())
            }))
        });
        let _dns = match (&self.shared.dns_server, self.shared.dns.cluster_dns) {
            (Some(server), Some(ip)) => {
                let (s, c) = (server.clone(), self.shared.client.clone());
                let records = supervise("dns-records", move || {
                    dns::follow_records(c.clone(), s.clone())
                });
                let s = server.clone();
                let serving = supervise("cluster-dns", move || dns::serve(s.clone(), ip));
                vec![AbortOnDrop(records), AbortOnDrop(serving)]
            }
            _ => Vec::new(),
        };
        let workers = Arc::new(pods::Workers::default());
        let _workers = StopWorkers(workers.clone());
        let shared = self.shared.clone();
        let pods = supervise("pod-dispatcher", move || {
            pods::run(shared.clone(), workers.clone())
        });
        let mut pods = AbortOnDrop(pods);
        let _ = (&mut pods.0).await;
    }
}

impl Agent {
    /// The node's pod network: as given, or made from the node's ranges once it has them.
    async fn network(&self) -> Arc<dyn PodNetwork> {
        let make = match &self.network {
            NetworkSetup::Ready(n) => return n.clone(),
            NetworkSetup::FromNode(make) => make.clone(),
        };
        let c = &self.shared.client;
        let name = &self.shared.node.name;
        let mut delay = std::time::Duration::from_millis(50);
        let mut said = false;
        loop {
            match node::pod_cidrs(c, name).await {
                Ok(ranges) if !ranges.is_empty() => {
                    let m = make.clone();
                    let r = ranges.clone();
                    match tokio::task::spawn_blocking(move || m(r)).await {
                        Ok(Ok(n)) => {
                            tracing::info!(ranges = ?ranges.iter().map(ToString::to_string).collect::<Vec<_>>(), "pod network ready");
                            return n;
                        }
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "could not set up the pod network; retrying")
                        }
                        Err(e) => tracing::error!(error = %e, "pod network set-up panicked"),
                    }
                }
                Ok(_) if !said && delay >= std::time::Duration::from_secs(2) => {
                    said = true;
                    tracing::warn!(node = %name, "waiting for the control plane to give the node its pod address range (spec.podCIDR)");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not read the node"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(5));
        }
    }
}

/// Stops the pod workers when the agent's future is dropped.
struct StopWorkers(Arc<pods::Workers>);

impl Drop for StopWorkers {
    fn drop(&mut self) {
        self.0.stop_all();
    }
}

/// Keep the image disk under its thresholds, sparing every image a pod here uses.
async fn collect_images(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(gc::EVERY);
    loop {
        tick.tick().await;
        let refs: Vec<String> = {
            let pods = shared.pods.lock().unwrap_or_else(|p| p.into_inner());
            pods.values()
                .filter_map(|p| p.spec.as_ref())
                .flat_map(|s| {
                    let ephemeral = s
                        .ephemeral_containers
                        .iter()
                        .flatten()
                        .filter_map(|e| e.image.clone());
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                        .filter_map(|c| c.image.clone())
                        .chain(ephemeral)
                })
                .collect()
        };
        let in_use = gc::references(refs.iter().map(String::as_str));
        let last_used = shared
            .image_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            gc::collect(&s.images, &in_use, &last_used, s.image_gc)
        })
        .await;
    }
}

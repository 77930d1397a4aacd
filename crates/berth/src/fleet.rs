//! `berth up --nodes N`: a cluster of N nodes on one machine, as kind and k3d make one with
//! containers. The first node is `berth up`'s own; each other node is a `berth agent` process
//! in a network namespace of its own, joined with a bootstrap token as a remote machine would
//! be, with one end of a veth pair on a bridge (`berth-nodes`) that holds the first address of
//! `--nodes-cidr` for the first node. Nodes reach each other's pods by routes (they share the
//! bridge's subnet), the API server listens on the bridge address too, and the extra nodes'
//! traffic leaving the machine is masqueraded. On exit each extra agent stops its pods, and its
//! namespace, links, bridge and rules go; nothing of them is left behind.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use net::Cidr;
use net::netlink::Netlink;
use tracing::{info, warn};

use crate::cluster::UpArgs;

pub const BRIDGE: &str = "berth-nodes";
const NFT_TABLE: &str = "berth-nodes";
/// How long the extra nodes' bootstrap tokens work: long enough to join.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// One extra node.
struct Extra {
    name: String,
    ip: IpAddr,
    data_dir: PathBuf,
    /// The bind mount that keeps its network namespace (`nsenter --net=<it>` enters it).
    netns: PathBuf,
    host_link: String,
    /// Its agent's arguments.
    argv: Vec<OsString>,
    agent: Option<tokio::process::Child>,
}

/// The extra nodes and what they stand on.
pub struct Fleet {
    extras: Vec<Extra>,
    nodes_cidr: Cidr,
}

/// The first node's address on the nodes' bridge.
pub fn first_address(nodes_cidr: &Cidr) -> Result<IpAddr> {
    nodes_cidr
        .nth(1)
        .context("--nodes-cidr is too small for one node")
}

/// The nodes' names: the first node's, then `<first>-2`, `<first>-3`, ...
fn extra_name(first: &str, i: usize) -> String {
    format!("{first}-{i}")
}

/// Make the bridge with the first node's address and the masquerade rule, before the control
/// plane binds that address.
pub fn prepare(nodes_cidr: &Cidr) -> Result<()> {
    let first = first_address(nodes_cidr)?;
    let mut nl = Netlink::open().context("opening netlink")?;
    nl.add_bridge(BRIDGE, None)
        .with_context(|| format!("creating the bridge {BRIDGE}"))?;
    let bridge = nl
        .link(BRIDGE)?
        .with_context(|| format!("the bridge {BRIDGE} vanished"))?;
    nl.add_address(bridge.index, first, nodes_cidr.prefix())?;
    nl.set_up(bridge.index)?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("turning on forwarding")?;
    let family = if nodes_cidr.is_ipv6() { "ip6" } else { "ip" };
    let script = format!(
        "table {family} {NFT_TABLE} {{}}\ndelete table {family} {NFT_TABLE}\n\
         table {family} {NFT_TABLE} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
         {family} saddr {nodes_cidr} oifname != \"{BRIDGE}\" masquerade\n  }}\n}}\n"
    );
    nft(&script).context("loading the nodes' masquerade rule")
}

fn nft(script: &str) -> Result<()> {
    let bin = net::nft::find().context("nft is not installed (Debian package nftables)")?;
    net::nft::apply(&bin, script).map_err(anyhow::Error::from)
}

impl Fleet {
    /// Start `args.nodes - 1` extra nodes joining the API server at `server` and wait until
    /// every one is Ready.
    pub async fn start(
        args: &UpArgs,
        first_node: &str,
        server: &str,
        data_dir: &Path,
    ) -> Result<Fleet> {
        let nodes_cidr = args.nodes_cidr;
        let mut fleet = Fleet {
            extras: Vec::new(),
            nodes_cidr,
        };
        let (admin, _) = crate::store_cli::admin_client(data_dir, Some(server))?;
        for i in 2..=args.nodes as usize {
            let name = extra_name(first_node, i);
            let ip = nodes_cidr
                .nth(i as u128)
                .with_context(|| format!("--nodes-cidr {nodes_cidr} has no room for {i} nodes"))?;
            let node_data = data_dir.join("nodes").join(&name);
            crate::pki::ensure_dir(&node_data)?;
            let mut extra = Extra {
                netns: node_data.join("netns"),
                host_link: format!("berthn{i}"),
                name,
                ip,
                data_dir: node_data,
                argv: Vec::new(),
                agent: None,
            };
            extra.make_network(&nodes_cidr, first_address(&nodes_cidr)?)?;
            // A node that joined before has its certificate; a new one needs a token.
            let token = if crate::join::credential_path(&extra.data_dir).exists() {
                None
            } else {
                Some(
                    crate::tokens_cli::create(&admin, TOKEN_TTL, &format!("joins {}", extra.name))
                        .await
                        .context("creating a bootstrap token")?,
                )
            };
            extra.spawn(args, server, data_dir, token.as_deref())?;
            fleet.extras.push(extra);
        }
        fleet.wait_ready(&admin).await?;
        Ok(fleet)
    }

    async fn wait_ready(&mut self, admin: &client::Client) -> Result<()> {
        use api::k8s_openapi::api::core::v1::Node;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut waiting: Vec<String> = self.extras.iter().map(|e| e.name.clone()).collect();
        while !waiting.is_empty() {
            for e in &mut self.extras {
                if let Some(child) = e.agent.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    bail!(
                        "the agent of node {} exited ({status}); its log: {}",
                        e.name,
                        e.data_dir.join("agent.log").display()
                    );
                }
            }
            let mut still = Vec::new();
            for name in waiting {
                let ready = admin
                    .get::<Node>(None, &name)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|n| agent::node::is_ready(&n));
                if ready {
                    println!("berth up: node {name} is Ready");
                } else {
                    still.push(name);
                }
            }
            waiting = still;
            if tokio::time::Instant::now() > deadline {
                bail!("nodes {waiting:?} did not become Ready within 2 minutes");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Stop every extra node (each removes its pods' containers and networks as it goes),
    /// then remove their namespaces, links, the bridge and the rule.
    pub async fn stop(mut self) {
        for e in &mut self.extras {
            if let Some(child) = &e.agent
                && let Some(pid) = child.id()
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for e in &mut self.extras {
            if let Some(mut child) = e.agent.take() {
                let died_before = matches!(child.try_wait(), Ok(Some(_)));
                if tokio::time::timeout(Duration::from_secs(30), child.wait())
                    .await
                    .is_err()
                {
                    warn!(node = %e.name, "the agent did not stop in 30 s; killing it");
                    let _ = child.kill().await;
                }
                // An agent that had died left its containers running: a short-lived one
                // removes them.
                if died_before {
                    e.remove_pods().await;
                }
            }
            e.remove_network();
            // Its runtime state (what is on tmpfs; the data dir stays for the next start).
            let run_dir =
                crate::node::default_run_dir(&e.data_dir, &crate::cluster::default_data_dir());
            if let Err(e) = agent::volumes::teardown(&run_dir) {
                warn!(dir = %run_dir.display(), error = %e, "cannot remove a node's runtime state");
            }
        }
        remove_base(&self.nodes_cidr);
    }
}

/// Remove the bridge and the masquerade rule.
pub fn remove_base(nodes_cidr: &Cidr) {
    if let Ok(mut nl) = Netlink::open() {
        let _ = nl.delete_link(BRIDGE);
    }
    let family = if nodes_cidr.is_ipv6() { "ip6" } else { "ip" };
    let _ = nft(&format!(
        "table {family} {NFT_TABLE} {{}}\ndelete table {family} {NFT_TABLE}\n"
    ));
}

impl Extra {
    /// The node's namespace (pinned by a bind mount), its veth pair (`eth0` inside, the other
    /// end on the bridge), its address and its default route through the first node.
    fn make_network(&mut self, nodes_cidr: &Cidr, gateway: IpAddr) -> Result<()> {
        // Anything a previous run left (it was killed) goes first.
        self.remove_network();
        let (file, _) = net::netns::create().context("creating a network namespace")?;
        std::fs::write(&self.netns, b"").context("making the namespace's mount point")?;
        nix::mount::mount(
            Some(&PathBuf::from(format!(
                "/proc/self/fd/{}",
                file.as_raw_fd()
            ))),
            &self.netns,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .context("pinning the node's network namespace")?;
        let mut nl = Netlink::open()?;
        let bridge = nl
            .link(BRIDGE)?
            .with_context(|| format!("the bridge {BRIDGE} is gone"))?;
        nl.add_veth(&self.host_link, Some(bridge.index), "eth0", &file, None)
            .with_context(|| format!("creating node {}'s link", self.name))?;
        let mut inside = Netlink::open_in(&self.netns)?;
        for name in ["lo", "eth0"] {
            let l = inside
                .link(name)?
                .with_context(|| format!("no {name} in node {}'s namespace", self.name))?;
            inside.set_up(l.index)?;
            if name == "eth0" {
                inside.add_address(l.index, self.ip, nodes_cidr.prefix())?;
                inside.add_default_route(l.index, gateway)?;
            }
        }
        Ok(())
    }

    /// Run this node's agent only to remove what its pods left, and wait for it.
    async fn remove_pods(&self) {
        match self.run_in_namespace(&["--remove-pods-and-exit".into()]) {
            Ok(mut child) => {
                let _ = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
            }
            Err(e) => warn!(node = %self.name, error = %e, "cannot remove the node's pods"),
        }
    }

    /// The agent's arguments.
    fn argv(&self, args: &UpArgs, server: &str, cluster_data: &Path) -> Vec<OsString> {
        let a = &args.agent;
        let mut v: Vec<OsString> = vec![
            "agent".into(),
            "--server".into(),
            server.into(),
            "--ca-cert".into(),
            cluster_data.join("tls/ca.crt").into(),
            "--data-dir".into(),
            self.data_dir.clone().into(),
            "--node-name".into(),
            self.name.clone().into(),
            "--node-ip".into(),
            self.ip.to_string().into(),
            "--cluster-cidr".into(),
            args.server.cluster_cidr.to_string().into(),
            "--service-cidr".into(),
            args.server.service_cidr.to_string().into(),
            "--cluster-dns".into(),
            args.server.dns.cluster_dns.to_string().into(),
            "--cluster-domain".into(),
            args.server.dns.cluster_domain.clone().into(),
            "--runtime".into(),
            a.runtime.clone().into(),
            "--max-pods".into(),
            a.max_pods.to_string().into(),
            "--resolv-conf".into(),
            a.resolv_conf.clone().into(),
            "--pod-pids-limit".into(),
            a.pod_pids_limit.to_string().into(),
            "--ingress-http-port".into(),
            a.ingress_http_port.to_string().into(),
            "--ingress-https-port".into(),
            a.ingress_https_port.to_string().into(),
            "--agent-port".into(),
            a.agent_port.to_string().into(),
            "--node-network".into(),
            a.node_network.to_string().into(),
            "--image-gc-high-percent".into(),
            a.image_gc_high_percent.to_string().into(),
            "--image-gc-low-percent".into(),
            a.image_gc_low_percent.to_string().into(),
            "--image-minimum-gc-age".into(),
            a.image_minimum_gc_age.to_string().into(),
        ];
        for r in &a.insecure_registries {
            v.push("--insecure-registry".into());
            v.push(r.into());
        }
        v
    }

    /// Start `berth` with the node's arguments and `more` inside the node's namespace, its
    /// output appended to the node's `agent.log`.
    fn run_in_namespace(&self, more: &[OsString]) -> Result<tokio::process::Child> {
        let exe = std::env::current_exe().context("finding the berth binary")?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args(&self.argv).args(more);
        use std::os::unix::fs::OpenOptionsExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.data_dir.join("agent.log"))
            .context("opening the node's log")?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let ns = std::fs::File::open(&self.netns).context("opening the node's namespace")?;
        let fd = ns.as_raw_fd();
        // SAFETY: only setns, async-signal-safe, runs between fork and exec; `ns` outlives the
        // spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting node {}'s agent", self.name))?;
        drop(ns);
        Ok(child)
    }

    fn spawn(
        &mut self,
        args: &UpArgs,
        server: &str,
        cluster_data: &Path,
        token: Option<&str>,
    ) -> Result<()> {
        self.argv = self.argv(args, server, cluster_data);
        let mut more: Vec<OsString> = vec!["--remove-pods-on-exit".into()];
        if let Some(t) = token {
            let path = self.data_dir.join("bootstrap.token");
            crate::pki::write_private(&path, t.as_bytes())?;
            more.push("--token-file".into());
            more.push(path.into());
        }
        self.agent = Some(self.run_in_namespace(&more)?);
        info!(node = %self.name, ip = %self.ip, "started an extra node");
        Ok(())
    }

    /// Unpin the namespace (it goes once nothing is in it) and delete the host's end of the
    /// veth pair (the pair goes with either end).
    fn remove_network(&self) {
        if let Ok(mut nl) = Netlink::open() {
            let _ = nl.delete_link(&self.host_link);
        }
        let _ = nix::mount::umount2(&self.netns, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&self.netns);
    }
}

/// The extra nodes of the cluster whose data dir is `data_dir`, with their data dirs.
pub fn node_dirs(data_dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(data_dir.join("nodes"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    out.sort();
    out
}

/// The first node's address when the cluster has several (the bridge's).
pub fn node_ip(args: &UpArgs) -> Result<Option<Ipv4Addr>> {
    if args.nodes <= 1 {
        return Ok(None);
    }
    match first_address(&args.nodes_cidr)? {
        IpAddr::V4(a) => Ok(Some(a)),
        IpAddr::V6(_) => bail!("--nodes-cidr must be an IPv4 range"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_nodes_are_named_after_the_first() {
        assert_eq!(extra_name("box", 2), "box-2");
    }
}

//! `BridgeNetwork`: the node's pods on one Linux bridge. The bridge holds the first address of
//! each of the node's ranges (the pods' gateway); each pod gets a veth pair made with its
//! `eth0` end directly inside the pod's namespace, its addresses and a default route there.
//! Forwarding is turned on, pod traffic leaving the cluster's ranges is masqueraded, and host
//! ports are DNAT map elements (`nft`).
//!
//! Each connected pod has a record file in the state directory, written before the kernel is
//! touched and removed only after its veth is gone, so the books are rebuilt from the records
//! when the agent starts again and nothing leaks across a crash.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tracing::{debug, warn};

use crate::book::{Book, Record};
use crate::netlink::Netlink;
use crate::{Attachment, Cidr, HostPort, NetError, PodNetwork, nft};

/// How the node's pod network is set up.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// The bridge's name (`berth0`).
    pub bridge: String,
    /// This node's ranges (its `spec.podCIDRs`).
    pub pod_cidrs: Vec<Cidr>,
    /// The whole cluster's pod ranges: traffic leaving them is masqueraded.
    pub cluster_cidrs: Vec<Cidr>,
    /// The Service ranges: routed to the bridge, so that a packet for a Service address no
    /// rule has rewritten stays on the node instead of following the default route out.
    pub service_cidrs: Vec<Cidr>,
    /// Where the per-pod records live (a directory on tmpfs: pods do not outlive a reboot).
    pub state_dir: PathBuf,
    pub mtu: Option<u32>,
    /// The `nft` binary; without one, nothing is masqueraded and host ports are not served.
    pub nft: Option<PathBuf>,
}

struct Inner {
    config: BridgeConfig,
    bridge_index: u32,
    book: Mutex<Book>,
    host: Mutex<Netlink>,
}

pub struct BridgeNetwork {
    inner: Arc<Inner>,
}

/// The host end of a pod's veth: `veth` and 11 hex digits of a hash of the pod's UID (interface
/// names are at most 15 bytes).
pub fn host_veth(uid: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in uid.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    format!("veth{:011x}", h & 0xfff_ffff_ffff)
}

fn prefix_of(ranges: &[Cidr], ip: IpAddr) -> u8 {
    ranges
        .iter()
        .find(|c| c.contains(ip))
        .map_or(if ip.is_ipv6() { 128 } else { 32 }, |c| c.prefix())
}

/// The bridge's hardware address: locally administered, unicast, made from the gateway
/// address (unique per node, as pod ranges are).
fn bridge_mac(gateway: Option<IpAddr>) -> [u8; 6] {
    let tail: [u8; 4] = match gateway {
        Some(IpAddr::V4(a)) => a.octets(),
        Some(IpAddr::V6(a)) => {
            let o = a.octets();
            [o[12], o[13], o[14], o[15]]
        }
        None => [0, 0, 0, 1],
    };
    [0x02, 0xbe, tail[0], tail[1], tail[2], tail[3]]
}

impl BridgeNetwork {
    /// Set up the node side (bridge, its addresses, forwarding, the nftables table) and take
    /// back the pods recorded in the state directory. Blocking.
    pub fn new(config: BridgeConfig) -> Result<BridgeNetwork, NetError> {
        fs::create_dir_all(&config.state_dir).map_err(NetError::io(format!(
            "creating {}",
            config.state_dir.display()
        )))?;
        let mut host = Netlink::open().map_err(NetError::io("opening a netlink socket"))?;
        host.add_bridge(&config.bridge, config.mtu)
            .map_err(NetError::io(format!(
                "creating the bridge {}",
                config.bridge
            )))?;
        let bridge = host
            .link(&config.bridge)
            .map_err(NetError::io("looking up the bridge"))?
            .ok_or_else(|| NetError::Io {
                what: format!("the bridge {} vanished", config.bridge),
                source: io::Error::from(io::ErrorKind::NotFound),
            })?;
        let mut book = Book::new(&config.pod_cidrs);
        // A bridge without an address of its own takes the lowest of its ports' and changes
        // it as pods come and go; pods would then send to their gateway's old address and be
        // hairpinned back instead of reaching the node. A fixed one, from the node's range,
        // stays across restarts.
        host.set_mac(bridge.index, bridge_mac(book.gateways().first().copied()))
            .map_err(NetError::io(format!(
                "giving {} a hardware address",
                config.bridge
            )))?;
        for (range, gw) in config.pod_cidrs.iter().zip(book.gateways()) {
            host.add_address(bridge.index, gw, range.prefix())
                .map_err(NetError::io(format!(
                    "giving {} the address {gw}",
                    config.bridge
                )))?;
        }
        host.set_up(bridge.index)
            .map_err(NetError::io("bringing the bridge up"))?;
        for range in &config.service_cidrs {
            host.add_link_route(*range, bridge.index)
                .map_err(NetError::io(format!(
                    "routing {range} to {}",
                    config.bridge
                )))?;
        }
        forwarding(&config.pod_cidrs)?;

        // Take back what the previous run recorded; what no longer fits is cleaned up.
        let mut ports = Vec::new();
        for (uid, record) in read_records(&config.state_dir) {
            let restored = if record.ips.is_empty() {
                // Cut short by a crash before the pod was wired: nothing to take back.
                Err(NetError::Io {
                    what: "an unreadable record".into(),
                    source: io::Error::from(io::ErrorKind::InvalidData),
                })
            } else {
                book.restore(&uid, record.clone())
            };
            match restored {
                Ok(()) => ports.extend(
                    record
                        .host_ports
                        .iter()
                        .flat_map(|p| record.ips.iter().map(move |ip| (*ip, p.clone()))),
                ),
                Err(e) => {
                    warn!(pod = %uid, error = %e, "dropping a pod network record that no longer fits");
                    let _ = host.delete_link(&host_veth(&uid));
                    let _ = fs::remove_file(config.state_dir.join(&uid));
                }
            }
        }
        match &config.nft {
            Some(path) => {
                let mut script = String::new();
                for v6 in families(&config.pod_cidrs) {
                    script.push_str(&nft::table(v6, &config.cluster_cidrs, &ports));
                }
                nft::apply(path, &script)?;
            }
            None => warn!(
                "nft is not installed (Debian package nftables): pod traffic leaving the \
                 cluster is not masqueraded and host ports are not served"
            ),
        }
        Ok(BridgeNetwork {
            inner: Arc::new(Inner {
                bridge_index: bridge.index,
                book: Mutex::new(book),
                host: Mutex::new(host),
                config,
            }),
        })
    }

    pub fn config(&self) -> &BridgeConfig {
        &self.inner.config
    }
}

fn families(ranges: &[Cidr]) -> Vec<bool> {
    let set: HashSet<bool> = ranges.iter().map(Cidr::is_ipv6).collect();
    let mut v: Vec<bool> = set.into_iter().collect();
    v.sort();
    v
}

fn forwarding(ranges: &[Cidr]) -> Result<(), NetError> {
    for v6 in families(ranges) {
        let path = if v6 {
            "/proc/sys/net/ipv6/conf/all/forwarding"
        } else {
            "/proc/sys/net/ipv4/ip_forward"
        };
        if fs::read_to_string(path)
            .map(|s| s.trim() == "1")
            .unwrap_or(false)
        {
            continue;
        }
        fs::write(path, "1").map_err(NetError::io(format!("turning on {path}")))?;
    }
    Ok(())
}

fn read_records(dir: &Path) -> Vec<(String, Record)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        match fs::read(entry.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
        {
            Some(r) => out.push((name, r)),
            None => {
                // Unreadable: the pod's veth may exist all the same, so it is listed, with
                // no addresses.
                out.push((
                    name,
                    Record {
                        ips: Vec::new(),
                        host_ports: Vec::new(),
                    },
                ));
            }
        }
    }
    out
}

fn write_record(dir: &Path, uid: &str, record: &Record) -> Result<(), NetError> {
    let tmp = dir.join(format!(".{uid}"));
    let body = serde_json::to_vec(record).expect("a record serializes");
    fs::write(&tmp, body).map_err(NetError::io(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, dir.join(uid)).map_err(NetError::io("recording the pod's network"))
}

fn host_port_pairs(record: &Record) -> Vec<(IpAddr, HostPort)> {
    record
        .host_ports
        .iter()
        .flat_map(|p| record.ips.iter().map(move |ip| (*ip, p.clone())))
        .collect()
}

impl Inner {
    /// Make the veth pair and configure the pod's side. Blocking.
    fn wire(&self, uid: &str, netns: &Path, record: &Record) -> Result<(), NetError> {
        let name = host_veth(uid);
        let ns =
            fs::File::open(netns).map_err(NetError::io(format!("opening {}", netns.display())))?;
        {
            let mut host = self.host.lock().expect("netlink socket");
            let made = host.add_veth(&name, Some(self.bridge_index), "eth0", &ns, self.config.mtu);
            if let Err(e) = made {
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(NetError::Io {
                        what: format!("creating the veth pair {name}"),
                        source: e,
                    });
                }
                // Left by an attempt that did not finish: start again.
                host.delete_link(&name)
                    .map_err(NetError::io(format!("deleting {name}")))?;
                host.add_veth(&name, Some(self.bridge_index), "eth0", &ns, self.config.mtu)
                    .map_err(NetError::io(format!("creating the veth pair {name}")))?;
            }
            // A pod reaching itself through its Service comes back out its own port.
            let index = host
                .link(&name)
                .map_err(NetError::io(format!("looking up {name}")))?
                .map(|l| l.index);
            if let Some(index) = index {
                host.set_hairpin(index)
                    .map_err(NetError::io(format!("setting hairpin mode on {name}")))?;
            }
        }
        let mut pod = Netlink::open_in(netns)
            .map_err(NetError::io("opening netlink in the pod's namespace"))?;
        let eth0 = pod
            .link("eth0")
            .map_err(NetError::io("finding eth0 in the pod"))?
            .ok_or_else(|| NetError::Io {
                what: "eth0 is missing in the pod".into(),
                source: io::Error::from(io::ErrorKind::NotFound),
            })?;
        for &ip in &record.ips {
            pod.add_address(eth0.index, ip, prefix_of(&self.config.pod_cidrs, ip))
                .map_err(NetError::io(format!("giving the pod {ip}")))?;
        }
        pod.set_up(eth0.index)
            .map_err(NetError::io("bringing up the pod's eth0"))?;
        let gateways = Book::new(&self.config.pod_cidrs).gateways();
        for gw in gateways {
            pod.add_default_route(eth0.index, gw)
                .map_err(NetError::io(format!("routing the pod through {gw}")))?;
        }
        Ok(())
    }

    fn ports(&self, record: &Record, add: bool) -> Result<(), NetError> {
        let (Some(path), false) = (&self.config.nft, record.host_ports.is_empty()) else {
            return Ok(());
        };
        let pairs = host_port_pairs(record);
        let mut script = String::new();
        for v6 in families(&self.config.pod_cidrs) {
            script.push_str(&if add {
                nft::port_elements(v6, &pairs)
            } else {
                nft::delete_port_elements(v6, &pairs)
            });
        }
        nft::apply(path, &script)
    }

    fn attach(
        &self,
        uid: &str,
        netns: &Path,
        host_ports: &[HostPort],
    ) -> Result<Vec<IpAddr>, NetError> {
        let existing = self.book.lock().expect("books").get(uid).cloned();
        if let Some(record) = existing {
            let wired = self
                .host
                .lock()
                .expect("netlink socket")
                .link(&host_veth(uid))
                .map_err(NetError::io("looking up the pod's veth"))?
                .is_some();
            if wired {
                return Ok(record.ips);
            }
        }
        let record = self.book.lock().expect("books").reserve(uid, host_ports)?;
        let done = write_record(&self.config.state_dir, uid, &record)
            .and_then(|()| self.wire(uid, netns, &record))
            .and_then(|()| self.ports(&record, true));
        if let Err(e) = done {
            let _ = self.detach(uid);
            return Err(e);
        }
        debug!(pod = %uid, ips = ?record.ips, "pod network attached");
        Ok(record.ips)
    }

    fn detach(&self, uid: &str) -> Result<(), NetError> {
        let record_file = self.config.state_dir.join(uid);
        let record = self.book.lock().expect("books").get(uid).cloned();
        if record.is_none() && !record_file.exists() {
            return Ok(());
        }
        let name = host_veth(uid);
        self.host
            .lock()
            .expect("netlink socket")
            .delete_link(&name)
            .map_err(NetError::io(format!("deleting {name}")))?;
        if let Some(record) = &record
            && let Err(e) = self.ports(record, false)
        {
            // The elements may never have been added (a failed attach); nothing else
            // holds them.
            debug!(pod = %uid, error = %e, "removing host ports");
        }
        match fs::remove_file(&record_file) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(NetError::Io {
                    what: format!("removing {}", record_file.display()),
                    source: e,
                });
            }
        }
        self.book.lock().expect("books").release(uid);
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NetError::Io {
            what: "pod network task".into(),
            source: io::Error::other(e),
        })?
}

#[async_trait]
impl PodNetwork for BridgeNetwork {
    async fn attach(&self, pod: &Attachment<'_>) -> Result<Vec<IpAddr>, NetError> {
        let inner = self.inner.clone();
        let (uid, netns, ports) = (
            pod.uid.to_string(),
            pod.netns.to_path_buf(),
            pod.host_ports.to_vec(),
        );
        blocking(move || inner.attach(&uid, &netns, &ports)).await
    }

    async fn detach(&self, uid: &str) -> Result<(), NetError> {
        let inner = self.inner.clone();
        let uid = uid.to_string();
        blocking(move || inner.detach(&uid)).await
    }

    fn attached(&self) -> Vec<String> {
        let mut uids: Vec<String> = {
            let book = self.inner.book.lock().expect("books");
            book.pods().map(|(uid, _)| uid.clone()).collect()
        };
        // Records the books could not take back still name something to clean up.
        for (uid, _) in read_records(&self.inner.config.state_dir) {
            if !uids.contains(&uid) {
                uids.push(uid);
            }
        }
        uids
    }

    fn addresses(&self, uid: &str) -> Option<Vec<IpAddr>> {
        let book = self.inner.book.lock().expect("books");
        book.get(uid).map(|r| r.ips.clone())
    }

    fn ranges(&self) -> Vec<Cidr> {
        self.inner.config.pod_cidrs.clone()
    }
}

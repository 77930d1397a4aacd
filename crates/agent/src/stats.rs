//! Resource usage of the node and of its pods and containers, from the cgroup v1 counters
//! (cpuacct for CPU time, memory for the working set: usage less inactive file pages, as the
//! kubelet counts it). CPU usage is a rate, so a sampler reads the counters every few seconds
//! and reports the rate between its last two samples; that is what `kubectl top` and the
//! HorizontalPodAutoscaler see, through the API server's metrics.k8s.io.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::Shared;

const EVERY: Duration = Duration::from_secs(5);
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Where the agent puts pods: `/berth/pod<uid>/<container id>` under each controller.
const POD_PARENT: &str = "berth";

#[derive(Clone, Debug, Serialize)]
pub struct Usage {
    /// CPU in nanocores (billionths of a core) over the window.
    pub cpu_nanocores: u64,
    /// Working set in bytes, at the end of the window.
    pub memory_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ContainerStats {
    pub name: String,
    pub usage: Usage,
}

#[derive(Clone, Debug, Serialize)]
pub struct PodStats {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub usage: Usage,
    pub containers: Vec<ContainerStats>,
    /// The pod's volumes, as the kubelet's summary gives them (hostPath volumes are not).
    pub volume: Vec<VolumeStats>,
}

/// One volume's use, with the kubelet's field names.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStats {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pvc_ref: Option<PvcRef>,
    pub time: String,
    /// Of the filesystem the volume is on.
    pub capacity_bytes: u64,
    pub available_bytes: u64,
    /// Of the volume itself (measured every minute).
    pub used_bytes: u64,
    pub inodes: u64,
    pub inodes_free: u64,
    pub inodes_used: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PvcRef {
    pub name: String,
    pub namespace: String,
}

/// A volume of a pod, as its worker set it up.
#[derive(Clone, Debug)]
pub(crate) struct VolumeDir {
    pub name: String,
    /// The claim it is bound through, if any.
    pub claim: Option<String>,
    pub dir: PathBuf,
}

/// How often volumes are walked to measure what they hold (the kubelet's default too).
const VOLUME_EVERY: Duration = Duration::from_secs(60);

/// Bytes and inodes under `dir`, without following symlinks or crossing into other mounts'
/// contents beyond what a walk sees.
fn measure(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut bytes, mut inodes) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        inodes += 1;
        bytes += meta.blocks() * 512;
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// RFC 3339 time of the last sample.
    pub timestamp: String,
    /// Seconds between the two samples the rates come from.
    pub window_seconds: f64,
    pub node: Usage,
    pub pods: Vec<PodStats>,
}

/// Cumulative counters at one instant.
#[derive(Default, Clone)]
struct Sample {
    at: Option<Instant>,
    wall: Option<jiff::Timestamp>,
    /// cgroup path (relative) -> (cpu ns, working set bytes)
    groups: HashMap<String, (u64, u64)>,
}

#[derive(Default)]
pub(crate) struct Sampler {
    samples: Mutex<(Sample, Sample)>,
    /// Each pod's volumes by UID, as its worker last set them up.
    volumes: Mutex<HashMap<String, Vec<VolumeDir>>>,
    /// What each volume directory held when last walked: (bytes, inodes).
    used: Mutex<HashMap<PathBuf, (u64, u64)>>,
    /// A pod's volumes are new: walk them at the next sample rather than within a minute.
    walk_asked: std::sync::atomic::AtomicBool,
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn working_set(dir: &Path) -> u64 {
    let usage = read_u64(&dir.join("memory.usage_in_bytes")).unwrap_or(0);
    let inactive = std::fs::read_to_string(dir.join("memory.stat"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("total_inactive_file "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    usage.saturating_sub(inactive)
}

/// Node memory in use: total less available, as the kubelet reports the node's working set.
fn node_memory() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    field("MemTotal:").saturating_sub(field("MemAvailable:"))
}

fn read_group(rel: &str) -> (u64, u64) {
    let cpu = read_u64(&PathBuf::from(format!(
        "{CGROUP_ROOT}/cpuacct/{rel}/cpuacct.usage"
    )))
    .unwrap_or(0);
    let mem = working_set(&PathBuf::from(format!("{CGROUP_ROOT}/memory/{rel}")));
    (cpu, mem)
}

fn take_sample() -> Sample {
    let mut groups = HashMap::new();
    let node_cpu =
        read_u64(Path::new(&format!("{CGROUP_ROOT}/cpuacct/cpuacct.usage"))).unwrap_or(0);
    groups.insert(String::new(), (node_cpu, node_memory()));
    let parent = PathBuf::from(format!("{CGROUP_ROOT}/cpuacct/{POD_PARENT}"));
    for pod in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
        let pod_name = pod.file_name().to_string_lossy().into_owned();
        if !pod_name.starts_with("pod") || !pod.path().is_dir() {
            continue;
        }
        let rel = format!("{POD_PARENT}/{pod_name}");
        groups.insert(rel.clone(), read_group(&rel));
        for c in std::fs::read_dir(pod.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if c.path().is_dir() {
                let crel = format!("{rel}/{}", c.file_name().to_string_lossy());
                groups.insert(crel.clone(), read_group(&crel));
            }
        }
    }
    Sample {
        at: Some(Instant::now()),
        wall: Some(jiff::Timestamp::now()),
        groups,
    }
}

impl Sampler {
    /// Record the volumes of pod `uid` (the summary reports them).
    pub(crate) fn set_volumes(&self, uid: &str, dirs: Vec<VolumeDir>) {
        let mut v = self.volumes.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = !v.contains_key(uid);
        v.insert(uid.to_string(), dirs);
        drop(v);
        if fresh {
            self.walk_volumes_soon();
        }
    }

    fn walk_volumes_soon(&self) {
        self.walk_asked
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Walk every known volume of the pods still on the node; forget the others.
    async fn walk_volumes(&self, live: &std::collections::HashSet<String>) {
        let dirs: Vec<PathBuf> = {
            let mut v = self.volumes.lock().unwrap_or_else(|p| p.into_inner());
            v.retain(|uid, _| live.contains(uid));
            v.values().flatten().map(|d| d.dir.clone()).collect()
        };
        let measured = tokio::task::spawn_blocking(move || {
            dirs.into_iter()
                .map(|d| {
                    let m = measure(&d);
                    (d, m)
                })
                .collect::<HashMap<_, _>>()
        })
        .await
        .unwrap_or_default();
        *self.used.lock().unwrap_or_else(|p| p.into_inner()) = measured;
    }

    /// The volume figures of pod `uid`.
    fn volume_stats(&self, uid: &str, namespace: &str, time: &str) -> Vec<VolumeStats> {
        let dirs = self
            .volumes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .cloned()
            .unwrap_or_default();
        let used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        dirs.into_iter()
            .filter_map(|d| {
                let fs = nix::sys::statvfs::statvfs(&d.dir).ok()?;
                let (used_bytes, inodes_used) = used.get(&d.dir).copied().unwrap_or((0, 0));
                let block = fs.fragment_size();
                Some(VolumeStats {
                    pvc_ref: d.claim.map(|name| PvcRef {
                        name,
                        namespace: namespace.to_string(),
                    }),
                    name: d.name,
                    time: time.to_string(),
                    capacity_bytes: fs.blocks() * block,
                    available_bytes: fs.blocks_available() * block,
                    used_bytes,
                    inodes: fs.files(),
                    inodes_free: fs.files_free(),
                    inodes_used,
                })
            })
            .collect()
    }

    pub(crate) async fn run(self: Arc<Self>, shared: std::sync::Weak<Shared>) {
        let mut tick = tokio::time::interval(EVERY);
        let mut walked: Option<Instant> = None;
        loop {
            tick.tick().await;
            let asked = self
                .walk_asked
                .swap(false, std::sync::atomic::Ordering::Relaxed);
            if asked || walked.is_none_or(|t| t.elapsed() >= VOLUME_EVERY) {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let live = shared
                    .pods
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .keys()
                    .cloned()
                    .collect();
                self.walk_volumes(&live).await;
                walked = Some(Instant::now());
            }
            let s = tokio::task::spawn_blocking(take_sample)
                .await
                .unwrap_or_default();
            let mut g = self.samples.lock().unwrap_or_else(|p| p.into_inner());
            let last = std::mem::take(&mut g.1);
            *g = (last, s);
        }
    }

    fn usage(prev: &Sample, last: &Sample, rel: &str, secs: f64) -> Option<Usage> {
        let (cpu1, mem) = *last.groups.get(rel)?;
        // Seen once only: no rate yet, so no figure (as metrics-server leaves such pods out).
        let cpu0 = prev.groups.get(rel)?.0;
        let rate = if secs > 0.0 {
            (cpu1.saturating_sub(cpu0) as f64 / secs) as u64
        } else {
            0
        };
        Some(Usage {
            cpu_nanocores: rate,
            memory_bytes: mem,
        })
    }

    /// The usage of the node and of the pods this agent runs, if two samples exist yet.
    pub(crate) fn summary(&self, shared: &Shared) -> Option<Summary> {
        let (prev, last) = self
            .samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (t0, t1) = (prev.at?, last.at?);
        let secs = t1.duration_since(t0).as_secs_f64();
        let node = Self::usage(&prev, &last, "", secs)?;
        let pods = shared
            .pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let time = last.wall?.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let mut out = Vec::new();
        for (uid, pod) in pods {
            let rel = format!("{POD_PARENT}/pod{uid}");
            let Some(usage) = Self::usage(&prev, &last, &rel, secs) else {
                continue;
            };
            // Containers: the latest attempt of each, by the ID's `<uid>_<name>_<attempt>`.
            let mut latest: HashMap<String, (u32, String)> = HashMap::new();
            let prefix = format!("{rel}/");
            for k in last.groups.keys().filter(|k| k.starts_with(&prefix)) {
                let id = &k[prefix.len()..];
                let Some(rest) = id.strip_prefix(&format!("{uid}_")) else {
                    continue;
                };
                let Some((name, attempt)) = rest.rsplit_once('_') else {
                    continue;
                };
                let attempt: u32 = attempt.parse().unwrap_or(0);
                if latest.get(name).is_none_or(|(a, _)| attempt >= *a) {
                    latest.insert(name.to_string(), (attempt, k.clone()));
                }
            }
            let mut containers: Vec<ContainerStats> = latest
                .into_iter()
                .filter_map(|(name, (_, k))| {
                    Some(ContainerStats {
                        name,
                        usage: Self::usage(&prev, &last, &k, secs)?,
                    })
                })
                .collect();
            containers.sort_by(|a, b| a.name.cmp(&b.name));
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let volume = self.volume_stats(&uid, &namespace, &time);
            out.push(PodStats {
                namespace,
                name: pod.metadata.name.clone().unwrap_or_default(),
                uid,
                usage,
                containers,
                volume,
            });
        }
        Some(Summary {
            timestamp: time,
            window_seconds: secs,
            node,
            pods: out,
        })
    }
}

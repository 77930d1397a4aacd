//! One pod's life on the node. A worker owns a pod from the moment it is bound here until it
//! is gone: it makes the sandbox and volumes, runs init containers in order and then the
//! containers, restarts them as the restart policy says (with Kubernetes' exponential
//! back-off), terminates them gracefully on deletion, and reports status whenever it changes.
//! It is level-triggered: every wake-up compares what should be with what is.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api::k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodStatus, Secret};
use bytes::Bytes;
use runtime::containers::{Isolation, NamespacePaths, SharedNamespaces, ShimStatus};
use runtime::images::Image;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::Shared;
use crate::backoff::{self, Backoff};
use crate::probe::{self, Kind};
use crate::spec::{self, Refs};
use crate::status::{self, Slot, State};
use crate::volumes;

/// How often a worker looks again even if nothing happened (volume contents, status).
const RESYNC: Duration = Duration::from_secs(30);

pub(crate) enum Msg {
    Pod(Arc<Pod>),
    Probe(probe::Verdict),
    /// The pod object is gone from the API.
    Gone,
    Exited {
        id: String,
        status: ShimStatus,
    },
}

pub(crate) struct Worker {
    shared: Arc<Shared>,
    pod: Arc<Pod>,
    uid: String,
    slots: Vec<Slot>,
    /// Per container: the restart back-off, and when its last run ended (or failed to start).
    backoff: HashMap<String, Backoff>,
    ended: HashMap<String, Instant>,
    /// Per container: the back-off of failed image pulls.
    pulls: HashMap<String, Backoff>,
    /// Spec hashes of the running attempts, to restart containers whose definition changed.
    hashes: HashMap<String, u64>,
    sandbox: Option<NamespacePaths>,
    /// The pod's addresses (the node's for a hostNetwork pod), once its sandbox is wired.
    ips: Vec<std::net::IpAddr>,
    volumes: Option<HashMap<String, PathBuf>>,
    volumes_at: Option<Instant>,
    start_time: String,
    reported: Option<serde_json::Value>,
    /// The pod's resourceVersion as the last report left it.
    reported_revision: u64,
    /// Probe tasks of the running attempt of each container.
    probes: HashMap<String, Vec<tokio::task::JoinHandle<()>>>,
    verdicts: mpsc::Sender<probe::Verdict>,
    gone: bool,
    done: bool,
    tx: mpsc::Sender<Msg>,
}

fn hash_of(c: &Container) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(c).unwrap_or_default().hash(&mut h);
    h.finish()
}

fn containers(pod: &Pod) -> (Vec<Container>, Vec<Container>) {
    let spec = pod.spec.clone().unwrap_or_default();
    (spec.init_containers.unwrap_or_default(), spec.containers)
}

/// The pod's ephemeral containers, each as the container it runs as and the container whose
/// processes it should see (`targetContainerName`).
fn ephemeral_containers(pod: &Pod) -> Vec<(Container, Option<String>)> {
    pod.spec
        .iter()
        .flat_map(|s| s.ephemeral_containers.iter().flatten())
        .filter_map(|e| {
            let mut v = serde_json::to_value(e).ok()?;
            let target = v
                .as_object_mut()?
                .remove("targetContainerName")
                .and_then(|t| t.as_str().map(str::to_string))
                .filter(|t| !t.is_empty());
            Some((serde_json::from_value(v).ok()?, target))
        })
        .collect()
}

impl Worker {
    pub(crate) fn new(shared: Arc<Shared>, pod: Arc<Pod>, tx: mpsc::Sender<Msg>) -> Worker {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let (inits, mains) = containers(&pod);
        let mut slots: Vec<Slot> = inits
            .iter()
            .map(|c| {
                Slot::new(
                    &c.name,
                    c.image.as_deref().unwrap_or(""),
                    true,
                    c.restart_policy.as_deref() == Some("Always"),
                )
            })
            .collect();
        slots.extend(
            mains
                .iter()
                .map(|c| Slot::new(&c.name, c.image.as_deref().unwrap_or(""), false, false)),
        );
        slots.extend(
            ephemeral_containers(&pod)
                .iter()
                .map(|(c, _)| Slot::ephemeral(&c.name, c.image.as_deref().unwrap_or(""))),
        );
        // What the API last heard survives an agent restart: restart counts and last states.
        let known: Vec<&api::k8s_openapi::api::core::v1::ContainerStatus> = pod
            .status
            .iter()
            .flat_map(|s| {
                s.init_container_statuses
                    .iter()
                    .flatten()
                    .chain(s.container_statuses.iter().flatten())
                    .chain(s.ephemeral_container_statuses.iter().flatten())
            })
            .collect();
        for s in &mut slots {
            if let Some(k) = known.iter().find(|k| k.name == s.name) {
                s.restart_count = k.restart_count;
                s.image_id = k.image_id.clone();
                if let Some(t) = k.state.as_ref().and_then(|st| st.terminated.as_ref()) {
                    s.state = terminated_from_api(t);
                    s.container_id = k
                        .container_id
                        .clone()
                        .unwrap_or_default()
                        .trim_start_matches("berth://")
                        .to_string();
                }
                s.last_state = k
                    .last_state
                    .as_ref()
                    .and_then(|l| l.terminated.as_ref())
                    .map(terminated_from_api);
            }
        }
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(runtime::containers::shim::now_rfc3339);
        Worker {
            shared,
            pod,
            uid,
            slots,
            backoff: HashMap::new(),
            ended: HashMap::new(),
            pulls: HashMap::new(),
            hashes: HashMap::new(),
            sandbox: None,
            ips: Vec::new(),
            volumes: None,
            volumes_at: None,
            start_time,
            reported: None,
            reported_revision: 0,
            probes: HashMap::new(),
            verdicts: mpsc::channel(1).0,
            gone: false,
            done: false,
            tx,
        }
    }

    fn name(&self) -> String {
        self.pod.metadata.name.clone().unwrap_or_default()
    }

    fn namespace(&self) -> String {
        self.pod.metadata.namespace.clone().unwrap_or_default()
    }

    fn policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn host_network(&self) -> bool {
        self.pod.spec.as_ref().and_then(|s| s.host_network) == Some(true)
    }

    /// The pod's addresses: the node's for a hostNetwork pod, else those the pod network gave
    /// it, the primary family's first (none until then).
    fn pod_ips(&self) -> Vec<String> {
        if self.host_network() {
            return vec![self.shared.node.ip.to_string()];
        }
        self.ips.iter().map(ToString::to_string).collect()
    }

    /// The pod's `resolv.conf`, per its `dnsPolicy` and `dnsConfig`; the cluster DNS learns
    /// the search list of the pod's resolver, so it can walk it for the pod.
    fn resolv_conf(&self) -> String {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let settings = &self.shared.dns;
        let host = settings.host();
        let ns = self.namespace();
        let pod = net::dns::PodDns {
            policy: spec.dns_policy.as_deref(),
            host_network: self.host_network(),
            config: spec.dns_config.as_ref(),
            namespace: &ns,
            cluster_dns: settings.cluster_dns,
            domain: &settings.domain,
            host: &host,
        };
        if let Some(dns) = &self.shared.dns_server {
            let searches = pod.searches_for_cluster_dns();
            for ip in &self.ips {
                dns.set_client(*ip, searches.as_deref());
            }
        }
        pod.conf().render()
    }

    /// The node ports the pod's containers ask for (`hostPort`).
    fn host_ports(&self) -> Vec<net::HostPort> {
        let Some(spec) = self.pod.spec.as_ref() else {
            return Vec::new();
        };
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let host_port = u16::try_from(p.host_port?).ok().filter(|p| *p > 0)?;
                Some(net::HostPort {
                    protocol: net::Protocol::from_kubernetes(
                        p.protocol.as_deref().unwrap_or("TCP"),
                    )?,
                    host_port,
                    container_port: u16::try_from(p.container_port).ok()?,
                    host_ip: p.host_ip.as_deref().and_then(|h| h.parse().ok()),
                })
            })
            .collect()
    }

    /// Connect the pod's network namespace to the pod network.
    async fn attach_network(&mut self, ns: &NamespacePaths) -> Result<(), String> {
        let Some(path) = ns.net.as_deref() else {
            return Ok(());
        };
        let Some(network) = self.shared.network.get() else {
            return Err("the pod network is not ready".into());
        };
        let ports = self.host_ports();
        let ips = network
            .attach(&net::Attachment {
                uid: &self.uid,
                netns: path,
                host_ports: &ports,
            })
            .await
            .map_err(|e| e.to_string())?;
        self.ips = ips;
        Ok(())
    }

    fn pod_dir(&self) -> PathBuf {
        self.shared.dirs.pods.join(&self.uid)
    }

    fn log_path(&self, name: &str, attempt: i32) -> PathBuf {
        self.shared
            .log_dir(&self.namespace(), &self.name(), &self.uid)
            .join(name)
            .join(format!("{attempt}.log"))
    }

    fn container_id(&self, name: &str, attempt: i32) -> String {
        format!("{}_{name}_{attempt}", self.uid)
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let (vtx, mut vrx) = mpsc::channel(16);
        self.verdicts = vtx;
        self.adopt();
        loop {
            let wake = self.sync(&mut rx).await;
            if self.done {
                break;
            }
            let deadline = wake.unwrap_or_else(|| Instant::now() + RESYNC);
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(m) => {
                        self.handle(m).await;
                        while let Ok(m) = rx.try_recv() {
                            self.handle(m).await;
                        }
                    }
                    None => break,
                },
                Some(v) = vrx.recv() => self.handle(Msg::Probe(v)).await,
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
        for (_, tasks) in self.probes.drain() {
            tasks.iter().for_each(|t| t.abort());
        }
        debug!(pod = %self.name(), "worker done");
    }

    /// Take over containers that were running before the agent (re)started.
    fn adopt(&mut self) {
        let prefix = format!("{}_", self.uid);
        for id in self.shared.runtime.list() {
            let Some(rest) = id.strip_prefix(&prefix) else {
                continue;
            };
            let Some((name, attempt)) = rest.rsplit_once('_') else {
                continue;
            };
            let attempt: i32 = attempt.parse().unwrap_or(0);
            let Some(i) = self.slots.iter().position(|s| s.name == name) else {
                continue;
            };
            match self.shared.runtime.status(&id) {
                Some(ShimStatus::Running { started_at, .. }) => {
                    let s = &mut self.slots[i];
                    s.state = State::Running { started_at };
                    s.container_id = id.clone();
                    s.restart_count = s.restart_count.max(attempt);
                    // What the API last heard stands until the probes say otherwise.
                    let known = self
                        .pod
                        .status
                        .iter()
                        .flat_map(|st| {
                            st.container_statuses
                                .iter()
                                .flatten()
                                .chain(st.init_container_statuses.iter().flatten())
                                .chain(st.ephemeral_container_statuses.iter().flatten())
                        })
                        .find(|k| k.name == name)
                        .map(|k| (k.started.unwrap_or(true), k.ready));
                    let (started, ready) = known.unwrap_or((true, true));
                    s.started = started;
                    s.ready = ready;
                    if let Some(c) = self.container(name) {
                        self.hashes.insert(name.to_string(), hash_of(&c));
                        self.start_probes(&c, &id, started);
                    }
                    self.watch(id.clone());
                    info!(pod = %self.name(), container = name, "adopted a running container");
                }
                Some(status) => {
                    let tx = self.tx.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(Msg::Exited { id, status }).await;
                    });
                }
                None => {}
            }
        }
    }

    fn container(&self, name: &str) -> Option<Container> {
        let (inits, mains) = containers(&self.pod);
        let ephemeral = ephemeral_containers(&self.pod).into_iter().map(|(c, _)| c);
        inits
            .into_iter()
            .chain(mains)
            .chain(ephemeral)
            .find(|c| c.name == name)
    }

    /// Start ephemeral containers added since the last look; each runs once.
    async fn sync_ephemeral(&mut self) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        for (c, _) in ephemeral_containers(&self.pod) {
            if !self.slots.iter().any(|s| s.name == c.name) {
                self.slots
                    .push(Slot::ephemeral(&c.name, c.image.as_deref().unwrap_or("")));
            }
            let i = self.slot(&c.name);
            let never_ran = self.slots[i].container_id.is_empty();
            if never_ran
                && matches!(self.slots[i].state, State::Waiting { .. })
                && let Some(t) = self.start(&c).await
            {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
        }
        wake
    }

    async fn handle(&mut self, m: Msg) {
        match m {
            Msg::Pod(p) => {
                // Someone else rewrote what this agent reports (the node lifecycle controller
                // marks pods not ready while the node is unreachable): say it again.
                // Events older than the last report are not news.
                let newer = revision(&p) >= self.reported_revision;
                if newer
                    && self
                        .reported
                        .as_ref()
                        .is_some_and(|r| status_drifted(r, &p))
                {
                    self.reported = None;
                }
                self.pod = p;
            }
            Msg::Probe(v) => self.verdict(v).await,
            Msg::Gone => self.gone = true,
            Msg::Exited { id, status } => self.exited(&id, status).await,
        }
    }

    /// A container ended: record how, and free what its run held (the log stays).
    async fn exited(&mut self, id: &str, st: ShimStatus) {
        let Some(i) = self.slots.iter().position(|s| s.container_id == id) else {
            let _ = self.shared.runtime.remove(id).await;
            return;
        };
        let state = match st {
            ShimStatus::Exited {
                exit_code,
                signal,
                oom_killed,
                started_at,
                finished_at,
                ..
            } => State::Terminated {
                exit_code,
                signal,
                reason: if oom_killed {
                    "OOMKilled".into()
                } else if exit_code == 0 {
                    "Completed".into()
                } else {
                    "Error".into()
                },
                message: String::new(),
                started_at,
                finished_at,
            },
            ShimStatus::Failed { error, finished_at } => State::Terminated {
                exit_code: 128,
                signal: 0,
                reason: "StartError".into(),
                message: error,
                started_at: finished_at.clone(),
                finished_at,
            },
            ShimStatus::Running { .. } => return,
        };
        let name = self.slots[i].name.clone();
        if let Some(tasks) = self.probes.remove(&name) {
            tasks.iter().for_each(|t| t.abort());
        }
        let failed = !state.succeeded();
        if failed {
            let (kind, reason) = match &state {
                State::Terminated { reason, .. } if reason == "OOMKilled" => {
                    ("Warning", "OOMKilled")
                }
                _ => ("Normal", "Died"),
            };
            if reason == "OOMKilled" {
                self.event(
                    kind,
                    reason,
                    &format!("Container {name} was killed for using more memory than its limit"),
                );
            }
        }
        let s = &mut self.slots[i];
        s.state = state;
        s.ready = false;
        self.hashes.remove(&name);
        self.ended.insert(name, Instant::now());
        if let Err(e) = self.shared.runtime.remove(id).await {
            warn!(id, error = %e, "could not clean up an ended container");
        }
    }

    fn watch(&self, id: String) {
        let rt = self.shared.runtime.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            match rt.wait(&id).await {
                Ok(status) => {
                    let _ = tx.send(Msg::Exited { id, status }).await;
                }
                Err(e) => debug!(id, error = %e, "stopped watching a container"),
            }
        });
    }

    fn event(&self, kind: &str, reason: &str, message: &str) {
        self.shared.events.record(&self.pod, kind, reason, message);
    }

    fn terminating(&self) -> bool {
        self.gone || self.pod.metadata.deletion_timestamp.is_some()
    }

    /// Bring the pod's containers in line with its spec; returns when to look again.
    async fn sync(&mut self, inbox: &mut mpsc::Receiver<Msg>) -> Option<Instant> {
        if self.terminating() {
            self.terminate(inbox).await;
            return None;
        }
        let phase = status::phase(&self.pod, &self.slots);
        if phase == "Succeeded" || phase == "Failed" {
            // Done for good: nothing restarts; the sandbox and volumes can go.
            self.stop_all(fixed(Duration::ZERO)).await;
            self.release().await;
            if self.report().await {
                self.done = true;
            }
            return Some(Instant::now() + Duration::from_secs(2));
        }
        if !self.ensure_sandbox().await {
            self.report().await;
            return Some(Instant::now() + Duration::from_secs(2));
        }
        if !self.ensure_volumes().await {
            self.report().await;
            return Some(Instant::now() + Duration::from_secs(2));
        }
        let (inits, mains) = containers(&self.pod);
        let mut wake: Option<Instant> = None;
        let mut soonest = |t: Option<Instant>| {
            if let Some(t) = t {
                wake = Some(wake.map_or(t, |w: Instant| w.min(t)));
            }
        };
        let mut inits_done = true;
        for c in &inits {
            let i = self.slot(&c.name);
            if self.slots[i].init_done() {
                continue;
            }
            inits_done = false;
            match &self.slots[i].state {
                State::Running { .. } => {}
                State::Terminated { .. } if self.policy() == "Never" && !self.slots[i].sidecar => {}
                _ => soonest(self.maybe_start(c).await),
            }
            break;
        }
        if inits_done {
            soonest(self.sync_ephemeral().await);
            for c in &mains {
                let i = self.slot(&c.name);
                let restart = match &self.slots[i].state {
                    State::Running { .. } => {
                        if self.hashes.get(&c.name).is_some_and(|h| *h != hash_of(c)) {
                            self.event(
                                "Normal",
                                "Killing",
                                &format!(
                                    "Container {} definition changed, will be restarted",
                                    c.name
                                ),
                            );
                            self.stop_container(i, self.grace()).await;
                        }
                        false
                    }
                    State::Terminated { exit_code, .. } => match self.policy().as_str() {
                        "Always" => true,
                        "OnFailure" => *exit_code != 0,
                        _ => false,
                    },
                    State::Waiting { .. } => true,
                };
                if restart {
                    soonest(self.maybe_start(c).await);
                }
            }
        }
        self.report().await;
        soonest(Some(Instant::now() + RESYNC));
        soonest(self.shared.tokens.next_refresh(&self.uid));
        wake
    }

    fn slot(&self, name: &str) -> usize {
        self.slots
            .iter()
            .position(|s| s.name == name)
            .expect("every container has a slot")
    }

    fn grace(&self) -> Duration {
        let secs = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30)
            .max(0);
        Duration::from_secs(secs as u64)
    }

    /// Start `c` unless it must wait out a back-off; returns when it may be tried again.
    async fn maybe_start(&mut self, c: &Container) -> Option<Instant> {
        let i = self.slot(&c.name);
        let ran_before = !self.slots[i].container_id.is_empty();
        if ran_before {
            let now = Instant::now();
            let ended = self.ended.get(&c.name).copied().unwrap_or(now);
            let b = self.backoff.entry(c.name.clone()).or_default();
            if let Some(until) = b.hold(ended, now) {
                let delay = b.delay();
                self.crash_loop(i, c, delay);
                return Some(until);
            }
            b.next(ended);
        }
        self.start(c).await
    }

    /// `c` waits out its back-off: say so as the kubelet does, with the run that ended as
    /// its last state.
    fn crash_loop(&mut self, i: usize, c: &Container, delay: std::time::Duration) {
        let message = format!(
            "back-off {}s restarting failed container={} pod={}_{}({})",
            delay.as_secs(),
            c.name,
            self.name(),
            self.namespace(),
            self.uid
        );
        let s = &mut self.slots[i];
        if let State::Terminated { .. } = s.state {
            s.last_state = Some(s.state.clone());
        }
        let already =
            matches!(&s.state, State::Waiting { reason, .. } if reason == "CrashLoopBackOff");
        s.state = State::waiting("CrashLoopBackOff", message);
        if !already {
            self.event(
                "Warning",
                "BackOff",
                &format!(
                    "Back-off restarting failed container {} in pod {}",
                    c.name,
                    self.name()
                ),
            );
        }
    }

    /// An image pull for `c` failed: ErrImagePull first, then ImagePullBackOff while it
    /// waits longer each time.
    fn pull_failed(&mut self, i: usize, c: &Container, reason: &str, message: String) -> Instant {
        let now = Instant::now();
        let retry = if reason == "ErrImageNeverPull" {
            now + RESYNC
        } else {
            let p = self.pulls.entry(c.name.clone()).or_default();
            p.next(now);
            now + p.delay()
        };
        let s = &mut self.slots[i];
        let shown = match (&s.state, reason) {
            (State::Waiting { reason: r, .. }, "ErrImagePull")
                if r == "ErrImagePull" || r == "ImagePullBackOff" =>
            {
                "ImagePullBackOff"
            }
            _ => reason,
        };
        s.state = State::waiting(shown, message.clone());
        if shown == "ImagePullBackOff" {
            let image = c.image.clone().unwrap_or_default();
            self.event(
                "Normal",
                "BackOff",
                &format!("Back-off pulling image \"{image}\""),
            );
        } else {
            self.event("Warning", "Failed", &message);
        }
        retry
    }

    async fn start(&mut self, c: &Container) -> Option<Instant> {
        let i = self.slot(&c.name);
        let ran_before = !self.slots[i].container_id.is_empty();
        let attempt = if ran_before {
            self.slots[i].restart_count + 1
        } else {
            self.slots[i].restart_count
        };
        let image_ref = c.image.clone().unwrap_or_default();
        // A failed pull is not tried again before its back-off is over.
        let now = Instant::now();
        if let Some(until) = self.pulls.get(&c.name).and_then(|p| p.hold(p.last()?, now)) {
            return Some(until);
        }
        let image = match self
            .shared
            .ensure_image(&self.pod, &image_ref, c.image_pull_policy.as_deref())
            .await
        {
            Ok(img) => {
                self.pulls.remove(&c.name);
                img
            }
            Err((reason, message)) => return Some(self.pull_failed(i, c, &reason, message)),
        };
        let id = self.container_id(&c.name, attempt);
        let spec = match self.build_spec(c, &image, &id).await {
            Ok(s) => s,
            Err(message) => {
                self.slots[i].state = State::waiting("CreateContainerConfigError", message.clone());
                self.event("Warning", "Failed", &format!("Error: {message}"));
                // The missing ConfigMap or Secret may appear at any time: look again soon.
                return Some(Instant::now() + backoff::INITIAL);
            }
        };
        let layers = self.shared.images.layer_dirs(&image);
        let log = self.log_path(&c.name, attempt);
        self.event(
            "Normal",
            "Created",
            &format!("Created container {}", c.name),
        );
        match self.shared.runtime.start(&spec, &layers, &log).await {
            Ok(started) => {
                let s = &mut self.slots[i];
                if ran_before {
                    if let State::Terminated { .. } = s.state {
                        s.last_state = Some(s.state.clone());
                    }
                    s.restart_count = attempt;
                }
                s.state = State::Running {
                    started_at: started.started_at,
                };
                s.container_id = id.clone();
                s.image_id = image
                    .repo_digests
                    .first()
                    .cloned()
                    .unwrap_or_else(|| image.id.to_string());
                let startup = c.startup_probe.is_none();
                s.started = startup;
                s.ready = startup && c.readiness_probe.is_none();
                self.hashes.insert(c.name.clone(), hash_of(c));
                self.event(
                    "Normal",
                    "Started",
                    &format!("Started container {}", c.name),
                );
                self.watch(id.clone());
                self.post_start(i, c, &id).await;
                self.start_probes(c, &id, startup);
                None
            }
            Err(e) => {
                let message = e.to_string();
                let retried = self.slots[i].sidecar || self.policy() != "Never";
                let s = &mut self.slots[i];
                if ran_before && let State::Terminated { .. } = s.state {
                    s.last_state = Some(s.state.clone());
                }
                s.restart_count = attempt;
                s.container_id = id;
                let ended = State::Terminated {
                    exit_code: 128,
                    signal: 0,
                    reason: "StartError".into(),
                    message: message.clone(),
                    started_at: runtime::containers::shim::now_rfc3339(),
                    finished_at: runtime::containers::shim::now_rfc3339(),
                };
                // As the kubelet reports it: a container that will be tried again waits
                // (RunContainerError, then CrashLoopBackOff) with the failed start as its last
                // state; one that will not is terminated by it.
                if retried {
                    s.last_state = Some(ended);
                    s.state = State::waiting("RunContainerError", message.clone());
                } else {
                    s.state = ended;
                }
                self.event("Warning", "Failed", &format!("Error: {message}"));
                // A container that could not start is a run that ended at once: it is retried
                // with the same back-off as one that crashed. Look again shortly to show the
                // wait.
                self.ended.insert(c.name.clone(), Instant::now());
                Some(Instant::now() + Duration::from_secs(1))
            }
        }
    }

    async fn build_spec(
        &self,
        c: &Container,
        image: &Image,
        id: &str,
    ) -> Result<runtime::containers::ContainerSpec, String> {
        let ns = self.namespace();
        let privileged = c.security_context.as_ref().and_then(|s| s.privileged) == Some(true);
        let (cms, secrets) = spec::referenced(c);
        let mut refs = Refs::default();
        for name in cms {
            let data = self
                .shared
                .client
                .get::<ConfigMap>(Some(&ns), &name)
                .await
                .map_err(|e| e.to_string())?
                .map(|cm| cm.data.unwrap_or_default());
            refs.config_maps.insert(name, data);
        }
        for name in secrets {
            let data = self
                .shared
                .client
                .get::<Secret>(Some(&ns), &name)
                .await
                .map_err(|e| e.to_string())?
                .map(|s| {
                    s.data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect()
                });
            refs.secrets.insert(name, data);
        }
        let (passwd, group) = self.shared.image_accounts(image);
        let sandbox = self.sandbox.clone().unwrap_or_default();
        let dir = self.pod_dir();
        let volumes = self.volumes.clone().unwrap_or_default();
        let host_ip = self.shared.node.ip.to_string();
        let pod_ips = self.pod_ips();
        // Like the kubelet, no container starts before the Services are known.
        let _ = tokio::time::timeout(Duration::from_secs(10), self.shared.services.synced()).await;
        let links = self.pod.spec.as_ref().and_then(|s| s.enable_service_links) != Some(false);
        let service_env = self.shared.services.env(&ns, links);
        let ctx = spec::Ctx {
            id: id.to_string(),
            node_name: &self.shared.node.name,
            host_ip: &host_ip,
            pod_ips: &pod_ips,
            namespaces: SharedNamespaces {
                net: sandbox.net,
                ipc: sandbox.ipc,
                uts: sandbox.uts,
                pid: self.target_pid_namespace(&c.name),
                host_pid: self.pod.spec.as_ref().and_then(|s| s.host_pid) == Some(true),
            },
            cgroup: format!("/berth/pod{}/{}", self.uid, id),
            volumes: &volumes,
            pod_files: vec![
                (dir.join("hosts"), "/etc/hosts"),
                (dir.join("hostname"), "/etc/hostname"),
                (dir.join("resolv.conf"), "/etc/resolv.conf"),
            ],
            passwd: &passwd,
            group: &group,
            max_open_files: self.shared.max_open_files,
            host_capabilities: &self.shared.host_capabilities,
            host_devices: if privileged {
                runtime::containers::host::devices()
            } else {
                Vec::new()
            },
            service_env: &service_env,
            seccomp_dir: &self.shared.dirs.seccomp,
        };
        spec::container_spec(&self.pod, c, &image.config, &refs, &ctx).map_err(|e| e.0)
    }

    /// For an ephemeral container that targets another, that container's PID namespace (so
    /// a debugger sees its processes), while the target runs.
    fn target_pid_namespace(&self, name: &str) -> Option<PathBuf> {
        let (_, target) = ephemeral_containers(&self.pod)
            .into_iter()
            .find(|(c, _)| c.name == name)?;
        let slot = self
            .slots
            .iter()
            .find(|s| Some(&s.name) == target.as_ref())?;
        match self.shared.runtime.status(&slot.container_id)? {
            ShimStatus::Running { pid, .. } => Some(PathBuf::from(format!("/proc/{pid}/ns/pid"))),
            _ => None,
        }
    }

    async fn ensure_sandbox(&mut self) -> bool {
        if self.sandbox.is_some() {
            return true;
        }
        let spec = self.pod.spec.clone().unwrap_or_default();
        let host_network = spec.host_network == Some(true);
        let iso = Isolation {
            net: !host_network,
            ipc: spec.host_ipc != Some(true),
            uts: !host_network,
        };
        let hostname = spec
            .hostname
            .clone()
            .unwrap_or_else(|| self.name().chars().take(63).collect());
        let ns = match self
            .shared
            .runtime
            .create_sandbox(&self.uid, &hostname, iso)
            .await
        {
            Ok(ns) => ns,
            Err(e) => {
                self.event(
                    "Warning",
                    "FailedCreatePodSandBox",
                    &format!("Failed to create pod sandbox: {e}"),
                );
                return false;
            }
        };
        if let Some(limit) = self.shared.pod_pids_limit
            && let Err(e) = limit_pod_pids(&self.uid, limit)
        {
            self.event(
                "Warning",
                "FailedCreatePodSandBox",
                &format!("Failed to create pod sandbox: limiting the pod's processes: {e}"),
            );
            return false;
        }
        if let Err(e) = self.attach_network(&ns).await {
            self.event(
                "Warning",
                "FailedCreatePodSandBox",
                &format!("Failed to create pod sandbox: setting up the pod's network: {e}"),
            );
            return false;
        }
        // The pod's network policies hold before anything in it runs (fail closed).
        if let (Some(policies), false) = (&self.shared.policies, host_network)
            && let Err(e) = policies.admit(&self.pod, &self.ips).await
        {
            self.event(
                "Warning",
                "FailedCreatePodSandBox",
                &format!("Failed to create pod sandbox: applying network policies: {e}"),
            );
            return false;
        }
        let dir = self.pod_dir();
        // With a subdomain (a headless Service of that name), the pod's fully qualified name
        // comes first, as the kubelet writes it.
        let names = match spec.subdomain.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => format!(
                "{hostname}.{sub}.{}.svc.{}\t{hostname}",
                self.namespace(),
                self.shared.dns.domain
            ),
            None => hostname.clone(),
        };
        let own = self
            .ips
            .iter()
            .map(|ip| format!("{ip}\t{names}\n"))
            .collect::<String>();
        let files = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let hosts = if host_network {
                std::fs::read_to_string("/etc/hosts").unwrap_or_default()
            } else {
                // Kubernetes' managed hosts file: the pod's own name resolves to its address.
                let own = if own.is_empty() {
                    format!("127.0.1.1\t{hostname}\n")
                } else {
                    own
                };
                format!(
                    "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\n{own}"
                )
            };
            std::fs::write(dir.join("hosts"), hosts)?;
            std::fs::write(
                dir.join("hostname"),
                format!(
                    "{}\n",
                    if host_network {
                        self.shared.node.name.clone()
                    } else {
                        hostname.clone()
                    }
                ),
            )?;
            std::fs::write(dir.join("resolv.conf"), self.resolv_conf())?;
            Ok(())
        })();
        if let Err(e) = files {
            warn!(pod = %self.name(), error = %e, "could not write the pod's files");
            return false;
        }
        self.sandbox = Some(ns);
        true
    }

    async fn ensure_volumes(&mut self) -> bool {
        // Files are rewritten every RESYNC, and sooner when a token is due for replacement.
        let token_due = self
            .shared
            .tokens
            .next_refresh(&self.uid)
            .is_some_and(|t| t <= Instant::now());
        let fresh = self.volumes_at.is_some_and(|t| t.elapsed() < RESYNC) && !token_due;
        if self.volumes.is_some() && fresh {
            return true;
        }
        let prepared = volumes::prepare(
            &self.pod,
            &self.shared.client,
            &self.shared.tokens,
            &self.pod_dir(),
        )
        .await;
        match prepared {
            Ok(v) => {
                self.shared
                    .stats
                    .set_volumes(&self.uid, volume_dirs(&self.pod, &v));
                self.volumes = Some(v);
                self.volumes_at = Some(Instant::now());
                true
            }
            Err(e) => {
                // Keep using what was there; a first failure blocks the start.
                if self.volumes.is_none() {
                    self.event("Warning", "FailedMount", &e.to_string());
                    for s in self.slots.iter_mut().filter(|s| !s.started) {
                        s.state = State::waiting("ContainerCreating", "");
                    }
                    return false;
                }
                true
            }
        }
    }

    /// Stop one container: its preStop hook, SIGTERM, then SIGKILL after `grace`.
    async fn stop_container(&mut self, i: usize, grace: Duration) {
        self.stop_many(&[i], fixed(grace)).await;
    }

    /// Stop containers together: each gets its preStop hook and SIGTERM at once, and SIGKILL
    /// at the deadline (which a second, shorter delete may bring forward meanwhile).
    async fn stop_many(&mut self, which: &[usize], deadline: watch::Receiver<Instant>) {
        let mut stops = Vec::new();
        for &i in which {
            let id = self.slots[i].container_id.clone();
            if !self.slots[i].state.is_running() || id.is_empty() {
                continue;
            }
            let name = self.slots[i].name.clone();
            self.event("Normal", "Killing", &format!("Stopping container {name}"));
            let hook = self.container(&name).and_then(|c| {
                let h = c.lifecycle.as_ref()?.pre_stop.as_ref()?;
                probe::hook_action(&c, h).ok()
            });
            let target = self.probe_target(&id);
            let (rt, events, pod) = (
                self.shared.runtime.clone(),
                self.shared.events.clone(),
                self.pod.clone(),
            );
            let mut deadline = deadline.clone();
            stops.push(async move {
                if let Some(a) = hook {
                    let left = deadline.borrow().saturating_duration_since(Instant::now());
                    let ran = by_deadline(&mut deadline, probe::run(&a, &target, left)).await;
                    if let Some(Err(e)) = ran {
                        events.record_about(
                            &pod,
                            Some(&name),
                            "Warning",
                            "FailedPreStopHook",
                            &format!("PreStopHook failed: {e}"),
                        );
                    }
                }
                let _ = rt.kill(&id, libc::SIGTERM).await;
                let status = match by_deadline(&mut deadline, rt.wait(&id)).await {
                    Some(Ok(s)) => Some(s),
                    _ => {
                        let _ = rt.kill(&id, libc::SIGKILL).await;
                        tokio::time::timeout(Duration::from_secs(10), rt.wait(&id))
                            .await
                            .ok()
                            .and_then(Result::ok)
                    }
                };
                (id, status)
            });
        }
        for (id, status) in futures_util::future::join_all(stops).await {
            if let Some(st) = status {
                self.exited(&id, st).await;
            }
        }
    }

    async fn stop_all(&mut self, deadline: watch::Receiver<Instant>) {
        // Containers first, then sidecars (init containers that keep running).
        let mains: Vec<usize> = (0..self.slots.len())
            .filter(|i| !self.slots[*i].init)
            .collect();
        self.stop_many(&mains, deadline.clone()).await;
        let sidecars: Vec<usize> = (0..self.slots.len())
            .filter(|i| self.slots[*i].init)
            .collect();
        self.stop_many(&sidecars, deadline).await;
    }

    fn probe_target(&self, id: &str) -> probe::Target {
        probe::Target {
            runtime: self.shared.runtime.clone(),
            container: id.to_string(),
            netns: if self.host_network() {
                None
            } else {
                self.sandbox.as_ref().and_then(|s| s.net.clone())
            },
        }
    }

    /// Start the probes of a container attempt that just started (or was adopted):
    /// the startup probe alone until it succeeds, then liveness and readiness.
    fn start_probes(&mut self, c: &Container, id: &str, started: bool) {
        let mut tasks = Vec::new();
        let mut spawn = |kind: Kind, p: &api::k8s_openapi::api::core::v1::Probe| {
            match probe::probe_action(c, p) {
                Ok(action) => {
                    if let probe::Action::Unsupported(why) = &action {
                        self.shared.events.record_about(
                            &self.pod,
                            Some(&c.name),
                            "Warning",
                            "Unhealthy",
                            why,
                        );
                    }
                    let target = self.probe_target(id);
                    tasks.push(tokio::spawn(probe::watch(
                        kind,
                        action,
                        probe::Timing::of(p),
                        target,
                        self.verdicts.clone(),
                    )));
                }
                Err(e) => warn!(container = %c.name, error = %e, "probe cannot run"),
            }
        };
        if !started {
            if let Some(p) = &c.startup_probe {
                spawn(Kind::Startup, p);
            }
        } else {
            if let Some(p) = &c.liveness_probe {
                spawn(Kind::Liveness, p);
            }
            if let Some(p) = &c.readiness_probe {
                spawn(Kind::Readiness, p);
            }
        }
        self.probes.entry(c.name.clone()).or_default().extend(tasks);
    }

    async fn verdict(&mut self, v: probe::Verdict) {
        let Some(i) = self
            .slots
            .iter()
            .position(|s| s.container_id == v.container)
        else {
            return;
        };
        if !self.slots[i].state.is_running() {
            return;
        }
        let name = self.slots[i].name.clone();
        let Some(c) = self.container(&name) else {
            return;
        };
        match (v.kind, v.ok) {
            (Kind::Startup, true) => {
                self.slots[i].started = true;
                self.slots[i].ready = c.readiness_probe.is_none();
                self.start_probes(&c, &v.container, true);
            }
            (Kind::Readiness, ok) => {
                self.slots[i].ready = ok;
                if !ok {
                    self.shared.events.record_about(
                        &self.pod,
                        Some(&name),
                        "Warning",
                        "Unhealthy",
                        &format!("Readiness probe failed: {}", v.message),
                    );
                }
            }
            (Kind::Liveness, true) => {}
            (kind @ (Kind::Startup | Kind::Liveness), false) => {
                let events = &self.shared.events;
                events.record_about(
                    &self.pod,
                    Some(&name),
                    "Warning",
                    "Unhealthy",
                    &format!("{} probe failed: {}", kind.name(), v.message),
                );
                events.record_about(
                    &self.pod,
                    Some(&name),
                    "Normal",
                    "Killing",
                    &format!(
                        "Container {name} failed {} probe, will be restarted",
                        kind.name().to_lowercase()
                    ),
                );
                let probe = if kind == Kind::Startup {
                    &c.startup_probe
                } else {
                    &c.liveness_probe
                };
                let grace = probe
                    .as_ref()
                    .and_then(|p| p.termination_grace_period_seconds)
                    .map(|s| Duration::from_secs(s.max(0) as u64))
                    .unwrap_or_else(|| self.grace());
                self.stop_container(i, grace).await;
            }
        }
    }

    /// Run the postStart hook; if it fails, the container is killed (and restarted as its
    /// policy says).
    async fn post_start(&mut self, i: usize, c: &Container, id: &str) {
        let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) else {
            return;
        };
        let result = match probe::hook_action(c, h) {
            Ok(a) => {
                probe::run(
                    &a,
                    &self.probe_target(id),
                    self.grace().max(Duration::from_secs(1)),
                )
                .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.shared.events.record_about(
                &self.pod,
                Some(&c.name),
                "Warning",
                "FailedPostStartHook",
                &format!("PostStartHook failed: {e}"),
            );
            self.stop_container(i, Duration::from_secs(2)).await;
        }
    }

    /// Free the sandbox, volumes and cgroups of a pod that runs nothing any more.
    async fn release(&mut self) {
        // Whether or not this worker made them: after an agent restart, a pod that was
        // terminating has a sandbox and an address from the previous run.
        self.sandbox = None;
        if let Some(dns) = &self.shared.dns_server {
            for ip in &self.ips {
                dns.set_client(*ip, None);
            }
        }
        self.ips.clear();
        if let Some(network) = self.shared.network.get()
            && let Err(e) = network.detach(&self.uid).await
        {
            warn!(pod = %self.name(), error = %e, "could not free the pod's network");
        }
        if let Some(policies) = &self.shared.policies {
            policies.forget(&self.uid).await;
        }
        if self.shared.runtime.sandbox(&self.uid).is_some()
            && let Err(e) = self.shared.runtime.remove_sandbox(&self.uid).await
        {
            warn!(pod = %self.name(), error = %e, "could not remove the sandbox");
        }
        self.volumes = None;
        self.shared.tokens.forget(&self.uid);
        if self.pod_dir().exists() {
            let _ = volumes::teardown(&self.pod_dir());
        }
        remove_pod_cgroups(&self.uid);
    }

    /// The pod is being deleted: stop everything within its grace period, report, and let
    /// the API server delete it.
    async fn terminate(&mut self, inbox: &mut mpsc::Receiver<Msg>) {
        let grace = if self.gone {
            Duration::from_secs(2).min(self.grace())
        } else {
            self.grace()
        };
        // While the containers stop, a second delete may shorten the grace period (or the pod
        // may be force-deleted): the kill comes sooner. Other news waits until they are done.
        let (sooner, deadline) = watch::channel(Instant::now() + grace);
        let mut held = Vec::new();
        {
            let stopping = self.stop_all(deadline);
            tokio::pin!(stopping);
            loop {
                tokio::select! {
                    () = &mut stopping => break,
                    Some(m) = inbox.recv() => {
                        let grace = match &m {
                            Msg::Pod(p) => p.metadata.deletion_grace_period_seconds,
                            Msg::Gone => Some(0),
                            _ => None,
                        };
                        if let Some(g) = grace {
                            let at = Instant::now() + Duration::from_secs(g.max(0) as u64);
                            sooner.send_if_modified(|d| {
                                let earlier = at < *d;
                                if earlier {
                                    *d = at;
                                }
                                earlier
                            });
                        }
                        held.push(m);
                    }
                }
            }
        }
        for m in held {
            self.handle(m).await;
        }
        for id in self.shared.runtime.list() {
            if id.starts_with(&format!("{}_", self.uid)) {
                let _ = self.shared.runtime.remove(&id).await;
            }
        }
        self.release().await;
        let _ = volumes::teardown(&self.pod_dir());
        if !self.gone {
            self.report().await;
            let body = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}});
            let path = format!(
                "/api/v1/namespaces/{}/pods/{}",
                self.namespace(),
                self.name()
            );
            match self
                .shared
                .client
                .request(
                    http::Method::DELETE,
                    &path,
                    "application/json",
                    Bytes::from(body.to_string()),
                )
                .await
            {
                Ok(_) => info!(pod = %self.name(), "pod terminated"),
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => {
                    warn!(pod = %self.name(), error = %e, "could not delete the terminated pod; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    return;
                }
            }
        }
        let _ = std::fs::remove_dir_all(self.shared.log_dir(
            &self.namespace(),
            &self.name(),
            &self.uid,
        ));
        self.done = true;
    }

    /// Send the pod's status if it changed since last time; false if it could not be sent.
    async fn report(&mut self) -> bool {
        let host_ip = self.shared.node.ip.to_string();
        let pod_ips = self.pod_ips();
        let s: PodStatus = status::pod_status(&status::Report {
            pod: &self.pod,
            slots: &self.slots,
            sandbox_ready: self.sandbox.is_some(),
            host_ip: &host_ip,
            pod_ips: &pod_ips,
            start_time: &self.start_time,
        });
        let value = serde_json::to_value(&s).unwrap_or_default();
        // Condition times alone do not make a change worth writing.
        let mut comparable = value.clone();
        if let Some(cs) = comparable["conditions"].as_array_mut() {
            for c in cs {
                if let Some(m) = c.as_object_mut() {
                    m.remove("lastTransitionTime");
                }
            }
        }
        if self.reported.as_ref() == Some(&comparable) {
            return true;
        }
        let path = format!(
            "/api/v1/namespaces/{}/pods/{}/status",
            self.namespace(),
            self.name()
        );
        let patch = json!({"status": value});
        match self
            .shared
            .client
            .request(
                http::Method::PATCH,
                &path,
                "application/merge-patch+json",
                Bytes::from(patch.to_string()),
            )
            .await
        {
            Ok(b) => {
                if let Ok(p) = serde_json::from_slice::<Pod>(&b) {
                    self.reported_revision = revision(&p);
                    self.pod = Arc::new(p);
                }
                self.reported = Some(comparable);
                true
            }
            Err(e) if e.is_not_found() => {
                self.gone = true;
                true
            }
            Err(e) => {
                warn!(pod = %self.name(), error = %e, "could not report pod status");
                false
            }
        }
    }
}

/// A deadline that does not move.
fn fixed(after: Duration) -> watch::Receiver<Instant> {
    watch::channel(Instant::now() + after).1
}

/// Run `fut` until the deadline (which may move earlier meanwhile); `None` if it passed first.
async fn by_deadline<F: std::future::Future>(
    deadline: &mut watch::Receiver<Instant>,
    fut: F,
) -> Option<F::Output> {
    tokio::pin!(fut);
    loop {
        let at = *deadline.borrow_and_update();
        tokio::select! {
            out = &mut fut => return Some(out),
            () = tokio::time::sleep_until(at) => return None,
            moved = deadline.changed() => {
                if moved.is_err() {
                    // Nobody can move it any more.
                    return tokio::time::timeout_at(at, &mut fut).await.ok();
                }
            }
        }
    }
}

fn revision(p: &Pod) -> u64 {
    p.metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The pod conditions this agent owns.
const OWN_CONDITIONS: [&str; 4] = [
    "PodReadyToStartContainers",
    "Initialized",
    "ContainersReady",
    "Ready",
];

/// Whether the API's copy of a pod disagrees with what this agent last reported, in the phase
/// or in a condition the agent owns.
fn status_drifted(reported: &serde_json::Value, pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return true;
    };
    if reported["phase"].as_str() != status.phase.as_deref() {
        return true;
    }
    let api: HashMap<&str, &str> = status
        .conditions
        .iter()
        .flatten()
        .map(|c| (c.type_.as_str(), c.status.as_str()))
        .collect();
    reported["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c["type"].as_str()?, c["status"].as_str()?)))
        .filter(|(ty, _)| OWN_CONDITIONS.contains(ty))
        .any(|(ty, st)| api.get(ty) != Some(&st))
}

fn terminated_from_api(t: &api::k8s_openapi::api::core::v1::ContainerStateTerminated) -> State {
    let ts = |x: &Option<api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        x.as_ref()
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default()
    };
    State::Terminated {
        exit_code: t.exit_code,
        signal: t.signal.unwrap_or(0),
        reason: t.reason.clone().unwrap_or_default(),
        message: t.message.clone().unwrap_or_default(),
        started_at: ts(&t.started_at),
        finished_at: ts(&t.finished_at),
    }
}

/// Cap the processes of a pod's containers together, in the pod's cgroup (its containers'
/// cgroups are made inside it): `pids.max` of the pids controller (cgroup v1), or of the
/// unified hierarchy with the controller enabled down to the pod (v2).
fn limit_pod_pids(uid: &str, limit: u64) -> std::io::Result<()> {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let v1 = root.join("pids");
    let pod = format!("pod{uid}");
    let dir = if v1.is_dir() {
        v1.join("berth").join(&pod)
    } else {
        // Each level down to the pod passes the controller on to its children.
        std::fs::create_dir_all(root.join("berth"))?;
        for level in [root.to_path_buf(), root.join("berth")] {
            std::fs::write(level.join("cgroup.subtree_control"), "+pids")?;
        }
        root.join("berth").join(&pod)
    };
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("pids.max"), limit.to_string())
}

/// Remove the pod's cgroup directories (the runtime removes only the containers' own).
pub(crate) fn remove_pod_cgroups(uid: &str) {
    for ctl in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = ctl.path().join("berth").join(format!("pod{uid}"));
        if dir.exists() {
            // Leftover container leaves first (a killed shim may not have cleaned up).
            for leaf in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if leaf.path().is_dir() {
                    let _ = std::fs::remove_dir(leaf.path());
                }
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// The pod's volumes the node summary reports (not hostPath ones, as the kubelet does not),
/// with the claim each is bound through.
fn volume_dirs(
    pod: &Pod,
    dirs: &std::collections::HashMap<String, std::path::PathBuf>,
) -> Vec<crate::stats::VolumeDir> {
    let pod_name = pod.metadata.name.as_deref().unwrap_or("");
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .filter(|v| v.host_path.is_none())
        .filter_map(|v| {
            let claim = match (&v.persistent_volume_claim, &v.ephemeral) {
                (Some(c), _) => Some(c.claim_name.clone()),
                (None, Some(_)) => Some(format!("{pod_name}-{}", v.name)),
                _ => None,
            };
            Some(crate::stats::VolumeDir {
                name: v.name.clone(),
                claim,
                dir: dirs.get(&v.name)?.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(phase: &str, ready: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "resourceVersion": "7"},
            "status": {"phase": phase, "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": ready},
            ]},
        }))
        .unwrap()
    }

    #[test]
    fn a_rewritten_condition_or_phase_is_drift_but_foreign_conditions_are_not() {
        let reported = json!({"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True"},
        ]});
        assert!(!status_drifted(&reported, &pod("Running", "True")));
        assert!(status_drifted(&reported, &pod("Running", "False")));
        assert!(status_drifted(&reported, &pod("Pending", "True")));
        // A condition someone else owns (PodScheduled, DisruptionTarget) is theirs to change.
        let mut with_target = pod("Running", "True");
        let conditions = with_target
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap();
        conditions[0].status = "False".into();
        assert!(!status_drifted(&reported, &with_target));
        assert_eq!(revision(&with_target), 7);
    }
}

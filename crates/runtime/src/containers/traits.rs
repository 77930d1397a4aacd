//! The node agent's view of a container runtime: pod sandboxes and containers. `OciRuntime` is
//! the real one; `FakeRuntime` runs nothing and lets tests decide how containers end (a fake
//! container with stdin open echoes what is attached to it, as `cat` would).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::watch;

use super::attach::{AttachInput, AttachOutput, Attachment, Decoder, Frame};
use super::exec::{ExecProcess, ExecSpec};
use super::oci::{OciRuntime, RuntimeError, Started};
use super::sandbox::{self, Isolation, NamespacePaths};
use super::shim::{ShimStatus, now_rfc3339};
use super::spec::ContainerSpec;

#[async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// Create (or find) the pod's shared namespaces.
    async fn create_sandbox(
        &self,
        pod: &str,
        hostname: &str,
        iso: Isolation,
    ) -> Result<NamespacePaths, RuntimeError>;
    async fn remove_sandbox(&self, pod: &str) -> Result<(), RuntimeError>;
    async fn start(
        &self,
        spec: &ContainerSpec,
        layers: &[PathBuf],
        log: &Path,
    ) -> Result<Started, RuntimeError>;
    /// Wait for the container to end; returns at once if it has.
    async fn wait(&self, id: &str) -> Result<ShimStatus, RuntimeError>;
    async fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError>;
    /// Remove an ended container's leftovers.
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// What is known about a container now.
    fn status(&self, id: &str) -> Option<ShimStatus>;
    /// Every container on the node, running or ended, by ID.
    fn list(&self) -> Vec<String>;
    /// Pod sandboxes on the node, by pod ID.
    fn sandboxes(&self) -> Vec<String>;
    /// The namespaces of a pod's sandbox, if it has one.
    fn sandbox(&self, pod: &str) -> Option<NamespacePaths>;
    /// Run another process in a running container.
    async fn exec(&self, id: &str, spec: &ExecSpec) -> Result<ExecProcess, RuntimeError>;
    /// Attach to a running container's own stdio.
    async fn attach(&self, id: &str) -> Result<Attachment, RuntimeError>;
}

#[async_trait]
impl ContainerRuntime for OciRuntime {
    async fn create_sandbox(
        &self,
        pod: &str,
        hostname: &str,
        iso: Isolation,
    ) -> Result<NamespacePaths, RuntimeError> {
        let root = self.namespaces_root();
        let existing = sandbox::existing(&root, pod);
        if existing != NamespacePaths::default() {
            return Ok(existing);
        }
        let (pod, hostname) = (pod.to_string(), hostname.to_string());
        tokio::task::spawn_blocking(move || sandbox::create(&root, &pod, &hostname, iso))
            .await
            .map_err(|e| RuntimeError::Io {
                what: "creating the sandbox".into(),
                source: std::io::Error::other(e),
            })?
            .map_err(|e| RuntimeError::Io {
                what: "creating the sandbox".into(),
                source: std::io::Error::other(e),
            })
    }

    async fn remove_sandbox(&self, pod: &str) -> Result<(), RuntimeError> {
        sandbox::remove(&self.namespaces_root(), pod).map_err(|e| RuntimeError::Io {
            what: "removing the sandbox".into(),
            source: std::io::Error::other(e),
        })
    }

    async fn start(
        &self,
        spec: &ContainerSpec,
        layers: &[PathBuf],
        log: &Path,
    ) -> Result<Started, RuntimeError> {
        OciRuntime::start(self, spec, layers, log).await
    }

    async fn wait(&self, id: &str) -> Result<ShimStatus, RuntimeError> {
        OciRuntime::wait(self, id).await
    }

    async fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        OciRuntime::kill(self, id, signal).await
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        OciRuntime::remove(self, id).await
    }

    fn status(&self, id: &str) -> Option<ShimStatus> {
        OciRuntime::status(self, id)
    }

    fn list(&self) -> Vec<String> {
        OciRuntime::list(self)
    }

    fn sandboxes(&self) -> Vec<String> {
        std::fs::read_dir(self.namespaces_root())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }

    fn sandbox(&self, pod: &str) -> Option<NamespacePaths> {
        let root = self.namespaces_root();
        root.join(pod)
            .is_dir()
            .then(|| sandbox::existing(&root, pod))
    }

    async fn exec(&self, id: &str, spec: &ExecSpec) -> Result<ExecProcess, RuntimeError> {
        OciRuntime::exec(self, id, spec).await
    }

    async fn attach(&self, id: &str) -> Result<Attachment, RuntimeError> {
        OciRuntime::attach(self, id).await
    }
}

/// Whether container `id` is the one called `name`: the whole ID, or the container name in
/// an agent-made ID (`<pod>_<name>_<attempt>`).
fn named(id: &str, name: &str) -> bool {
    id == name || id.contains(&format!("_{name}_"))
}

/// The fake container `id`, if it is running.
fn running<'a>(st: &'a FakeState, id: &str) -> Result<&'a FakeContainer, RuntimeError> {
    let c = st
        .containers
        .get(id)
        .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
    if !matches!(*c.status.borrow(), ShimStatus::Running { .. }) {
        return Err(RuntimeError::NotRunning(id.to_string()));
    }
    Ok(c)
}

/// How a fake container ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeBehavior {
    /// Runs until killed.
    RunForever,
    /// Exits at once with this code.
    Exit(i32),
    /// Fails to start with this message.
    FailToStart(String),
}

struct FakeContainer {
    spec: ContainerSpec,
    status: watch::Sender<ShimStatus>,
    /// What it "writes", to every attached client.
    output: tokio::sync::broadcast::Sender<Frame>,
}

/// What an exec in a fake container prints and returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FakeExec {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
}

#[derive(Default)]
struct FakeState {
    execs: HashMap<String, FakeExec>,
    sandboxes: HashMap<String, (String, Isolation)>,
    containers: HashMap<String, FakeContainer>,
    next_pid: i32,
}

/// A runtime that runs nothing. Tests choose, per container name, how containers end.
#[derive(Clone, Default)]
pub struct FakeRuntime {
    state: Arc<Mutex<FakeState>>,
    behavior: Arc<Mutex<HashMap<String, FakeBehavior>>>,
}

impl FakeRuntime {
    pub fn new() -> FakeRuntime {
        FakeRuntime::default()
    }

    /// Containers with ID `name`, or `_<name>_` in their ID, behave so from now on.
    pub fn behave(&self, name: &str, b: FakeBehavior) {
        self.behavior
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), b);
    }

    /// Execs in containers with ID `name`, or `_<name>_` in their ID, end so from now on.
    pub fn on_exec(&self, name: &str, e: FakeExec) {
        self.lock().execs.insert(name.to_string(), e);
    }

    /// The spec a container was started with.
    pub fn spec_of(&self, id: &str) -> Option<ContainerSpec> {
        self.lock().containers.get(id).map(|c| c.spec.clone())
    }

    /// End a running container as if its process exited.
    pub fn exit(&self, id: &str, code: i32) {
        let st = self.lock();
        if let Some(c) = st.containers.get(id) {
            let (pid, started_at) = match &*c.status.borrow() {
                ShimStatus::Running { pid, started_at } => (*pid, started_at.clone()),
                _ => return,
            };
            c.status.send_replace(ShimStatus::Exited {
                pid,
                started_at,
                finished_at: now_rfc3339(),
                exit_code: code,
                signal: 0,
                oom_killed: false,
            });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn behavior_for(&self, id: &str) -> FakeBehavior {
        let b = self.behavior.lock().unwrap_or_else(|p| p.into_inner());
        b.iter()
            .find(|(name, _)| named(id, name))
            .map(|(_, b)| b.clone())
            .unwrap_or(FakeBehavior::RunForever)
    }
}

/// Paths a fake sandbox names for its namespaces (nothing is there: the fake runs nothing).
fn fake_namespaces(pod: &str, iso: Isolation) -> NamespacePaths {
    let at = |k: &str, on: bool| on.then(|| PathBuf::from(format!("/fake/ns/{pod}/{k}")));
    NamespacePaths {
        net: at("net", iso.net),
        ipc: at("ipc", iso.ipc),
        uts: at("uts", iso.uts),
    }
}

#[async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn create_sandbox(
        &self,
        pod: &str,
        hostname: &str,
        iso: Isolation,
    ) -> Result<NamespacePaths, RuntimeError> {
        self.lock()
            .sandboxes
            .insert(pod.to_string(), (hostname.to_string(), iso));
        Ok(fake_namespaces(pod, iso))
    }

    async fn remove_sandbox(&self, pod: &str) -> Result<(), RuntimeError> {
        self.lock().sandboxes.remove(pod);
        Ok(())
    }

    async fn start(
        &self,
        spec: &ContainerSpec,
        _: &[PathBuf],
        _: &Path,
    ) -> Result<Started, RuntimeError> {
        let behavior = self.behavior_for(&spec.id);
        if let FakeBehavior::FailToStart(msg) = &behavior {
            return Err(RuntimeError::Start(msg.clone()));
        }
        let mut st = self.lock();
        if st.containers.contains_key(&spec.id) {
            return Err(RuntimeError::Exists(spec.id.clone()));
        }
        st.next_pid += 1;
        let pid = 1000 + st.next_pid;
        let started_at = now_rfc3339();
        let status = match behavior {
            FakeBehavior::Exit(code) => ShimStatus::Exited {
                pid,
                started_at: started_at.clone(),
                finished_at: now_rfc3339(),
                exit_code: code,
                signal: 0,
                oom_killed: false,
            },
            _ => ShimStatus::Running {
                pid,
                started_at: started_at.clone(),
            },
        };
        st.containers.insert(
            spec.id.clone(),
            FakeContainer {
                spec: spec.clone(),
                status: watch::channel(status).0,
                output: tokio::sync::broadcast::channel(64).0,
            },
        );
        Ok(Started { pid, started_at })
    }

    async fn wait(&self, id: &str) -> Result<ShimStatus, RuntimeError> {
        let mut rx = {
            let st = self.lock();
            st.containers
                .get(id)
                .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?
                .status
                .subscribe()
        };
        let ended = rx
            .wait_for(|s| !matches!(s, ShimStatus::Running { .. }))
            .await
            .map_err(|_| RuntimeError::NotFound(id.to_string()))?;
        Ok(ended.clone())
    }

    async fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        let st = self.lock();
        if let Some(c) = st.containers.get(id) {
            let current = c.status.borrow().clone();
            if let ShimStatus::Running { pid, started_at } = current {
                c.status.send_replace(ShimStatus::Exited {
                    pid,
                    started_at,
                    finished_at: now_rfc3339(),
                    exit_code: 128 + signal,
                    signal,
                    oom_killed: false,
                });
            }
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.lock().containers.remove(id);
        Ok(())
    }

    fn status(&self, id: &str) -> Option<ShimStatus> {
        self.lock()
            .containers
            .get(id)
            .map(|c| c.status.borrow().clone())
    }

    fn list(&self) -> Vec<String> {
        self.lock().containers.keys().cloned().collect()
    }

    fn sandboxes(&self) -> Vec<String> {
        self.lock().sandboxes.keys().cloned().collect()
    }

    fn sandbox(&self, pod: &str) -> Option<NamespacePaths> {
        self.lock()
            .sandboxes
            .get(pod)
            .map(|(_, iso)| fake_namespaces(pod, *iso))
    }

    async fn exec(&self, id: &str, spec: &ExecSpec) -> Result<ExecProcess, RuntimeError> {
        let st = self.lock();
        running(&st, id)?;
        if spec.argv.is_empty() {
            return Err(RuntimeError::Start("no command to run".into()));
        }
        let result = st
            .execs
            .iter()
            .find(|(name, _)| named(id, name))
            .map(|(_, e)| e.clone())
            .unwrap_or_default();
        let code = result.exit_code;
        Ok(ExecProcess {
            stdin: None,
            stdout: Some(Box::pin(std::io::Cursor::new(result.stdout))),
            stderr: Some(Box::pin(tokio::io::empty())),
            resize: None,
            exit: Box::pin(async move { Ok(code) }),
        })
    }

    async fn attach(&self, id: &str) -> Result<Attachment, RuntimeError> {
        let (mut ended, stdin_once, out_tx) = {
            let st = self.lock();
            let c = running(&st, id)?;
            (c.status.subscribe(), c.spec.stdin_once, c.output.clone())
        };
        let mut out_rx = out_tx.subscribe();
        let (client, fake) = tokio::io::duplex(64 * 1024);
        let (client_r, client_w) = tokio::io::split(client);
        let (mut fake_r, mut fake_w) = tokio::io::split(fake);
        let (this, id) = (self.clone(), id.to_string());
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            use tokio::sync::broadcast::error::RecvError;
            let mut decoder = Decoder::default();
            let mut buf = vec![0u8; 16 * 1024];
            let mut reading = true;
            loop {
                tokio::select! {
                    _ = async {
                        let _ = ended.wait_for(|s| !matches!(s, ShimStatus::Running { .. })).await;
                    } => {
                        // Deliver what it wrote before it ended, then hang up.
                        while let Ok(f) = out_rx.try_recv() {
                            let _ = fake_w.write_all(&f.encode()).await;
                        }
                        return;
                    }
                    f = out_rx.recv() => match f {
                        Ok(f) => {
                            if fake_w.write_all(&f.encode()).await.is_err() {
                                return;
                            }
                        }
                        Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return,
                    },
                    n = fake_r.read(&mut buf), if reading => {
                        let Ok(n @ 1..) = n else {
                            reading = false;
                            continue;
                        };
                        decoder.push(&buf[..n]);
                        while let Ok(Some(f)) = decoder.next_frame() {
                            match f {
                                // Like `cat`: what comes in goes out.
                                Frame::Stdin(b) => {
                                    let _ = out_tx.send(Frame::Stdout(b));
                                }
                                // And the end of its input ends it.
                                Frame::CloseStdin if stdin_once => this.exit(&id, 0),
                                _ => {}
                            }
                        }
                    }
                }
            }
        });
        Ok(Attachment {
            input: AttachInput::new(Box::pin(client_w)),
            output: AttachOutput::new(Box::pin(client_r)),
        })
    }
}

//! Containers through an OCI runtime (libcontainer built in, or a runc-compatible binary),
//! each watched by its own shim.
//!
//! ```text
//! <run>/containers/<id>/      bundle (config.json, rootfs/), shim.pid, status.json
//! <run>/youki/, <run>/runc/   the OCI runtime's own state (built-in, or the binary's)
//! <run>/ns/<pod>/             pinned pod namespaces (see sandbox)
//! <disk>/<id>/{upper,work}    the container's writable layer, on disk
//! ```
//! `<run>` is a tmpfs (containers do not survive a reboot, and neither does this); everything
//! needed to find a running container again after an agent restart is in it.

use std::fs;
use std::io::{self, BufRead};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tokio::io::unix::AsyncFd;
use tracing::{debug, warn};

use super::mount::{self, MountError};
use super::shim::{ShimStatus, StartResult, read_status};
use super::spec::{ContainerSpec, SpecError, runtime_spec};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("container {0} not found")]
    NotFound(String),
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("the OCI runtime could not start the container: {0}")]
    Start(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Io { what, source }
}

#[derive(Clone, Debug)]
pub struct OciConfig {
    /// A tmpfs for state (`/run/berth`).
    pub run_dir: PathBuf,
    /// Where writable layers live (on disk).
    pub rw_dir: PathBuf,
    /// The berth binary, re-executed as the shim.
    pub shim: PathBuf,
    pub engine: Engine,
    pub log_max_bytes: u64,
}

/// Which OCI runtime runs containers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Engine {
    /// youki's libcontainer, in berth's own single-threaded processes (the shim for the
    /// container, `berth oci-exec` for execs).
    Builtin,
    /// A runtime binary with runc's command line.
    Binary(PathBuf),
}

/// What a started container reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    pub pid: i32,
    pub started_at: String,
}

pub struct OciRuntime {
    cfg: OciConfig,
}

impl OciRuntime {
    pub fn new(cfg: OciConfig) -> Result<OciRuntime, RuntimeError> {
        for d in [cfg.run_dir.join("containers"), cfg.rw_dir.clone()] {
            fs::create_dir_all(&d).map_err(io_err(format!("creating {}", d.display())))?;
        }
        Ok(OciRuntime { cfg })
    }

    pub fn config(&self) -> &OciConfig {
        &self.cfg
    }

    pub fn namespaces_root(&self) -> PathBuf {
        self.cfg.run_dir.join("ns")
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.cfg.run_dir.join("containers").join(id)
    }

    /// The OCI runtime's state root.
    fn state(&self) -> PathBuf {
        match self.cfg.engine {
            Engine::Builtin => self.cfg.run_dir.join("youki"),
            Engine::Binary(_) => self.cfg.run_dir.join("runc"),
        }
    }

    fn runc(&self, binary: &Path) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(binary);
        c.arg("--root").arg(self.state());
        c
    }

    /// Mount the root filesystem, write the bundle and start the container under a new shim;
    /// returns once it runs (or failed to).
    pub async fn start(
        &self,
        spec: &ContainerSpec,
        layers: &[PathBuf],
        log: &Path,
    ) -> Result<Started, RuntimeError> {
        let dir = self.dir(&spec.id);
        if dir.exists() {
            return Err(RuntimeError::Exists(spec.id.clone()));
        }
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let result = self.launch(spec, layers, log, &dir).await;
        if result.is_err() {
            let _ = self.remove(&spec.id).await;
        }
        result
    }

    async fn launch(
        &self,
        spec: &ContainerSpec,
        layers: &[PathBuf],
        log: &Path,
        dir: &Path,
    ) -> Result<Started, RuntimeError> {
        let rootfs = dir.join("rootfs");
        mount::overlay(layers, &self.cfg.rw_dir.join(&spec.id), &rootfs)?;
        let config = runtime_spec(spec, "rootfs")?;
        let bytes = serde_json::to_vec_pretty(&config).map_err(|e| RuntimeError::Io {
            what: "encoding config.json".into(),
            source: io::Error::other(e),
        })?;
        // The environment may come from Secrets: the bundle's config is root's alone.
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(dir.join("config.json"))
                .and_then(|mut f| f.write_all(&bytes))
                .map_err(io_err("writing config.json"))?;
        }
        let (sync_r, sync_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| io_err("creating a pipe")(e.into()))?;
        let mut cmd = Command::new(&self.cfg.shim);
        cmd.arg("shim")
            .arg("--id")
            .arg(&spec.id)
            .arg("--bundle")
            .arg(dir)
            .arg("--log-file")
            .arg(log)
            .arg("--state")
            .arg(self.state())
            .arg("--cgroup")
            .arg(&spec.cgroup)
            .arg("--log-max-bytes")
            .arg(self.cfg.log_max_bytes.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                fs::File::create(dir.join("shim.log"))
                    .map_err(io_err("creating the shim's log"))?,
            );
        if let Engine::Binary(b) = &self.cfg.engine {
            cmd.arg("--runc").arg(b);
        }
        for (on, flag) in [
            (spec.stdin, "--stdin"),
            (spec.stdin_once, "--stdin-once"),
            (spec.tty, "--tty"),
        ] {
            if on {
                cmd.arg(flag);
            }
        }
        let raw = sync_w.as_raw_fd();
        // SAFETY: between fork and exec only dup2 runs, which is async-signal-safe; it puts the
        // sync pipe at fd 3 (without close-on-exec) for the shim.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(raw, 3) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // A shim that started its container is reaped in `wait` (while it is our child; after
        // an agent restart, init reaps it). One that failed is reaped here.
        let child = cmd.spawn().map_err(io_err("starting the shim"))?;
        drop(sync_w);
        let line = tokio::task::spawn_blocking(move || {
            let mut r = io::BufReader::new(fs::File::from(sync_r));
            let mut line = String::new();
            r.read_line(&mut line).map(|_| line)
        })
        .await
        .map_err(|e| io_err("waiting for the shim")(io::Error::other(e)))?
        .map_err(io_err("reading from the shim"));
        let parsed = line.map(|l| serde_json::from_str::<StartResult>(l.trim()));
        if !matches!(&parsed, Ok(Ok(r)) if r.ok) {
            reap(child).await;
        }
        let result: StartResult = parsed?.map_err(|_| {
            let why = match read_status(dir) {
                Some(ShimStatus::Failed { error, .. }) => error,
                _ => {
                    let said = fs::read_to_string(dir.join("shim.log")).unwrap_or_default();
                    format!(
                        "the shim exited before starting the container: {}",
                        said.trim()
                    )
                }
            };
            RuntimeError::Start(why)
        })?;
        if !result.ok {
            return Err(RuntimeError::Start(result.error));
        }
        let started_at = match read_status(dir) {
            Some(ShimStatus::Running { started_at, .. }) => started_at,
            _ => super::shim::now_rfc3339(),
        };
        debug!(id = %spec.id, pid = result.pid, "container started");
        Ok(Started {
            pid: result.pid,
            started_at,
        })
    }

    /// What the container's shim last recorded.
    pub fn status(&self, id: &str) -> Option<ShimStatus> {
        read_status(&self.dir(id))
    }

    fn shim_pid(&self, id: &str) -> Option<i32> {
        fs::read_to_string(self.dir(id).join("shim.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Wait until the container has ended, then return how.
    pub async fn wait(&self, id: &str) -> Result<ShimStatus, RuntimeError> {
        if let Some(pid) = self.shim_pid(id)
            && let Some(fd) = pidfd(pid)
        {
            // SAFETY: `fd` is an owned, open pidfd that lives as long as the AsyncFd.
            let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                .map_err(|e| io_err("watching the shim")(e.into()))?;
            // Readable once the process has exited.
            let _ = fd.readable().await.map_err(io_err("watching the shim"))?;
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
        match self.status(id) {
            Some(s @ (ShimStatus::Exited { .. } | ShimStatus::Failed { .. })) => Ok(s),
            Some(ShimStatus::Running { pid, started_at }) => {
                // The shim died without recording the end (killed): the container is gone with
                // it only if its init is.
                warn!(id, "the container's shim is gone");
                Ok(ShimStatus::Exited {
                    pid,
                    started_at,
                    finished_at: super::shim::now_rfc3339(),
                    exit_code: 255,
                    signal: 0,
                    oom_killed: false,
                })
            }
            None => Err(RuntimeError::NotFound(id.to_string())),
        }
    }

    /// Send a signal to the container's init.
    pub async fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        let ok = match &self.cfg.engine {
            Engine::Builtin => {
                let (id, state) = (id.to_string(), self.state());
                tokio::task::spawn_blocking(move || super::youki::kill(&id, &state, signal))
                    .await
                    .map_err(|e| io_err("signalling the container")(io::Error::other(e)))?
                    .is_ok()
            }
            Engine::Binary(b) => self
                .runc(b)
                .arg("kill")
                .arg(id)
                .arg(signal.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .map_err(io_err("running the OCI runtime"))?
                .success(),
        };
        if !ok {
            // Already gone is not an error for someone who wants it gone.
            debug!(id, signal, "kill found no running container");
        }
        Ok(())
    }

    /// Remove what is left of an ended container: its mount, bundle and writable layer.
    pub async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let dir = self.dir(id);
        mount::unmount(&dir.join("rootfs"))?;
        match &self.cfg.engine {
            Engine::Builtin => {
                let (id, state) = (id.to_string(), self.state());
                let _ =
                    tokio::task::spawn_blocking(move || super::youki::delete(&id, &state, true))
                        .await;
            }
            Engine::Binary(b) => {
                let _ = self
                    .runc(b)
                    .arg("delete")
                    .arg("--force")
                    .arg(id)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await;
            }
        }
        for d in [dir, self.cfg.rw_dir.join(id)] {
            match fs::remove_dir_all(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format!("removing {}", d.display()))(e)),
            }
        }
        Ok(())
    }

    /// Containers this node has (running or ended but not removed), by ID.
    pub fn list(&self) -> Vec<String> {
        fs::read_dir(self.cfg.run_dir.join("containers"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }

    fn ensure_running(&self, id: &str) -> Result<(), RuntimeError> {
        match self.status(id) {
            Some(ShimStatus::Running { .. }) => Ok(()),
            Some(_) => Err(RuntimeError::NotRunning(id.to_string())),
            None => Err(RuntimeError::NotFound(id.to_string())),
        }
    }

    /// Attach to a running container's stdio.
    pub async fn attach(&self, id: &str) -> Result<super::attach::Attachment, RuntimeError> {
        self.ensure_running(id)?;
        super::attach::connect(&self.dir(id))
            .await
            .map_err(io_err(format!("attaching to container {id}")))
    }

    /// Run another process in a running container.
    pub async fn exec(
        &self,
        id: &str,
        spec: &super::exec::ExecSpec,
    ) -> Result<super::exec::ExecProcess, RuntimeError> {
        self.ensure_running(id)?;
        let how = match &self.cfg.engine {
            Engine::Builtin => super::exec::Via::Helper {
                berth: &self.cfg.shim,
                sockets: &self.cfg.run_dir,
            },
            Engine::Binary(b) => super::exec::Via::Runc(b),
        };
        super::exec::exec(how, &self.state(), id, &self.dir(id), spec).await
    }

    /// The pid of a running container's init.
    pub fn init_pid(&self, id: &str) -> Option<i32> {
        match self.status(id)? {
            ShimStatus::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }
}

/// A pid file descriptor (readable once the process exits), if the process exists.
/// Wait for a shim that gave up (it exits right after saying so); one that lingers is killed,
/// so no failed start leaves a zombie or a stray process behind.
async fn reap(mut child: std::process::Child) {
    let waited = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if std::time::Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
    });
    let _ = waited.await;
}

fn pidfd(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall returned a new, owned descriptor.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

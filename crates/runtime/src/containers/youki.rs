//! The built-in OCI runtime: youki's `libcontainer`, called in-process. Creating a container
//! or an exec forks with a raw `clone3`, so those two run only in single-threaded processes of
//! ours (the shim, and the `berth oci-exec` helper); kill and delete do not fork and may run
//! anywhere.

use std::os::fd::OwnedFd;
use std::path::Path;

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::{LinuxSeccomp, Spec};

/// A new container's stdio: its stdin (`None` for /dev/null), stdout and stderr, or, for a
/// container with a terminal, the console socket that receives the terminal's master.
pub struct Stdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub console: Option<std::path::PathBuf>,
}

/// Create the container of `bundle` (its init waits to be started) with the given stdio;
/// returns the init's pid. The init is a child of the caller.
pub fn create(id: &str, bundle: &Path, state: &Path, stdio: Stdio) -> Result<i32, String> {
    std::fs::create_dir_all(state).map_err(|e| format!("creating {}: {e}", state.display()))?;
    let stdin = match stdio.stdin {
        Some(fd) => fd,
        None => OwnedFd::from(std::fs::File::open("/dev/null").map_err(|e| e.to_string())?),
    };
    let container = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_executor(DefaultExecutor {})
        .with_root_path(state)
        .map_err(|e| e.to_string())?
        .with_console_socket(stdio.console)
        .with_stdin(stdin)
        .with_stdout(stdio.stdout)
        .with_stderr(stdio.stderr)
        .validate_id()
        .map_err(|e| e.to_string())?
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| e.to_string())?;
    container
        .pid()
        .map(|p| p.as_raw())
        .ok_or_else(|| "the container has no init process".to_string())
}

fn load(id: &str, state: &Path) -> Result<Container, String> {
    Container::load(state.join(id)).map_err(|e| e.to_string())
}

/// Let a created container's init run its process.
pub fn start(id: &str, state: &Path) -> Result<(), String> {
    load(id, state)?.start().map_err(|e| e.to_string())
}

/// Signal the container's init.
pub fn kill(id: &str, state: &Path, signal: i32) -> Result<(), String> {
    let sig = Signal::try_from(signal).map_err(|e| format!("{e:?}"))?;
    if !state.join(id).exists() {
        // Its shim has deleted it: it has ended.
        return Err(format!("container {id} does not exist"));
    }
    load(id, state)?.kill(sig, false).map_err(|e| e.to_string())
}

/// Remove the container's state and cgroups (killing it first if `force`).
pub fn delete(id: &str, state: &Path, force: bool) -> Result<(), String> {
    if !state.join(id).exists() {
        return Ok(());
    }
    load(id, state)?.delete(force).map_err(|e| e.to_string())
}

/// Runs an exec'd process under its container's seccomp profile. libcontainer's tenant
/// builder keeps only the namespaces, cgroup and personality of the container's `linux`
/// section, so without this `kubectl exec` would run unconfined; runc applies the container's
/// profile, and so does this, installed just before the process's program is executed.
#[derive(Clone)]
struct UnderSeccomp(Option<LinuxSeccomp>);

impl Executor for UnderSeccomp {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        if let Some(profile) = &self.0 {
            // Past this point the process has its own user and capabilities; without
            // CAP_SYS_ADMIN the kernel takes a filter only from a process that cannot gain
            // privileges, so one that could is made not to (setuid programs run in an exec
            // do not raise it).
            let installed = libcontainer::seccomp::initialize_seccomp(profile).or_else(|_| {
                nix::sys::prctl::set_no_new_privs()
                    .map_err(|e| ExecutorError::Other(format!("setting no_new_privs: {e}")))?;
                libcontainer::seccomp::initialize_seccomp(profile)
                    .map_err(|e| ExecutorError::Other(format!("installing seccomp: {e}")))
            })?;
            if installed.is_some() {
                return Err(ExecutorError::Other(
                    "seccomp profiles that notify a listener are not supported for exec".into(),
                ));
            }
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

/// The seccomp profile in the container's own configuration.
fn container_seccomp(id: &str, state: &Path) -> Result<Option<LinuxSeccomp>, String> {
    let container = load(id, state)?;
    let config = container.bundle().join("config.json");
    let spec = Spec::load(&config).map_err(|e| format!("reading {}: {e}", config.display()))?;
    Ok(spec.linux().as_ref().and_then(|l| l.seccomp().clone()))
}

/// Start `process` (an OCI process JSON) in the running container, under the container's
/// seccomp profile; with a console socket the process gets a terminal whose master is sent
/// there. Returns the process's pid, a child of the caller.
pub fn exec(
    id: &str,
    state: &Path,
    process: &Path,
    console_socket: Option<&Path>,
) -> Result<i32, String> {
    let seccomp = container_seccomp(id, state)?;
    let pid = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_executor(UnderSeccomp(seccomp))
        .with_root_path(state)
        .map_err(|e| e.to_string())?
        .with_console_socket(console_socket)
        .as_tenant()
        .with_process(Some(process))
        .with_detach(console_socket.is_some())
        .build()
        .map_err(|e| e.to_string())?;
    Ok(pid.as_raw())
}

/// `berth oci-exec`: run `exec` and wait for the process; never returns. The exit code is
/// the process's (128 + signal if it was killed), or 255 if it could not start.
pub fn exec_main(id: &str, state: &Path, process: &Path, console_socket: Option<&Path>) -> ! {
    // The process inherits our signal dispositions: start it from the defaults.
    super::shim::default_signals();
    let pid = match exec(id, state, process, console_socket) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("exec failed: {e}");
            std::process::exit(255);
        }
    };
    let code = loop {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => break c,
            Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => break 128 + s as i32,
            Ok(_) => continue,
            Err(nix::Error::EINTR) => continue,
            Err(_) => break 255,
        }
    };
    std::process::exit(code)
}

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

/// Start `process` (an OCI process JSON) in the running container; with a console socket the
/// process gets a terminal whose master is sent there. Returns the process's pid, a child of
/// the caller.
pub fn exec(
    id: &str,
    state: &Path,
    process: &Path,
    console_socket: Option<&Path>,
) -> Result<i32, String> {
    let pid = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_executor(DefaultExecutor {})
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

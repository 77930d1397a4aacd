//! Running another process in a running container (`kubectl exec`, exec probes): the OCI
//! runtime's `exec` with the container's own process settings (user, environment, working
//! directory, capabilities) and new arguments, over pipes or a terminal.
//!
//! With the built-in runtime, `berth oci-exec` (single-threaded, as libcontainer's fork wants)
//! starts the process and waits for it; with a terminal, the process gets a pty made inside
//! the container, whose master comes back over a console socket, so resizing the master
//! reaches the process directly.
//!
//! With runc, the runtime wants a terminal of its own on the caller's side: it gets the slave
//! end of a pty that the agent allocates (as its controlling terminal, so a window-size change
//! on the master reaches it as SIGWINCH and it resizes the container's console).

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::pin::Pin;
use std::process::Stdio;
use std::task::{Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::oci::RuntimeError;

/// What to run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    pub tty: bool,
    /// Whether the caller will write to stdin (otherwise it reads as empty).
    pub stdin: bool,
}

pub type Reader = Pin<Box<dyn AsyncRead + Send>>;
pub type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// A running exec: its streams, a way to resize its terminal, and its exit code.
pub struct ExecProcess {
    pub stdin: Option<Writer>,
    pub stdout: Option<Reader>,
    /// Absent with a terminal (everything comes through `stdout`).
    pub stderr: Option<Reader>,
    pub resize: Option<Box<dyn Fn(u16, u16) + Send + Sync>>,
    /// Resolves to the exit code (128 + signal for a killed process).
    pub exit: Pin<Box<dyn Future<Output = Result<i32, RuntimeError>> + Send>>,
}

fn io_err(what: &str) -> impl FnOnce(io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        what: what.to_string(),
        source,
    }
}

/// The container's process section of `config.json` with new arguments.
fn process_json(bundle: &Path, spec: &ExecSpec) -> Result<serde_json::Value, RuntimeError> {
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(bundle.join("config.json"))
            .map_err(io_err("reading the container's config.json"))?,
    )
    .map_err(|e| io_err("reading the container's config.json")(io::Error::other(e)))?;
    let mut p = config["process"].clone();
    p["args"] = serde_json::json!(spec.argv);
    p["terminal"] = serde_json::json!(spec.tty);
    if let Some(m) = p.as_object_mut() {
        m.remove("consoleSize");
    }
    Ok(p)
}

/// How an exec is started.
#[derive(Clone, Copy, Debug)]
pub enum Via<'a> {
    /// `berth oci-exec` (the built-in runtime); console sockets go in `sockets`.
    Helper { berth: &'a Path, sockets: &'a Path },
    /// `runc exec`.
    Runc(&'a Path),
}

/// Start `spec` in the container whose bundle is `bundle`; `state` is the runtime's root.
pub async fn exec(
    via: Via<'_>,
    state: &Path,
    id: &str,
    bundle: &Path,
    spec: &ExecSpec,
) -> Result<ExecProcess, RuntimeError> {
    if spec.argv.is_empty() {
        return Err(RuntimeError::Start("no command to run".into()));
    }
    let process = process_json(bundle, spec)?;
    let file = tempfile::Builder::new()
        .prefix("exec-")
        .suffix(".json")
        .tempfile_in(bundle)
        .map_err(io_err("writing the exec process"))?;
    std::fs::write(file.path(), process.to_string()).map_err(io_err("writing the exec process"))?;
    match via {
        Via::Runc(runc) => {
            let mut cmd = tokio::process::Command::new(runc);
            cmd.arg("--root")
                .arg(state)
                .arg("exec")
                .arg("--process")
                .arg(file.path());
            if spec.tty {
                cmd.arg("--tty");
            }
            cmd.arg(id).kill_on_drop(true);
            // SAFETY: default_signals makes only async-signal-safe calls. runc hands its own
            // signal state to the process, so it starts from the defaults.
            unsafe {
                cmd.pre_exec(|| {
                    super::shim::default_signals();
                    Ok(())
                });
            }
            if spec.tty {
                exec_tty(cmd, file).await
            } else {
                exec_pipes(cmd, file, spec.stdin).await
            }
        }
        Via::Helper { berth, sockets } => {
            let mut cmd = tokio::process::Command::new(berth);
            cmd.arg("oci-exec")
                .arg("--root")
                .arg(state)
                .arg("--process")
                .arg(file.path())
                .kill_on_drop(true);
            if spec.tty {
                exec_console(cmd, file, sockets, id).await
            } else {
                cmd.arg("--id").arg(id);
                exec_pipes(cmd, file, spec.stdin).await
            }
        }
    }
}

/// An exec whose process gets a terminal made in the container; the master arrives over a
/// console socket.
async fn exec_console(
    mut cmd: tokio::process::Command,
    file: tempfile::NamedTempFile,
    sockets: &Path,
    id: &str,
) -> Result<ExecProcess, RuntimeError> {
    // Short: a socket path must fit in 108 bytes.
    let path = sockets.join(format!("tty-{:08x}.sock", fastrand::u32(..)));
    let listener =
        tokio::net::UnixListener::bind(&path).map_err(io_err("creating a console socket"))?;
    let _cleanup = Unlink(path.clone());
    cmd.arg("--console-socket").arg(&path).arg("--id").arg(id);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(io_err("starting the exec helper"))?;
    let accepted = tokio::select! {
        a = listener.accept() => a.map_err(io_err("waiting for the terminal"))?.0,
        _ = child.wait() => {
            let mut why = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut why).await;
            }
            return Err(RuntimeError::Start(why.trim().to_string()));
        }
    };
    let stream = accepted
        .into_std()
        .map_err(io_err("waiting for the terminal"))?;
    stream
        .set_nonblocking(false)
        .map_err(io_err("waiting for the terminal"))?;
    let master = tokio::task::spawn_blocking(move || receive_fd(&stream))
        .await
        .map_err(|e| io_err("receiving the terminal")(io::Error::other(e)))?
        .map_err(io_err("receiving the terminal"))?;
    let (stdin, stdout, resize) = from_master(master)?;
    let exit = async move {
        let status = child.wait().await.map_err(io_err("waiting for the exec"))?;
        drop(file);
        Ok(exit_code(status))
    };
    Ok(ExecProcess {
        stdin: Some(stdin),
        stdout: Some(stdout),
        stderr: None,
        resize: Some(resize),
        exit: Box::pin(exit),
    })
}

struct Unlink(std::path::PathBuf);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The one file descriptor sent over `s` (SCM_RIGHTS).
pub(crate) fn receive_fd(s: &std::os::unix::net::UnixStream) -> io::Result<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::FromRawFd;
    let mut buf = [0u8; 4096];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        s.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(fd) = fds.first()
        {
            // SAFETY: the kernel just installed this descriptor for us; nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
        }
    }
    Err(io::Error::other("no terminal was sent"))
}

type Resize = Box<dyn Fn(u16, u16) + Send + Sync>;

/// A pty master as the exec's stdin, stdout and resize handle.
fn from_master(master: OwnedFd) -> Result<(Writer, Reader, Resize), RuntimeError> {
    nix::fcntl::fcntl(
        &master,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(|e| io_err("setting up the terminal")(e.into()))?;
    let writer = master
        .try_clone()
        .map_err(io_err("setting up the terminal"))?;
    let sizer = master
        .try_clone()
        .map_err(io_err("setting up the terminal"))?;
    let reader = Pty::new(master).map_err(io_err("setting up the terminal"))?;
    let writer = Pty::new(writer).map_err(io_err("setting up the terminal"))?;
    let resize = move |width: u16, height: u16| {
        let ws = libc::winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which outlives the call.
        unsafe { libc::ioctl(sizer.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    };
    Ok((Box::pin(writer), Box::pin(reader), Box::new(resize)))
}

async fn exec_pipes(
    mut cmd: tokio::process::Command,
    file: tempfile::NamedTempFile,
    stdin: bool,
) -> Result<ExecProcess, RuntimeError> {
    cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(io_err("running the OCI runtime"))?;
    let stdin = child.stdin.take().map(|w| Box::pin(w) as Writer);
    let stdout = child.stdout.take().map(|r| Box::pin(r) as Reader);
    let stderr = child.stderr.take().map(|r| Box::pin(r) as Reader);
    let exit = async move {
        let status = child.wait().await.map_err(io_err("waiting for the exec"))?;
        drop(file);
        Ok(exit_code(status))
    };
    Ok(ExecProcess {
        stdin,
        stdout,
        stderr,
        resize: None,
        exit: Box::pin(exit),
    })
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

async fn exec_tty(
    mut cmd: tokio::process::Command,
    file: tempfile::NamedTempFile,
) -> Result<ExecProcess, RuntimeError> {
    let pty =
        nix::pty::openpty(None, None).map_err(|e| io_err("allocating a terminal")(e.into()))?;
    let slave = pty.slave;
    cmd.stdin(Stdio::from(
        slave.try_clone().map_err(io_err("allocating a terminal"))?,
    ))
    .stdout(Stdio::from(
        slave.try_clone().map_err(io_err("allocating a terminal"))?,
    ))
    .stderr(Stdio::from(slave));
    // SAFETY: between fork and exec only setsid and ioctl run, both async-signal-safe; they
    // make the pty (now fd 0) the runtime's controlling terminal.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(io_err("running the OCI runtime"))?;
    drop(cmd);
    let (writer, reader, resize) = from_master(pty.master)?;
    let exit = async move {
        let status = child.wait().await.map_err(io_err("waiting for the exec"))?;
        drop(file);
        Ok(exit_code(status))
    };
    Ok(ExecProcess {
        stdin: Some(writer),
        stdout: Some(reader),
        stderr: None,
        resize: Some(resize),
        exit: Box::pin(exit),
    })
}

/// One end of a pty master as an async stream. Reading returns end-of-file once the other
/// side has closed (EIO from the kernel).
pub struct Pty {
    fd: AsyncFd<OwnedFd>,
}

impl Pty {
    pub fn new(fd: OwnedFd) -> io::Result<Pty> {
        // SAFETY: the AsyncFd owns `fd`, so it stays open for as long as it is registered.
        Ok(Pty {
            fd: unsafe { AsyncFd::register(fd) }?,
        })
    }
}

impl AsyncRead for Pty {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = match self.fd.poll_read_ready(cx) {
                Poll::Ready(g) => g?,
                Poll::Pending => return Poll::Pending,
            };
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Pty {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = match self.fd.poll_write_ready(cx) {
                Poll::Ready(g) => g?,
                Poll::Pending => return Poll::Pending,
            };
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

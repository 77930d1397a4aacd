//! The per-container shim: berth re-executed as `berth shim`, single-threaded and without an
//! async runtime. It detaches from the agent (new session, child subreaper), creates and
//! starts the container through the OCI runtime with pipes as its stdio (or a terminal), copies
//! its output into a CRI-format log and to attached clients, waits for the container's init, tells OOM kills apart, removes
//! the container from the OCI runtime and records how it ended. Because it outlives the agent,
//! containers keep running (and logging) across agent restarts.
//!
//! Files in the container's directory:
//! - `config.json`, `rootfs/`: the bundle, prepared by the agent;
//! - `shim.pid`: this process;
//! - `status.json`: `running` with the init's pid, then `exited` with the exit code;
//! - `attach.sock`: where clients attach to the container's stdio while it runs (see
//!   `attach`); `console.sock` briefly, for a container with a terminal.
//!
//! The agent learns the start result on file descriptor 3, as one JSON line.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::attach::{Frame, Hub, Slot};

/// The largest log line kept whole; longer lines are split and marked partial.
const MAX_LINE: usize = 16 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum ShimStatus {
    #[serde(rename = "running")]
    Running { pid: i32, started_at: String },
    #[serde(rename = "exited")]
    Exited {
        pid: i32,
        started_at: String,
        finished_at: String,
        exit_code: i32,
        signal: i32,
        oom_killed: bool,
    },
    /// The container could not be created or started.
    #[serde(rename = "failed")]
    Failed { finished_at: String, error: String },
}

/// What the shim reports on its sync pipe once the container is running (or could not be).
#[derive(Debug, Serialize, Deserialize)]
pub struct StartResult {
    pub ok: bool,
    #[serde(default)]
    pub pid: i32,
    #[serde(default)]
    pub error: String,
}

#[derive(Clone, Debug)]
pub struct ShimArgs {
    pub id: String,
    pub bundle: PathBuf,
    pub log: PathBuf,
    /// The OCI runtime binary; `None` for the built-in one (libcontainer, in this process).
    pub runc: Option<PathBuf>,
    /// The OCI runtime's state root.
    pub state: PathBuf,
    /// Rotate the log beyond this size.
    pub log_max_bytes: u64,
    /// cgroup path of the container, to read its OOM count.
    pub cgroup: String,
    /// Keep the container's stdin open for attached clients.
    pub stdin: bool,
    /// Close it after the first attach session that used it.
    pub stdin_once: bool,
    /// The container has a terminal (its config asks for one).
    pub tty: bool,
}

pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn now_nanos() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.9fZ")
        .to_string()
}

pub fn write_status(bundle: &Path, status: &ShimStatus) -> io::Result<()> {
    let tmp = bundle.join("status.json.tmp");
    let bytes = serde_json::to_vec(status).map_err(io::Error::other)?;
    let mut f = File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    fs::rename(tmp, bundle.join("status.json"))
}

pub fn read_status(bundle: &Path) -> Option<ShimStatus> {
    serde_json::from_slice(&fs::read(bundle.join("status.json")).ok()?).ok()
}

fn runc(args: &ShimArgs, binary: &Path) -> Command {
    let mut c = Command::new(binary);
    c.arg("--root")
        .arg(&args.state)
        .arg("--log")
        .arg(args.bundle.join("runc.log"))
        .arg("--log-format")
        .arg("json");
    c
}

/// The last error the OCI runtime logged, for messages.
fn runtime_error(bundle: &Path) -> String {
    let log = fs::read_to_string(bundle.join("runc.log")).unwrap_or_default();
    log.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "error")
        .and_then(|v| v["msg"].as_str().map(str::to_string))
        .unwrap_or_else(|| "the OCI runtime failed without saying why".into())
}

/// Run the shim. Never returns: the process exits when the container has ended.
pub fn main(args: ShimArgs) -> ! {
    let code = match run(&args) {
        Ok(()) => 0,
        Err(e) => {
            // A failed start has recorded itself already (before telling the agent, which then
            // removes the bundle): write nothing more into a directory being removed.
            if !matches!(read_status(&args.bundle), Some(ShimStatus::Failed { .. })) {
                let _ = write_status(&args.bundle, &failed(e.to_string()));
            }
            1
        }
    };
    std::process::exit(code)
}

fn failed(error: String) -> ShimStatus {
    ShimStatus::Failed {
        finished_at: now_rfc3339(),
        error,
    }
}

fn report(sync: &mut Option<File>, result: &StartResult) {
    if let Some(mut f) = sync.take() {
        let mut line = serde_json::to_vec(result).unwrap_or_default();
        line.push(b'\n');
        let _ = f.write_all(&line);
    }
}

/// Put every signal's action back to the default and unblock them all. A container's first
/// process inherits these from its creator, and whoever started berth (a shell's background
/// job, a service manager, Rust's own runtime for SIGPIPE) may have ignored or blocked some.
/// Only async-signal-safe calls: also fit for between fork and exec.
pub fn default_signals() {
    /// The kernel's `struct sigaction` (glibc's wrapper refuses the signals it keeps for
    /// itself, which an ignoring parent leaves ignored too).
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: libc::c_ulong,
        restorer: usize,
        mask: u64,
    }
    let dfl = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: rt_sigaction with SIG_DFL and a valid struct, and sigprocmask with an empty set,
    // only change this process's signal state.
    unsafe {
        for sig in 1..=libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    &dfl as *const KernelSigaction,
                    std::ptr::null_mut::<KernelSigaction>(),
                    std::mem::size_of::<u64>(),
                );
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

fn run(args: &ShimArgs) -> io::Result<()> {
    nix::unistd::setsid().map_err(io::Error::from)?;
    // The container (created below, a fork of this process or of the OCI runtime it runs)
    // starts from default signal actions; the shim itself then ignores SIGPIPE again, as it
    // writes to clients and pipes that may have gone.
    default_signals();
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer argument only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd 3 is the sync pipe the agent handed us, if it is open at all.
    let mut sync =
        (unsafe { libc::fcntl(3, libc::F_GETFD) } >= 0).then(|| unsafe { File::from_raw_fd(3) });
    fs::write(args.bundle.join("shim.pid"), std::process::id().to_string())?;
    // Sockets are made here under short relative names (an address holds 108 bytes).
    std::env::set_current_dir(&args.bundle)?;

    let (out_r, out_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let (in_r, in_w) = if args.stdin && !args.tty {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        (Some(r), Some(w))
    } else {
        (None, None)
    };
    let console = if args.tty {
        let _ = fs::remove_file(CONSOLE_SOCKET);
        Some(UnixListener::bind(CONSOLE_SOCKET)?)
    } else {
        None
    };
    // On a failed start, clean up and record the failure first, and only then tell the agent:
    // it removes the bundle as soon as it hears, so the shim must be done writing into it.
    let fail = |sync: &mut Option<File>, pid: i32, error: String| {
        remove(args);
        let _ = write_status(&args.bundle, &failed(error.clone()));
        report(
            sync,
            &StartResult {
                ok: false,
                pid,
                error: error.clone(),
            },
        );
        io::Error::other(error)
    };
    let pid = match create(args, in_r, out_w, err_w, console.is_some()) {
        Ok(pid) => pid,
        Err(e) => return Err(fail(&mut sync, 0, e)),
    };
    // SAFETY: ignoring SIGPIPE only changes this process's signal state.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // With a terminal, the runtime has sent its master over the console socket by now.
    let master = match console.map(|l| receive_master(&l)) {
        None => None,
        Some(Ok(m)) => Some(m),
        Some(Err(e)) => {
            return Err(fail(
                &mut sync,
                pid,
                format!("receiving the container's terminal: {e}"),
            ));
        }
    };
    let _ = fs::remove_file(CONSOLE_SOCKET);
    let hub = (|| {
        let (stdin, tty) = match &master {
            Some(m) => (
                args.stdin.then(|| m.try_clone()).transpose()?,
                Some(m.try_clone()?),
            ),
            None => (in_w, None),
        };
        Hub::new(Path::new(ATTACH_SOCKET), stdin, args.stdin_once, tty)
    })();
    let mut hub = match hub {
        Ok(h) => h,
        Err(e) => {
            return Err(fail(&mut sync, pid, format!("setting up attach: {e}")));
        }
    };
    // Block SIGCHLD before the container runs, so no exit goes unnoticed (the init is parked
    // until started; the pump reaps once before it first waits, in case it died meanwhile).
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block().map_err(io::Error::from)?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC).map_err(io::Error::from)?;
    if let Err(e) = start(args) {
        return Err(fail(&mut sync, pid, e));
    }
    let started_at = now_rfc3339();
    write_status(
        &args.bundle,
        &ShimStatus::Running {
            pid,
            started_at: started_at.clone(),
        },
    )?;
    report(
        &mut sync,
        &StartResult {
            ok: true,
            pid,
            error: String::new(),
        },
    );

    let mut log = Log::open(&args.log, args.log_max_bytes)?;
    let streams = match master {
        // Everything the terminal shows is the container's stdout; the pipes carry nothing.
        Some(m) => [Some(Stream::new(m, "stdout")), None],
        None => [
            Some(Stream::new(out_r, "stdout")),
            Some(Stream::new(err_r, "stderr")),
        ],
    };
    let status = pump(pid, streams, &sigfd, &mut log, &mut hub)?;
    hub.close(Path::new(ATTACH_SOCKET));
    let oom_killed = oom_kills(&args.cgroup) > 0;
    remove(args);
    let (exit_code, signal) = match status {
        WaitStatus::Exited(_, c) => (c, 0),
        WaitStatus::Signaled(_, s, _) => (128 + s as i32, s as i32),
        _ => (255, 0),
    };
    write_status(
        &args.bundle,
        &ShimStatus::Exited {
            pid,
            started_at,
            finished_at: now_rfc3339(),
            exit_code,
            signal,
            oom_killed,
        },
    )
}

/// The console socket's name in the bundle (the shim's working directory).
const CONSOLE_SOCKET: &str = "console.sock";
const ATTACH_SOCKET: &str = super::attach::SOCKET;

/// The terminal master the OCI runtime sent over the console socket.
fn receive_master(l: &UnixListener) -> io::Result<OwnedFd> {
    l.set_nonblocking(true)?;
    let mut fds = [PollFd::new(l.as_fd(), PollFlags::POLLIN)];
    if poll(&mut fds, PollTimeout::from(10_000u16)).map_err(io::Error::from)? == 0 {
        return Err(io::Error::other("the OCI runtime sent no terminal"));
    }
    let (conn, _) = l.accept()?;
    conn.set_nonblocking(false)?;
    super::exec::receive_fd(&conn)
}

/// Create the container with `stdin` (or /dev/null) and the pipes as its stdio, or with a
/// terminal sent to the console socket; returns its init's pid.
fn create(
    args: &ShimArgs,
    stdin: Option<OwnedFd>,
    out: OwnedFd,
    err: OwnedFd,
    console: bool,
) -> Result<i32, String> {
    let Some(binary) = &args.runc else {
        let console = console.then(|| args.bundle.join(CONSOLE_SOCKET));
        return super::youki::create(
            &args.id,
            &args.bundle,
            &args.state,
            super::youki::Stdio {
                stdin,
                stdout: out,
                stderr: err,
                console,
            },
        );
    };
    let mut cmd = runc(args, binary);
    cmd.arg("create")
        .arg("--bundle")
        .arg(&args.bundle)
        .arg("--pid-file")
        .arg(args.bundle.join("init.pid"));
    if console {
        cmd.arg("--console-socket").arg(CONSOLE_SOCKET);
    }
    let created = cmd
        .arg(&args.id)
        .stdin(stdin.map(Stdio::from).unwrap_or_else(Stdio::null))
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .status()
        .map_err(|e| format!("running {}: {e}", binary.display()))?;
    if !created.success() {
        return Err(runtime_error(&args.bundle));
    }
    fs::read_to_string(args.bundle.join("init.pid"))
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| "the OCI runtime wrote no pid".to_string())
}

fn start(args: &ShimArgs) -> Result<(), String> {
    let Some(binary) = &args.runc else {
        return super::youki::start(&args.id, &args.state);
    };
    let started = runc(args, binary)
        .arg("start")
        .arg(&args.id)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("running {}: {e}", binary.display()))?;
    if started.success() {
        Ok(())
    } else {
        Err(runtime_error(&args.bundle))
    }
}

/// Remove the container from the OCI runtime (its state and cgroup), killing what is left.
fn remove(args: &ShimArgs) {
    match &args.runc {
        None => {
            let _ = super::youki::delete(&args.id, &args.state, true);
        }
        Some(binary) => {
            let _ = runc(args, binary)
                .arg("delete")
                .arg("--force")
                .arg(&args.id)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Copy the container's output into the log until its init exits and the pipes drain.
fn pump(
    init: i32,
    mut streams: [Option<Stream>; 2],
    sigfd: &SignalFd,
    log: &mut Log,
    hub: &mut Hub,
) -> io::Result<WaitStatus> {
    let mut exited = None;
    loop {
        // Besides the init itself, reap anything that reparented to us.
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => break,
                Ok(s) => {
                    if s.pid() == Some(Pid::from_raw(init)) {
                        exited = Some(s);
                    }
                }
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        if streams.iter().all(Option::is_none)
            && let Some(s) = exited
        {
            return Ok(s);
        }
        let mut fds = vec![PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
        let live: Vec<usize> = (0..2).filter(|i| streams[*i].is_some()).collect();
        for i in &live {
            fds.push(PollFd::new(
                streams[*i].as_ref().expect("live stream").fd.as_fd(),
                PollFlags::POLLIN,
            ));
        }
        let interests = hub.interests();
        let slots: Vec<Slot> = interests.iter().map(|i| i.0).collect();
        for (_, fd, read, write) in interests {
            let mut flags = PollFlags::empty();
            if read {
                flags |= PollFlags::POLLIN;
            }
            if write {
                flags |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(fd, flags));
        }
        // Once the init is gone, anything still holding the pipes gets a moment, no more.
        let timeout = if exited.is_some() {
            PollTimeout::from(500u16)
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(0) if exited.is_some() => {
                for s in streams.iter_mut().flatten() {
                    s.finish(log)?;
                }
                streams = [None, None];
                continue;
            }
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let revents: Vec<PollFlags> = fds
            .iter()
            .map(|f| f.revents().unwrap_or(PollFlags::empty()))
            .collect();
        let ready: Vec<bool> = revents.iter().map(|r| !r.is_empty()).collect();
        drop(fds);
        let hub_ready: Vec<(Slot, bool)> = slots
            .iter()
            .zip(&revents[1 + live.len()..])
            .filter(|(_, r)| !r.is_empty())
            .map(|(s, r)| (*s, r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)))
            .collect();
        // Before the output is read: sending it can drop clients, which renumbers them.
        hub.ready(&hub_ready);
        if ready[0] {
            let _ = sigfd.read_signal();
        }
        for (n, i) in live.iter().enumerate() {
            if ready[n + 1] {
                let open = streams[*i]
                    .as_mut()
                    .expect("live stream")
                    .read_into(log, hub)?;
                if !open && let Some(mut s) = streams[*i].take() {
                    s.finish(log)?;
                }
            }
        }
    }
}

struct Stream {
    fd: OwnedFd,
    name: &'static str,
    pending: Vec<u8>,
}

impl Stream {
    fn new(fd: OwnedFd, name: &'static str) -> Stream {
        Stream {
            fd,
            name,
            pending: Vec::new(),
        }
    }

    /// Read what is available into the log and to attached clients; false at end of stream.
    fn read_into(&mut self, log: &mut Log, hub: &mut Hub) -> io::Result<bool> {
        let mut buf = [0u8; 64 * 1024];
        let n = match nix::unistd::read(&self.fd, &mut buf) {
            Ok(n) => n,
            Err(nix::Error::EINTR | nix::Error::EAGAIN) => return Ok(true),
            // A terminal whose other side is all closed.
            Err(nix::Error::EIO) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Ok(false);
        }
        hub.broadcast(&if self.name == "stderr" {
            Frame::Stderr(buf[..n].to_vec())
        } else {
            Frame::Stdout(buf[..n].to_vec())
        });
        self.pending.extend_from_slice(&buf[..n]);
        while let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=i).collect();
            for (k, chunk) in line[..line.len() - 1].chunks(MAX_LINE.max(1)).enumerate() {
                let last = (k + 1) * MAX_LINE >= line.len() - 1;
                log.write(self.name, !last, chunk)?;
            }
            if line.len() == 1 {
                log.write(self.name, false, b"")?;
            }
        }
        while self.pending.len() >= MAX_LINE {
            let chunk: Vec<u8> = self.pending.drain(..MAX_LINE).collect();
            log.write(self.name, true, &chunk)?;
        }
        Ok(true)
    }

    /// A last line without a newline is logged as partial.
    fn finish(&mut self, log: &mut Log) -> io::Result<()> {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            log.write(self.name, true, &rest)?;
        }
        Ok(())
    }
}

/// A CRI-format log file: `<time> <stream> <F|P> <line>`, rotated once past a size.
pub struct Log {
    path: PathBuf,
    file: File,
    size: u64,
    max: u64,
}

impl Log {
    pub fn open(path: &Path, max: u64) -> io::Result<Log> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Log {
            path: path.to_path_buf(),
            file,
            size,
            max,
        })
    }

    pub fn write(&mut self, stream: &str, partial: bool, line: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(line.len() + 48);
        out.extend_from_slice(now_nanos().as_bytes());
        out.push(b' ');
        out.extend_from_slice(stream.as_bytes());
        out.extend_from_slice(if partial { b" P " } else { b" F " });
        out.extend_from_slice(line);
        out.push(b'\n');
        if self.size + out.len() as u64 > self.max && self.size > 0 {
            let rotated = self.path.with_extension("log.1");
            fs::rename(&self.path, rotated)?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = 0;
        }
        self.file.write_all(&out)?;
        self.size += out.len() as u64;
        Ok(())
    }
}

/// How many times the kernel's OOM killer struck in the container's memory cgroup.
fn oom_kills(cgroup: &str) -> u64 {
    let path = format!(
        "/sys/fs/cgroup/memory/{}/memory.oom_control",
        cgroup.trim_start_matches('/')
    );
    let mut s = String::new();
    if File::open(path)
        .and_then(|mut f| f.read_to_string(&mut s))
        .is_err()
    {
        return 0;
    }
    s.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cri_log_lines_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = Log::open(&path, 200).unwrap();
        log.write("stdout", false, b"hello").unwrap();
        log.write("stderr", true, b"part").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].ends_with(" stdout F hello"), "{}", lines[0]);
        assert!(lines[1].ends_with(" stderr P part"));
        let ts = lines[0].split(' ').next().unwrap();
        assert!(ts.parse::<jiff::Timestamp>().is_ok(), "{ts}");
        for _ in 0..10 {
            log.write("stdout", false, b"0123456789012345678901234567890123456789")
                .unwrap();
        }
        assert!(dir.path().join("0.log.1").exists(), "rotated");
        assert!(fs::metadata(&path).unwrap().len() <= 200);
    }

    #[test]
    fn status_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let s = ShimStatus::Exited {
            pid: 7,
            started_at: "a".into(),
            finished_at: "b".into(),
            exit_code: 137,
            signal: 9,
            oom_killed: true,
        };
        write_status(dir.path(), &s).unwrap();
        assert_eq!(read_status(dir.path()), Some(s));
    }
}

//! Pod sandboxes without a pause process: a short-lived thread unshares the namespaces a pod's
//! containers share (network, IPC, UTS), brings up loopback, names the host, and pins each
//! namespace by bind-mounting it onto a file. Containers join those files; removing the
//! sandbox unmounts them and the kernel frees the namespaces.

use std::ffi::CString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{what}")]
    Sys {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> SandboxError {
    let what = what.into();
    move |e| SandboxError::Sys {
        what,
        source: io::Error::from(e),
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Sys { what, source }
}

/// Which namespaces the pod gets of its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Isolation {
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
}

/// The namespace files of a sandbox (each present if the pod has that namespace of its own).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespacePaths {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
}

/// Make `dir` a mount point with private propagation, so that namespace bind mounts in it
/// neither spread to nor come from other mount namespaces.
fn private_mount_point(dir: &Path) -> Result<(), SandboxError> {
    fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounted = mountinfo
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(&*dir.to_string_lossy()));
    if !mounted {
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(sys(format!("bind-mounting {}", dir.display())))?;
    }
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys(format!("making {} private", dir.display())))?;
    Ok(())
}

/// Create the pod's namespaces under `root/<id>/`.
pub fn create(
    root: &Path,
    id: &str,
    hostname: &str,
    iso: Isolation,
) -> Result<NamespacePaths, SandboxError> {
    private_mount_point(root)?;
    let dir = root.join(id);
    fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let mut flags = CloneFlags::empty();
    let mut kinds = Vec::new();
    if iso.net {
        flags |= CloneFlags::CLONE_NEWNET;
        kinds.push("net");
    }
    if iso.ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
        kinds.push("ipc");
    }
    if iso.uts {
        flags |= CloneFlags::CLONE_NEWUTS;
        kinds.push("uts");
    }
    for k in &kinds {
        fs::File::create(dir.join(k))
            .map_err(io_err(format!("creating {}", dir.join(k).display())))?;
    }
    let hostname = hostname.to_string();
    let target = dir.clone();
    let pinned = std::thread::spawn(move || -> Result<(), SandboxError> {
        // Only this thread moves into the new namespaces; it ends when done.
        unshare(flags).map_err(sys("unsharing the pod's namespaces"))?;
        if iso.uts {
            nix::unistd::sethostname(&hostname).map_err(sys("setting the pod's hostname"))?;
        }
        if iso.net {
            loopback_up().map_err(io_err("bringing up loopback"))?;
        }
        for k in ["net", "ipc", "uts"] {
            let wanted =
                (k == "net" && iso.net) || (k == "ipc" && iso.ipc) || (k == "uts" && iso.uts);
            if wanted {
                let src = format!("/proc/thread-self/ns/{k}");
                mount(
                    Some(src.as_str()),
                    &target.join(k),
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(sys(format!("pinning the {k} namespace")))?;
            }
        }
        Ok(())
    })
    .join()
    .map_err(|_| SandboxError::Sys {
        what: "namespace thread panicked".into(),
        source: io::Error::other("panic"),
    })?;
    if let Err(e) = pinned {
        let _ = remove(root, id);
        return Err(e);
    }
    let at = |k: &str, on: bool| on.then(|| dir.join(k));
    Ok(NamespacePaths {
        net: at("net", iso.net),
        ipc: at("ipc", iso.ipc),
        uts: at("uts", iso.uts),
    })
}

/// The namespace files of an existing sandbox.
pub fn existing(root: &Path, id: &str) -> NamespacePaths {
    let dir = root.join(id);
    let at = |k: &str| Some(dir.join(k)).filter(|p| p.exists());
    NamespacePaths {
        net: at("net"),
        ipc: at("ipc"),
        uts: at("uts"),
    }
}

/// Unpin and delete a sandbox's namespaces. Missing pieces are fine.
pub fn remove(root: &Path, id: &str) -> Result<(), SandboxError> {
    let dir = root.join(id);
    for k in ["net", "ipc", "uts"] {
        let p = dir.join(k);
        if p.exists() {
            match umount2(&p, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::Error::EINVAL) => {}
                Err(e) => return Err(sys(format!("unmounting {}", p.display()))(e)),
            }
            let _ = fs::remove_file(&p);
        }
    }
    match fs::remove_dir(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("removing {}", dir.display()))(e)),
    }
}

/// Set IFF_UP on `lo` in the calling thread's network namespace.
fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket creation; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let result = (|| {
        // SAFETY: ifreq is plain data; zeroed is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        let name = CString::new("lo").expect("no NUL in \"lo\"");
        for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes_with_nul()) {
            *d = *s as libc::c_char;
        }
        // SAFETY: `fd` is a valid socket and `req` a valid ifreq for these ioctls.
        if unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the ioctl above filled the flags member of the union.
        unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        // SAFETY: as above.
        if unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })();
    // SAFETY: fd is ours and still open.
    unsafe { libc::close(fd) };
    result
}

/// Open a TCP connection to `addr` from inside the network namespace pinned at `netns` (from
/// the host's when `None`). The socket belongs to the namespace it was made in, so it works
/// from any thread afterwards.
pub async fn connect(
    netns: Option<&Path>,
    addr: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> io::Result<tokio::net::TcpStream> {
    let Some(netns) = netns else {
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection timed out",
            )),
        };
    };
    let ns = fs::File::open(netns)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A short-lived thread enters the namespace, so no pooled thread is left inside it.
    std::thread::spawn(move || {
        let r = nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
            .map_err(io::Error::from)
            .and_then(|()| std::net::TcpStream::connect_timeout(&addr, timeout))
            .and_then(|s| s.set_nonblocking(true).map(|()| s));
        let _ = tx.send(r);
    });
    let s = rx
        .await
        .map_err(|_| io::Error::other("namespace thread ended"))??;
    tokio::net::TcpStream::from_std(s)
}

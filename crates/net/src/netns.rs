//! Network namespaces for tools and tests: a fresh one for the calling thread (with loopback
//! up), or a new one held open by a file, as a pod's would be.

use std::fs::File;
use std::io;
use std::path::PathBuf;

use nix::sched::{CloneFlags, unshare};

use crate::netlink::Netlink;

/// Move the calling thread into a new network namespace with only loopback, up. Threads and
/// processes it starts afterwards are in it too.
pub fn isolate() -> io::Result<()> {
    unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    let mut nl = Netlink::open()?;
    let lo = nl
        .link("lo")?
        .ok_or_else(|| io::Error::other("no loopback in the new namespace"))?;
    nl.set_up(lo.index)
}

/// A new network namespace, alive while the returned file is open, and a path that opens it
/// (`/proc/self/fd/N`) for as long.
pub fn create() -> io::Result<(File, PathBuf)> {
    let file = std::thread::spawn(|| -> io::Result<File> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        File::open("/proc/thread-self/ns/net")
    })
    .join()
    .map_err(|_| io::Error::other("namespace thread panicked"))??;
    let path = PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&file)
    ));
    Ok((file, path))
}

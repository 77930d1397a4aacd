//! Container root filesystems: the image's unpacked layers stacked read-only under overlayfs,
//! with a writable upper layer of the container's own.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// overlayfs takes its options in one page.
const OPTIONS_MAX: usize = 4095;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("the image has too many layers for one overlay mount ({0} bytes of options)")]
    TooManyLayers(usize),
    #[error("{what}")]
    Sys {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// Mount `layers` (lowest first) with `rw` (created, holding `upper` and `work`) at `target`.
pub fn overlay(layers: &[PathBuf], rw: &Path, target: &Path) -> Result<(), MountError> {
    let upper = rw.join("upper");
    let work = rw.join("work");
    for d in [&upper, &work, &target.to_path_buf()] {
        fs::create_dir_all(d).map_err(|source| MountError::Sys {
            what: format!("creating {}", d.display()),
            source,
        })?;
    }
    // overlayfs wants the topmost layer first.
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    if options.len() > OPTIONS_MAX {
        return Err(MountError::TooManyLayers(options.len()));
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| MountError::Sys {
        what: format!("mounting the root filesystem at {}", target.display()),
        source: e.into(),
    })
}

/// Unmount `target` if it is mounted.
pub fn unmount(target: &Path) -> Result<(), MountError> {
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(e) => Err(MountError::Sys {
            what: format!("unmounting {}", target.display()),
            source: e.into(),
        }),
    }
}

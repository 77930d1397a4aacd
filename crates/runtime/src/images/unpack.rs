//! Unpacking one layer into its own directory, ready to be stacked with overlayfs.
//!
//! OCI whiteouts become overlayfs whiteouts: `.wh.name` a 0/0 character device named `name`,
//! `.wh..wh..opq` the `trusted.overlay.opaque` attribute on its directory. Ownership, modes,
//! times and extended attributes are kept. Nothing is written outside the layer directory,
//! whatever the archive's paths and links say.

use std::ffi::CString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::digest::{Digest, HashingReader};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("reading the layer")]
    Io(#[from] io::Error),
    #[error("layer entry {0:?} leaves the layer directory")]
    Escape(PathBuf),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Tell the compression from the first bytes.
pub fn detect(head: &[u8]) -> Compression {
    match head {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        _ => Compression::None,
    }
}

/// Wrap a blob reader in the decompressor its first bytes call for.
pub fn decompress<'a, R: Read + 'a>(blob: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut buffered = BufReader::with_capacity(256 * 1024, blob);
    let kind = detect(buffered.fill_buf()?);
    Ok(match kind {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
    })
}

#[derive(Debug)]
pub struct Unpacked {
    /// Digest of the uncompressed tar: the layer's diffID.
    pub diff_id: Digest,
    pub bytes: u64,
}

/// Unpack `blob` (compressed or not) into `dest`, which is created.
pub fn unpack_layer(blob: impl Read, dest: &Path) -> Result<Unpacked, UnpackError> {
    fs::create_dir_all(dest)?;
    let root = fs::canonicalize(dest)?;
    let mut hashed = HashingReader::new(decompress(blob)?);
    {
        let mut archive = tar::Archive::new(&mut hashed);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_preserve_mtime(true);
        archive.set_unpack_xattrs(true);
        archive.set_overwrite(true);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let rel = relative(&entry.path()?)?;
            let Some(name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            let parent = rel.parent().unwrap_or(Path::new(""));
            if name == OPAQUE {
                let dir = safe_dir(&root, parent)?;
                set_xattr(&dir, "trusted.overlay.opaque", b"y")?;
                continue;
            }
            if let Some(hidden) = name.strip_prefix(WHITEOUT) {
                let dir = safe_dir(&root, parent)?;
                let target = dir.join(hidden);
                remove_any(&target)?;
                // A 0/0 character device, mode 0: overlayfs' whiteout.
                mknod(&target, libc::S_IFCHR, 0)?;
                continue;
            }
            let kind = entry.header().entry_type();
            if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
                let dir = safe_dir(&root, parent)?;
                let target = dir.join(&name);
                remove_any(&target)?;
                let mode = entry.header().mode()? & 0o7777;
                let (fmt, dev) = if kind.is_fifo() {
                    (libc::S_IFIFO, 0)
                } else {
                    let (major, minor) = (
                        entry.header().device_major()?.unwrap_or(0),
                        entry.header().device_minor()?.unwrap_or(0),
                    );
                    let fmt = if kind.is_character_special() {
                        libc::S_IFCHR
                    } else {
                        libc::S_IFBLK
                    };
                    (fmt, libc::makedev(major, minor))
                };
                mknod(&target, fmt | mode, dev)?;
                lchown(
                    &target,
                    entry.header().uid()? as u32,
                    entry.header().gid()? as u32,
                )?;
                continue;
            }
            if !entry.unpack_in(&root)? {
                return Err(UnpackError::Escape(rel));
            }
        }
    }
    let bytes = hashed.count;
    let diff_id = hashed.finish()?;
    Ok(Unpacked { diff_id, bytes })
}

/// An archive path as a plain relative path; `..` is refused.
fn relative(p: &Path) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(UnpackError::Escape(p.to_path_buf()));
            }
        }
    }
    Ok(out)
}

/// The directory `rel` under `root`, created if missing, refusing to leave `root` through
/// symlinks planted by earlier entries.
fn safe_dir(root: &Path, rel: &Path) -> Result<PathBuf, UnpackError> {
    let dir = root.join(rel);
    fs::create_dir_all(&dir)?;
    let real = fs::canonicalize(&dir)?;
    if !real.starts_with(root) {
        return Err(UnpackError::Escape(rel.to_path_buf()));
    }
    Ok(real)
}

fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))
}

fn mknod(p: &Path, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
    let c = cpath(p)?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::mknod(c.as_ptr(), mode, dev) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn lchown(p: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let c = cpath(p)?;
    let n = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad xattr name"))?;
    // SAFETY: both strings are valid and NUL-terminated; `value` is valid for its length.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    fn layer(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(if *kind == tar::EntryType::Directory {
                0o755
            } else {
                0o640
            });
            h.set_uid(1000);
            h.set_gid(1000);
            h.set_mtime(1_700_000_000);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            // Write the name raw: the builder would refuse the hostile ones tested here.
            let name = &mut h.as_gnu_mut().unwrap().name;
            name.fill(0);
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn unpacks_files_links_and_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let tar = layer(&[
            ("etc/", tar::EntryType::Directory, b"", None),
            ("etc/motd", tar::EntryType::Regular, b"hi\n", None),
            ("etc/motd.link", tar::EntryType::Symlink, b"", Some("motd")),
            ("etc/hard", tar::EntryType::Link, b"", Some("etc/motd")),
            ("etc/.wh.gone", tar::EntryType::Regular, b"", None),
            ("var/lib/.wh..wh..opq", tar::EntryType::Regular, b"", None),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &tar).unwrap();
        let dest = dir.path().join("layer");
        let out = unpack_layer(&gz.finish().unwrap()[..], &dest).unwrap();
        assert_eq!(
            out.diff_id,
            Digest::of(&tar),
            "the diffID is of the uncompressed tar"
        );
        assert_eq!(fs::read_to_string(dest.join("etc/motd")).unwrap(), "hi\n");
        let meta = fs::metadata(dest.join("etc/motd")).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.uid()), (0o640, 1000));
        assert_eq!(
            fs::read_link(dest.join("etc/motd.link")).unwrap(),
            Path::new("motd")
        );
        assert_eq!(
            fs::metadata(dest.join("etc/hard")).unwrap().ino(),
            meta.ino()
        );
        let wh = fs::symlink_metadata(dest.join("etc/gone")).unwrap();
        assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
        assert!(!dest.join("etc/.wh.gone").exists());
        let mut v = [0u8; 4];
        let c = cpath(&dest.join("var/lib")).unwrap();
        let n = CString::new("trusted.overlay.opaque").unwrap();
        // SAFETY: valid strings and buffer.
        let len =
            unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        assert_eq!(&v[..len as usize], b"y");
    }

    #[test]
    fn refuses_to_escape() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("layer");
        let tar = layer(&[("../evil", tar::EntryType::Regular, b"x", None)]);
        assert!(unpack_layer(&tar[..], &dest).is_err());
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let tar = layer(&[
            (
                "link",
                tar::EntryType::Symlink,
                b"",
                Some(outside.to_str().unwrap()),
            ),
            ("link/.wh.x", tar::EntryType::Regular, b"", None),
        ]);
        let dest2 = dir.path().join("layer2");
        assert!(matches!(
            unpack_layer(&tar[..], &dest2),
            Err(UnpackError::Escape(_))
        ));
        assert!(!outside.join("x").exists());
        let tar = layer(&[
            (
                "link",
                tar::EntryType::Symlink,
                b"",
                Some(outside.to_str().unwrap()),
            ),
            ("link/file", tar::EntryType::Regular, b"x", None),
        ]);
        let dest3 = dir.path().join("layer3");
        assert!(unpack_layer(&tar[..], &dest3).is_err());
        assert!(!outside.join("file").exists());
    }

    #[test]
    fn detects_compression() {
        assert_eq!(detect(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(detect(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(detect(b"ustar"), Compression::None);
        let tar = layer(&[("a", tar::EntryType::Regular, b"zstd!", None)]);
        let z = zstd::encode_all(&tar[..], 3).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = unpack_layer(&z[..], &dir.path().join("l")).unwrap();
        assert_eq!(out.diff_id, Digest::of(&tar));
        assert_eq!(fs::read(dir.path().join("l/a")).unwrap(), b"zstd!");
    }
}

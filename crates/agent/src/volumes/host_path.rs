//! hostPath: a path of the node's, checked (and made) as its type asks.

use std::fs;
use std::path::{Path, PathBuf};

use api::k8s_openapi::api::core::v1::Volume;
use async_trait::async_trait;

use super::{SetUp, VolumeError, VolumePlugin};

pub struct HostPath;

#[async_trait]
impl VolumePlugin for HostPath {
    fn name(&self) -> &'static str {
        "kubernetes.io/host-path"
    }

    fn serves(&self, v: &Volume) -> bool {
        v.host_path.is_some()
    }

    async fn set_up(&self, s: &SetUp<'_>) -> Result<PathBuf, VolumeError> {
        let h = s.volume.host_path.as_ref().expect("served");
        let p = PathBuf::from(&h.path);
        host_path_check(&p, h.type_.as_deref().unwrap_or("")).map_err(VolumeError::Missing)?;
        Ok(p)
    }
}

/// The kubelet's hostPath type check: create what the `...OrCreate` types (and, as container
/// runtimes do for a bind mount, the unset type) ask for when it is missing, and refuse a path
/// of the wrong kind with Kubernetes' message.
pub(super) fn host_path_check(p: &Path, ty: &str) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
    let kind = fs::metadata(p).ok().map(|m| m.file_type());
    let failed = |what: &str| format!("hostPath type check failed: {} is not {what}", p.display());
    let create_dir = || {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(p)
            .map_err(|e| format!("creating {}: {e}", p.display()))
    };
    match ty {
        "" if kind.is_none() => create_dir(),
        "" => Ok(()),
        "DirectoryOrCreate" if kind.is_none() => create_dir(),
        "DirectoryOrCreate" | "Directory" if kind.is_some_and(|k| k.is_dir()) => Ok(()),
        "DirectoryOrCreate" | "Directory" => Err(failed("a directory")),
        "FileOrCreate" if kind.is_none() => {
            if let Some(parent) = p.parent() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(|e| format!("creating {}: {e}", parent.display()))?;
            }
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(p)
                .map(drop)
                .map_err(|e| format!("creating {}: {e}", p.display()))
        }
        "FileOrCreate" | "File" if kind.is_some_and(|k| k.is_file()) => Ok(()),
        "FileOrCreate" | "File" => Err(failed("a file")),
        "Socket" if kind.is_some_and(|k| k.is_socket()) => Ok(()),
        "Socket" => Err(failed("a socket file")),
        "CharDevice" if kind.is_some_and(|k| k.is_char_device()) => Ok(()),
        "CharDevice" => Err(failed("a character device")),
        "BlockDevice" if kind.is_some_and(|k| k.is_block_device()) => Ok(()),
        "BlockDevice" => Err(failed("a block device")),
        other => Err(format!("{other} is an invalid volume type")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn host_path_types_check_and_create_as_the_kubelet_does() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("a/b");
        // Unset type: a missing path becomes a directory (what the fluentd DaemonSet needs).
        host_path_check(&missing, "").unwrap();
        assert!(missing.is_dir());
        let file = dir.path().join("f/x.log");
        host_path_check(&file, "FileOrCreate").unwrap();
        assert!(file.is_file());
        host_path_check(&file, "File").unwrap();
        let err = host_path_check(&file, "Directory").unwrap_err();
        assert_eq!(
            err,
            format!(
                "hostPath type check failed: {} is not a directory",
                file.display()
            )
        );
        let gone = dir.path().join("nope");
        let err = host_path_check(&gone, "File").unwrap_err();
        assert!(err.ends_with("is not a file"), "{err}");
        assert!(!gone.exists());
        let err = host_path_check(&gone, "Socket").unwrap_err();
        assert!(err.ends_with("is not a socket file"), "{err}");
        host_path_check(Path::new("/dev/null"), "CharDevice").unwrap();
        let err = host_path_check(Path::new("/dev/null"), "BlockDevice").unwrap_err();
        assert!(err.ends_with("is not a block device"), "{err}");
        host_path_check(&gone, "DirectoryOrCreate").unwrap();
        assert!(gone.is_dir());
        assert_eq!(
            host_path_check(&gone, "Whatever").unwrap_err(),
            "Whatever is an invalid volume type"
        );
    }
}

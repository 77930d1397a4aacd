//! persistentVolumeClaim and ephemeral volumes: the hostPath or local volume the claim is
//! bound to (an ephemeral volume's claim is `<pod>-<volume>`, made by the volume controller),
//! given to the pod's `fsGroup` as the kubelet does.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use api::k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Volume};
use async_trait::async_trait;
use client::Client;

use super::host_path::host_path_check;
use super::{SetUp, VolumeError, VolumePlugin, io_err};

pub struct Claim;

#[async_trait]
impl VolumePlugin for Claim {
    fn name(&self) -> &'static str {
        "kubernetes.io/persistent-claim"
    }

    fn serves(&self, v: &Volume) -> bool {
        v.persistent_volume_claim.is_some() || v.ephemeral.is_some()
    }

    async fn set_up(&self, s: &SetUp<'_>) -> Result<PathBuf, VolumeError> {
        let claim = match &s.volume.persistent_volume_claim {
            Some(c) => c.claim_name.clone(),
            None => format!(
                "{}-{}",
                s.pod.metadata.name.as_deref().unwrap_or(""),
                s.name()
            ),
        };
        let (dir, owned) = claim_volume(s.client, s.namespace, &claim, s.name()).await?;
        // The kubelet gives the pod's fsGroup the volumes it manages (not hand-made hostPath
        // ones); a read-only claim is left as it is.
        let security = s
            .pod
            .spec
            .as_ref()
            .and_then(|p| p.security_context.as_ref());
        let read_only = s
            .volume
            .persistent_volume_claim
            .as_ref()
            .is_some_and(|c| c.read_only == Some(true));
        if let Some(group) = security.and_then(|c| c.fs_group)
            && owned
            && !read_only
        {
            let always = security
                .and_then(|c| c.fs_group_change_policy.as_deref())
                .is_none_or(|p| p != "OnRootMismatch");
            let (d, name) = (dir.clone(), s.name().to_string());
            tokio::task::spawn_blocking(move || give_to_group(&d, group as u32, always))
                .await
                .map_err(|e| VolumeError::Missing(format!("volume {name:?}: {e}")))?
                .map_err(io_err(s.name(), "giving the volume to the pod's fsGroup"))?;
        }
        Ok(dir)
    }
}

/// The kubelet's ownership change for `fsGroup`: every file and directory gets the group,
/// group read-write (and directories setgid, so new files inherit it). With
/// `OnRootMismatch` (`always` false), a root that already looks so is left alone.
fn give_to_group(root: &Path, gid: u32, always: bool) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    const SETGID: u32 = 0o2000;
    let meta = fs::symlink_metadata(root)?;
    if !always && meta.gid() == gid && meta.mode() & 0o770 == 0o770 && meta.mode() & SETGID != 0 {
        return Ok(());
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = fs::symlink_metadata(&p)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        std::os::unix::fs::lchown(&p, None, Some(gid))?;
        let mut mode = meta.mode() & 0o7777 | 0o060;
        if meta.is_dir() {
            mode |= SETGID | 0o010;
            for e in fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// The directory of the volume a claim is bound to: a hostPath or local volume on this node
/// (made here the first time, for the built-in provisioner's); and whether berth manages its
/// ownership (local volumes and its own, not hostPath volumes made by hand).
async fn claim_volume(
    c: &Client,
    ns: &str,
    claim: &str,
    name: &str,
) -> Result<(PathBuf, bool), VolumeError> {
    let pvc: PersistentVolumeClaim = c.get(Some(ns), claim).await?.ok_or_else(|| {
        VolumeError::Missing(format!("persistentvolumeclaim \"{claim}\" not found"))
    })?;
    let volume = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|v| !v.is_empty());
    let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let (Some(volume), true) = (volume, bound) else {
        return Err(VolumeError::Missing(format!(
            "error processing PVC {ns}/{claim}: PVC is not bound"
        )));
    };
    let pv: PersistentVolume = c
        .get(None, volume)
        .await?
        .ok_or_else(|| VolumeError::Missing(format!("persistentvolume \"{volume}\" not found")))?;
    let spec = pv.spec.unwrap_or_default();
    if let Some(h) = &spec.host_path {
        let p = PathBuf::from(&h.path);
        let fresh = !p.exists();
        host_path_check(&p, h.type_.as_deref().unwrap_or("")).map_err(VolumeError::Missing)?;
        let ours = pv
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(api::kinds::storage::PROVISIONED_BY))
            .map(String::as_str)
            == Some(api::kinds::storage::LOCAL_PATH_PROVISIONER);
        if fresh && ours {
            // Any user a container runs as may write it, as local-path-provisioner's are.
            fs::set_permissions(&p, fs::Permissions::from_mode(0o777))
                .map_err(io_err(name, "setting modes"))?;
        }
        return Ok((p, ours));
    }
    if let Some(l) = &spec.local {
        let p = PathBuf::from(&l.path);
        if !p.exists() {
            return Err(VolumeError::Missing(format!(
                "path {:?} does not exist",
                l.path
            )));
        }
        return Ok((p, true));
    }
    Err(VolumeError::Unsupported(
        name.to_string(),
        "berth mounts hostPath and local persistent volumes only",
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn an_fs_group_owns_every_file_and_new_files_inherit_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vol");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/f"), "x").unwrap();
        fs::set_permissions(root.join("a/b/f"), fs::Permissions::from_mode(0o600)).unwrap();
        give_to_group(&root, 4242, true).unwrap();
        for p in [root.clone(), root.join("a/b"), root.join("a/b/f")] {
            let m = fs::metadata(&p).unwrap();
            assert_eq!(m.gid(), 4242, "{}", p.display());
            assert_eq!(m.mode() & 0o060, 0o060, "{}", p.display());
        }
        assert_ne!(fs::metadata(root.join("a")).unwrap().mode() & 0o2000, 0);
        assert_eq!(
            fs::metadata(root.join("a/b/f")).unwrap().mode() & 0o777,
            0o660
        );
        // OnRootMismatch: a matching root is not walked again.
        fs::write(root.join("late"), "y").unwrap();
        std::os::unix::fs::lchown(root.join("late"), None, Some(0)).unwrap();
        give_to_group(&root, 4242, false).unwrap();
        assert_eq!(fs::metadata(root.join("late")).unwrap().gid(), 0);
        give_to_group(&root, 4242, true).unwrap();
        assert_eq!(fs::metadata(root.join("late")).unwrap().gid(), 4242);
    }
}

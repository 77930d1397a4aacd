//! Pod volumes on the node: emptyDir (on disk or in memory), hostPath, the files of
//! configMap, secret (in memory), downwardAPI and projected volumes, written under the pod's
//! directory and refreshed on every sync so that updates reach running containers, and the
//! hostPath or local volumes that persistentVolumeClaim and ephemeral volumes are bound to.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use api::k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod,
    Secret, Volume,
};
use client::{Client, ClientError};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{0}")]
    Missing(String),
    #[error("volume {0:?}: {1}")]
    Unsupported(String, &'static str),
    #[error("volume {name:?}: {what}")]
    Io {
        name: String,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Api(#[from] ClientError),
    /// One volume of a pod could not be set up (the kubelet's FailedMount wording).
    #[error("MountVolume.SetUp failed for volume {volume:?} : {source}")]
    SetUp {
        volume: String,
        #[source]
        source: Box<VolumeError>,
    },
}

fn io_err(name: &str, what: impl Into<String>) -> impl FnOnce(io::Error) -> VolumeError {
    let (name, what) = (name.to_string(), what.into());
    move |source| VolumeError::Io { name, what, source }
}

const DEFAULT_MODE: i32 = 0o644;

/// Mount a tmpfs at `dir` unless one is there already.
fn tmpfs(dir: &Path, size: Option<u64>, name: &str) -> Result<(), VolumeError> {
    fs::create_dir_all(dir).map_err(io_err(name, format!("creating {}", dir.display())))?;
    let mounted = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(&*dir.to_string_lossy()));
    if mounted {
        return Ok(());
    }
    let opts = match size {
        Some(s) => format!("mode=0755,size={s}"),
        None => "mode=0755".to_string(),
    };
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| io_err(name, format!("mounting a tmpfs at {}", dir.display()))(e.into()))
}

/// A relative path from a volume item, refused if it would leave the volume.
fn item_path(name: &str, p: &str) -> Result<PathBuf, VolumeError> {
    let path = Path::new(p);
    if p.is_empty()
        || path
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(VolumeError::Io {
            name: name.to_string(),
            what: format!("item path {p:?} must be relative and without '..'"),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        });
    }
    Ok(path.to_path_buf())
}

/// Write `files` (relative path -> content, mode) into `dir`, removing files no longer listed.
fn write_files(
    dir: &Path,
    files: &BTreeMap<PathBuf, (Vec<u8>, u32)>,
    name: &str,
) -> Result<(), VolumeError> {
    fs::create_dir_all(dir).map_err(io_err(name, format!("creating {}", dir.display())))?;
    for (rel, (data, mode)) in files {
        let target = dir.join(rel);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_err(name, "creating directories"))?;
        }
        let changed = fs::read(&target).map(|old| old != *data).unwrap_or(true);
        if changed {
            let tmp = target.with_extension("berth-tmp");
            fs::write(&tmp, data).map_err(io_err(name, format!("writing {}", rel.display())))?;
            fs::rename(&tmp, &target)
                .map_err(io_err(name, format!("writing {}", rel.display())))?;
        }
        fs::set_permissions(&target, fs::Permissions::from_mode(*mode))
            .map_err(io_err(name, "setting modes"))?;
    }
    // Keys that went away from the source go away from the volume.
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap_or(&p).to_path_buf();
            if p.is_dir() {
                stack.push(p);
            } else if !files.contains_key(&rel) {
                let _ = fs::remove_file(&p);
            }
        }
    }
    Ok(())
}

fn keyed(
    name: &str,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
    what: &str,
) -> Result<BTreeMap<PathBuf, (Vec<u8>, u32)>, VolumeError> {
    let mode = default_mode.unwrap_or(DEFAULT_MODE) as u32;
    let mut out = BTreeMap::new();
    match items {
        Some(items) if !items.is_empty() => {
            for it in items {
                let v = data.get(&it.key).ok_or_else(|| {
                    VolumeError::Missing(format!(
                        "configuration for volume {name:?}: {what} has no key {:?}",
                        it.key
                    ))
                })?;
                out.insert(
                    item_path(name, &it.path)?,
                    (v.clone(), it.mode.map_or(mode, |m| m as u32)),
                );
            }
        }
        _ => {
            for (k, v) in data {
                out.insert(item_path(name, k)?, (v.clone(), mode));
            }
        }
    }
    Ok(out)
}

async fn config_map_data(
    c: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, ClientError> {
    Ok(c.get::<ConfigMap>(Some(ns), name).await?.map(|cm| {
        let mut d: BTreeMap<String, Vec<u8>> = cm
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        d.extend(
            cm.binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0)),
        );
        d
    }))
}

async fn secret_data(
    c: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, ClientError> {
    Ok(c.get::<Secret>(Some(ns), name).await?.map(|s| {
        s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    }))
}

fn downward_value(pod: &Pod, f: &DownwardAPIVolumeFile) -> String {
    let m = &pod.metadata;
    let format_map = |map: &Option<BTreeMap<String, String>>| {
        map.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
            .collect::<Vec<_>>()
            .join("\n")
    };
    if let Some(field) = &f.field_ref {
        return match field.field_path.as_str() {
            "metadata.name" => m.name.clone().unwrap_or_default(),
            "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
            "metadata.uid" => m.uid.clone().unwrap_or_default(),
            "metadata.labels" => format_map(&m.labels),
            "metadata.annotations" => format_map(&m.annotations),
            other => {
                let key = |prefix: &str| {
                    other
                        .strip_prefix(prefix)?
                        .strip_prefix("['")?
                        .strip_suffix("']")
                        .map(str::to_string)
                };
                if let Some(k) = key("metadata.labels") {
                    m.labels
                        .as_ref()
                        .and_then(|l| l.get(&k))
                        .cloned()
                        .unwrap_or_default()
                } else if let Some(k) = key("metadata.annotations") {
                    m.annotations
                        .as_ref()
                        .and_then(|a| a.get(&k))
                        .cloned()
                        .unwrap_or_default()
                } else {
                    String::new()
                }
            }
        };
    }
    String::new()
}

/// Make every volume of `pod` ready under `root` (the pod's directory); returns each volume's
/// directory on the host.
pub async fn prepare(
    pod: &Pod,
    c: &Client,
    root: &Path,
) -> Result<HashMap<String, PathBuf>, VolumeError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = HashMap::new();
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
    {
        let dir = prepare_one(pod, v, c, root, &ns)
            .await
            .map_err(|e| VolumeError::SetUp {
                volume: v.name.clone(),
                source: Box::new(e),
            })?;
        out.insert(v.name.clone(), dir);
    }
    Ok(out)
}

async fn prepare_one(
    pod: &Pod,
    v: &Volume,
    c: &Client,
    root: &Path,
    ns: &str,
) -> Result<PathBuf, VolumeError> {
    let name = v.name.as_str();
    let vols = root.join("volumes");
    if let Some(e) = &v.empty_dir {
        let dir = vols.join("empty-dir").join(name);
        if e.medium.as_deref() == Some("Memory") {
            let size = e
                .size_limit
                .as_ref()
                .and_then(|q| api::quantity::Quantity::parse(&q.0).ok())
                .map(|q| q.value() as u64);
            tmpfs(&dir, size, name)?;
        } else {
            fs::create_dir_all(&dir).map_err(io_err(name, "creating the directory"))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))
                .map_err(io_err(name, "setting modes"))?;
        }
        return Ok(dir);
    }
    if let Some(h) = &v.host_path {
        let p = PathBuf::from(&h.path);
        host_path_check(&p, h.type_.as_deref().unwrap_or("")).map_err(VolumeError::Missing)?;
        return Ok(p);
    }
    if let Some(cm) = &v.config_map {
        let dir = vols.join("configmap").join(name);
        let files = match config_map_data(c, ns, &cm.name).await? {
            Some(data) => keyed(
                name,
                &data,
                cm.items.as_ref(),
                cm.default_mode,
                &format!("configmap {:?}", cm.name),
            )?,
            None if cm.optional == Some(true) => BTreeMap::new(),
            None => {
                return Err(VolumeError::Missing(format!(
                    "configmap \"{}\" not found",
                    cm.name
                )));
            }
        };
        write_files(&dir, &files, name)?;
        return Ok(dir);
    }
    if let Some(s) = &v.secret {
        let secret = s.secret_name.clone().unwrap_or_default();
        let dir = vols.join("secret").join(name);
        // Secrets never touch the disk.
        tmpfs(&dir, None, name)?;
        let files = match secret_data(c, ns, &secret).await? {
            Some(data) => keyed(
                name,
                &data,
                s.items.as_ref(),
                s.default_mode,
                &format!("secret {secret:?}"),
            )?,
            None if s.optional == Some(true) => BTreeMap::new(),
            None => {
                return Err(VolumeError::Missing(format!(
                    "secret \"{secret}\" not found"
                )));
            }
        };
        write_files(&dir, &files, name)?;
        return Ok(dir);
    }
    if let Some(d) = &v.downward_api {
        let dir = vols.join("downward-api").join(name);
        let mode = d.default_mode.unwrap_or(DEFAULT_MODE) as u32;
        let mut files = BTreeMap::new();
        for f in d.items.iter().flatten() {
            files.insert(
                item_path(name, &f.path)?,
                (
                    downward_value(pod, f).into_bytes(),
                    f.mode.map_or(mode, |m| m as u32),
                ),
            );
        }
        write_files(&dir, &files, name)?;
        return Ok(dir);
    }
    if let Some(p) = &v.projected {
        let dir = vols.join("projected").join(name);
        tmpfs(&dir, None, name)?;
        let mode = p.default_mode;
        let mut files = BTreeMap::new();
        for src in p.sources.iter().flatten() {
            if let Some(cm) = &src.config_map {
                let cm_name = cm.name.clone();
                match config_map_data(c, ns, &cm_name).await? {
                    Some(data) => files.extend(keyed(
                        name,
                        &data,
                        cm.items.as_ref(),
                        mode,
                        &format!("configmap {cm_name:?}"),
                    )?),
                    None if cm.optional == Some(true) => {}
                    None => {
                        return Err(VolumeError::Missing(format!(
                            "configmap \"{cm_name}\" not found"
                        )));
                    }
                }
            }
            if let Some(s) = &src.secret {
                let s_name = s.name.clone();
                match secret_data(c, ns, &s_name).await? {
                    Some(data) => files.extend(keyed(
                        name,
                        &data,
                        s.items.as_ref(),
                        mode,
                        &format!("secret {s_name:?}"),
                    )?),
                    None if s.optional == Some(true) => {}
                    None => {
                        return Err(VolumeError::Missing(format!(
                            "secret \"{s_name}\" not found"
                        )));
                    }
                }
            }
            if let Some(d) = &src.downward_api {
                for f in d.items.iter().flatten() {
                    let m = f.mode.or(mode).unwrap_or(DEFAULT_MODE) as u32;
                    files.insert(
                        item_path(name, &f.path)?,
                        (downward_value(pod, f).into_bytes(), m),
                    );
                }
            }
        }
        write_files(&dir, &files, name)?;
        return Ok(dir);
    }
    let claim = match (&v.persistent_volume_claim, &v.ephemeral) {
        (Some(c), _) => Some(c.claim_name.clone()),
        (None, Some(_)) => Some(format!(
            "{}-{name}",
            pod.metadata.name.as_deref().unwrap_or("")
        )),
        _ => None,
    };
    if let Some(claim) = claim {
        return claim_volume(c, ns, &claim, name).await;
    }
    Err(VolumeError::Unsupported(
        name.to_string(),
        "this volume type is not supported by berth",
    ))
}

/// The directory of the volume a claim is bound to: a hostPath or local volume on this node
/// (made here the first time, for the built-in provisioner's).
async fn claim_volume(
    c: &Client,
    ns: &str,
    claim: &str,
    name: &str,
) -> Result<PathBuf, VolumeError> {
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
        return Ok(p);
    }
    if let Some(l) = &spec.local {
        let p = PathBuf::from(&l.path);
        if !p.exists() {
            return Err(VolumeError::Missing(format!(
                "path {:?} does not exist",
                l.path
            )));
        }
        return Ok(p);
    }
    Err(VolumeError::Unsupported(
        name.to_string(),
        "berth mounts hostPath and local persistent volumes only",
    ))
}

/// Unmount the pod's in-memory volumes and delete its directory.
pub fn teardown(root: &Path) -> io::Result<()> {
    let prefix = root.to_string_lossy().into_owned();
    let mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    for m in mounts.iter().rev() {
        let _ = umount2(Path::new(m), MntFlags::MNT_DETACH);
    }
    match fs::remove_dir_all(root) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The kubelet's hostPath type check: create what the `...OrCreate` types (and, as container
/// runtimes do for a bind mount, the unset type) ask for when it is missing, and refuse a path
/// of the wrong kind with Kubernetes' message.
fn host_path_check(p: &Path, ty: &str) -> Result<(), String> {
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
    fn keyed_files_and_modes() {
        let data = BTreeMap::from([
            ("a.conf".to_string(), b"A".to_vec()),
            ("b".to_string(), b"B".to_vec()),
        ]);
        let all = keyed("v", &data, None, Some(0o600), "cm").unwrap();
        assert_eq!(all[Path::new("a.conf")], (b"A".to_vec(), 0o600));
        let items = vec![KeyToPath {
            key: "b".into(),
            path: "sub/dir/b.txt".into(),
            mode: Some(0o400),
        }];
        let some = keyed("v", &data, Some(&items), None, "cm").unwrap();
        assert_eq!(some.len(), 1);
        assert_eq!(some[Path::new("sub/dir/b.txt")].1, 0o400);
        let bad = vec![KeyToPath {
            key: "b".into(),
            path: "../x".into(),
            mode: None,
        }];
        assert!(keyed("v", &data, Some(&bad), None, "cm").is_err());
        let missing = vec![KeyToPath {
            key: "zz".into(),
            path: "z".into(),
            mode: None,
        }];
        assert!(keyed("v", &data, Some(&missing), None, "cm").is_err());
    }

    #[test]
    fn files_are_written_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = BTreeMap::from([
            (PathBuf::from("x"), (b"1".to_vec(), 0o644)),
            (PathBuf::from("d/y"), (b"2".to_vec(), 0o600)),
        ]);
        write_files(dir.path(), &files, "v").unwrap();
        assert_eq!(fs::read(dir.path().join("d/y")).unwrap(), b"2");
        files.remove(Path::new("x"));
        write_files(dir.path(), &files, "v").unwrap();
        assert!(!dir.path().join("x").exists());
        assert_eq!(
            fs::metadata(dir.path().join("d/y"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }

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

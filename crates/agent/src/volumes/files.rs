//! Volumes made of files: configMap, secret (in memory), downwardAPI and projected. Their
//! files are written under the pod's directory and rewritten on every sync, so that changes
//! to their sources reach running containers.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use api::k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume,
};
use async_trait::async_trait;
use client::{Client, ClientError};

use super::{SetUp, VolumeError, VolumePlugin, io_err, tmpfs};

const DEFAULT_MODE: i32 = 0o644;

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

pub struct ConfigMapFiles;

#[async_trait]
impl VolumePlugin for ConfigMapFiles {
    fn name(&self) -> &'static str {
        "kubernetes.io/configmap"
    }

    fn serves(&self, v: &Volume) -> bool {
        v.config_map.is_some()
    }

    async fn set_up(&self, s: &SetUp<'_>) -> Result<PathBuf, VolumeError> {
        let (name, c, ns) = (s.name(), s.client, s.namespace);
        let cm = s.volume.config_map.as_ref().expect("served");
        let dir = s.dir("configmap");
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
        Ok(dir)
    }
}

pub struct SecretFiles;

#[async_trait]
impl VolumePlugin for SecretFiles {
    fn name(&self) -> &'static str {
        "kubernetes.io/secret"
    }

    fn serves(&self, v: &Volume) -> bool {
        v.secret.is_some()
    }

    async fn set_up(&self, s: &SetUp<'_>) -> Result<PathBuf, VolumeError> {
        let (name, c, ns) = (s.name(), s.client, s.namespace);
        let dir = s.dir("secret");
        let s = s.volume.secret.as_ref().expect("served");
        let secret = s.secret_name.clone().unwrap_or_default();

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
        Ok(dir)
    }
}

pub struct DownwardApiFiles;

#[async_trait]
impl VolumePlugin for DownwardApiFiles {
    fn name(&self) -> &'static str {
        "kubernetes.io/downward-api"
    }

    fn serves(&self, v: &Volume) -> bool {
        v.downward_api.is_some()
    }

    async fn set_up(&self, s: &SetUp<'_>) -> Result<PathBuf, VolumeError> {
        let (name, pod) = (s.name(), s.pod);
        let d = s.volume.downward_api.as_ref().expect("served");
        let dir = s.dir("downward-api");
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
        Ok(dir)
    }
}

pub struct ProjectedFiles;

#[async_trait]
impl VolumePlugin for ProjectedFiles {
    fn name(&self) -> &'static str {
        "kubernetes.io/projected"
    }

    fn serves(&self, v: &Volume) -> bool {
        v.projected.is_some()
    }

    async fn set_up(&self, s: &SetUp<'_>) -> Result<PathBuf, VolumeError> {
        let (name, c, ns, pod) = (s.name(), s.client, s.namespace, s.pod);
        let p = s.volume.projected.as_ref().expect("served");
        let dir = s.dir("projected");
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
            if let Some(t) = &src.service_account_token {
                let token = s.tokens.get(c, pod, t).await?;
                let m = mode.unwrap_or(DEFAULT_MODE) as u32;
                files.insert(item_path(name, &t.path)?, (token.into_bytes(), m));
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
        Ok(dir)
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
}

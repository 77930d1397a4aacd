//! Pod volumes on the node, one `VolumePlugin` per volume type (`empty_dir`, `host_path`,
//! `files` for configMap, secret, downwardAPI and projected volumes (with service account
//! tokens from `tokens`), `claim` for persistentVolumeClaim and ephemeral volumes): each makes
//! its volume ready and says where it is on the host. Files are written under the pod's
//! directory and refreshed on every sync so that updates (and new tokens) reach running
//! containers. A CSI plugin would be one more entry in
//! `PLUGINS`.

mod claim;
mod empty_dir;
mod files;
mod host_path;
mod tokens;

pub use tokens::Tokens;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use api::k8s_openapi::api::core::v1::{Pod, Volume};
use async_trait::async_trait;
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

/// What a plugin is given to set up one volume of a pod.
pub struct SetUp<'a> {
    pub pod: &'a Pod,
    pub volume: &'a Volume,
    pub client: &'a Client,
    /// Service account tokens for projected volumes.
    pub tokens: &'a Tokens,
    /// The pod's directory: volumes made of files live under `<root>/volumes`.
    pub root: &'a Path,
    pub namespace: &'a str,
}

impl SetUp<'_> {
    fn name(&self) -> &str {
        &self.volume.name
    }

    /// `<root>/volumes/<kind>/<volume name>`.
    fn dir(&self, kind: &str) -> PathBuf {
        self.root.join("volumes").join(kind).join(self.name())
    }
}

/// One volume type.
#[async_trait]
pub trait VolumePlugin: Send + Sync {
    /// The kubelet's name for the plugin (`kubernetes.io/empty-dir`).
    fn name(&self) -> &'static str;
    /// Whether it sets up `v`.
    fn serves(&self, v: &Volume) -> bool;
    /// Make the volume ready; returns where it is on the host.
    async fn set_up(&self, s: &SetUp<'_>) -> Result<PathBuf, VolumeError>;
}

/// Every volume type the agent sets up.
static PLUGINS: &[&dyn VolumePlugin] = &[
    &empty_dir::EmptyDir,
    &host_path::HostPath,
    &files::ConfigMapFiles,
    &files::SecretFiles,
    &files::DownwardApiFiles,
    &files::ProjectedFiles,
    &claim::Claim,
];

/// Make every volume of `pod` ready under `root` (the pod's directory); returns each volume's
/// directory on the host.
pub async fn prepare(
    pod: &Pod,
    c: &Client,
    tokens: &Tokens,
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
        let s = SetUp {
            pod,
            volume: v,
            client: c,
            tokens,
            root,
            namespace: &ns,
        };
        let dir = match PLUGINS.iter().find(|p| p.serves(v)) {
            Some(p) => p.set_up(&s).await,
            None => Err(VolumeError::Unsupported(
                v.name.clone(),
                "this volume type is not supported by berth",
            )),
        }
        .map_err(|e| VolumeError::SetUp {
            volume: v.name.clone(),
            source: Box::new(e),
        })?;
        out.insert(v.name.clone(), dir);
    }
    Ok(out)
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

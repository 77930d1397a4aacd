//! emptyDir: a directory of the pod's, on disk or (medium `Memory`) a tmpfs of its size limit.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use api::k8s_openapi::api::core::v1::Volume;
use async_trait::async_trait;

use super::{SetUp, VolumeError, VolumePlugin, io_err, tmpfs};

pub struct EmptyDir;

#[async_trait]
impl VolumePlugin for EmptyDir {
    fn name(&self) -> &'static str {
        "kubernetes.io/empty-dir"
    }

    fn serves(&self, v: &Volume) -> bool {
        v.empty_dir.is_some()
    }

    async fn set_up(&self, s: &SetUp<'_>) -> Result<PathBuf, VolumeError> {
        let name = s.name();
        let dir = s.dir("empty-dir");
        let e = s.volume.empty_dir.as_ref().expect("served");
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
        Ok(dir)
    }
}

//! The node's part of the built-in `local-path` provisioner: the volumes it made on this node
//! that are released under the Delete policy have their directory removed, then the
//! PersistentVolume object deleted. (The volume controller on the servers makes and binds
//! them; the directory itself is made when a pod first mounts it.)

use std::path::{Path, PathBuf};

use api::k8s_openapi::api::core::v1::PersistentVolume;
use api::kinds::storage::{LOCAL_PATH_PROVISIONER, PROVISIONED_BY, VOLUME_NODE_LABEL};
use client::{Client, ListParams, Watcher, watcher};
use tracing::{info, warn};

/// Follow this node's provisioned volumes (labelled with its hostname) and remove the
/// released ones whose policy is Delete.
pub async fn reclaim(client: Client, hostname: String, storage: PathBuf) {
    let params = ListParams {
        label_selector: Some(format!("{VOLUME_NODE_LABEL}={hostname}")),
        ..Default::default()
    };
    let mut w = Watcher::<PersistentVolume>::new(client.clone(), None, params.clone());
    // A removal that failed (a busy directory, the API away) is tried again now and then.
    let mut again = tokio::time::interval(RETRY_EVERY);
    again.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = w.next() => match event {
                watcher::Event::Restarted(items) => {
                    for v in items {
                        remove_if_released(&client, &storage, &v).await;
                    }
                }
                // A volume removed by someone else (or whose protection went first) still
                // leaves its directory here.
                watcher::Event::Applied(v) | watcher::Event::Deleted(v) => {
                    remove_if_released(&client, &storage, &v).await
                }
            },
            _ = again.tick() => {
                if let Ok((items, _)) = client.list::<PersistentVolume>(None, &params).await {
                    for v in items {
                        remove_if_released(&client, &storage, &v).await;
                    }
                }
            }
        }
    }
}

/// How often released volumes are looked at again, for removals that failed.
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The directory of a volume the built-in provisioner made on this node, if it lies where
/// this node keeps them (so a volume object made by hand cannot point the agent at another
/// directory to delete).
fn our_directory(v: &PersistentVolume, storage: &Path) -> Option<PathBuf> {
    let ours = v
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PROVISIONED_BY))
        .is_some_and(|p| p == LOCAL_PATH_PROVISIONER);
    let path = PathBuf::from(&v.spec.as_ref()?.host_path.as_ref()?.path);
    let name = path.file_name()?.to_str()?;
    let named = v
        .metadata
        .name
        .as_deref()
        .is_some_and(|n| name.starts_with(&format!("{n}_")));
    (ours && named && path.parent() == Some(storage)).then_some(path)
}

async fn remove_if_released(client: &Client, storage: &Path, v: &PersistentVolume) {
    let released = v.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
    let delete = v
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        == Some("Delete");
    if !released || !delete {
        return;
    }
    let Some(dir) = our_directory(v, storage) else {
        return;
    };
    let name = v.metadata.name.clone().unwrap_or_default();
    let removed = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    })
    .await;
    match removed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            warn!(volume = %name, dir = %dir.display(), error = %e, "could not remove a released volume");
            return;
        }
        Err(e) => {
            warn!(volume = %name, error = %e, "removing a released volume failed");
            return;
        }
    }
    if v.metadata.deletion_timestamp.is_some() {
        return;
    }
    match client.delete::<PersistentVolume>(None, &name).await {
        Ok(()) => info!(volume = %name, dir = %dir.display(), "released volume removed"),
        Err(e) if e.is_not_found() => {}
        Err(e) => warn!(volume = %name, error = %e, "could not delete a released volume"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn only_directories_the_provisioner_made_here_are_removed() {
        let pv = |name: &str, path: &str, ours: bool| -> PersistentVolume {
            let mut v = json!({"metadata": {"name": name}, "spec": {"hostPath": {"path": path}}});
            if ours {
                v["metadata"]["annotations"] = json!({PROVISIONED_BY: LOCAL_PATH_PROVISIONER});
            }
            serde_json::from_value(v).unwrap()
        };
        let storage = Path::new("/var/lib/berth/storage");
        assert_eq!(
            our_directory(
                &pv("pvc-1", "/var/lib/berth/storage/pvc-1_ns_data", true),
                storage
            ),
            Some(PathBuf::from("/var/lib/berth/storage/pvc-1_ns_data"))
        );
        for (name, path, ours) in [
            ("pvc-1", "/var/lib/berth/storage/pvc-1_ns_data", false),
            ("pvc-1", "/etc", true),
            ("pvc-1", "/var/lib/berth/storage", true),
            ("pvc-1", "/var/lib/berth/storage/pvc-2_ns_data", true),
            ("pvc-1", "/var/lib/berth/storage/x/pvc-1_ns_data", true),
        ] {
            assert_eq!(
                our_directory(&pv(name, path, ours), storage),
                None,
                "{path}"
            );
        }
    }
}

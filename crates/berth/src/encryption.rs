//! Secrets at rest: the key file (`<data-dir>/credentials/encryption.keys`, mode 0600, made on
//! first start) and its rotation. Rotating puts a new key first (it seals from then on), rewrites
//! every Secret so that it is sealed with it, compacts the store's history (older revisions
//! were sealed with the old keys) and drops the old keys once nothing they sealed is left, as
//! Kubernetes' documented rotation does by hand.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use store::encrypt::{EncryptedStore, Keyring};
use store::{Condition, Store, StoreError};
use tracing::info;

use crate::pki::write_private;

/// Where the keys are, relative to the data directory (a snapshot carries it).
pub const KEY_FILE: &str = "credentials/encryption.keys";
/// What is sealed: Secrets, as Kubernetes' usual EncryptionConfiguration names them.
pub const PREFIXES: [&str; 1] = ["/registry/core/secrets/"];

/// The key file's keys, made with one key if there is none yet.
pub fn load_or_create(data_dir: &Path) -> Result<Keyring> {
    let path = data_dir.join(KEY_FILE);
    if !path.exists() {
        write_private(
            &path,
            format!("{}\n", Keyring::new_key_line("key1")).as_bytes(),
        )?;
        info!("created the key that seals Secrets at rest");
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Keyring::parse(&text).with_context(|| format!("reading the keys in {}", path.display()))
}

/// Wrap `raw` so that Secrets are sealed with the data directory's keys.
pub fn wrap(raw: Arc<dyn Store>, data_dir: &Path) -> Result<Arc<EncryptedStore>> {
    let keys = load_or_create(data_dir)?;
    Ok(Arc::new(EncryptedStore::new(
        raw,
        PREFIXES.iter().map(|p| p.to_string()).collect(),
        keys,
    )))
}

pub struct Rotation {
    pub store: Arc<EncryptedStore>,
    pub raw: Arc<dyn Store>,
    pub path: PathBuf,
    /// One rotation at a time.
    pub lock: tokio::sync::Mutex<()>,
}

impl Rotation {
    pub fn new(store: Arc<EncryptedStore>, raw: Arc<dyn Store>, data_dir: &Path) -> Rotation {
        Rotation {
            store,
            raw,
            path: data_dir.join(KEY_FILE),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    async fn install(&self, text: &str) -> Result<()> {
        let ring = Keyring::parse(text).context("the new key file does not read back")?;
        write_private(&self.path, text.as_bytes())?;
        self.store.set_keys(ring).await;
        Ok(())
    }

    /// Rewrite every value under the prefixes, so the sealing key seals it; how many.
    async fn rewrite(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for prefix in PREFIXES {
            let (kvs, _) = self.store.list(prefix).await?;
            for kv in kvs {
                match self
                    .store
                    .put(&kv.key, kv.value, Condition::ModRevision(kv.mod_revision))
                    .await
                {
                    Ok(_) => n += 1,
                    // Written (or deleted) since: sealed with the new key already, or gone.
                    Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(n)
    }

    /// The keys that still seal something below.
    async fn keys_in_use(&self) -> Result<Vec<String>, StoreError> {
        let mut used = Vec::new();
        for prefix in PREFIXES {
            let (kvs, _) = self.raw.list(prefix).await?;
            for kv in kvs {
                if let Some(name) = Keyring::sealed_by(&kv.value)
                    && !used.iter().any(|u| u == name)
                {
                    used.push(name.to_string());
                }
            }
        }
        Ok(used)
    }
}

#[async_trait::async_trait]
impl apiserver::KeyRotation for Rotation {
    async fn rotate(&self) -> Result<Value, String> {
        let _one = self.lock.lock().await;
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("reading {}: {e}", self.path.display()))?;
        let old = Keyring::parse(&text).map_err(|e| e.to_string())?;
        let old_names: Vec<String> = old.names().iter().map(|n| n.to_string()).collect();
        let next = (1..)
            .map(|i| format!("key{i}"))
            .find(|n| !old_names.contains(n))
            .expect("some name is free");
        let with_new = format!("{}\n{}", Keyring::new_key_line(&next), text.trim_end());
        self.install(&format!("{with_new}\n"))
            .await
            .map_err(|e| format!("{e:#}"))?;
        let rewritten = self.rewrite().await.map_err(|e| e.to_string())?;
        // Older revisions in the store's history were sealed with the old keys: compact them
        // away (watchers from before relist, as after any compaction) so the keys can go.
        let now = self.raw.revision().await.map_err(|e| e.to_string())?;
        self.raw.compact(now).await.map_err(|e| e.to_string())?;
        let used = self.keys_in_use().await.map_err(|e| e.to_string())?;
        let (keep, dropped): (Vec<&str>, Vec<&str>) = with_new.lines().partition(|l| {
            let name = l.split(' ').next().unwrap_or("");
            name == next || used.iter().any(|u| u == name)
        });
        let dropped: Vec<String> = dropped
            .iter()
            .filter_map(|l| l.split(' ').next())
            .filter(|n| !n.is_empty() && !n.starts_with('#'))
            .map(str::to_string)
            .collect();
        self.install(&format!("{}\n", keep.join("\n")))
            .await
            .map_err(|e| format!("{e:#}"))?;
        info!(key = %next, rewritten, ?dropped, "rotated the key that seals Secrets");
        Ok(json!({"key": next, "rewritten": rewritten, "removedKeys": dropped}))
    }
}

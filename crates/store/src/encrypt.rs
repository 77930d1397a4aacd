//! Encryption at rest: a [`Store`] wrapper that seals the values of chosen key prefixes (the
//! API server's Secrets) with AES-256-GCM before they reach the backend and opens them on the
//! way back, as Kubernetes' `aesgcm` EncryptionConfiguration provider does. A sealed value is
//! `k8s:enc:aesgcm:v1:<key name>:` then a random 12-byte nonce and the ciphertext with its
//! tag; the storage key is the authenticated data, so a value moved to another key does not
//! open. Every key of the [`Keyring`] opens; the first seals. Values written before a prefix
//! was encrypted are read as they are, and sealed when next written.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::{Event, KeyValue, Op, OpResult, Revision, Store, StoreError, TxnResult, WatchStream};

const PREFIX: &[u8] = b"k8s:enc:aesgcm:v1:";
pub const KEY_BYTES: usize = 32;

/// Named AES-256 keys; the first seals, all open.
pub struct Keyring {
    keys: Vec<(String, LessSafeKey)>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("line {0}: expected `NAME BASE64-KEY`")]
    Line(usize),
    #[error("key {0:?}: not {KEY_BYTES} bytes of base64")]
    Key(String),
    #[error("key name {0:?} may hold only letters, digits, '-' and '_'")]
    Name(String),
    #[error("no key")]
    Empty,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl Keyring {
    /// Read a key file: one `NAME BASE64-KEY` per line, the sealing key first.
    pub fn parse(text: &str) -> Result<Keyring, KeyringError> {
        use base64::Engine;
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, key) = line.split_once(' ').ok_or(KeyringError::Line(i + 1))?;
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(KeyringError::Name(name.to_string()));
            }
            let bytes = b64()
                .decode(key.trim())
                .ok()
                .filter(|b| b.len() == KEY_BYTES)
                .ok_or_else(|| KeyringError::Key(name.to_string()))?;
            let unbound = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| KeyringError::Key(name.to_string()))?;
            keys.push((name.to_string(), LessSafeKey::new(unbound)));
        }
        if keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        Ok(Keyring { keys })
    }

    /// A new random key's line for a key file.
    pub fn new_key_line(name: &str) -> String {
        use base64::Engine;
        let mut key = [0u8; KEY_BYTES];
        SystemRandom::new()
            .fill(&mut key)
            .expect("the system has a source of randomness");
        format!("{name} {}", b64().encode(key))
    }

    pub fn names(&self) -> Vec<&str> {
        self.keys.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The name of the key that sealed `value`, if it is sealed.
    pub fn sealed_by(value: &[u8]) -> Option<&str> {
        let rest = value.strip_prefix(PREFIX)?;
        let end = rest.iter().position(|b| *b == b':')?;
        std::str::from_utf8(&rest[..end]).ok()
    }

    fn seal(&self, key: &str, plain: &[u8]) -> Bytes {
        let (name, k) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system has a source of randomness");
        let mut sealed = plain.to_vec();
        k.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(key.as_bytes()),
            &mut sealed,
        )
        .expect("AES-GCM seals any value the store can hold");
        let mut out = Vec::with_capacity(PREFIX.len() + name.len() + 1 + NONCE_LEN + sealed.len());
        out.extend_from_slice(PREFIX);
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Bytes::from(out)
    }

    fn open(&self, key: &str, value: &Bytes) -> Result<Bytes, StoreError> {
        let Some(rest) = value.strip_prefix(PREFIX) else {
            // Written before encryption was on.
            return Ok(value.clone());
        };
        let damaged = |why: &str| StoreError::Corrupt(format!("the value of {key:?} {why}"));
        let end = rest
            .iter()
            .position(|b| *b == b':')
            .ok_or_else(|| damaged("is sealed but names no key"))?;
        let name = std::str::from_utf8(&rest[..end]).unwrap_or("");
        let (_, k) = self.keys.iter().find(|(n, _)| n == name).ok_or_else(|| {
            damaged(&format!(
                "was sealed with key {name:?}, which is not in the key file"
            ))
        })?;
        let body = &rest[end + 1..];
        if body.len() < NONCE_LEN {
            return Err(damaged("is too short to be sealed"));
        }
        let nonce = Nonce::try_assume_unique_for_key(&body[..NONCE_LEN])
            .map_err(|_| damaged("has no nonce"))?;
        let mut data = body[NONCE_LEN..].to_vec();
        let plain = k
            .open_in_place(nonce, Aad::from(key.as_bytes()), &mut data)
            .map_err(|_| {
                damaged("does not open with its key (damaged, or moved from another key)")
            })?;
        let n = plain.len();
        data.truncate(n);
        Ok(Bytes::from(data))
    }
}

/// A store whose values under `prefixes` are sealed at rest.
pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    prefixes: Vec<String>,
    keys: Arc<RwLock<Arc<Keyring>>>,
    /// Held (shared) by a write from sealing to commit, and (alone) to change the keys: once
    /// `set_keys` returns, no write sealed with the old keys is still to land.
    gate: tokio::sync::RwLock<()>,
}

impl EncryptedStore {
    pub fn new(inner: Arc<dyn Store>, prefixes: Vec<String>, keys: Keyring) -> EncryptedStore {
        EncryptedStore {
            inner,
            prefixes,
            keys: Arc::new(RwLock::new(Arc::new(keys))),
            gate: tokio::sync::RwLock::new(()),
        }
    }

    /// Seal new writes with another keyring from now on (its first key), once the writes
    /// sealed with the old one have landed; values sealed with keys it lacks no longer open.
    pub async fn set_keys(&self, keys: Keyring) {
        let _alone = self.gate.write().await;
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
    }

    /// The store below, where values are as sealed.
    pub fn sealed(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    fn keyring(&self) -> Arc<Keyring> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn covers(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    fn open_kv(&self, ring: &Keyring, mut kv: KeyValue) -> Result<KeyValue, StoreError> {
        if self.covers(&kv.key) && !kv.value.is_empty() {
            kv.value = ring.open(&kv.key, &kv.value)?;
        }
        Ok(kv)
    }

    fn open_error(&self, ring: &Keyring, e: StoreError) -> StoreError {
        match e {
            StoreError::Conflict { key, current } => match self.open_kv(ring, *current) {
                Ok(current) => StoreError::Conflict {
                    key,
                    current: Box::new(current),
                },
                Err(e) => e,
            },
            other => other,
        }
    }
}

fn open_event(prefixes: &[String], ring: &Keyring, mut ev: Event) -> Result<Event, StoreError> {
    let covers = |k: &str| prefixes.iter().any(|p| k.starts_with(p.as_str()));
    if covers(&ev.kv.key) {
        if !ev.kv.value.is_empty() {
            ev.kv.value = ring.open(&ev.kv.key, &ev.kv.value)?;
        }
        if let Some(p) = ev.prev.as_mut()
            && !p.value.is_empty()
        {
            p.value = ring.open(&p.key, &p.value)?;
        }
    }
    Ok(ev)
}

#[async_trait]
impl Store for EncryptedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let ring = self.keyring();
        self.inner
            .get(key)
            .await?
            .map(|kv| self.open_kv(&ring, kv))
            .transpose()
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let ring = self.keyring();
        let (kvs, rev) = self.inner.list(prefix).await?;
        // A value that does not open (its key is gone from the key file) is left out and
        // said loudly, rather than keeping every other object from being read.
        let kvs = kvs
            .into_iter()
            .filter_map(|kv| match self.open_kv(&ring, kv) {
                Ok(kv) => Some(kv),
                Err(e) => {
                    tracing::error!(error = %e, "a sealed value cannot be read; left out");
                    None
                }
            })
            .collect();
        Ok((kvs, rev))
    }

    async fn txn(&self, ops: Vec<Op>) -> Result<TxnResult, StoreError> {
        let _sealing = self.gate.read().await;
        let ring = self.keyring();
        // What was sealed, to answer with (the store answers a put with the value it holds,
        // and opening what was just sealed would cost a second pass).
        let mut plain: Vec<(String, Bytes)> = Vec::new();
        let ops = ops
            .into_iter()
            .map(|op| match op {
                Op::Put {
                    key,
                    value,
                    condition,
                } if self.covers(&key) => {
                    let sealed = ring.seal(&key, &value);
                    plain.push((key.clone(), value));
                    Op::Put {
                        key,
                        value: sealed,
                        condition,
                    }
                }
                other => other,
            })
            .collect();
        let mut result = self
            .inner
            .txn(ops)
            .await
            .map_err(|e| self.open_error(&ring, e))?;
        // What was committed stays committed: a deleted value that does not open is reported
        // empty rather than as a failed write.
        // Results come in the order of the operations, as the plaintexts do.
        let mut plain = plain.into_iter();
        for r in &mut result.results {
            if let OpResult::Put(kv) = r
                && self.covers(&kv.key)
                && let Some((key, value)) = plain.next()
                && key == kv.key
            {
                kv.value = value;
                continue;
            }
            let kv = match r {
                OpResult::Put(kv) | OpResult::Deleted(kv) => kv,
            };
            let taken = std::mem::replace(kv, empty_kv());
            let (key, revs) = (
                taken.key.clone(),
                (taken.create_revision, taken.mod_revision, taken.version),
            );
            *kv = self.open_kv(&ring, taken).unwrap_or_else(|e| {
                tracing::error!(error = %e, "a sealed value cannot be read");
                KeyValue {
                    key,
                    value: Bytes::new(),
                    create_revision: revs.0,
                    mod_revision: revs.1,
                    version: revs.2,
                }
            });
        }
        Ok(result)
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let stream = self.inner.watch(prefix, after).await?;
        let prefixes = self.prefixes.clone();
        let keys = self.keys.clone();
        Ok(stream.map(move |batch| {
            let ring = keys.read().unwrap_or_else(|p| p.into_inner()).clone();
            // An event whose value does not open is left out (and said), not the end of the
            // watch: one lost key must not stop every watcher.
            Ok(batch
                .into_iter()
                .filter_map(|ev| match open_event(&prefixes, &ring, ev) {
                    Ok(ev) => Some(ev),
                    Err(e) => {
                        tracing::error!(error = %e, "a sealed value cannot be read; its change is left out");
                        None
                    }
                })
                .collect())
        }))
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.inner.compacted_revision().await
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.inner.health().await
    }
}

fn empty_kv() -> KeyValue {
    KeyValue {
        key: String::new(),
        value: Bytes::new(),
        create_revision: 0,
        mod_revision: 0,
        version: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Condition, MemStore};

    fn keyring(names: &[&str]) -> (Keyring, String) {
        let text: Vec<String> = names.iter().map(|n| Keyring::new_key_line(n)).collect();
        let text = text.join("\n");
        (Keyring::parse(&text).expect("a key file"), text)
    }

    #[tokio::test]
    async fn sealed_values_are_ciphertext_below_and_plain_above() {
        let raw = Arc::new(MemStore::new());
        let (ring, _) = keyring(&["k1"]);
        let s = EncryptedStore::new(raw.clone(), vec!["/secret/".into()], ring);
        s.create("/secret/a", Bytes::from_static(b"hunter2"))
            .await
            .unwrap();
        s.create("/plain/b", Bytes::from_static(b"hello"))
            .await
            .unwrap();
        let below = raw.get("/secret/a").await.unwrap().unwrap();
        assert!(below.value.starts_with(b"k8s:enc:aesgcm:v1:k1:"));
        assert!(!below.value.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(Keyring::sealed_by(&below.value), Some("k1"));
        assert_eq!(raw.get("/plain/b").await.unwrap().unwrap().value, "hello");
        assert_eq!(s.get("/secret/a").await.unwrap().unwrap().value, "hunter2");
        let (all, _) = s.list("/").await.unwrap();
        assert_eq!(
            all.iter().map(|kv| kv.value.clone()).collect::<Vec<_>>(),
            ["hello", "hunter2"]
        );
        // A conflict carries the current value, opened.
        let e = s
            .put(
                "/secret/a",
                Bytes::from_static(b"x"),
                Condition::ModRevision(99),
            )
            .await
            .unwrap_err();
        match e {
            StoreError::Conflict { current, .. } => assert_eq!(current.value, "hunter2"),
            other => panic!("{other}"),
        }
        // A value moved under another key does not open there.
        raw.create("/secret/moved", below.value.clone())
            .await
            .unwrap();
        assert!(matches!(
            s.get("/secret/moved").await,
            Err(StoreError::Corrupt(_))
        ));
    }

    #[tokio::test]
    async fn a_new_first_key_seals_and_old_keys_still_open() {
        let raw = Arc::new(MemStore::new());
        let (old, old_text) = keyring(&["k1"]);
        let s = EncryptedStore::new(raw.clone(), vec!["/s/".into()], old);
        s.create("/s/a", Bytes::from_static(b"one")).await.unwrap();
        let new_text = format!("{}\n{old_text}", Keyring::new_key_line("k2"));
        s.set_keys(Keyring::parse(&new_text).unwrap()).await;
        s.create("/s/b", Bytes::from_static(b"two")).await.unwrap();
        assert_eq!(s.get("/s/a").await.unwrap().unwrap().value, "one");
        let b = raw.get("/s/b").await.unwrap().unwrap();
        assert_eq!(Keyring::sealed_by(&b.value), Some("k2"));
        // Dropping the old key before rewriting leaves its values unreadable, loudly.
        s.set_keys(Keyring::parse(new_text.lines().next().unwrap()).unwrap())
            .await;
        assert!(matches!(s.get("/s/a").await, Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn key_files_are_checked() {
        assert!(matches!(Keyring::parse(""), Err(KeyringError::Empty)));
        assert!(matches!(
            Keyring::parse("k1 c2hvcnQ="),
            Err(KeyringError::Key(_))
        ));
        assert!(matches!(
            Keyring::parse("bad/name AAAA"),
            Err(KeyringError::Name(_))
        ));
    }

    #[tokio::test]
    async fn conformance() {
        // Every key encrypted: the wrapper must be invisible to the store's semantics.
        crate::conformance::run_all(|| async {
            let (ring, _) = keyring(&["k1"]);
            crate::conformance::Subject {
                store: Arc::new(EncryptedStore::new(
                    Arc::new(MemStore::new()),
                    vec!["/".into()],
                    ring,
                )),
                guard: Box::new(()),
            }
        })
        .await;
    }
}

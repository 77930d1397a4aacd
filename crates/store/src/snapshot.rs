//! A snapshot of a store: every live key with its value and revisions, as of one revision,
//! in a self-checking file (`berth store snapshot`/`restore`). Backend-neutral: any store can
//! be written out with `write`, and `RedbStore::restore` builds a new embedded store from one.
//!
//! Layout (little-endian): the magic line `berth-snapshot v1\n`, the revision, the number of
//! keys, then per key its length and bytes, its value's length and bytes, its create and mod
//! revisions and version; last, the SHA-256 of everything before it.

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::{KeyValue, Revision, Store, StoreError};

const MAGIC: &[u8] = b"berth-snapshot v1\n";

/// What a snapshot holds.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The store's revision when it was taken: every key is as of it.
    pub revision: Revision,
    pub kvs: Vec<KeyValue>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a berth snapshot (it does not start with {:?})", String::from_utf8_lossy(MAGIC).trim())]
    NotASnapshot,
    #[error("the snapshot is damaged: {0}")]
    Damaged(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Take a snapshot of `store`: one consistent read of every key.
pub async fn take(store: &dyn Store) -> Result<Snapshot, StoreError> {
    let (kvs, revision) = store.list("").await?;
    Ok(Snapshot { revision, kvs })
}

impl Snapshot {
    pub fn encode(&self) -> Vec<u8> {
        let size: usize = self
            .kvs
            .iter()
            .map(|kv| 8 + kv.key.len() + kv.value.len() + 24)
            .sum();
        let mut out = Vec::with_capacity(MAGIC.len() + 16 + size + 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.revision.to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for kv in &self.kvs {
            out.extend_from_slice(&(kv.key.len() as u32).to_le_bytes());
            out.extend_from_slice(kv.key.as_bytes());
            out.extend_from_slice(&(kv.value.len() as u32).to_le_bytes());
            out.extend_from_slice(&kv.value);
            out.extend_from_slice(&kv.create_revision.to_le_bytes());
            out.extend_from_slice(&kv.mod_revision.to_le_bytes());
            out.extend_from_slice(&kv.version.to_le_bytes());
        }
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        if !bytes.starts_with(MAGIC) {
            return Err(SnapshotError::NotASnapshot);
        }
        if bytes.len() < MAGIC.len() + 16 + 32 {
            return Err(SnapshotError::Damaged("it is cut short"));
        }
        let (body, digest) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(body).as_slice() != digest {
            return Err(SnapshotError::Damaged(
                "its checksum does not match its contents",
            ));
        }
        let mut r = Reader {
            bytes: body,
            at: MAGIC.len(),
        };
        let revision = r.u64()?;
        let count = r.u64()?;
        let mut kvs = Vec::with_capacity(count.min(1 << 20) as usize);
        for _ in 0..count {
            let key_len = r.u32()? as usize;
            let key = std::str::from_utf8(r.take(key_len)?)
                .map_err(|_| SnapshotError::Damaged("a key is not UTF-8"))?
                .to_string();
            let value_len = r.u32()? as usize;
            let value = Bytes::copy_from_slice(r.take(value_len)?);
            let kv = KeyValue {
                key,
                value,
                create_revision: r.u64()?,
                mod_revision: r.u64()?,
                version: r.u64()?,
            };
            if kv.mod_revision > revision || kv.create_revision > kv.mod_revision {
                return Err(SnapshotError::Damaged("a key's revisions are out of order"));
            }
            kvs.push(kv);
        }
        if r.at != body.len() {
            return Err(SnapshotError::Damaged("it has bytes after its last key"));
        }
        Ok(Snapshot { revision, kvs })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(SnapshotError::Damaged("it is cut short"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemStore;

    #[tokio::test]
    async fn a_snapshot_round_trips_and_damage_is_found() {
        let store = MemStore::new();
        store.create("/a", Bytes::from("1")).await.unwrap();
        store.create("/b", Bytes::from("2")).await.unwrap();
        store
            .put("/a", Bytes::from("3"), crate::Condition::Any)
            .await
            .unwrap();
        let snap = take(&store).await.unwrap();
        assert_eq!(snap.revision, 3);
        let bytes = snap.encode();
        assert_eq!(Snapshot::decode(&bytes).unwrap(), snap);
        // Any flipped byte, a cut, or another file is refused.
        for at in [0, MAGIC.len() + 3, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            assert!(Snapshot::decode(&bad).is_err(), "flip at {at}");
        }
        assert!(Snapshot::decode(&bytes[..bytes.len() - 10]).is_err());
        assert!(matches!(
            Snapshot::decode(b"{\"kind\": \"List\"}"),
            Err(SnapshotError::NotASnapshot)
        ));
    }
}

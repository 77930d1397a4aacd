//! A snapshot of a store: every live key with its value and revisions, as of one revision,
//! in a self-checking file (`berth store snapshot`/`restore`). Backend-neutral: any store can
//! be written out with `write`, and `RedbStore::restore` builds a new embedded store from one.
//!
//! Layout (little-endian): the magic line `berth-snapshot v1\n`, the revision, the number of
//! keys, then per key its length and bytes, its value's length and bytes, its create and mod
//! revisions and version; last, the SHA-256 of everything before it. Written and read in
//! pieces, so a snapshot of a large store costs one copy of its keys in memory, not three.

use std::io::Read;

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
    #[error("reading the snapshot")]
    Io(#[from] std::io::Error),
}

/// Take a snapshot of `store`: one consistent read of every key.
pub async fn take(store: &dyn Store) -> Result<Snapshot, StoreError> {
    let (kvs, revision) = store.list("").await?;
    Ok(Snapshot { revision, kvs })
}

impl Snapshot {
    /// The size of the encoding, in bytes.
    pub fn encoded_len(&self) -> u64 {
        let keys: usize = self
            .kvs
            .iter()
            .map(|kv| 4 + kv.key.len() + 4 + kv.value.len() + 24)
            .sum();
        (MAGIC.len() + 16 + keys + 32) as u64
    }

    /// The encoding in pieces of about `piece` bytes (the SHA-256 ends the last), so that a
    /// large snapshot goes out without a second copy of it in memory.
    pub fn encode_pieces(&self, piece: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
        let mut hasher = Some(Sha256::new());
        let mut kvs = self.kvs.iter().peekable();
        let mut head = true;
        std::iter::from_fn(move || {
            let hash = hasher.as_mut()?;
            let mut out = Vec::with_capacity(piece.min(1 << 20) + 64);
            if std::mem::take(&mut head) {
                out.extend_from_slice(MAGIC);
                out.extend_from_slice(&self.revision.to_le_bytes());
                out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
            }
            while out.len() < piece {
                let Some(kv) = kvs.next() else { break };
                out.extend_from_slice(&(kv.key.len() as u32).to_le_bytes());
                out.extend_from_slice(kv.key.as_bytes());
                out.extend_from_slice(&(kv.value.len() as u32).to_le_bytes());
                out.extend_from_slice(&kv.value);
                out.extend_from_slice(&kv.create_revision.to_le_bytes());
                out.extend_from_slice(&kv.mod_revision.to_le_bytes());
                out.extend_from_slice(&kv.version.to_le_bytes());
            }
            hash.update(&out);
            if kvs.peek().is_none() {
                let digest = hasher.take().expect("checked above").finalize();
                out.extend_from_slice(&digest);
            }
            Some(out)
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len() as usize);
        for piece in self.encode_pieces(1 << 20) {
            out.extend_from_slice(&piece);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        Snapshot::decode_from(bytes)
    }

    /// Read a whole snapshot from `r`.
    pub fn decode_from(r: impl Read) -> Result<Snapshot, SnapshotError> {
        let mut kvs = Vec::new();
        let revision = read(r, |kv| kvs.push(kv))?;
        Ok(Snapshot { revision, kvs })
    }
}

/// Read a snapshot from `r`, handing each key to `each` as it comes, and check it whole (the
/// digest, nothing after it); returns its revision. Nothing read is trusted before the digest
/// is: a caller that keeps keys must drop them on an error.
pub fn read(r: impl Read, mut each: impl FnMut(KeyValue)) -> Result<Revision, SnapshotError> {
    let mut r = Hashing {
        inner: std::io::BufReader::with_capacity(1 << 16, r),
        hasher: Sha256::new(),
    };
    let mut magic = [0; MAGIC.len()];
    match r.inner.read_exact(&mut magic) {
        Ok(()) if magic == MAGIC => r.hasher.update(MAGIC),
        _ => return Err(SnapshotError::NotASnapshot),
    }
    let revision = r.u64()?;
    let count = r.u64()?;
    for _ in 0..count {
        let key_len = r.u32()?;
        let key = String::from_utf8(r.bytes(key_len)?)
            .map_err(|_| SnapshotError::Damaged("a key is not UTF-8"))?;
        let value_len = r.u32()?;
        let value = Bytes::from(r.bytes(value_len)?);
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
        each(kv);
    }
    let mut digest = [0; 32];
    r.inner.read_exact(&mut digest).map_err(cut_short)?;
    if r.hasher.finalize().as_slice() != digest {
        return Err(SnapshotError::Damaged(
            "its checksum does not match its contents",
        ));
    }
    if r.inner.read(&mut [0])? != 0 {
        return Err(SnapshotError::Damaged("it has bytes after its last key"));
    }
    Ok(revision)
}

fn cut_short(e: std::io::Error) -> SnapshotError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        SnapshotError::Damaged("it is cut short")
    } else {
        SnapshotError::Io(e)
    }
}

/// A reader that hashes what it hands out.
struct Hashing<R> {
    inner: std::io::BufReader<R>,
    hasher: Sha256,
}

impl<R: Read> Hashing<R> {
    fn exact<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut buf = [0; N];
        self.inner.read_exact(&mut buf).map_err(cut_short)?;
        self.hasher.update(buf);
        Ok(buf)
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.exact()?))
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.exact()?))
    }

    /// `n` bytes; a damaged length cannot make it allocate more than the input holds.
    fn bytes(&mut self, n: u32) -> Result<Vec<u8>, SnapshotError> {
        let mut out = Vec::new();
        (&mut self.inner)
            .take(u64::from(n))
            .read_to_end(&mut out)
            .map_err(cut_short)?;
        if out.len() != n as usize {
            return Err(SnapshotError::Damaged("it is cut short"));
        }
        self.hasher.update(&out);
        Ok(out)
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
        assert_eq!(bytes.len() as u64, snap.encoded_len());
        assert_eq!(Snapshot::decode(&bytes).unwrap(), snap);
        // In pieces, the same bytes.
        for piece in [1, 7, 64] {
            let pieces: Vec<u8> = snap.encode_pieces(piece).flatten().collect();
            assert_eq!(pieces, bytes, "pieces of {piece}");
        }
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

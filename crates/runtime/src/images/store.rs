//! The image store on disk:
//!
//! ```text
//! <root>/blobs/sha256/<hex>   manifests, configs and layer blobs, as pulled or imported
//! <root>/l/<hex[..20]>/       each layer unpacked once (by diffID), shared by every container
//! <root>/index.json           images: names, manifest, config, layers
//! <root>/tmp/                 partial downloads and unpacks, renamed into place when whole
//! <root>/lock                 serializes writers across processes (agent and CLI)
//! ```
//!
//! Blobs are verified against their digest before they are kept; layers against the diffIDs
//! the image config lists. Nothing half-written is ever visible under its final name.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use oci_spec::image::{ImageConfiguration, ImageManifest};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use super::digest::{BadDigest, Digest, HashingWriter};
use super::unpack::{self, UnpackError};
use super::{Progress, ProgressEvent};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image store IO on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("layer {layer} unpacks to {actual}, but the image config says {expected}")]
    DiffIdMismatch {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("unpacking layer {0}")]
    Unpack(Digest, #[source] UnpackError),
    #[error(transparent)]
    BadDigest(#[from] BadDigest),
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("blob {0} is missing")]
    MissingBlob(Digest),
    #[error("no image matches {0:?}")]
    NotFound(String),
    #[error("invalid image reference {0:?}: {1}")]
    BadReference(String, String),
}

impl StoreError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What a container needs to know from an image's config.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RunConfig {
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub user: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LayerRef {
    pub digest: Digest,
    pub diff_id: Digest,
    pub media_type: String,
    pub size: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Image {
    /// The config digest, like `docker images` shows.
    pub id: Digest,
    /// Full references: `docker.io/library/busybox:1.36`.
    pub names: Vec<String>,
    /// `repository@sha256:<manifest>`, what Kubernetes reports as a container's imageID.
    pub repo_digests: Vec<String>,
    pub manifest: Digest,
    pub layers: Vec<LayerRef>,
    /// Bytes on disk for the blobs (what a pull downloads).
    pub size: u64,
    pub config: RunConfig,
    /// When this store got it (RFC 3339).
    pub added: String,
    /// Kept whatever the disk pressure: images a user imported by hand (there may be no
    /// registry to pull them from again), like the airgap images k3s pins.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
}

#[derive(Default, Serialize, Deserialize)]
struct Index {
    images: Vec<Image>,
}

/// Normalize a reference the way Docker does (`busybox` -> `docker.io/library/busybox:latest`).
pub fn normalize(reference: &str) -> Result<String, StoreError> {
    oci_client::Reference::try_from(reference)
        .map(|r| r.whole())
        .map_err(|e| StoreError::BadReference(reference.to_string(), e.to_string()))
}

/// `docker.io/library/busybox:1.36` -> `docker.io/library/busybox`.
pub fn repository_of(normalized: &str) -> String {
    match oci_client::Reference::try_from(normalized) {
        Ok(r) => format!("{}/{}", r.resolve_registry(), r.repository()),
        Err(_) => normalized.to_string(),
    }
}

pub struct ImageStore {
    root: PathBuf,
    /// In-process writers; `lock` serializes against other processes.
    guard: Mutex<()>,
}

/// An exclusive lock on the store's index, held while it changes.
struct Locked<'a> {
    file: File,
    _guard: std::sync::MutexGuard<'a, ()>,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // SAFETY: the fd is open for the lifetime of `file`.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl ImageStore {
    pub fn open(root: &Path) -> Result<ImageStore, StoreError> {
        for d in ["blobs/sha256", "l", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(StoreError::io(&p))?;
        }
        Ok(ImageStore {
            root: root.to_path_buf(),
            guard: Mutex::new(()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock(&self) -> Result<Locked<'_>, StoreError> {
        let guard = self.guard.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(StoreError::io(&path))?;
        // SAFETY: the fd is valid; flock blocks until the lock is ours.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(StoreError::io(&path)(io::Error::last_os_error()));
        }
        Ok(Locked {
            file,
            _guard: guard,
        })
    }

    fn read_index(&self) -> Result<Index, StoreError> {
        let path = self.root.join("index.json");
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StoreError::Malformed {
                what: "image index",
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(StoreError::io(&path)(e)),
        }
    }

    fn write_index(&self, index: &Index) -> Result<(), StoreError> {
        let path = self.root.join("index.json");
        let tmp = self.root.join("tmp/index.json");
        let bytes = serde_json::to_vec_pretty(index).map_err(|e| StoreError::Malformed {
            what: "image index",
            detail: e.to_string(),
        })?;
        write_synced(&tmp, &bytes).map_err(StoreError::io(&tmp))?;
        fs::rename(&tmp, &path).map_err(StoreError::io(&path))
    }

    pub fn list(&self) -> Result<Vec<Image>, StoreError> {
        Ok(self.read_index()?.images)
    }

    /// Find an image by name (normalized), repo digest, or ID (full or a prefix of 12+).
    pub fn resolve(&self, reference: &str) -> Result<Option<Image>, StoreError> {
        let images = self.list()?;
        let id = reference.trim_start_matches("sha256:");
        if id.len() >= 12
            && id.bytes().all(|b| b.is_ascii_hexdigit())
            && let Some(i) = images.iter().find(|i| i.id.hex().starts_with(id))
        {
            return Ok(Some(i.clone()));
        }
        let name = normalize(reference)?;
        Ok(images
            .into_iter()
            .find(|i| i.names.contains(&name) || i.repo_digests.contains(&name)))
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).exists()
    }

    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let p = self.blob_path(d);
        fs::read(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::MissingBlob(d.clone())
            } else {
                StoreError::io(&p)(e)
            }
        })
    }

    /// A temporary file for content on its way in.
    pub fn temp_file(&self, hint: &str) -> Result<(PathBuf, File), StoreError> {
        let p = self.root.join("tmp").join(format!(
            "{hint}-{}-{}",
            std::process::id(),
            fastrand_suffix()
        ));
        let f = File::create(&p).map_err(StoreError::io(&p))?;
        Ok((p, f))
    }

    /// Store `content` as a blob, verifying it against `expected` when given.
    pub fn write_blob(
        &self,
        mut content: impl Read,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64), StoreError> {
        let (tmp, f) = self.temp_file("blob")?;
        let mut w = HashingWriter::new(io::BufWriter::with_capacity(256 * 1024, f));
        io::copy(&mut content, &mut w).map_err(StoreError::io(&tmp))?;
        let size = w.count;
        let (buf, actual) = w.finish();
        let f = buf
            .into_inner()
            .map_err(|e| StoreError::io(&tmp)(e.into_error()))?;
        self.keep_blob(tmp, f, actual, size, expected)
    }

    /// Move a fully written temporary file into the blob store, once verified.
    pub fn keep_blob(
        &self,
        tmp: PathBuf,
        file: File,
        actual: Digest,
        size: u64,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64), StoreError> {
        if let Some(e) = expected
            && *e != actual
        {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::DigestMismatch {
                expected: e.clone(),
                actual,
            });
        }
        file.sync_all().map_err(StoreError::io(&tmp))?;
        let dest = self.blob_path(&actual);
        fs::rename(&tmp, &dest).map_err(StoreError::io(&dest))?;
        Ok((actual, size))
    }

    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        // Short names keep overlayfs' mount options (one page) roomy for deep images.
        self.root.join("l").join(&diff_id.hex()[..20])
    }

    /// Unpack a layer once; later calls return the existing directory.
    pub fn ensure_unpacked(
        &self,
        layer: &LayerRef,
        progress: &dyn Progress,
    ) -> Result<PathBuf, StoreError> {
        let dest = self.layer_dir(&layer.diff_id);
        if dest.exists() {
            return Ok(dest);
        }
        progress.event(ProgressEvent::Unpacking {
            digest: layer.digest.clone(),
        });
        let blob = self.blob_path(&layer.digest);
        let f = File::open(&blob).map_err(|_| StoreError::MissingBlob(layer.digest.clone()))?;
        let tmp = self.root.join("tmp").join(format!(
            "unpack-{}-{}",
            std::process::id(),
            fastrand_suffix()
        ));
        let out = unpack::unpack_layer(io::BufReader::new(f), &tmp).map_err(|e| {
            let _ = fs::remove_dir_all(&tmp);
            StoreError::Unpack(layer.digest.clone(), e)
        })?;
        if out.diff_id != layer.diff_id {
            let _ = fs::remove_dir_all(&tmp);
            return Err(StoreError::DiffIdMismatch {
                layer: layer.digest.clone(),
                expected: layer.diff_id.clone(),
                actual: out.diff_id,
            });
        }
        match fs::rename(&tmp, &dest) {
            Ok(()) => {}
            // Another process unpacked the same layer meanwhile; keep theirs.
            Err(_) if dest.exists() => {
                let _ = fs::remove_dir_all(&tmp);
            }
            Err(e) => return Err(StoreError::io(&dest)(e)),
        }
        debug!(layer = %layer.digest, bytes = out.bytes, "layer unpacked");
        Ok(dest)
    }

    /// Record an image whose manifest, config and layer blobs are all in the store, unpacking
    /// its layers. `names` become its names (taken away from any other image); a `pinned`
    /// image is never garbage collected.
    pub fn add_image(
        &self,
        manifest_digest: &Digest,
        names: &[String],
        pinned: bool,
        progress: &dyn Progress,
    ) -> Result<Image, StoreError> {
        let manifest: ImageManifest = serde_json::from_slice(&self.read_blob(manifest_digest)?)
            .map_err(|e| StoreError::Malformed {
                what: "image manifest",
                detail: e.to_string(),
            })?;
        let config_digest = Digest::parse(manifest.config().digest().as_ref())?;
        let config_bytes = self.read_blob(&config_digest)?;
        let config: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|e| StoreError::Malformed {
                what: "image config",
                detail: e.to_string(),
            })?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(StoreError::Malformed {
                what: "image",
                detail: format!(
                    "{} layers but {} diffIDs in the config",
                    manifest.layers().len(),
                    diff_ids.len()
                ),
            });
        }
        let mut layers = Vec::new();
        let mut size = config_bytes.len() as u64;
        for (l, diff) in manifest.layers().iter().zip(diff_ids) {
            let layer = LayerRef {
                digest: Digest::parse(l.digest().as_ref())?,
                diff_id: Digest::parse(diff)?,
                media_type: l.media_type().to_string(),
                size: l.size(),
            };
            size += layer.size;
            self.ensure_unpacked(&layer, progress)?;
            layers.push(layer);
        }
        let run = config.config().as_ref();
        let image = Image {
            id: config_digest,
            names: Vec::new(),
            repo_digests: Vec::new(),
            manifest: manifest_digest.clone(),
            layers,
            size,
            config: RunConfig {
                entrypoint: run.and_then(|c| c.entrypoint().clone()).unwrap_or_default(),
                cmd: run.and_then(|c| c.cmd().clone()).unwrap_or_default(),
                env: run.and_then(|c| c.env().clone()).unwrap_or_default(),
                working_dir: run
                    .and_then(|c| c.working_dir().clone())
                    .unwrap_or_default(),
                user: run.and_then(|c| c.user().clone()).unwrap_or_default(),
            },
            added: jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string(),
            pinned,
        };
        self.record(image, names)
    }

    fn record(&self, mut image: Image, names: &[String]) -> Result<Image, StoreError> {
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        for other in &mut index.images {
            other.names.retain(|n| !names.contains(n));
        }
        let repo_digests: Vec<String> = names
            .iter()
            .map(|n| format!("{}@{}", repository_of(n), image.manifest))
            .collect();
        if let Some(existing) = index.images.iter_mut().find(|i| i.id == image.id) {
            existing.pinned |= image.pinned;
            for n in names {
                if !existing.names.contains(n) {
                    existing.names.push(n.clone());
                }
            }
            for r in repo_digests {
                if !existing.repo_digests.contains(&r) {
                    existing.repo_digests.push(r);
                }
            }
            image = existing.clone();
        } else {
            image.names = names.to_vec();
            image.repo_digests = repo_digests;
            index.images.push(image.clone());
        }
        index
            .images
            .retain(|i| !i.names.is_empty() || i.id == image.id);
        self.write_index(&index)?;
        info!(id = image.id.short(), names = ?image.names, "image stored");
        Ok(image)
    }

    /// Give the image `source` names (a reference or an ID) the name `target` too, as
    /// `docker tag` does; a name belongs to one image, so any other loses it.
    pub fn tag(&self, source: &str, target: &str) -> Result<Image, StoreError> {
        let image = self
            .resolve(source)?
            .ok_or_else(|| StoreError::NotFound(source.to_string()))?;
        let name = normalize(target)?;
        self.record(image, &[name])
    }

    /// Pin an image (garbage collection keeps it) or unpin it. Returns the image as it is now.
    pub fn set_pinned(&self, reference: &str, pinned: bool) -> Result<Image, StoreError> {
        let target = self
            .resolve(reference)?
            .ok_or_else(|| StoreError::NotFound(reference.to_string()))?;
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let Some(image) = index.images.iter_mut().find(|i| i.id == target.id) else {
            return Err(StoreError::NotFound(reference.to_string()));
        };
        image.pinned = pinned;
        let image = image.clone();
        self.write_index(&index)?;
        Ok(image)
    }

    /// Remove a name, or by ID the whole image. Returns the images removed entirely.
    pub fn remove(&self, reference: &str) -> Result<Vec<Image>, StoreError> {
        let target = self
            .resolve(reference)?
            .ok_or_else(|| StoreError::NotFound(reference.to_string()))?;
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let by_id = reference.trim_start_matches("sha256:").len() >= 12
            && target
                .id
                .hex()
                .starts_with(reference.trim_start_matches("sha256:"));
        let name = normalize(reference).ok();
        let mut removed = Vec::new();
        index.images.retain_mut(|i| {
            if i.id != target.id {
                return true;
            }
            if !by_id && let Some(n) = &name {
                i.names.retain(|x| x != n);
                i.repo_digests.retain(|x| x != n);
                if !i.names.is_empty() {
                    return true;
                }
            }
            removed.push(i.clone());
            false
        });
        self.write_index(&index)?;
        Ok(removed)
    }

    /// Delete blobs and layers no image references and no mounted filesystem uses. Returns
    /// the bytes freed.
    pub fn collect_garbage(&self) -> Result<u64, StoreError> {
        let _lock = self.lock()?;
        let index = self.read_index()?;
        let mut blobs: HashSet<String> = HashSet::new();
        let mut layers: HashSet<String> = HashSet::new();
        for i in &index.images {
            blobs.insert(i.manifest.hex().to_string());
            blobs.insert(i.id.hex().to_string());
            for l in &i.layers {
                blobs.insert(l.digest.hex().to_string());
                layers.insert(self.layer_dir(&l.diff_id).to_string_lossy().into_owned());
            }
        }
        let mounted = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut freed = 0;
        let blob_dir = self.root.join("blobs/sha256");
        for e in fs::read_dir(&blob_dir)
            .map_err(StoreError::io(&blob_dir))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !blobs.contains(&name) {
                freed += e.metadata().map(|m| m.len()).unwrap_or(0);
                let _ = fs::remove_file(e.path());
            }
        }
        let layer_root = self.root.join("l");
        for e in fs::read_dir(&layer_root)
            .map_err(StoreError::io(&layer_root))?
            .flatten()
        {
            let path = e.path().to_string_lossy().into_owned();
            if !layers.contains(&path) && !mounted.contains(&path) {
                freed += dir_size(&e.path());
                let _ = fs::remove_dir_all(e.path());
            }
        }
        // Leftovers of interrupted downloads and unpacks.
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(StoreError::io(&tmp))?.flatten() {
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 3600));
            if stale {
                let _ = fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
            }
        }
        Ok(freed)
    }

    /// The unpacked layer directories of an image, lowest first.
    pub fn layer_dirs(&self, image: &Image) -> Vec<PathBuf> {
        image
            .layers
            .iter()
            .map(|l| self.layer_dir(&l.diff_id))
            .collect()
    }
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                Err(_) => {}
            }
        }
    }
    total
}

pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn fastrand_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{nanos:x}{:x}",
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

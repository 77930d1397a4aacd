//! Pulling images from OCI/Docker registries (the Distribution API): manifests and indexes
//! (choosing this machine's platform), configs and layers, each verified against its digest
//! before it is kept. Anonymous, basic and bearer-token access; plain HTTP only for localhost
//! and registries the operator lists as insecure.

use std::io::Write;
use std::sync::Arc;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use tracing::{debug, warn};

use super::digest::{Digest, HashingWriter};
use super::registries::Registries;
use super::store::{Image, ImageStore, StoreError};
use super::{Progress, ProgressEvent, platform_matches};

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("invalid image reference {0:?}")]
    BadReference(String, #[source] oci_client::ParseError),
    #[error("{reference}: {message}")]
    Registry { reference: String, message: String },
    #[error("{reference}: manifest unknown (the image or tag does not exist)")]
    NotFound { reference: String },
    #[error("{reference}: access denied (missing or wrong credentials)")]
    Unauthorized { reference: String },
    #[error("{reference}: blob {digest} does not match its digest ({detail})")]
    Corrupt {
        reference: String,
        digest: String,
        detail: String,
    },
    #[error("{reference}: no image for linux/{arch} in the index")]
    NoPlatform {
        reference: String,
        arch: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where and how to pull.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// Registries (`host:port`) reached over plain HTTP besides localhost.
    pub insecure: Vec<String>,
    /// Credentials for the image's registry.
    pub auth: Option<Credentials>,
    /// Mirrors, rewrites and per-registry settings (`registries.yaml`).
    pub registries: Registries,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({})", self.username)
    }
}

const MANIFEST_TYPES: &[&str] = &[
    OCI_IMAGE_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

fn is_local(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    host == "localhost" || host == "127.0.0.1" || host == "[::1]" || host.starts_with("127.")
}

pub struct Puller {
    store: Arc<ImageStore>,
}

impl Puller {
    pub fn new(store: Arc<ImageStore>) -> Puller {
        // The registry client's TLS needs a process-wide crypto provider; ring is ours.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Puller { store }
    }

    /// Pull `reference` into the store and return the image.
    pub async fn pull(
        &self,
        reference: &str,
        opts: &PullOptions,
        progress: &dyn Progress,
    ) -> Result<Image, PullError> {
        let r = Reference::try_from(reference)
            .map_err(|e| PullError::BadReference(reference.to_string(), e))?;
        let whole = r.whole();
        let (registry, repository, suffix) = parts(&r);
        let plain_http = is_local(&registry) || opts.insecure.contains(&registry);
        let sources = opts
            .registries
            .sources(&registry, &repository, &suffix, plain_http);
        let mut last = None;
        for source in sources {
            let at = Reference::try_from(source.reference.as_str())
                .map_err(|e| PullError::BadReference(source.reference.clone(), e))?;
            let mut config = ClientConfig {
                protocol: if source.http || is_local(&source.registry) {
                    ClientProtocol::Http
                } else {
                    ClientProtocol::Https
                },
                accept_invalid_certificates: source.tls.insecure_skip_verify,
                ..Default::default()
            };
            if let Some(ca) = &source.tls.ca_file {
                match std::fs::read(ca) {
                    Ok(data) => {
                        config
                            .extra_root_certificates
                            .push(oci_client::client::Certificate {
                                encoding: oci_client::client::CertificateEncoding::Pem,
                                data,
                            })
                    }
                    Err(e) => {
                        let e = PullError::Registry {
                            reference: source.reference.clone(),
                            message: format!("reading the CA file {}: {e}", ca.display()),
                        };
                        if !source.mirror {
                            return Err(e);
                        }
                        warn!(image = %whole, mirror = %source.registry, error = %e, "a mirror could not serve the image; trying the next source");
                        last = Some(e);
                        continue;
                    }
                }
            }
            if source.tls.cert_file.is_some() {
                warn!(registry = %source.registry, "client certificates for registries are not supported; pulling without one");
            }
            let client = Client::new(config);
            let creds = if source.mirror {
                source.auth.as_ref()
            } else {
                opts.auth.as_ref().or(source.auth.as_ref())
            };
            let auth = match creds {
                Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
                None => RegistryAuth::Anonymous,
            };
            match self.pull_from(&at, &whole, &client, &auth, progress).await {
                Ok(image) => return Ok(image),
                Err(e) if source.mirror => {
                    warn!(image = %whole, mirror = %source.registry, error = %e, "a mirror could not serve the image; trying the next source");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(PullError::NotFound { reference: whole }))
    }

    /// Pull the image at `r` (a mirror's, or the registry's own), stored as `name`.
    async fn pull_from(
        &self,
        r: &Reference,
        name: &str,
        client: &Client,
        auth: &RegistryAuth,
        progress: &dyn Progress,
    ) -> Result<Image, PullError> {
        let whole = r.whole();
        let fail = |e: oci_client::errors::OciDistributionError| classify(&whole, e);
        let (bytes, _) = client
            .pull_manifest_raw(r, auth, MANIFEST_TYPES)
            .await
            .map_err(fail)?;
        let mut manifest_bytes = bytes.to_vec();
        let mut digest = Digest::of(&manifest_bytes);
        if let Some(want) = r.digest()
            && want != digest.as_str()
        {
            return Err(PullError::Store(StoreError::DigestMismatch {
                expected: Digest::parse(want).map_err(StoreError::from)?,
                actual: digest,
            }));
        }
        let kind = media_type(&manifest_bytes);
        if kind == OCI_IMAGE_INDEX_MEDIA_TYPE || kind == IMAGE_MANIFEST_LIST_MEDIA_TYPE {
            let index: ImageIndex =
                serde_json::from_slice(&manifest_bytes).map_err(|e| malformed("image index", e))?;
            let pick = index
                .manifests()
                .iter()
                .find(|m| platform_matches(m.platform().as_ref()))
                .ok_or(PullError::NoPlatform {
                    reference: whole.clone(),
                    arch: super::host_arch(),
                })?;
            let chosen = Digest::parse(pick.digest().as_ref()).map_err(StoreError::from)?;
            let by_digest = r.clone_with_digest(chosen.to_string());
            let (bytes, _) = client
                .pull_manifest_raw(&by_digest, auth, MANIFEST_TYPES)
                .await
                .map_err(fail)?;
            manifest_bytes = bytes.to_vec();
            digest = Digest::of(&manifest_bytes);
            if digest != chosen {
                return Err(PullError::Store(StoreError::DigestMismatch {
                    expected: chosen,
                    actual: digest,
                }));
            }
        }
        self.store
            .write_blob(std::io::Cursor::new(&manifest_bytes), Some(&digest))?;
        let manifest: ImageManifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| malformed("image manifest", e))?;
        self.fetch(client, r, manifest.config(), progress).await?;
        for layer in manifest.layers() {
            self.fetch(client, r, layer, progress).await?;
        }
        let store = self.store.clone();
        let names = vec![name.to_string()];
        // Unpacking is disk work; keep it off the async threads.
        let image =
            tokio::task::block_in_place(|| store.add_image(&digest, &names, false, progress))?;
        Ok(image)
    }

    /// Download one blob unless it is here already, verifying its digest.
    async fn fetch(
        &self,
        client: &Client,
        r: &Reference,
        d: &Descriptor,
        progress: &dyn Progress,
    ) -> Result<(), PullError> {
        let digest = Digest::parse(d.digest().as_ref()).map_err(StoreError::from)?;
        if self.store.has_blob(&digest) {
            progress.event(ProgressEvent::Exists { digest });
            return Ok(());
        }
        progress.event(ProgressEvent::Blob {
            digest: digest.clone(),
            total: Some(d.size()),
        });
        let desc = oci_client::manifest::OciDescriptor {
            media_type: d.media_type().to_string(),
            digest: digest.to_string(),
            size: d.size() as i64,
            ..Default::default()
        };
        let mut stream = client
            .pull_blob_stream(r, &desc)
            .await
            .map_err(|e| classify(&r.whole(), e))?;
        let (tmp, file) = self.store.temp_file("pull")?;
        let mut w = HashingWriter::new(std::io::BufWriter::with_capacity(256 * 1024, file));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                let detail = e.to_string();
                if detail.to_lowercase().contains("digest") {
                    PullError::Corrupt {
                        reference: r.whole(),
                        digest: digest.to_string(),
                        detail,
                    }
                } else {
                    PullError::Registry {
                        reference: r.whole(),
                        message: format!("downloading {digest}: {detail}"),
                    }
                }
            })?;
            w.write_all(&chunk).map_err(|e| StoreError::Io {
                path: tmp.clone(),
                source: e,
            })?;
            progress.event(ProgressEvent::Advance {
                digest: digest.clone(),
                bytes: chunk.len() as u64,
            });
        }
        let size = w.count;
        let (buf, actual) = w.finish();
        let file = buf.into_inner().map_err(|e| StoreError::Io {
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        self.store
            .keep_blob(tmp, file, actual, size, Some(&digest))?;
        debug!(%digest, size, "blob pulled");
        Ok(())
    }
}

/// A reference's registry as written (`docker.io`, the name mirrors are configured under,
/// not the host it resolves to), its repository, and its `:tag` and/or `@digest`.
fn parts(r: &Reference) -> (String, String, String) {
    let mut suffix = String::new();
    if let Some(t) = r.tag() {
        suffix = format!(":{t}");
    }
    if let Some(d) = r.digest() {
        suffix.push_str(&format!("@{d}"));
    }
    (r.registry().to_string(), r.repository().to_string(), suffix)
}

fn media_type(manifest: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(manifest)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_string))
        .unwrap_or_else(|| {
            // Without a mediaType, an index has "manifests" and a manifest has "layers".
            if String::from_utf8_lossy(manifest).contains("\"manifests\"") {
                OCI_IMAGE_INDEX_MEDIA_TYPE.to_string()
            } else {
                OCI_IMAGE_MEDIA_TYPE.to_string()
            }
        })
}

fn malformed(what: &'static str, e: impl ToString) -> PullError {
    PullError::Store(StoreError::Malformed {
        what,
        detail: e.to_string(),
    })
}

fn classify(reference: &str, e: oci_client::errors::OciDistributionError) -> PullError {
    use oci_client::errors::OciDistributionError as E;
    let message = e.to_string();
    match &e {
        E::ImageManifestNotFoundError(_) => PullError::NotFound {
            reference: reference.to_string(),
        },
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => PullError::Unauthorized {
            reference: reference.to_string(),
        },
        _ if [
            "manifest unknown",
            "name unknown",
            "manifest_unknown",
            "name_unknown",
            "404 not found",
        ]
        .iter()
        .any(|m| message.to_lowercase().contains(m)) =>
        {
            PullError::NotFound {
                reference: reference.to_string(),
            }
        }
        _ => PullError::Registry {
            reference: reference.to_string(),
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn docker_hub_images_are_looked_up_as_docker_io() {
        let r = Reference::try_from("busybox:1.36").unwrap();
        assert_eq!(
            parts(&r),
            (
                "docker.io".to_string(),
                "library/busybox".to_string(),
                ":1.36".to_string()
            )
        );
        let r = Reference::try_from(
            "ghcr.io/o/app@sha256:0123456789012345678901234567890123456789012345678901234567890123",
        )
        .unwrap();
        let (registry, repo, suffix) = parts(&r);
        assert_eq!((registry.as_str(), repo.as_str()), ("ghcr.io", "o/app"));
        assert!(suffix.starts_with("@sha256:"));
    }
}

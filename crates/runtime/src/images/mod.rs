//! OCI images: a content-addressed store, unpacked layers shared by every container, import of
//! image archives and pulls from registries.

pub mod digest;
mod import;
mod pull;
pub mod registries;
mod store;
mod unpack;

pub use digest::Digest;
pub use import::import;
pub use pull::{Credentials, PullError, PullOptions, Puller};
pub use registries::Registries;
pub use store::{Image, ImageStore, LayerRef, RunConfig, StoreError, normalize, repository_of};
pub use unpack::{UnpackError, unpack_layer};

/// What a long operation reports as it goes (pulls, imports), for progress bars.
#[derive(Clone, Debug)]
pub enum ProgressEvent {
    /// A blob starts coming in.
    Blob { digest: Digest, total: Option<u64> },
    /// More bytes of a blob arrived.
    Advance { digest: Digest, bytes: u64 },
    /// A blob was already present.
    Exists { digest: Digest },
    /// A layer is being unpacked.
    Unpacking { digest: Digest },
}

pub trait Progress: Send + Sync {
    fn event(&self, e: ProgressEvent);
}

/// Reports nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn event(&self, _: ProgressEvent) {}
}

/// This machine's architecture in OCI terms.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Whether an index entry's platform can run here (an entry without one is taken).
pub(crate) fn platform_matches(p: Option<&oci_spec::image::Platform>) -> bool {
    let Some(p) = p else { return true };
    p.os().to_string() == "linux" && p.architecture().to_string() == host_arch()
}

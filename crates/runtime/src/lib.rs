//! The node's runtime: OCI images (store, pull, import, unpack) and containers (bundles, OCI
//! runtimes, the per-container shim).

pub mod containers;
pub mod images;

//! Containers: OCI runtime configurations, pod sandboxes, root filesystems, the shim and the
//! runtime driver.

pub mod mount;
pub mod oci;
pub mod sandbox;
pub mod shim;
pub mod spec;

pub use oci::{OciConfig, OciRuntime, RuntimeError, Started};
pub use shim::{ShimArgs, ShimStatus};
pub use spec::{ContainerSpec, MountSpec, Resources, Security, SharedNamespaces};

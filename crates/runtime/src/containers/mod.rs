//! Containers: OCI runtime configurations, pod sandboxes, root filesystems, the shim and the
//! runtime driver.

pub mod attach;
pub mod conformance;
pub mod exec;
pub mod host;
pub mod mount;
pub mod oci;
pub mod sandbox;
pub mod seccomp;
pub mod shim;
pub mod spec;
mod traits;
pub mod youki;

pub use attach::{AttachInput, AttachOutput, Attachment, Frame};
pub use exec::{ExecProcess, ExecSpec};
pub use oci::{Engine, OciConfig, OciRuntime, RuntimeError, Started};
pub use sandbox::{Isolation, NamespacePaths};
pub use seccomp::Seccomp;
pub use shim::{ShimArgs, ShimStatus};
pub use spec::{ContainerSpec, DeviceSpec, MountSpec, Resources, Security, SharedNamespaces};
pub use traits::{ContainerRuntime, FakeBehavior, FakeExec, FakeRuntime};

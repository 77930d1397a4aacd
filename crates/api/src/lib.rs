//! Kubernetes' API objects and the pure logic around them: which resources exist, how objects
//! are defaulted and validated, selectors, quantities, cron schedules and patches. No IO, no
//! async: everything here is plain data in, plain data out.

pub mod cidr;
pub mod cron;
pub mod custom;
pub mod errors;
pub mod events;
pub mod jsontext;
pub mod kinds;
pub mod names;
pub mod patch;
pub mod podsecurity;
pub mod proto;
pub mod quantity;
pub mod quota;
pub mod rbac;
pub mod resources;
pub mod selector;
pub mod versions;
pub mod wire;

pub use k8s_openapi;
pub use resources::{Registry, Resource};

/// The Kubernetes version whose API berth serves.
pub const KUBERNETES_VERSION: (u32, u32, u32) = (1, 33, 0);

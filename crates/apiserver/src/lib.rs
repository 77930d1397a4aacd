//! The Kubernetes API server: routes, wire encodings (JSON, Tables, watch streams,
//! discovery, OpenAPI), the watch cache every read is served from, patches, admission and
//! authentication and authorization (RBAC). Only this crate touches the store.

mod admission;
mod aggregation;
mod alloc;
pub mod audit;
pub mod auth;
mod binding;
pub mod body;
pub mod cache;
mod certificates;
mod conversion;
mod crds;
mod discovery;
pub mod errors;
mod evict;
pub mod http;
pub mod limits;
mod metrics;
mod node;
mod openapi;
mod podsecurity;
mod policies;
mod proxy;
mod read;
#[cfg(test)]
mod registry_check;
mod request;
mod server;
pub mod table;
mod telemetry;
mod views;
mod webhooks;
mod write;

pub use body::Body;
pub use node::{AgentClient, DEFAULT_AGENT_PORT, NodeConnector, NodeTarget};
pub use server::{ApiServer, Config, FrontProxy, Identity, KeyRotation, git_version};

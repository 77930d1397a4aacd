//! Reconcilers: each watches the objects it cares about and, level-triggered and idempotent,
//! moves the cluster toward what those objects say.

pub mod namespace;
mod queue;
pub mod scheduling;

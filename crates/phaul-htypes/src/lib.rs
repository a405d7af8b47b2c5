//! What phaul migrates ("htypes", after P.Haul's name for them).
//!
//! **Status: skeleton.** Each htype will be a trait object from a registry
//! that says how to find, freeze, dump and restore one kind of thing: a
//! process tree by PID, an LXC container, a Virtuozzo container (with its
//! extra images and freezer cgroup), a runc container. Its trait methods will
//! have default no-op bodies so a kind overrides only what it needs. Nothing
//! here is implemented yet.
//!
//! # Layout
//! - [`Error`]: the crate's error type (no variants are produced yet).

/// Errors of the htype drivers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {}

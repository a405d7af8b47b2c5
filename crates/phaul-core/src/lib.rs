//! The phaul migration engine.
//!
//! **Status: skeleton.** This crate will hold the engine that moves a
//! process tree from a source host to a target host with CRIU: the modes
//! (stop-and-copy through CRIU's page server, post-copy with lazy pages,
//! iterative pre-copy when CRIU's feature check reports memory tracking,
//! hybrid, and cold restart), an injected convergence policy (P.Haul's rules
//! and a downtime budget), rollback that resumes the source on any failure
//! before the target has restored, and statistics kept as a state machine and
//! finalized into an immutable report. Nothing here is implemented yet; the
//! CRIU side it will drive is [`criu-rpc`](../criu_rpc/index.html).
//!
//! # Layout
//! - [`Error`]: the crate's error type (no variants are produced yet).

/// Errors of the migration engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {}

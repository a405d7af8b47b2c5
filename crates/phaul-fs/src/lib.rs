//! File-system drivers for phaul.
//!
//! **Status: skeleton.** A driver will be called by the migration engine at
//! the same points as memory (start, after each iteration, final sync while
//! the source is frozen) and report byte and file counts. Planned drivers:
//! `shared` (nothing to copy), `rsync` (argv only, over the phaul link) and
//! `native` (an incremental tree sync over `phaul-transport`). Nothing here is
//! implemented yet.
//!
//! # Layout
//! - [`Error`]: the crate's error type (no variants are produced yet).

/// Errors of the file-system drivers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {}

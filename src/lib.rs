//! phaul: live migration of Linux processes and containers, built on CRIU.
//!
//! This facade re-exports the workspace's library crates so an orchestrator
//! can depend on one package; the top-level `examples/`, `benches/` and
//! `tests/` belong to it.
//!
//! # Layout
//! - [`criu_rpc`]: async client for CRIU's RPC and readers for CRIU images.
//! - [`core`]: the migration engine, its source `Migration` and target
//!   `Service`.
//! - [`htypes`]: what is migrated: a process tree, LXC, Virtuozzo, runc.
//! - [`fs`]: file-system drivers: shared, native, rsync.
//! - [`transport`]: the authenticated link between source and target.
//! - [`archive`]: checkpoint a process tree into a tar archive and restore
//!   one.
//!
//! The binaries' own layers, `phaul-cli` (arguments, set-up, progress
//! display) and `phaul-web` (the web GUI's server), are not re-exported:
//! they serve `examples/`, not orchestrators.

pub use criu_rpc;
pub use phaul_archive as archive;
pub use phaul_core as core;
pub use phaul_fs as fs;
pub use phaul_htypes as htypes;
pub use phaul_transport as transport;

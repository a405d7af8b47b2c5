//! The phaul migration engine.
//!
//! It moves a process tree from a source host to a target host with CRIU,
//! keeping its state, with the least downtime the two hosts allow, and never
//! loses it: the source is ended only after the target runs the tree, and
//! any failure before that resumes the source.
//!
//! The source side is a [`Migration`] built by an orchestrator (or the
//! `phaul` example CLI); the target side is a [`Service`] that serves many
//! migrations at once (the `phaul-service` example). They talk over
//! `phaul-transport`'s authenticated link; CRIU sits behind the
//! [`criu::SourceCriu`] / [`criu::TargetCriu`] seam, which [`criu::Criu`]
//! implements for real and [`standin`] implements for tests of logic the
//! kernel cannot exercise here (pre-copy needs soft-dirty tracking).
//!
//! Modes ([`Mode`]): `stop-copy` (the final dump streamed through CRIU's page
//! server), `post-copy` (lazy pages: the target resumes at once, memory
//! follows on demand), `pre-copy` (iterative pre-dumps while the tree runs,
//! then a short final dump), `hybrid` (pre-copy, then post-copy if it does
//! not converge), `restart` (cold; for kinds that have a restart handler),
//! and `auto`, which picks the best mode both hosts' CRIU feature checks
//! allow and says why. When pre-copy stops iterating is an injected
//! [`policy::ConvergencePolicy`]: P.Haul's rules or a downtime budget.
//!
//! # Layout
//! - [`source`]: [`Migration`], [`Progress`] events, [`CancelHandle`], and
//!   [`Group`], several migrations moved as one.
//! - [`target`]: the target side, [`Service`], which also takes
//!   controllers' orders.
//! - [`control`]: a controller's [`Order`] to a source's service, and its
//!   [`RemoteRun`].
//! - [`criu`]: the CRIU seam and the real implementation.
//! - `kept`: what a host's CRIU said about itself, kept for a while.
//! - [`standin`]: a scripted stand-in for CRIU, for tests.
//! - [`mode`]: the modes and how `auto` chooses.
//! - [`plan`]: the plan both sides obey, as it travels in `Begin`.
//! - [`policy`]: convergence policies.
//! - [`dirty`]: a tree's dirty rate, from soft-dirty bits, which decides
//!   whether pre-dumps can help at all.
//! - [`stats`]: statistics as a state machine, finalized into a [`Report`].
//! - [`pagestream`]: relaying CRIU's page-server traffic.
//! - `pagemaps`: the pre-dumps' pagemaps copied back to the source, for
//!   hybrid's lazy dump.
//! - [`hostinfo`]: the processes and containers of this host, and of
//!   another asked through its service.
//! - [`logs`]: CRIU's logs kept after a failure, images dropped.
//! - [`netlock`]: CRIU's network lock released after a rolled-back lazy dump.
//! - `replay`: the client packets the lock dropped, kept on the source and
//!   delivered to the restored copy.
//! - `freezer`: a container's freezer cgroup frozen before CRIU's dump
//!   (CRIU checks it every 100 ms).
//! - `schedhooks`: the kernel's perf context-switch hooks kept on while
//!   CRIU runs, so its first breakpoint does not wait inside the freeze.
//! - `rcu`: the kernel's RCU grace periods expedited while a target
//!   restores and commits.
//! - `ramdir`: a post-copy's images kept in RAM on both sides.
//! - [`sockets`]: pre-flight for trees with TCP and UDP sockets.
//! - [`fs`]: which `phaul-fs` driver carries an htype's file system.
//! - [`error`]: the crate's [`Error`] type.

pub mod control;
pub mod criu;
pub mod dirty;
pub mod error;
mod freezer;
pub mod fs;
pub mod hostinfo;
mod kept;
pub mod logs;
pub mod mode;
pub mod netlock;
mod pagemaps;
pub mod pagestream;
pub mod plan;
pub mod policy;
mod ramdir;
mod rcu;
mod replay;
mod schedhooks;
pub mod sockets;
pub mod source;
pub mod standin;
pub mod stats;
pub mod target;

pub use control::{Order, RemoteRun};
pub use error::{Error, Result};
pub use mode::{Mode, ModeChoice};
pub use source::{
    CancelHandle, Event, Failure, Group, GroupCancel, GroupFailure, GroupReport, GroupRun,
    Migration, MigrationRun, Progress, Timeouts,
};
pub use stats::{Outcome, Phase, Report};
pub use target::{Service, ServiceEvent};

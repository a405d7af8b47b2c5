//! An async client for CRIU's RPC, and readers for CRIU's images.
//!
//! CRIU (Checkpoint/Restore In Userspace) is driven over a `SOCK_SEQPACKET`
//! socket carrying one protobuf message per datagram: either a `criu swrk`
//! process spawned per connection, or a `criu service` daemon's socket. This
//! crate speaks that protocol on tokio and covers every request a live
//! migration needs — `VERSION`, `CHECK`, `FEATURE_CHECK`, `DUMP`, the
//! `PRE_DUMP` loop, `SINGLE_PRE_DUMP`, `RESTORE`, `PAGE_SERVER`,
//! `PAGE_SERVER_CHLD`, `WAIT_PID`, `CPUINFO_DUMP` and `CPUINFO_CHECK` — with
//! CRIU's rule about which requests may keep a connection open built into
//! the types, so a wrong sequence does not compile (or, for the pre-dump
//! loop after a failure, is a typed error) instead of ending in a silent EOF.
//!
//! Notifications are delivered one by one and must be answered; holding the
//! answer to `post-dump` keeps the dumped tree frozen until the caller
//! decides: success kills it, failure resumes it. A live migration holds it
//! until the target has restored.
//!
//! ```no_run
//! use criu_rpc::{Criu, Event, Opts, Script};
//! # async fn f() -> criu_rpc::Result<()> {
//! let criu = Criu::new();
//! let mut dump = criu
//!     .connect()
//!     .await?
//!     .dump(Opts::new().images_dir("/tmp/img").pid(4242).notify_scripts(true))
//!     .await?;
//! let dumped = loop {
//!     match dump.next().await? {
//!         Event::Notify(n) if *n.script() == Script::PostDump => {
//!             // The tree is frozen here for as long as we wait.
//!             n.ack().await?; // or n.nack() to resume it
//!         }
//!         Event::Notify(n) => n.ack().await?,
//!         Event::Done(d) => break d,
//!     }
//! };
//! # let _ = dumped; Ok(()) }
//! ```
//!
//! # Layout
//! - [`client`]: [`Criu`] (how to reach CRIU), [`Session`] (one connection)
//!   and its requests, [`Exchange`] and [`Notification`], [`PreDumpChain`].
//! - [`opts`]: [`Opts`], the options of a request.
//! - [`notify`]: [`Script`], the notification names.
//! - [`image`]: CRIU image files: `stats-dump`, `stats-restore`, `inventory.img`,
//!   and the sum of the `pagemap-<id>.img` files.
//! - [`summary`]: [`Summary`](summary::Summary), all of those for one images
//!   directory, present, absent or unreadable, with a text rendering.
//! - [`log`]: [`LogExcerpt`], the end of CRIU's log for a failed request.
//! - [`version`]: CRIU's [`Version`], ordered by number.
//! - [`error`]: [`Error`], this crate's one error type.
//! - [`proto`]: the generated protobuf messages.

pub mod client;
pub mod error;
pub mod image;
pub mod log;
pub mod notify;
pub mod opts;
pub mod proto;
mod socket;
pub mod summary;
pub mod version;

pub use client::{
    Criu, Dumped, Event, Exchange, FIRST_PASSED_FD, Features, Notification, PageServer,
    PreDumpChain, PreDumped, Restored, Session, default_binary, hand_over,
};
pub use error::{Error, Result};
pub use log::LogExcerpt;
pub use notify::Script;
pub use opts::Opts;
pub use proto::CriuReqType as ReqType;
pub use version::{ParseVersionError, Version};

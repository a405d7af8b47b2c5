//! The link between a migration's source and target: authenticated,
//! framed, typed and versioned, with streams for CRIU images, memory pages
//! and file systems beside the control channel.
//!
//! A target restores processes as root, so whoever can talk to it can run
//! anything there. Every connection therefore starts with TLS (rustls, on by
//! default; plaintext only by [`LinkConfig::plaintext`]) and a handshake in
//! which both ends prove they hold the shared key before any other message is
//! acted on. A peer that fails is sent an `Error` frame, logged and dropped.
//!
//! # Frames
//!
//! Everything travels in frames with a 12-byte header — magic `"PHUL"`,
//! protocol version, kind, length — and a payload of at most 16 MiB; see
//! [`frame`] for the layout. Kind 0, version 0 and unknown kinds are
//! refused, as is a frame of any version other than the negotiated one.
//! Payloads are the protobuf messages of `proto/phaul/link.proto`.
//!
//! # Handshake (every connection)
//!
//! ```text
//!  client                                         server
//!    | ---- TLS 1.3 handshake (unless plaintext) ---- |
//!    | -- Hello {versions, channel, nonce, session} ->|   channel: CONTROL,
//!    | <- HelloReply {version, nonce, session} ------ |   IMAGES, PAGES or FS
//!    | -- Auth {HMAC(key, "client" || transcript)} -> |
//!    | <- AuthOk {HMAC(key, "server" || transcript)} -|   or Error{AUTH_FAILED}
//! ```
//!
//! The transcript is SHA-256 over both hello messages and 32 bytes exported
//! from the TLS session, so a proof is bound to this very connection (see
//! [`auth`]). Until `AuthOk` the server accepts only `Hello` then `Auth`;
//! after it, any handshake frame (a second hello) is a protocol violation.
//! The control channel's server picks the session id; the data channels of
//! the same migration name it in their `Hello`.
//!
//! # Versioning
//!
//! `Hello` and `HelloReply` frames always carry version 1 in their header,
//! and their messages only ever gain fields, so any two builds can talk long
//! enough to negotiate. The client offers `[min, max]`, the server picks the
//! highest version both speak (or answers `Error{VERSION}` and closes), and
//! every later frame carries that version. A change that an older peer would
//! misread gets a new version number; adding an optional field or a new
//! request type that the peer can refuse with `BAD_REQUEST` does not. This
//! build speaks version 1 only.
//!
//! # Migration sequences (control channel, with the streams beside it)
//!
//! Stop-and-copy: memory goes straight to a page server on the target while
//! the tree is frozen; the source stays frozen (CRIU's `post-dump` held)
//! until the target has restored.
//!
//! ```text
//!  source                                            target
//!    | -- Preflight {criu version, features, cpuinfo} ->|
//!    | <- PreflightReply {version, features, cpu ok} ---|
//!    | -- Begin {htype, params, mode} ----------------->|
//!    | <- Begun ----------------------------------------|
//!    | -- StartPageServer {iteration 0} --------------->|
//!    | <- PageServerReady ------------------------------|
//!    |    criu dump (frozen) == PAGES stream ==> page server
//!    |    post-dump: hold
//!    |    images == IMAGES stream (BatchEnd/BatchAck) ==>
//!    | -- Restore {iteration 0} ----------------------->|  criu restore
//!    | <- Restored {pid} -------------------------------|
//!    |    post-dump: answer success (source ended)
//!    | -- Commit --------------------------------------->|
//!    | <- Committed ------------------------------------|
//! ```
//!
//! Pre-copy: iterations `0..n-1` are pre-dumps while the tree runs, each
//! with its own `StartPageServer {iteration i, has_parent}`; the final
//! iteration is the stop-and-copy above with `has_parent` set.
//!
//! Post-copy (lazy pages): the source dumps everything but memory and
//! serves pages on demand; the target resumes at once.
//!
//! ```text
//!  source                                            target
//!    | -- Preflight / Begin (as above) --------------->|
//!    |    criu dump --lazy-pages (frozen; page server on loopback)
//!    |    images == IMAGES stream ==>
//!    | -- Restore {lazy} ------------------------------>|  lazy-pages daemon
//!    |                                                  |  connects to loopback;
//!    |    <== PAGES stream (faults and prefetch) ==>    |  relayed both ways
//!    | <- Restored {pid} -------------------------------|  (running now)
//!    |    ... remaining pages pulled; dump ends, source ended
//!    | -- Commit --------------------------------------->|
//! ```
//!
//! Hybrid is pre-copy iterations followed by the post-copy final phase.
//! Restart (cold) has no memory at all: `Begin`, file-system sync on the FS
//! stream, stop on the source, final sync, then `Restore` starts the
//! workload anew on the target. At any point before `Restored`, the source
//! may send `Abort` (or simply drop the link); the target removes what it
//! made and the source resumes its tree.
//!
//! # Keeping CRIU's page servers private
//!
//! CRIU's page server is plain, unauthenticated TCP, and a lazy dump's
//! server listens on every interface of the source's network namespace
//! (CRIU ignores the address it is given). phaul never lets the network
//! reach either: on the target, CRIU's page server is handed one end of a
//! socketpair (`ps.fd`) and never listens at all; on the source, the lazy
//! dump listens on a port that phaul picks in the workload's network
//! namespace, and only phaul's own relay connects to it, through loopback;
//! the bytes cross hosts on the authenticated PAGES channel ([`relay`]).
//! The engine also drops, for the time of the dump, any connection to that
//! port that does not come from loopback (an iptables rule in that network
//! namespace), so nothing but the relay can read memory from it.
//!
//! # Layout
//! - [`frame`]: the frame header, kinds, limits, lz4 payloads.
//! - [`link`]: endpoints (TCP, Unix, pre-connected fds), [`LinkConfig`]
//!   (TLS, pinning, bandwidth cap, compression), the handshake, [`Link`].
//! - [`auth`]: [`SharedKey`] and the proofs.
//! - [`tls`]: certificates and the rustls set-up.
//! - [`control`]: request/response on the control channel.
//! - [`images`]: the image stream: a directory's files, checked and synced.
//! - [`relay`]: byte streams (pages, file systems).
//! - [`error`]: [`Error`], this crate's one error type.
//! - [`proto`]: the generated messages.

pub mod auth;
pub mod control;
pub mod error;
pub mod frame;
pub mod images;
pub mod link;
pub mod proto;
pub mod relay;
pub mod tls;

pub use auth::SharedKey;
pub use control::{ControlClient, ControlServer};
pub use error::{Error, FrameError, Result};
pub use link::{BoxStream, Endpoint, Link, LinkConfig, Listener, SessionId};
pub use proto::{Channel, ErrorCode};
pub use relay::{RelayStats, relay};
pub use tls::Identity;

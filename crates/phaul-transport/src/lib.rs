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
//! Payloads are the protobuf messages of `crates/phaul-transport/proto/link.proto`.
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
//! build speaks versions 2 to 5 (version 1's `Begin` carried the plan as
//! strings). Version 3 adds the `MANAGE` channel, whose one request gets a
//! stream of answers; a server refuses a `MANAGE` hello negotiated at
//! version 2 with `Error{VERSION}`, so a controller never meets a service
//! that would misread it. Version 4 adds `PagemapsOf` and `ProbeLink`: a
//! source asks them only on a link of version 4 or later, and without them does
//! what it did before (no probe before pre-copy; a lazy dump after
//! pre-dumps that sends every page). Version 5 serves `ProbeLink` before
//! `Begin` too, where a version-4 target refuses it: a source times the
//! link while its own pre-flight checks run, and on an older link after
//! `Begin`, as before.
//!
//! # A controller's requests (`MANAGE` channel, version 3)
//!
//! An orchestrator anywhere that holds the key asks the service of the
//! host that holds a tree to move it to another service, follows it and
//! may cancel it ([`manage`]):
//!
//! ```text
//!  controller                                    source's service
//!    | -- Request{1, MigrateOrder} ---------------->|  checked as the CLI
//!    | <- Response{1, MigrationAccepted{id}} -------|  checks it, or
//!    | <- Response{1, MigrationEvent{json}} ...     |  Error{BAD_REQUEST}
//!    | -- Request{2, CancelMigration} (optional) -->|  answered by the end
//!    | <- Response{1, MigrationEnded{outcome, report}}
//! ```
//!
//! Closing the link before the end cancels the migration (it rolls back
//! unless it had committed).
//!
//! # Migration sequences (control channel, with the streams beside it)
//!
//! Every mode ends with the same two-phase switch-over: the target restores
//! the tree but holds it stopped (CRIU's `post-restore`) and answers
//! `Restored`; the source then sends `Commit`, the target lets the tree run
//! and answers `Committed`, and only then does the source end its own copy.
//! Until `Committed` arrives, any failure resumes the source and the target
//! kills what it restored.
//!
//! Stop-and-copy: memory goes straight to a page server on the target while
//! the tree is frozen; the source stays frozen (CRIU's `post-dump` held)
//! until the commit.
//!
//! ```text
//!  source                                            target
//!    | -- Preflight {criu version, features, cpuinfo} ->|  CPUINFO_CHECK
//!    | <- PreflightReply {version, features, cpu ok} ---|
//!    | -- Begin {htype, params, plan} ----------------->|  checks the plan
//!    | <- Begun ----------------------------------------|  against its htype
//!    |    (PAGES channel joins the session)
//!    | -- StartPageServer {iteration 0} --------------->|  PAGE_SERVER_CHLD on
//!    | <- PageServerReady ------------------------------|  a socketpair (ps.fd)
//!    |    DUMP (frozen) == PAGES ==> page server
//!    |    post-dump: hold
//!    | -- Images {0} ---------------------------------->|
//!    |    == IMAGES: FileBegin/Data/FileEnd.. BatchEnd ==>
//!    | <- ImagesStored (files written) -----------------|
//!    | -- Restore {0} --------------------------------->|  RESTORE, held at
//!    | <- Restored {pid} -------------------------------|  post-restore
//!    | -- Commit --------------------------------------->|  tree runs
//!    | <- Committed ------------------------------------|
//!    |    post-dump: answer success (source ended)
//! ```
//!
//! The plan in `Begin` (mode, who restores, how files travel) is the
//! source's, computed once; the target follows it and refuses what is out
//! of order or out of plan (`BAD_REQUEST`): a lazy restore in a stop-copy,
//! a commit before a restore, a second `Begin`.
//!
//! Pre-copy: first (version 4) the source times `ProbeLink {bytes}` over a
//! PAGES channel the target drains (`LinkProbed`), while it measures the
//! tree's dirty rate (from version 5 both happen during the pre-flight,
//! before `Begin`); if the tree dirties memory faster than half that, no
//! pre-dump is made. Then iterations `0..n-1` are pre-dumps while the tree
//! runs, each
//! with its own PAGES channel and `StartPageServer {i, has_parent}`; the
//! final iteration is the stop-and-copy above with `has_parent` set, so
//! only pages dirtied since the last pre-dump travel while frozen. Its
//! `Commit {overhead_us}` says what the switch-over cost beyond the
//! transfer of those pages (at the pre-dumps' bandwidth); the target learns it per kind and
//! tells the next source in `Begun {overhead_us}`, for its prediction
//! (both optional: 0 = not measured, nothing learned). `Begun
//! {page_in_bytes_per_s}` says how fast the target writes image pages into
//! fresh memory (0 = not measured): until it has learned something, the
//! source adds its tree's restore at that rate. `Commit {tree_pages}` says
//! how large the tree was, so the target also learns what is left without
//! its restore, `Begun {overhead_beyond_restore_us}`, to which the next
//! source adds its own tree's restore: a prediction that follows the size.
//!
//! `Commit {replay}` may carry the TCP segments that reached the tree's own
//! network namespace while CRIU's lock dropped them (IP packets, oldest
//! first); the target delivers them to its copy once it runs. An optional
//! field: an older target ignores it, and an empty one means none.
//!
//! Post-copy (lazy pages): the source dumps everything but memory and
//! serves pages on demand; the target resumes at once.
//!
//! ```text
//!  source                                            target
//!    | -- Preflight / Begin (as above) --------------->|
//!    |    DUMP --lazy-pages (frozen; page server on a port phaul guards)
//!    |    phaul connects to it on loopback; PAGES channel joins
//!    | -- Images {0} / IMAGES batch / ImagesStored ---->|
//!    | -- Restore {0, lazy} --------------------------->|  lazy-pages daemon ->
//!    |    <== PAGES: daemon <-> CRIU's page server ==>  |  loopback -> relay;
//!    | <- Restored {pid} -------------------------------|  RESTORE held
//!    | -- Commit --------------------------------------->|  tree runs, faults
//!    | <- Committed ------------------------------------|  pull pages
//!    |    ... the remaining pages are pulled; the dump ends, source ended
//! ```
//!
//! Hybrid is pre-copy iterations followed by the post-copy final phase (or
//! the stop-and-copy one if pre-copy converged). Before its lazy dump the
//! source asks `PagemapsOf {i}` for each pre-dump (version 4) and keeps the
//! answers (`Pagemaps`) in its own image directories: CRIU's lazy dump
//! looks there for what its parents hold, and leaves only pages dirtied
//! since the last pre-dump for post-copy. At any point before
//! `Committed`, the source may send `Abort` (or simply drop the link); the
//! target removes what it made and the source resumes its tree. After
//! `Committed`, post-copy cannot be undone: the target runs the tree and
//! needs the source's pages.
//!
//! # Keeping CRIU's page servers private
//!
//! CRIU's page server is plain, unauthenticated TCP, and a lazy dump's
//! server listens on every interface of the source's network namespace
//! (CRIU ignores the address it is given). phaul never lets the network
//! reach either:
//! - on the target, CRIU's page server (`ps.fd`) and its lazy-pages daemon
//!   (`--ps-socket`) are each handed one end of a socketpair and listen on
//!   nothing;
//! - on the source, the lazy dump listens on a port phaul picks, phaul
//!   connects to it through loopback at once (CRIU serves one connection),
//!   and for the time of the dump an iptables rule in that network
//!   namespace drops connections to the port from anywhere but loopback;
//! - in both directions the bytes cross hosts only on the authenticated
//!   PAGES channel ([`relay()`], and the engine's own relay in `phaul-core`).
//!
//! # Layout
//! - [`frame`]: the frame header, kinds, limits, lz4 payloads.
//! - [`link`]: endpoints (TCP, Unix, pre-connected fds), [`LinkConfig`]
//!   (TLS, pinning, bandwidth cap, compression), the handshake, [`Link`].
//! - [`auth`]: [`SharedKey`] and the proofs.
//! - [`tls`]: certificates and the rustls set-up.
//! - [`control`]: request/response on the control channel.
//! - [`manage`]: a controller's requests on the `MANAGE` channel, both
//!   ends as typed state machines.
//! - [`images`]: the image stream: a directory's files, checked, written,
//!   and fsynced unless the receiver says otherwise ([`images::ImageLimits`]).
//! - [`mod@relay`]: byte streams (pages, file systems).
//! - [`error`]: [`Error`], this crate's one error type.
//! - [`proto`]: the generated messages.

pub mod auth;
pub mod control;
pub mod error;
pub mod frame;
pub mod images;
pub mod link;
pub mod manage;
pub mod proto;
pub mod relay;
pub mod tls;

pub use auth::SharedKey;
pub use control::{ControlClient, ControlServer};
pub use error::{Error, FrameError, Result, error_chain};
pub use link::{BoxStream, Endpoint, Link, LinkConfig, Listener, SessionId};
pub use proto::{Channel, ErrorCode};
pub use relay::{Guard, RelayCounters, RelayOptions, RelayStats, relay, relay_parts, relay_with};
pub use tls::Identity;

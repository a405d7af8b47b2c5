//! The native driver: an incremental tree sync over a phaul link
//! ([`phaul_transport::Channel::Fs`]).
//!
//! # Protocol
//!
//! Messages ([`crate::wire`]) travel as a byte stream in `DATA` frames.
//! Each pass:
//!
//! ```text
//!  source                                              target
//!    | -- PassBegin {pass, last} --------------------->|
//!    |                                                 |  scans its tree
//!    | <- Entry {path, kind, size, mode, uid, gid,     |
//!    |           mtime ns, hard-link group, rdev,      |
//!    |           symlink target} ...                   |
//!    | <- ManifestEnd {entries} -----------------------|
//!    |  walks its own tree (meanwhile), diffs          |
//!    | -- Delete ... (deepest first) ----------------->|  unlinkat (a directory
//!    | -- Mkdir / Write + Data.. / Symlink / Link /    |  recursively)
//!    |    Node / SetMeta ... (parents first) --------->|  *at() calls from the
//!    | -- SetMeta for directories (children first) --->|  root's descriptor
//!    | -- PassEnd {files, bytes, ops} ---------------->|
//!    | <- PassDone {files, bytes, deleted, scanned} ---|  or an Error frame
//! ```
//!
//! Durability: the first pass is synced (`syncfs`) before its `PassDone`;
//! what later passes change is recorded, and after the pass marked `last`
//! (the final sync, workload frozen) has been answered, the target fsyncs
//! those files and directories, and only then does its service loop
//! return. So `PassDone` of the last pass says the tree is applied, the
//! return that it is durable: that work is off the downtime's path (the
//! images and the restore go on meanwhile), costs what the later passes
//! changed rather than everything dirty on the disk, and what lets the
//! workload run (phaul's commit) waits for the return. The source diffs each entry against the manifest the way
//! rsync's quick check does: kind, then size and mtime (content), then
//! mode and owner (metadata). Content is sent whole, in `Data` messages of
//! at most 128 KiB. Hard links are kept: the first name of an inode is
//! written, the others are `Link`ed to it (and relinked whenever the first
//! is rewritten, since rewriting makes a new inode). Directory times are
//! set after everything inside them changed; file times after their
//! content.
//!
//! # What the target guarantees
//!
//! The target treats the stream as hostile:
//! - **Paths.** Every path is checked by [`RelPath::parse`]: components
//!   that are empty, `.`, `..`, contain NUL, or an absolute path are refused
//!   with [`Error::BadPath`] and the pass is aborted before anything is
//!   done for that message.
//! - **No symlink is ever followed.** The root is opened once; each
//!   operation resolves its parent one component at a time with
//!   `openat(O_DIRECTORY | O_NOFOLLOW)` and then acts with `mkdirat`,
//!   `symlinkat`, `linkat` (no follow), `mknodat`, `fchownat` and
//!   `utimensat` with `AT_SYMLINK_NOFOLLOW`, `unlinkat`, `renameat`. A
//!   symlink on the way (say the target's `dir` is a symlink to `/etc` and
//!   a `Write` for `dir/x` arrives) is refused with [`Error::Refused`]
//!   and the pass aborts: nothing outside the root is touched. The source
//!   never asks for that — the manifest shows `dir` as a symlink, so the
//!   source first deletes it (the link, not what it points to) and makes a
//!   real directory; the result is `dir/x` inside the root.
//! - **Atomic files.** Content goes to a new temporary name in the same
//!   directory (`O_CREAT | O_EXCL | O_NOFOLLOW`), gets its owner, mode and
//!   times, and is renamed over the old name, so a reader never sees half
//!   a file. Symlinks, links and nodes are made the same way. A temporary
//!   file left by an aborted pass is removed.
//! - **Limits** ([`FsLimits`]): operations per pass and entries scanned,
//!   each file's size and the bytes of a pass are checked before anything
//!   is written; device nodes only where `allow_devices`.
//!
//! On any error the target answers an `Error` frame (`BAD_REQUEST` for a
//! refused path or entry, `LIMIT`, `PROTOCOL`, `FAILED` for its own I/O)
//! and returns the typed error; the source returns it as
//! [`Error::Link`]`(`[`phaul_transport::Error::Remote`]`)`. Operations
//! applied before the error stay; the link is then unusable.
//!
//! # Not carried
//!
//! Extended attributes and ACLs, file holes (a sparse file arrives dense)
//! and access times. Use the rsync driver (`-AX`) where those matter.
//!
//! [`RelPath::parse`]: crate::path::RelPath::parse
//! [`Error::BadPath`]: crate::Error::BadPath
//! [`Error::Refused`]: crate::Error::Refused
//! [`Error::Link`]: crate::Error::Link
//! [`FsLimits`]: crate::FsLimits

pub(crate) mod durable;
mod plan;
mod source;
mod target;

pub use source::NativeSource;
pub use target::serve_native;

/// The largest content chunk of one `Data` message the source sends.
pub(crate) const CONTENT_CHUNK: usize = 128 * 1024;

/// The source and target hand a buffer to the link once it holds this
/// much. One message more (a content chunk, or an entry whose path is at
/// most 4 KiB) never takes it past the link's data frame, so every buffer
/// goes out as one frame rather than a full one and a sliver.
pub(crate) const BUFFER: usize = phaul_transport::link::DATA_CHUNK - CONTENT_CHUNK - 8 * 1024;

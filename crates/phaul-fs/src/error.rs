//! The crate's one error type.

use std::path::PathBuf;

use phaul_transport::ErrorCode;

/// Everything that can go wrong while syncing a tree.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A local file-system call failed on `path` (relative to the tree's
    /// root for entries of a tree, absolute for the root itself).
    #[error("file-system I/O on {path:?}")]
    Io {
        /// The file, directory or socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// The link failed, or the peer answered with an error
    /// ([`phaul_transport::Error::Remote`]).
    #[error("link")]
    Link(#[from] phaul_transport::Error),

    /// A path from the peer that could mean something outside the tree
    /// (`..`, an absolute path, an empty component, NUL), or that is too
    /// long. Nothing is touched for it.
    #[error("refused path {path:?}: {reason}")]
    BadPath {
        /// The path as received (lossily decoded for display).
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// A well-formed entry that this end will not create or write: a
    /// device node where devices are not allowed, a write through a
    /// symlinked or non-directory parent, a bad mode.
    #[error("refused entry {path:?}: {reason}")]
    Refused {
        /// The entry's path, relative to the tree's root.
        path: String,
        /// Why it is refused.
        reason: String,
    },

    /// A limit of [`crate::FsLimits`] was exceeded.
    #[error("file-system sync limit exceeded: {0}")]
    Limit(String),

    /// A message that breaks the native protocol (wrong order, truncated,
    /// inconsistent counts).
    #[error("file-system sync protocol violation: {0}")]
    Protocol(String),

    /// A source entry changed while the final pass (the workload frozen)
    /// read it, so the copy cannot be trusted to be complete.
    #[error("{path:?} changed during the final sync: {what}")]
    Changed {
        /// The entry, relative to the tree's root.
        path: String,
        /// What changed.
        what: String,
    },

    /// `rsync` failed: its exit status and the tail of what it (and, for
    /// the source, the target's `rsync`) wrote to stderr.
    #[error("rsync failed with {status}: {stderr}")]
    Rsync {
        /// How it ended (`exit status 23`, `signal 9`, ...).
        status: String,
        /// The last lines of its standard error.
        stderr: String,
    },

    /// A remote `rsync` command the target will not run.
    #[error("refused rsync command {argv:?}: {reason}")]
    RsyncCommand {
        /// The command as received (lossily decoded for display).
        argv: Vec<String>,
        /// Why it is refused.
        reason: String,
    },

    /// The remote-shell helper that joins rsync to the link could not be
    /// used (missing, unusable path, did not connect).
    #[error("rsync remote-shell helper: {0}")]
    Helper(String),

    /// A driver name that is not in [`crate::registry::NAMES`].
    #[error("unknown file-system driver {name:?} (known: {known})")]
    UnknownDriver {
        /// The name asked for.
        name: String,
        /// The known names, comma-separated.
        known: String,
    },

    /// An earlier pass of this driver failed, leaving the link in an
    /// unknown state; a new link is needed.
    #[error("an earlier pass failed; the file-system link is unusable")]
    Broken,
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: impl Into<std::io::Error>) -> Self {
        Self::Io {
            path: path.into(),
            source: source.into(),
        }
    }

    /// The code to tell the peer with, when this end gives up because of
    /// this error.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            Self::BadPath { .. } | Self::Refused { .. } | Self::RsyncCommand { .. } => {
                ErrorCode::BadRequest
            }
            Self::Limit(_) => ErrorCode::Limit,
            Self::Protocol(_) => ErrorCode::Protocol,
            Self::Link(phaul_transport::Error::Frame(_))
            | Self::Link(phaul_transport::Error::Decode { .. })
            | Self::Link(phaul_transport::Error::Protocol(_)) => ErrorCode::Protocol,
            _ => ErrorCode::Failed,
        }
    }

    /// Whether the peer should be told about this error: not when the
    /// link itself is gone or the peer is the one who reported it.
    pub(crate) fn worth_reporting(&self) -> bool {
        match self {
            Self::Link(e) => e.worth_reporting(),
            _ => true,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! The crate's one error type.

use std::time::Duration;

use crate::mode::Mode;

/// Everything that can end a migration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The mode asked for needs a feature one of the hosts lacks.
    #[error("{mode} needs {missing}")]
    UnsupportedMode {
        /// The mode asked for.
        mode: Mode,
        /// What is missing, and where.
        missing: String,
    },

    /// A name that is not a mode.
    #[error("unknown mode {0:?} (auto, stop-copy, post-copy, pre-copy, hybrid, restart)")]
    UnknownMode(String),

    /// Stats were recorded out of order (a bug in the engine).
    #[error("statistics: {0}")]
    Stats(String),

    /// The pre-flight checks refused this pair of hosts.
    #[error("pre-flight: {0}")]
    Preflight(String),

    /// What to migrate is not acceptable (no such PID, PID 1, ...).
    #[error(transparent)]
    Htype(#[from] phaul_htypes::Error),

    /// A container manager's own dump or restore (`runc checkpoint`,
    /// `lxc-checkpoint -r`) failed; what its CRIU logged says why.
    #[error("the container manager's CRIU failed: {criu}")]
    ManagerCriu {
        /// The manager's failure.
        #[source]
        source: phaul_htypes::Error,
        /// CRIU's decisive lines and the log's path.
        criu: String,
    },

    /// CRIU failed on the source.
    #[error("CRIU on the source")]
    SourceCriu(#[source] criu_rpc::Error),

    /// CRIU failed on the target.
    #[error("CRIU on the target")]
    TargetCriu(#[source] criu_rpc::Error),

    /// The target reported a failure.
    #[error("the target: {0}")]
    Target(String),

    /// The target runs as many migrations as it takes and could not queue
    /// this one (its answer says which limit). Nothing was started: the
    /// source ran on throughout, and may try again later.
    #[error("the target is busy: {0}")]
    Busy(String),

    /// The service a controller ordered to migrate reported a failure
    /// (its error, with its causes, as text).
    #[error("the source's service: {0}")]
    SourceService(String),

    /// Syncing the file system failed.
    #[error("file-system sync")]
    Fs(#[source] phaul_fs::Error),

    /// The link to the other host failed.
    #[error("link to the other host")]
    Link(#[from] phaul_transport::Error),

    /// A local file or directory operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The migration was cancelled.
    #[error("cancelled")]
    Cancelled,

    /// The source was frozen for as long as it may be (`freeze_timeout`)
    /// and the target had not finished: the source is resumed.
    #[error(
        "the source stayed frozen for its limit of {:.1} s before the target finished (freeze timeout)",
        limit.as_secs_f64()
    )]
    FreezeTimeout {
        /// The limit.
        limit: Duration,
    },

    /// A step did not finish in time.
    #[error("timed out: {0}")]
    Timeout(String),

    /// The peer broke the migration protocol.
    #[error("protocol: {0}")]
    Protocol(String),

    /// Another member of a group migration failed, so this one gave up
    /// too (see [`crate::source::Group`]); the text names that member and
    /// its error.
    #[error("another member of the group failed: {0}")]
    Group(String),

    /// The embedder's switch-over hook ([`crate::Migration::switchover`])
    /// failed, with its reason; the migration rolled back.
    #[error("the switch-over hook failed: {0}")]
    Switchover(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

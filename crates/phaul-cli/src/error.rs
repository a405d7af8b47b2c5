//! The one error type of `phaul-cli`: arguments that do not make a valid
//! set-up, and set-up steps that failed. Messages leave the cause to
//! `source()`: print them with `phaul_transport::error_chain`.

use std::path::PathBuf;

/// Why the command line could not be turned into a migration, a link or a
/// CRIU client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key file, the pinned fingerprint or this side's certificate.
    #[error(transparent)]
    Link(#[from] phaul_transport::Error),
    /// What to migrate could not be found or is refused.
    #[error(transparent)]
    Htype(#[from] phaul_htypes::Error),
    /// A file-system driver that phaul-fs does not have.
    #[error(transparent)]
    Fs(#[from] phaul_fs::Error),
    /// CRIU could not be reached or is too old.
    #[error("checking CRIU")]
    Criu(#[source] criu_rpc::Error),
    /// What to migrate is not a list of KIND ID pairs.
    #[error("expected KIND ID pairs, got an odd number of words: {0:?}")]
    Pairs(Vec<String>),
    /// A `--veth` without `=`.
    #[error("--veth {0:?}: expected IN=OUT[@BRIDGE]")]
    Veth(String),
    /// A flag that a controller's order (`--from`) does not carry.
    #[error("{0} cannot be used with --from (the source's service migrates with its own settings)")]
    NotWithFrom(&'static str),
    /// The controller's order was refused or could not be sent.
    #[error("the source's service")]
    Order(#[source] phaul_core::Error),
    /// `--freeze-timeout` is not a positive number of seconds.
    #[error("--freeze-timeout {0}: a positive number of seconds")]
    FreezeTimeout(f64),
    /// `--metrics` is neither a port nor `HOST:PORT`.
    #[error("--metrics {0:?}: expected PORT (loopback) or HOST:PORT")]
    MetricsAddr(String),
    /// The metrics' address could not be bound.
    #[error("serving metrics on {addr}")]
    MetricsBind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why it could not be bound.
        #[source]
        source: std::io::Error,
    },
    /// The `--events` file could not be created.
    #[error("--events {}", path.display())]
    Events {
        /// The file asked for.
        path: PathBuf,
        /// Why it could not be created.
        #[source]
        source: std::io::Error,
    },
    /// `--fs rsync` names this program as rsync's remote shell, and it
    /// could not be found.
    #[error("finding this program for rsync's remote shell")]
    CurrentExe(#[source] std::io::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

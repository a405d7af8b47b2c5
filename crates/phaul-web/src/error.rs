//! The one error type of `phaul-web`: what stops the server from starting
//! or serving. Requests that fail are answered (see [`crate::api`]), not
//! returned.
//!
//! Messages leave the cause to `source()`; print them with
//! `phaul_transport::error_chain` (or anyhow's `{:#}`).

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why phaul-web could not start or serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The token file could not be read.
    #[error("reading {}", path.display())]
    TokenRead {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The token file is readable by others.
    #[error("{} is readable by others: chmod 600 it (it logs whoever holds it in as root)", .0.display())]
    TokenPublic(PathBuf),
    /// The token is too short or holds spaces or control characters.
    #[error("the token in {} must be at least 16 printable ASCII characters without spaces", .0.display())]
    TokenWeak(PathBuf),
    /// The kernel's random source failed.
    #[error("no random bytes for the token")]
    Random,
    /// An `--allow-origin` that is not an origin.
    #[error("--allow-origin {0:?}: an origin is http://HOST:PORT or https://HOST:PORT")]
    Origin(String),
    /// Listening on every address without naming the origin browsers use.
    #[error(
        "listening on every address needs --allow-origin http://HOST:PORT naming how browsers reach this server"
    )]
    EveryAddress,
    /// A `--this-host` that the other host could not dial.
    #[error("--this-host {0:?}: this host's phaul-service as the other host reaches it, HOST:PORT")]
    ThisHost(String),
    /// The listening socket.
    #[error("listening on {addr}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The work directory could not be made.
    #[error("creating {}", path.display())]
    WorkDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The checkpoint store could not be opened.
    #[error(transparent)]
    Store(#[from] phaul_archive::Error),
    /// Serving HTTP failed.
    #[error("serving HTTP")]
    Serve(#[source] std::io::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

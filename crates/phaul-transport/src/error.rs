//! The crate's one error type.

use std::path::PathBuf;

use crate::frame::Kind;
use crate::proto::ErrorCode;

/// What is wrong with a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The first four bytes are not phaul's magic: not a phaul peer.
    #[error("bad magic {0:#010x} (not a phaul peer)")]
    BadMagic(u32),
    /// Version 0 in a header.
    #[error("invalid protocol version {0}")]
    BadVersion(u16),
    /// A version other than the one this link speaks.
    #[error("frame of protocol version {got} on a link of version {expected}")]
    WrongVersion {
        /// The frame's version.
        got: u16,
        /// The link's version.
        expected: u16,
    },
    /// Kind 0 or a kind this build does not know.
    #[error("unknown frame kind {0}")]
    UnknownKind(u16),
    /// A payload above the limit.
    #[error("frame of {length} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The announced length.
        length: u32,
        /// The limit.
        max: u32,
    },
    /// The connection ended inside a frame.
    #[error("connection ended inside a frame ({got} of {needed} bytes)")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes the frame needs.
        needed: usize,
    },
    /// A compressed payload that does not decompress within limits.
    #[error("bad compressed payload: {0}")]
    BadCompression(String),
}

/// Everything that can go wrong on a phaul link.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing the connection failed.
    #[error("link I/O failed")]
    Io(#[from] std::io::Error),

    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,

    /// A malformed frame.
    #[error("malformed frame")]
    Frame(#[from] FrameError),

    /// A frame's payload is not the message its kind says.
    #[error("malformed {kind:?} message")]
    Decode {
        /// The frame's kind.
        kind: Kind,
        /// Why it did not decode.
        #[source]
        source: prost::DecodeError,
    },

    /// A well-formed frame at the wrong moment (a second hello, a request
    /// before authentication, an unexpected kind).
    #[error("protocol violation: {0}")]
    Protocol(String),

    /// No protocol version in common with the peer.
    #[error(
        "no common protocol version: ours {ours_min}..={ours_max}, theirs {theirs_min}..={theirs_max}"
    )]
    Version {
        /// Our lowest.
        ours_min: u16,
        /// Our highest.
        ours_max: u16,
        /// Their lowest.
        theirs_min: u32,
        /// Their highest.
        theirs_max: u32,
    },

    /// The peer did not prove it holds the shared key, or the TLS
    /// certificate was not the pinned one.
    #[error("authentication failed: {0}")]
    AuthFailed(String),

    /// The peer answered with an error.
    #[error("the peer reported {code:?}: {message}")]
    Remote {
        /// Its error code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },

    /// TLS failed.
    #[error("TLS failed")]
    Tls(#[from] rustls::Error),

    /// A certificate could not be made or loaded.
    #[error("certificate: {0}")]
    Certificate(String),

    /// The shared key file is unusable.
    #[error("key file {path:?}: {problem}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },

    /// A step did not finish in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),

    /// A file name in an image stream that is not a plain name.
    #[error("refused file name {name:?}: {reason}")]
    BadName {
        /// The name as received.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// A limit of an image stream was exceeded.
    #[error("image stream limit exceeded: {0}")]
    Limit(String),

    /// A local file of an image stream could not be read or written.
    #[error("image file {path:?}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// An address that could not be parsed or bound.
    #[error("bad address {0:?}")]
    Address(String),
}

impl Error {
    /// Whether the peer should be told about this error: not when the link
    /// itself is gone, nor when the peer is the one who reported it.
    pub fn worth_reporting(&self) -> bool {
        !matches!(self, Self::Io(_) | Self::Closed | Self::Remote { .. })
    }
}

/// An error and its causes on one line: for an `Error` frame's message (the
/// peer gets no source chain) and for logs.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! The crate's one error type.

use std::path::PathBuf;
use std::process::ExitStatus;

use nix::errno::Errno;

use crate::image::ImageError;
use crate::log::LogExcerpt;
use crate::proto::CriuReqType;
use crate::version::Version;

/// Everything that can go wrong talking to CRIU or reading its images.
///
/// Variants keep the request type they happened in, CRIU's own errno and
/// message where CRIU sent them, and the underlying error as `source`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The CRIU binary does not exist at the configured path or on `PATH`.
    #[error("CRIU binary {path:?} not found; install CRIU 4 with scripts/setup.sh")]
    CriuNotFound {
        /// The binary that was looked for.
        path: PathBuf,
        /// Why starting it failed.
        #[source]
        source: std::io::Error,
    },

    /// The CRIU binary exists but could not be started.
    #[error("cannot start CRIU binary {path:?}")]
    Spawn {
        /// The binary that was started.
        path: PathBuf,
        /// Why starting it failed.
        #[source]
        source: std::io::Error,
    },

    /// The CRIU service socket could not be reached.
    #[error("cannot connect to the CRIU service socket {path:?}")]
    Connect {
        /// The socket's path.
        path: PathBuf,
        /// Why connecting failed.
        #[source]
        source: Errno,
    },

    /// CRIU is older than what this client needs.
    #[error("CRIU {have} is too old: {need} or newer is needed (scripts/setup.sh installs it)")]
    TooOld {
        /// The version CRIU reported.
        have: Version,
        /// The oldest version accepted.
        need: Version,
    },

    /// CRIU answered a request with `success = false`.
    #[error("CRIU failed the {} request{}{}", req.as_str_name(), fmt_errno(*errno), fmt_message(message.as_deref(), log.as_deref()))]
    Criu {
        /// The request CRIU failed.
        req: CriuReqType,
        /// CRIU's `cr_errno`, when it set one.
        errno: Option<Errno>,
        /// CRIU's `cr_errmsg`: the *first* error line CRIU logged, which
        /// is not always the cause (see [`Error::Criu::log`]).
        message: Option<String>,
        /// The error lines at the end of CRIU's log for this request, when
        /// the log file could be read (boxed: it is large, and errors travel
        /// in every `Result`).
        log: Option<Box<LogExcerpt>>,
    },

    /// CRIU refused the request itself (an `EMPTY` answer: an invalid request
    /// or one out of sequence, such as a second request after `DUMP`).
    #[error("CRIU rejected the {} request as invalid or out of sequence", req.as_str_name())]
    BadRequest {
        /// The request that was refused.
        req: CriuReqType,
    },

    /// CRIU answered with a message that does not belong to the request.
    #[error("unexpected answer to the {} request: {got}", req.as_str_name())]
    UnexpectedResponse {
        /// The request that was sent.
        req: CriuReqType,
        /// What came back instead, described.
        got: String,
    },

    /// CRIU closed the connection before answering.
    #[error("CRIU closed the connection during the {} request", req.as_str_name())]
    ConnectionClosed {
        /// The request in flight.
        req: CriuReqType,
    },

    /// The `criu swrk` process exited before answering.
    #[error("CRIU exited ({status}) during the {} request", req.as_str_name())]
    CriuExited {
        /// The request in flight.
        req: CriuReqType,
        /// How the process ended.
        status: ExitStatus,
    },

    /// A notification was not answered before the next step was asked for.
    #[error("CRIU's {script:?} notification must be answered first")]
    NotifyUnanswered {
        /// The notification's script name.
        script: String,
    },

    /// An option was set that this kind of connection cannot carry.
    #[error("option {option} is only accepted on a `criu swrk` connection, not a service socket")]
    SwrkOnly {
        /// The option's name.
        option: &'static str,
    },

    /// An option value CRIU would refuse (or misread).
    #[error("invalid CRIU option {option}: {reason}")]
    InvalidOption {
        /// The option's name.
        option: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A directory given as an option could not be opened.
    #[error("cannot open {what} {path:?}")]
    OpenDir {
        /// Which option the directory is for.
        what: &'static str,
        /// The directory.
        path: PathBuf,
        /// Why opening it failed.
        #[source]
        source: std::io::Error,
    },

    /// Sending to or receiving from CRIU's socket failed.
    #[error("socket I/O with CRIU failed")]
    Socket(#[source] std::io::Error),

    /// A message from CRIU did not decode.
    #[error("malformed message from CRIU")]
    Decode(#[source] prost::DecodeError),

    /// A message from CRIU was larger than this client accepts.
    #[error("message from CRIU of {len} bytes exceeds the {max}-byte limit")]
    MessageTooLarge {
        /// The message's length.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// An image file could not be read.
    #[error("cannot read CRIU image {path:?}")]
    ImageIo {
        /// The image file.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },

    /// An image file is malformed, truncated, oversized or of another type.
    #[error("CRIU image {path:?}: {kind}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// What is wrong with it.
        kind: ImageError,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn fmt_errno(errno: Option<Errno>) -> String {
    match errno {
        Some(e) => format!(" ({e}: {})", e.desc()),
        None => String::new(),
    }
}

/// The decisive lines of CRIU's log when it could be read (CRIU's own
/// message is its *first* error line, here a harmless rlimit one), else that
/// message; then where the whole log is.
fn fmt_message(message: Option<&str>, log: Option<&LogExcerpt>) -> String {
    let mut s = String::new();
    match (log.and_then(LogExcerpt::cause), message) {
        (Some(cause), _) => {
            s.push_str(": ");
            s.push_str(&cause);
        }
        (None, Some(m)) if !crate::log::is_harmless(m) => {
            s.push_str(": ");
            s.push_str(m);
        }
        _ => {}
    }
    if let Some(log) = log {
        s.push_str(&format!(" (CRIU log: {})", log.path.display()));
    }
    s
}

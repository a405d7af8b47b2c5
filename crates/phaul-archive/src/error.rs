//! The one error type of `phaul-archive`.
//!
//! Messages leave the cause to `source()`; print them with
//! `phaul_transport::error_chain`.

/// Why an archive cannot be restored: the input's fault, not this host's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Shorter than one header.
    #[error("not a tar archive (too short)")]
    TooShort,
    /// A header without ustar's magic.
    #[error("not a ustar archive")]
    NotUstar,
    /// A header whose checksum does not match (counted from 1).
    #[error("header {0} has a bad checksum")]
    BadChecksum(usize),
    /// A number field that is not one.
    #[error("a {field} that is {why}")]
    BadNumber {
        /// `size` or `checksum`.
        field: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A name that is not UTF-8.
    #[error("a file name that is not UTF-8")]
    NameNotUtf8,
    /// An entry that is not a regular file.
    #[error("{name:?} is {kind}; only regular files are accepted")]
    NotRegular {
        /// The entry's name.
        name: String,
        /// What it is instead ("a symbolic link").
        kind: String,
    },
    /// A name that would put the file elsewhere than the image directory,
    /// or that is not a plain file name.
    #[error("{name:?} {why}")]
    BadName {
        /// The entry's name.
        name: String,
        /// Why it is refused ("climbs out with '..'").
        why: String,
    },
    /// The same name twice.
    #[error("{0:?} appears twice")]
    Duplicate(String),
    /// More than [`crate::tar::MAX_FILES`] entries.
    #[error("more than {} files", crate::tar::MAX_FILES)]
    TooManyFiles,
    /// A file whose data ends before its size.
    #[error("{0:?} is cut short")]
    CutShort(String),
    /// No file at all.
    #[error("the archive holds no file")]
    Empty,
    /// No `inventory.img`: not a CRIU checkpoint.
    #[error("it holds no inventory.img, so it is not a CRIU checkpoint")]
    NoInventory,
    /// An `inventory.img` that CRIU's image reader refuses.
    #[error("its inventory.img is not a CRIU inventory ({0})")]
    BadInventory(String),
}

/// Why a checkpoint or a restore failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The archive cannot be restored; nothing was restored and its
    /// directory is gone.
    #[error("archive refused: {0}")]
    Refused(Refusal),
    /// A name in the directory to archive is not plain, or a file changed
    /// size while it was archived.
    #[error("cannot archive {name:?}: {why}")]
    Unarchivable {
        /// The file.
        name: String,
        /// Why.
        why: String,
    },
    /// Reading or writing a file failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// CRIU failed; its message is in the source.
    #[error("{what}")]
    Criu {
        /// `CRIU dump`, `CRIU restore` or `starting CRIU`.
        what: &'static str,
        /// CRIU's error.
        #[source]
        source: criu_rpc::Error,
    },
    /// A blocking task (archiving, extracting) ended abnormally.
    #[error("a blocking task ended abnormally")]
    Task(#[source] tokio::task::JoinError),
    /// The kernel's random source failed (an id could not be made).
    #[error("no random bytes for an id")]
    Random,
}

impl Error {
    /// Whether the input is at fault (answered 400), not this host.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Refused(_))
    }
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Self {
        Self::Refused(r)
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an `io::Error` with what was being done.
pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

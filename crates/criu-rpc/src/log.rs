//! Excerpts of CRIU's log file, for errors and diagnostics.
//!
//! CRIU's `cr_errmsg` is only the first error line it logged, which is often
//! not the cause (on this kind of machine every run logs a harmless
//! RLIMIT_NOFILE error first). The excerpt keeps the log's last lines and
//! picks out the error lines, skipping the known-harmless ones.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Error lines CRIU logs on every run of some machines without it mattering.
const HARMLESS: &[&str] = &["rlimit: Can't setup RLIMIT_NOFILE for self"];

/// How much of the end of a log is read at most.
const TAIL_BYTES: u64 = 64 * 1024;

/// The end of a CRIU log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogExcerpt {
    /// The log file.
    pub path: PathBuf,
    /// Its last lines (at most the number asked for).
    pub tail: Vec<String>,
    /// The `Error` lines among the last 64 KiB, harmless ones left out.
    pub errors: Vec<String>,
}

impl LogExcerpt {
    /// Reads the last `lines` lines of `path` and its error lines.
    pub fn read(path: impl AsRef<Path>, lines: usize) -> std::io::Result<Self> {
        let path = path.as_ref();
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        let start = len.saturating_sub(TAIL_BYTES);
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        f.take(TAIL_BYTES).read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        let mut all: Vec<&str> = text.lines().collect();
        if start > 0 && !all.is_empty() {
            // The first line was cut by the seek.
            all.remove(0);
        }
        let errors = all
            .iter()
            .filter(|l| l.contains("Error (") || l.starts_with("Error"))
            .filter(|l| !HARMLESS.iter().any(|h| l.contains(h)))
            .map(|l| l.to_string())
            .collect();
        let tail = all[all.len().saturating_sub(lines)..]
            .iter()
            .map(|l| l.to_string())
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            tail,
            errors,
        })
    }

    /// The last error line that says what went wrong: not a known-harmless
    /// one, and not CRIU's closing summary ("Dumping FAILED.") when a more
    /// specific line precedes it.
    pub fn last_error(&self) -> Option<&str> {
        let specific = self
            .errors
            .iter()
            .rev()
            .find(|l| !l.trim_end().ends_with("FAILED."));
        specific.or(self.errors.last()).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_skips_harmless_errors_and_keeps_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dump.log");
        std::fs::write(
            &p,
            "(00.000) Version: 4.1.1\n\
             (00.001) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n\
             (00.002) Dumping\n\
             (00.003) Error (criu/cr-dump.c:1): Can't seize 424242\n\
             (00.004) Dumping FAILED.\n",
        )
        .unwrap();
        let e = LogExcerpt::read(&p, 2).unwrap();
        assert_eq!(
            e.tail,
            [
                "(00.003) Error (criu/cr-dump.c:1): Can't seize 424242",
                "(00.004) Dumping FAILED."
            ]
        );
        assert_eq!(e.errors.len(), 1);
        assert_eq!(
            e.last_error(),
            Some("(00.003) Error (criu/cr-dump.c:1): Can't seize 424242")
        );
    }

    #[test]
    fn a_missing_log_is_an_io_error() {
        assert!(LogExcerpt::read("/nonexistent/criu.log", 5).is_err());
    }
}

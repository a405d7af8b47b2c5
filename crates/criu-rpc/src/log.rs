//! Excerpts of CRIU's log file, for errors and diagnostics.
//!
//! CRIU's `cr_errmsg` is only the first error line it logged, which is often
//! not the cause (on this kind of machine every run logs a harmless
//! RLIMIT_NOFILE error first). What decides a failure is logged last, just
//! before CRIU's closing `Dumping FAILED.` / `Restoring FAILED.`: the excerpt
//! keeps the log's last lines, its error lines (known-harmless ones left
//! out) and those decisive ones.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Error lines CRIU logs on every run of some machines without it mattering.
const HARMLESS: &[&str] = &["rlimit: Can't setup RLIMIT_NOFILE for self"];

/// How much of the end of a log is read at most.
const TAIL_BYTES: u64 = 64 * 1024;

/// How many error lines before the closing summary are quoted as the cause.
const DECISIVE: usize = 3;

/// The end of a CRIU log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogExcerpt {
    /// The log file.
    pub path: PathBuf,
    /// Its last lines (at most the number asked for).
    pub tail: Vec<String>,
    /// The `Error` lines among the last 64 KiB, harmless ones left out.
    pub errors: Vec<String>,
    /// The error lines that decide the failure: the last few before CRIU's
    /// closing `... FAILED.` line (or the last few at all when it wrote
    /// none), oldest first, without their time stamps.
    pub decisive: Vec<String>,
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
        let errors: Vec<String> = all
            .iter()
            .filter(|l| is_error(l))
            .map(|l| l.to_string())
            .collect();
        let decisive = decisive(&all);
        let tail = all[all.len().saturating_sub(lines)..]
            .iter()
            .map(|l| l.to_string())
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            tail,
            errors,
            decisive,
        })
    }

    /// The decisive lines joined for one line of text, or `None` when the log
    /// held no error at all.
    pub fn cause(&self) -> Option<String> {
        (!self.decisive.is_empty()).then(|| self.decisive.join("; "))
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

/// CRIU's summary line when a request fails.
fn is_summary(line: &str) -> bool {
    line.trim_end().ends_with("FAILED.")
}

/// Whether a line is one CRIU logs here on every run without it mattering.
pub(crate) fn is_harmless(line: &str) -> bool {
    HARMLESS.iter().any(|h| line.contains(h))
}

fn is_error(line: &str) -> bool {
    (line.contains("Error (") || line.starts_with("Error")) && !is_harmless(line)
}

/// `(00.123456) Error (criu/sk-inet.c:42): what` -> `sk-inet.c:42: what`:
/// the time stamp says nothing about the cause and the `Error (criu/` wrapper
/// is on every line.
fn plain(line: &str) -> String {
    let mut s = line.trim();
    if s.starts_with('(') {
        if let Some(end) = s.find(") ") {
            s = &s[end + 2..];
        }
    }
    if let Some(at) = s.find("Error (") {
        let rest = &s[at + "Error (".len()..];
        if let Some(close) = rest.find("): ") {
            let place = rest[..close].trim_start_matches("criu/");
            return format!("{place}: {}", &rest[close + 3..]);
        }
    }
    s.to_string()
}

fn decisive(lines: &[&str]) -> Vec<String> {
    let end = lines
        .iter()
        .rposition(|l| is_summary(l))
        .unwrap_or(lines.len());
    let mut picked: Vec<String> = lines[..end]
        .iter()
        .rev()
        .filter(|l| is_error(l) && !is_summary(l))
        .take(DECISIVE)
        .map(|l| plain(l))
        .collect();
    picked.reverse();
    picked
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
    fn the_cause_is_the_lines_before_the_summary_not_the_first_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dump.log");
        std::fs::write(
            &p,
            "(00.000100) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n\
             (00.010000) Error (criu/files-reg.c:10): early noise\n\
             (00.020000) Error (criu/sockets.c:612): sockets: Can't get 1:16 opt: Operation not supported\n\
             (00.020100) Error (criu/sockets.c:612): sockets: Can't get 1:34 opt: Operation not supported\n\
             (00.020200) Error (criu/cr-dump.c:1700): Dump files (pid: 4242) failed with -1\n\
             (00.030000) Error (criu/cr-dump.c:2100): Dumping FAILED.\n\
             (00.030100) Error (criu/cr-dump.c:2200): after the summary\n",
        )
        .unwrap();
        let e = LogExcerpt::read(&p, 2).unwrap();
        assert_eq!(
            e.decisive,
            [
                "sockets.c:612: sockets: Can't get 1:16 opt: Operation not supported",
                "sockets.c:612: sockets: Can't get 1:34 opt: Operation not supported",
                "cr-dump.c:1700: Dump files (pid: 4242) failed with -1",
            ]
        );
        assert!(!e.cause().unwrap().contains("RLIMIT"));
    }

    #[test]
    fn without_a_summary_the_last_errors_decide_and_a_clean_log_has_no_cause() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("restore.log");
        std::fs::write(
            &p,
            "(00.1) pie: 1: Error (criu/pie/restorer.c:9): bad\n(00.2) done\n",
        )
        .unwrap();
        assert_eq!(
            LogExcerpt::read(&p, 5).unwrap().decisive,
            ["pie/restorer.c:9: bad"]
        );
        std::fs::write(
            &p,
            "(00.1) Error (criu/util.c:1): rlimit: Can't setup RLIMIT_NOFILE for self: x\n",
        )
        .unwrap();
        assert_eq!(LogExcerpt::read(&p, 5).unwrap().cause(), None);
    }

    #[test]
    fn a_missing_log_is_an_io_error() {
        assert!(LogExcerpt::read("/nonexistent/criu.log", 5).is_err());
    }
}

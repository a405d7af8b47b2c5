//! What a running migration tells its caller: [`Progress`] events, and the
//! ticker that reports bytes while memory streams.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::mode::ModeChoice;
use crate::policy::Decision;
use crate::stats::{IterationReport, Phase};

/// What a running migration reports as it goes.
///
/// As JSON (serde), each event is an object whose `event` names it
/// (`"phase"`, `"bytes"`, `"resumed"`, ...) and whose `value` carries its
/// data; durations are milliseconds. The names and shapes are a stable
/// interface for scripts and orchestrators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "value", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Progress {
    /// A new phase began.
    Phase(Phase),
    /// The mode was chosen, and why.
    Mode(ModeChoice),
    /// An iteration (pre-dump or final dump) ended.
    Iteration(IterationReport),
    /// Bytes sent to the target so far (memory and images); while memory
    /// streams, at least every [`BYTES_TICK`].
    Bytes(u64),
    /// About how many bytes the migration will send: the tree's anonymous
    /// resident memory when it started (what CRIU copies; images, files and
    /// pages the tree dirties meanwhile add to it). Comes once, before
    /// memory moves, for a progress bar and an ETA.
    Expected(u64),
    /// Pre-copy decided how to go on, and why.
    Decision(Decision),
    /// The source is frozen (the final dump started).
    Frozen,
    /// The target runs the tree; the downtime was this long (ms in JSON).
    Resumed(#[serde(serialize_with = "millis", deserialize_with = "from_millis")] Duration),
    /// Rolling back: the source is being resumed.
    RollingBack(String),
    /// A pre-flight check failed and [`Migration::force`](super::Migration::force) went on anyway.
    Warning(String),
}

/// One line for people, as the CLI and phaul-web show events (the JSON form
/// is for tools).
impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Progress::Phase(p) => write!(f, "{}", p.describe()),
            Progress::Mode(c) => write!(f, "mode {}: {}", c.mode, c.reason),
            Progress::Iteration(it) => write!(
                f,
                "iteration {} ({}): {} pages written, {} lazy, {:.1} MiB sent",
                it.iteration,
                it.kind,
                it.pages_written,
                it.pages_lazy,
                it.bytes_sent as f64 / 1048576.0
            ),
            Progress::Bytes(b) => write!(f, "{:.1} MiB sent", *b as f64 / 1048576.0),
            Progress::Expected(b) => {
                write!(f, "about {:.1} MiB to send", *b as f64 / 1048576.0)
            }
            Progress::Decision(d) => write!(f, "pre-copy: {d:?}"),
            Progress::Frozen => write!(f, "source frozen"),
            Progress::Resumed(d) => write!(
                f,
                "target running; downtime {:.1} ms",
                d.as_secs_f64() * 1e3
            ),
            Progress::RollingBack(why) => write!(f, "rolling back: {why}"),
            Progress::Warning(why) => write!(f, "warning: {why}"),
        }
    }
}

/// How often [`Progress::Bytes`] comes while memory streams to the target.
pub const BYTES_TICK: Duration = Duration::from_millis(200);

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

fn from_millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let ms = f64::deserialize(d)?;
    Duration::try_from_secs_f64(ms / 1000.0).map_err(serde::de::Error::custom)
}

/// One [`Progress`] event as it leaves the process: with the form's version
/// and the migration's id, which the target's logs carry too. In JSON the
/// event's own keys (`event`, `value`) sit beside `schema` and `migration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The version of this form ([`Event::SCHEMA`]).
    pub schema: u32,
    /// The migration's id.
    pub migration: String,
    /// Milliseconds since the migration's first event (absent, 0, from
    /// writers before it was added).
    #[serde(default)]
    pub elapsed_ms: f64,
    /// What happened.
    #[serde(flatten)]
    pub progress: Progress,
}

impl Event {
    /// The version of the event form this build writes.
    pub const SCHEMA: u32 = 1;
}

/// The anonymous resident bytes of the tree rooted at `root` (resident
/// minus file-backed and shared pages, from `/proc/PID/statm`): what a dump
/// copies. Processes that end while it reads are left out.
pub(crate) fn tree_memory(root: i32) -> u64 {
    let mut parent: Vec<(i32, i32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    // The name may hold spaces and parentheses.
                    let rest = &s[s.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                });
            if let Some(ppid) = ppid {
                parent.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(
            parent
                .iter()
                .filter(|(c, pp)| *pp == p && *c != p)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    // SAFETY: sysconf only reads a constant of the system.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    tree.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/statm")).ok())
        .filter_map(|s| {
            let mut f = s.split_whitespace().skip(1);
            let resident: u64 = f.next()?.parse().ok()?;
            let shared: u64 = f.next()?.parse().ok()?;
            Some(resident.saturating_sub(shared) * page)
        })
        .sum()
}

/// Emits [`Progress::Bytes`] every [`BYTES_TICK`] while a page relay runs:
/// `base` plus what the relay has sent. Stops when dropped, or when `emit`
/// says no one listens any more.
pub(super) struct BytesTicker(Option<tokio::task::JoinHandle<()>>);

impl BytesTicker {
    /// `emit` sends an event to every listener of the migration (its
    /// [`Progress`] channel and its [`Event`] stream) and says whether one
    /// is still there; `None` when there are none.
    pub(super) fn start(
        emit: Option<impl Fn(Progress) -> bool + Send + 'static>,
        base: u64,
        sent: impl Fn() -> u64 + Send + 'static,
    ) -> Self {
        let Some(emit) = emit else {
            return Self(None);
        };
        Self(Some(tokio::spawn(async move {
            let mut last = None;
            loop {
                tokio::time::sleep(BYTES_TICK).await;
                let now = base + sent();
                if last != Some(now) && !emit(Progress::Bytes(now)) {
                    return;
                }
                last = Some(now);
            }
        })))
    }
}

impl Drop for BytesTicker {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

//! A migration's statistics, recorded as a state machine and finalized into
//! an immutable [`Report`].
//!
//! The numbers users judge a migration by — above all the downtime, from
//! the moment the source froze to the moment the target resumed — are only
//! trustworthy if they are recorded in the order things happened. So, like
//! Cloud Hypervisor's `OngoingMigrationContext`, the running record
//! ([`Ongoing`]) checks each transition and refuses one out of order (a bug
//! in the engine, reported as [`Error::Stats`]) instead of producing a
//! report with a negative or missing downtime; and
//! [`finalize`](Ongoing::finalize) consumes it, so nothing can be recorded
//! after the [`Report`] exists. The report's JSON form is the stable
//! interface for tools; its [`Display`](fmt::Display) form is for people.

use std::fmt;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::mode::ModeChoice;
use crate::policy::IterationSample;

/// The phases of a migration, in the order they happen. A mode may skip
/// some (stop-copy has no pre-copy; only post-copy has a lazy transfer);
/// [`Phase::Rollback`] can follow any phase but [`Phase::Done`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Checks of both hosts (CPU, CRIU versions, features) before anything
    /// is touched.
    Preflight,
    /// The pre-dump iterations, while the process runs.
    PreCopy,
    /// The final dump: the process is frozen from here on.
    FinalDump,
    /// Sending the final dump's images to the target.
    ImageTransfer,
    /// CRIU restoring the process on the target (held stopped there).
    Restore,
    /// Letting the target's copy run; for every mode but post-copy, the
    /// source's copy is ended here.
    Commit,
    /// Post-copy, after the commit: the target runs and its remaining
    /// memory follows; the source's copy ends when the last page is sent.
    LazyTransfer,
    /// Undoing a failed migration: the source's process resumes.
    Rollback,
    /// The migration has ended, one way or the other.
    Done,
}

impl Phase {
    /// What happens in the phase, in plain words, for people watching a
    /// migration (the name, [`Phase::as_str`], is for tools).
    pub const fn describe(self) -> &'static str {
        match self {
            Phase::Preflight => "checking both hosts",
            Phase::PreCopy => "copying memory while the process runs",
            Phase::FinalDump => "copying memory — the process is paused",
            Phase::ImageTransfer => "sending the process's state — the process is paused",
            Phase::Restore => "starting the copy on the target — the process is paused",
            Phase::Commit => "switching over to the target",
            Phase::LazyTransfer => "running on the target; the rest of its memory follows",
            Phase::Rollback => "undoing: resuming the process on the source",
            Phase::Done => "done",
        }
    }

    /// The phase's name, as in [`Display`](fmt::Display) and JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Preflight => "preflight",
            Phase::PreCopy => "pre-copy",
            Phase::FinalDump => "final-dump",
            Phase::ImageTransfer => "image-transfer",
            Phase::Restore => "restore",
            Phase::LazyTransfer => "lazy-transfer",
            Phase::Commit => "commit",
            Phase::Rollback => "rollback",
            Phase::Done => "done",
        }
    }

    /// The position in the forward order; `Rollback` sits after every phase
    /// it may follow, and before `Done`.
    const fn rank(self) -> u8 {
        match self {
            Phase::Preflight => 0,
            Phase::PreCopy => 1,
            Phase::FinalDump => 2,
            Phase::ImageTransfer => 3,
            Phase::Restore => 4,
            Phase::Commit => 5,
            Phase::LazyTransfer => 6,
            Phase::Rollback => 7,
            Phase::Done => 8,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One CRIU dump iteration: a pre-dump, the final dump, or the final dump
/// of post-copy (which leaves memory behind), with CRIU's `stats-dump`
/// numbers and ours.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct IterationReport {
    /// The iteration index, 0 for the first dump of any kind.
    pub iteration: u32,
    /// [`IterationReport::PRE_DUMP`], [`IterationReport::DUMP`] or
    /// [`IterationReport::LAZY_DUMP`].
    pub kind: String,
    /// Pages CRIU looked at.
    pub pages_scanned: u64,
    /// Pages CRIU wrote (sent).
    pub pages_written: u64,
    /// Pages left out because the parent images already hold them.
    pub pages_skipped_parent: u64,
    /// Pages left behind for the target to fetch lazily (post-copy).
    pub pages_lazy: u64,
    /// Time CRIU took to freeze the tree, in microseconds.
    pub freezing_us: u64,
    /// Time the tree was frozen, in microseconds.
    pub frozen_us: u64,
    /// Time CRIU spent collecting the pages, in microseconds.
    pub memdump_us: u64,
    /// Time CRIU spent writing the pages, in microseconds.
    pub memwrite_us: u64,
    /// Bytes sent to the target for this dump.
    pub bytes_sent: u64,
    /// Wall time of the dump, in microseconds.
    pub duration_us: u64,
}

impl IterationReport {
    /// [`kind`](Self::kind) of a pre-dump.
    pub const PRE_DUMP: &'static str = "pre-dump";
    /// [`kind`](Self::kind) of a final dump with all memory.
    pub const DUMP: &'static str = "dump";
    /// [`kind`](Self::kind) of a post-copy final dump, memory left behind.
    pub const LAZY_DUMP: &'static str = "lazy-dump";
}

impl From<&IterationReport> for IterationSample {
    fn from(r: &IterationReport) -> Self {
        Self {
            iteration: r.iteration,
            pages_scanned: r.pages_scanned,
            pages_written: r.pages_written,
            pages_skipped_parent: r.pages_skipped_parent,
            bytes_sent: r.bytes_sent,
            duration_us: r.duration_us,
            frozen_us: r.frozen_us,
            overhead_us: 0,
            restore_estimate_us: 0,
        }
    }
}

/// The statistics of a migration under way.
///
/// Created by [`Ongoing::start`], fed by the engine as things happen, and
/// turned into a [`Report`] by [`Ongoing::finalize`]. Transitions that
/// would make the numbers wrong (a phase going backwards, the target
/// resuming before the source froze, ending twice) are refused with
/// [`Error::Stats`] and leave the record unchanged.
#[derive(Debug)]
pub struct Ongoing {
    choice: ModeChoice,
    started: Instant,
    phase: Phase,
    iterations: Vec<IterationReport>,
    bytes: u64,
    frozen_at: Option<Instant>,
    resumed_at: Option<Instant>,
    restore: Option<Duration>,
    image_transfer: Duration,
    predicted_downtime: Option<Duration>,
    /// Before pre-copy: the dirty rate and the link's speed, bytes/s.
    probe: Option<(f64, f64)>,
    source_pid: Option<i32>,
    target_pid: Option<i32>,
    fs: FsReport,
    logs: Option<std::path::PathBuf>,
    freeze_timeout: Option<Duration>,
    migration_id: String,
    /// The source asked the target to commit: from here on, a failure may
    /// leave the tree running on both hosts.
    commit_sent: bool,
}

/// How a migration ended, and so where its tree runs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The tree runs on the target only.
    Succeeded,
    /// Refused or failed before the source was frozen: the tree ran on the
    /// source all along, and the target kept nothing.
    NotStarted,
    /// Failed after the freeze, before the commit: the source runs the tree
    /// again and the target dropped its copy.
    RolledBack,
    /// Failed at or after the commit (the target's answer lost, or the rest
    /// of a post-copy's memory not delivered): the tree may run on both
    /// hosts or only partly on the target. Someone must look.
    Diverged,
}

/// The file-system passes of a migration, added up.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct FsReport {
    /// The driver ("native", "rsync", "shared"), or "" without one.
    pub driver: String,
    /// Passes run (the first, one per pre-dump, the final one).
    pub passes: u32,
    /// Files created or updated on the target, all passes together.
    pub files: u64,
    /// File content bytes sent.
    pub bytes: u64,
    /// Entries deleted on the target.
    pub deleted: u64,
    /// Files and bytes of the final pass alone, made while frozen.
    pub final_files: u64,
    /// See `final_files`.
    pub final_bytes: u64,
}

impl Ongoing {
    /// Starts recording a migration in `mode`, now, in [`Phase::Preflight`].
    pub fn start(mode: ModeChoice) -> Self {
        Self {
            choice: mode,
            started: Instant::now(),
            phase: Phase::Preflight,
            iterations: Vec::new(),
            bytes: 0,
            frozen_at: None,
            resumed_at: None,
            restore: None,
            image_transfer: Duration::ZERO,
            predicted_downtime: None,
            probe: None,
            source_pid: None,
            target_pid: None,
            fs: FsReport::default(),
            logs: None,
            freeze_timeout: None,
            migration_id: String::new(),
            commit_sent: false,
        }
    }

    /// The migration's id, for the report.
    pub fn set_migration_id(&mut self, id: &str) {
        id.clone_into(&mut self.migration_id);
    }

    /// The source sent `Commit` (`true`), or the target refused it in so
    /// many words (`false`: it does not run the tree).
    pub fn commit_sent(&mut self, sent: bool) {
        self.commit_sent = sent;
    }

    /// How a migration that ended now, with `succeeded`, ended.
    pub fn outcome(&self, succeeded: bool) -> Outcome {
        match (succeeded, self.frozen_at, self.commit_sent) {
            (true, ..) => Outcome::Succeeded,
            (false, None, _) => Outcome::NotStarted,
            (false, Some(_), false) => Outcome::RolledBack,
            (false, Some(_), true) => Outcome::Diverged,
        }
    }

    /// Records one file-system pass (`final_pass`: made while frozen).
    /// Its bytes also count towards the bytes transferred.
    pub fn record_fs(
        &mut self,
        driver: &'static str,
        files: u64,
        bytes: u64,
        deleted: u64,
        final_pass: bool,
    ) {
        if self.fs.driver != driver {
            self.fs.driver = driver.to_owned();
        }
        self.fs.passes += 1;
        self.fs.files += files;
        self.fs.bytes += bytes;
        self.fs.deleted += deleted;
        if final_pass {
            self.fs.final_files = files;
            self.fs.final_bytes = bytes;
        }
        self.bytes += bytes;
    }

    /// The mode this migration uses, and why.
    pub fn mode(&self) -> &ModeChoice {
        &self.choice
    }

    /// Records the mode once the pre-flight has chosen it (a migration
    /// starts before both hosts' features are known).
    pub fn set_mode(&mut self, choice: ModeChoice) {
        self.choice = choice;
    }

    /// Moves to `phase`.
    ///
    /// Phases go forward, possibly skipping some; [`Phase::Rollback`] may
    /// follow any phase but [`Phase::Done`], and only [`Phase::Done`] may
    /// follow it. Entering the current phase again is a no-op, except
    /// [`Phase::Done`]: ending twice is an error, as is anything after it.
    pub fn enter(&mut self, phase: Phase) -> Result<()> {
        let from = self.phase;
        let allowed = match (from, phase) {
            (Phase::Done, _) => false,
            (Phase::Rollback, to) => matches!(to, Phase::Rollback | Phase::Done),
            (_, Phase::Rollback) => true,
            (from, to) => to.rank() >= from.rank(),
        };
        if !allowed {
            let why = if from == Phase::Done {
                "the migration has already ended"
            } else {
                "phases only go forward, or to rollback"
            };
            return Err(Error::Stats(format!(
                "cannot enter phase {phase} from {from}: {why}"
            )));
        }
        if from != phase {
            tracing::debug!(%from, to = %phase, "migration phase");
        }
        self.phase = phase;
        Ok(())
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Records one CRIU dump iteration, in the order they ran. Its
    /// `bytes_sent` is a breakdown and is not added to [`bytes`](Self::bytes).
    pub fn record_iteration(&mut self, r: IterationReport) {
        self.iterations.push(r);
    }

    /// Counts `n` more bytes sent to the other host, of any kind (memory,
    /// images, file systems, control).
    pub fn add_bytes(&mut self, n: u64) {
        self.bytes = self.bytes.saturating_add(n);
    }

    /// The bytes counted by [`add_bytes`](Self::add_bytes) so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Records when the source's process was frozen for the last time (the
    /// final dump's freeze): the start of the downtime. Once only.
    pub fn source_frozen(&mut self, at: Instant) -> Result<()> {
        if let Some(before) = self.frozen_at {
            return Err(Error::Stats(format!(
                "source frozen twice (first {:?} after the start)",
                before.saturating_duration_since(self.started)
            )));
        }
        self.frozen_at = Some(at);
        Ok(())
    }

    /// Records when the target's process resumed: the end of the downtime.
    /// Once only, after [`source_frozen`](Self::source_frozen), and not at
    /// an earlier instant.
    pub fn target_resumed(&mut self, at: Instant) -> Result<()> {
        let Some(frozen) = self.frozen_at else {
            return Err(Error::Stats(
                "target resumed before the source was frozen".to_owned(),
            ));
        };
        if self.resumed_at.is_some() {
            return Err(Error::Stats("target resumed twice".to_owned()));
        }
        if at < frozen {
            return Err(Error::Stats(format!(
                "target resumed {:?} before the source was frozen",
                frozen.duration_since(at)
            )));
        }
        self.resumed_at = Some(at);
        Ok(())
    }

    /// Records how long CRIU's restore took on the target (its
    /// `stats-restore`, or our measure of the request).
    pub fn set_restore_time(&mut self, d: Duration) {
        self.restore = Some(d);
    }

    /// Adds `d` to the time spent sending images to the target; called
    /// once per transfer.
    pub fn set_image_transfer(&mut self, d: Duration) {
        self.image_transfer = self.image_transfer.saturating_add(d);
    }

    /// Records the downtime the convergence policy predicted for the final
    /// dump, if it predicted one.
    pub fn set_predicted_downtime(&mut self, d: Option<Duration>) {
        self.predicted_downtime = d;
    }

    /// Records what was measured before pre-copy: how fast the tree's
    /// dirty set grew and the link's speed, in bytes per second.
    pub fn set_probe(&mut self, dirty_bytes_per_sec: f64, link_bytes_per_sec: f64) {
        self.probe = Some((dirty_bytes_per_sec, link_bytes_per_sec));
    }

    /// Records the PID of the restored process on the target.
    pub fn set_target_pid(&mut self, pid: i32) {
        self.target_pid = Some(pid);
    }

    /// Records the PID of the migrated process on the source.
    pub fn set_source_pid(&mut self, pid: i32) {
        self.source_pid = Some(pid);
    }

    /// Records the longest the source was allowed to stay frozen.
    pub fn set_freeze_timeout(&mut self, limit: Duration) {
        self.freeze_timeout = Some(limit);
    }

    /// Records where CRIU's logs of a failed migration were kept.
    pub fn set_logs(&mut self, dir: &std::path::Path) {
        self.logs = Some(dir.to_path_buf());
    }

    /// The downtime so far: from the source's freeze to the target's
    /// resume, or to now while the target has not resumed; `None` before
    /// the source froze.
    pub fn downtime_so_far(&self) -> Option<Duration> {
        let frozen = self.frozen_at?;
        let end = self.resumed_at.unwrap_or_else(Instant::now);
        Some(end.saturating_duration_since(frozen))
    }

    /// The dump iterations recorded so far, in order.
    pub fn iterations(&self) -> &[IterationReport] {
        &self.iterations
    }

    /// The time since [`start`](Self::start).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Ends the record and returns the report: `outcome` is `Ok` for a
    /// migration that succeeded, or the error that ended it, in words.
    ///
    /// The downtime is only reported when both ends were recorded: a
    /// process that never resumed on the target had no downtime that ended.
    /// The phase reached is the last phase entered.
    pub fn finalize(self, outcome: std::result::Result<(), String>) -> Report {
        let downtime = match (self.frozen_at, self.resumed_at) {
            (Some(f), Some(r)) => Some(r.saturating_duration_since(f)),
            _ => None,
        };
        Report {
            schema: Report::SCHEMA,
            outcome: self.outcome(outcome.is_ok()),
            migration_id: self.migration_id,
            success: outcome.is_ok(),
            mode: self.choice.mode.to_string(),
            requested_mode: self.choice.requested.to_string(),
            mode_reason: self.choice.reason,
            downtime_ms: downtime.map(ms),
            total_ms: ms(self.started.elapsed()),
            iterations: u32::try_from(self.iterations.len()).unwrap_or(u32::MAX),
            bytes_transferred: self.bytes,
            error: outcome.err(),
            restore_ms: self.restore.map(ms),
            image_transfer_ms: ms(self.image_transfer),
            predicted_downtime_ms: self.predicted_downtime.map(ms),
            dirty_rate_mib_s: self.probe.map(|(d, _)| d / MIB),
            link_mib_s: self.probe.map(|(_, l)| l / MIB),
            source_pid: self.source_pid,
            target_pid: self.target_pid,
            per_iteration: self.iterations,
            phase_reached: self.phase,
            fs: self.fs,
            logs: self.logs.map(|p| p.display().to_string()),
            freeze_timeout_ms: self.freeze_timeout.map(ms),
        }
    }
}

/// Milliseconds as a float, the unit of every time in a [`Report`].
/// Bytes in a MiB, for rates.
const MIB: f64 = 1024.0 * 1024.0;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What a migration did, once it has ended. Immutable: made only by
/// [`Ongoing::finalize`].
///
/// Its JSON form ([`Report::to_json`]) is the stable interface: the keys
/// `success`, `mode`, `downtime_ms`, `total_ms`, `iterations`,
/// `bytes_transferred` and `error` will keep their names and meaning.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// The version of this form ([`Report::SCHEMA`]); a reader refuses
    /// one it does not know.
    pub schema: u32,
    /// The migration's id, the same in the target's logs and events.
    pub migration_id: String,
    /// How it ended, and so where the tree runs now.
    pub outcome: Outcome,
    /// Whether the process now runs on the target.
    pub success: bool,
    /// The mode used, e.g. `pre-copy`.
    pub mode: String,
    /// The mode asked for, e.g. `auto`.
    pub requested_mode: String,
    /// Why that mode was used.
    pub mode_reason: String,
    /// From the source's freeze to the target's resume, in milliseconds;
    /// `None` if the source never froze or the target never resumed.
    pub downtime_ms: Option<f64>,
    /// The whole migration, in milliseconds.
    pub total_ms: f64,
    /// CRIU dump iterations, the final dump included.
    pub iterations: u32,
    /// Bytes sent to the other host.
    pub bytes_transferred: u64,
    /// What ended a failed migration; `None` on success.
    pub error: Option<String>,
    /// CRIU's restore on the target, in milliseconds, if it ran.
    pub restore_ms: Option<f64>,
    /// Time spent sending images, in milliseconds.
    pub image_transfer_ms: f64,
    /// The downtime the convergence policy predicted, in milliseconds.
    pub predicted_downtime_ms: Option<f64>,
    /// Before pre-copy, where memory tracking works: how fast the tree's
    /// dirty set grew, in MiB/s (see `phaul_core::dirty`).
    #[serde(default)]
    pub dirty_rate_mib_s: Option<f64>,
    /// Measured with it: what the link carried, in MiB/s.
    #[serde(default)]
    pub link_mib_s: Option<f64>,
    /// The process's PID on the source.
    pub source_pid: Option<i32>,
    /// The process's PID on the target.
    pub target_pid: Option<i32>,
    /// Each CRIU dump iteration, in order.
    pub per_iteration: Vec<IterationReport>,
    /// The file-system passes, if the htype has a file system.
    pub fs: FsReport,
    /// The last phase entered.
    pub phase_reached: Phase,
    /// Where this host kept CRIU's logs of a failed migration (the target's
    /// are named in `error` when its CRIU failed); `None` on success.
    pub logs: Option<String>,
    /// The longest the source was allowed to stay frozen, in milliseconds;
    /// `None` if it never froze.
    pub freeze_timeout_ms: Option<f64>,
}

impl Report {
    /// The version of the report's form that this build writes.
    pub const SCHEMA: u32 = 1;

    /// The report as pretty-printed JSON: the stable interface.
    pub fn to_json(&self) -> String {
        // Cannot fail: every field is a string, number, bool, option,
        // vector or unit enum (no maps with non-string keys), and
        // serde_json writes non-finite floats as null.
        serde_json::to_string_pretty(self).expect("a Report always serializes to JSON")
    }
}

/// A short report for people, several lines. The format may change
/// between versions; tools should read [`Report::to_json`] instead.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.success {
            writeln!(f, "migration succeeded in {:.1} ms", self.total_ms)?;
        } else {
            writeln!(
                f,
                "migration FAILED after {:.1} ms, in phase {}",
                self.total_ms, self.phase_reached
            )?;
        }
        if self.mode == self.requested_mode {
            writeln!(f, "mode: {} ({})", self.mode, self.mode_reason)?;
        } else {
            writeln!(
                f,
                "mode: {}, asked for {} ({})",
                self.mode, self.requested_mode, self.mode_reason
            )?;
        }
        match (self.downtime_ms, self.predicted_downtime_ms) {
            (Some(d), Some(p)) => write!(f, "downtime: {d:.1} ms (predicted {p:.1} ms)")?,
            (Some(d), None) => write!(f, "downtime: {d:.1} ms")?,
            (None, Some(p)) => write!(f, "downtime: not measured (predicted {p:.1} ms)")?,
            (None, None) => write!(f, "downtime: not measured")?,
        }
        match self.freeze_timeout_ms {
            Some(l) => writeln!(f, "; freeze limit {:.1} s", l / 1000.0)?,
            None => writeln!(f)?,
        }
        if let Some(r) = self.restore_ms {
            writeln!(f, "restore: {r:.1} ms")?;
        }
        let pre_dumps = self
            .per_iteration
            .iter()
            .filter(|i| i.kind == IterationReport::PRE_DUMP)
            .count();
        writeln!(f, "iterations: {} ({pre_dumps} pre-dumps)", self.iterations)?;
        write!(
            f,
            "transferred: {:.1} MiB",
            self.bytes_transferred as f64 / (1024.0 * 1024.0)
        )?;
        if let Some(e) = &self.error {
            write!(f, "\nerror: {e}")?;
        }
        if let Some(l) = &self.logs {
            write!(f, "\nCRIU logs kept in {l}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mode::Mode;

    fn choice() -> ModeChoice {
        ModeChoice {
            mode: Mode::PreCopy,
            requested: Mode::Auto,
            reason: "because".to_owned(),
        }
    }

    fn iteration(i: u32, kind: &str, pages: u64) -> IterationReport {
        IterationReport {
            iteration: i,
            kind: kind.to_owned(),
            pages_scanned: 1_000,
            pages_written: pages,
            bytes_sent: pages * 4096,
            duration_us: 10_000,
            frozen_us: 500,
            ..IterationReport::default()
        }
    }

    fn ok(r: Result<()>) {
        if let Err(e) = r {
            panic!("{e}");
        }
    }

    fn refused(r: Result<()>) -> String {
        match r {
            Err(Error::Stats(s)) => s,
            other => panic!("expected Error::Stats, got {other:?}"),
        }
    }

    #[test]
    fn happy_path() {
        let mut s = Ongoing::start(choice());
        assert_eq!(s.phase(), Phase::Preflight);
        s.set_source_pid(42);
        ok(s.enter(Phase::PreCopy));
        s.record_iteration(iteration(0, IterationReport::PRE_DUMP, 1_000));
        s.record_iteration(iteration(1, IterationReport::PRE_DUMP, 50));
        s.add_bytes(1_050 * 4096);
        s.set_predicted_downtime(Some(Duration::from_millis(80)));
        ok(s.enter(Phase::FinalDump));
        let t0 = Instant::now();
        ok(s.source_frozen(t0));
        assert!(s.downtime_so_far().is_some());
        s.record_iteration(iteration(2, IterationReport::DUMP, 10));
        s.add_bytes(10 * 4096);
        ok(s.enter(Phase::ImageTransfer));
        s.set_image_transfer(Duration::from_millis(3));
        s.set_image_transfer(Duration::from_millis(2));
        ok(s.enter(Phase::Restore));
        s.set_restore_time(Duration::from_millis(40));
        s.set_target_pid(4242);
        ok(s.target_resumed(t0 + Duration::from_millis(100)));
        ok(s.enter(Phase::Commit));
        ok(s.enter(Phase::Done));
        assert_eq!(s.iterations().len(), 3);
        assert_eq!(s.bytes(), 1_060 * 4096);
        assert_eq!(s.mode().mode, Mode::PreCopy);
        let elapsed = s.elapsed();

        let r = s.finalize(Ok(()));
        assert!(r.success);
        assert_eq!(r.error, None);
        assert_eq!(
            (r.mode.as_str(), r.requested_mode.as_str()),
            ("pre-copy", "auto")
        );
        assert_eq!(r.mode_reason, "because");
        assert_eq!(r.downtime_ms, Some(100.0));
        assert!(r.total_ms >= ms(elapsed));
        assert_eq!(r.iterations, 3);
        assert_eq!(r.bytes_transferred, 1_060 * 4096);
        assert_eq!(r.restore_ms, Some(40.0));
        assert_eq!(r.image_transfer_ms, 5.0);
        assert_eq!(r.predicted_downtime_ms, Some(80.0));
        assert_eq!((r.source_pid, r.target_pid), (Some(42), Some(4242)));
        assert_eq!(r.phase_reached, Phase::Done);
        assert_eq!(r.per_iteration[2].kind, "dump");

        let text = r.to_string();
        assert!(text.starts_with("migration succeeded in "), "{text}");
        for needle in [
            "mode: pre-copy, asked for auto (because)",
            "downtime: 100.0 ms (predicted 80.0 ms)",
            "iterations: 3 (2 pre-dumps)",
            "transferred: 4.1 MiB",
        ] {
            assert!(text.contains(needle), "{needle:?} not in {text}");
        }
        assert!(!text.contains("error"), "{text}");
    }

    #[test]
    fn phases_cannot_go_backwards() {
        let mut s = Ongoing::start(choice());
        ok(s.enter(Phase::Preflight));
        ok(s.enter(Phase::Restore));
        let e = refused(s.enter(Phase::FinalDump));
        assert!(
            e.contains("cannot enter phase final-dump from restore"),
            "{e}"
        );
        assert_eq!(s.phase(), Phase::Restore);
        ok(s.enter(Phase::Restore));
    }

    #[test]
    fn rollback_follows_any_phase_and_leads_only_to_done() {
        for p in [
            Phase::Preflight,
            Phase::PreCopy,
            Phase::Restore,
            Phase::Commit,
        ] {
            let mut s = Ongoing::start(choice());
            ok(s.enter(p));
            ok(s.enter(Phase::Rollback));
            refused(s.enter(Phase::Commit));
            ok(s.enter(Phase::Rollback));
            ok(s.enter(Phase::Done));
        }
    }

    #[test]
    fn ending_twice_and_entering_after_the_end_are_errors() {
        let mut s = Ongoing::start(choice());
        ok(s.enter(Phase::Done));
        let e = refused(s.enter(Phase::Done));
        assert!(e.contains("already ended"), "{e}");
        refused(s.enter(Phase::Rollback));
        assert_eq!(s.phase(), Phase::Done);
    }

    #[test]
    fn resume_before_freeze_is_an_error() {
        let mut s = Ongoing::start(choice());
        let e = refused(s.target_resumed(Instant::now()));
        assert!(e.contains("before the source was frozen"), "{e}");
        assert_eq!(s.downtime_so_far(), None);
    }

    #[test]
    fn freeze_and_resume_happen_once_and_in_time_order() {
        let mut s = Ongoing::start(choice());
        let t0 = Instant::now();
        ok(s.source_frozen(t0 + Duration::from_millis(10)));
        refused(s.source_frozen(t0 + Duration::from_millis(20)));
        let e = refused(s.target_resumed(t0));
        assert!(e.contains("10ms before"), "{e}");
        ok(s.target_resumed(t0 + Duration::from_millis(30)));
        refused(s.target_resumed(t0 + Duration::from_millis(40)));
        assert_eq!(s.downtime_so_far(), Some(Duration::from_millis(20)));
    }

    #[test]
    fn downtime_is_from_freeze_to_resume() {
        let mut s = Ongoing::start(choice());
        let t0 = Instant::now();
        ok(s.source_frozen(t0));
        // Still frozen: the downtime grows with the clock.
        let so_far = s.downtime_so_far();
        assert!(so_far.is_some_and(|d| d < Duration::from_secs(60)));
        ok(s.target_resumed(t0 + Duration::from_micros(123_456)));
        assert_eq!(s.downtime_so_far(), Some(Duration::from_micros(123_456)));
        let r = s.finalize(Ok(()));
        assert_eq!(r.downtime_ms, Some(123.456));
    }

    #[test]
    fn failure_keeps_the_error_and_no_downtime_without_resume() {
        let mut s = Ongoing::start(choice());
        ok(s.enter(Phase::FinalDump));
        ok(s.source_frozen(Instant::now()));
        ok(s.enter(Phase::Restore));
        ok(s.enter(Phase::Rollback));
        let r = s.finalize(Err("CRIU on the target: restore failed".to_owned()));
        assert!(!r.success);
        assert_eq!(
            r.error.as_deref(),
            Some("CRIU on the target: restore failed")
        );
        assert_eq!(r.downtime_ms, None);
        assert_eq!(r.phase_reached, Phase::Rollback);
        let text = r.to_string();
        assert!(
            text.contains("FAILED") && text.contains("phase rollback"),
            "{text}"
        );
        assert!(text.contains("downtime: not measured"), "{text}");
        assert!(
            text.ends_with("error: CRIU on the target: restore failed"),
            "{text}"
        );
    }

    fn json(r: &Report) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::from_str(&r.to_json()) {
            Ok(serde_json::Value::Object(m)) => m,
            other => panic!("not a JSON object: {other:?}"),
        }
    }

    #[test]
    fn json_has_the_promised_keys() {
        let promised = [
            "success",
            "mode",
            "downtime_ms",
            "total_ms",
            "iterations",
            "bytes_transferred",
            "error",
        ];
        let mut s = Ongoing::start(choice());
        let t0 = Instant::now();
        ok(s.source_frozen(t0));
        ok(s.target_resumed(t0 + Duration::from_millis(7)));
        s.record_iteration(iteration(0, IterationReport::DUMP, 3));
        let m = json(&s.finalize(Ok(())));
        for key in promised {
            assert!(m.contains_key(key), "{key} missing");
        }
        assert_eq!(m["success"], serde_json::Value::Bool(true));
        assert_eq!(m["error"], serde_json::Value::Null);
        assert_eq!(m["mode"], "pre-copy");
        assert_eq!(m["downtime_ms"].as_f64(), Some(7.0));
        assert_eq!(m["iterations"].as_u64(), Some(1));
        assert_eq!(m["phase_reached"], "preflight");
        assert_eq!(m["per_iteration"][0]["kind"], "dump");

        let m = json(&Ongoing::start(choice()).finalize(Err("boom".to_owned())));
        for key in promised {
            assert!(m.contains_key(key), "{key} missing");
        }
        assert_eq!(m["success"], serde_json::Value::Bool(false));
        assert_eq!(m["error"], "boom");
        assert_eq!(m["downtime_ms"], serde_json::Value::Null);
    }

    #[test]
    fn iteration_report_becomes_a_sample() {
        let r = iteration(3, IterationReport::PRE_DUMP, 77);
        let s = IterationSample::from(&r);
        assert_eq!(
            (
                s.iteration,
                s.pages_written,
                s.bytes_sent,
                s.duration_us,
                s.frozen_us
            ),
            (3, 77, 77 * 4096, 10_000, 500)
        );
    }

    #[test]
    fn phase_names_are_kebab_case() {
        assert_eq!(Phase::ImageTransfer.to_string(), "image-transfer");
        assert_eq!(
            serde_json::to_value(Phase::LazyTransfer).ok(),
            Some(serde_json::Value::from("lazy-transfer"))
        );
    }
}

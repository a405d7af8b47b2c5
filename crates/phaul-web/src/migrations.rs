//! Migrations run from the page, both ways, and their live state, which
//! every open page receives over server-sent events.
//!
//! - Out (this host to the other): a real [`Migration`] started in this
//!   process ([`Migration::start`], a [`MigrationRun`]).
//! - In (the other host to this one): an [`Order`] sent to the other host's
//!   `phaul-service`, which becomes the source and migrates the tree to
//!   this host's `phaul-service`; the [`RemoteRun`] it gives streams the
//!   same events back and carries the cancel.
//!
//! Both kinds feed one state from the same [`Progress`] events, so the page
//! draws them alike.
//!
//! The state says what a person needs and no more: a title naming the tree
//! (its command or its container), the phase in plain words, bytes sent
//! against the tree's resident memory (the expected total, for a bar and an
//! ETA), whether cancel can still do anything (not once the target was told
//! to commit), and at the end how it went: succeeded, cancelled, or failed
//! in the phase that was running when it failed (not "rollback", which only
//! undid it), with CRIU's decisive line and where its logs were kept.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use phaul_core::control::{Order, RemoteRun};
use phaul_core::criu::Criu;
use phaul_core::fs::FsChoice;
use phaul_core::{
    CancelHandle, Event, Failure, Migration, MigrationRun, Mode, ModeChoice, Outcome, Phase,
    Progress, Report,
};
use phaul_htypes::Htype;
use phaul_transport::LinkConfig;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tracing::{info, warn};

/// Finished migrations kept for the page.
const KEEP_FINISHED: usize = 50;
/// Lines of a migration's log kept.
const LOG_LINES: usize = 40;
/// How long a plan (a dry run against the target) may take.
const PLAN_LIMIT: Duration = Duration::from_secs(20);
/// How long the other host's service may take to accept or refuse an order.
const ORDER_LIMIT: Duration = Duration::from_secs(30);

/// Which way a migration goes, seen from this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From this host to the other, run in this process.
    Out,
    /// From the other host to this one, run by the other host's service.
    In,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
        }
    }
}

/// Where a migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Running,
    Succeeded,
    Failed,
    /// Stopped on request, before the commit: the tree runs on the source.
    Cancelled,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

/// What failed, said of the phase that was running when it failed.
fn failure_words(phase: Option<Phase>) -> &'static str {
    match phase {
        None | Some(Phase::Preflight) => "the checks before the migration failed",
        Some(Phase::PreCopy) => "copying memory while the process ran failed",
        Some(Phase::FinalDump) => "the final dump of the paused process failed",
        Some(Phase::ImageTransfer) => "sending the process's state to the target failed",
        Some(Phase::Restore) => "the restore on the target failed",
        Some(Phase::Commit) => "switching over to the target failed",
        Some(Phase::LazyTransfer) => "sending the rest of the memory to the target failed",
        Some(Phase::Rollback | Phase::Done) => "the migration failed",
    }
}

/// Once the target is told to commit, cancel can no longer undo anything.
fn committed(phase: Option<Phase>) -> bool {
    matches!(
        phase,
        Some(Phase::Commit | Phase::LazyTransfer | Phase::Done)
    )
}

/// What a page is told: one migration changed, or the set did.
#[derive(Debug, Clone)]
pub enum Feed {
    /// One migration's state, as JSON.
    One(String),
    /// Migrations were removed: send everything again.
    All,
}

/// What the page names a migration by, and how much memory it expects to
/// move.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    /// `sleeper (PID 4242)` or `container web1`.
    pub title: String,
    /// The tree's resident memory when it started, in bytes.
    pub expected_bytes: u64,
}

/// Why cancel was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelRefused {
    /// No migration has that id.
    Unknown,
    /// It has ended.
    Ended,
    /// The target was told to commit: the tree is moving there.
    Committed,
}

/// One migration's live state.
struct State {
    id: u64,
    direction: Direction,
    /// The migration's id, as both services' logs carry it.
    migration_id: String,
    /// `pid 4242` or `lxc web1`.
    what: String,
    title: String,
    expected_bytes: u64,
    requested_mode: Mode,
    fs: String,
    mode: Option<String>,
    mode_reason: Option<String>,
    /// `None` until the engine names its first phase.
    phase: Option<Phase>,
    /// The last phase that did work (not rollback, not done).
    working_phase: Option<Phase>,
    cancel_asked: bool,
    outcome: Option<Value>,
    logs: Option<String>,
    iterations: u32,
    last_iteration: Option<Value>,
    bytes: u64,
    frozen_at: Option<Instant>,
    downtime: Option<Duration>,
    status: Status,
    error: Option<String>,
    report: Option<Value>,
    source_pid: Option<i32>,
    target_pid: Option<i32>,
    started: Instant,
    finished: Option<Instant>,
    log: Vec<String>,
    cancel: Option<CancelHandle>,
}

impl State {
    fn new(
        id: u64,
        what: String,
        subject: Subject,
        mode: Mode,
        source_pid: Option<i32>,
        cancel: Option<CancelHandle>,
    ) -> Self {
        Self {
            id,
            direction: Direction::Out,
            migration_id: String::new(),
            what,
            title: subject.title,
            expected_bytes: subject.expected_bytes,
            requested_mode: mode,
            fs: String::new(),
            mode: None,
            mode_reason: None,
            phase: None,
            working_phase: None,
            cancel_asked: false,
            outcome: None,
            logs: None,
            iterations: 0,
            last_iteration: None,
            bytes: 0,
            frozen_at: None,
            downtime: None,
            status: Status::Running,
            error: None,
            report: None,
            source_pid,
            target_pid: None,
            started: Instant::now(),
            finished: None,
            log: Vec::new(),
            cancel,
        }
    }

    fn note(&mut self, line: String) {
        if self.log.len() >= LOG_LINES {
            self.log.remove(0);
        }
        self.log.push(line);
    }

    fn to_json(&self) -> Value {
        let now = self.finished.unwrap_or_else(Instant::now);
        let downtime_ms = match (self.downtime, self.frozen_at) {
            (Some(d), _) => Some(ms(d)),
            (None, Some(t)) if self.status == Status::Running => Some(ms(now - t)),
            _ => None,
        };
        let running = self.status == Status::Running;
        json!({
            "id": self.id,
            "direction": self.direction.as_str(),
            "migration_id": self.migration_id,
            "what": self.what,
            "title": self.title,
            "requested_mode": self.requested_mode.to_string(),
            "fs": self.fs,
            "mode": self.mode,
            "mode_reason": self.mode_reason,
            "phase": self.phase.map_or("starting", Phase::as_str),
            "phase_text": self.phase.map_or("starting", Phase::describe),
            "failed_phase": self.working_phase.map(Phase::as_str),
            "failure": (self.status == Status::Failed).then(|| failure_words(self.working_phase)),
            "cancellable": running && !committed(self.phase) && !self.cancel_asked,
            "cancel_asked": self.cancel_asked,
            "outcome": self.outcome,
            "logs": self.logs,
            "expected_bytes": self.expected_bytes,
            "iterations": self.iterations,
            "last_iteration": self.last_iteration,
            "bytes": self.bytes,
            "frozen": self.frozen_at.is_some() && self.downtime.is_none(),
            "downtime_ms": downtime_ms,
            "downtime_final": self.downtime.is_some(),
            "status": self.status.as_str(),
            "error": self.error,
            "report": self.report,
            "source_pid": self.source_pid,
            "target_pid": self.target_pid,
            "elapsed_ms": ms(now - self.started),
            "log": self.log,
        })
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// Why a job could not start.
#[derive(Debug)]
pub enum StartError {
    /// The same thing is being migrated or checkpointed.
    Busy(String),
    /// The other host's service refused the order (nothing started), with
    /// its reason.
    Refused(String),
    /// The other host's service could not be asked.
    Unreachable(String),
}

/// A tree of the other host to move here, as the page named it and the
/// other host's list confirmed it.
#[derive(Debug, Clone)]
pub struct Pull {
    /// The htype's kind, as the service's registry names it (`pid`, `lxc`).
    pub kind: &'static str,
    /// Its id there (a PID or a container name).
    pub id: String,
    /// Its root PID on the other host.
    pub pid: i32,
}

/// A migration as it runs: here, or on the other host's service.
enum Run {
    Here(MigrationRun),
    There(RemoteRun),
}

impl Run {
    fn id(&self) -> String {
        match self {
            Run::Here(r) => r.id().to_string(),
            Run::There(r) => r.id().to_string(),
        }
    }

    fn cancel_handle(&self) -> CancelHandle {
        match self {
            Run::Here(r) => r.cancel_handle(),
            Run::There(r) => r.cancel_handle(),
        }
    }

    async fn next_event(&mut self) -> Option<Event> {
        match self {
            Run::Here(r) => r.next_event().await,
            Run::There(r) => r.next_event().await,
        }
    }

    async fn end(self) -> Result<Report, Failure> {
        match self {
            Run::Here(r) => r.await,
            Run::There(r) => r.finish().await,
        }
    }
}

/// Marks a process or container as taken by a job until dropped.
pub struct BusyGuard {
    set: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.set.lock().expect("busy set").remove(&self.key);
    }
}

/// The running and recent migrations.
pub struct Migrations {
    next: AtomicU64,
    states: Mutex<BTreeMap<u64, State>>,
    busy: Arc<Mutex<HashSet<String>>>,
    events: broadcast::Sender<Feed>,
    /// Bumped when a migration ends, for [`Migrations::wait_idle`].
    ended: tokio::sync::Notify,
    target: String,
    /// This host's service, as the other host reaches it: where pulled
    /// trees go. `None`: nothing is moved here.
    this_host: Option<String>,
    link: LinkConfig,
    work_dir: PathBuf,
    criu: Criu,
}

impl Migrations {
    /// Migrations to and from the service at `target`, working in
    /// `work_dir`; trees come here to the service at `this_host`.
    pub fn new(
        target: String,
        this_host: Option<String>,
        link: LinkConfig,
        work_dir: PathBuf,
        criu: Criu,
    ) -> Self {
        let (events, _) = broadcast::channel(256);
        Self {
            next: AtomicU64::new(1),
            states: Mutex::new(BTreeMap::new()),
            busy: Arc::new(Mutex::new(HashSet::new())),
            events,
            ended: tokio::sync::Notify::new(),
            target,
            this_host,
            link,
            work_dir,
            criu,
        }
    }

    /// Takes `key` (`pid:4242`, `lxc:web1`) for a job, or says who has it.
    pub fn claim(&self, key: &str) -> Result<BusyGuard, StartError> {
        let mut set = self.busy.lock().expect("busy set");
        if !set.insert(key.to_string()) {
            return Err(StartError::Busy(format!(
                "{} is already being migrated or checkpointed",
                key.replace(':', " ")
            )));
        }
        Ok(BusyGuard {
            set: self.busy.clone(),
            key: key.to_string(),
        })
    }

    /// Every migration's state, oldest first.
    pub fn snapshot(&self) -> Value {
        let states = self.states.lock().expect("states");
        Value::Array(states.values().map(State::to_json).collect())
    }

    /// One migration's state.
    pub fn get(&self, id: u64) -> Option<Value> {
        self.states
            .lock()
            .expect("states")
            .get(&id)
            .map(State::to_json)
    }

    /// Live updates: one migration's state, or "send them all again".
    pub fn subscribe(&self) -> broadcast::Receiver<Feed> {
        self.events.subscribe()
    }

    /// Asks migration `id` to stop. Refused once it ended or once the
    /// target was told to commit (the tree is moving there; a cancel could
    /// only leave it half-moved).
    pub fn cancel(&self, id: u64) -> Result<(), CancelRefused> {
        let mut states = self.states.lock().expect("states");
        let s = states.get_mut(&id).ok_or(CancelRefused::Unknown)?;
        if s.status != Status::Running {
            return Err(CancelRefused::Ended);
        }
        if committed(s.phase) {
            return Err(CancelRefused::Committed);
        }
        if let Some(c) = &s.cancel {
            c.cancel();
        }
        s.cancel_asked = true;
        s.note("cancel asked: rolling back".into());
        self.publish(s);
        Ok(())
    }

    /// Forgets every migration that has ended; returns how many.
    pub fn clear_finished(&self) -> usize {
        let mut states = self.states.lock().expect("states");
        let before = states.len();
        states.retain(|_, s| s.status == Status::Running);
        let removed = before - states.len();
        let _ = self.events.send(Feed::All);
        removed
    }

    /// Cancels every running migration (they roll back unless committed).
    pub fn cancel_all(&self) {
        let states = self.states.lock().expect("states");
        for s in states.values().filter(|s| s.status == Status::Running) {
            if let Some(c) = &s.cancel {
                c.cancel();
            }
        }
    }

    fn running(&self) -> usize {
        let states = self.states.lock().expect("states");
        states
            .values()
            .filter(|s| s.status == Status::Running)
            .count()
    }

    /// Waits until no migration runs, or `limit` passes.
    pub async fn wait_idle(&self, limit: Duration) {
        let end = tokio::time::Instant::now() + limit;
        while self.running() > 0 {
            let notified = self.ended.notified();
            if self.running() == 0 {
                break;
            }
            if tokio::time::timeout_at(end, notified).await.is_err() {
                warn!("migrations still running at exit");
                break;
            }
        }
    }

    fn publish(&self, s: &State) {
        let _ = self.events.send(Feed::One(s.to_json().to_string()));
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut State)) {
        let mut states = self.states.lock().expect("states");
        if let Some(s) = states.get_mut(&id) {
            f(s);
            self.publish(s);
        }
    }

    fn migration(&self, htype: Box<dyn Htype>, mode: Mode, fs: FsChoice) -> Migration<Criu> {
        Migration::new(
            self.criu.clone(),
            self.target.clone(),
            self.link.clone(),
            htype,
        )
        .mode(mode)
        .fs(fs)
        .work_dir(&self.work_dir)
    }

    /// What `mode` would come to for `htype` and why, asked of both hosts
    /// (nothing is frozen or kept); the error's text otherwise.
    pub async fn plan(
        &self,
        htype: Box<dyn Htype>,
        mode: Mode,
        fs: FsChoice,
    ) -> Result<ModeChoice, String> {
        let mig = self.migration(htype, mode, fs);
        match tokio::time::timeout(PLAN_LIMIT, mig.dry_run()).await {
            Ok(Ok(choice)) => Ok(choice),
            Ok(Err(e)) => Err(phaul_transport::error_chain(&e)),
            Err(_) => Err(format!(
                "the target did not answer within {} s",
                PLAN_LIMIT.as_secs()
            )),
        }
    }

    /// Starts migrating `htype` (already validated) in `mode`, its files
    /// by `fs`, to the other host; returns its id.
    pub fn start(
        self: &Arc<Self>,
        htype: Box<dyn Htype>,
        subject: Subject,
        mode: Mode,
        fs: FsChoice,
        guard: BusyGuard,
    ) -> u64 {
        let params = htype.params();
        let name = params.get("name").or_else(|| params.get("pid"));
        let what = format!("{} {}", htype.kind(), name.map_or("", String::as_str));
        let source_pid = htype.root_pid().ok();
        let fs_name = fs.name().to_string();
        let run = Run::Here(self.migration(htype, mode, fs).start());
        let mut s = State::new(0, what, subject, mode, source_pid, None);
        s.fs = fs_name;
        s.note(format!(
            "migrating {} to {} (mode {mode})",
            s.what, self.target
        ));
        info!(what = %s.what, %mode, target = %self.target, "migration starts");
        self.track(s, run, guard)
    }

    /// Orders the other host's service to migrate `pull` to this host's
    /// service in `mode`; returns its id once that service accepted.
    pub async fn order(
        self: &Arc<Self>,
        pull: Pull,
        subject: Subject,
        mode: Mode,
        guard: BusyGuard,
    ) -> Result<u64, StartError> {
        let Some(here) = self.this_host.clone() else {
            return Err(StartError::Refused(
                "moving trees to this host needs phaul-web's --this-host (this host's phaul-service)"
                    .into(),
            ));
        };
        let order = Order::new(here.clone(), pull.kind, pull.id.clone()).mode(mode);
        let sent = tokio::time::timeout(ORDER_LIMIT, order.send(&self.target, &self.link)).await;
        let run = match sent {
            Ok(Ok(run)) => run,
            // A refusal: the service checked the order and started nothing.
            Ok(Err(e @ phaul_core::Error::Link(phaul_transport::Error::Remote { .. }))) => {
                return Err(StartError::Refused(phaul_transport::error_chain(&e)));
            }
            Ok(Err(e)) => {
                return Err(StartError::Unreachable(phaul_transport::error_chain(&e)));
            }
            Err(_) => {
                return Err(StartError::Unreachable(format!(
                    "{} did not answer the order within {} s",
                    self.target,
                    ORDER_LIMIT.as_secs()
                )));
            }
        };
        let what = format!("{} {}", pull.kind, pull.id);
        let mut s = State::new(0, what, subject, mode, Some(pull.pid), None);
        s.direction = Direction::In;
        s.note(format!(
            "{} migrates {} to this host ({here}, mode {mode})",
            self.target, s.what
        ));
        info!(what = %s.what, %mode, from = %self.target, "ordered migration starts");
        Ok(self.track(s, Run::There(run), guard))
    }

    /// Keeps `s` as the state of `run`, fed by its events until it ends.
    fn track(self: &Arc<Self>, mut s: State, mut run: Run, guard: BusyGuard) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        s.id = id;
        s.migration_id = run.id();
        s.cancel = Some(run.cancel_handle());
        {
            let mut states = self.states.lock().expect("states");
            self.publish(&s);
            states.insert(id, s);
            // Forget the oldest finished ones.
            while states.len() > KEEP_FINISHED {
                let Some(old) = states
                    .iter()
                    .find(|(_, s)| s.status != Status::Running)
                    .map(|(k, _)| *k)
                else {
                    break;
                };
                states.remove(&old);
            }
        }
        let this = self.clone();
        tokio::spawn(async move {
            // Ends when the migration has ended and every event was read.
            while let Some(e) = run.next_event().await {
                this.update(id, |s| apply(s, e.progress));
            }
            let end = run.end().await;
            drop(guard);
            this.update(id, |s| finish(s, end));
            this.ended.notify_waiters();
        });
        id
    }
}

fn apply(s: &mut State, p: Progress) {
    match p {
        Progress::Phase(ph) => {
            s.phase = Some(ph);
            if !matches!(ph, Phase::Rollback | Phase::Done) {
                s.working_phase = Some(ph);
            }
            s.note(ph.describe().to_string());
        }
        Progress::Mode(c) => {
            s.note(Progress::Mode(c.clone()).to_string());
            s.mode = Some(c.mode.to_string());
            s.mode_reason = Some(c.reason);
        }
        Progress::Iteration(it) => {
            s.iterations = s.iterations.max(it.iteration + 1);
            s.last_iteration = serde_json::to_value(&it).ok();
            s.note(Progress::Iteration(it).to_string());
        }
        Progress::Bytes(b) => s.bytes = b,
        // The engine's count, taken as it starts: it replaces the page's.
        Progress::Expected(b) => s.expected_bytes = b,
        Progress::Frozen => {
            s.frozen_at = Some(Instant::now());
            s.note(Progress::Frozen.to_string());
        }
        Progress::Resumed(d) => {
            s.downtime = Some(d);
            s.note(Progress::Resumed(d).to_string());
        }
        other => s.note(other.to_string()),
    }
}

/// Whether a failure is the cancel that was asked. Only an asked cancel
/// counts: the engine also stops with `Cancelled` when phaul-web itself is
/// stopping. The other host's service reports its error as text, so there
/// an asked cancel is one that ended with the tree back at home.
fn was_cancelled(asked: bool, f: &Failure) -> bool {
    asked
        && match f.error {
            phaul_core::Error::Cancelled => true,
            phaul_core::Error::SourceService(_) => {
                matches!(f.outcome, Outcome::RolledBack | Outcome::NotStarted)
            }
            _ => false,
        }
}

fn finish(s: &mut State, end: Result<Report, Failure>) {
    s.finished = Some(Instant::now());
    s.cancel = None;
    let (r, cancelled) = match end {
        Ok(r) => (r, false),
        Err(f) => {
            let cancelled = was_cancelled(s.cancel_asked, &f);
            (*f.report, cancelled)
        }
    };
    s.status = match (r.success, cancelled) {
        (true, _) => Status::Succeeded,
        (false, true) => Status::Cancelled,
        (false, false) => Status::Failed,
    };
    s.phase = Some(Phase::Done);
    s.bytes = s.bytes.max(r.bytes_transferred);
    s.iterations = r.iterations;
    s.target_pid = r.target_pid;
    s.downtime = r.downtime_ms.map(|d| Duration::from_secs_f64(d / 1e3));
    s.error = r.error.clone();
    s.logs = r.logs.clone();
    s.outcome = serde_json::to_value(r.outcome).ok();
    let (there, home) = match s.direction {
        Direction::Out => ("the target", "this host"),
        Direction::In => ("this host", "the other host"),
    };
    match s.status {
        Status::Succeeded => {
            s.note(format!(
                "succeeded: PID {} runs on {there}",
                r.target_pid.unwrap_or(0)
            ));
            info!(id = s.id, what = %s.what, target_pid = r.target_pid, "migration succeeded");
        }
        Status::Cancelled => {
            s.note(format!("cancelled: the tree runs on {home}"));
            info!(id = s.id, what = %s.what, "migration cancelled");
        }
        _ => {
            let words = failure_words(s.working_phase);
            s.note(format!(
                "failed: {words}: {}",
                r.error.as_deref().unwrap_or("")
            ));
            warn!(
                id = s.id,
                what = %s.what,
                phase = s.working_phase.map(Phase::as_str),
                error = r.error.as_deref().unwrap_or(""),
                "migration failed"
            );
        }
    }
    s.report = serde_json::to_value(&r).ok();
}

#[cfg(test)]
mod tests {
    use phaul_core::stats::Ongoing;

    use super::*;

    fn state() -> State {
        let subject = Subject {
            title: "sleeper (PID 42)".into(),
            expected_bytes: 1 << 20,
        };
        State::new(7, "pid 42".into(), subject, Mode::Auto, Some(42), None)
    }

    fn failed_report(error: &str) -> Report {
        Ongoing::start(ModeChoice {
            mode: Mode::StopCopy,
            requested: Mode::StopCopy,
            reason: "asked".into(),
        })
        .finalize(Err(error.into()))
    }

    #[test]
    fn progress_events_become_the_pages_state() {
        let mut s = state();
        apply(&mut s, Progress::Phase(Phase::FinalDump));
        apply(
            &mut s,
            Progress::Mode(ModeChoice {
                mode: Mode::StopCopy,
                requested: Mode::Auto,
                reason: "no memory tracking".into(),
            }),
        );
        apply(&mut s, Progress::Bytes(4096));
        apply(&mut s, Progress::Expected(8192));
        apply(&mut s, Progress::Frozen);
        let v = s.to_json();
        assert_eq!(v["expected_bytes"], 8192);
        assert_eq!(v["phase_text"], "copying memory — the process is paused");
        assert_eq!(v["mode"], "stop-copy");
        assert_eq!(v["mode_reason"], "no memory tracking");
        assert_eq!(v["bytes"], 4096);
        assert_eq!(v["frozen"], true);
        assert!(v["downtime_ms"].as_f64().is_some());
        assert_eq!(v["downtime_final"], false);
        apply(&mut s, Progress::Resumed(Duration::from_millis(12)));
        let v = s.to_json();
        assert_eq!(v["frozen"], false);
        assert_eq!(v["downtime_ms"], 12.0);
        assert_eq!(v["downtime_final"], true);
        assert_eq!(v["log"].as_array().unwrap().len(), 4, "{v}");
    }

    #[test]
    fn a_failed_report_ends_the_state_with_its_error() {
        let mut s = state();
        finish(&mut s, Ok(failed_report("CRIU dump failed")));
        let v = s.to_json();
        assert_eq!(v["status"], "failed");
        assert_eq!(v["title"], "sleeper (PID 42)");
        assert_eq!(v["error"], "CRIU dump failed");
        assert_eq!(v["report"]["success"], false);
        assert!(
            v["log"]
                .as_array()
                .unwrap()
                .last()
                .unwrap()
                .as_str()
                .unwrap()
                .starts_with("failed: ")
        );
    }

    #[test]
    fn the_log_keeps_only_the_last_lines() {
        let mut s = state();
        for i in 0..LOG_LINES + 5 {
            s.note(format!("line {i}"));
        }
        assert_eq!(s.log.len(), LOG_LINES);
        assert_eq!(s.log[0], "line 5");
    }

    #[test]
    fn a_failure_names_the_phase_that_failed_not_the_rollback() {
        let mut s = state();
        for ph in [
            Phase::Preflight,
            Phase::FinalDump,
            Phase::ImageTransfer,
            Phase::Restore,
        ] {
            apply(&mut s, Progress::Phase(ph));
        }
        assert_eq!(s.to_json()["cancellable"], true);
        apply(&mut s, Progress::Phase(Phase::Rollback));
        apply(&mut s, Progress::Phase(Phase::Done));
        finish(
            &mut s,
            Ok(failed_report("CRIU on the target: restore failed")),
        );
        let v = s.to_json();
        assert_eq!(v["status"], "failed");
        assert_eq!(v["failed_phase"], "restore");
        assert_eq!(v["failure"], "the restore on the target failed");
        assert_eq!(v["cancellable"], false);
    }

    #[test]
    fn no_cancel_is_offered_once_the_target_was_told_to_commit() {
        let mut s = state();
        apply(&mut s, Progress::Phase(Phase::Restore));
        assert_eq!(s.to_json()["cancellable"], true);
        apply(&mut s, Progress::Phase(Phase::Commit));
        assert_eq!(s.to_json()["cancellable"], false);
        apply(&mut s, Progress::Phase(Phase::LazyTransfer));
        assert_eq!(s.to_json()["cancellable"], false);
    }

    #[test]
    fn an_asked_cancel_ends_as_cancelled_and_an_unasked_one_as_failed() {
        let cancelled = |asked: bool| {
            let mut s = state();
            s.cancel_asked = asked;
            let failure = Failure {
                outcome: phaul_core::Outcome::RolledBack,
                error: phaul_core::Error::Cancelled,
                report: Box::new(failed_report("cancelled")),
            };
            finish(&mut s, Err(failure));
            s.to_json()
        };
        let v = cancelled(true);
        assert_eq!(v["status"], "cancelled");
        assert!(v["failure"].is_null(), "{v}");
        assert_eq!(cancelled(false)["status"], "failed");
    }

    #[test]
    fn an_ordered_migration_ends_in_words_of_this_host() {
        // The other host's service reports its error as text: an asked
        // cancel is one that left the tree at home.
        let ordered = |asked: bool, outcome: Outcome| {
            let mut s = state();
            s.direction = Direction::In;
            s.cancel_asked = asked;
            let failure = Failure {
                outcome,
                error: phaul_core::Error::SourceService("cancelled".into()),
                report: Box::new(failed_report("cancelled")),
            };
            finish(&mut s, Err(failure));
            s.to_json()
        };
        let v = ordered(true, Outcome::RolledBack);
        assert_eq!(v["status"], "cancelled");
        assert_eq!(v["direction"], "in");
        assert_eq!(
            v["log"].as_array().unwrap().last().unwrap(),
            "cancelled: the tree runs on the other host"
        );
        assert_eq!(ordered(true, Outcome::Diverged)["status"], "failed");
        assert_eq!(ordered(false, Outcome::RolledBack)["status"], "failed");
    }
}

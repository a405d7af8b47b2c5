//! Migrations run from the page: each is a real [`Migration`] in this
//! process, whose [`Progress`] events become a state that every open page
//! receives over server-sent events.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use phaul_core::criu::Criu;
use phaul_core::{CancelHandle, Migration, Mode, Progress, Report};
use phaul_htypes::Htype;
use phaul_transport::LinkConfig;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tracing::{info, warn};

/// Finished migrations kept for the page.
const KEEP_FINISHED: usize = 50;
/// Lines of a migration's log kept.
const LOG_LINES: usize = 40;

/// Where a migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Running,
    Succeeded,
    Failed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
        }
    }
}

/// One migration's live state.
struct State {
    id: u64,
    /// `pid 4242` or `lxc web1`.
    what: String,
    requested_mode: Mode,
    mode: Option<String>,
    mode_reason: Option<String>,
    phase: String,
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
        mode: Mode,
        source_pid: Option<i32>,
        cancel: Option<CancelHandle>,
    ) -> Self {
        Self {
            id,
            what,
            requested_mode: mode,
            mode: None,
            mode_reason: None,
            phase: "starting".into(),
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
        json!({
            "id": self.id,
            "what": self.what,
            "requested_mode": self.requested_mode.to_string(),
            "mode": self.mode,
            "mode_reason": self.mode_reason,
            "phase": self.phase,
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
    events: broadcast::Sender<String>,
    /// Bumped when a migration ends, for [`Migrations::wait_idle`].
    ended: tokio::sync::Notify,
    target: String,
    link: LinkConfig,
    work_dir: PathBuf,
    criu: Criu,
}

impl Migrations {
    /// Migrations to the service at `target`, working in `work_dir`.
    pub fn new(target: String, link: LinkConfig, work_dir: PathBuf, criu: Criu) -> Self {
        let (events, _) = broadcast::channel(256);
        Self {
            next: AtomicU64::new(1),
            states: Mutex::new(BTreeMap::new()),
            busy: Arc::new(Mutex::new(HashSet::new())),
            events,
            ended: tokio::sync::Notify::new(),
            target,
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

    /// Live updates: each message is one migration's state as JSON.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.events.subscribe()
    }

    /// Asks migration `id` to stop; `false` when it is not running.
    pub fn cancel(&self, id: u64) -> bool {
        let states = self.states.lock().expect("states");
        match states.get(&id) {
            Some(s) if s.status == Status::Running => {
                if let Some(c) = &s.cancel {
                    c.cancel();
                }
                true
            }
            _ => false,
        }
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
        let _ = self.events.send(s.to_json().to_string());
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut State)) {
        let mut states = self.states.lock().expect("states");
        if let Some(s) = states.get_mut(&id) {
            f(s);
            self.publish(s);
        }
    }

    /// Starts migrating `htype` (already validated) in `mode`; returns its id.
    pub fn start(self: &Arc<Self>, htype: Box<dyn Htype>, mode: Mode, guard: BusyGuard) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let params = htype.params();
        let name = params.get("name").or_else(|| params.get("pid"));
        let what = format!("{} {}", htype.kind(), name.map_or("", String::as_str));
        let source_pid = htype.root_pid().ok();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mig = Migration::new(
            self.criu.clone(),
            self.target.clone(),
            self.link.clone(),
            htype,
        )
        .mode(mode)
        .work_dir(&self.work_dir)
        .progress(tx);
        let cancel = mig.cancel_handle();
        {
            let mut states = self.states.lock().expect("states");
            let mut s = State::new(id, what.clone(), mode, source_pid, Some(cancel));
            s.note(format!("migrating {what} to {} (mode {mode})", self.target));
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
        info!(id, %what, %mode, target = %self.target, "migration starts");
        let run = tokio::spawn(mig.run());
        let this = self.clone();
        tokio::spawn(async move {
            // Ends when the migration drops its sender, i.e. when it ends.
            while let Some(p) = rx.recv().await {
                this.update(id, |s| apply(s, p));
            }
            let report = run.await;
            drop(guard);
            this.update(id, |s| finish(s, report));
            this.ended.notify_waiters();
        });
        id
    }
}

fn apply(s: &mut State, p: Progress) {
    match p {
        Progress::Phase(ph) => {
            s.phase = ph.to_string();
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

fn finish(s: &mut State, report: Result<Report, tokio::task::JoinError>) {
    s.finished = Some(Instant::now());
    s.cancel = None;
    match report {
        Ok(r) => {
            s.status = if r.success {
                Status::Succeeded
            } else {
                Status::Failed
            };
            // The last phase entered; "done" once the target runs it.
            s.phase = if r.success {
                "done".to_string()
            } else {
                r.phase_reached.to_string()
            };
            s.bytes = s.bytes.max(r.bytes_transferred);
            s.iterations = r.iterations;
            s.target_pid = r.target_pid;
            s.downtime = r.downtime_ms.map(|d| Duration::from_secs_f64(d / 1e3));
            s.error = r.error.clone();
            if r.success {
                s.note(format!(
                    "succeeded: PID {} runs on the target",
                    r.target_pid.unwrap_or(0)
                ));
                info!(id = s.id, what = %s.what, target_pid = r.target_pid, "migration succeeded");
            } else {
                s.note(format!("failed: {}", r.error.as_deref().unwrap_or("")));
                warn!(id = s.id, what = %s.what, error = r.error.as_deref().unwrap_or(""), "migration failed");
            }
            s.report = serde_json::to_value(&r).ok();
        }
        Err(e) => {
            s.status = Status::Failed;
            s.error = Some(format!("the migration task ended abnormally: {e}"));
            s.note(s.error.clone().unwrap_or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use phaul_core::ModeChoice;
    use phaul_core::stats::{Ongoing, Phase};

    use super::*;

    fn state() -> State {
        State::new(7, "pid 42".into(), Mode::Auto, Some(42), None)
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
        apply(&mut s, Progress::Frozen);
        let v = s.to_json();
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
        let report = Ongoing::start(ModeChoice {
            mode: Mode::StopCopy,
            requested: Mode::StopCopy,
            reason: "asked".into(),
        })
        .finalize(Err("CRIU dump failed".into()));
        finish(&mut s, Ok(report));
        let v = s.to_json();
        assert_eq!(v["status"], "failed");
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
}

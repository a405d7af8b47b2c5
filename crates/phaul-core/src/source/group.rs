//! Group migration: several trees or containers moved as one.
//!
//! Each member is an ordinary [`Migration`] with its own channels, images
//! and target session, so every guarantee of one migration holds for each
//! member. What a [`Group`] adds is a [`Gate`] the members pass twice:
//!
//! 1. **checked**: after every member's pre-flight and `Begin`, before any
//!    member freezes. A member refused there (a bad PID, a CRIU that
//!    cannot dump its sockets, a target that says no) stops the others
//!    before they freeze: nothing started anywhere.
//! 2. **restored**: after the target has restored a member and holds it,
//!    before the member sends its commit. Only when every member is
//!    restored do they all commit; one failure before that point (a dump,
//!    a transfer, a restore, the freeze limit, a target that dies) rolls
//!    every member back: each source resumes and each target drops its
//!    copy. A member still pre-copying when another fails gives up at its
//!    next pre-dump or its freeze, unfrozen.
//!
//! So every member's source copy is frozen at once between the last freeze
//! and the first commit, and no member runs on the target unless all are
//! restored there. (Kinds restored by their manager, LXC, run on the target
//! as soon as they are restored; a rollback stops that copy before the
//! source resumes, as for one migration.) The commits are sent together
//! once the gate opens; one refused then leaves the group split, which the
//! group's outcome says ([`Outcome::Diverged`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::{Event, Failure, Migration, MigrationRun, new_id};
use crate::criu::SourceCriu;
use crate::error::{Error, Result};
use crate::stats::{Outcome, Report};

/// Where the members wait for each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Pre-flight and `Begin` done; nothing frozen yet.
    Checked = 0,
    /// The target holds the restored member; the commit is next.
    Restored = 1,
}

#[derive(Debug, Default)]
struct GateState {
    arrived: [usize; 2],
    /// The first member's failure, which ends everyone's wait.
    failed: Option<String>,
    first_freeze: Option<Instant>,
    last_resume: Option<Instant>,
    resumed: usize,
}

/// The members' meeting point ([`Stage`]), shared by every member of one
/// group.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    size: usize,
    state: Arc<watch::Sender<GateState>>,
}

impl Gate {
    fn new(size: usize) -> Self {
        Self {
            size,
            state: Arc::new(watch::Sender::new(GateState::default())),
        }
    }

    /// Arrives at `stage` and waits for every member to arrive there, or
    /// for one to fail (then `Err`: this member gives up too).
    pub(crate) async fn pass(&self, stage: Stage, member: &str) -> Result<()> {
        let i = stage as usize;
        self.state.send_modify(|s| s.arrived[i] += 1);
        info!(group_member = member, ?stage, "waiting for the group");
        let mut rx = self.state.subscribe();
        let size = self.size;
        let seen = rx
            .wait_for(|s| s.failed.is_some() || s.arrived[i] >= size)
            .await
            .map_err(|_| Error::Protocol("the group's gate was dropped".into()))?;
        match &seen.failed {
            Some(why) => Err(Error::Group(why.clone())),
            None => Ok(()),
        }
    }

    /// `Err` once a member has failed: a member about to freeze (after its
    /// pre-copy, say) gives up instead of freezing for nothing.
    pub(crate) fn check(&self) -> Result<()> {
        match &self.state.borrow().failed {
            Some(why) => Err(Error::Group(why.clone())),
            None => Ok(()),
        }
    }

    /// A member failed: everyone still waiting, or arriving later, gives
    /// up. The first reason is kept.
    pub(crate) fn fail(&self, member: &str, why: &Error) {
        if matches!(why, Error::Group(_)) {
            return;
        }
        let text = format!("{member}: {}", crate::target::error_chain(why));
        self.state.send_if_modified(|s| {
            if s.failed.is_some() {
                return false;
            }
            warn!(group_member = member, error = %text, "a group member failed: the group rolls back");
            s.failed = Some(text);
            true
        });
    }

    pub(crate) fn froze(&self, at: Instant) {
        self.state.send_modify(|s| {
            s.first_freeze = Some(s.first_freeze.map_or(at, |f| f.min(at)));
        });
    }

    pub(crate) fn resumed(&self, at: Instant) {
        self.state.send_modify(|s| {
            s.last_resume = Some(s.last_resume.map_or(at, |l| l.max(at)));
            s.resumed += 1;
        });
    }

    /// From the first member's freeze to the last member's resume, once
    /// every member runs on the target.
    fn downtime(&self) -> Option<std::time::Duration> {
        let s = self.state.borrow();
        match (s.first_freeze, s.last_resume) {
            (Some(f), Some(l)) if s.resumed == self.size => Some(l.saturating_duration_since(f)),
            _ => None,
        }
    }
}

/// Several migrations moved as one: all checked, all frozen, all restored
/// and held, then one commit (see the module's docs). Members may go to
/// different targets.
pub struct Group<C: SourceCriu = crate::criu::Criu> {
    id: String,
    members: Vec<Migration<C>>,
}

impl<C: SourceCriu> Default for Group<C> {
    fn default() -> Self {
        Self {
            id: new_id(),
            members: Vec::new(),
        }
    }
}

impl<C: SourceCriu> std::fmt::Debug for Group<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("id", &self.id)
            .field("members", &self.members)
            .finish()
    }
}

impl<C: SourceCriu> Group<C> {
    /// An empty group with a fresh id.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a member, configured as a migration of its own (mode, freeze
    /// limit, file system...).
    pub fn member(mut self, m: Migration<C>) -> Self {
        self.members.push(m);
        self
    }

    /// The group's id, in its report.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Starts every member in the background. A group needs two members at
    /// least; an empty or single-member group is refused when awaited.
    pub fn start(self) -> GroupRun {
        let gate = Gate::new(self.members.len());
        let (tx, events) = mpsc::unbounded_channel();
        let mut runs = Vec::new();
        if self.members.len() >= 2 {
            for mut m in self.members {
                m.group = Some(gate.clone());
                let mut run = m.start();
                // The member's events go to the group's one stream.
                let (closed_tx, closed) = mpsc::unbounded_channel::<Event>();
                drop(closed_tx);
                let mut rx = std::mem::replace(&mut run.events, closed);
                let tx = tx.clone();
                tokio::spawn(async move {
                    while let Some(e) = rx.recv().await {
                        let _ = tx.send(e);
                    }
                });
                runs.push(run);
            }
        }
        drop(tx);
        let ids = runs.iter().map(|r| r.id().to_string()).collect();
        GroupRun {
            id: self.id,
            ids,
            events,
            gate,
            runs: Some(runs),
            ends: None,
        }
    }

    /// Runs every member to its end: `Ok` when all run on their targets.
    pub async fn run(self) -> std::result::Result<GroupReport, GroupFailure> {
        self.start().await
    }
}

/// What a group did: one report per member, in the order they were added,
/// and the group's downtime.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GroupReport {
    /// The version of this form ([`GroupReport::SCHEMA`]).
    pub schema: u32,
    /// The group's id.
    pub group_id: String,
    /// How the group ended: `succeeded` only when every member runs on its
    /// target; `diverged` when members ended on different hosts.
    pub outcome: Outcome,
    /// Whether every member runs on its target.
    pub success: bool,
    /// From the first member's freeze to the last member's resume, in
    /// milliseconds; `None` unless every member resumed on its target.
    pub downtime_ms: Option<f64>,
    /// Each member's report.
    pub members: Vec<Report>,
}

impl GroupReport {
    /// The version of the group report's form that this build writes.
    pub const SCHEMA: u32 = 1;

    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a GroupReport always serializes to JSON")
    }
}

impl std::fmt::Display for GroupReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.members.len();
        match (self.success, self.downtime_ms) {
            (true, Some(d)) => writeln!(f, "group of {n} migrated; group downtime {d:.1} ms")?,
            (true, None) => writeln!(f, "group of {n} migrated")?,
            (false, _) => writeln!(f, "group of {n} FAILED: {:?}", self.outcome)?,
        }
        for (i, m) in self.members.iter().enumerate() {
            writeln!(f, "--- member {} ({})", i + 1, m.migration_id)?;
            writeln!(f, "{}", m.to_string().trim_end())?;
        }
        Ok(())
    }
}

/// Why a group did not succeed: its outcome, each failed member's typed
/// end, and the whole report.
#[derive(Debug)]
pub struct GroupFailure {
    /// How the group ended.
    pub outcome: Outcome,
    /// The members that failed, in order (the others succeeded).
    pub failures: Vec<Failure>,
    /// What every member did.
    pub report: Box<GroupReport>,
}

impl std::fmt::Display for GroupFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.failures.first() {
            Some(first) => write!(f, "the group {}: {first}", group_words(self.outcome)),
            None => write!(f, "the group {}", group_words(self.outcome)),
        }
    }
}

impl std::error::Error for GroupFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.failures
            .first()
            .map(|f| f as &(dyn std::error::Error + 'static))
    }
}

fn group_words(o: Outcome) -> &'static str {
    match o {
        Outcome::NotStarted => "was refused before anything started",
        Outcome::RolledBack => "failed and rolled back (every source runs its tree)",
        Outcome::Diverged => "ended split between the hosts (check both)",
        Outcome::Succeeded => "succeeded",
    }
}

/// A group running in the background ([`Group::start`]): every member's
/// events in one stream (each [`Event`] names its member's migration id),
/// a cancel for all, and the group's end when awaited.
pub struct GroupRun {
    id: String,
    ids: Vec<String>,
    events: mpsc::UnboundedReceiver<Event>,
    gate: Gate,
    runs: Option<Vec<MigrationRun>>,
    ends: Option<Pin<Box<dyn Future<Output = Vec<MemberEnd>> + Send>>>,
}

/// Cancels every member of a group ([`GroupRun::cancel_handle`]).
#[derive(Debug, Clone)]
pub struct GroupCancel(Vec<super::CancelHandle>);

impl GroupCancel {
    /// Asks every member to stop: the group rolls back unless it has
    /// committed.
    pub fn cancel(&self) {
        for c in &self.0 {
            c.cancel();
        }
    }
}

type MemberEnd = std::result::Result<Report, Failure>;

impl std::fmt::Debug for GroupRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupRun")
            .field("id", &self.id)
            .field("members", &self.member_ids())
            .finish_non_exhaustive()
    }
}

impl GroupRun {
    /// The group's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The members' migration ids, in order.
    pub fn member_ids(&self) -> &[String] {
        &self.ids
    }

    /// The next event of any member, or `None` once all have ended.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Cancels every member: the group rolls back unless it has committed.
    pub fn cancel(&self) {
        self.cancel_handle().cancel();
    }

    /// A handle that cancels every member from elsewhere.
    pub fn cancel_handle(&self) -> GroupCancel {
        GroupCancel(
            self.runs
                .iter()
                .flatten()
                .map(|r| r.cancel_handle())
                .collect(),
        )
    }

    /// The group's end from its members' ends.
    fn conclude(
        id: &str,
        gate: &Gate,
        ends: Vec<MemberEnd>,
    ) -> std::result::Result<GroupReport, GroupFailure> {
        let mut members = Vec::new();
        let mut failures = Vec::new();
        for end in ends {
            match end {
                Ok(r) => members.push(r),
                Err(f) => {
                    members.push((*f.report).clone());
                    failures.push(f);
                }
            }
        }
        let outcome = group_outcome(&members);
        let report = GroupReport {
            schema: GroupReport::SCHEMA,
            group_id: id.to_string(),
            outcome,
            success: outcome == Outcome::Succeeded,
            downtime_ms: gate.downtime().map(|d| d.as_secs_f64() * 1000.0),
            members,
        };
        if report.success {
            return Ok(report);
        }
        if failures.is_empty() {
            // Fewer than two members: nothing ran.
            failures.push(Failure {
                outcome: Outcome::NotStarted,
                error: Error::Group("a group needs two members or more".into()),
                report: Box::new(refused_report(id)),
            });
        }
        Err(GroupFailure {
            outcome,
            failures,
            report: Box::new(report),
        })
    }
}

/// Where the group's trees run now, from where each member's does.
fn group_outcome(members: &[Report]) -> Outcome {
    let all = |o: Outcome| !members.is_empty() && members.iter().all(|m| m.outcome == o);
    if members.len() < 2 {
        Outcome::NotStarted
    } else if all(Outcome::Succeeded) {
        Outcome::Succeeded
    } else if all(Outcome::NotStarted) {
        Outcome::NotStarted
    } else if members
        .iter()
        .all(|m| matches!(m.outcome, Outcome::NotStarted | Outcome::RolledBack))
    {
        Outcome::RolledBack
    } else {
        // Some members run on the target, others on the source (or a member
        // itself diverged): the group is no longer one.
        Outcome::Diverged
    }
}

fn refused_report(id: &str) -> Report {
    let mut stats = crate::stats::Ongoing::start(crate::mode::ModeChoice {
        mode: crate::mode::Mode::Auto,
        requested: crate::mode::Mode::Auto,
        reason: "refused before anything started".into(),
    });
    stats.set_migration_id(id);
    stats.finalize(Err("a group needs two members or more".into()))
}

impl Future for GroupRun {
    type Output = std::result::Result<GroupReport, GroupFailure>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.ends.is_none() {
            let runs = self.runs.take().unwrap_or_default();
            self.ends = Some(Box::pin(futures_join_all(runs)));
        }
        let ends = self.ends.as_mut().expect("set above");
        match ends.as_mut().poll(cx) {
            Poll::Ready(ends) => Poll::Ready(Self::conclude(&self.id, &self.gate, ends)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Awaits every run, in order (they run concurrently as tasks already).
async fn futures_join_all(runs: Vec<MigrationRun>) -> Vec<MemberEnd> {
    let mut ends = Vec::with_capacity(runs.len());
    for r in runs {
        ends.push(r.await);
    }
    ends
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(outcome: Outcome) -> Report {
        let mut r = refused_report("m");
        r.outcome = outcome;
        r
    }

    #[test]
    fn the_group_outcome_is_where_its_trees_run() {
        use Outcome::*;
        let of = |os: &[Outcome]| group_outcome(&os.iter().map(|&o| report(o)).collect::<Vec<_>>());
        assert_eq!(of(&[Succeeded, Succeeded]), Succeeded);
        assert_eq!(of(&[NotStarted, NotStarted]), NotStarted);
        assert_eq!(of(&[NotStarted, RolledBack]), RolledBack);
        assert_eq!(of(&[Succeeded, RolledBack]), Diverged);
        assert_eq!(of(&[Succeeded, Diverged]), Diverged);
        assert_eq!(of(&[Succeeded]), NotStarted);
    }

    #[tokio::test]
    async fn one_failure_releases_every_waiting_member_with_its_reason() {
        let gate = Gate::new(3);
        let (a, b) = (gate.clone(), gate.clone());
        let wa = tokio::spawn(async move { a.pass(Stage::Restored, "a").await });
        let wb = tokio::spawn(async move { b.pass(Stage::Restored, "b").await });
        tokio::task::yield_now().await;
        gate.fail("c", &Error::Cancelled);
        for w in [wa, wb] {
            match w.await.expect("joined") {
                Err(Error::Group(why)) => assert_eq!(why, "c: cancelled"),
                other => panic!("expected the group's failure, got {other:?}"),
            }
        }
        // A member arriving later gives up at once; a group error is no new cause.
        gate.fail("a", &Error::Group("c: cancelled".into()));
        assert!(
            matches!(gate.pass(Stage::Checked, "late").await, Err(Error::Group(w)) if w == "c: cancelled")
        );
    }

    #[tokio::test]
    async fn the_gate_opens_when_every_member_arrived() {
        let gate = Gate::new(2);
        let a = gate.clone();
        let wa = tokio::spawn(async move { a.pass(Stage::Checked, "a").await });
        tokio::task::yield_now().await;
        assert!(!wa.is_finished(), "one of two arrived: it must wait");
        gate.pass(Stage::Checked, "b").await.expect("both arrived");
        wa.await.expect("joined").expect("both arrived");
        let t0 = Instant::now();
        gate.froze(t0);
        gate.froze(t0 + std::time::Duration::from_millis(5));
        gate.resumed(t0 + std::time::Duration::from_millis(30));
        assert_eq!(gate.downtime(), None, "one of two resumed");
        gate.resumed(t0 + std::time::Duration::from_millis(40));
        assert_eq!(gate.downtime(), Some(std::time::Duration::from_millis(40)));
    }
}

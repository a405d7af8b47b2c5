//! A migration started in the background, as an embedder holds it: its
//! events, its cancel, and its typed end.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use super::{CancelHandle, Event};
use crate::error::Error;
use crate::stats::{Outcome, Report};

/// Why a migration did not succeed: how it ended ([`Outcome`]: not started,
/// rolled back or diverged), the error that ended it, and its report.
#[derive(Debug)]
pub struct Failure {
    /// How it ended, and so where the tree runs now.
    pub outcome: Outcome,
    /// What ended it, with its causes.
    pub error: Error,
    /// What it did until then.
    pub report: Box<Report>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match self.outcome {
            Outcome::NotStarted => "refused before anything started",
            Outcome::RolledBack => "failed and rolled back (the source runs it)",
            Outcome::Diverged => "failed at or after the commit (check both hosts)",
            Outcome::Succeeded => "succeeded",
        };
        write!(
            f,
            "the migration {how}: {}",
            crate::target::error_chain(&self.error)
        )
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// A migration running in the background ([`super::Migration::start`]).
///
/// Its events come from [`MigrationRun::next_event`] until it ends;
/// awaiting it gives its end, `Ok` with the report when the tree runs on
/// the target, else the [`Failure`].
#[derive(Debug)]
pub struct MigrationRun {
    pub(super) id: String,
    pub(super) events: mpsc::UnboundedReceiver<Event>,
    pub(super) cancel: CancelHandle,
    pub(super) task: tokio::task::JoinHandle<Result<Report, Failure>>,
}

impl MigrationRun {
    /// The migration's id, which its events, its report and the target's
    /// logs carry.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next event, or `None` once the migration has ended and every
    /// event was read.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Asks it to stop: it rolls back unless it has committed.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A handle that cancels it from elsewhere.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }
}

impl Future for MigrationRun {
    type Output = Result<Report, Failure>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.task).poll(cx).map(|joined| {
            joined.unwrap_or_else(|e| {
                let why = format!("the migration's task ended: {e}");
                let unknown = crate::mode::ModeChoice {
                    mode: crate::mode::Mode::Auto,
                    requested: crate::mode::Mode::Auto,
                    reason: String::new(),
                };
                let mut stats = crate::stats::Ongoing::start(unknown);
                stats.set_migration_id(&self.id);
                Err(Failure {
                    outcome: Outcome::Diverged,
                    report: Box::new(stats.finalize(Err(why.clone()))),
                    error: Error::Protocol(why),
                })
            })
        })
    }
}

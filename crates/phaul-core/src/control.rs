//! The controller's side of a managed migration: from anywhere that holds
//! the key, an [`Order`] asks the service of the host that holds a tree to
//! move it to another service; the [`RemoteRun`] it gives follows it as a
//! [`MigrationRun`](crate::MigrationRun) follows a local one: its events,
//! its cancel, and its typed end.
//!
//! The source's service checks the order as strictly as `phaul migrate`
//! checks its arguments (see [`Service::controllable`](crate::Service::controllable)).
//! A controller that goes away (its link closed or lost, or its
//! [`RemoteRun`] dropped) cancels the migration: it rolls back unless it
//! had committed.

use std::time::Duration;

use phaul_transport::manage::{Canceller, Controller, Update, Updates};
use phaul_transport::proto::{MigrateOrder, MigrationEnded, MigrationOutcome};
use phaul_transport::{Endpoint, LinkConfig};
use tokio::sync::watch;
use tracing::warn;

use crate::error::{Error, Result};
use crate::mode::{Mode, ModeChoice};
use crate::source::{CancelHandle, Event, Failure};
use crate::stats::{Ongoing, Outcome, Report};

/// What a controller asks a source's service to do: move `kind` `id` of
/// its host to the service at `target` (`HOST:PORT`).
///
/// Serde both ways, for a control plane that passes orders on: `schema`
/// ([`Order::SCHEMA`]), `target`, `kind`, `id`, `mode`, and when set
/// `fallback`, `migration_id`, `target_pin` (32 bytes) and
/// `freeze_timeout_ms`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Order {
    schema: u32,
    target: String,
    kind: String,
    id: String,
    mode: Mode,
    #[serde(default)]
    fallback: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    migration_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target_pin: Option<[u8; 32]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    freeze_timeout_ms: Option<u64>,
}

impl Order {
    /// The version of the order form this build writes.
    pub const SCHEMA: u32 = 1;

    /// Move `kind` `id` (as `phaul migrate` takes them: `pid 4242`, `lxc
    /// web1`) to `target`, in mode `auto`.
    pub fn new(target: impl Into<String>, kind: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            schema: Self::SCHEMA,
            target: target.into(),
            kind: kind.into(),
            id: id.into(),
            mode: Mode::Auto,
            fallback: false,
            migration_id: None,
            target_pin: None,
            freeze_timeout_ms: None,
        }
    }

    /// The mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Use the best possible mode when the one asked for is not.
    pub fn fallback(mut self, on: bool) -> Self {
        self.fallback = on;
        self
    }

    /// The migration's id (the service checks it as
    /// [`Migration::with_id`](crate::Migration::with_id) does).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.migration_id = Some(id.into());
        self
    }

    /// The target's certificate the source's service must find.
    pub fn pin_target(mut self, fingerprint: [u8; 32]) -> Self {
        self.target_pin = Some(fingerprint);
        self
    }

    /// The longest the source may stay frozen (at most 600 s).
    pub fn freeze_timeout(mut self, limit: Duration) -> Self {
        let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1);
        self.freeze_timeout_ms = Some(ms);
        self
    }

    /// Sends the order to the source's service at `from` (`HOST:PORT` or
    /// `unix:PATH`) over a link configured by `link`, and returns once the
    /// service accepted it. A refusal is [`Error::Link`] with the service's
    /// `BAD_REQUEST` and its reason: nothing was started.
    pub async fn send(self, from: &str, link: &LinkConfig) -> Result<RemoteRun> {
        if self.schema != Self::SCHEMA {
            return Err(Error::Protocol(format!(
                "an order of form {} (this build writes {})",
                self.schema,
                Self::SCHEMA
            )));
        }
        let order = MigrateOrder {
            target: self.target,
            kind: self.kind,
            id: self.id,
            mode: self.mode.as_str().to_string(),
            fallback: self.fallback,
            migration_id: self.migration_id.unwrap_or_default(),
            target_pin: self.target_pin.map(Vec::from).unwrap_or_default(),
            freeze_timeout_ms: self.freeze_timeout_ms.unwrap_or(0),
        };
        let ordered = Controller::connect(Endpoint::parse(from)?, link)
            .await?
            .order(order)
            .await?;
        let id = ordered.migration_id().to_string();
        let (updates, canceller) = ordered.split();
        let (cancel, watched) = CancelHandle::pair();
        let cancel_task = tokio::spawn(forward_cancel(watched, canceller));
        Ok(RemoteRun {
            id,
            updates,
            cancel,
            cancel_task,
            ended: None,
        })
    }
}

/// Sends the cancel once asked; when every handle is gone without one, the
/// link's write half goes with this task (the run was dropped: the service
/// sees its controller gone and cancels).
async fn forward_cancel(mut asked: watch::Receiver<bool>, canceller: Canceller) {
    if asked.wait_for(|c| *c).await.is_ok() {
        if let Err(e) = canceller.cancel().await {
            warn!(error = %e, "could not send the cancel to the source's service");
        }
    }
}

/// A migration a controller ordered, as its source's service reports it.
#[derive(Debug)]
pub struct RemoteRun {
    id: String,
    updates: Updates,
    cancel: CancelHandle,
    cancel_task: tokio::task::JoinHandle<()>,
    ended: Option<std::result::Result<MigrationEnded, Error>>,
}

impl RemoteRun {
    /// The migration's id, in its events, its report and both services'
    /// logs.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next event, or `None` once the migration has ended (or the
    /// link to the service was lost).
    pub async fn next_event(&mut self) -> Option<Event> {
        while self.ended.is_none() {
            match self.updates.next().await {
                Ok(Some(Update::Event(json))) => match serde_json::from_str(&json) {
                    Ok(e) => return Some(e),
                    Err(e) => warn!(error = %e, "an event of a newer form, skipped"),
                },
                Ok(Some(Update::Ended(end))) => self.ended = Some(Ok(end)),
                Ok(None) => self.ended = Some(Err(Error::Protocol("no end reported".into()))),
                Err(e) => self.ended = Some(Err(Error::Link(e))),
            }
        }
        None
    }

    /// Asks the source's service to stop the migration: it rolls back
    /// unless it has committed.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A handle that cancels it from elsewhere.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// Its end, once every event was read: `Ok` when the tree runs on the
    /// target, else the [`Failure`]. Its error is the service's, as text
    /// ([`Error::SourceService`]); a link lost before the end is
    /// [`Outcome::Diverged`], since the controller cannot know how it
    /// ended (the service cancelled it, which rolls back unless it had
    /// committed).
    pub async fn finish(mut self) -> std::result::Result<Report, Failure> {
        while self.next_event().await.is_some() {}
        self.cancel_task.abort();
        let end = match self.ended.take() {
            Some(Ok(end)) => end,
            Some(Err(error)) => return Err(unknown_end(&self.id, error)),
            None => {
                let error = Error::Protocol("no end reported".into());
                return Err(unknown_end(&self.id, error));
            }
        };
        let report: Report = match serde_json::from_str(&end.report_json) {
            Ok(r) => r,
            Err(e) => {
                return Err(unknown_end(
                    &self.id,
                    Error::Protocol(format!("the service's report: {e}")),
                ));
            }
        };
        let outcome = match end.outcome() {
            MigrationOutcome::Succeeded => return Ok(report),
            MigrationOutcome::NotStarted => Outcome::NotStarted,
            MigrationOutcome::RolledBack => Outcome::RolledBack,
            MigrationOutcome::Diverged | MigrationOutcome::OutcomeInvalid => Outcome::Diverged,
        };
        Err(Failure {
            outcome,
            error: Error::SourceService(end.error),
            report: Box::new(report),
        })
    }
}

/// A failure whose end the controller could not learn.
fn unknown_end(id: &str, error: Error) -> Failure {
    let unknown = ModeChoice {
        mode: Mode::Auto,
        requested: Mode::Auto,
        reason: "unknown: the source's service did not report its end".into(),
    };
    let mut stats = Ongoing::start(unknown);
    stats.set_migration_id(id);
    let mut report = stats.finalize(Err(crate::target::error_chain(&error)));
    report.outcome = Outcome::Diverged;
    Failure {
        outcome: Outcome::Diverged,
        report: Box::new(report),
        error,
    }
}

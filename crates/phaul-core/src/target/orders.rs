//! A controller's orders (`MANAGE` channel): this service becomes the
//! source of a migration of something on its own host to another service,
//! reports its events and its end to the controller, and cancels it when
//! told, when the controller goes away, or when the service stops.
//!
//! An order is checked as strictly as `phaul migrate` checks its command
//! line, before anything is touched: the kind and id by the same registry
//! (PID 1, this service and its ancestors, kernel threads and zombies are
//! refused), the mode by its names, the target as `HOST:PORT` only (never
//! a descriptor or a local socket of this host), the pin and the freeze
//! limit by their sizes.

use std::sync::Arc;
use std::time::Duration;

use phaul_htypes::Htype;
use phaul_transport::manage::{OrderDesk, Stop};
use phaul_transport::proto::{MigrateOrder, MigrationEnded, MigrationOutcome};
use phaul_transport::tls::hex;
use phaul_transport::{ErrorCode, Link, LinkConfig};
use tokio::sync::watch;
use tracing::{info, warn};

use super::Service;
use crate::criu::{SourceCriu, TargetCriu};
use crate::error::Result;
use crate::mode::Mode;
use crate::source::{Failure, Migration, MigrationRun};
use crate::stats::{Outcome, Report};

/// The longest freeze a controller may allow (its own limit is checked
/// against this, so an order cannot hold a tree frozen for hours).
const MAX_FREEZE: Duration = Duration::from_secs(600);

/// An order that passed the checks: what a [`Launcher`] starts.
#[derive(Debug)]
pub(crate) struct Checked {
    pub target: String,
    pub link: LinkConfig,
    pub htype: Box<dyn Htype>,
    pub mode: Mode,
    pub fallback: bool,
    pub migration_id: Option<String>,
    pub freeze_timeout: Option<Duration>,
    pub work_dir: std::path::PathBuf,
}

type LaunchFn = dyn Fn(Checked) -> Result<MigrationRun> + Send + Sync;

/// How a service starts the migrations controllers order: a
/// [`Migration`] with the CRIU it was given ([`Service::controllable`]).
#[derive(Clone)]
pub(crate) struct Launcher(Arc<LaunchFn>);

impl std::fmt::Debug for Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Launcher(..)")
    }
}

impl Launcher {
    pub(crate) fn new<C: SourceCriu + Clone>(criu: C) -> Self {
        Self(Arc::new(move |c: Checked| {
            let mut m = Migration::new(criu.clone(), c.target, c.link, c.htype)
                .mode(c.mode)
                .fallback(c.fallback)
                .work_dir(&c.work_dir);
            if let Some(id) = &c.migration_id {
                m = m.with_id(id)?;
            }
            if let Some(t) = c.freeze_timeout {
                m = m.freeze_timeout(t);
            }
            Ok(m.start())
        }))
    }
}

impl<T: TargetCriu> Service<T> {
    /// Serves one controller's link: its order, checked, run, reported.
    pub(super) async fn serve_order(&self, link: Link, mut stopping: watch::Receiver<bool>) {
        let sid = hex(&link.session());
        let Ok((order, pending)) = OrderDesk::new(link).order().await else {
            return;
        };
        let Some(launcher) = &self.launcher else {
            pending
                .refuse(
                    ErrorCode::BadRequest,
                    "this service takes no controller's orders",
                )
                .await;
            return;
        };
        let checked = match self.check_order(order).await {
            Ok(c) => c,
            Err(why) => {
                warn!(session = %sid, peer = %pending.peer(), reason = %why, "refused a controller's order");
                pending.refuse(ErrorCode::BadRequest, &why).await;
                return;
            }
        };
        let (target, what) = (checked.target.clone(), checked.htype.kind().to_string());
        let mut run = match (launcher.0)(checked) {
            Ok(r) => r,
            Err(e) => {
                pending
                    .refuse(ErrorCode::BadRequest, &super::error_chain(&e))
                    .await;
                return;
            }
        };
        info!(session = %sid, migration = %run.id(), kind = %what, %target, "a controller's migration starts");
        let Ok((mut reporter, watch)) = pending.accept(run.id()).await else {
            run.cancel();
            let _ = run.await;
            return;
        };
        let cancel = run.cancel_handle();
        let canceller = tokio::spawn(async move {
            let why = tokio::select! {
                stop = watch.wait() => stop,
                _ = stopping.wait_for(|s| *s) => Stop::Gone,
            };
            info!(?why, "cancelling a controller's migration");
            cancel.cancel();
        });
        // Events keep flowing to the migration's end even once the
        // controller is gone: the run must be drained to its end.
        let mut reporting = true;
        while let Some(event) = run.next_event().await {
            if reporting {
                let json = serde_json::to_string(&event).unwrap_or_default();
                reporting = reporter.event(json).await.is_ok();
            }
        }
        let end = run.await;
        canceller.abort();
        let report = match &end {
            Ok(r) => r,
            Err(f) => &*f.report,
        };
        self.metrics.sent(report.bytes_transferred);
        let ended = ended(&end);
        info!(session = %sid, outcome = ?ended.outcome(), "a controller's migration ended");
        if reporting {
            let _ = reporter.ended(ended).await;
        }
    }

    /// Checks an order as `phaul migrate` checks its arguments; `Err` says
    /// why it is refused.
    async fn check_order(&self, o: MigrateOrder) -> std::result::Result<Checked, String> {
        check_target(&o.target)?;
        let mode = match o.mode.as_str() {
            "" => Mode::Auto,
            m => m.parse().map_err(|e: crate::Error| e.to_string())?,
        };
        let link = match o.target_pin.len() {
            0 => self.cfg.clone(),
            32 => self
                .cfg
                .clone()
                .pin(o.target_pin.try_into().expect("32 bytes")),
            n => return Err(format!("a pin is 32 bytes, not {n}")),
        };
        let freeze_timeout = match o.freeze_timeout_ms {
            0 => None,
            ms if Duration::from_millis(ms) <= MAX_FREEZE => Some(Duration::from_millis(ms)),
            ms => return Err(format!("a freeze limit of {ms} ms is above {MAX_FREEZE:?}")),
        };
        // The kinds' checks may run their managers' tools: off the runtime.
        let paths = self.paths.clone();
        let (kind, id) = (o.kind, o.id);
        let htype = tokio::task::spawn_blocking(move || {
            phaul_htypes::registry::source_in(&kind, &id, &paths)
        })
        .await
        .map_err(|e| format!("checking the order: {e}"))?
        .map_err(|e| e.to_string())?;
        Ok(Checked {
            target: o.target,
            link,
            htype,
            mode,
            fallback: o.fallback,
            migration_id: (!o.migration_id.is_empty()).then_some(o.migration_id),
            freeze_timeout,
            work_dir: self.work_dir.join("controlled"),
        })
    }
}

/// Only `HOST:PORT`: `fd:N` would hand the service one of its own
/// descriptors, and `unix:PATH` a socket of this host rather than another.
fn check_target(t: &str) -> std::result::Result<(), String> {
    let ok = !t.starts_with("unix:")
        && !t.starts_with("fd:")
        && t.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the target must be HOST:PORT of another phaul-service, not {t:?}"
        ))
    }
}

/// The end as it travels to the controller.
fn ended(end: &std::result::Result<Report, Failure>) -> MigrationEnded {
    let (outcome, report, error) = match end {
        Ok(r) => (Outcome::Succeeded, r, String::new()),
        Err(f) => (f.outcome, &*f.report, super::error_chain(&f.error)),
    };
    let outcome = match outcome {
        Outcome::Succeeded => MigrationOutcome::Succeeded,
        Outcome::NotStarted => MigrationOutcome::NotStarted,
        Outcome::RolledBack => MigrationOutcome::RolledBack,
        Outcome::Diverged => MigrationOutcome::Diverged,
    };
    MigrationEnded {
        outcome: outcome as i32,
        report_json: serde_json::to_string(report).unwrap_or_default(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::check_target;

    #[test]
    fn an_order_names_another_host_by_address_only() {
        assert!(check_target("10.0.0.2:7070").is_ok());
        assert!(check_target("[::1]:7070").is_ok());
        for bad in [
            "fd:3",
            "unix:/run/x.sock",
            "10.0.0.2",
            ":7070",
            "h:0",
            "h:70000",
            "",
        ] {
            assert!(check_target(bad).is_err(), "{bad}");
        }
    }
}

//! The command-line layer that `phaul`, `phaul-service` and `phaul-web`
//! share, so that a flag, its help text and what it builds are written once.
//!
//! Each binary flattens the clap argument groups it needs
//! (`#[command(flatten)]`), turns them into the library's values (a
//! [`phaul_transport::LinkConfig`], a [`phaul_core::criu::Criu`], htype
//! [`Paths`](phaul_htypes::registry::Paths)), sets up [`init_tracing`] and
//! waits for [`shutdown_signal`]. The `phaul` command's own arguments and
//! its progress display are here too, so its binary only parses, calls and
//! prints.
//!
//! # Layout
//! - [`args`]: argument groups: [`KeyArgs`], [`LinkArgs`], [`CriuArgs`],
//!   [`HostArgs`], and [`fs_choice`] for `--fs`.
//! - [`migrate`]: [`MigrateArgs`], everything `phaul migrate` accepts, and
//!   the [`Migration`](phaul_core::Migration) it builds.
//! - [`metrics`]: `--metrics`, a service's metrics at `GET /metrics`.
//! - [`progress`]: [`ProgressDisplay`], a spinner line and an optional JSON
//!   event log fed by [`Progress`](phaul_core::Progress) events.
//! - [`error`]: [`Error`], this crate's one error type.

pub mod args;
pub mod error;
pub mod metrics;
pub mod migrate;
pub mod progress;

pub use args::{CriuArgs, HostArgs, KeyArgs, LinkArgs, TARGET_HELP, fs_choice};
pub use error::{Error, Result};
pub use metrics::{metrics_addr, serve_metrics};
pub use migrate::{MigrateArgs, PidFlags};
pub use progress::{ProgressDisplay, Sent};

/// Logs go to stderr, filtered by `PHAUL_LOG` (an `EnvFilter` directive),
/// else at `default_level` (`warn` for a command, `info` for a daemon).
pub fn init_tracing(default_level: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PHAUL_LOG")
                .unwrap_or_else(|_| default_level.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves at the first ctrl-c or SIGTERM: how a daemon is asked to stop.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            // Without a SIGTERM handler the daemon still stops on ctrl-c.
            tracing::warn!(error = %e, "no SIGTERM handler; only ctrl-c stops this");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

//! The server: its configuration, the router, and the graceful stop.
//!
//! ```text
//! GET  /  /app.js  /style.css           the page (no token needed: no data)
//! GET  /api/info                        both hosts, modes, limits
//! GET  /api/local                       this host's processes and containers, with memory
//! GET  /api/remote                      the other host's, over the link (502 if unreachable)
//! POST /api/plan {pid|container, mode, fs}  what the mode comes to here, and why (a dry run)
//! POST /api/migrate {pid|container, mode, fs}  moves a tree of this host there: 202 {id}
//! POST /api/migrate {pid|container, mode, from: "remote"}
//!                                       moves a tree of the other host here: 202 {id}
//! GET  /api/migrations[/{id}]           their state
//! DELETE /api/migrations                forgets the ended ones
//! POST /api/migrations/{id}/cancel      rolls it back; 409 once committed
//! GET  /api/events                      server-sent events: every state change
//! POST /api/checkpoint {pid, stop}      dumps into an archive: {id, archive, ...}
//! GET  /api/checkpoints/{id}/archive    the archive (application/x-tar)
//! POST /api/restore  (body: the archive)  restores it: {pid}
//! ```

use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use phaul_archive::Store;
use phaul_htypes::registry::Paths;
use phaul_transport::LinkConfig;
use tokio::sync::watch;
use tracing::info;

use crate::api::{self, api_error};
use crate::error::{Error, Result};
use crate::guard;
use crate::migrations::Migrations;
use crate::remote::Remote;

const INDEX_HTML: &str = include_str!("../static/index.html");
const APP_JS: &str = include_str!("../static/app.js");
const STYLE_CSS: &str = include_str!("../static/style.css");

/// How phaul-web runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The address it serves on.
    pub addr: SocketAddr,
    /// The other host's phaul-service (the target of this host's trees).
    pub target: String,
    /// This host's phaul-service, as the other host reaches it
    /// (`HOST:PORT`): where the other host's trees are moved to, by an
    /// order to the other host's service. `None`: the page moves trees one
    /// way only, from this host.
    pub this_host: Option<String>,
    /// The link to it.
    pub link: LinkConfig,
    /// CRIU, for migrations, checkpoints and restores.
    pub criu: criu_rpc::Criu,
    /// CRIU's log level during migrations (checkpoints log at 4).
    pub criu_log_level: i32,
    /// Where container managers keep their state on this host.
    pub paths: Paths,
    /// Migrations, checkpoints and uploads go here.
    pub work_dir: PathBuf,
    /// The login token.
    pub token: String,
    /// The largest upload, in bytes.
    pub max_upload: u64,
    /// Origins accepted besides this server's own.
    pub allow_origins: Vec<String>,
}

/// What every handler sees.
pub(crate) struct Shared {
    pub(crate) cfg: Config,
    /// `http://HOST:PORT` values an `Origin` header may carry.
    pub(crate) origins: Vec<String>,
    /// `HOST:PORT` values the `Host` header may carry.
    pub(crate) hosts: Vec<String>,
    pub(crate) migrations: Arc<Migrations>,
    pub(crate) remote: Remote,
    pub(crate) store: Store,
    /// Set once a stop was asked: no new job starts.
    pub(crate) stopping: AtomicBool,
    /// Set once running migrations have ended: event streams close.
    pub(crate) shutdown: watch::Sender<bool>,
}

/// The web application.
pub struct App {
    shared: Arc<Shared>,
}

/// Binds the page's address. Listening on every address is refused unless
/// `allow_origins` names how browsers reach it; a non-loopback address is
/// warned about, since the token then crosses the network in clear.
pub async fn bind(listen: SocketAddr, allow_origins: &[String]) -> Result<tokio::net::TcpListener> {
    if listen.ip().is_unspecified() && allow_origins.is_empty() {
        return Err(Error::EveryAddress);
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| Error::Listen {
            addr: listen,
            source,
        })?;
    match listener.local_addr() {
        Ok(addr) if !addr.ip().is_loopback() => tracing::warn!(
            %addr,
            "serving plain HTTP on a non-loopback address: the token crosses the network in clear"
        ),
        _ => {}
    }
    Ok(listener)
}

impl App {
    /// Prepares the work directory and the state.
    pub fn new(cfg: Config) -> Result<Self> {
        let store = Store::open(&cfg.work_dir, cfg.criu.clone())?;
        let mig_dir = cfg.work_dir.join("migrations");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&mig_dir)
            .map_err(|source| Error::WorkDir {
                path: mig_dir.clone(),
                source,
            })?;
        let (origins, hosts) = guard::origins(cfg.addr, &cfg.allow_origins)?;
        if let Some(here) = &cfg.this_host {
            check_this_host(here)?;
        }
        let criu = phaul_core::criu::Criu::new(cfg.criu.clone()).log_level(cfg.criu_log_level);
        let migrations = Arc::new(Migrations::new(
            cfg.target.clone(),
            cfg.this_host.clone(),
            cfg.link.clone(),
            mig_dir,
            criu,
        ));
        let remote = Remote::new(cfg.target.clone(), cfg.link.clone());
        let (shutdown, _) = watch::channel(false);
        Ok(Self {
            shared: Arc::new(Shared {
                cfg,
                origins,
                hosts,
                migrations,
                remote,
                store,
                stopping: AtomicBool::new(false),
                shutdown,
            }),
        })
    }

    /// The login token.
    pub fn token(&self) -> &str {
        &self.shared.cfg.token
    }

    fn router(&self) -> Router {
        let api = api::routes()
            .fallback(|| async { api_error(StatusCode::NOT_FOUND, "no such API") })
            .layer(middleware::from_fn_with_state(
                self.shared.clone(),
                guard::require_token,
            ));
        Router::new()
            .route(
                "/",
                get(|| async { page("text/html; charset=utf-8", INDEX_HTML) }),
            )
            .route(
                "/app.js",
                get(|| async { page("text/javascript; charset=utf-8", APP_JS) }),
            )
            .route(
                "/style.css",
                get(|| async { page("text/css; charset=utf-8", STYLE_CSS) }),
            )
            .nest("/api", api)
            .fallback(|| async { api_error(StatusCode::NOT_FOUND, "not found") })
            .layer(middleware::from_fn_with_state(
                self.shared.clone(),
                guard::same_origin,
            ))
            .with_state(self.shared.clone())
    }

    /// Serves until `signal`; then cancels running migrations (each rolls
    /// back unless it has committed) and waits for them to end.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        signal: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let router = self.router();
        let shared = self.shared.clone();
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                signal.await;
                info!("stopping: running migrations are cancelled and waited for");
                shared.stopping.store(true, Ordering::SeqCst);
                shared.migrations.cancel_all();
                shared.migrations.wait_idle(Duration::from_secs(600)).await;
                let _ = shared.shutdown.send(true);
            })
            .await
            .map_err(Error::Serve)
    }
}

/// The other host's service dials `--this-host`: only an address it can
/// reach (`HOST:PORT`), never a local socket or a descriptor of this host
/// (checked by hand: `Endpoint::parse` would take over an `fd:N`).
fn check_this_host(here: &str) -> Result<()> {
    let port = here.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
    let tcp = matches!(port, Some((h, Ok(p))) if !h.is_empty() && p > 0)
        && !here.starts_with("unix:")
        && !here.starts_with("fd:");
    if tcp {
        Ok(())
    } else {
        Err(Error::ThisHost(here.to_string()))
    }
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_is_an_address_the_other_host_can_dial() {
        for ok in ["10.0.0.1:7070", "host.example:7070", "[::1]:7070"] {
            assert!(check_this_host(ok).is_ok(), "{ok}");
        }
        for bad in [
            "10.0.0.1",
            ":7070",
            "10.0.0.1:0",
            "unix:/run/x.sock",
            "fd:3",
            "h:70000",
        ] {
            assert!(
                matches!(check_this_host(bad), Err(Error::ThisHost(_))),
                "{bad}"
            );
        }
    }
}

//! The HTTP side: the router, the guard every request passes, and the API.
//!
//! ```text
//! GET  /  /app.js  /style.css           the page (no token needed: no data)
//! GET  /api/info                        target, modes, limits
//! GET  /api/local                       this host's processes and containers
//! GET  /api/remote                      the target's, over the link (502 if unreachable)
//! POST /api/migrate {pid|container, mode}  starts a migration: 202 {id}
//! GET  /api/migrations[/{id}]           their state
//! POST /api/migrations/{id}/cancel      rolls it back unless committed
//! GET  /api/events                      server-sent events: every state change
//! POST /api/checkpoint {pid, stop}      dumps into an archive: {id, archive, ...}
//! GET  /api/checkpoints/{id}/archive    the archive (application/x-tar)
//! POST /api/restore  (body: the archive)  restores it: {pid}
//! ```
//!
//! Errors are JSON `{"error": "..."}` with 400 (refused input), 401 (no or
//! a wrong token), 403 (another origin or host name), 404, 409 (busy), 413
//! (upload too large), 500 (the work failed), 502 (the target did not
//! answer) or 503 (phaul-web is stopping).

use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use phaul_core::Mode;
use phaul_transport::LinkConfig;
use phaul_transport::proto::ProcessList;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use crate::checkpoint::{self, CrError};
use crate::migrations::{Migrations, StartError};
use crate::remote::Remote;

const INDEX_HTML: &str = include_str!("static/index.html");
const APP_JS: &str = include_str!("static/app.js");
const STYLE_CSS: &str = include_str!("static/style.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; \
    base-uri 'none'; form-action 'none'";

/// How phaul-web runs.
pub struct Config {
    /// The address it serves on.
    pub addr: SocketAddr,
    /// The target's phaul-service.
    pub target: String,
    /// The link to it.
    pub link: LinkConfig,
    /// LXC's container directory on this host.
    pub lxcpath: PathBuf,
    /// Migrations, checkpoints and uploads go here.
    pub work_dir: PathBuf,
    /// The login token.
    pub token: String,
    /// The largest upload, in bytes.
    pub max_upload: u64,
    /// Origins accepted besides this server's own.
    pub allow_origins: Vec<String>,
}

struct Shared {
    cfg: Config,
    /// `http://HOST:PORT` values an `Origin` header may carry.
    origins: Vec<String>,
    /// `HOST:PORT` values the `Host` header may carry.
    hosts: Vec<String>,
    migrations: Arc<Migrations>,
    remote: Remote,
    /// Set once a stop was asked: no new job starts.
    stopping: AtomicBool,
    /// Set once running migrations have ended: event streams close.
    shutdown: watch::Sender<bool>,
}

/// The web application.
pub struct App {
    shared: Arc<Shared>,
}

/// `n` random bytes from the kernel, in hex.
pub fn random_hex(n: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads a login token: at least 16 printable characters, from a file that
/// only its owner can read.
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "{} is readable by others: chmod 600 it (it logs whoever holds it in as root)",
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let token = text.trim();
    if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!(
            "the token in {} must be at least 16 printable ASCII characters without spaces",
            path.display()
        );
    }
    Ok(token.to_string())
}

/// Equality whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Removes what an earlier run left in `area`: only entries named like
/// ours (32 hex digits), so a mistaken `--work-dir` cannot lose anything
/// else.
fn clear_area(area: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(area) {
        Ok(entries) => {
            for e in entries.flatten() {
                let name = e.file_name();
                let ours = name.to_str().is_some_and(|n| {
                    n.len() == 32 && n.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                });
                if ours {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(area)
            .with_context(|| format!("creating {}", area.display())),
        Err(e) => Err(e).with_context(|| format!("reading {}", area.display())),
    }
}

impl App {
    /// Prepares the work directory and the state.
    pub fn new(cfg: Config) -> anyhow::Result<Self> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&cfg.work_dir)
            .with_context(|| format!("creating {}", cfg.work_dir.display()))?;
        clear_area(&checkpoint::checkpoints(&cfg.work_dir))?;
        clear_area(&checkpoint::restores(&cfg.work_dir))?;
        let mig_dir = cfg.work_dir.join("migrations");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&mig_dir)
            .with_context(|| format!("creating {}", mig_dir.display()))?;
        let port = cfg.addr.port();
        let mut origins = vec![format!("http://{}", cfg.addr)];
        if cfg.addr.ip().is_loopback() {
            for h in ["localhost", "127.0.0.1", "[::1]"] {
                origins.push(format!("http://{h}:{port}"));
            }
        }
        for o in &cfg.allow_origins {
            let o = o.trim_end_matches('/');
            if !o.starts_with("http://") && !o.starts_with("https://") {
                bail!("--allow-origin {o:?}: an origin is http://HOST:PORT or https://HOST:PORT");
            }
            origins.push(o.to_string());
        }
        origins.sort();
        origins.dedup();
        let hosts = origins
            .iter()
            .filter_map(|o| o.split_once("://").map(|(_, h)| h.to_string()))
            .collect();
        let migrations = Arc::new(Migrations::new(
            cfg.target.clone(),
            cfg.link.clone(),
            mig_dir,
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
        let api = Router::new()
            .route("/info", get(info))
            .route("/local", get(local))
            .route("/remote", get(remote))
            .route("/migrate", post(migrate))
            .route("/migrations", get(migrations))
            .route("/migrations/{id}", get(migration))
            .route("/migrations/{id}/cancel", post(cancel))
            .route("/events", get(events))
            .route("/checkpoint", post(checkpoint))
            .route("/checkpoints/{id}/archive", get(download))
            .route("/restore", post(restore))
            .fallback(|| async { api_error(StatusCode::NOT_FOUND, "no such API") })
            .layer(middleware::from_fn_with_state(
                self.shared.clone(),
                require_token,
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
                same_origin,
            ))
            .with_state(self.shared.clone())
    }

    /// Serves until `signal`; then cancels running migrations (each rolls
    /// back unless it has committed) and waits for them to end.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        signal: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
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
            .context("serving HTTP")
    }
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// An API error, answered as JSON `{"error": message}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

fn api_error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: message.into(),
    }
}

type ApiResult = Result<Response, ApiError>;

fn bad(message: impl Into<String>) -> ApiError {
    api_error(StatusCode::BAD_REQUEST, message)
}

/// Refuses new jobs once phaul-web is stopping.
fn not_stopping(app: &Shared) -> Result<(), ApiError> {
    if app.stopping.load(Ordering::SeqCst) {
        return Err(api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "phaul-web is stopping",
        ));
    }
    Ok(())
}

/// Every request: the `Host` must name this server and an `Origin`, when
/// present, must be this server's; every response gets the security
/// headers (and never a CORS one).
async fn same_origin(State(app): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let host_ok = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| app.hosts.iter().any(|a| a.eq_ignore_ascii_case(h)));
    let origin_ok = match req.headers().get(header::ORIGIN) {
        None => true,
        Some(o) => o
            .to_str()
            .is_ok_and(|o| app.origins.iter().any(|a| a.eq_ignore_ascii_case(o))),
    };
    let mut resp = if !host_ok {
        api_error(
            StatusCode::FORBIDDEN,
            "this server is not reached by that host name",
        )
        .into_response()
    } else if !origin_ok {
        api_error(StatusCode::FORBIDDEN, "cross-origin requests are refused").into_response()
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    resp
}

/// Every `/api` request: `Authorization: Bearer TOKEN`.
async fn require_token(State(app): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) if constant_time_eq(t.as_bytes(), app.cfg.token.as_bytes()) => next.run(req).await,
        _ => {
            let mut r = api_error(
                StatusCode::UNAUTHORIZED,
                "a valid token is needed (Authorization: Bearer TOKEN)",
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
    }
}

async fn info(State(app): State<Arc<Shared>>) -> Response {
    axum::Json(json!({
        "target": app.cfg.target,
        "modes": Mode::ALL.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        "default_mode": Mode::Auto.as_str(),
        "max_upload": app.cfg.max_upload,
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

fn list_json(l: &ProcessList) -> Value {
    json!({
        "processes": l.processes.iter().map(|p| json!({
            "pid": p.pid,
            "ppid": p.ppid,
            "name": p.name,
            "cmdline": p.cmdline,
            "container": p.container,
        })).collect::<Vec<_>>(),
        "containers": l.containers.iter().map(|c| json!({
            "name": c.name,
            "state": c.state,
            "init_pid": c.init_pid,
        })).collect::<Vec<_>>(),
    })
}

/// This process and its ancestors: never offered for migration.
fn own_lineage() -> Vec<i32> {
    let mut out = Vec::new();
    let mut pid = i32::try_from(std::process::id()).unwrap_or(0);
    while pid > 1 && out.len() < 4096 {
        out.push(pid);
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            break;
        };
        pid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
    }
    out
}

async fn host_list(lxcpath: PathBuf) -> Result<ProcessList, ApiError> {
    tokio::task::spawn_blocking(move || phaul_core::hostinfo::list(&lxcpath))
        .await
        .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, format!("listing: {e}")))
}

async fn local(State(app): State<Arc<Shared>>) -> ApiResult {
    let list = host_list(app.cfg.lxcpath.clone()).await?;
    let mut v = list_json(&list);
    v["own"] = json!(own_lineage());
    Ok(axum::Json(v).into_response())
}

async fn remote(State(app): State<Arc<Shared>>) -> ApiResult {
    match app.remote.list().await {
        Ok(l) => Ok(axum::Json(list_json(&l)).into_response()),
        Err(e) => Err(api_error(StatusCode::BAD_GATEWAY, e)),
    }
}

fn parse_body(body: &Bytes) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad("the body must be a JSON object")),
        Err(e) => Err(bad(format!("the body is not JSON: {e}"))),
    }
}

/// The PID as the user wrote it: a string or a JSON number; anything but a
/// positive decimal is refused later by the htype.
fn pid_text(v: &Value) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(bad("pid must be a string or a number")),
    }
}

/// What a request names: a validated htype and its busy key.
struct Named {
    htype: Box<dyn phaul_htypes::Htype>,
    key: String,
    pid: i32,
}

/// Validates `{"pid": ...}` or `{"container": ...}`: the PID through the
/// pid htype (a positive decimal, exists, not init, not phaul-web or its
/// ancestors, not a kernel thread) and against this host's process list;
/// the container name with LXC's rules, then through the lxc htype.
async fn named(app: &Shared, body: &serde_json::Map<String, Value>) -> Result<Named, ApiError> {
    let paths = phaul_htypes::registry::Paths {
        lxcpath: app.cfg.lxcpath.clone(),
        ..Default::default()
    };
    match (body.get("pid"), body.get("container")) {
        (Some(p), None) => {
            let text = pid_text(p)?;
            let t = text.clone();
            let htype = tokio::task::spawn_blocking(move || {
                phaul_htypes::registry::source_in("pid", &t, &paths)
            })
            .await
            .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| bad(e.to_string()))?;
            let pid = htype.root_pid().map_err(|e| bad(e.to_string()))?;
            let list = host_list(app.cfg.lxcpath.clone()).await?;
            if !list.processes.iter().any(|p| p.pid == pid) {
                return Err(bad(format!(
                    "PID {pid} does not run on this host (it is not in this host's network namespace)"
                )));
            }
            Ok(Named {
                htype,
                key: format!("pid:{pid}"),
                pid,
            })
        }
        (None, Some(c)) => {
            let Value::String(name) = c else {
                return Err(bad("container must be a string"));
            };
            phaul_htypes::lxc::validate_name(name).map_err(|e| bad(e.to_string()))?;
            let n = name.clone();
            let htype = tokio::task::spawn_blocking(move || {
                phaul_htypes::registry::source_in("lxc", &n, &paths)
            })
            .await
            .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| bad(e.to_string()))?;
            let pid = htype.root_pid().map_err(|e| bad(e.to_string()))?;
            Ok(Named {
                htype,
                key: format!("lxc:{name}"),
                pid,
            })
        }
        _ => Err(bad("name exactly one of \"pid\" and \"container\"")),
    }
}

async fn migrate(State(app): State<Arc<Shared>>, body: Bytes) -> ApiResult {
    not_stopping(&app)?;
    let body = parse_body(&body)?;
    let mode = match body.get("mode") {
        None | Some(Value::Null) => Mode::Auto,
        Some(Value::String(s)) => s.parse::<Mode>().map_err(|e| bad(e.to_string()))?,
        Some(_) => return Err(bad("mode must be a string")),
    };
    let n = named(&app, &body).await?;
    let guard = app
        .migrations
        .claim(&n.key)
        .map_err(|StartError::Busy(m)| api_error(StatusCode::CONFLICT, m))?;
    let id = app.migrations.start(n.htype, mode, guard);
    Ok((StatusCode::ACCEPTED, axum::Json(json!({ "id": id }))).into_response())
}

async fn migrations(State(app): State<Arc<Shared>>) -> Response {
    axum::Json(app.migrations.snapshot()).into_response()
}

fn parse_id(id: &str) -> Result<u64, ApiError> {
    if id.is_empty() || id.len() > 19 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("a migration id is a decimal number"));
    }
    id.parse()
        .map_err(|_| bad("a migration id is a decimal number"))
}

async fn migration(State(app): State<Arc<Shared>>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let id = parse_id(&id)?;
    app.migrations
        .get(id)
        .map(|v| axum::Json(v).into_response())
        .ok_or_else(|| api_error(StatusCode::NOT_FOUND, "no such migration"))
}

async fn cancel(State(app): State<Arc<Shared>>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let id = parse_id(&id)?;
    if app.migrations.cancel(id) {
        Ok(axum::Json(json!({ "cancelling": id })).into_response())
    } else {
        Err(api_error(
            StatusCode::CONFLICT,
            "that migration is not running",
        ))
    }
}

/// Server-sent events: first a `snapshot` (every migration), then a
/// `migration` event per change (a new `snapshot` if this reader fell
/// behind). Read with `fetch`, so the token travels in a header.
async fn events(State(app): State<Arc<Shared>>) -> Response {
    struct Feed {
        first: Option<String>,
        rx: broadcast::Receiver<String>,
        stop: watch::Receiver<bool>,
        app: Arc<Shared>,
    }
    let feed = Feed {
        first: Some(app.migrations.snapshot().to_string()),
        rx: app.migrations.subscribe(),
        stop: app.shutdown.subscribe(),
        app: app.clone(),
    };
    let stream = futures_util::stream::unfold(feed, |mut f| async move {
        if let Some(s) = f.first.take() {
            return Some((
                Ok::<_, Infallible>(Event::default().event("snapshot").data(s)),
                f,
            ));
        }
        if *f.stop.borrow() {
            return None;
        }
        let ev = tokio::select! {
            r = f.rx.recv() => match r {
                Ok(m) => Event::default().event("migration").data(m),
                Err(broadcast::error::RecvError::Lagged(_)) => Event::default()
                    .event("snapshot")
                    .data(f.app.migrations.snapshot().to_string()),
                Err(broadcast::error::RecvError::Closed) => return None,
            },
            _ = f.stop.wait_for(|s| *s) => return None,
        };
        Some((Ok(ev), f))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

async fn checkpoint(State(app): State<Arc<Shared>>, body: Bytes) -> ApiResult {
    not_stopping(&app)?;
    let body = parse_body(&body)?;
    if body.contains_key("container") {
        return Err(bad(
            "checkpoints are of process trees: name a \"pid\" (migrate containers instead)",
        ));
    }
    let stop = match body.get("stop") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("stop must be true or false")),
    };
    let n = named(&app, &body).await?;
    let options = n.htype.dump_options();
    let _guard = app
        .migrations
        .claim(&n.key)
        .map_err(|StartError::Busy(m)| api_error(StatusCode::CONFLICT, m))?;
    let id = checkpoint_id()?;
    info!(pid = n.pid, id, stop, "checkpoint");
    match checkpoint::checkpoint(&app.cfg.work_dir, id, n.pid, &options, !stop).await {
        Ok(c) => Ok(axum::Json(json!({
            "id": c.id,
            "pid": n.pid,
            "files": c.files,
            "bytes": c.bytes,
            "left_running": !stop,
            "archive": format!("/api/checkpoints/{}/archive", c.id),
        }))
        .into_response()),
        Err(e) => Err(cr_error(e)),
    }
}

fn checkpoint_id() -> Result<String, ApiError> {
    random_hex(16).map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))
}

fn cr_error(e: CrError) -> ApiError {
    match e {
        CrError::Refused(m) => {
            warn!(error = %m, "refused");
            bad(m)
        }
        CrError::Failed(m) => {
            warn!(error = %m, "failed");
            api_error(StatusCode::INTERNAL_SERVER_ERROR, m)
        }
    }
}

async fn download(State(app): State<Arc<Shared>>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let path = checkpoint::archive_path(&app.cfg.work_dir, &id)
        .ok_or_else(|| bad("a checkpoint id is 32 hex digits"))?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| api_error(StatusCode::NOT_FOUND, "no such checkpoint"))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .len();
    let stream = futures_util::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let disposition = format!("attachment; filename=\"phaul-checkpoint-{id}.tar\"");
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition).expect("hex and ASCII"),
    );
    Ok((headers, Body::from_stream(stream)).into_response())
}

async fn restore(State(app): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> ApiResult {
    not_stopping(&app)?;
    let cap = app.cfg.max_upload;
    let too_large = || {
        api_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the archive is larger than the limit of {cap} bytes (--max-upload)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap) {
        return Err(too_large());
    }
    let id = checkpoint_id()?;
    let dir = checkpoint::restores(&app.cfg.work_dir).join(&id);
    checkpoint::fresh_dir(&dir).map_err(cr_error)?;
    let upload = dir.join("upload.tar");
    let stored = store_upload(body, &upload, cap).await;
    match stored {
        Ok(n) => info!(bytes = n, id, "archive uploaded"),
        Err(resp) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(resp.unwrap_or_else(too_large));
        }
    }
    match checkpoint::restore(dir, upload).await {
        Ok(pid) => {
            info!(pid, "restored");
            Ok(axum::Json(json!({ "pid": pid })).into_response())
        }
        Err(e) => Err(cr_error(e)),
    }
}

/// Streams the request body into a new file, at most `cap` bytes. `Err(None)`
/// when the cap was passed.
async fn store_upload(body: Body, path: &Path, cap: u64) -> Result<u64, Option<ApiError>> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            Some(api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("storing the upload: {e}"),
            ))
        })?;
    let mut file = tokio::fs::File::from_std(file);
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Some(bad(format!("reading the upload: {e}"))))?;
        total += chunk.len() as u64;
        if total > cap {
            return Err(None);
        }
        file.write_all(&chunk).await.map_err(|e| {
            Some(api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("storing the upload: {e}"),
            ))
        })?;
    }
    file.flush().await.map_err(|e| {
        Some(api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("storing the upload: {e}"),
        ))
    })?;
    Ok(total)
}

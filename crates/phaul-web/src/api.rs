//! The `/api` handlers, the validation of what they are given, and their
//! errors: JSON `{"error": "..."}` with 400 (refused input), 401 (no or a
//! wrong token), 403 (another origin or host name), 404, 409 (busy), 413
//! (upload too large), 500 (the work failed), 502 (the target did not
//! answer) or 503 (phaul-web is stopping).

use std::convert::Infallible;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use phaul_core::Mode;
use phaul_core::fs::FsChoice;
use phaul_transport::error_chain;
use phaul_transport::proto::ProcessList;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use crate::memory::ProcTable;
use crate::migrations::{CancelRefused, Feed, Pull, StartError, Subject};
use crate::server::Shared;

/// The API's routes, relative to `/api`.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/info", get(info))
        .route("/local", get(local))
        .route("/remote", get(remote))
        .route("/plan", post(plan))
        .route("/migrate", post(migrate))
        .route("/migrations", get(migrations).delete(clear))
        .route("/migrations/{id}", get(migration))
        .route("/migrations/{id}/cancel", post(cancel))
        .route("/events", get(events))
        .route("/checkpoint", post(checkpoint))
        .route("/checkpoints/{id}/archive", get(download))
        .route("/restore", post(restore))
}

/// An API error, answered as JSON `{"error": message}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

pub(crate) fn api_error(status: StatusCode, message: impl Into<String>) -> ApiError {
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

async fn info(State(app): State<Arc<Shared>>) -> Response {
    axum::Json(json!({
        "target": app.cfg.target,
        "this_host": app.cfg.this_host,
        // Whether trees of the other host can be moved here.
        "pull": app.cfg.this_host.is_some(),
        "modes": Mode::ALL.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        "default_mode": Mode::Auto.as_str(),
        "fs_drivers": FS_DRIVERS,
        "default_fs": FS_DRIVERS[0],
        "max_upload": app.cfg.max_upload,
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

/// The file-system drivers the page offers. rsync is left out: its
/// remote-shell helper is the `phaul` binary, which phaul-web is not.
const FS_DRIVERS: [&str; 2] = ["native", "shared"];

/// A host's list for the page. With `mem` (this host only), each process
/// carries the memory a migration copies (`mem`: anonymous resident bytes),
/// and a container's init the processes and memory of the whole container
/// (`ct_procs`, `ct_mem`), whose other processes live in its own namespaces
/// and are not listed.
fn list_json(l: &ProcessList, mem: Option<&ProcTable>) -> Value {
    json!({
        "processes": l.processes.iter().map(|p| {
            let mut v = json!({
                "pid": p.pid,
                "ppid": p.ppid,
                "name": p.name,
                "cmdline": p.cmdline,
                "container": p.container,
            });
            if let Some(m) = mem {
                v["mem"] = json!(m.rss(p.pid));
                if !p.container.is_empty() {
                    let (n, bytes) = m.tree(p.pid);
                    v["ct_procs"] = json!(n);
                    v["ct_mem"] = json!(bytes);
                }
            }
            v
        }).collect::<Vec<_>>(),
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

async fn proc_table() -> Result<ProcTable, ApiError> {
    tokio::task::spawn_blocking(ProcTable::read)
        .await
        .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, format!("listing: {e}")))
}

async fn local(State(app): State<Arc<Shared>>) -> ApiResult {
    let list = host_list(app.cfg.paths.lxcpath.clone()).await?;
    let mem = proc_table().await?;
    let mut v = list_json(&list, Some(&mem));
    v["own"] = json!(own_lineage());
    Ok(axum::Json(v).into_response())
}

async fn remote(State(app): State<Arc<Shared>>) -> ApiResult {
    match app.remote.list().await {
        Ok(l) => Ok(axum::Json(list_json(&l, None)).into_response()),
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

/// The htype `kind` names `id` on this host (looked up off the runtime:
/// it reads `/proc` and may run the manager's tool), with its root PID.
async fn lookup(app: &Shared, kind: &'static str, id: String) -> Result<Named, ApiError> {
    let key = format!("{kind}:{id}");
    let paths = app.cfg.paths.clone();
    let htype =
        tokio::task::spawn_blocking(move || phaul_htypes::registry::source_in(kind, &id, &paths))
            .await
            .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| bad(e.to_string()))?;
    let pid = htype.root_pid().map_err(|e| bad(e.to_string()))?;
    Ok(Named { htype, key, pid })
}

/// Validates `{"pid": ...}` or `{"container": ...}`: the PID through the
/// pid htype (a positive decimal, exists, not init, not phaul-web or its
/// ancestors, not a kernel thread) and against this host's process list;
/// the container name with LXC's rules, then through the lxc htype.
async fn named(app: &Shared, body: &serde_json::Map<String, Value>) -> Result<Named, ApiError> {
    match (body.get("pid"), body.get("container")) {
        (Some(p), None) => {
            let mut n = lookup(app, "pid", pid_text(p)?).await?;
            // Busy by the PID itself, however it was written ("042", 42).
            n.key = format!("pid:{}", n.pid);
            let list = host_list(app.cfg.paths.lxcpath.clone()).await?;
            if !list.processes.iter().any(|p| p.pid == n.pid) {
                return Err(bad(format!(
                    "PID {} does not run on this host (it is not in this host's network namespace)",
                    n.pid
                )));
            }
            Ok(n)
        }
        (None, Some(Value::String(name))) => {
            phaul_htypes::lxc::validate_name(name).map_err(|e| bad(e.to_string()))?;
            lookup(app, "lxc", name.clone()).await
        }
        (None, Some(_)) => Err(bad("container must be a string")),
        _ => Err(bad("name exactly one of \"pid\" and \"container\"")),
    }
}

fn parse_mode(body: &serde_json::Map<String, Value>) -> Result<Mode, ApiError> {
    match body.get("mode") {
        None | Some(Value::Null) => Ok(Mode::Auto),
        Some(Value::String(s)) => s.parse::<Mode>().map_err(|e| bad(e.to_string())),
        Some(_) => Err(bad("mode must be a string")),
    }
}

/// `"fs"`: one of [`FS_DRIVERS`], `native` when absent.
fn parse_fs(body: &serde_json::Map<String, Value>) -> Result<FsChoice, ApiError> {
    let name = match body.get("fs") {
        None | Some(Value::Null) => FS_DRIVERS[0],
        Some(Value::String(s)) if FS_DRIVERS.contains(&s.as_str()) => s.as_str(),
        Some(_) => {
            return Err(bad(format!("fs must be one of {}", FS_DRIVERS.join(", "))));
        }
    };
    // Neither offered driver needs the helper program.
    FsChoice::named(name, PathBuf::new).map_err(|e| bad(e.to_string()))
}

/// How the page names what moves, and the memory it holds now.
async fn subject(n: &Named) -> Result<Subject, ApiError> {
    let mem = proc_table().await?;
    let (_, bytes) = mem.tree(n.pid);
    let title = match n.key.strip_prefix("lxc:") {
        Some(name) => format!("container {name}"),
        None => {
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", n.pid))
                .map(|c| c.trim().to_string())
                .unwrap_or_default();
            format!("{comm} (PID {})", n.pid)
        }
    };
    Ok(Subject {
        title,
        expected_bytes: bytes,
    })
}

/// Which host's tree a request names: `"from"` absent or `"here"` for this
/// host's, `"remote"` for the other host's.
fn from_remote(body: &serde_json::Map<String, Value>) -> Result<bool, ApiError> {
    match body.get("from") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::String(s)) if s == "here" => Ok(false),
        Some(Value::String(s)) if s == "remote" => Ok(true),
        Some(_) => Err(bad("from must be \"here\" or \"remote\"")),
    }
}

/// A positive decimal PID, as the page sends it for the other host (its
/// registry checks it again there).
fn remote_pid(v: &Value) -> Result<i32, ApiError> {
    let text = pid_text(v)?;
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(format!(
            "pid {text:?} is not a positive decimal number"
        )));
    }
    match text.parse::<i32>() {
        Ok(p) if p > 1 => Ok(p),
        Ok(_) => Err(bad("PID 1 is the other host's init: it does not move")),
        Err(_) => Err(bad(format!("pid {text:?} is out of range"))),
    }
}

/// Validates `{"pid": ...}` or `{"container": ...}` of the other host:
/// the form here, then against the other host's own list (its service
/// checks the order as strictly as `phaul migrate` does its arguments).
async fn remote_named(
    app: &Shared,
    body: &serde_json::Map<String, Value>,
) -> Result<(Pull, Subject, String), ApiError> {
    if app.cfg.this_host.is_none() {
        return Err(bad(
            "moving trees to this host needs phaul-web's --this-host (this host's phaul-service)",
        ));
    }
    let pull = match (body.get("pid"), body.get("container")) {
        (Some(p), None) => {
            let pid = remote_pid(p)?;
            Pull {
                kind: "pid",
                id: pid.to_string(),
                pid,
            }
        }
        (None, Some(Value::String(name))) => {
            phaul_htypes::lxc::validate_name(name).map_err(|e| bad(e.to_string()))?;
            Pull {
                kind: "lxc",
                id: name.clone(),
                pid: 0,
            }
        }
        (None, Some(_)) => return Err(bad("container must be a string")),
        _ => return Err(bad("name exactly one of \"pid\" and \"container\"")),
    };
    let list = app
        .remote
        .list()
        .await
        .map_err(|e| api_error(StatusCode::BAD_GATEWAY, e))?;
    let there = &app.cfg.target;
    let (pull, title) = if pull.kind == "lxc" {
        let ct = list
            .containers
            .iter()
            .find(|c| c.name == pull.id && c.state == "RUNNING")
            .ok_or_else(|| bad(format!("no running container {} on {there}", pull.id)))?;
        let title = format!("container {}", pull.id);
        (
            Pull {
                pid: ct.init_pid,
                ..pull
            },
            title,
        )
    } else {
        let p = list
            .processes
            .iter()
            .find(|p| p.pid == pull.pid)
            .ok_or_else(|| bad(format!("PID {} does not run on {there}", pull.pid)))?;
        let title = format!("{} (PID {} on {there})", p.name, p.pid);
        (pull, title)
    };
    let key = format!("remote-{}:{}", pull.kind, pull.id);
    // Its memory is the other host's to count: its service reports it as
    // the migration starts.
    let subject = Subject {
        title,
        expected_bytes: 0,
    };
    Ok((pull, subject, key))
}

/// What `auto` (or the mode asked) would come to, and why: a dry run
/// against the target, nothing frozen. 502 when the target cannot say.
///
/// Only for this host's trees: a tree of the other host is checked by its
/// own service when the order arrives, and the control API has no dry run.
async fn plan(State(app): State<Arc<Shared>>, body: Bytes) -> ApiResult {
    not_stopping(&app)?;
    let body = parse_body(&body)?;
    if from_remote(&body)? {
        return Err(bad(
            "a dry run is for this host's trees: the other host's service checks its own when the order arrives",
        ));
    }
    let mode = parse_mode(&body)?;
    let fs = parse_fs(&body)?;
    let n = named(&app, &body).await?;
    match app.migrations.plan(n.htype, mode, fs).await {
        Ok(c) => Ok(axum::Json(json!({
            "mode": c.mode.as_str(),
            "requested": c.requested.as_str(),
            "reason": c.reason,
        }))
        .into_response()),
        Err(e) => Err(api_error(StatusCode::BAD_GATEWAY, e)),
    }
}

fn start_error(e: StartError) -> ApiError {
    match e {
        StartError::Busy(m) => api_error(StatusCode::CONFLICT, m),
        StartError::Refused(m) => bad(m),
        StartError::Unreachable(m) => api_error(StatusCode::BAD_GATEWAY, m),
    }
}

async fn migrate(State(app): State<Arc<Shared>>, body: Bytes) -> ApiResult {
    not_stopping(&app)?;
    let body = parse_body(&body)?;
    let mode = parse_mode(&body)?;
    if from_remote(&body)? {
        return move_here(&app, &body, mode).await;
    }
    let fs = parse_fs(&body)?;
    let n = named(&app, &body).await?;
    let subject = subject(&n).await?;
    let guard = app.migrations.claim(&n.key).map_err(start_error)?;
    let id = app.migrations.start(n.htype, subject, mode, fs, guard);
    Ok((StatusCode::ACCEPTED, axum::Json(json!({ "id": id }))).into_response())
}

/// Moves a tree of the other host here: an order to its service, whose
/// file-system driver is its own (`fs` is refused rather than ignored).
async fn move_here(app: &Shared, body: &serde_json::Map<String, Value>, mode: Mode) -> ApiResult {
    if !matches!(body.get("fs"), None | Some(Value::Null)) {
        return Err(bad(
            "fs is for this host's trees: the other host's service picks its own driver",
        ));
    }
    let (pull, subject, key) = remote_named(app, body).await?;
    let guard = app.migrations.claim(&key).map_err(start_error)?;
    info!(kind = pull.kind, id = %pull.id, from = %app.cfg.target, "ordering a migration here");
    let id = app
        .migrations
        .order(pull, subject, mode, guard)
        .await
        .map_err(start_error)?;
    Ok((StatusCode::ACCEPTED, axum::Json(json!({ "id": id }))).into_response())
}

/// Forgets the migrations that have ended (running ones stay).
async fn clear(State(app): State<Arc<Shared>>) -> Response {
    let removed = app.migrations.clear_finished();
    info!(removed, "finished migrations cleared");
    axum::Json(json!({ "removed": removed })).into_response()
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
    match app.migrations.cancel(id) {
        Ok(()) => Ok(axum::Json(json!({ "cancelling": id })).into_response()),
        Err(CancelRefused::Unknown) => Err(api_error(StatusCode::NOT_FOUND, "no such migration")),
        Err(CancelRefused::Ended) => Err(api_error(
            StatusCode::CONFLICT,
            "that migration is not running",
        )),
        Err(CancelRefused::Committed) => Err(api_error(
            StatusCode::CONFLICT,
            "too late to cancel: the target was told to take over",
        )),
    }
}

/// Server-sent events: first a `snapshot` (every migration), then a
/// `migration` event per change (a new `snapshot` if this reader fell
/// behind). Read with `fetch`, so the token travels in a header.
async fn events(State(app): State<Arc<Shared>>) -> Response {
    struct Reader {
        first: Option<String>,
        rx: broadcast::Receiver<Feed>,
        stop: watch::Receiver<bool>,
        app: Arc<Shared>,
    }
    fn snapshot(app: &Shared) -> Event {
        Event::default()
            .event("snapshot")
            .data(app.migrations.snapshot().to_string())
    }
    let feed = Reader {
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
                Ok(Feed::One(m)) => Event::default().event("migration").data(m),
                Ok(Feed::All) | Err(broadcast::error::RecvError::Lagged(_)) => snapshot(&f.app),
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
    let _guard = app.migrations.claim(&n.key).map_err(start_error)?;
    info!(pid = n.pid, stop, "checkpoint");
    let c = app
        .store
        .checkpoint(n.pid, &options, !stop)
        .await
        .map_err(|e| archive_error(&e))?;
    info!(
        pid = n.pid,
        id = c.id,
        files = c.files,
        bytes = c.bytes,
        "checkpointed"
    );
    Ok(axum::Json(json!({
        "id": c.id,
        "pid": n.pid,
        "files": c.files,
        "bytes": c.bytes,
        "left_running": !stop,
        "archive": format!("/api/checkpoints/{}/archive", c.id),
    }))
    .into_response())
}

/// An archive the input made unusable is the client's fault (400, with the
/// reason); anything else is this host's (500, with CRIU's message).
fn archive_error(e: &phaul_archive::Error) -> ApiError {
    let text = error_chain(e);
    if e.is_refusal() {
        warn!(error = %text, "refused");
        bad(text)
    } else {
        warn!(error = %text, "failed");
        api_error(StatusCode::INTERNAL_SERVER_ERROR, text)
    }
}

async fn download(State(app): State<Arc<Shared>>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let path = app
        .store
        .archive_path(&id)
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
    let dir = app.store.new_restore().map_err(|e| archive_error(&e))?;
    match store_upload(body, &dir.upload(), cap).await {
        Ok(n) => info!(bytes = n, id = dir.id(), "archive uploaded"),
        Err(resp) => {
            dir.discard();
            return Err(resp.unwrap_or_else(too_large));
        }
    }
    let pid = app
        .store
        .restore(dir)
        .await
        .map_err(|e| archive_error(&e))?;
    info!(pid, "restored");
    Ok(axum::Json(json!({ "pid": pid })).into_response())
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

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
use phaul_transport::error_chain;
use phaul_transport::proto::ProcessList;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use crate::migrations::StartError;
use crate::server::Shared;

/// The API's routes, relative to `/api`.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
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
    let list = host_list(app.cfg.paths.lxcpath.clone()).await?;
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

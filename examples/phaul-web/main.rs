//! `phaul-web`: a browser GUI for live migration, run on the SOURCE host.
//!
//! ```text
//! cargo run --example phaul-web -- --listen 127.0.0.1:8080 \
//!     --target 10.200.0.2:7070 --key-file key [--lxcpath DIR] [--token-file FILE] [--work-dir DIR]
//! ```
//!
//! # Architecture
//!
//! phaul-web is one process on the source host and needs nothing else there;
//! the target host runs `phaul-service` as for `phaul migrate`. The page
//! shows two trees side by side:
//!
//! - this host's processes and LXC containers, from
//!   [`phaul_core::hostinfo::list`] (read in this process);
//! - the target's, from a `ListProcesses` request to its `phaul-service`
//!   over the authenticated link (the same key and TLS as a migration), on
//!   one control session kept open and reopened when it breaks.
//!
//! Dragging a process or a container from the local tree onto the target
//! tree asks `POST /api/migrate`, which runs a real [`phaul_core::Migration`]
//! in this process (mode `auto` unless the page picks another). Its
//! [`phaul_core::Progress`] events become the migration's state (phase,
//! iteration, bytes, downtime so far), pushed to every open page over
//! server-sent events; the end carries the engine's [`phaul_core::Report`]
//! or its error text, which holds CRIU's message. Nothing is offered the
//! other way: to move things back, run phaul-web on the other host.
//!
//! Checkpoint and restore through an archive (what the original P.Haul
//! GUI's demo endpoints tried, done safely) are in [`checkpoint`]: a dump
//! with criu-rpc into a fresh directory under `--work-dir`, offered as a tar
//! archive of regular files with plain names; an uploaded archive, capped
//! in size, is checked whole ([`archive`]) before anything is written, then
//! extracted only into a fresh directory and restored with criu-rpc.
//!
//! # Security
//!
//! Whoever drives this page is root on both hosts (it dumps, restores and
//! migrates any process), so:
//!
//! - it binds loopback unless told otherwise (reach it from elsewhere
//!   through `ssh -L`: it speaks plain HTTP);
//! - every `/api` request needs `Authorization: Bearer TOKEN`, compared in
//!   constant time; the token is random per start (printed in the banner as
//!   a `#token=` URL fragment, which browsers do not send to servers) or
//!   read from `--token-file` (mode 600); the page keeps it in
//!   `sessionStorage` and the event stream is read with `fetch`, so the
//!   token is never in a URL the server sees;
//! - same origin only: a request whose `Origin` is not this server's is
//!   refused (403), its `Host` must name this server (against DNS
//!   rebinding), and no CORS header is ever sent; a strict
//!   Content-Security-Policy allows only this server's own scripts;
//! - every input is validated before use: PIDs through
//!   [`phaul_htypes::registry::source_in`] and against this host's process
//!   list, container names with [`phaul_htypes::lxc::validate_name`], modes
//!   by name, archive ids as hex; no shell is ever run;
//! - uploads are capped (`--max-upload`) and archives accept only regular
//!   files with plain names, extracted with `O_EXCL | O_NOFOLLOW` into a
//!   directory made for them.
//!
//! # Layout
//! - `main.rs`: the command line and the banner.
//! - [`server`]: the router, the token/origin guard, the API handlers.
//! - [`migrations`]: running migrations and their live state.
//! - [`remote`]: the target's process list over the link.
//! - [`checkpoint`]: checkpoint to an archive, restore from one.
//! - [`archive`]: a strict tar writer and reader.
//! - `static/`: the page (HTML, CSS, vanilla JS), embedded in the binary.
#![allow(clippy::print_stdout)]

mod archive;
mod checkpoint;
mod migrations;
mod remote;
mod server;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use phaul_transport::{LinkConfig, SharedKey};

#[derive(Parser)]
#[command(about = "A web GUI that live-migrates this host's processes and containers")]
struct Args {
    /// Address to serve the page on (HOST:PORT; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The target's phaul-service: HOST:PORT or unix:PATH.
    #[arg(long)]
    target: String,
    /// File holding the secret shared with the target (at least 16 bytes, mode 600).
    #[arg(long)]
    key_file: PathBuf,
    /// Where LXC keeps containers on this host.
    #[arg(long, default_value = phaul_htypes::lxc::DEFAULT_LXCPATH)]
    lxcpath: PathBuf,
    /// Read the login token from this file (mode 600, at least 16
    /// characters) instead of making a random one.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Where migrations, checkpoints and uploaded archives are kept.
    #[arg(long, default_value = "/var/tmp/phaul-web")]
    work_dir: PathBuf,
    /// The largest archive `/api/restore` accepts, in bytes.
    #[arg(long, default_value_t = 4 << 30)]
    max_upload: u64,
    /// Also accept requests from this origin (`http://HOST:PORT`, how
    /// browsers reach this server through a proxy or a non-loopback address).
    #[arg(long)]
    allow_origin: Vec<String>,
    /// Accept only a target certificate with this SHA-256 fingerprint.
    #[arg(long)]
    pin: Option<String>,
    /// Turn TLS off on the link to the target (only on a private link).
    #[arg(long)]
    plaintext: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PHAUL_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let key = SharedKey::from_file(&args.key_file)?;
    let mut link = LinkConfig::new(key);
    if args.plaintext {
        link = link.plaintext();
    }
    if let Some(p) = &args.pin {
        link = link.pin(phaul_transport::tls::parse_fingerprint(p)?);
    }
    let (token, from_file) = match &args.token_file {
        Some(p) => (server::read_token_file(p)?, true),
        None => (server::random_hex(32)?, false),
    };
    if args.listen.ip().is_unspecified() && args.allow_origin.is_empty() {
        bail!(
            "listening on every address needs --allow-origin http://HOST:PORT naming how browsers reach this server"
        );
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "serving plain HTTP on a non-loopback address: the token crosses the network in clear"
        );
    }
    let cfg = server::Config {
        addr,
        target: args.target.clone(),
        link,
        lxcpath: args.lxcpath.clone(),
        work_dir: args.work_dir.clone(),
        token,
        max_upload: args.max_upload,
        allow_origins: args.allow_origin.clone(),
    };
    let app = server::App::new(cfg)?;
    if from_file {
        println!("phaul-web: http://{addr}/ (token from the --token-file)");
    } else {
        println!("phaul-web: http://{addr}/#token={}", app.token());
    }
    println!("phaul-web: migrating to {}", args.target);
    app.serve(listener, shutdown_signal()).await
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

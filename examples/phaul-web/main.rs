//! `phaul-web`: a browser GUI for live migration between this host and
//! another, both ways.
//!
//! ```text
//! cargo run --example phaul-web -- --listen 127.0.0.1:8080 \
//!     --target 10.200.0.2:7070 --this-host 10.200.0.1:7070 --key-file key \
//!     [--lxcpath DIR] [--token-file FILE] [--work-dir DIR]
//! ```
//!
//! Both hosts run `phaul-service`; `--this-host` names this host's, as the
//! other host reaches it (without it the page moves trees one way only).
//!
//! The server, its security rules and the page are the `phaul-web` library
//! ([`phaul_web`]); checkpoint archives are `phaul-archive`'s. This binary
//! parses the command line, prints the banner and serves until ctrl-c or
//! SIGTERM.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use phaul_cli::{CriuArgs, HostArgs, LinkArgs, TARGET_HELP};

#[derive(Parser)]
#[command(
    about = "A web GUI that live-migrates processes and containers between this host and another, both ways"
)]
struct Args {
    /// Address to serve the page on (HOST:PORT; port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[arg(long, help = TARGET_HELP)]
    target: String,
    /// This host's phaul-service as the other host reaches it (HOST:PORT).
    /// With it, the page also moves the other host's trees here: it orders
    /// the other host's service (same key) to migrate them to this one.
    #[arg(long, value_name = "HOST:PORT")]
    this_host: Option<String>,
    #[command(flatten)]
    link: LinkArgs,
    #[command(flatten)]
    host: HostArgs,
    #[command(flatten)]
    criu: CriuArgs,
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    phaul_cli::init_tracing("info");
    let args = Args::parse();
    let link = args.link.config()?;
    let token = match &args.token_file {
        Some(p) => phaul_web::read_token_file(p)?,
        None => phaul_web::random_token()?,
    };
    let listener = phaul_web::bind(args.listen, &args.allow_origin).await?;
    let addr = listener.local_addr()?;
    let app = phaul_web::App::new(phaul_web::Config {
        addr,
        target: args.target.clone(),
        this_host: args.this_host.clone(),
        link,
        criu: args.criu.rpc(),
        criu_log_level: args.criu.criu_log_level,
        paths: args.host.paths(),
        work_dir: args.work_dir,
        token,
        max_upload: args.max_upload,
        allow_origins: args.allow_origin,
    })?;
    if args.token_file.is_some() {
        println!("phaul-web: http://{addr}/ (token from the --token-file)");
    } else {
        println!("phaul-web: http://{addr}/#token={}", app.token());
    }
    match &args.this_host {
        Some(here) => println!("phaul-web: migrating between {} and {here}", args.target),
        None => println!("phaul-web: migrating to {}", args.target),
    }
    app.serve(listener, phaul_cli::shutdown_signal()).await?;
    Ok(())
}

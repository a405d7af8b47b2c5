//! Argument groups the binaries flatten into their own clap parsers, each
//! with the one help text of its flags and a method that builds what it
//! describes.

use std::path::PathBuf;

use phaul_core::fs::FsChoice;
use phaul_htypes::registry::Paths;
use phaul_transport::{LinkConfig, SharedKey};

use crate::error::{Error, Result};

/// Help of the flag naming the target's service (`phaul --to`,
/// `phaul-web --target`). A file descriptor (`fd:N`) is not offered: the
/// source opens a link per channel, so it needs an address.
pub const TARGET_HELP: &str = "The target's phaul-service: HOST:PORT or unix:PATH";

/// The shared secret and TLS: what both ends of a link need.
#[derive(Debug, Clone, clap::Args)]
pub struct KeyArgs {
    /// File holding the secret shared with the other host (at least 16
    /// bytes, mode 600).
    #[arg(long)]
    pub key_file: PathBuf,
    /// Turn TLS off (only on a link that is already private).
    #[arg(long)]
    pub plaintext: bool,
}

impl KeyArgs {
    /// The link's configuration: the key read and checked, TLS on unless
    /// `--plaintext`.
    pub fn config(&self) -> Result<LinkConfig> {
        let cfg = LinkConfig::new(SharedKey::from_file(&self.key_file)?);
        Ok(if self.plaintext { cfg.plaintext() } else { cfg })
    }
}

/// What the side that connects needs: the key and, optionally, the
/// certificate it expects.
#[derive(Debug, Clone, clap::Args)]
pub struct LinkArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub key: KeyArgs,
    /// Accept only a target certificate with this SHA-256 fingerprint.
    #[arg(long)]
    pub pin: Option<String>,
}

impl LinkArgs {
    /// [`KeyArgs::config`], pinned to `--pin` when given.
    pub fn config(&self) -> Result<LinkConfig> {
        let cfg = self.key.config()?;
        Ok(match &self.pin {
            Some(p) => cfg.pin(phaul_transport::tls::parse_fingerprint(p)?),
            None => cfg,
        })
    }
}

/// Which CRIU, and how much it logs.
#[derive(Debug, Clone, clap::Args)]
pub struct CriuArgs {
    /// The criu binary (default: criu on PATH).
    #[arg(long)]
    pub criu: Option<PathBuf>,
    /// CRIU's log level, 0 to 4 (4 is debug: slower, for diagnosing).
    #[arg(long, default_value_t = 2)]
    pub criu_log_level: i32,
}

impl CriuArgs {
    /// The RPC client: `criu swrk` spawned from `--criu` or PATH, its own
    /// output kept off this terminal.
    pub fn rpc(&self) -> criu_rpc::Criu {
        match &self.criu {
            Some(b) => criu_rpc::Criu::with_binary(b),
            None => criu_rpc::Criu::new(),
        }
        .quiet(true)
    }

    /// The engine's CRIU at `--criu-log-level`.
    pub fn criu(&self) -> phaul_core::criu::Criu {
        phaul_core::criu::Criu::new(self.rpc()).log_level(self.criu_log_level)
    }

    /// [`CriuArgs::criu`], once CRIU has answered with a version phaul
    /// supports: a daemon checks this at start rather than at the first
    /// migration.
    pub async fn checked(&self) -> Result<phaul_core::criu::Criu> {
        self.rpc()
            .ensure_version(&criu_rpc::Version::MINIMUM)
            .await
            .map_err(Error::Criu)?;
        Ok(self.criu())
    }
}

/// Where container managers keep their state on this host.
#[derive(Debug, Clone, clap::Args)]
pub struct HostArgs {
    /// Where LXC keeps containers on this host.
    #[arg(long, default_value = phaul_htypes::lxc::DEFAULT_LXCPATH)]
    pub lxcpath: PathBuf,
    /// runc's state directory on this host (`runc --root`).
    #[arg(long, default_value = "/run/runc")]
    pub runc_root: PathBuf,
}

impl HostArgs {
    /// The htypes' paths; the rest keep their defaults.
    pub fn paths(&self) -> Paths {
        Paths {
            lxcpath: self.lxcpath.clone(),
            runc_root: self.runc_root.clone(),
            ..Default::default()
        }
    }
}

/// `--fs NAME`: the file-system driver named, from phaul-fs's registry.
/// rsync runs this very program as its remote shell, so a binary offering
/// `--fs rsync` must call `phaul_fs::rsync::run_as_rsh_if_called` first
/// thing in `main`.
pub fn fs_choice(name: &str) -> Result<FsChoice> {
    let mut exe_error = None;
    let choice = FsChoice::named(name, || {
        std::env::current_exe().unwrap_or_else(|e| {
            exe_error = Some(e);
            PathBuf::new()
        })
    })?;
    match exe_error {
        Some(e) => Err(Error::CurrentExe(e)),
        None => Ok(choice),
    }
}

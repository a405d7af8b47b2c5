//! The drivers by name. A name travels in a migration's request, so the
//! source opens a driver and the target serves one from the same list,
//! [`NAMES`], which also words the error for a name that is not on it.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use phaul_transport::Link;

use crate::error::{Error, Result};
use crate::{
    FsDriver, FsLimits, NativeSource, Pass, RsyncSource, RsyncTarget, Shared, SyncStats,
    serve_native, serve_rsync,
};

/// Every driver's name, in the order help texts list them.
pub const NAMES: [&str; 3] = ["native", "rsync", "shared"];

/// Which driver carries a file system, and what it needs besides the link
/// and the root.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Choice {
    /// phaul's own incremental tree sync over the link.
    #[default]
    Native,
    /// `rsync`, tunnelled over the link; `helper` is the program rsync runs
    /// as its remote shell (see [`RsyncSource::new`]).
    Rsync {
        /// The remote-shell helper.
        helper: PathBuf,
    },
    /// Both hosts see the same storage: nothing is copied.
    Shared,
}

impl Choice {
    /// The driver called `name`, its rsync helper (asked only for rsync)
    /// from `helper`. A name not in [`NAMES`] is an
    /// [`Error::UnknownDriver`].
    pub fn named(name: &str, helper: impl FnOnce() -> PathBuf) -> Result<Self> {
        match name {
            "native" => Ok(Self::Native),
            "rsync" => Ok(Self::Rsync { helper: helper() }),
            "shared" => Ok(Self::Shared),
            other => Err(unknown(other)),
        }
    }

    /// Its name on the wire and in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Native => NAMES[0],
            Self::Rsync { .. } => NAMES[1],
            Self::Shared => NAMES[2],
        }
    }
}

impl FromStr for Choice {
    type Err = Error;

    /// The driver called `s`. For rsync, the running program is its own
    /// remote-shell helper, so it must call
    /// [`crate::rsync::run_as_rsh_if_called`] first thing in `main`.
    fn from_str(s: &str) -> Result<Self> {
        Self::named(s, || std::env::current_exe().unwrap_or_default())
    }
}

fn unknown(name: &str) -> Error {
    Error::UnknownDriver {
        name: name.into(),
        known: NAMES.join(", "),
    }
}

/// The source side of whichever driver a [`Choice`] names.
#[derive(Debug)]
pub enum Source {
    /// Nothing to copy.
    Shared(Shared),
    /// The native driver.
    Native(Box<NativeSource>),
    /// The rsync driver.
    Rsync(Box<RsyncSource>),
}

impl Source {
    /// Opens the chosen driver for the tree at `root`, sending over `link`
    /// (which the shared driver never uses).
    pub fn open(choice: &Choice, link: Link, root: PathBuf) -> Result<Self> {
        Ok(match choice {
            Choice::Native => Self::Native(Box::new(NativeSource::new(link, root))),
            Choice::Rsync { helper } => {
                Self::Rsync(Box::new(RsyncSource::new(link, root, helper.clone())?))
            }
            Choice::Shared => Self::Shared(Shared),
        })
    }
}

impl FsDriver for Source {
    fn name(&self) -> &'static str {
        match self {
            Self::Shared(d) => d.name(),
            Self::Native(d) => d.name(),
            Self::Rsync(d) => d.name(),
        }
    }

    fn inodes_survive(&self) -> bool {
        match self {
            Self::Shared(d) => d.inodes_survive(),
            Self::Native(d) => d.inodes_survive(),
            Self::Rsync(d) => d.inodes_survive(),
        }
    }

    async fn pass(&mut self, which: Pass) -> Result<SyncStats> {
        match self {
            Self::Shared(d) => d.pass(which).await,
            Self::Native(d) => d.pass(which).await,
            Self::Rsync(d) => d.pass(which).await,
        }
    }
}

/// The target side of the driver called `name`: serves the source's
/// passes into `root` until its final one (see [`serve_native`] and
/// [`serve_rsync`]). The shared driver has nothing to serve.
pub async fn serve(name: &str, link: Link, root: &Path, limits: &FsLimits) -> Result<SyncStats> {
    match name {
        "native" => serve_native(link, root, limits).await,
        "rsync" => serve_rsync(link, root, &RsyncTarget::default()).await,
        "shared" => Ok(SyncStats::default()),
        other => Err(unknown(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_a_choice_of_that_name() {
        for name in NAMES {
            let c = Choice::named(name, || "/bin/helper".into()).unwrap();
            assert_eq!(c.name(), name);
        }
        assert_eq!(
            Choice::named("rsync", || "/bin/helper".into()).unwrap(),
            Choice::Rsync {
                helper: "/bin/helper".into()
            }
        );
    }

    #[test]
    fn an_unknown_name_lists_the_known_ones() {
        let e = "scp".parse::<Choice>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown file-system driver \"scp\" (known: native, rsync, shared)"
        );
    }

    #[tokio::test]
    async fn an_unknown_name_is_not_served() {
        let cfg = phaul_testkit::link_config();
        let (_a, b) = phaul_testkit::link_pair(&cfg, phaul_transport::Channel::Fs).await;
        let root = tempfile::tempdir().unwrap();
        let e = serve("scp", b, root.path(), &FsLimits::default()).await;
        assert!(matches!(e, Err(Error::UnknownDriver { .. })), "{e:?}");
    }
}

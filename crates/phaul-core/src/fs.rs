//! A migration's file system: which `phaul-fs` driver carries it (phaul-fs's
//! own registry), and its place in the plan. Its passes run at the same
//! points as memory: before the first dump, after each pre-dump, and while
//! frozen before the restore.

pub use phaul_fs::Pass;
pub use phaul_fs::registry::{Choice as FsChoice, Source as SourceFs};

use crate::plan::Files;

/// Where a driver choice stands in the plan.
pub(crate) fn files(choice: &FsChoice) -> Files {
    match choice {
        FsChoice::Native => Files::Native,
        FsChoice::Rsync { .. } => Files::Rsync,
        FsChoice::Shared => Files::Shared,
    }
}

//! CRIU's logs after a failed migration.
//!
//! A migration's directories hold CRIU's images (as large as the tree's
//! memory) and its logs (small, and the only record of why CRIU failed).
//! After a failure both hosts keep the logs and drop the images, so that
//! what the report quotes can be read whole without filling the disk.

use std::path::Path;

use crate::error::Error;

/// A container manager's failed dump or restore (`lxc-checkpoint`, `runc`),
/// with the decisive lines of the CRIU log it wrote (the first of `logs`
/// that exists) when there is a cause to quote: the manager itself only
/// says "criu failed".
pub fn manager_error(e: phaul_htypes::Error, logs: &[std::path::PathBuf]) -> Error {
    let Some(log) = logs.iter().find(|l| l.exists()) else {
        return Error::Htype(e);
    };
    match cause_in(log) {
        Some(cause) => Error::ManagerCriu {
            source: e,
            criu: format!("{cause} (CRIU log: {})", log.display()),
        },
        None => Error::Htype(e),
    }
}

/// The decisive lines of the CRIU log at `log`
/// ([`criu_rpc::log::LogExcerpt`]), if it names a cause: what an error
/// about a CRIU that CRIU's caller only saw fail quotes.
pub(crate) fn cause_in(log: &Path) -> Option<String> {
    criu_rpc::log::LogExcerpt::read(log, 5)
        .ok()
        .and_then(|x| x.cause())
}

/// Removes every file under `dir` that is not a CRIU log (`*.log`), and the
/// directories left empty; returns how many logs stayed.
pub fn keep_only_logs(dir: &Path) -> std::io::Result<usize> {
    let mut kept = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            let inner = keep_only_logs(&path)?;
            if inner == 0 {
                std::fs::remove_dir(&path)?;
            }
            kept += inner;
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "log") {
            kept += 1;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_stay_images_and_empty_directories_go() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("1.work")).unwrap();
        std::fs::create_dir_all(root.join("1")).unwrap();
        std::fs::create_dir_all(root.join("cpuinfo")).unwrap();
        std::fs::write(root.join("1.work/dump.log"), "Dumping FAILED.").unwrap();
        std::fs::write(root.join("1/pages-1.img"), vec![0u8; 4096]).unwrap();
        std::fs::write(root.join("1/inventory.img"), "x").unwrap();
        std::fs::write(root.join("cpuinfo/cpuinfo.img"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("1.work/link")).unwrap();
        assert_eq!(keep_only_logs(root).unwrap(), 1);
        assert!(root.join("1.work/dump.log").is_file());
        assert!(!root.join("1").exists());
        assert!(!root.join("cpuinfo").exists());
        assert!(!root.join("1.work/link").exists());
        assert!(std::path::Path::new("/etc/passwd").exists());
    }
}

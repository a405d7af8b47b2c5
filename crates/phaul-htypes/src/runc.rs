//! The `runc` htype: a runc container with its bundle.
//!
//! runc runs CRIU itself, so this kind makes its own final dump: the
//! container is paused (its freezer cgroup), then `runc checkpoint
//! --leave-running` dumps it and leaves it alive and paused, which holds
//! the source as a held `post-dump` would; the bundle travels with
//! `phaul-fs`; the target gives the bundle a cgroup path of its own and
//! `runc restore -d` brings the container up there, known to runc. After
//! the commit the source's container is killed and deleted; before it, a
//! failure resumes it (`runc resume`), and nothing has diverged.
//!
//! Container ids are checked (letters, digits, `.`, `_`, `-`) and every
//! command is an argument vector. CRIU is named to runc explicitly
//! (`--criu`), because a `criu` earlier on `PATH` may be an old one.
//!
//! runc tells CRIU to leave the container's network namespace empty, so a
//! restored container's loopback is down with no address; bringing its
//! network back is the caller's business for now.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::registry::Paths;
use crate::{Error, Htype, Result};

/// A runc container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runc {
    id: String,
    /// runc's state directory (`runc --root`).
    root: PathBuf,
    /// The bundle: on the source, where runc says it is; on the target,
    /// where it is being synced to.
    bundle: PathBuf,
    runc: PathBuf,
    criu: PathBuf,
}

/// Checks a container id: 1 to 128 characters of `[A-Za-z0-9._-]`,
/// starting with a letter or a digit.
pub fn validate_id(id: &str) -> Result<()> {
    let bad = |reason: &str| Error::BadParam {
        name: "container id",
        value: id.to_string(),
        reason: reason.to_string(),
    };
    if id.is_empty() || id.len() > 128 {
        return Err(bad("must be 1 to 128 characters"));
    }
    if !id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric()) {
        return Err(bad("must start with a letter or a digit"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad("may hold only letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

impl Runc {
    fn run(&self, args: &[&OsStr]) -> Result<String> {
        let mut all: Vec<&OsStr> = vec![OsStr::new("--root"), self.root.as_os_str()];
        all.extend_from_slice(args);
        crate::tool::run(&self.runc, &all)
    }

    /// `runc state`: the container's status, PID and bundle.
    fn state(&self) -> Result<(String, i32, PathBuf)> {
        let out = self.run(&[OsStr::new("state"), OsStr::new(&self.id)])?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| Error::BadParam {
            name: "container",
            value: self.id.clone(),
            reason: format!("runc state is not JSON: {e}"),
        })?;
        let status = v["status"].as_str().unwrap_or("").to_string();
        let pid = v["pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or(0);
        let bundle = PathBuf::from(v["bundle"].as_str().unwrap_or(""));
        Ok((status, pid, bundle))
    }

    /// The source side: container `id` in runc's state dir, which must
    /// exist and run.
    pub fn source(id: &str, paths: &Paths) -> Result<Self> {
        validate_id(id)?;
        let mut me = Self {
            id: id.to_string(),
            root: paths.runc_root.clone(),
            bundle: PathBuf::new(),
            runc: paths.runc.clone(),
            criu: paths.criu.clone(),
        };
        let (status, _, bundle) = me.state().map_err(|_| Error::BadParam {
            name: "container",
            value: id.to_string(),
            reason: format!(
                "runc knows no such container (state dir {})",
                paths.runc_root.display()
            ),
        })?;
        if status != "running" {
            return Err(Error::BadParam {
                name: "container",
                value: id.to_string(),
                reason: format!("it is {status}, not running"),
            });
        }
        me.bundle = bundle;
        Ok(me)
    }

    /// The target side: the bundle goes to `runc_bundles/ID`, which must
    /// not exist yet.
    pub fn target(params: &BTreeMap<String, String>, paths: &Paths) -> Result<Self> {
        let id = params.get("id").ok_or_else(|| Error::BadParam {
            name: "container id",
            value: String::new(),
            reason: "missing".into(),
        })?;
        validate_id(id)?;
        let bundle = paths.runc_bundles.join(id);
        if bundle.exists() {
            return Err(Error::BadParam {
                name: "container",
                value: id.clone(),
                reason: format!("{} already exists", bundle.display()),
            });
        }
        Ok(Self {
            id: id.clone(),
            root: paths.runc_root.clone(),
            bundle,
            runc: paths.runc.clone(),
            criu: paths.criu.clone(),
        })
    }

    fn kill_and_delete(&self) {
        let _ = self.run(&[OsStr::new("kill"), OsStr::new(&self.id), OsStr::new("KILL")]);
        let _ = self.run(&[OsStr::new("delete"), OsStr::new("-f"), OsStr::new(&self.id)]);
    }
}

impl Htype for Runc {
    fn kind(&self) -> &'static str {
        "runc"
    }

    fn params(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("id".to_string(), self.id.clone())])
    }

    fn root_pid(&self) -> Result<i32> {
        Ok(self.state()?.1)
    }

    fn check(&self) -> Result<()> {
        match self.state()?.0.as_str() {
            "running" => Ok(()),
            s => Err(Error::BadParam {
                name: "container",
                value: self.id.clone(),
                reason: format!("it is {s}, not running"),
            }),
        }
    }

    /// runc's checkpoint makes one dump; pre-dumps would need runc's own
    /// `--pre-dump`, not done.
    fn can_pre_dump(&self) -> bool {
        false
    }

    fn fs_root(&self) -> Option<PathBuf> {
        Some(self.bundle.clone())
    }

    fn dumps_itself(&self) -> bool {
        true
    }

    fn dump_self(&self, images_dir: &Path, work_dir: &Path) -> Result<()> {
        self.run(&[OsStr::new("pause"), OsStr::new(&self.id)])?;
        let r = self.run(&[
            OsStr::new("--criu"),
            self.criu.as_os_str(),
            OsStr::new("checkpoint"),
            OsStr::new("--leave-running"),
            OsStr::new("--image-path"),
            images_dir.as_os_str(),
            OsStr::new("--work-path"),
            work_dir.as_os_str(),
            OsStr::new(&self.id),
        ]);
        if r.is_err() {
            // A failed checkpoint leaves it paused: running again before
            // the error goes up.
            let _ = self.resume_source();
        }
        r.map(drop)
    }

    fn resume_source(&self) -> Result<()> {
        self.run(&[OsStr::new("resume"), OsStr::new(&self.id)])
            .map(drop)
    }

    fn restores_itself(&self) -> bool {
        true
    }

    fn restore(&self, images_dir: &Path) -> Option<Result<i32>> {
        Some((|| {
            // The source's cgroup may still exist (it is frozen there):
            // this copy gets a path of its own.
            let config = self.bundle.join("config.json");
            let text = std::fs::read_to_string(&config).map_err(|source| Error::Io {
                what: format!("reading {}", config.display()),
                source,
            })?;
            let mut v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::BadParam {
                    name: "config.json",
                    value: config.display().to_string(),
                    reason: e.to_string(),
                })?;
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            v["linux"]["cgroupsPath"] =
                serde_json::Value::String(format!("/phaul/{}-{nanos}", self.id));
            std::fs::write(&config, serde_json::to_vec_pretty(&v).unwrap_or_default()).map_err(
                |source| Error::Io {
                    what: format!("writing {}", config.display()),
                    source,
                },
            )?;
            let work = images_dir.join("restore-work");
            std::fs::create_dir_all(&work).map_err(|source| Error::Io {
                what: "a work dir".into(),
                source,
            })?;
            self.run(&[
                OsStr::new("--criu"),
                self.criu.as_os_str(),
                OsStr::new("restore"),
                OsStr::new("-d"),
                OsStr::new("--image-path"),
                images_dir.as_os_str(),
                OsStr::new("--work-path"),
                work.as_os_str(),
                OsStr::new("--bundle"),
                self.bundle.as_os_str(),
                OsStr::new(&self.id),
            ])?;
            Ok(self.state()?.1)
        })())
    }

    fn abort(&self) -> Result<()> {
        self.kill_and_delete();
        if self.bundle.exists() {
            std::fs::remove_dir_all(&self.bundle).map_err(|source| Error::Io {
                what: format!("removing {}", self.bundle.display()),
                source,
            })?;
        }
        Ok(())
    }

    fn cleanup_source(&self) -> Result<()> {
        self.kill_and_delete();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_with_shell_characters_or_slashes_are_refused() {
        for bad in [
            "",
            "a;b",
            "$(id)",
            "a b",
            "a/b",
            "../x",
            "-x",
            ".x",
            &"x".repeat(129),
        ] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
        for good in ["web", "ct-1.a_b", "9"] {
            validate_id(good).unwrap();
        }
    }
}

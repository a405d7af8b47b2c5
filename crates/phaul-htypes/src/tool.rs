//! Running the tools of container managers (lxc-*, runc).

use std::io::{Read, Seek};
use std::path::Path;
use std::process::Command;

use crate::{Error, Result};

/// Runs `tool` with `args` (never through a shell); its stdout on success,
/// a [`Error::Command`] with the end of its stderr on failure.
///
/// Output goes to temporary files, not pipes: `lxc-start`, `lxc-checkpoint
/// -r` and `runc restore -d` leave processes behind that inherit them, and
/// a pipe would then never reach end-of-file.
pub(crate) fn run(tool: &Path, args: &[&std::ffi::OsStr]) -> Result<String> {
    run_with(tool, args, None)
}

/// [`run`], with `first_on_path` put before the `PATH` the tool inherits:
/// a manager that runs `criu` from `PATH` (liblxc does) then runs ours.
pub(crate) fn run_with(
    tool: &Path,
    args: &[&std::ffi::OsStr],
    first_on_path: Option<&Path>,
) -> Result<String> {
    let name = tool.display().to_string();
    let io = |what: &str, source| Error::Io {
        what: format!("{what} for {name}"),
        source,
    };
    let mut out = tempfile::tempfile().map_err(|e| io("a temporary file", e))?;
    let mut err = tempfile::tempfile().map_err(|e| io("a temporary file", e))?;
    let mut cmd = Command::new(tool);
    if let Some(dir) = first_on_path {
        let mut path = std::ffi::OsString::from(dir);
        if let Some(old) = std::env::var_os("PATH") {
            path.push(":");
            path.push(old);
        }
        cmd.env("PATH", path);
    }
    let status = cmd
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().map_err(|e| io("a temporary file", e))?)
        .stderr(err.try_clone().map_err(|e| io("a temporary file", e))?)
        .status()
        .map_err(|source| Error::Io {
            what: format!("running {name} (scripts/setup.sh installs it)"),
            source,
        })?;
    let read = |f: &mut std::fs::File| -> String {
        let mut s = String::new();
        let _ = f.seek(std::io::SeekFrom::Start(0));
        let _ = f.read_to_string(&mut s);
        s
    };
    if !status.success() {
        let text = read(&mut err);
        let tail: Vec<&str> = text.lines().rev().take(3).collect();
        return Err(Error::Command {
            command: format!(
                "{name} {}",
                args.iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            status: status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
        });
    }
    Ok(read(&mut out))
}

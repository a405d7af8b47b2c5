//! A cgroup yard CRIU can use as it is (`--cgroup-yard`).
//!
//! CRIU that manages cgroups needs every cgroup hierarchy mounted in one
//! directory, one sub-directory per hierarchy. Without a yard it mounts
//! them itself in a temporary one, at every dump and every restore: on a
//! host with ten cgroup v1 hierarchies that is ten mounts (and their
//! unmounts) per new set of cgroups, measured 6–16 ms each time (33 ms in
//! all) in an LXC container's dump, all of it downtime. On such a host the system's
//! `/sys/fs/cgroup` already is a yard in CRIU's layout, and CRIU only reads
//! and creates cgroups in it, as it would in its own mounts of the same
//! hierarchies. [`system_yard`] says whether it is one: every hierarchy
//! of `/proc/self/cgroup` mounted at its root, under the name CRIU looks
//! for (the controllers, `name=` left out, the unified hierarchy as
//! `unified`). A host with cgroup v2 alone has `/sys/fs/cgroup` itself as
//! its hierarchy, not as a yard: there CRIU mounts its own, as before
//! (one mount, not ten).

use std::path::{Path, PathBuf};

/// The directory CRIU may use as its cgroup yard, if it is one.
pub(crate) fn system_yard() -> Option<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    is_yard(base, &cgroups, &mounts).then(|| base.to_path_buf())
}

/// The CRIU configuration line that names `yard` (a path without
/// white space, as `system_yard`'s is).
pub(crate) fn config_line(yard: &Path) -> String {
    format!("cgroup-yard {}", yard.display())
}

/// The sub-directory CRIU opens in a yard for one `/proc/self/cgroup`
/// controllers field.
fn dir_of(controllers: &str) -> String {
    if controllers.is_empty() {
        return "unified".to_owned();
    }
    controllers
        .split(',')
        .map(|c| c.strip_prefix("name=").unwrap_or(c))
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether every hierarchy in `cgroups` (`/proc/self/cgroup`) is mounted
/// at its root at `base/<dir>` by `mountinfo` (`/proc/self/mountinfo`).
fn is_yard(base: &Path, cgroups: &str, mountinfo: &str) -> bool {
    let mut dirs = cgroups
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(dir_of)
        .peekable();
    if dirs.peek().is_none() {
        return false;
    }
    dirs.all(|d| {
        let at = base.join(&d);
        mountinfo.lines().any(|m| root_cgroup_mount_at(m, &at))
    })
}

/// Whether one mountinfo line is a cgroup file system mounted at `at` from
/// its hierarchy's root (not a bind of a cgroup inside it).
fn root_cgroup_mount_at(line: &str, at: &Path) -> bool {
    let fields: Vec<&str> = line.split(' ').collect();
    let Some(sep) = fields.iter().position(|f| *f == "-") else {
        return false;
    };
    let (root, point) = (fields.get(3), fields.get(4));
    let fstype = fields.get(sep + 1);
    root == Some(&"/")
        && point.is_some_and(|p| Path::new(p) == at)
        && matches!(fstype, Some(&"cgroup") | Some(&"cgroup2"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "12:pids:/a\n11:name=systemd:/a\n10:cpu,cpuacct:/a\n0::/a\n";

    fn line(root: &str, point: &str, fstype: &str) -> String {
        format!("30 25 0:26 {root} {point} rw,nosuid shared:9 - {fstype} cgroup rw,pids\n")
    }

    #[test]
    fn each_hierarchy_must_be_mounted_at_its_root_under_criu_s_name() {
        let base = Path::new("/sys/fs/cgroup");
        let all: String = [
            line("/", "/sys/fs/cgroup/pids", "cgroup"),
            line("/", "/sys/fs/cgroup/systemd", "cgroup"),
            line("/", "/sys/fs/cgroup/cpu,cpuacct", "cgroup"),
            line("/", "/sys/fs/cgroup/unified", "cgroup2"),
        ]
        .concat();
        assert!(is_yard(base, V1, &all));
        // One hierarchy missing, or bound from inside a cgroup: no yard.
        let missing = all.replace("/sys/fs/cgroup/pids", "/elsewhere");
        assert!(!is_yard(base, V1, &missing));
        let bound = all.replace(
            "30 25 0:26 / /sys/fs/cgroup/systemd",
            "30 25 0:26 /lxc /sys/fs/cgroup/systemd",
        );
        assert!(!is_yard(base, V1, &bound));
        // cgroup v2 alone: its hierarchy is /sys/fs/cgroup itself.
        let v2 = line("/", "/sys/fs/cgroup", "cgroup2");
        assert!(!is_yard(base, "0::/user.slice\n", &v2));
        assert!(!is_yard(base, "", &all));
    }

    #[test]
    fn directory_names_are_criu_s() {
        assert_eq!(dir_of("cpu,cpuacct"), "cpu,cpuacct");
        assert_eq!(dir_of("name=systemd"), "systemd");
        assert_eq!(dir_of(""), "unified");
    }
}

//! What runs on this host: its processes and its LXC containers.
//!
//! A "host" is the set of processes in this process's network namespace.
//! On a real machine that is nearly everything outside containers; when two
//! "hosts" are network namespaces of one machine (the demo, the tests),
//! which share one `/proc`, it is what keeps them apart. Containers have
//! network namespaces of their own, so they are listed separately, from
//! LXC, with their init's PID.
//!
//! [`remote`] asks another host's phaul-service for its [`list`], so a
//! controller can see hosts it does not run on.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use phaul_transport::proto::{
    ContainerInfo, ListProcesses, ProcessInfo, ProcessList, request, response,
};
use phaul_transport::{Channel, ControlClient, Endpoint, Link, LinkConfig};

use crate::error::{Error, Result};

/// How long connecting to a service and its answer may take together: a
/// listing is one small request, so a service that takes longer is stuck
/// or unreachable, and a controller polling several hosts must not hang.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest command line reported, in bytes.
const CMDLINE_MAX: usize = 200;

fn netns_of(pid: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// Processes in this network namespace (kernel threads left out) and the
/// LXC containers of `lxcpath`.
pub fn list(lxcpath: &Path) -> ProcessList {
    // thread-self: a network namespace belongs to a thread, and this one may
    // have entered another than the process's first thread.
    let mine = netns_of("thread-self");
    let containers = containers(lxcpath);
    let mut processes = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return ProcessList {
            processes,
            containers,
        };
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid_s) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(pid) = pid_s.parse::<i32>() else {
            continue;
        };
        let container = containers
            .iter()
            .find(|c| c.init_pid == pid)
            .map(|c| c.name.clone());
        if container.is_none() && netns_of(pid_s) != mine {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ppid = fields.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let flags: u64 = fields.get(6).and_then(|s| s.parse().ok()).unwrap_or(0);
        // Kernel threads (PF_KTHREAD) are not something to migrate.
        if flags & 0x0020_0000 != 0 {
            continue;
        }
        let mut cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .replace('\0', " ")
                    .trim_end()
                    .to_string()
            })
            .unwrap_or_default();
        if cmdline.len() > CMDLINE_MAX {
            let mut cut = CMDLINE_MAX;
            while !cmdline.is_char_boundary(cut) {
                cut -= 1;
            }
            cmdline.truncate(cut);
        }
        processes.push(ProcessInfo {
            pid,
            ppid,
            name: comm,
            cmdline,
            container: container.unwrap_or_default(),
        });
    }
    processes.sort_by_key(|p| p.pid);
    ProcessList {
        processes,
        containers,
    }
}

/// What the phaul-service at `service` (`HOST:PORT` or `unix:PATH`) says
/// runs on its host: its [`list`], asked over the authenticated link
/// configured by `link` (a control channel, as phaul-web uses for the
/// target's tree). The answer is a snapshot: processes come and go.
pub async fn remote(service: &str, link: &LinkConfig) -> Result<ProcessList> {
    let endpoint = Endpoint::parse(service)?;
    let ask = async {
        let link = Link::connect(endpoint, link, Channel::Control, None).await?;
        let answer = ControlClient::new(link)
            .call(request::Body::ListProcesses(ListProcesses {}))
            .await?;
        match answer {
            response::Body::ProcessList(l) => Ok(l),
            // Not printed whole: another answer may be large and says
            // nothing useful here beyond being the wrong one.
            _ => Err(Error::Protocol(format!(
                "{service} answered a process listing with something else"
            ))),
        }
    };
    tokio::time::timeout(REMOTE_TIMEOUT, ask)
        .await
        .map_err(|_| Error::Timeout(format!("asking {service} for its processes")))?
}

/// How many processes of `list` are in the tree rooted at `root`, the root
/// included (0 when `root` is not listed): a measure of a tree's size a
/// controller can take from a remote listing, which carries no memory.
pub fn tree_size(list: &ProcessList, root: i32) -> usize {
    if !list.processes.iter().any(|p| p.pid == root) {
        return 0;
    }
    let mut seen = std::collections::HashSet::from([root]);
    let mut queue = vec![root];
    // Depth first over parent links. The listing is read from /proc one
    // process at a time, so a PID reused meanwhile could make a loop of
    // parents: a process is counted once.
    while let Some(parent) = queue.pop() {
        for p in list.processes.iter().filter(|p| p.ppid == parent) {
            if seen.insert(p.pid) {
                queue.push(p.pid);
            }
        }
    }
    seen.len()
}

/// LXC's containers in `lxcpath`, with their state and init PID.
fn containers(lxcpath: &Path) -> Vec<ContainerInfo> {
    let Ok(entries) = std::fs::read_dir(lxcpath) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if phaul_htypes::lxc::validate_name(&name).is_err() || !e.path().join("config").is_file() {
            continue;
        }
        // One field per call: asked for two, lxc-info labels its lines even
        // with -H.
        let field = |flag: &str| -> Option<String> {
            let o = std::process::Command::new("lxc-info")
                .arg("-P")
                .arg(lxcpath)
                .args(["-n", &name, flag])
                .stdin(std::process::Stdio::null())
                .output()
                .ok()?;
            o.status
                .success()
                .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let Some(state) = field("-sH") else { continue };
        let init_pid = field("-pH").and_then(|p| p.parse().ok()).unwrap_or(0);
        out.push(ContainerInfo {
            name,
            state,
            init_pid,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_and_its_children_are_listed_with_their_parents() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let l = list(Path::new("/nonexistent"));
        let me = std::process::id() as i32;
        assert!(l.processes.iter().any(|p| p.pid == me));
        let c = l
            .processes
            .iter()
            .find(|p| p.pid == child.id() as i32)
            .expect("the child");
        assert_eq!(c.ppid, me);
        assert_eq!(c.name, "sleep");
        assert_eq!(c.cmdline, "sleep 30");
        assert!(l.containers.is_empty());
        // No kernel threads.
        assert!(!l.processes.iter().any(|p| p.pid == 2));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn process(pid: i32, ppid: i32) -> ProcessInfo {
        ProcessInfo {
            pid,
            ppid,
            ..Default::default()
        }
    }

    #[test]
    fn a_tree_counts_its_root_and_all_its_descendants() {
        let list = ProcessList {
            // 10 -> 11 -> 13, 10 -> 12; 20 alone; 1 -> 10 and 1 -> 20.
            processes: vec![
                process(1, 0),
                process(10, 1),
                process(11, 10),
                process(12, 10),
                process(13, 11),
                process(20, 1),
            ],
            containers: vec![],
        };
        assert_eq!(tree_size(&list, 10), 4);
        assert_eq!(tree_size(&list, 11), 2);
        assert_eq!(tree_size(&list, 20), 1);
        assert_eq!(tree_size(&list, 99), 0);
        // A loop of parents (a PID reused while /proc was read) ends.
        let looped = ProcessList {
            processes: vec![process(30, 31), process(31, 30)],
            containers: vec![],
        };
        assert_eq!(tree_size(&looped, 30), 2);
    }
}

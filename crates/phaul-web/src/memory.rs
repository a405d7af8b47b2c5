//! How much memory a process tree holds: the anonymous resident memory of
//! each process (resident minus file-backed and shared, from
//! `/proc/PID/statm`), added up over its descendants. That is what CRIU
//! copies (file-backed pages are read back from their files), and unlike
//! the whole resident set it does not count a shared library once per
//! process. The page shows it per subtree, the confirmation names it, and a
//! migration's bar uses it as the bytes it expects to send.

use std::collections::HashMap;

/// Every process of this host (all namespaces): its parent and anonymous
/// resident bytes.
#[derive(Debug, Default)]
pub(crate) struct ProcTable {
    procs: HashMap<i32, (i32, u64)>,
}

impl ProcTable {
    /// Reads `/proc` now; processes that end meanwhile are left out.
    pub(crate) fn read() -> Self {
        let page = page_size();
        let mut procs = HashMap::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Self { procs };
        };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(ppid) = parse_ppid(&stat) else {
                continue;
            };
            let pages = std::fs::read_to_string(format!("/proc/{pid}/statm"))
                .ok()
                .and_then(|s| parse_statm(&s))
                .unwrap_or(0);
            procs.insert(pid, (ppid, pages.saturating_mul(page)));
        }
        Self { procs }
    }

    /// One process's anonymous resident bytes.
    pub(crate) fn rss(&self, pid: i32) -> u64 {
        self.procs.get(&pid).map_or(0, |p| p.1)
    }

    /// The tree rooted at `pid`: how many processes, and their anonymous
    /// resident bytes together.
    pub(crate) fn tree(&self, pid: i32) -> (u32, u64) {
        if !self.procs.contains_key(&pid) {
            return (0, 0);
        }
        let mut kids: HashMap<i32, Vec<i32>> = HashMap::new();
        for (&p, &(pp, _)) in &self.procs {
            kids.entry(pp).or_default().push(p);
        }
        let (mut count, mut bytes) = (0u32, 0u64);
        let mut todo = vec![pid];
        while let Some(p) = todo.pop() {
            count += 1;
            bytes += self.rss(p);
            if let Some(k) = kids.get(&p) {
                // PID 0 has no entry, so a loop cannot form from it; a
                // process is its own parent nowhere in /proc.
                todo.extend(k.iter().filter(|&&c| c != p));
            }
        }
        (count, bytes)
    }
}

/// The parent from a `/proc/PID/stat` line. The command name may hold
/// spaces and parentheses: fields start after the last `)`.
fn parse_ppid(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state, then ppid.
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Anonymous resident pages from `/proc/PID/statm`: resident minus shared
/// (file-backed and shmem).
fn parse_statm(statm: &str) -> Option<u64> {
    let mut f = statm.split_whitespace().skip(1);
    let resident: u64 = f.next()?.parse().ok()?;
    let shared: u64 = f.next()?.parse().ok()?;
    Some(resident.saturating_sub(shared))
}

fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|n| *n > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_statm_lines_parse() {
        let line = "42 (a (b) c) S 7 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    555 12345678 321 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        assert_eq!(parse_ppid(line), Some(7));
        assert_eq!(parse_ppid("garbage"), None);
        assert_eq!(parse_statm("9000 700 200 10 0 500 0\n"), Some(500));
        assert_eq!(parse_statm("9000"), None);
    }

    #[test]
    fn this_process_tree_holds_memory() {
        let t = ProcTable::read();
        let me = i32::try_from(std::process::id()).unwrap();
        let (n, bytes) = t.tree(me);
        assert!(n >= 1);
        // A test binary's heap is anonymous and resident.
        assert!(bytes >= t.rss(me) && t.rss(me) > 0, "{bytes}");
        assert_eq!(t.tree(-5), (0, 0));
    }
}

//! How fast a process tree dirties its memory, read from the kernel's
//! soft-dirty bits before any pre-dump: what hybrid asks first.
//!
//! A pre-dump that sends `S` pages at `B` pages a second leaves about
//! `D * S / B` pages dirty behind it, where `D` is the tree's dirty rate: each
//! pre-dump shrinks what is left by `D / B`. When that ratio is near one no
//! number of pre-dumps helps, and hybrid does better to post-copy at once
//! than to pay for pre-dumps first. [`measure`] clears the tree's soft-dirty
//! bits (`/proc/PID/clear_refs`), waits, and counts the pages written since
//! (bit 55 of `/proc/PID/pagemap`), as QEMU's `calc-dirty-rate` does for a
//! guest.
//!
//! Only where memory tracking works (the hosts' CRIU says so): elsewhere the
//! kernel ignores the clear and no page ever reads as dirty. And only before
//! the first pre-dump: clearing the bits between pre-dumps would hide pages
//! from the next one.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::policy::PAGE_SIZE;

/// A pagemap entry's bits: the page is present, or swapped; it was
/// written since the last clear.
const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;
const SOFT_DIRTY: u64 = 1 << 55;

/// Pagemap entries read at a time.
const CHUNK: usize = 1 << 16;

/// What [`measure`] saw: the pages written since the clear, counted twice.
///
/// A workload that keeps rewriting the same pages (a hot set) shows about
/// the same count both times, however long it is watched; one that walks
/// through its memory shows the count growing. Only the growth between the
/// two counts is a rate ([`DirtyRate::growth_bytes_per_sec`]): the hot set
/// is what a pre-dump leaves behind whatever its speed, the growth is what
/// it races.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DirtyRate {
    /// The tree's resident (or swapped) pages in private writable mappings.
    pub pages: u64,
    /// Of those, the pages written by the first count.
    pub first_dirtied: u64,
    /// When the first count was taken, in microseconds since the clear.
    pub first_us: u64,
    /// The pages written by the second count.
    pub dirtied: u64,
    /// When the second count was taken, in microseconds since the clear.
    pub over_us: u64,
    /// Processes in the tree.
    pub processes: u32,
}

impl DirtyRate {
    /// How fast the dirty set grew between the two counts, in bytes per
    /// second (0 when it did not).
    pub fn growth_bytes_per_sec(&self) -> f64 {
        let us = self.over_us.saturating_sub(self.first_us);
        if us == 0 {
            return 0.0;
        }
        let pages = self.dirtied.saturating_sub(self.first_dirtied);
        (pages * PAGE_SIZE) as f64 * 1_000_000.0 / us as f64
    }

    /// The same reading with its growth between the two counts times
    /// `factor`: what a policy would see of a tree dirtying that much
    /// faster (or slower) with the same hot set.
    pub fn growth_scaled(&self, factor: f64) -> Self {
        let grew = self.dirtied.saturating_sub(self.first_dirtied) as f64;
        // A float to page count: rounded, and never below zero.
        let grew = (grew * factor.max(0.0)).round() as u64;
        Self {
            dirtied: self.first_dirtied.saturating_add(grew),
            ..*self
        }
    }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// Whether this kernel keeps soft-dirty bits at all: a page we have just
/// written reads as soft-dirty in our own pagemap where it does (the
/// kernel marks every page written since the last clear, and nobody
/// clears ours), and never where `CONFIG_MEM_SOFT_DIRTY` is off. A cheap
/// guess, for whether to start the probe early; CRIU's feature check is
/// what decides whether pre-copy may run.
pub fn tracked_here() -> bool {
    let mut page = vec![0u8; 2 * PAGE_SIZE as usize];
    let addr = page.as_mut_ptr() as u64;
    // The first whole page of the buffer, written now.
    let first = addr.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let offset = usize::try_from(first - addr).unwrap_or(0);
    page[offset] = 1;
    std::hint::black_box(&mut page);
    let entry = (|| {
        let mut pagemap = std::fs::File::open("/proc/self/pagemap").ok()?;
        pagemap.seek(SeekFrom::Start(first / PAGE_SIZE * 8)).ok()?;
        let mut e = [0u8; 8];
        pagemap.read_exact(&mut e).ok()?;
        Some(u64::from_ne_bytes(e))
    })();
    entry.is_some_and(|e| e & PRESENT != 0 && e & SOFT_DIRTY != 0)
}

/// The tree rooted at `root`: the root, then its descendants, read from
/// each thread's `children` file.
pub fn tree(root: i32) -> Result<Vec<i32>> {
    let mut out = vec![root];
    let mut next = 0;
    while next < out.len() {
        let pid = out[next];
        next += 1;
        let tasks = PathBuf::from(format!("/proc/{pid}/task"));
        let Ok(listing) = std::fs::read_dir(&tasks) else {
            if pid == root {
                return Err(Error::Io {
                    what: format!("listing {}", tasks.display()),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                });
            }
            // A descendant that ended meanwhile.
            continue;
        };
        for t in listing.flatten() {
            let Ok(children) = std::fs::read_to_string(t.path().join("children")) else {
                continue;
            };
            for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
    }
    Ok(out)
}

/// Clears the soft-dirty bits of `root`'s tree and counts what its
/// processes wrote after half of `over`, and again half of `over` after
/// that count ended. Blocking: it sleeps.
///
/// The second wait runs from the end of the first count, not from the
/// clear: over a short window a large tree's count (its whole pagemap
/// read) can take most of the half, and would leave the growth measured
/// over almost nothing.
pub fn measure(root: i32, over: Duration) -> Result<DirtyRate> {
    let pids = tree(root)?;
    for pid in &pids {
        let path = format!("/proc/{pid}/clear_refs");
        // "4": clear the soft-dirty bits only (see proc(5)).
        if let Err(e) = std::fs::write(&path, "4") {
            if *pid == root {
                return Err(io(format!("writing {path}"))(e));
            }
        }
    }
    let t0 = Instant::now();
    let micros = || u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
    std::thread::sleep(over / 2);
    let (_, first_dirtied, _) = count_tree(root, &pids)?;
    let first_us = micros();
    std::thread::sleep(over / 2);
    let (pages, dirtied, processes) = count_tree(root, &pids)?;
    Ok(DirtyRate {
        pages,
        first_dirtied,
        first_us,
        dirtied,
        over_us: micros(),
        processes,
    })
}

/// [`count`] summed over `pids`: pages, dirty pages, processes counted. A
/// process other than `root` that is gone is left out.
fn count_tree(root: i32, pids: &[i32]) -> Result<(u64, u64, u32)> {
    let (mut pages, mut dirtied, mut processes) = (0, 0, 0);
    for pid in pids {
        match count(*pid) {
            Ok((p, d)) => {
                pages += p;
                dirtied += d;
                processes += 1;
            }
            Err(e) if *pid == root => return Err(e),
            Err(_) => {}
        }
    }
    Ok((pages, dirtied, processes))
}

/// One process's resident private writable pages, and how many of them
/// are soft-dirty.
fn count(pid: i32) -> Result<(u64, u64)> {
    let maps_path = format!("/proc/{pid}/maps");
    let maps = std::fs::read_to_string(&maps_path).map_err(io(format!("reading {maps_path}")))?;
    let pm_path = format!("/proc/{pid}/pagemap");
    let mut pagemap = std::fs::File::open(&pm_path).map_err(io(format!("opening {pm_path}")))?;
    let (mut pages, mut dirtied) = (0, 0);
    let mut buf = vec![0u8; CHUNK * 8];
    for (start, end) in maps.lines().filter_map(private_writable) {
        let mut page = start / PAGE_SIZE;
        let last = end / PAGE_SIZE;
        while page < last {
            let n = usize::try_from((last - page).min(CHUNK as u64)).unwrap_or(CHUNK);
            let bytes = &mut buf[..n * 8];
            let read = pagemap
                .seek(SeekFrom::Start(page * 8))
                .and_then(|_| pagemap.read_exact(bytes));
            if read.is_err() {
                // A mapping that went away meanwhile.
                break;
            }
            for e in bytes.chunks_exact(8) {
                let e = u64::from_ne_bytes(e.try_into().expect("chunks of 8"));
                if e & (PRESENT | SWAPPED) != 0 {
                    pages += 1;
                    if e & SOFT_DIRTY != 0 {
                        dirtied += 1;
                    }
                }
            }
            page += n as u64;
        }
    }
    Ok((pages, dirtied))
}

/// The range of a `/proc/PID/maps` line whose mapping is private and
/// writable (where a process's own data lives); `None` for any other.
fn private_writable(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?;
    if !(perms.starts_with("rw") && perms.ends_with('p')) {
        return None;
    }
    let (a, b) = range.split_once('-')?;
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_private_writable_mappings_count() {
        assert_eq!(
            private_writable("7f00aa000000-7f00aa021000 rw-p 00000000 00:00 0  [heap]"),
            Some((0x7f00_aa00_0000, 0x7f00_aa02_1000))
        );
        for no in [
            "7f00aa000000-7f00aa021000 r--p 00000000 00:00 0",
            "7f00aa000000-7f00aa021000 rw-s 00000000 00:05 7  /dev/zero",
            "7f00aa000000-7f00aa021000 r-xp 00000000 08:01 9  /usr/bin/x",
            "garbage",
            "",
        ] {
            assert_eq!(private_writable(no), None, "{no}");
        }
    }

    #[test]
    fn this_process_is_its_own_tree_and_has_resident_pages() {
        let me = i32::try_from(std::process::id()).unwrap();
        let pids = tree(me).unwrap();
        assert_eq!(pids[0], me);
        let (pages, dirtied) = count(me).unwrap();
        assert!(pages > 0);
        assert!(dirtied <= pages);
    }

    #[test]
    fn a_scaled_growth_keeps_the_hot_set() {
        let r = DirtyRate {
            pages: 1000,
            first_dirtied: 100,
            first_us: 500_000,
            dirtied: 150,
            over_us: 1_000_000,
            processes: 1,
        };
        let g = r.growth_bytes_per_sec();
        assert_eq!(r.growth_scaled(2.0).dirtied, 200);
        assert!((r.growth_scaled(2.0).growth_bytes_per_sec() - 2.0 * g).abs() < 1e-6);
        assert_eq!(r.growth_scaled(0.5).dirtied, 125);
        assert_eq!(r.growth_scaled(-1.0).dirtied, 100);
        assert_eq!(r.growth_scaled(1.0), r);
    }

    #[test]
    fn a_missing_root_is_an_error() {
        // PIDs never reach i32::MAX (pid_max is at most 2^22).
        assert!(tree(i32::MAX).is_err());
        assert!(measure(i32::MAX, Duration::ZERO).is_err());
    }
}

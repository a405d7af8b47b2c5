//! What CRIU left in an images directory, read in one go: the dump and
//! restore statistics, the inventory and the pagemaps' totals, each
//! present, absent or unreadable, and a text rendering for people.
//!
//! CRIU writes `stats-dump` after a dump or pre-dump and `stats-restore`
//! after a restore; after a lazy dump its statistics count no pages, which
//! is why the pagemaps are summed too.

use std::fmt::{self, Display, Write};
use std::io::ErrorKind;
use std::path::Path;

use crate::error::{Error, Result};
use crate::image::{
    INVENTORY_FILE, PagemapTotals, STATS_DUMP_FILE, STATS_RESTORE_FILE, read_dump_stats,
    read_inventory, read_pagemaps, read_restore_stats,
};
use crate::proto::{DumpStatsEntry, InventoryEntry, Lsmtype, RestoreStatsEntry};

/// One image, read or not.
#[derive(Debug)]
pub enum Found<T> {
    /// Read.
    Present(T),
    /// Not there (CRIU did not write it).
    Absent,
    /// There, but it could not be read.
    Unreadable(Error),
}

impl<T> Found<T> {
    /// A missing file is [`Found::Absent`]; any other error is
    /// [`Found::Unreadable`].
    pub fn from_result(r: Result<T>) -> Self {
        match r {
            Ok(v) => Self::Present(v),
            Err(Error::ImageIo { source, .. }) if source.kind() == ErrorKind::NotFound => {
                Self::Absent
            }
            Err(e) => Self::Unreadable(e),
        }
    }

    /// Whether it exists but could not be read.
    pub fn is_unreadable(&self) -> bool {
        matches!(self, Self::Unreadable(_))
    }

    /// Why it could not be read, with the causes, when it could not.
    pub fn reason(&self) -> Option<String> {
        match self {
            Self::Unreadable(e) => Some(chain(e)),
            _ => None,
        }
    }

    /// Its heading, then `body` or why there is none.
    fn write(&self, out: &mut String, file: &str, body: impl FnOnce(&mut Rows<'_>, &T)) {
        match self {
            Self::Present(v) => {
                let _ = writeln!(out, "{file}:");
                body(&mut Rows(out), v);
            }
            Self::Absent => {
                let _ = writeln!(out, "{file}: absent");
            }
            Self::Unreadable(e) => {
                let _ = writeln!(out, "{file}: unreadable: {}", chain(e));
            }
        }
    }
}

/// An error and its causes, as one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let _ = write!(s, ": {c}");
        cur = c.source();
    }
    s
}

/// Everything [`Summary::read`] found in an images directory.
#[derive(Debug)]
pub struct Summary {
    /// `stats-dump`.
    pub dump: Found<DumpStatsEntry>,
    /// `stats-restore`.
    pub restore: Found<RestoreStatsEntry>,
    /// `inventory.img`.
    pub inventory: Found<InventoryEntry>,
    /// The sum of the `pagemap-<id>.img` files (absent when there are none).
    pub pagemaps: Found<PagemapTotals>,
}

impl Summary {
    /// Reads what there is in `dir`; nothing here fails, each part says
    /// how it went.
    pub fn read(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        Self {
            dump: Found::from_result(read_dump_stats(dir)),
            restore: Found::from_result(read_restore_stats(dir)),
            inventory: Found::from_result(read_inventory(dir)),
            pagemaps: match read_pagemaps(dir) {
                Ok(t) if t.images == 0 => Found::Absent,
                r => Found::from_result(r),
            },
        }
    }

    /// How many images exist but could not be read.
    pub fn unreadable(&self) -> usize {
        [
            self.dump.is_unreadable(),
            self.restore.is_unreadable(),
            self.inventory.is_unreadable(),
            self.pagemaps.is_unreadable(),
        ]
        .into_iter()
        .filter(|&b| b)
        .count()
    }

    /// For people: a heading per image and a row per value, times in
    /// milliseconds and page counts also in MiB of `page_size` pages.
    pub fn text(&self, page_size: u64) -> String {
        let mut out = String::new();
        self.dump
            .write(&mut out, STATS_DUMP_FILE, |r, d| r.dump(d, page_size));
        self.restore
            .write(&mut out, STATS_RESTORE_FILE, |r, s| r.restore(s, page_size));
        self.inventory
            .write(&mut out, INVENTORY_FILE, |r, i| r.inventory(i));
        self.pagemaps
            .write(&mut out, "pagemap-*.img", |r, t| r.pagemaps(t, page_size));
        out
    }
}

/// Indented `label value` rows.
struct Rows<'a>(&'a mut String);

/// CRIU's times are microseconds.
fn ms(us: u32) -> String {
    format!("{:.3} ms", f64::from(us) / 1000.0)
}

fn pages(n: u64, page_size: u64) -> String {
    let mib = n as f64 * page_size as f64 / f64::from(1u32 << 20);
    format!("{n} ({mib:.3} MiB)")
}

impl Rows<'_> {
    fn row(&mut self, label: &str, value: impl Display) {
        let _ = writeln!(self.0, "  {label:<26}{value}");
    }

    fn opt(&mut self, label: &str, value: Option<impl Display>) {
        if let Some(v) = value {
            self.row(label, v);
        }
    }

    fn dump(&mut self, d: &DumpStatsEntry, ps: u64) {
        self.row("freezing time", ms(d.freezing_time));
        self.row("frozen time", ms(d.frozen_time));
        self.row("memory dump time", ms(d.memdump_time));
        self.row("memory write time", ms(d.memwrite_time));
        self.opt("irmap resolve time", d.irmap_resolve.map(ms));
        self.row("pages scanned", pages(d.pages_scanned, ps));
        self.row(
            "pages skipped (in parent)",
            pages(d.pages_skipped_parent, ps),
        );
        self.row("pages written", pages(d.pages_written, ps));
        self.row("pages lazy", pages(d.pages_lazy, ps));
        self.opt("page pipes", d.page_pipes);
        self.opt("page pipe buffers", d.page_pipe_bufs);
        let shared = |n: Option<u64>| n.map(|n| pages(n, ps));
        self.opt("shared pages scanned", shared(d.shpages_scanned));
        self.opt("shared pages skipped", shared(d.shpages_skipped_parent));
        self.opt("shared pages written", shared(d.shpages_written));
    }

    fn pagemaps(&mut self, t: &PagemapTotals, ps: u64) {
        self.row("task pagemaps", t.images);
        self.row("pages named", pages(t.pages, ps));
        self.row("pages in this dump", pages(t.present, ps));
        self.row("pages left lazy", pages(t.lazy, ps));
        self.row("pages in the parent", pages(t.in_parent, ps));
    }

    fn restore(&mut self, r: &RestoreStatsEntry, ps: u64) {
        self.row("forking time", ms(r.forking_time));
        self.row("restore time", ms(r.restore_time));
        self.row("pages compared", pages(r.pages_compared, ps));
        self.row("pages skipped (COW)", pages(r.pages_skipped_cow, ps));
        self.opt("pages restored", r.pages_restored.map(|n| pages(n, ps)));
    }

    fn inventory(&mut self, inv: &InventoryEntry) {
        self.row("image version", inv.img_version);
        self.opt("CRIU run id", inv.dump_criu_run_id.as_ref());
        // Microseconds since the dumping host booted.
        let uptime = inv
            .dump_uptime
            .map(|us| format!("{:.3} s", us as f64 / 1_000_000.0));
        self.opt("dumped at uptime", uptime);
        self.opt("LSM", inv.lsmtype.map(lsm_name));
        self.opt("pre-dump mode", inv.pre_dump_mode.map(pre_dump_mode_name));
        self.opt(
            "network lock",
            inv.network_lock_method.map(network_lock_name),
        );
        self.opt("fdinfo per id", inv.fdinfo_per_id);
        self.opt("namespaces per id", inv.ns_per_id);
        self.opt("root cgroup set", inv.root_cg_set);
        self.opt("TCP close", inv.tcp_close);
    }
}

/// The inventory's LSM, by its protobuf name.
pub fn lsm_name(v: i32) -> String {
    match Lsmtype::try_from(v) {
        Ok(lsm) => lsm.as_str_name().to_owned(),
        Err(_) => format!("unknown ({v})"),
    }
}

/// The inventory's pre-dump mode.
pub fn pre_dump_mode_name(v: u32) -> String {
    match v {
        1 => "splice".to_owned(),
        2 => "vm_read".to_owned(),
        _ => format!("unknown ({v})"),
    }
}

/// The inventory's network lock method. The inventory uses CRIU's internal
/// numbering, not the RPC enum's.
pub fn network_lock_name(v: u32) -> String {
    match v {
        0 => "iptables".to_owned(),
        1 => "nftables".to_owned(),
        2 => "skip".to_owned(),
        _ => format!("unknown ({v})"),
    }
}

impl Display for Summary {
    /// [`Summary::text`] with 4 KiB pages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text(4096))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_directory_has_every_image_absent() {
        let dir = tempfile::tempdir().unwrap();
        let s = Summary::read(dir.path());
        assert_eq!(s.unreadable(), 0);
        assert!(matches!(s.dump, Found::Absent));
        assert!(matches!(s.pagemaps, Found::Absent));
        let text = s.text(4096);
        assert!(text.contains("stats-dump: absent"), "{text}");
        assert!(text.contains("inventory.img: absent"), "{text}");
    }

    #[test]
    fn a_garbled_image_is_unreadable_not_absent() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(INVENTORY_FILE), b"not an image").unwrap();
        let s = Summary::read(dir.path());
        assert!(s.inventory.is_unreadable());
        assert_eq!(s.unreadable(), 1);
        assert!(s.text(4096).contains("inventory.img: unreadable: "));
    }

    #[test]
    fn numbers_are_named_and_unknown_ones_say_so() {
        assert_eq!(network_lock_name(1), "nftables");
        assert_eq!(pre_dump_mode_name(2), "vm_read");
        assert_eq!(pre_dump_mode_name(9), "unknown (9)");
        assert_eq!(pages(256, 4096), "256 (1.000 MiB)");
        assert_eq!(ms(1500), "1.500 ms");
    }
}

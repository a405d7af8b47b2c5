//! What switch-overs to this host cost beyond their memory, learned from
//! the sources' reports, per kind.
//!
//! A downtime prediction from pre-dumps alone is the transfer of the last
//! dirty set; the rest of a switch-over (the final dump's other state, the
//! images, the restore with its page-in, the commit) no pre-dump measures,
//! and under emulation it is most of the downtime. Each source that ended
//! a pre-copy with a final dump says in its `Commit` what that rest cost
//! it; the target adds its commit's own time and keeps the last few per
//! kind. The next source gets their median in `Begun` and adds it to its
//! prediction.
//!
//! A tree of a very different size restores its memory in a different
//! time, which that median does not follow. So where the source said how
//! many pages its tree holds and this host has measured its page-in rate
//! (`pagein`), the restore of those pages at that rate is also taken out
//! of each report: the median of what is left (the final dump's other
//! state, the restore's fixed costs, the commit) goes in `Begun` too, and
//! the next source adds its own tree's restore to it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// How many reports per kind are kept.
const KEPT: usize = 5;

/// Longer than any freeze allowed: a report beyond it is not believed.
const MAX: Duration = Duration::from_secs(600);

/// One report: the overhead, and what is left of it without the tree's
/// restore, where that could be told.
#[derive(Debug, Clone, Copy)]
struct Learned {
    overhead: Duration,
    beyond_restore: Option<Duration>,
}

/// The learned overheads, per kind; shared by a service's sessions.
#[derive(Debug, Default)]
pub(crate) struct Overheads {
    by_kind: Mutex<HashMap<String, VecDeque<Learned>>>,
}

impl Overheads {
    /// Learns one switch-over of `kind`, of which `restore` was (by this
    /// host's page-in rate) the tree's memory, where known; zero (not
    /// measured) and values past [`MAX`] are ignored.
    pub(crate) fn record(&self, kind: &str, overhead: Duration, restore: Option<Duration>) {
        if overhead.is_zero() || overhead > MAX {
            return;
        }
        // At least a microsecond: zero says "nothing learned" on the wire.
        let beyond_restore =
            restore.map(|r| overhead.saturating_sub(r).max(Duration::from_micros(1)));
        let mut map = self.by_kind.lock().unwrap_or_else(|p| p.into_inner());
        let kept = map.entry(kind.to_owned()).or_default();
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(Learned {
            overhead,
            beyond_restore,
        });
    }

    /// The median of what was learned for `kind` (the lower of the middle
    /// two), or `None` before any report.
    pub(crate) fn estimate(&self, kind: &str) -> Option<Duration> {
        self.median(kind, |l| Some(l.overhead))
    }

    /// The median of the reports of `kind` less their trees' restores,
    /// over those where that was known; `None` if none was.
    pub(crate) fn beyond_restore(&self, kind: &str) -> Option<Duration> {
        self.median(kind, |l| l.beyond_restore)
    }

    fn median(&self, kind: &str, of: impl Fn(&Learned) -> Option<Duration>) -> Option<Duration> {
        let map = self.by_kind.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<Duration> = map.get(kind)?.iter().filter_map(of).collect();
        v.sort_unstable();
        v.get((v.len().saturating_sub(1)) / 2).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nothing_learned_is_none() {
        let o = Overheads::default();
        assert_eq!(o.estimate("pid"), None);
        o.record("pid", Duration::ZERO, None);
        o.record("pid", Duration::from_secs(601), None);
        assert_eq!(o.estimate("pid"), None);
    }

    #[test]
    fn the_median_of_the_last_five_per_kind() {
        let o = Overheads::default();
        o.record("lxc", ms(900), None);
        for n in [100, 300, 200] {
            o.record("pid", ms(n), None);
        }
        assert_eq!(o.estimate("pid"), Some(ms(200)));
        assert_eq!(o.estimate("lxc"), Some(ms(900)));
        // Two more, then a sixth pushes the first (100) out.
        for n in [50, 400, 500] {
            o.record("pid", ms(n), None);
        }
        // Kept: 300, 200, 50, 400, 500.
        assert_eq!(o.estimate("pid"), Some(ms(300)));
        o.record("pid", ms(10), None);
        // Kept: 200, 50, 400, 500, 10; even counts take the lower middle.
        assert_eq!(o.estimate("pid"), Some(ms(200)));
        assert_eq!(o.beyond_restore("pid"), None);
    }

    #[test]
    fn what_is_left_without_the_restore_is_kept_where_known() {
        let o = Overheads::default();
        o.record("pid", ms(5_000), Some(ms(4_600)));
        o.record("pid", ms(900), None);
        o.record("pid", ms(7_000), Some(ms(4_500)));
        // Overheads 900, 5000, 7000; left 400 and 2500 of the two known.
        assert_eq!(o.estimate("pid"), Some(ms(5_000)));
        assert_eq!(o.beyond_restore("pid"), Some(ms(400)));
        // A restore estimated above the whole overhead leaves the least
        // that still says "learned".
        let o = Overheads::default();
        o.record("lxc", ms(100), Some(ms(300)));
        assert_eq!(o.beyond_restore("lxc"), Some(Duration::from_micros(1)));
    }
}

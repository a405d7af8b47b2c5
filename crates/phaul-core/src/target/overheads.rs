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
//! prediction. A tree of a very different size restores its memory in a
//! different time, which the median does not follow.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// How many reports per kind are kept.
const KEPT: usize = 5;

/// Longer than any freeze allowed: a report beyond it is not believed.
const MAX: Duration = Duration::from_secs(600);

/// The learned overheads, per kind; shared by a service's sessions.
#[derive(Debug, Default)]
pub(crate) struct Overheads {
    by_kind: Mutex<HashMap<String, VecDeque<Duration>>>,
}

impl Overheads {
    /// Learns one switch-over of `kind`; zero (not measured) and values
    /// past [`MAX`] are ignored.
    pub(crate) fn record(&self, kind: &str, overhead: Duration) {
        if overhead.is_zero() || overhead > MAX {
            return;
        }
        let mut map = self.by_kind.lock().unwrap_or_else(|p| p.into_inner());
        let kept = map.entry(kind.to_owned()).or_default();
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(overhead);
    }

    /// The median of what was learned for `kind` (the lower of the middle
    /// two), or `None` before any report.
    pub(crate) fn estimate(&self, kind: &str) -> Option<Duration> {
        let map = self.by_kind.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<Duration> = map.get(kind)?.iter().copied().collect();
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
        o.record("pid", Duration::ZERO);
        o.record("pid", Duration::from_secs(601));
        assert_eq!(o.estimate("pid"), None);
    }

    #[test]
    fn the_median_of_the_last_five_per_kind() {
        let o = Overheads::default();
        o.record("lxc", ms(900));
        for n in [100, 300, 200] {
            o.record("pid", ms(n));
        }
        assert_eq!(o.estimate("pid"), Some(ms(200)));
        assert_eq!(o.estimate("lxc"), Some(ms(900)));
        // Two more, then a sixth pushes the first (100) out.
        for n in [50, 400, 500] {
            o.record("pid", ms(n));
        }
        // Kept: 300, 200, 50, 400, 500.
        assert_eq!(o.estimate("pid"), Some(ms(300)));
        o.record("pid", ms(10));
        // Kept: 200, 50, 400, 500, 10; even counts take the lower middle.
        assert_eq!(o.estimate("pid"), Some(ms(200)));
    }
}

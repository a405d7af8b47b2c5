//! When pre-copy stops iterating: the convergence policy, injected.
//!
//! Pre-copy sends memory while the process runs, then again only what was
//! dirtied meanwhile, and so on; it pays off only if the rounds shrink, and
//! someone has to decide when to stop and do the final (frozen) dump. That
//! decision is policy, not mechanism, so the engine takes it as a
//! [`ConvergencePolicy`] — as Cloud Hypervisor's memory loop takes its
//! `is_converged` closure — and this module offers two: [`PhaulRules`], the
//! original P.Haul's fixed page-count rules, kept exact so results can be
//! compared with it, and [`DowntimeBudget`], QEMU's rule of switching over
//! when the predicted downtime (dirty bytes / measured bandwidth) fits a
//! limit. Both look only at the [`IterationSample`]s of the pre-dumps done
//! so far, which makes them easy to test with synthetic histories; before
//! the first pre-dump, every policy is asked whether to pre-dump at all,
//! from the tree's measured dirty rate and the link's speed ([`Probe`],
//! [`ConvergencePolicy::before_first`], by default [`outrun`]).

use std::time::Duration;

/// The page size assumed when turning a page count into bytes where no
/// page size is configured: 4 KiB, the size on x86-64 and most arm64
/// kernels. Only predictions use it; decisions count pages.
pub const PAGE_SIZE: u64 = 4096;

/// How long writing `pages` pages of [`PAGE_SIZE`] bytes into fresh
/// memory takes at `bytes_per_sec` (a target's page-in rate): the
/// restore of a tree's memory, as both sides of a migration estimate it.
pub fn page_in_time(pages: u64, bytes_per_sec: f64) -> Duration {
    let secs = pages as f64 * PAGE_SIZE as f64 / bytes_per_sec;
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
}

/// One pre-dump's numbers: CRIU's `stats-dump` for it, plus the bytes we
/// sent and the wall time it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct IterationSample {
    /// The iteration index: 0 for the first pre-dump.
    pub iteration: u32,
    /// Pages CRIU looked at.
    pub pages_scanned: u64,
    /// Pages CRIU wrote (sent): those dirtied since the previous pre-dump,
    /// or all of them on the first.
    pub pages_written: u64,
    /// Pages left out because the parent images already hold them.
    pub pages_skipped_parent: u64,
    /// Bytes sent to the target for this pre-dump.
    pub bytes_sent: u64,
    /// Wall time of the pre-dump, in microseconds.
    pub duration_us: u64,
    /// How long the process was frozen during the pre-dump, in
    /// microseconds.
    pub frozen_us: u64,
    /// What a switch-over of this kind to this target cost beyond the
    /// transfer of its last dirty set, in microseconds, as the target
    /// learned from earlier migrations (the final dump's other state, the
    /// images, the restore, the commit); 0 when it has learned nothing yet.
    /// Where the target also learned it without each tree's restore, this
    /// is that plus this tree's own restore
    /// ([`restore_estimate_us`](Self::restore_estimate_us)), so that it
    /// follows the tree's size. Predictions add it.
    pub overhead_us: u64,
    /// What restoring the tree's memory on the target should take, in
    /// microseconds: the pages scanned at the rate the target measured
    /// writing image pages into fresh memory (`Begun`'s
    /// `page_in_bytes_per_s`); 0 when it did not say. Predictions add it
    /// only while nothing is learned ([`overhead_us`](Self::overhead_us)
    /// is 0): what is learned already holds a restore.
    pub restore_estimate_us: u64,
}

impl IterationSample {
    /// [`overhead_us`](Self::overhead_us) as a duration, `None` for 0.
    pub fn overhead(&self) -> Option<Duration> {
        (self.overhead_us > 0).then(|| Duration::from_micros(self.overhead_us))
    }

    /// [`restore_estimate_us`](Self::restore_estimate_us) as a duration
    /// (zero when the target did not say).
    pub fn restore_estimate(&self) -> Duration {
        Duration::from_micros(self.restore_estimate_us)
    }
}

/// What to do after a pre-dump.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// Do another pre-dump.
    Continue,
    /// What is left is small enough: do the final dump now (stop-copy
    /// style). The string says why, with the numbers.
    Converged(String),
    /// More pre-dumps are not helping. Pre-copy does its final dump anyway;
    /// hybrid switches to post-copy for the final phase. The string says
    /// why, with the numbers.
    NotConverging(String),
}

impl Decision {
    /// Whether iterating stops here (anything but [`Decision::Continue`]).
    pub fn is_final(&self) -> bool {
        !matches!(self, Decision::Continue)
    }

    /// The human reason of a final decision; `None` for
    /// [`Decision::Continue`].
    pub fn reason(&self) -> Option<&str> {
        match self {
            Decision::Continue => None,
            Decision::Converged(r) | Decision::NotConverging(r) => Some(r),
        }
    }
}

/// Decides, after each pre-dump, whether pre-copy goes on.
///
/// The engine calls [`decide`](Self::decide) once after every pre-dump,
/// with `history` holding every pre-dump so far, oldest first; it is never
/// empty when the engine calls it, and `history.len() - 1` is the iteration
/// index of the last sample. The answer means:
///
/// 1. [`Decision::Continue`]: do one more pre-dump. A policy must not
///    answer this forever; both policies here bound the number of
///    iterations.
/// 2. [`Decision::Converged`]: the pages still to send are few enough that
///    the final dump's downtime is acceptable; do it now. Every mode that
///    iterates then does a stop-copy-style final dump.
/// 3. [`Decision::NotConverging`]: another pre-dump is not expected to make
///    the final dump smaller (the process dirties memory as fast as it is
///    sent, or faster, or the iteration limit was reached). Pre-copy does
///    its final dump anyway, with whatever is left; hybrid switches to
///    post-copy so the downtime does not depend on what is left.
///
/// Implementations are plain data (`Send + Sync`), so one policy can be
/// shared by concurrent migrations.
pub trait ConvergencePolicy: Send + Sync + std::fmt::Debug {
    /// What to do after the last pre-dump in `history` (see the trait's
    /// documentation for what each answer means).
    fn decide(&self, history: &[IterationSample]) -> Decision;

    /// The downtime a final dump right after the last pre-dump in `history`
    /// is expected to cause, if this policy can tell; it goes into the
    /// report next to the measured downtime.
    fn predicted_downtime(&self, history: &[IterationSample]) -> Option<Duration> {
        let _ = history;
        None
    }

    /// Before the first pre-dump, from what the engine measured: whether
    /// to pre-dump at all. [`Decision::NotConverging`] skips pre-copy (a
    /// pre-copy does its final dump at once, a hybrid post-copies at once);
    /// [`Decision::Continue`] begins iterating. The default is
    /// [`outrun`]'s rule. The engine may also ask it about a faster link
    /// than the one timed ([`retime_link`]) and about a tree dirtying
    /// faster or slower than the one glanced at ([`remeasure_dirty`]), so
    /// it should only answer, not count on being asked once.
    fn before_first(&self, probe: &Probe) -> Decision {
        outrun(probe)
    }
}

/// What the engine measures before the first pre-dump, where memory
/// tracking works: the tree's dirty rate and the link's speed.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Probe {
    /// The tree's dirty rate (see [`crate::dirty`]).
    pub dirty: crate::dirty::DirtyRate,
    /// What the link to the target carried, both ways, in bytes per
    /// second: an upper bound on what a pre-dump sends, which CRIU also
    /// has to read and the target to write.
    pub link_bytes_per_sec: f64,
}

/// The rule that skips pre-copy when it cannot help: a pre-dump leaves
/// dirty behind it the tree's hot set plus what its dirty set grew while
/// the pre-dump ran, the growth rate over its bandwidth times what it
/// sent, and its bandwidth is at most the link's. When the dirty set grows
/// at least half as fast as the link carries, no pre-dump can halve what
/// is left: [`Decision::NotConverging`]. Otherwise (a hot set, however
/// large, converges to itself) [`Decision::Continue`].
pub fn outrun(probe: &Probe) -> Decision {
    let growth = probe.dirty.growth_bytes_per_sec();
    let link = probe.link_bytes_per_sec;
    if growth > 0.0 && growth * 2.0 >= link {
        let d = &probe.dirty;
        return Decision::NotConverging(format!(
            "before the first pre-dump: the tree's dirty set grew {:.1} MiB/s ({} of its {} \
             pages written in {:.0} ms, {} in {:.0} ms), at least half of the {:.1} MiB/s \
             the link carries, so no pre-dump could halve what is left",
            mib_s(growth),
            d.first_dirtied,
            d.pages,
            d.first_us as f64 / 1000.0,
            d.dirtied,
            d.over_us as f64 / 1000.0,
            mib_s(link)
        ));
    }
    Decision::Continue
}

/// How much faster than it timed a link may really be when it was timed
/// beside the pre-flight's checks, which share the source's CPUs with the
/// probe's TLS. Measured in the guest under emulation: 4.7 to 6.1 MiB/s
/// beside the checks where the same link timed 10.6 to 11.7 alone.
pub const CONTENDED_LINK_FACTOR: f64 = 2.0;

/// Whether a link timed beside the pre-flight's checks is worth timing
/// again, alone, before `policy` decides from `probe`: its answer skips
/// pre-copy at the rate timed, and would not at
/// [`CONTENDED_LINK_FACTOR`] times it. Where the answer is the same either
/// way (a tree dirtying far faster than any such link), the contended
/// figure is good enough, and the engine saves the time.
pub fn retime_link(policy: &dyn ConvergencePolicy, probe: &Probe) -> bool {
    let faster = Probe {
        link_bytes_per_sec: probe.link_bytes_per_sec * CONTENDED_LINK_FACTOR,
        ..*probe
    };
    policy.before_first(probe).is_final() && !policy.before_first(&faster).is_final()
}

/// How far a dirty rate read over the engine's short first window may be
/// from what a longer one would read: a workload's writes come in bursts
/// (a tick's batch, a hot set not yet rewritten whole), and a quarter of a
/// second sees few of them.
pub const GLANCE_FACTOR: f64 = 2.0;

/// Whether a dirty rate read over the short first window is worth reading
/// again over a longer one before `policy` decides from `probe`: its answer
/// at [`GLANCE_FACTOR`] times the growth, or at that fraction of it,
/// differs from its answer at the growth read. Far from any such border (a
/// tree dirtying much faster than the link carries, or much slower) the
/// glance decides, and a hybrid or pre-copy starts as early as the checks
/// allow.
pub fn remeasure_dirty(policy: &dyn ConvergencePolicy, probe: &Probe) -> bool {
    let answer = policy.before_first(probe).is_final();
    [GLANCE_FACTOR, 1.0 / GLANCE_FACTOR].iter().any(|&k| {
        let other = Probe {
            dirty: probe.dirty.growth_scaled(k),
            ..*probe
        };
        policy.before_first(&other).is_final() != answer
    })
}

/// The effective bandwidth of the pre-dumps so far, in bytes per second.
///
/// It is the rate (`bytes_sent / duration`) of the pre-dump that sent the
/// most, the latest of those that sent as much. Every pre-dump pays fixed
/// costs (freezing, the parasite, the images) besides its pages; in a
/// small one they are most of its time, and its rate says more about them
/// than about the link (measured in a guest: a hundred pages "at" 0.3 to
/// 1 MiB/s from one run to the next, where 32 MiB went at 10). The largest
/// pre-dump's rate is the one its pages decide. Since the duration covers
/// CRIU reading the pages, the link and the target writing them, it is the
/// smallest of those rates, which is what a transfer depends on. The fixed
/// costs the final dump pays are not a transfer: the target learns them
/// ([`IterationSample::overhead_us`]). `None` when no pre-dump measured
/// anything (no time or no bytes).
pub fn measured_bandwidth(history: &[IterationSample]) -> Option<f64> {
    // An iteration that sent nothing, or took no measurable time, says
    // nothing about the bandwidth. `max_by_key` keeps the last maximum.
    let largest = history
        .iter()
        .filter(|s| s.duration_us > 0 && s.bytes_sent > 0)
        .max_by_key(|s| s.bytes_sent)?;
    Some(largest.bytes_sent as f64 * 1_000_000.0 / largest.duration_us as f64)
}

/// `pages * page_size` bytes sent at `bandwidth` bytes per second, or
/// nothing to send; `None` when there are pages to send and no bandwidth
/// was measured.
fn transfer_time(history: &[IterationSample], page_size: u64) -> Option<Duration> {
    let last = history.last()?;
    if last.pages_written == 0 {
        // The final dump will have next to nothing to send, whatever the
        // bandwidth; no need to have measured it.
        return Some(Duration::ZERO);
    }
    let bandwidth = measured_bandwidth(history)?;
    let bytes = last.pages_written as f64 * page_size as f64;
    // bandwidth > 0 (a measured rate), so the quotient is finite and not
    // negative; only a quotient beyond Duration's range can fail.
    Some(Duration::try_from_secs_f64(bytes / bandwidth).unwrap_or(Duration::MAX))
}

/// Milliseconds, for reasons.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Mebibytes per second, for reasons.
fn mib_s(bandwidth: f64) -> f64 {
    bandwidth / (1024.0 * 1024.0)
}

/// The original P.Haul's rules (`iters.py`), exactly.
///
/// After each pre-dump, in this order:
/// 1. the last pre-dump wrote at most [`min_pages`](Self::min_pages) pages:
///    [`Decision::Converged`] ("small dump");
/// 2. it is not the first pre-dump and the pages written grew by more than
///    [`max_growth_percent`](Self::max_growth_percent) over the previous
///    one, the growth being the integer percent
///    `(written - previous) * 100 / previous` rounded down (so 10.9 % is
///    10): [`Decision::NotConverging`] ("iteration grows");
/// 3. the iteration index of the last pre-dump (`history.len() - 1`) is at
///    least [`max_iterations`](Self::max_iterations):
///    [`Decision::NotConverging`] ("too many iterations"); with the default
///    8 that is at most 9 pre-dumps before the final dump;
/// 4. otherwise [`Decision::Continue`].
///
/// P.Haul has no time or bandwidth in its rules; the predicted downtime
/// this policy reports (the last pre-dump's pages, of [`PAGE_SIZE`] bytes,
/// over [`measured_bandwidth`], plus what the target learned a switch-over
/// costs beyond them) is for the report only; before the target has
/// learned anything it counts the transfer and the target's estimate of
/// restoring the tree's memory ([`IterationSample::restore_estimate_us`]),
/// or, where the target gave none, the transfer alone, like QEMU's
/// `expected-downtime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PhaulRules {
    /// A pre-dump writing at most this many pages ends iterating as
    /// converged. P.Haul: 64.
    pub min_pages: u64,
    /// Growth of the pages written over the previous pre-dump, in integer
    /// percent, beyond which iterating stops as not converging. P.Haul: 10.
    pub max_growth_percent: u64,
    /// The last iteration index: iterating stops once the index of the last
    /// pre-dump reaches it. P.Haul: 8.
    pub max_iterations: u32,
}

impl Default for PhaulRules {
    /// P.Haul's constants: 64 pages, 10 %, 8 iterations.
    fn default() -> Self {
        Self {
            min_pages: 64,
            max_growth_percent: 10,
            max_iterations: 8,
        }
    }
}

impl ConvergencePolicy for PhaulRules {
    /// P.Haul's rules (see [`PhaulRules`]); an empty history (no pre-dump
    /// yet) gives [`Decision::Continue`].
    fn decide(&self, history: &[IterationSample]) -> Decision {
        let Some((last, earlier)) = history.split_last() else {
            return Decision::Continue;
        };
        if last.pages_written <= self.min_pages {
            return Decision::Converged(format!(
                "small dump: the last pre-dump wrote {} pages (at most {})",
                last.pages_written, self.min_pages
            ));
        }
        if let Some(prev) = earlier.last() {
            if last.pages_written > prev.pages_written {
                let growth = if prev.pages_written == 0 {
                    // Any growth from nothing is unbounded (P.Haul would
                    // divide by zero here; its own rule 1 keeps it from
                    // getting this far).
                    None
                } else {
                    // u128: the product cannot overflow.
                    let diff = u128::from(last.pages_written - prev.pages_written);
                    Some(diff * 100 / u128::from(prev.pages_written))
                };
                if growth.is_none_or(|g| g > u128::from(self.max_growth_percent)) {
                    let growth = growth.map_or_else(|| "unbounded".to_owned(), |g| format!("{g}%"));
                    return Decision::NotConverging(format!(
                        "iteration grows: {} pages written after {}, {growth} more (over {}%)",
                        last.pages_written, prev.pages_written, self.max_growth_percent
                    ));
                }
            }
        }
        let index = earlier.len();
        if index >= self.max_iterations as usize {
            return Decision::NotConverging(format!(
                "too many iterations: {} pre-dumps done (iteration index {index}, limit {}), \
                 the last still wrote {} pages",
                history.len(),
                self.max_iterations,
                last.pages_written
            ));
        }
        Decision::Continue
    }

    /// The transfer of the last dirty set, plus what the target learned a
    /// switch-over costs beyond it ([`IterationSample::overhead_us`]).
    fn predicted_downtime(&self, history: &[IterationSample]) -> Option<Duration> {
        let last = history.last()?;
        let beyond = last.overhead().unwrap_or_else(|| last.restore_estimate());
        transfer_time(history, PAGE_SIZE).map(|t| t.saturating_add(beyond))
    }
}

/// QEMU's rule: switch over once the predicted downtime fits a budget.
///
/// The predicted downtime of a final dump right after the last pre-dump is
/// `fixed + last.pages_written * page_size / bandwidth` (`fixed` being the
/// target's learned overhead once it has one, and before that
/// [`fixed`](Self::fixed) plus the target's estimate of restoring the
/// tree's memory, [`IterationSample::restore_estimate_us`]), where the
/// bandwidth is [`measured_bandwidth`] and the last pre-dump's page count
/// stands for what will be dirty at the final dump (the same time passes
/// between two dumps, at the same dirty rate). No bandwidth measured means
/// no prediction, unless the last pre-dump wrote nothing, in which case the
/// prediction is `fixed`.
///
/// After each pre-dump, in this order:
/// 1. the predicted downtime is at most [`budget`](Self::budget):
///    [`Decision::Converged`];
/// 2. the iteration index of the last pre-dump (`history.len() - 1`) is at
///    least [`max_iterations`](Self::max_iterations):
///    [`Decision::NotConverging`];
/// 3. the pages written did not shrink for two consecutive pre-dumps (each
///    of the last two wrote at least as many as the one before): the
///    process dirties memory at least as fast as it is sent, so the
///    prediction will never fit: [`Decision::NotConverging`];
/// 4. the last pre-dump shrank by less than a tenth, and at its ratio to
///    the one before the pages written would fit the budget only after
///    more pre-dumps than the limit leaves (a dirty set falling by a few
///    pages a round): [`Decision::NotConverging`] at once, not at the
///    limit (a dirty set shrinking faster is worth its pre-dumps: each
///    makes the final dump smaller, fitting or not);
/// 5. otherwise [`Decision::Continue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DowntimeBudget {
    /// The downtime allowed. Default 300 ms.
    pub budget: Duration,
    /// The part of the downtime that does not depend on memory: freezing,
    /// dumping the other state, restoring, resuming. Default 50 ms. Used
    /// until the target has learned it from earlier migrations of the
    /// kind ([`IterationSample::overhead_us`]), which then takes its place.
    pub fixed: Duration,
    /// Bytes per page. Default 4096 ([`PAGE_SIZE`]).
    pub page_size: u64,
    /// The last iteration index, as in [`PhaulRules::max_iterations`].
    /// Default 8.
    pub max_iterations: u32,
}

impl Default for DowntimeBudget {
    /// 300 ms budget, 50 ms fixed costs, 4 KiB pages, 8 iterations.
    fn default() -> Self {
        Self {
            budget: Duration::from_millis(300),
            fixed: Duration::from_millis(50),
            page_size: PAGE_SIZE,
            max_iterations: 8,
        }
    }
}

impl ConvergencePolicy for DowntimeBudget {
    /// The budget rules (see [`DowntimeBudget`]); an empty history (no
    /// pre-dump yet) gives [`Decision::Continue`].
    fn decide(&self, history: &[IterationSample]) -> Decision {
        let Some(last) = history.last() else {
            return Decision::Continue;
        };
        let predicted = self.predicted_downtime(history);
        let bandwidth = match measured_bandwidth(history) {
            Some(b) => format!("{:.1} MiB/s measured", mib_s(b)),
            None => "no bandwidth measured".to_owned(),
        };
        if let Some(p) = predicted.filter(|&p| p <= self.budget) {
            return Decision::Converged(format!(
                "predicted downtime {:.1} ms fits the budget {:.1} ms ({} pages dirty, {bandwidth})",
                ms(p),
                ms(self.budget),
                last.pages_written
            ));
        }
        let predicted = match predicted {
            Some(p) => format!("predicted downtime {:.1} ms", ms(p)),
            None => "no downtime predicted".to_owned(),
        };
        let index = history.len() - 1;
        if index >= self.max_iterations as usize {
            return Decision::NotConverging(format!(
                "{} pre-dumps done (iteration index {index}, limit {}) and {predicted} still \
                 exceeds the budget {:.1} ms ({} pages dirty, {bandwidth})",
                history.len(),
                self.max_iterations,
                ms(self.budget),
                last.pages_written
            ));
        }
        if let [.., a, b, c] = history {
            if b.pages_written >= a.pages_written && c.pages_written >= b.pages_written {
                return Decision::NotConverging(format!(
                    "pages written did not shrink for 2 pre-dumps ({} -> {} -> {}): memory is \
                     dirtied at least as fast as it is sent, so {predicted} will not come \
                     within the budget {:.1} ms ({bandwidth})",
                    a.pages_written,
                    b.pages_written,
                    c.pages_written,
                    ms(self.budget)
                ));
            }
        }
        if let Some(why) = self.too_slow(history) {
            return Decision::NotConverging(format!("{why}; {predicted} ({bandwidth})"));
        }
        Decision::Continue
    }

    fn predicted_downtime(&self, history: &[IterationSample]) -> Option<Duration> {
        transfer_time(history, self.page_size).map(|t| self.fixed_part(history).saturating_add(t))
    }
}

impl DowntimeBudget {
    /// The part of the downtime that does not depend on the last dirty
    /// set: what the target learned ([`IterationSample::overhead_us`]),
    /// else [`fixed`](Self::fixed) plus the restore of the tree's memory
    /// as the target estimates it ([`IterationSample::restore_estimate_us`]).
    fn fixed_part(&self, history: &[IterationSample]) -> Duration {
        let Some(last) = history.last() else {
            return self.fixed;
        };
        last.overhead()
            .unwrap_or_else(|| self.fixed.saturating_add(last.restore_estimate()))
    }

    /// Rule 4: the last pre-dump shrank, by less than a tenth, and at that
    /// ratio the pages written would reach what fits the budget only after
    /// more pre-dumps than the limit leaves. Says why, or `None`.
    fn too_slow(&self, history: &[IterationSample]) -> Option<String> {
        let [.., prev, last] = history else {
            return None;
        };
        // Shrinking by a tenth or more, pre-dumps still pay for themselves
        // in a smaller final dump, even if it will not fit.
        if prev.pages_written == 0
            || last.pages_written >= prev.pages_written
            || last.pages_written * 10 < prev.pages_written * 9
        {
            return None;
        }
        let bandwidth = measured_bandwidth(history)?;
        let room = self
            .budget
            .saturating_sub(self.fixed_part(history))
            .as_secs_f64();
        let fits = room * bandwidth / self.page_size as f64;
        let ratio = last.pages_written as f64 / prev.pages_written as f64;
        let left = (self.max_iterations as usize).saturating_sub(history.len() - 1);
        // ratio < 1 here, so ln(ratio) < 0; fits < 1 page never fits.
        let needed = if fits < 1.0 {
            f64::INFINITY
        } else {
            ((fits / last.pages_written as f64).ln() / ratio.ln()).ceil()
        };
        (needed > left as f64).then(|| {
            format!(
                "pages written shrink to {:.0}% a pre-dump ({} -> {}): reaching the {:.0} \
                 pages that fit the budget {:.1} ms would take {needed} more pre-dumps, \
                 and the limit leaves {left}",
                ratio * 100.0,
                prev.pages_written,
                last.pages_written,
                fits,
                ms(self.budget)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pre-dump of `pages` pages sent at `bandwidth` bytes per second
    /// (0: not measured).
    fn sample(iteration: usize, pages: u64, bandwidth: u64) -> IterationSample {
        let bytes_sent = pages * PAGE_SIZE;
        IterationSample {
            iteration: iteration as u32,
            pages_scanned: 65_536,
            pages_written: pages,
            pages_skipped_parent: 65_536 - pages.min(65_536),
            bytes_sent,
            // 0 bandwidth: not measured.
            duration_us: (bytes_sent * 1_000_000).checked_div(bandwidth).unwrap_or(0),
            frozen_us: 1_000,
            overhead_us: 0,
            restore_estimate_us: 0,
        }
    }

    fn history(pages: &[u64], bandwidth: u64) -> Vec<IterationSample> {
        pages
            .iter()
            .enumerate()
            .map(|(i, &p)| sample(i, p, bandwidth))
            .collect()
    }

    /// The decision after each pre-dump of `pages`, checking that only the
    /// last one stops, and returning it.
    fn run(policy: &dyn ConvergencePolicy, pages: &[u64], bandwidth: u64) -> (usize, Decision) {
        let h = history(pages, bandwidth);
        for n in 1..=h.len() {
            let d = policy.decide(&h[..n]);
            if d.is_final() {
                return (n, d);
            }
        }
        (h.len(), Decision::Continue)
    }

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn phaul_defaults_are_phauls_constants() {
        let p = PhaulRules::default();
        assert_eq!(
            (p.min_pages, p.max_growth_percent, p.max_iterations),
            (64, 10, 8)
        );
    }

    #[test]
    fn phaul_converges_on_a_shrinking_dirty_set() {
        let (n, d) = run(&PhaulRules::default(), &[10_000, 2_000, 400, 50], MIB);
        assert_eq!(n, 4);
        assert!(
            matches!(&d, Decision::Converged(r) if r.starts_with("small dump") && r.contains("50 pages")),
            "{d:?}"
        );
    }

    #[test]
    fn phaul_flat_dirty_rate_stops_at_index_8() {
        let (n, d) = run(&PhaulRules::default(), &[5_000; 10], MIB);
        assert_eq!(n, 9, "at most 9 pre-dumps");
        assert!(
            matches!(&d, Decision::NotConverging(r) if r.starts_with("too many iterations") && r.contains("index 8")),
            "{d:?}"
        );
    }

    #[test]
    fn phaul_growth_stops() {
        let (n, d) = run(&PhaulRules::default(), &[1_000, 1_200], MIB);
        assert_eq!(n, 2);
        assert!(
            matches!(&d, Decision::NotConverging(r) if r.starts_with("iteration grows") && r.contains("20%")),
            "{d:?}"
        );
    }

    #[test]
    fn phaul_small_dump_boundary_is_64_pages() {
        let p = PhaulRules::default();
        assert!(matches!(
            p.decide(&history(&[64], MIB)),
            Decision::Converged(_)
        ));
        assert_eq!(p.decide(&history(&[65], MIB)), Decision::Continue);
        assert!(matches!(
            p.decide(&history(&[0], 0)),
            Decision::Converged(_)
        ));
        // Small wins over growth, as in P.Haul.
        assert!(matches!(
            p.decide(&history(&[10, 60], MIB)),
            Decision::Converged(_)
        ));
    }

    #[test]
    fn phaul_growth_boundary_is_integer_percent_over_10() {
        let p = PhaulRules::default();
        assert_eq!(p.decide(&history(&[1_000, 1_100], MIB)), Decision::Continue);
        // 10.9 % rounds down to 10.
        assert_eq!(p.decide(&history(&[1_000, 1_109], MIB)), Decision::Continue);
        assert!(matches!(
            p.decide(&history(&[1_000, 1_110], MIB)),
            Decision::NotConverging(r) if r.contains("11%")
        ));
        // No growth test on the first iteration, whatever its size.
        assert_eq!(p.decide(&history(&[1_000_000], MIB)), Decision::Continue);
    }

    #[test]
    fn phaul_growth_from_zero_is_unbounded() {
        let p = PhaulRules {
            min_pages: 0,
            ..PhaulRules::default()
        };
        assert!(matches!(
            p.decide(&history(&[0, 1], MIB)),
            Decision::NotConverging(r) if r.contains("unbounded")
        ));
    }

    #[test]
    fn phaul_iteration_boundary_is_index_8() {
        let p = PhaulRules::default();
        let shrinking: Vec<u64> = (0..10).map(|i| 10_000 - i * 100).collect();
        assert_eq!(p.decide(&history(&shrinking[..8], MIB)), Decision::Continue);
        assert!(matches!(
            p.decide(&history(&shrinking[..9], MIB)),
            Decision::NotConverging(r) if r.contains("9 pre-dumps")
        ));
    }

    #[test]
    fn phaul_empty_history_continues() {
        assert_eq!(PhaulRules::default().decide(&[]), Decision::Continue);
        assert_eq!(PhaulRules::default().predicted_downtime(&[]), None);
    }

    #[test]
    fn phaul_predicts_the_transfer_of_the_last_dirty_set() {
        let p = PhaulRules::default();
        // 256 pages of 4 KiB = 1 MiB at 1 MiB/s.
        let d = p.predicted_downtime(&history(&[10_000, 256], MIB));
        assert_eq!(d, Some(Duration::from_secs(1)));
        assert_eq!(p.predicted_downtime(&history(&[256], 0)), None);
    }

    #[test]
    fn bandwidth_is_the_largest_pre_dumps_rate() {
        // 10 000 pages at 4 MiB/s, then 100 pages whose fixed costs make
        // them "1 MiB/s": the large one's rate, whichever came last.
        let mut h = history(&[10_000, 100], MIB);
        h[0] = sample(0, 10_000, 4 * MIB);
        assert_eq!(measured_bandwidth(&h), Some((4 * MIB) as f64));
        h.reverse();
        assert_eq!(measured_bandwidth(&h), Some((4 * MIB) as f64));
        // Of two as large, the later.
        let mut h = history(&[1_000, 1_000], 2 * MIB);
        h[0] = sample(0, 1_000, MIB);
        assert_eq!(measured_bandwidth(&h), Some((2 * MIB) as f64));
    }

    #[test]
    fn bandwidth_comes_from_pre_dumps_that_measured_something() {
        let mut h = history(&[256, 512, 100], 0);
        h[0] = sample(0, 256, MIB);
        assert_eq!(measured_bandwidth(&h), Some(MIB as f64));
        assert_eq!(measured_bandwidth(&history(&[256, 512], 0)), None);
        assert_eq!(measured_bandwidth(&[]), None);
    }

    #[test]
    fn budget_converges_when_the_prediction_fits() {
        let b = DowntimeBudget::default();
        // At 1 MiB/s: 400 pages = 1.56 s, 50 pages = 0.195 s + 50 ms fixed.
        let (n, d) = run(&b, &[10_000, 2_000, 400, 50], MIB);
        assert_eq!(n, 4);
        assert!(
            matches!(&d, Decision::Converged(r) if r.starts_with("predicted downtime 245.3 ms fits the budget 300.0 ms")),
            "{d:?}"
        );
    }

    #[test]
    fn budget_gives_up_on_a_flat_dirty_rate() {
        let (n, d) = run(&DowntimeBudget::default(), &[5_000; 10], MIB);
        assert_eq!(n, 3);
        assert!(
            matches!(&d, Decision::NotConverging(r) if r.contains("did not shrink for 2") && r.contains("5000 -> 5000 -> 5000")),
            "{d:?}"
        );
    }

    #[test]
    fn budget_continues_after_one_growth() {
        let b = DowntimeBudget::default();
        assert_eq!(b.decide(&history(&[1_000, 1_200], MIB)), Decision::Continue);
        assert!(matches!(
            b.decide(&history(&[1_000, 1_200, 1_300], MIB)),
            Decision::NotConverging(_)
        ));
    }

    #[test]
    fn budget_boundary_is_inclusive() {
        // 100 ms budget, no fixed part: 25.6 pages per 100 ms at 1 MiB/s;
        // use a page size that makes it exact: 1024-byte pages, 100 pages
        // = 102400 bytes at 1024000 B/s = 100 ms.
        let b = DowntimeBudget {
            budget: Duration::from_millis(100),
            fixed: Duration::ZERO,
            page_size: 1024,
            max_iterations: 8,
        };
        let at = |pages: u64| IterationSample {
            pages_written: pages,
            bytes_sent: 1_024_000,
            duration_us: 1_000_000,
            ..IterationSample::default()
        };
        assert!(matches!(b.decide(&[at(100)]), Decision::Converged(_)));
        assert_eq!(b.decide(&[at(101)]), Decision::Continue);
    }

    #[test]
    fn budget_that_never_fits_gives_up_once_it_barely_shrinks() {
        let b = DowntimeBudget {
            fixed: Duration::from_millis(400),
            ..DowntimeBudget::default()
        };
        let shrinking: Vec<u64> = (0..10).map(|i| 10_000 - i * 100).collect();
        let (n, d) = run(&b, &shrinking, 100 * MIB);
        assert_eq!(n, 2);
        assert!(
            matches!(&d, Decision::NotConverging(r) if r.contains("shrink to 99% a pre-dump (10000 -> 9900)") && r.contains("would take inf more")),
            "{d:?}"
        );
    }

    #[test]
    fn budget_stops_a_dirty_set_falling_by_a_few_pages_a_round() {
        // The iterations bench's 50% case: the whole buffer is dirty again
        // after each pre-dump, give or take a few dozen pages.
        let b = DowntimeBudget {
            budget: Duration::from_secs(2),
            max_iterations: 4,
            ..DowntimeBudget::default()
        };
        let (n, d) = run(&b, &[67_337, 65_674, 65_645, 65_645], 4 * MIB);
        assert_eq!(n, 2, "{d:?}");
        assert!(
            matches!(&d, Decision::NotConverging(r) if r.contains("(67337 -> 65674)") && r.contains("the limit leaves 3")),
            "{d:?}"
        );
        // Its 1% case halves each round: every pre-dump is worth it.
        let (n, d) = run(&b, &[67_339, 21_724, 9_302, 4_716, 2_618], 4 * MIB);
        assert_eq!(n, 5, "{d:?}");
        assert!(
            matches!(&d, Decision::NotConverging(r) if r.contains("iteration index 4")),
            "{d:?}"
        );
    }

    #[test]
    fn a_tree_dirtying_half_the_links_speed_skips_pre_copy() {
        // `first` pages dirty after 0.5 s, `then` after 1 s.
        let probe = |first: u64, then: u64, link: f64| Probe {
            dirty: crate::dirty::DirtyRate {
                pages: 65_536,
                first_dirtied: first,
                first_us: 500_000,
                dirtied: then,
                over_us: 1_000_000,
                processes: 1,
            },
            link_bytes_per_sec: link,
        };
        // 8192 more pages in half a second: 64 MiB/s.
        let d = outrun(&probe(8_192, 16_384, 128.0 * MIB as f64));
        assert!(
            matches!(&d, Decision::NotConverging(r) if r.contains("grew 64.0 MiB/s (8192 of its 65536 pages written in 500 ms, 16384 in 1000 ms)") && r.contains("128.0 MiB/s the link")),
            "{d:?}"
        );
        assert_eq!(
            outrun(&probe(8_192, 16_383, 128.0 * MIB as f64)),
            Decision::Continue
        );
        // A hot set, however large, stays the same: it converges to itself.
        assert_eq!(
            outrun(&probe(30_000, 30_000, MIB as f64)),
            Decision::Continue
        );
        assert_eq!(outrun(&probe(0, 0, 0.0)), Decision::Continue);
        // Every policy here asks the same, P.Haul's too.
        let p = probe(0, 60_000, MIB as f64);
        assert!(PhaulRules::default().before_first(&p).is_final());
        assert!(DowntimeBudget::default().before_first(&p).is_final());
    }

    /// A tree whose dirty set grew `growth_mib` MiB/s over a second, and
    /// a link timed at `link_mib`.
    fn growing(growth_mib: f64, link_mib: f64) -> Probe {
        Probe {
            dirty: crate::dirty::DirtyRate {
                pages: 65_536,
                first_dirtied: 0,
                first_us: 0,
                dirtied: (growth_mib * 256.0) as u64,
                over_us: 1_000_000,
                processes: 1,
            },
            link_bytes_per_sec: link_mib * MIB as f64,
        }
    }

    #[test]
    fn a_contended_link_is_timed_again_only_where_it_could_decide() {
        // 2.4 MiB/s of growth (the guest's 1% case) against a link timed
        // at 4.7 beside the checks: skipped, but not at 9.4: time it again.
        let probe = growing;
        let rules = PhaulRules::default();
        assert!(retime_link(&rules, &probe(2.4, 4.7)));
        // The guest's 50% case: 36 MiB/s against 5.2; no faster link
        // within the factor changes that.
        assert!(!retime_link(&rules, &probe(36.0, 5.2)));
        // Pre-copy goes ahead at the rate timed: nothing to check.
        assert!(!retime_link(&rules, &probe(2.0, 10.0)));
        // Exactly at the factor's edge: 4 MiB/s needs an 8 MiB/s link to
        // pre-copy, which twice 4 is not (growth * 2 >= link skips).
        assert!(!retime_link(&rules, &probe(4.0, 4.0)));
        assert!(retime_link(&rules, &probe(3.9, 4.0)));
    }

    #[test]
    fn a_glance_at_the_dirty_rate_is_taken_again_only_near_the_border() {
        let rules = PhaulRules::default();
        // The guest's 50% case (57 MiB/s against a link of 4.7 to 11):
        // at half the growth it would still skip pre-copy.
        assert!(!remeasure_dirty(&rules, &growing(57.0, 11.0)));
        // Its 1% case against the link timed alone: at twice the growth
        // (4.8 MiB/s, twice that 9.6 < 10.6) it still pre-copies...
        assert!(!remeasure_dirty(&rules, &growing(2.4, 10.6)));
        // ...but at 2.8 MiB/s twice the growth would skip it: look longer.
        assert!(remeasure_dirty(&rules, &growing(2.8, 10.6)));
        // Skipped at the glance, pre-copied at half of it: look longer.
        assert!(remeasure_dirty(&rules, &growing(6.0, 10.6)));
        // A hot set has no growth to scale.
        assert!(!remeasure_dirty(&rules, &growing(0.0, 0.001)));
        let budget = DowntimeBudget::default();
        assert!(!remeasure_dirty(&budget, &growing(57.0, 11.0)));
        assert!(remeasure_dirty(&budget, &growing(6.0, 10.6)));
    }

    #[test]
    fn budget_without_bandwidth_predicts_nothing() {
        let b = DowntimeBudget::default();
        let h = history(&[100, 90], 0);
        assert_eq!(b.predicted_downtime(&h), None);
        assert_eq!(b.decide(&h), Decision::Continue);
        let shrinking: Vec<u64> = (0..9).map(|i| 100 - i).collect();
        assert!(matches!(
            b.decide(&history(&shrinking, 0)),
            Decision::NotConverging(r) if r.contains("no downtime predicted") && r.contains("no bandwidth measured")
        ));
    }

    /// `history`, with the target's learned overhead in every sample.
    fn learned(pages: &[u64], bandwidth: u64, overhead: Duration) -> Vec<IterationSample> {
        let us = u64::try_from(overhead.as_micros()).unwrap();
        let mut h = history(pages, bandwidth);
        h.iter_mut().for_each(|s| s.overhead_us = us);
        h
    }

    #[test]
    fn a_learned_overhead_is_added_to_both_predictions() {
        let second = Duration::from_secs(1);
        // 64 pages of 4 KiB at 1 MiB/s: a quarter of a second.
        let h = learned(&[10_000, 64], MIB, second);
        let quarter = Duration::from_millis(250);
        assert_eq!(
            PhaulRules::default().predicted_downtime(&h),
            Some(quarter + second)
        );
        // The learned overhead takes the budget's fixed part's place.
        let b = DowntimeBudget {
            budget: Duration::from_millis(1_200),
            ..DowntimeBudget::default()
        };
        assert_eq!(b.predicted_downtime(&h), Some(quarter + second));
        assert!(matches!(b.decide(&h), Decision::Continue), "1.25 s > 1.2 s");
        let unlearned = history(&[10_000, 64], MIB);
        assert_eq!(b.predicted_downtime(&unlearned), Some(quarter + b.fixed));
        assert!(matches!(b.decide(&unlearned), Decision::Converged(_)));
    }

    #[test]
    fn before_anything_is_learned_the_targets_restore_estimate_is_added() {
        let quarter = Duration::from_millis(250);
        let four = Duration::from_secs(4);
        let mut h = history(&[10_000, 64], MIB);
        h.iter_mut().for_each(|s| s.restore_estimate_us = 4_000_000);
        assert_eq!(
            PhaulRules::default().predicted_downtime(&h),
            Some(quarter + four)
        );
        let b = DowntimeBudget {
            budget: Duration::from_secs(2),
            ..DowntimeBudget::default()
        };
        assert_eq!(b.predicted_downtime(&h), Some(quarter + b.fixed + four));
        assert!(!matches!(b.decide(&h), Decision::Converged(_)));
        // What is learned holds a restore already: it replaces the estimate.
        h.iter_mut().for_each(|s| s.overhead_us = 1_000_000);
        assert_eq!(
            b.predicted_downtime(&h),
            Some(quarter + Duration::from_secs(1))
        );
    }

    #[test]
    fn budget_with_nothing_dirty_needs_no_bandwidth() {
        let b = DowntimeBudget::default();
        let h = history(&[100, 0], 0);
        assert_eq!(b.predicted_downtime(&h), Some(b.fixed));
        assert!(matches!(b.decide(&h), Decision::Converged(_)));
    }

    #[test]
    fn budget_empty_history_continues() {
        assert_eq!(DowntimeBudget::default().decide(&[]), Decision::Continue);
    }

    #[test]
    fn policies_work_as_trait_objects() {
        let policies: Vec<Box<dyn ConvergencePolicy>> = vec![
            Box::new(PhaulRules::default()),
            Box::new(DowntimeBudget::default()),
        ];
        for p in &policies {
            assert!(p.decide(&history(&[10], MIB)).is_final());
        }
    }

    #[test]
    fn decision_reason_and_serde() {
        let d = Decision::NotConverging("why".to_owned());
        assert_eq!(d.reason(), Some("why"));
        assert_eq!(Decision::Continue.reason(), None);
        assert_eq!(
            serde_json::to_string(&d).ok().as_deref(),
            Some(r#"{"not-converging":"why"}"#)
        );
    }
}

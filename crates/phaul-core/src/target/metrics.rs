//! The target service's metrics, rendered in Prometheus' text exposition
//! format (version 0.0.4).
//!
//! They are counted at the same points as the [`ServiceEvent`]s
//! (began, restored, committed, rolled back), so the two never disagree.
//! The format is written by hand: it is a few lines of text, and a client
//! library would be a dependency for that alone.
//!
//! [`ServiceEvent`]: super::ServiceEvent

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the downtime buckets: a stop-copy of a small
/// tree is tens of milliseconds, a large container's seconds.
const DOWNTIME_BUCKETS: [f64; 11] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Upper bounds (seconds) of the total-time buckets: pre-copy rounds and
/// file systems make a migration take up to minutes.
const TOTAL_BUCKETS: [f64; 11] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];

/// How a migration ended on this service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Its tree runs here.
    Committed,
    /// Undone without a request of it failing here: the source aborted,
    /// its link was lost, or the service stopped.
    RolledBack,
    /// A request of it failed here (a restore, an image batch, the
    /// commit), and it was undone.
    Failed,
}

impl Outcome {
    /// The `outcome` label's value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Committed => "committed",
            Self::RolledBack => "rolled_back",
            Self::Failed => "failed",
        }
    }
}

/// Why a migration was refused as busy (see `admission.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// The limit was reached and the queue was full.
    QueueFull,
    /// It waited in the queue for as long as it may.
    QueueWait,
}

impl Refusal {
    /// The `reason` label's value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::QueueWait => "queue_wait",
        }
    }
}

/// A cumulative histogram: per-bucket counts, their sum and count.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// `counts[i]`: observations `<= bounds[i]` (not yet cumulative).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, secs: f64) {
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.counts[i] += 1;
        }
        self.sum += secs;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

#[derive(Debug)]
struct Inner {
    /// Ended migrations by (kind, mode, outcome).
    ended: BTreeMap<(String, String, Outcome), u64>,
    running: u64,
    /// The service's limit on migrations received at once.
    limit: u64,
    /// Migrations waiting for a slot now, and all that ever waited.
    queued: u64,
    waited: u64,
    refused: BTreeMap<Refusal, u64>,
    downtime: Histogram,
    total: Histogram,
    bytes_images: u64,
    bytes_fs: u64,
    bytes_pages: u64,
    bytes_sent: u64,
}

/// The service's metrics: a cheap handle ([`Clone`]) shared by the
/// service's sessions and whoever renders them.
#[derive(Debug, Clone)]
pub struct Metrics(Arc<Mutex<Inner>>);

impl Default for Metrics {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Inner {
            ended: BTreeMap::new(),
            running: 0,
            limit: 0,
            queued: 0,
            waited: 0,
            refused: BTreeMap::new(),
            downtime: Histogram::new(&DOWNTIME_BUCKETS),
            total: Histogram::new(&TOTAL_BUCKETS),
            bytes_images: 0,
            bytes_fs: 0,
            bytes_pages: 0,
            bytes_sent: 0,
        })))
    }
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // A panic while counting leaves numbers that are still numbers.
        let mut g = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g)
    }

    /// A migration began (its `Began` event).
    pub(crate) fn began(&self) {
        self.with(|m| m.running += 1);
    }

    /// A migration that began has ended. `downtime` and `total` are known
    /// for a committed one only.
    pub(crate) fn ended(
        &self,
        kind: &str,
        mode: &str,
        outcome: Outcome,
        times: Option<(Duration, Duration)>,
    ) {
        self.with(|m| {
            m.running = m.running.saturating_sub(1);
            *m.ended
                .entry((kind.to_owned(), mode.to_owned(), outcome))
                .or_default() += 1;
            if let Some((downtime, total)) = times {
                m.downtime.observe(downtime.as_secs_f64());
                m.total.observe(total.as_secs_f64());
            }
        });
    }

    /// The limit on migrations received at once.
    pub(crate) fn set_limit(&self, limit: usize) {
        self.with(|m| m.limit = u64::try_from(limit).unwrap_or(u64::MAX));
    }

    /// A migration waits for a slot until the guard is dropped.
    pub(crate) fn waiting(&self) -> Waiting {
        self.with(|m| {
            m.queued += 1;
            m.waited += 1;
        });
        Waiting(self.clone())
    }

    /// A migration was refused as busy.
    pub(crate) fn refused(&self, why: Refusal) {
        self.with(|m| *m.refused.entry(why).or_default() += 1);
    }

    /// Bytes of images received (CRIU's image batches).
    pub(crate) fn images_received(&self, bytes: u64) {
        self.with(|m| m.bytes_images += bytes);
    }

    /// Bytes of a file-system pass received.
    pub(crate) fn fs_received(&self, bytes: u64) {
        self.with(|m| m.bytes_fs += bytes);
    }

    /// Bytes of memory pages received through a page relay (the page
    /// server's, or post-copy's lazy pages), counted when the relay ends.
    pub(crate) fn pages_received(&self, bytes: u64) {
        self.with(|m| m.bytes_pages += bytes);
    }

    /// Bytes this service sent as the source of a controller's order (its
    /// report's `bytes_transferred`), counted when the migration ends.
    pub(crate) fn sent(&self, bytes: u64) {
        self.with(|m| m.bytes_sent += bytes);
    }

    /// Migrations under way now.
    pub fn running(&self) -> u64 {
        self.with(|m| m.running)
    }

    /// Migrations waiting for a slot now.
    pub fn queued(&self) -> u64 {
        self.with(|m| m.queued)
    }

    /// The metrics in Prometheus' text format, version 0.0.4
    /// ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let admission = self.with(|m| (m.limit, m.queued, m.waited, m.refused.clone()));
        let m = self.with(|m| {
            (
                m.ended.clone(),
                m.running,
                m.downtime.clone(),
                m.total.clone(),
                m.bytes_images,
                m.bytes_fs,
                m.bytes_pages,
                m.bytes_sent,
            )
        });
        let (ended, running, downtime, total, images, fs, pages, sent) = m;
        let mut out = String::new();
        out.push_str(
            "# HELP phaul_migrations_total Migrations this service received that ended, by kind, mode and outcome (committed: runs here; rolled_back: undone after the source aborted or the link was lost; failed: a request failed here and it was undone).\n\
             # TYPE phaul_migrations_total counter\n",
        );
        for ((kind, mode, outcome), n) in &ended {
            let _ = writeln!(
                out,
                "phaul_migrations_total{{kind=\"{}\",mode=\"{}\",outcome=\"{}\"}} {n}",
                escape(kind),
                escape(mode),
                outcome.as_str()
            );
        }
        out.push_str(
            "# HELP phaul_migrations_running Migrations this service has begun and not yet committed or undone.\n\
             # TYPE phaul_migrations_running gauge\n",
        );
        let _ = writeln!(out, "phaul_migrations_running {running}");
        render_admission(&mut out, admission);
        downtime.render(
            &mut out,
            "phaul_migration_downtime_seconds",
            "Of each committed migration, what this target sees of the downtime: from the source's restore request to the commit (the source's freeze and dump before it are not seen here).",
        );
        total.render(
            &mut out,
            "phaul_migration_duration_seconds",
            "Of each committed migration, from its beginning on this service (the source's Begin request) to the commit.",
        );
        out.push_str(
            "# HELP phaul_received_bytes_total Bytes received by this service, by what they carried (images: CRIU image batches; pages: memory through the page server or post-copy's lazy pages, counted when each relay ends; fs: file-system passes).\n\
             # TYPE phaul_received_bytes_total counter\n",
        );
        let _ = writeln!(
            out,
            "phaul_received_bytes_total{{what=\"images\"}} {images}"
        );
        let _ = writeln!(out, "phaul_received_bytes_total{{what=\"pages\"}} {pages}");
        let _ = writeln!(out, "phaul_received_bytes_total{{what=\"fs\"}} {fs}");
        out.push_str(
            "# HELP phaul_sent_bytes_total Bytes this service sent as the source of migrations a controller ordered (each report's bytes_transferred, counted when it ends).\n\
             # TYPE phaul_sent_bytes_total counter\n",
        );
        let _ = writeln!(out, "phaul_sent_bytes_total {sent}");
        out
    }
}

/// The limit, the queue and the refusals (see `admission.rs`).
fn render_admission(
    out: &mut String,
    (limit, queued, waited, refused): (u64, u64, u64, BTreeMap<Refusal, u64>),
) {
    out.push_str(
        "# HELP phaul_migrations_limit How many migrations this service receives at once; the next ones wait in its queue or are refused as busy.\n\
         # TYPE phaul_migrations_limit gauge\n",
    );
    let _ = writeln!(out, "phaul_migrations_limit {limit}");
    out.push_str(
        "# HELP phaul_migrations_queued Migrations waiting now for one of the limit's slots (their sources not frozen yet).\n\
         # TYPE phaul_migrations_queued gauge\n",
    );
    let _ = writeln!(out, "phaul_migrations_queued {queued}");
    out.push_str(
        "# HELP phaul_migrations_waited_total Migrations that had to wait in the queue, whether a slot came or not.\n\
         # TYPE phaul_migrations_waited_total counter\n",
    );
    let _ = writeln!(out, "phaul_migrations_waited_total {waited}");
    out.push_str(
        "# HELP phaul_migrations_refused_total Migrations refused as busy before anything started, by reason (queue_full: the limit reached and the queue full; queue_wait: no slot came free in the queue's wait).\n\
         # TYPE phaul_migrations_refused_total counter\n",
    );
    for why in [Refusal::QueueFull, Refusal::QueueWait] {
        let n = refused.get(&why).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "phaul_migrations_refused_total{{reason=\"{}\"}} {n}",
            why.as_str()
        );
    }
}

/// Counts a migration as waiting in the queue until dropped.
#[derive(Debug)]
pub(crate) struct Waiting(Metrics);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.with(|m| m.queued = m.queued.saturating_sub(1));
    }
}

/// A label value as the text format wants it: backslash, quote and newline
/// escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in\n{text}"))
    }

    #[test]
    fn an_empty_registry_renders_zeroes_and_every_help_and_type() {
        let text = Metrics::default().render();
        for (name, ty) in [
            ("phaul_migrations_total", "counter"),
            ("phaul_migrations_running", "gauge"),
            ("phaul_migrations_limit", "gauge"),
            ("phaul_migrations_queued", "gauge"),
            ("phaul_migrations_waited_total", "counter"),
            ("phaul_migrations_refused_total", "counter"),
            ("phaul_migration_downtime_seconds", "histogram"),
            ("phaul_migration_duration_seconds", "histogram"),
            ("phaul_received_bytes_total", "counter"),
            ("phaul_sent_bytes_total", "counter"),
        ] {
            assert!(text.contains(&format!("# TYPE {name} {ty}\n")), "{text}");
            assert!(text.contains(&format!("# HELP {name} ")), "{text}");
        }
        assert_eq!(
            line(&text, "phaul_migrations_running "),
            "phaul_migrations_running 0"
        );
        assert_eq!(
            line(
                &text,
                "phaul_migration_downtime_seconds_bucket{le=\"+Inf\"}"
            ),
            "phaul_migration_downtime_seconds_bucket{le=\"+Inf\"} 0"
        );
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn outcomes_running_and_histograms_are_counted_as_the_format_wants() {
        let m = Metrics::default();
        m.began();
        m.began();
        m.began();
        assert_eq!(m.running(), 3);
        let ms = Duration::from_millis;
        m.ended(
            "pid",
            "stop-copy",
            Outcome::Committed,
            Some((ms(30), ms(400))),
        );
        m.ended(
            "pid",
            "stop-copy",
            Outcome::Committed,
            Some((ms(3), ms(2000))),
        );
        m.ended("pid", "pre-copy", Outcome::Failed, None);
        m.images_received(1000);
        m.images_received(24);
        m.fs_received(7);
        m.pages_received(4096);
        m.sent(5);
        m.sent(6);
        let text = m.render();
        assert_eq!(
            line(&text, "phaul_migrations_running "),
            "phaul_migrations_running 0"
        );
        assert_eq!(
            line(
                &text,
                "phaul_migrations_total{kind=\"pid\",mode=\"stop-copy\""
            ),
            "phaul_migrations_total{kind=\"pid\",mode=\"stop-copy\",outcome=\"committed\"} 2"
        );
        assert_eq!(
            line(
                &text,
                "phaul_migrations_total{kind=\"pid\",mode=\"pre-copy\""
            ),
            "phaul_migrations_total{kind=\"pid\",mode=\"pre-copy\",outcome=\"failed\"} 1"
        );
        // Buckets are cumulative: 3 ms falls in the first, 30 ms from 0.05 on.
        let d = "phaul_migration_downtime_seconds";
        assert_eq!(
            line(&text, &format!("{d}_bucket{{le=\"0.01\"}}")),
            format!("{d}_bucket{{le=\"0.01\"}} 1")
        );
        assert_eq!(
            line(&text, &format!("{d}_bucket{{le=\"0.025\"}}")),
            format!("{d}_bucket{{le=\"0.025\"}} 1")
        );
        assert_eq!(
            line(&text, &format!("{d}_bucket{{le=\"0.05\"}}")),
            format!("{d}_bucket{{le=\"0.05\"}} 2")
        );
        assert_eq!(
            line(&text, &format!("{d}_bucket{{le=\"+Inf\"}}")),
            format!("{d}_bucket{{le=\"+Inf\"}} 2")
        );
        assert_eq!(line(&text, &format!("{d}_count")), format!("{d}_count 2"));
        assert_eq!(line(&text, &format!("{d}_sum")), format!("{d}_sum 0.033"));
        let t = "phaul_migration_duration_seconds";
        assert_eq!(
            line(&text, &format!("{t}_bucket{{le=\"0.5\"}}")),
            format!("{t}_bucket{{le=\"0.5\"}} 1")
        );
        assert_eq!(
            line(&text, &format!("{t}_bucket{{le=\"2.5\"}}")),
            format!("{t}_bucket{{le=\"2.5\"}} 2")
        );
        assert_eq!(line(&text, &format!("{t}_sum")), format!("{t}_sum 2.4"));
        assert_eq!(
            line(&text, "phaul_received_bytes_total{what=\"images\"}"),
            "phaul_received_bytes_total{what=\"images\"} 1024"
        );
        assert_eq!(
            line(&text, "phaul_received_bytes_total{what=\"fs\"}"),
            "phaul_received_bytes_total{what=\"fs\"} 7"
        );
        assert_eq!(
            line(&text, "phaul_received_bytes_total{what=\"pages\"}"),
            "phaul_received_bytes_total{what=\"pages\"} 4096"
        );
        assert_eq!(
            line(&text, "phaul_sent_bytes_total "),
            "phaul_sent_bytes_total 11"
        );
        // Every sample line is NAME[{LABELS}] VALUE, the value a number.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = l.rsplit_once(' ').expect(l);
            assert!(v.parse::<f64>().is_ok(), "{l}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let m = Metrics::default();
        m.began();
        m.ended("we\"ird", "stop-copy", Outcome::RolledBack, None);
        assert!(m.render().contains(
            "phaul_migrations_total{kind=\"we\\\"ird\",mode=\"stop-copy\",outcome=\"rolled_back\"} 1\n"
        ));
    }
}

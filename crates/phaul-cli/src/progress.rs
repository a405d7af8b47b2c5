//! The terminal's view of a running migration: one line with the phase and
//! the bytes sent (a bar with an ETA once the engine says how much it
//! expects to send; bytes come at least every 200 ms while memory streams),
//! every other event printed above it, and optionally each event as a JSON
//! line in a file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;

use phaul_core::{Event, Progress};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// Draws [`Progress`] events until the migration drops its sender.
#[derive(Debug)]
pub struct ProgressDisplay {
    task: JoinHandle<()>,
}

impl ProgressDisplay {
    /// Starts drawing; hand the sender to
    /// [`Migration::progress`](phaul_core::Migration::progress). With
    /// `events`, each event is also written to that file (see
    /// [`write_event`]).
    pub fn start(events: Option<&Path>) -> Result<(Self, mpsc::UnboundedSender<Progress>)> {
        let (display, inner) = Self::spawn(events)?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Progress>();
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                let _ = inner.send((None, p));
            }
        });
        Ok((display, tx))
    }

    /// Starts drawing a group's events ([`phaul_core::GroupRun`]): the bar
    /// counts every member's bytes, other events are printed with their
    /// member's id, and each line in `events` carries it as `migration`.
    pub fn start_group(events: Option<&Path>) -> Result<(Self, mpsc::UnboundedSender<Event>)> {
        let (display, inner) = Self::spawn(events)?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                let _ = inner.send((Some(e.migration), e.progress));
            }
        });
        Ok((display, tx))
    }

    fn spawn(events: Option<&Path>) -> Result<(Self, mpsc::UnboundedSender<Member>)> {
        let events = match events {
            Some(p) => Some(BufWriter::new(File::create(p).map_err(|source| {
                Error::Events {
                    path: p.to_path_buf(),
                    source,
                }
            })?)),
            None => None,
        };
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .expect("a valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(draw(bar, rx, events));
        Ok((Self { task }, tx))
    }

    /// Waits until the last event is drawn and clears the spinner.
    pub async fn finish(self) {
        let _ = self.task.await;
    }
}

/// The bar once the total is known: bytes against the expected total.
fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner} {elapsed_precise} [{bar:30}] {bytes}/{total_bytes} ({eta} left)  {msg}",
    )
    .expect("a valid template")
    .progress_chars("=> ")
}

/// An event and, in a group, the id of the member it is of.
type Member = (Option<String>, Progress);

async fn draw(
    bar: ProgressBar,
    mut rx: mpsc::UnboundedReceiver<Member>,
    mut events: Option<BufWriter<File>>,
) {
    let started = Instant::now();
    let mut phase = String::from("pre-flight");
    // Each member's own count (one, unnamed, for a single migration): the
    // bar shows their sum.
    let mut members: BTreeMap<Option<String>, Sent> = BTreeMap::new();
    let mut sent = Sent::default();
    while let Some((member, p)) = rx.recv().await {
        let mine = members.entry(member.clone()).or_default();
        match &p {
            Progress::Bytes(b) => mine.bytes = *b,
            Progress::Expected(b) => mine.expected = Some(*b),
            _ => {}
        }
        let had_total = sent.expected.is_some();
        sent = Sent::sum(members.values());
        if let (false, Some(total)) = (had_total, sent.expected) {
            bar.set_style(bar_style());
            bar.set_length(total.max(1));
        } else if let Some(total) = sent.expected.filter(|_| matches!(p, Progress::Expected(_))) {
            bar.set_length(total.max(1));
        }
        if let Some(w) = events.as_mut() {
            let line = write_event(w, started.elapsed(), sent, member.as_deref(), &p);
            if let Err(e) = line {
                tracing::warn!(error = %e, "could not write an event line");
            }
        }
        match (&p, &member) {
            (Progress::Phase(ph), _) => phase = ph.describe().to_string(),
            (Progress::Bytes(_) | Progress::Expected(_), _) => {}
            (other, None) => bar.println(other.to_string()),
            (other, Some(id)) => bar.println(format!("[{id}] {other}")),
        }
        if sent.expected.is_some() {
            // Dirtied pages and images can pass the estimate: the bar
            // grows rather than stopping full.
            if bar.length().is_some_and(|l| sent.bytes > l) {
                bar.set_length(sent.bytes);
            }
            bar.set_position(sent.bytes);
            bar.set_message(phase.clone());
        } else {
            bar.set_message(format!("{phase}  {:.1} MiB", sent.bytes as f64 / 1048576.0));
        }
    }
    bar.finish_and_clear();
}

/// What an event line says of the bytes besides the event itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Bytes sent so far.
    pub bytes: u64,
    /// What the engine expects to send in all, once it said
    /// ([`Progress::Expected`]).
    pub expected: Option<u64>,
}

impl Sent {
    /// Several members' counts added up; the total expected once any
    /// member has said.
    fn sum<'a>(all: impl Iterator<Item = &'a Sent>) -> Sent {
        all.fold(Sent::default(), |acc, s| Sent {
            bytes: acc.bytes + s.bytes,
            expected: match (acc.expected, s.expected) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
            },
        })
    }
}

/// One progress event as a JSON line: the event itself (`event`, `value`),
/// `elapsed_ms` since the start, `bytes_sent` so far and, once known,
/// `expected_bytes`; in a group, the member's id as `migration` (the bytes
/// are then the whole group's).
pub fn write_event(
    w: &mut impl Write,
    elapsed: Duration,
    sent: Sent,
    member: Option<&str>,
    p: &Progress,
) -> std::io::Result<()> {
    let mut line = serde_json::to_value(p).unwrap_or_default();
    if let Some(o) = line.as_object_mut() {
        if let Some(id) = member {
            o.insert("migration".into(), id.into());
        }
        o.insert("elapsed_ms".into(), (elapsed.as_secs_f64() * 1000.0).into());
        o.insert("bytes_sent".into(), sent.bytes.into());
        if let Some(e) = sent.expected {
            o.insert("expected_bytes".into(), e.into());
        }
    }
    // Flushed per line: a reader follows the file as the migration goes.
    writeln!(w, "{line}")?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `--events` file, a JSON value per line.
    fn json_lines(file: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(file)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn an_event_line_is_the_event_with_time_and_bytes() {
        let mut out = Vec::new();
        let sent = Sent {
            bytes: 42,
            expected: None,
        };
        write_event(
            &mut out,
            Duration::from_millis(1500),
            sent,
            None,
            &Progress::Frozen,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["event"], "frozen");
        assert_eq!(v["elapsed_ms"], 1500.0);
        assert_eq!(v["bytes_sent"], 42);
        assert!(v.get("expected_bytes").is_none(), "{v}");
    }

    #[test]
    fn once_known_the_expected_total_is_on_every_line() {
        let mut out = Vec::new();
        let sent = Sent {
            bytes: 7,
            expected: Some(1 << 30),
        };
        write_event(&mut out, Duration::ZERO, sent, None, &Progress::Bytes(7)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["event"], "bytes");
        assert_eq!(v["value"], 7);
        assert_eq!(v["expected_bytes"], 1u64 << 30);
    }

    #[tokio::test]
    async fn the_display_draws_every_event_into_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("events.jsonl");
        let (display, tx) = ProgressDisplay::start(Some(&file)).unwrap();
        for p in [
            Progress::Expected(100),
            Progress::Bytes(40),
            Progress::Bytes(140),
            Progress::Frozen,
        ] {
            tx.send(p).unwrap();
        }
        drop(tx);
        display.finish().await;
        let lines = json_lines(&file);
        assert_eq!(lines.len(), 4);
        assert!(
            lines.iter().all(|l| l["expected_bytes"] == 100),
            "{lines:?}"
        );
        let sent: Vec<u64> = lines
            .iter()
            .map(|l| l["bytes_sent"].as_u64().unwrap())
            .collect();
        assert_eq!(sent, [0, 40, 140, 140]);
    }

    #[tokio::test]
    async fn a_group_s_lines_name_their_member_and_its_bytes_add_up() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("events.jsonl");
        let (display, tx) = ProgressDisplay::start_group(Some(&file)).unwrap();
        let event = |m: &str, p| Event {
            schema: Event::SCHEMA,
            migration: m.into(),
            elapsed_ms: 0.0,
            progress: p,
        };
        for e in [
            event("a", Progress::Expected(100)),
            event("b", Progress::Expected(50)),
            event("a", Progress::Bytes(60)),
            event("b", Progress::Bytes(20)),
            event("a", Progress::Bytes(100)),
        ] {
            tx.send(e).unwrap();
        }
        drop(tx);
        display.finish().await;
        let lines = json_lines(&file);
        let members: Vec<&str> = lines
            .iter()
            .map(|l| l["migration"].as_str().unwrap())
            .collect();
        assert_eq!(members, ["a", "b", "a", "b", "a"]);
        let sent: Vec<u64> = lines
            .iter()
            .map(|l| l["bytes_sent"].as_u64().unwrap())
            .collect();
        assert_eq!(sent, [0, 0, 60, 80, 120]);
        assert_eq!(lines[4]["expected_bytes"], 150);
    }
}

//! The terminal's view of a running migration: one spinner line with the
//! phase and the bytes sent, every other event printed above it, and
//! optionally each event as a JSON line in a file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use phaul_core::Progress;
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

async fn draw(
    bar: ProgressBar,
    mut rx: mpsc::UnboundedReceiver<Progress>,
    mut events: Option<BufWriter<File>>,
) {
    let started = Instant::now();
    let mut phase = String::from("pre-flight");
    let mut bytes = 0u64;
    while let Some(p) = rx.recv().await {
        if let Progress::Bytes(b) = p {
            bytes = b;
        }
        if let Some(w) = events.as_mut() {
            if let Err(e) = write_event(w, started.elapsed(), bytes, &p) {
                tracing::warn!(error = %e, "could not write an event line");
            }
        }
        match &p {
            Progress::Phase(ph) => phase = ph.describe().to_string(),
            Progress::Bytes(_) => {}
            other => bar.println(other.to_string()),
        }
        bar.set_message(format!("{phase}  {:.1} MiB", bytes as f64 / 1048576.0));
    }
    bar.finish_and_clear();
}

/// One progress event as a JSON line: the event itself (`event`, `value`),
/// `elapsed_ms` since the start and `bytes_sent` so far.
pub fn write_event(
    w: &mut impl Write,
    elapsed: Duration,
    bytes: u64,
    p: &Progress,
) -> std::io::Result<()> {
    let mut line = serde_json::to_value(p).unwrap_or_default();
    if let Some(o) = line.as_object_mut() {
        o.insert("elapsed_ms".into(), (elapsed.as_secs_f64() * 1000.0).into());
        o.insert("bytes_sent".into(), bytes.into());
    }
    // Flushed per line: a reader follows the file as the migration goes.
    writeln!(w, "{line}")?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_line_is_the_event_with_time_and_bytes() {
        let mut out = Vec::new();
        write_event(&mut out, Duration::from_millis(1500), 42, &Progress::Frozen).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["event"], "frozen");
        assert_eq!(v["elapsed_ms"], 1500.0);
        assert_eq!(v["bytes_sent"], 42);
    }
}

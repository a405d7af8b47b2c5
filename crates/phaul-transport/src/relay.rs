//! Byte streams over a link: the page stream (CRIU's page server and
//! lazy-pages connections) and the file-system stream.
//!
//! CRIU speaks raw TCP to its page server. Rather than open that port to
//! the network, each side gives CRIU a local socket (a socketpair passed as
//! `ps.fd`, or a loopback connection) and [`relay`] carries the bytes over
//! the authenticated link in both directions, half-closes included. A
//! relay can also be guarded ([`Guard`]): until it is released, the end of
//! the peer's stream reaches the local side as bytes of the caller's
//! choosing instead of a clean close.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tracing::debug;

use crate::error::{Error, Result};
use crate::link::{DATA_CHUNK, FrameReader, FrameWriter, Link};

/// Bytes moved by a relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// From the local stream to the peer.
    pub sent: u64,
    /// From the peer to the local stream.
    pub received: u64,
}

/// Live byte counts of a running relay, readable from elsewhere.
#[derive(Debug, Default)]
pub struct RelayCounters {
    /// From the local stream to the peer so far.
    pub sent: AtomicU64,
    /// From the peer to the local stream so far.
    pub received: AtomicU64,
}

/// What the local side gets instead of a clean close while a relay is
/// guarded. A clean close can mean "done" to the program on the local side
/// (CRIU's lazy page server ends the dumped tree when its client closes
/// cleanly); these bytes say "failed" in its own protocol instead.
#[derive(Debug)]
pub struct Guard {
    /// Until this turns true, the peer's end of stream or a link error is
    /// answered with `bytes`, not with a clean close.
    pub released: watch::Receiver<bool>,
    /// Firing it writes `bytes` and ends the relay at once (a rollback).
    pub abort: oneshot::Receiver<()>,
    /// What to write.
    pub bytes: Vec<u8>,
}

/// How a relay runs.
#[derive(Debug, Default)]
pub struct RelayOptions {
    /// Counters to update as bytes pass.
    pub counters: Option<Arc<RelayCounters>>,
    /// See [`Guard`].
    pub guard: Option<Guard>,
    /// A local side that breaks is not an error: a failed local read counts
    /// as its end of stream, and after a failed local write the peer's bytes
    /// are read and dropped until its `StreamEnd`, so both ends of the link
    /// stay in step for whatever the caller sends next. (For a local program
    /// that may exit early, such as rsync.)
    pub lenient_local: bool,
}

/// Carries bytes between `local` and the link until both directions have
/// ended: local EOF is sent as `StreamEnd`, and the peer's `StreamEnd`
/// shuts down local writes.
pub async fn relay<S>(link: Link, local: S) -> Result<RelayStats>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    relay_with(link, local, RelayOptions::default()).await
}

/// [`relay`] with live counters and, optionally, a [`Guard`].
pub async fn relay_with<S>(link: Link, local: S, opts: RelayOptions) -> Result<RelayStats>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (lr, lw) = tokio::io::split(local);
    let (mut rd, mut wr) = link.into_split();
    relay_parts(&mut rd, &mut wr, lr, lw, opts).await
}

/// The relay on a borrowed link's halves and a local side in two parts, so
/// the caller keeps the link for what follows the stream.
pub async fn relay_parts<R, W>(
    rd: &mut FrameReader,
    wr: &mut FrameWriter,
    mut lr: R,
    lw: W,
    opts: RelayOptions,
) -> Result<RelayStats>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let counters = opts.counters.unwrap_or_default();
    let lenient = opts.lenient_local;
    let up = async {
        let mut buf = vec![0u8; DATA_CHUNK];
        loop {
            let n = match lr.read(&mut buf).await {
                Ok(n) => n,
                Err(e) if lenient => {
                    debug!(error = %e, "the local side of the relay broke; ending it");
                    0
                }
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                wr.send_end().await?;
                return Ok::<(), Error>(());
            }
            wr.send_data(&buf[..n]).await?;
            counters.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    let down = async {
        let (released, mut abort, bytes) = match opts.guard {
            Some(g) => (Some(g.released), Some(g.abort), g.bytes),
            None => (None, None, Vec::new()),
        };
        let guarded = || released.as_ref().is_some_and(|r| !*r.borrow());
        // `None` once a lenient relay's local side stopped taking bytes.
        let mut lw = Some(lw);
        loop {
            let next = tokio::select! {
                biased;
                fired = async {
                    match abort.as_mut() {
                        Some(a) => a.await.is_ok(),
                        None => std::future::pending().await,
                    }
                } => {
                    if fired {
                        poison(lw.as_mut(), &bytes).await;
                        return Err(Error::Protocol("the relay was aborted".into()));
                    }
                    // The abort handle was dropped unfired: never look again.
                    abort = None;
                    continue;
                }
                d = rd.recv_data() => d,
            };
            match next {
                Ok(Some(b)) => {
                    if let Some(w) = lw.as_mut() {
                        match w.write_all(&b).await {
                            Ok(()) => {}
                            Err(e) if lenient => {
                                debug!(error = %e, "the local side stopped reading; draining the link");
                                lw = None;
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    counters
                        .received
                        .fetch_add(b.len() as u64, Ordering::Relaxed);
                }
                Ok(None) if !guarded() => {
                    if let Some(mut w) = lw {
                        match w.shutdown().await {
                            Err(e) if !lenient => return Err(e.into()),
                            _ => {}
                        }
                    }
                    return Ok::<(), Error>(());
                }
                Ok(None) => {
                    poison(lw.as_mut(), &bytes).await;
                    return Err(Error::Protocol(
                        "the peer ended the stream before the guard was released".into(),
                    ));
                }
                Err(e) => {
                    if guarded() {
                        poison(lw.as_mut(), &bytes).await;
                    }
                    return Err(e);
                }
            }
        }
    };
    tokio::try_join!(up, down)?;
    Ok(RelayStats {
        sent: counters.sent.load(Ordering::Relaxed),
        received: counters.received.load(Ordering::Relaxed),
    })
}

/// Best effort: the guard's bytes to the local side.
async fn poison<W: AsyncWrite + Unpin>(w: Option<&mut W>, bytes: &[u8]) {
    if let Some(w) = w {
        let _ = w.write_all(bytes).await;
        let _ = w.flush().await;
    }
}

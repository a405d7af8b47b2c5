//! Page streams: CRIU's page-server traffic carried over the link.
//!
//! Each side gives its CRIU a local socket and relays between it and the
//! authenticated PAGES channel, counting bytes as they pass (for progress
//! and bandwidth estimates). On the source of a post-copy migration the
//! relay can also be *poisoned*: CRIU's lazy page server treats a cleanly
//! closed connection as "all pages delivered" and ends the tree, but an
//! invalid command as a failed transfer, after which it resumes the tree.
//! Poisoning writes such a command, which is how a post-copy migration is
//! rolled back before the target runs.
//!
//! A guarded relay (`PageRelay::spawn_guarded`) goes further for that
//! connection: until the migration commits, an end of stream or an error
//! from the peer is turned into poison instead of being passed on as a
//! clean close, and the socket to CRIU is set to reset rather than close
//! cleanly (`reset_on_close`), so even a crash of this process resumes the
//! tree rather than ending it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use phaul_transport::{Guard, Link, RelayCounters, RelayOptions, relay_with};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::error::{Error, Result};

/// A `page_server_iov` header (u32 cmd, u32 nr_pages, u64 vaddr, u64
/// dst_id, host-endian) with a command CRIU does not know.
pub(crate) const POISON: [u8; 24] = {
    let mut b = [0u8; 24];
    let cmd = 0xbeef_u32.to_ne_bytes();
    b[0] = cmd[0];
    b[1] = cmd[1];
    b[2] = cmd[2];
    b[3] = cmd[3];
    b
};

/// A running relay (phaul-transport's [`phaul_transport::relay_with`]).
#[derive(Debug)]
pub(crate) struct PageRelay {
    task: JoinHandle<Result<(u64, u64)>>,
    counters: Arc<RelayCounters>,
    abort: Option<oneshot::Sender<()>>,
}

impl PageRelay {
    /// Relays between `local` (CRIU's side) and `link`.
    pub(crate) fn spawn<S>(link: Link, local: S) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::start(link, local, None)
    }

    /// Like [`PageRelay::spawn`]; while `committed` is false, the peer's
    /// end of stream or a link error poisons CRIU's side instead of closing
    /// it cleanly, and [`PageRelay::poison`] can do so at any time.
    pub(crate) fn spawn_guarded<S>(
        link: Link,
        local: S,
        committed: tokio::sync::watch::Receiver<bool>,
    ) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::start(link, local, Some(committed))
    }

    fn start<S>(link: Link, local: S, committed: Option<tokio::sync::watch::Receiver<bool>>) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let counters = Arc::new(RelayCounters::default());
        let (abort_tx, abort_rx) = oneshot::channel();
        let guard = committed.map(|released| Guard {
            released,
            abort: abort_rx,
            bytes: POISON.to_vec(),
        });
        let opts = RelayOptions {
            counters: Some(counters.clone()),
            guard,
            ..RelayOptions::default()
        };
        let task = tokio::spawn(async move {
            let st = relay_with(link, local, opts).await?;
            Ok((st.sent, st.received))
        });
        Self {
            task,
            counters,
            abort: Some(abort_tx),
        }
    }

    /// Bytes sent to the peer so far.
    pub(crate) fn sent(&self) -> u64 {
        self.counters.sent.load(Ordering::Relaxed)
    }

    /// What reads [`PageRelay::sent`] from elsewhere (a progress ticker),
    /// as the relay goes on.
    pub(crate) fn sent_counter(&self) -> impl Fn() -> u64 + Send + 'static {
        let c = self.counters.clone();
        move || c.sent.load(Ordering::Relaxed)
    }

    /// Bytes received from the peer so far.
    pub(crate) fn received(&self) -> u64 {
        self.counters.received.load(Ordering::Relaxed)
    }

    /// Writes an invalid command to CRIU's side (a guarded relay) and stops
    /// relaying.
    pub(crate) async fn poison(mut self) {
        debug!("poisoning CRIU's page-server connection");
        if let Some(a) = self.abort.take() {
            let _ = a.send(());
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut self.task).await;
        self.task.abort();
    }

    /// Waits for both directions to end; returns (sent, received).
    pub(crate) async fn finish(mut self, limit: std::time::Duration) -> Result<(u64, u64)> {
        match tokio::time::timeout(limit, &mut self.task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(Error::Protocol(format!("page relay task: {e}"))),
            Err(_) => {
                self.task.abort();
                Ok((self.sent(), self.received()))
            }
        }
    }

    /// Stops relaying (the other end is done or gone).
    pub(crate) fn stop(self) -> (u64, u64) {
        self.task.abort();
        (self.sent(), self.received())
    }
}

/// Makes closing `sock` send a reset instead of a clean end (SO_LINGER 0):
/// CRIU's lazy page server takes a reset as a failed transfer and resumes
/// the tree, and a clean end as success, which ends it.
pub(crate) fn reset_on_close(sock: &impl std::os::fd::AsFd) -> Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::Linger, &l).map_err(|e| {
        Error::Io {
            what: "setting SO_LINGER on CRIU's page-server socket".into(),
            source: e.into(),
        }
    })
}

/// A connected pair of stream sockets: one end for CRIU (passed as
/// `ps.fd`), the other for the relay.
pub(crate) fn socketpair() -> Result<(std::os::fd::OwnedFd, tokio::net::UnixStream)> {
    let (a, b) = std::os::unix::net::UnixStream::pair().map_err(|source| Error::Io {
        what: "making a socket pair for CRIU's pages".into(),
        source,
    })?;
    b.set_nonblocking(true).map_err(|source| Error::Io {
        what: "socket pair".into(),
        source,
    })?;
    let b = tokio::net::UnixStream::from_std(b).map_err(|source| Error::Io {
        what: "socket pair".into(),
        source,
    })?;
    Ok((a.into(), b))
}

/// The most a link probe may carry (see the wire's `ProbeLink`).
pub(crate) const PROBE_MAX: u64 = 64 << 20;

fn probe_io(e: std::io::Error) -> Error {
    Error::Io {
        what: "probing the link".into(),
        source: e,
    }
}

/// A link probe's sending end: `bytes` bytes of zeros out on `link`, then
/// the end of the stream; returns once the peer has ended its side too
/// (it read them all).
pub(crate) async fn probe_send(link: Link, bytes: u64) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut ours, theirs) = tokio::io::duplex(1 << 16);
    let relay = PageRelay::spawn(link, theirs);
    let chunk = vec![0u8; 1 << 16];
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
        ours.write_all(&chunk[..n]).await.map_err(probe_io)?;
        left -= n as u64;
    }
    ours.shutdown().await.map_err(probe_io)?;
    let mut rest = Vec::new();
    ours.read_to_end(&mut rest).await.map_err(probe_io)?;
    relay.finish(std::time::Duration::from_secs(30)).await?;
    Ok(())
}

/// A link probe's receiving end: reads `link` to the end of the stream,
/// discarding at most `limit` bytes (more is an error); returns how many
/// came.
pub(crate) async fn probe_sink(link: Link, limit: u64) -> Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let relay = PageRelay::spawn(link, theirs);
    let (mut rx, mut tx) = tokio::io::split(ours);
    // One byte past the limit tells a stream that is too long.
    let n = tokio::io::copy(&mut (&mut rx).take(limit + 1), &mut tokio::io::sink())
        .await
        .map_err(probe_io)?;
    tx.shutdown().await.map_err(probe_io)?;
    if n > limit {
        relay.stop();
        return Err(Error::Protocol(format!(
            "a link probe carried more than the {limit} bytes announced"
        )));
    }
    relay.finish(std::time::Duration::from_secs(30)).await?;
    Ok(n)
}

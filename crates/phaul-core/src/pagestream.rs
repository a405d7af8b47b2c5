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
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::debug;

use crate::error::{Error, Result};

/// The size of CRIU's `page_server_iov`, every command a page-server
/// client sends: a u32 command, 4 bytes of padding, then u64 page count,
/// address and image id, host-endian (CRIU's `page-xfer.c`).
pub(crate) const IOV_LEN: usize = 32;

/// A `page_server_iov` with a command CRIU does not know.
pub(crate) const POISON: [u8; IOV_LEN] = {
    let mut b = [0u8; IOV_LEN];
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
        let mut opts = RelayOptions {
            counters: Some(counters.clone()),
            ..RelayOptions::default()
        };
        let task = match committed {
            None => tokio::spawn(async move {
                let st = relay_with(link, local, opts).await?;
                Ok((st.sent, st.received))
            }),
            Some(released) => {
                let (relay_end, gate_end) = tokio::io::duplex(GATE_BUFFER);
                tokio::spawn(close_gate(gate_end, local, released.clone()));
                opts.guard = Some(Guard {
                    released,
                    abort: abort_rx,
                    bytes: POISON.to_vec(),
                });
                // The gate ends once the relay drops its end.
                tokio::spawn(async move {
                    let st = relay_with(link, relay_end, opts).await?;
                    Ok((st.sent, st.received))
                })
            }
        };
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

/// What a guarded relay and its gate buffer between them, each way.
const GATE_BUFFER: usize = 256 * 1024;
/// The daemon's commands that end a lazy transfer (the low 16 bits of the
/// command word; the rest are flags): after either, CRIU's lazy dump ends
/// the dumped tree.
const PS_IOV_CLOSE: u32 = 0x1023;
const PS_IOV_FORCE_CLOSE: u32 = 0x1024;

/// Between a guarded relay and CRIU's lazy page server, on the source.
///
/// It passes everything, but holds the lazy-pages daemon's closing command
/// until the migration commits. Once the daemon has every page (a small
/// tree, or a manager that runs the restored tree at once, as LXC does) it
/// closes, and CRIU, seeing the close, ends the dumped tree: before the
/// commit that would leave nothing to roll back to. Held, the close waits
/// for the commit; a rollback's poison, arriving meanwhile, goes first and
/// the close never does. Unless the migration committed, the gate ends by
/// dropping CRIU's socket, which resets it (see [`reset_on_close`]), never
/// by a clean close.
async fn close_gate<S>(relay: tokio::io::DuplexStream, criu: S, committed: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    use tokio::io::AsyncWriteExt;
    let (gr, mut gw) = tokio::io::split(relay);
    let (mut cr, cw) = tokio::io::split(criu);
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut gw).await;
        let _ = gw.shutdown().await;
        cr
    });
    match gate_down(gr, cw, committed).await {
        // CRIU answers the close and ends its side; wait for that to pass.
        Some(cw) => {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), up).await;
            drop(cw);
        }
        None => up.abort(),
    }
}

/// The gate's relay-to-CRIU direction, command by command; returns CRIU's
/// write half after a clean end (committed), or `None` when CRIU's socket
/// must be reset.
async fn gate_down<R, W>(mut from: R, mut to: W, mut committed: watch::Receiver<bool>) -> Option<W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut unit = [0u8; IOV_LEN];
    loop {
        let n = read_full(&mut from, &mut unit).await;
        if n < IOV_LEN {
            to.write_all(&unit[..n]).await.ok()?;
            break;
        }
        let cmd = u32::from_ne_bytes([unit[0], unit[1], unit[2], unit[3]]) & 0xffff;
        if matches!(cmd, PS_IOV_CLOSE | PS_IOV_FORCE_CLOSE) && !*committed.borrow() {
            debug!("holding the lazy-pages daemon's close until the commit");
            let mut more = [0u8; 256];
            tokio::select! {
                came = async { committed.wait_for(|c| *c).await.is_ok() } => if !came {
                    // Gone without a commit: the migration rolls back.
                    return None;
                },
                r = from.read(&mut more) => {
                    // Anything before the commit is a rollback's poison:
                    // it goes, the close does not.
                    if let Ok(n @ 1..) = r {
                        let _ = to.write_all(&more[..n]).await;
                        let _ = tokio::io::copy(&mut from, &mut to).await;
                    }
                    return None;
                }
            }
        }
        to.write_all(&unit).await.ok()?;
        if matches!(cmd, PS_IOV_CLOSE | PS_IOV_FORCE_CLOSE) {
            // Nothing follows a close. Ending CRIU's input now lets it
            // close at once: it answers the close on a corked socket and
            // then waits for the end of its input, so without the end its
            // answer waits for the cork's 200 ms ceiling, and the daemon
            // waits for the answer.
            to.shutdown().await.ok()?;
            let _ = tokio::io::copy(&mut from, &mut tokio::io::sink()).await;
            return Some(to);
        }
    }
    if !*committed.borrow() {
        return None;
    }
    to.shutdown().await.ok()?;
    Some(to)
}

/// Reads until `buf` is full or the stream ends; returns how much came.
async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> usize {
    use tokio::io::AsyncReadExt;
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    got
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

/// A link probe's sending end: zeros out on `link`, `bytes` of them or as
/// many as go out `within` (a slow link is timed on less, not waited
/// for), then the end of the stream; returns how many were sent, once the
/// peer has ended its side too (it read them all).
pub(crate) async fn probe_send(link: Link, bytes: u64, within: std::time::Duration) -> Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t0 = std::time::Instant::now();
    let (mut ours, theirs) = tokio::io::duplex(1 << 16);
    let relay = PageRelay::spawn(link, theirs);
    let chunk = vec![0u8; 1 << 16];
    let mut sent = 0;
    while sent < bytes && t0.elapsed() < within {
        let n = usize::try_from(bytes - sent)
            .unwrap_or(usize::MAX)
            .min(chunk.len());
        ours.write_all(&chunk[..n]).await.map_err(probe_io)?;
        sent += n as u64;
    }
    ours.shutdown().await.map_err(probe_io)?;
    let mut rest = Vec::new();
    ours.read_to_end(&mut rest).await.map_err(probe_io)?;
    relay.finish(std::time::Duration::from_secs(30)).await?;
    Ok(sent)
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn iov(cmd: u32) -> [u8; IOV_LEN] {
        let mut b = [0u8; IOV_LEN];
        b[..4].copy_from_slice(&cmd.to_ne_bytes());
        b[8] = 0x42;
        b
    }

    /// A gate between two in-memory streams: (relay's end, CRIU's end,
    /// the commit, the gate's outcome).
    fn gate() -> (
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
        watch::Sender<bool>,
        tokio::task::JoinHandle<bool>,
    ) {
        let (relay, from) = tokio::io::duplex(4096);
        let (to, criu) = tokio::io::duplex(4096);
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(async move { gate_down(from, to, rx).await.is_some() });
        (relay, criu, tx, task)
    }

    async fn nothing_within(criu: &mut tokio::io::DuplexStream, ms: u64) -> bool {
        let mut b = [0u8; 1];
        let wait = std::time::Duration::from_millis(ms);
        tokio::time::timeout(wait, criu.read(&mut b)).await.is_err()
    }

    #[tokio::test]
    async fn the_close_waits_for_the_commit() {
        let (mut relay, mut criu, commit, task) = gate();
        relay.write_all(&iov(7)).await.unwrap();
        relay.write_all(&iov(PS_IOV_CLOSE)).await.unwrap();
        let mut got = [0u8; IOV_LEN];
        criu.read_exact(&mut got).await.unwrap();
        assert_eq!(got, iov(7), "a page request passes at once");
        assert!(
            nothing_within(&mut criu, 200).await,
            "the close passed before the commit"
        );
        commit.send(true).unwrap();
        criu.read_exact(&mut got).await.unwrap();
        assert_eq!(got, iov(PS_IOV_CLOSE));
        // CRIU's input ends right after the close, while the daemon's
        // side is still open (it waits for CRIU's answer).
        let end = tokio::time::timeout(std::time::Duration::from_secs(2), criu.read(&mut got));
        assert_eq!(end.await.expect("CRIU's input did not end").unwrap(), 0);
        relay.write_all(b"late").await.unwrap();
        drop(relay);
        assert!(task.await.unwrap(), "a committed end is clean");
    }

    #[tokio::test]
    async fn a_rollbacks_poison_goes_and_the_held_close_never_does() {
        let (mut relay, mut criu, commit, task) = gate();
        relay
            .write_all(&iov(PS_IOV_FORCE_CLOSE | 0x3_0000))
            .await
            .unwrap();
        assert!(nothing_within(&mut criu, 200).await);
        relay.write_all(&POISON).await.unwrap();
        drop(relay);
        let mut all = Vec::new();
        criu.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, POISON, "only the poison reached CRIU");
        assert!(!task.await.unwrap(), "not a clean end");
        drop(commit);
    }

    #[tokio::test]
    async fn an_end_before_the_commit_is_not_clean() {
        let (mut relay, _criu, commit, task) = gate();
        relay.write_all(&iov(7)).await.unwrap();
        drop(relay);
        assert!(!task.await.unwrap());
        // Nor when the engine is gone while the close waits.
        let (mut relay, _criu, commit2, task) = gate();
        relay.write_all(&iov(PS_IOV_CLOSE)).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        drop(commit2);
        assert!(!task.await.unwrap());
        drop(commit);
    }
}

#[cfg(test)]
mod gate_over_tcp {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn requests_and_pages_pass_both_ways() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let local = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut criu, _) = l.accept().await.unwrap();
        let (mut relay, gate_end) = tokio::io::duplex(GATE_BUFFER);
        let (_tx, rx) = watch::channel(false);
        tokio::spawn(close_gate(gate_end, local, rx));
        let mut get = [0u8; IOV_LEN];
        get[0] = 7;
        relay.write_all(&get).await.unwrap();
        let mut got = [0u8; IOV_LEN];
        tokio::time::timeout(std::time::Duration::from_secs(2), criu.read_exact(&mut got))
            .await
            .expect("the request did not reach CRIU")
            .unwrap();
        criu.write_all(&[9u8; 4096]).await.unwrap();
        let mut page = [0u8; 4096];
        tokio::time::timeout(
            std::time::Duration::from_secs(2),
            relay.read_exact(&mut page),
        )
        .await
        .expect("the page did not come back")
        .unwrap();
    }
}

#[cfg(test)]
mod probe_over_tcp {
    use super::*;

    /// A slow link is timed on what went out within the probe's time, not
    /// waited for: at 1 MiB/s, 300 ms send a fraction of the 8 MiB asked,
    /// and the receiving end counts exactly what was sent.
    #[tokio::test]
    async fn a_link_probe_stops_short_on_a_slow_link() {
        use phaul_transport::{Channel, Endpoint, Link, LinkConfig, Listener, SharedKey};
        let key = SharedKey::new(&[7u8; 32]).unwrap();
        let slow = LinkConfig::new(key.clone())
            .plaintext()
            .bandwidth(Some(1 << 20));
        let server_cfg = LinkConfig::new(key).plaintext();
        let listener = Listener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepting = async {
            let (raw, peer) = listener.accept().await.unwrap();
            Link::accept(raw, peer, &server_cfg).await.unwrap()
        };
        let connecting = Link::connect(
            Endpoint::parse(&addr).unwrap(),
            &slow,
            Channel::Control,
            None,
        );
        let (theirs, ours) = tokio::join!(accepting, connecting);
        let t0 = std::time::Instant::now();
        let (sent, got) = tokio::join!(
            probe_send(
                ours.unwrap(),
                8 << 20,
                std::time::Duration::from_millis(300)
            ),
            probe_sink(theirs, 8 << 20)
        );
        let (sent, got) = (sent.unwrap(), got.unwrap());
        assert_eq!(sent, got);
        assert!(sent > 0 && sent < 4 << 20, "{sent} bytes sent");
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t0.elapsed()
        );
    }
}

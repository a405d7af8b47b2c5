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
use std::sync::atomic::{AtomicU64, Ordering};

use phaul_transport::Link;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::error::{Error, Result};

/// A `page_server_iov` header (u32 cmd, u32 nr_pages, u64 vaddr, u64
/// dst_id, host-endian) with a command CRIU does not know.
const POISON: [u8; 24] = {
    let mut b = [0u8; 24];
    let cmd = 0xbeef_u32.to_ne_bytes();
    b[0] = cmd[0];
    b[1] = cmd[1];
    b[2] = cmd[2];
    b[3] = cmd[3];
    b
};

/// A running relay.
#[derive(Debug)]
pub(crate) struct PageRelay {
    task: JoinHandle<Result<(u64, u64)>>,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    poison: Option<oneshot::Sender<()>>,
}

impl PageRelay {
    /// Relays between `local` (CRIU's side) and `link`.
    pub(crate) fn spawn<S>(link: Link, local: S) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::spawn_guarded(link, local, None)
    }

    /// Like [`PageRelay::spawn`]; while `committed` is false, the peer's
    /// end of stream or a link error poisons CRIU's side instead of closing
    /// it cleanly.
    pub(crate) fn spawn_guarded<S>(
        link: Link,
        local: S,
        committed: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let guarded = committed.is_some();
        let is_committed = move || committed.as_ref().is_none_or(|c| *c.borrow());
        let sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let (poison_tx, mut poison_rx) = oneshot::channel::<()>();
        let (s, r) = (sent.clone(), received.clone());
        let task = tokio::spawn(async move {
            let (mut lr, mut lw) = tokio::io::split(local);
            let (mut rd, mut wr) = link.into_split();
            let up = async {
                let mut buf = vec![0u8; phaul_transport::link::DATA_CHUNK];
                loop {
                    let n = lr.read(&mut buf).await.map_err(|source| Error::Io {
                        what: "reading CRIU's page stream".into(),
                        source,
                    })?;
                    if n == 0 {
                        wr.send_end().await?;
                        return Ok::<(), Error>(());
                    }
                    wr.send_data(&buf[..n]).await?;
                    s.fetch_add(n as u64, Ordering::Relaxed);
                }
            };
            let down = async {
                loop {
                    tokio::select! {
                        biased;
                        p = &mut poison_rx => {
                            if p.is_ok() {
                                debug!("poisoning CRIU's page-server connection");
                                let _ = lw.write_all(&POISON).await;
                                let _ = lw.flush().await;
                                return Err(Error::Cancelled);
                            }
                            // The sender was dropped without poisoning: keep
                            // relaying, and never look at it again.
                            std::future::pending::<()>().await;
                        }
                        d = rd.recv_data() => match d {
                            Ok(Some(bytes)) => {
                                lw.write_all(&bytes).await.map_err(|source| Error::Io { what: "writing CRIU's page stream".into(), source })?;
                                r.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                            }
                            Ok(None) if is_committed() => {
                                let _ = lw.shutdown().await;
                                return Ok::<(), Error>(());
                            }
                            // Before the commit, a clean close would tell a
                            // lazy page server that every page arrived, and
                            // it would end the source's tree.
                            Ok(None) => {
                                debug!("peer ended the page stream before the commit: poisoning");
                                let _ = lw.write_all(&POISON).await;
                                let _ = lw.flush().await;
                                return Err(Error::Protocol("the target ended the page stream before the commit".into()));
                            }
                            Err(e) => {
                                if guarded && !is_committed() {
                                    let _ = lw.write_all(&POISON).await;
                                    let _ = lw.flush().await;
                                }
                                return Err(e.into());
                            }
                        }
                    }
                }
            };
            tokio::try_join!(up, down)?;
            Ok((s.load(Ordering::Relaxed), r.load(Ordering::Relaxed)))
        });
        Self {
            task,
            sent,
            received,
            poison: Some(poison_tx),
        }
    }

    /// Bytes sent to the peer so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Bytes received from the peer so far.
    pub(crate) fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Writes an invalid command to CRIU's side and stops relaying.
    pub(crate) async fn poison(mut self) {
        if let Some(p) = self.poison.take() {
            let _ = p.send(());
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

//! Byte streams over a link: the page stream (CRIU's page server and
//! lazy-pages connections) and the file-system stream.
//!
//! CRIU speaks raw TCP to its page server. Rather than open that port to
//! the network, each side gives CRIU a local socket (a socketpair passed as
//! `ps.fd`, or a loopback connection) and [`relay`] carries the bytes over
//! the authenticated link in both directions, half-closes included.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::Result;
use crate::link::{DATA_CHUNK, Link};

/// Bytes moved by a relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// From the local stream to the peer.
    pub sent: u64,
    /// From the peer to the local stream.
    pub received: u64,
}

/// Carries bytes between `local` and the link until both directions have
/// ended: local EOF is sent as `StreamEnd`, and the peer's `StreamEnd`
/// shuts down local writes.
pub async fn relay<S>(link: Link, local: S) -> Result<RelayStats>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut lr, mut lw) = tokio::io::split(local);
    let (mut rd, mut wr) = link.into_split();
    let up = async move {
        let mut buf = vec![0u8; DATA_CHUNK];
        let mut sent = 0u64;
        loop {
            let n = lr.read(&mut buf).await?;
            if n == 0 {
                wr.send_end().await?;
                return Ok::<u64, crate::Error>(sent);
            }
            wr.send_data(&buf[..n]).await?;
            sent += n as u64;
        }
    };
    let down = async move {
        let mut received = 0u64;
        while let Some(bytes) = rd.recv_data().await? {
            lw.write_all(&bytes).await?;
            received += bytes.len() as u64;
        }
        lw.shutdown().await?;
        Ok::<u64, crate::Error>(received)
    };
    let (sent, received) = tokio::try_join!(up, down)?;
    Ok(RelayStats { sent, received })
}

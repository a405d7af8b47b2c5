//! An async `SOCK_SEQPACKET` Unix socket: CRIU's RPC transport.
//!
//! Each datagram is one protobuf message. CRIU sizes its reads by peeking
//! (`MSG_PEEK | MSG_TRUNC`) and so do we, up to a limit, so a message is never
//! silently cut. CRIU attaches at most one fd (`SCM_RIGHTS`), to the
//! `orphan-pts-master` notification; it is received close-on-exec.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, connect, recv,
    recvmsg, sendmsg, socket, socketpair,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The largest message accepted from CRIU. CRIU's answers are a few hundred
/// bytes; anything near this is a broken peer, not a bigger answer.
pub const MAX_MESSAGE: usize = 1 << 20;

/// One received datagram.
#[derive(Debug)]
pub(crate) struct Datagram {
    pub bytes: Vec<u8>,
    pub fd: Option<OwnedFd>,
}

/// Outcome of a receive.
#[derive(Debug)]
pub(crate) enum Received {
    Message(Datagram),
    /// The peer closed the connection.
    Eof,
    /// A datagram larger than [`MAX_MESSAGE`] (it was consumed).
    TooLarge(usize),
}

#[derive(Debug)]
pub(crate) struct SeqPacket {
    fd: AsyncFd<OwnedFd>,
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags))?;
    Ok(())
}

impl SeqPacket {
    /// A connected pair: ours (non-blocking, in the runtime) and the peer's
    /// end, left blocking because CRIU expects a blocking socket. Both are
    /// close-on-exec; the spawner moves the peer's end into place.
    pub(crate) fn pair() -> io::Result<(Self, OwnedFd)> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        Ok((Self::from_fd(ours)?, theirs))
    }

    /// Connects to a listening seqpacket socket (`criu service`).
    pub(crate) fn connect(path: &Path) -> Result<Self, nix::Error> {
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let addr = UnixAddr::new(path)?;
        // Connecting a Unix socket does not wait on the network, so a
        // blocking connect is fine; the socket goes non-blocking after.
        connect(fd.as_raw_fd(), &addr)?;
        Self::from_fd(fd).map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    }

    /// Wraps an already connected seqpacket socket.
    pub(crate) fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        set_nonblocking(&fd)?;
        // SAFETY: an OwnedFd is a valid open descriptor that nothing else
        // closes; AsyncFd owns it until it is dropped and `as_raw_fd` always
        // returns that same number.
        let fd =
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }
                .map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }

    /// Sends one datagram.
    pub(crate) async fn send(&self, bytes: &[u8]) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|inner| send_once(inner.get_ref().as_raw_fd(), bytes)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends one datagram without waiting; used where awaiting is
    /// impossible (a `Drop`), when the peer is known to be waiting to read.
    pub(crate) fn try_send(&self, bytes: &[u8]) -> io::Result<()> {
        send_once(self.raw(), bytes)
    }

    /// Receives one datagram and the fd that came with it, if any.
    pub(crate) async fn recv(&self) -> io::Result<Received> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|inner| recv_once(inner.get_ref().as_raw_fd())) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}

fn send_once(fd: RawFd, bytes: &[u8]) -> io::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let n = sendmsg::<()>(fd, &iov, &[], MsgFlags::MSG_NOSIGNAL, None)?;
    if n != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short datagram write",
        ));
    }
    Ok(())
}

fn recv_once(fd: RawFd) -> io::Result<Received> {
    // A zero-length peek with MSG_TRUNC returns the datagram's real length.
    let len = recv(fd, &mut [], MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC)?;
    if len == 0 {
        // CRIU never sends an empty message: 0 is the end of the stream.
        // (Consume a possible empty datagram so a retry cannot spin.)
        let _ = recv(fd, &mut [0u8; 1], MsgFlags::MSG_DONTWAIT);
        return Ok(Received::Eof);
    }
    if len > MAX_MESSAGE {
        let _ = recv(fd, &mut [0u8; 1], MsgFlags::MSG_DONTWAIT);
        return Ok(Received::TooLarge(len));
    }
    let mut bytes = vec![0u8; len];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let (n, fds, flags) = {
        let mut iov = [IoSliceMut::new(&mut bytes)];
        let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(list) = c {
                fds.extend(list);
            }
        }
        (msg.bytes, fds, msg.flags)
    };
    // SAFETY: every fd in an SCM_RIGHTS message is a new descriptor that
    // this process now owns and nothing else refers to.
    let mut owned: Vec<OwnedFd> = fds
        .into_iter()
        .map(|f| unsafe { OwnedFd::from_raw_fd(f) })
        .collect();
    if flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "CRIU sent more fds than expected",
        ));
    }
    bytes.truncate(n);
    let fd = if owned.is_empty() {
        None
    } else {
        Some(owned.swap_remove(0))
    };
    Ok(Received::Message(Datagram { bytes, fd }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn datagrams_keep_their_boundaries_and_fds_arrive() {
        let (a, b) = SeqPacket::pair().unwrap();
        let b = SeqPacket::from_fd(b).unwrap();
        a.send(b"one").await.unwrap();
        a.send(&vec![7u8; 5000]).await.unwrap();
        match b.recv().await.unwrap() {
            Received::Message(d) => assert_eq!(d.bytes, b"one"),
            other => panic!("{other:?}"),
        }
        match b.recv().await.unwrap() {
            Received::Message(d) => assert_eq!(d.bytes.len(), 5000),
            other => panic!("{other:?}"),
        }

        // An fd sent along with a message (as CRIU does for orphan-pts-master).
        let file = tempfile::tempfile().unwrap();
        let fds = [file.as_raw_fd()];
        let cm = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(
            a.raw(),
            &[IoSlice::new(b"fd")],
            &cm,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        match b.recv().await.unwrap() {
            Received::Message(d) => {
                assert_eq!(d.bytes, b"fd");
                assert!(d.fd.is_some());
            }
            other => panic!("{other:?}"),
        }
        drop(a);
        assert!(matches!(b.recv().await.unwrap(), Received::Eof));
    }

    #[tokio::test]
    async fn oversized_datagrams_are_reported_not_allocated() {
        let (a, b) = SeqPacket::pair().unwrap();
        let b = SeqPacket::from_fd(b).unwrap();
        // Socket buffers cap a datagram well below MAX_MESSAGE by default,
        // so raise the send buffer to get one through.
        nix::sys::socket::setsockopt(
            &a.fd.get_ref(),
            nix::sys::socket::sockopt::SndBuf,
            &(4 << 20),
        )
        .unwrap();
        nix::sys::socket::setsockopt(
            &b.fd.get_ref(),
            nix::sys::socket::sockopt::RcvBuf,
            &(4 << 20),
        )
        .unwrap();
        if a.send(&vec![0u8; MAX_MESSAGE + 1]).await.is_err() {
            // The kernel refused a datagram this big (EMSGSIZE): nothing
            // oversized can reach the reader then either.
            return;
        }
        assert!(matches!(b.recv().await.unwrap(), Received::TooLarge(n) if n == MAX_MESSAGE + 1));
    }
}

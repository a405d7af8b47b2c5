//! What the network lock dropped, delivered to the restored copy.
//!
//! While the tree is frozen, CRIU's lock in its network namespace drops
//! every packet. A client whose request arrives then is not answered, and
//! its kernel sends the request again only on its own timers: a tail-loss
//! probe about 205 ms after sending, then the retransmission timer about
//! 200 ms later, and backing off from there. A freeze that ends just after
//! a timer fired costs the client a whole further period (measured: a
//! 255 ms downtime felt as a 423 ms stall).
//!
//! So the source keeps those packets. A packet socket opened in the tree's
//! namespace sees a frame before netfilter drops it; [`Capture`] keeps the
//! TCP segments addressed to the namespace from before the freeze until
//! the commit, and they travel with `Commit`. Once the restored copy runs,
//! [`inject`] sends them into its namespace through a raw IP socket, which
//! delivers them to the local stack as if they had just arrived. Segments
//! the source had already received before the lock are duplicates there,
//! and TCP discards duplicates; that is why only TCP is replayed (a UDP
//! datagram seen twice is two datagrams).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{debug, warn};

use crate::error::{Error, Result};

/// At most this many packets are kept; later ones are left to the
/// client's own retransmission.
const MAX_PACKETS: usize = 1024;
/// And at most this many bytes of them.
const MAX_BYTES: usize = 4 << 20;
/// How often the capture looks at its stop flag.
const POLL: Duration = Duration::from_millis(20);

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
/// Every network namespace's loopback device.
const LOOPBACK_IFINDEX: i32 = 1;

/// A capture of the TCP segments that reach a network namespace, running
/// until [`Capture::finish`] (or its drop).
#[derive(Debug)]
pub struct Capture {
    kept: Arc<Mutex<Kept>>,
}

/// What the capture's thread keeps; `stopped` ends it.
#[derive(Debug, Default)]
struct Kept {
    packets: Vec<Vec<u8>>,
    bytes: usize,
    stopped: bool,
}

impl Capture {
    /// Starts capturing in the network namespace of `pid`.
    pub fn start(pid: i32) -> Result<Self> {
        let sock = in_netns(pid, packet_socket)?;
        let kept = Arc::new(Mutex::new(Kept::default()));
        let shared = kept.clone();
        std::thread::Builder::new()
            .name("phaul-replay".into())
            .spawn(move || read_until(&sock, &shared))
            .map_err(|source| io("starting the replay capture", source))?;
        Ok(Self { kept })
    }

    /// Stops, and returns the IP packets kept, oldest first. At once: it is
    /// on the way to the commit, and the thread notices within one poll.
    pub fn finish(self) -> Vec<Vec<u8>> {
        let mut k = lock(&self.kept);
        k.stopped = true;
        debug!(
            packets = k.packets.len(),
            bytes = k.bytes,
            "replay capture ended"
        );
        std::mem::take(&mut k.packets)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        lock(&self.kept).stopped = true;
    }
}

fn lock(k: &Mutex<Kept>) -> std::sync::MutexGuard<'_, Kept> {
    k.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`inject`], logging the outcome rather than failing: the replay only
/// shortens a wait the client recovers from on its own.
pub fn deliver(pid: i32, packets: &[Vec<u8>]) {
    match inject(pid, packets) {
        Ok(n) if n > 0 => debug!(pid, sent = n, "replayed what the lock dropped"),
        Ok(_) => {}
        Err(e) => warn!(pid, error = %e, "could not replay what the lock dropped"),
    }
}

/// Sends `packets` (IPv4 or IPv6 TCP segments, as [`Capture`] kept them)
/// into the network namespace of `pid`, each to its own destination, which
/// must be an address of that namespace; returns how many were sent.
pub fn inject(pid: i32, packets: &[Vec<u8>]) -> Result<usize> {
    if packets.is_empty() {
        return Ok(0);
    }
    let (v4, v6, local) = in_netns(pid, || {
        let local = local_destinations(packets);
        Ok((
            raw_socket(libc::AF_INET)?,
            raw_socket(libc::AF_INET6)?,
            local,
        ))
    })?;
    let mut sent = 0;
    for (p, local) in packets.iter().zip(local) {
        let Some(len) = tcp_len(p) else {
            continue;
        };
        if !local {
            // A raw socket would route it out of the namespace with the
            // client's source address: a peer's garbage, or a copy whose
            // address changed.
            debug!("a replayed segment is not for this namespace: not sent");
            continue;
        }
        let mut p = p[..len].to_vec();
        fix_tcp_checksum(&mut p);
        let r = match p[0] >> 4 {
            4 => send_v4(&v4, &p),
            _ => send_v6(&v6, &p),
        };
        match r {
            Ok(()) => sent += 1,
            Err(e) => debug!(error = %e, "a replayed segment was not sent"),
        }
    }
    Ok(sent)
}

/// For each of `packets`, whether it is a segment [`tcp_len`] accepts for
/// an address of this thread's network namespace: one a socket can bind.
fn local_destinations(packets: &[Vec<u8>]) -> Vec<bool> {
    let mut known = std::collections::HashMap::new();
    packets
        .iter()
        .map(|p| {
            let Some(dst) = tcp_len(p).and_then(|_| destination(p)) else {
                return false;
            };
            *known.entry(dst).or_insert_with(|| {
                std::net::UdpSocket::bind(std::net::SocketAddr::new(dst, 0)).is_ok()
            })
        })
        .collect()
}

/// The destination address of an IPv4 or IPv6 packet [`tcp_len`] accepted.
fn destination(p: &[u8]) -> Option<std::net::IpAddr> {
    match p[0] >> 4 {
        4 => <[u8; 4]>::try_from(&p[16..20])
            .ok()
            .map(std::net::IpAddr::from),
        _ => <[u8; 16]>::try_from(&p[24..40])
            .ok()
            .map(std::net::IpAddr::from),
    }
}

fn io(what: &str, source: std::io::Error) -> Error {
    Error::Io {
        what: what.into(),
        source,
    }
}

/// Runs `f` on a thread of its own in the network namespace of `pid`:
/// sockets made there stay in it.
fn in_netns<T: Send>(pid: i32, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|source| io(&format!("opening the network namespace of {pid}"), source))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // Only this thread's namespace changes, and it ends with the scope.
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                io(
                    &format!("entering the network namespace of {pid}"),
                    e.into(),
                )
            })?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Protocol("the namespace thread panicked".into())))
    })
}

fn socket(domain: i32, ty: i32, proto: i32, what: &str) -> Result<OwnedFd> {
    // SAFETY: socket takes plain integers and returns a new fd or -1.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io(what, std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A cooked packet socket on every interface: frames arrive without their
/// link header, their protocol and direction in the address.
fn packet_socket() -> Result<OwnedFd> {
    let fd = socket(
        libc::AF_PACKET,
        libc::SOCK_DGRAM,
        i32::from(ETH_P_ALL.to_be()),
        "opening a packet socket for the replay",
    )?;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: libc::suseconds_t::try_from(POLL.as_micros()).unwrap_or(20_000),
    };
    // SAFETY: tv outlives the call, and its size is what is passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&tv).cast(),
            socklen::<libc::timeval>(),
        )
    };
    if r != 0 {
        return Err(io(
            "timing the replay capture",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(fd)
}

fn raw_socket(domain: i32) -> Result<OwnedFd> {
    socket(
        domain,
        libc::SOCK_RAW,
        libc::IPPROTO_RAW,
        "opening a raw socket for the replay",
    )
}

fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(0)
}

fn read_until(sock: &OwnedFd, kept: &Mutex<Kept>) {
    let mut buf = vec![0u8; 65536];
    while !lock(kept).stopped {
        // SAFETY: an all-zero sockaddr_ll is valid.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = socklen::<libc::sockaddr_ll>();
        // SAFETY: buf and from are valid for the lengths passed.
        let n = unsafe {
            libc::recvfrom(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                std::ptr::from_mut(&mut from).cast(),
                &mut len,
            )
        };
        let Ok(n) = usize::try_from(n) else {
            continue; // the poll's timeout, or an interruption
        };
        let Some(len) = tcp_len(&buf[..n]).filter(|_| arrived(&from)) else {
            continue;
        };
        let mut k = lock(kept);
        if k.stopped || k.packets.len() >= MAX_PACKETS || k.bytes + len > MAX_BYTES {
            continue;
        }
        k.bytes += len;
        k.packets.push(buf[..len].to_vec());
    }
}

/// A frame this namespace received from outside, addressed to it.
fn arrived(from: &libc::sockaddr_ll) -> bool {
    let proto = u16::from_be(from.sll_protocol);
    from.sll_pkttype == libc::PACKET_HOST
        && from.sll_ifindex != LOOPBACK_IFINDEX
        && (proto == ETH_P_IP || proto == ETH_P_IPV6)
}

/// The IP length of `p` when it is a whole IPv4 or IPv6 TCP segment (no
/// IPv6 extension headers; a frame may carry padding past it), else `None`.
fn tcp_len(p: &[u8]) -> Option<usize> {
    match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*p.get(2)?, *p.get(3)?]));
            (ihl >= 20 && total >= ihl + 20 && total <= p.len() && p[9] == IPPROTO_TCP)
                .then_some(total)
        }
        6 => {
            let payload = usize::from(u16::from_be_bytes([*p.get(4)?, *p.get(5)?]));
            let total = 40 + payload;
            (payload >= 20 && total <= p.len() && p[6] == IPPROTO_TCP).then_some(total)
        }
        _ => None,
    }
}

/// The one's-complement sum of `data` folded to 16 bits, added to `sum`.
fn ones_sum(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// Writes the TCP checksum of a segment [`tcp_len`] accepted, cut to its
/// length: a frame taken off a veth may not carry one (the kernel leaves it
/// to the receiver's "hardware").
fn fix_tcp_checksum(p: &mut [u8]) {
    let (start, pseudo) = if p[0] >> 4 == 4 {
        let ihl = usize::from(p[0] & 0x0f) * 4;
        let len = u32::try_from(p.len() - ihl).unwrap_or(0);
        let sum = ones_sum(0, &p[12..20]) + u32::from(IPPROTO_TCP) + len;
        (ihl, sum)
    } else {
        let len = u32::try_from(p.len() - 40).unwrap_or(0);
        let sum = ones_sum(0, &p[8..40]) + u32::from(IPPROTO_TCP) + len;
        (40, sum)
    };
    p[start + 16] = 0;
    p[start + 17] = 0;
    let folded = ones_sum(pseudo, &p[start..]);
    let csum = !u16::try_from(folded).unwrap_or(0xffff);
    p[start + 16..start + 18].copy_from_slice(&csum.to_be_bytes());
}

fn send_v4(sock: &OwnedFd, p: &[u8]) -> Result<()> {
    // SAFETY: an all-zero sockaddr_in is valid.
    let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    to.sin_family = libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2);
    to.sin_addr.s_addr = u32::from_ne_bytes([p[16], p[17], p[18], p[19]]);
    send_to(sock, p, &to, "replaying an IPv4 segment")
}

fn send_v6(sock: &OwnedFd, p: &[u8]) -> Result<()> {
    // SAFETY: an all-zero sockaddr_in6 is valid.
    let mut to: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    to.sin6_family = libc::sa_family_t::try_from(libc::AF_INET6).unwrap_or(10);
    to.sin6_addr.s6_addr.copy_from_slice(&p[24..40]);
    send_to(sock, p, &to, "replaying an IPv6 segment")
}

/// `sendto` of the packet `p` to `to`, a `sockaddr_in` or `sockaddr_in6`.
fn send_to<A>(sock: &OwnedFd, p: &[u8], to: &A, what: &str) -> Result<()> {
    // SAFETY: p and to are valid for the lengths passed, and `to` is one of
    // the socket addresses its family's raw socket takes.
    let r = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            p.as_ptr().cast(),
            p.len(),
            0,
            std::ptr::from_ref(to).cast(),
            socklen::<A>(),
        )
    };
    if r < 0 {
        return Err(io(what, std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real SYN from 10.0.0.2:40000 to 10.0.0.1:6379 with its checksum.
    fn syn_v4() -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1, // IP
            0x9c, 0x40, 0x18, 0xeb, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0,
            0, // TCP
        ];
        fix_tcp_checksum(&mut p);
        p
    }

    #[test]
    fn a_checksummed_segment_sums_to_all_ones() {
        let p = syn_v4();
        let pseudo = ones_sum(0, &p[12..20]) + 6 + 20;
        assert_eq!(ones_sum(pseudo, &p[20..]), 0xffff);
        assert_ne!(&p[36..38], &[0, 0]);
    }

    #[test]
    fn a_segment_goes_only_to_an_address_of_the_namespace() {
        // Raw sockets need root.
        if !phaul_testkit::require_root("a_segment_goes_only_to_an_address_of_the_namespace") {
            return;
        }
        let to = |dst: [u8; 4]| {
            let mut p = syn_v4();
            p[12..16].copy_from_slice(&[127, 0, 0, 1]);
            p[16..20].copy_from_slice(&dst);
            p
        };
        let me = i32::try_from(std::process::id()).unwrap();
        // To this namespace's own loopback address: delivered (its closed
        // port answers with a reset, which is harmless).
        assert_eq!(inject(me, &[to([127, 0, 0, 1])]).unwrap(), 1);
        // To an address elsewhere (TEST-NET-1): never sent.
        assert_eq!(inject(me, &[to([192, 0, 2, 1])]).unwrap(), 0);
        assert_eq!(
            local_destinations(&[to([127, 0, 0, 1]), to([192, 0, 2, 1]), vec![0x45]]),
            [true, false, false]
        );
    }

    #[test]
    fn only_whole_tcp_segments_are_kept() {
        let p = syn_v4();
        assert_eq!(tcp_len(&p), Some(40));
        let mut padded = p.clone();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(tcp_len(&padded), Some(40), "the IP length, not the frame's");
        let mut udp = p.clone();
        udp[9] = 17;
        assert_eq!(tcp_len(&udp), None);
        assert_eq!(tcp_len(&p[..30]), None, "truncated");
        assert_eq!(tcp_len(&[]), None);
    }
}

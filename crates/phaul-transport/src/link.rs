//! Connections: endpoints, the handshake, and framed reads and writes.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tracing::{debug, warn};

use crate::auth::{Role, SharedKey, random, transcript};
use crate::error::{Error, FrameError, Result};
use crate::frame::{
    Frame, HEADER_LEN, HELLO_VERSION, Header, Kind, MAX_PAYLOAD, MAX_VERSION, MIN_VERSION,
    lz4_compress, lz4_decompress,
};
use crate::proto::{Auth, AuthOk, Channel, ErrorCode, Hello, HelloReply};
use crate::tls::{EXPORTER_LABEL, Identity, client_config, server_name};

/// A byte stream a link can run over.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static> Stream for T {}

/// A boxed [`Stream`].
pub type BoxStream = Pin<Box<dyn Stream>>;

/// A session's id: 16 random bytes the control channel's server picks.
pub type SessionId = [u8; 16];

/// The largest data chunk put in one frame.
pub const DATA_CHUNK: usize = 256 * 1024;
/// [`Link::refuse`] on a link's two halves.
pub async fn refuse(
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    code: ErrorCode,
    message: &str,
) {
    let _ = writer.send_error(code, message, 0).await;
    let _ = writer.shutdown().await;
    reader.drain(REFUSE_GRACE).await;
}

/// How long [`Link::refuse`] drains the peer at most.
pub const REFUSE_GRACE: Duration = Duration::from_secs(2);
/// A peer that sent nothing for this long has stopped sending.
pub const DRAIN_QUIET: Duration = Duration::from_millis(50);
/// The frame reader's buffer: about one TLS record.
const READ_BUFFER: usize = 16 * 1024;

/// Where to connect, or listen.
#[derive(Debug)]
pub enum Endpoint {
    /// A TCP address, `host:port`.
    Tcp(String),
    /// A Unix stream socket's path.
    Unix(PathBuf),
    /// A stream socket the caller already connected (as P.Haul's
    /// `--fdrpc`/`--fdmem`/`--fdfs`), e.g. set up by an orchestrator or ssh.
    Fd(OwnedFd),
}

impl Endpoint {
    /// Parses `unix:PATH`, `fd:N` (an inherited descriptor this process
    /// then owns) or `HOST:PORT`.
    pub fn parse(s: &str) -> Result<Self> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Self::Unix(PathBuf::from(p)));
        }
        if let Some(n) = s.strip_prefix("fd:") {
            let fd: i32 = n.parse().map_err(|_| Error::Address(s.to_string()))?;
            if fd < 0
                || nix::fcntl::fcntl(unsafe_borrow(fd), nix::fcntl::FcntlArg::F_GETFD).is_err()
            {
                return Err(Error::Address(format!("{s}: not an open descriptor")));
            }
            // SAFETY: the caller names an fd it inherited for us and hands it
            // over by naming it; we checked it is open.
            return Ok(Self::Fd(unsafe {
                <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
            }));
        }
        if s.rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(Error::Address(s.to_string()));
        }
        Ok(Self::Tcp(s.to_string()))
    }
}

fn unsafe_borrow(fd: i32) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: only used for an F_GETFD probe of a number the caller gave;
    // the kernel answers EBADF if it is not open.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

async fn open_stream(ep: Endpoint) -> Result<BoxStream> {
    Ok(match ep {
        Endpoint::Tcp(addr) => {
            let s = tokio::net::TcpStream::connect(&addr).await?;
            s.set_nodelay(true)?;
            Box::pin(s)
        }
        Endpoint::Unix(p) => Box::pin(tokio::net::UnixStream::connect(&p).await?),
        Endpoint::Fd(fd) => fd_stream(fd)?,
    })
}

/// Wraps a connected stream socket of any family (read and write are the
/// same calls for TCP and Unix sockets).
pub fn fd_stream(fd: OwnedFd) -> Result<BoxStream> {
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true)?;
    Ok(Box::pin(tokio::net::UnixStream::from_std(std)?))
}

/// A listening socket.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(tokio::net::TcpListener),
    /// A Unix stream socket.
    Unix(tokio::net::UnixListener),
}

impl Listener {
    /// Binds `addr` (`HOST:PORT` or `unix:PATH`).
    pub async fn bind(addr: &str) -> Result<Self> {
        match Endpoint::parse(addr)? {
            Endpoint::Tcp(a) => Ok(Self::Tcp(tokio::net::TcpListener::bind(&a).await?)),
            Endpoint::Unix(p) => Ok(Self::Unix(tokio::net::UnixListener::bind(&p)?)),
            Endpoint::Fd(_) => Err(Error::Address(format!("{addr}: cannot listen on an fd"))),
        }
    }

    /// The bound address, as `HOST:PORT` or `unix:PATH`.
    pub fn local_addr(&self) -> Result<String> {
        Ok(match self {
            Self::Tcp(l) => l.local_addr()?.to_string(),
            Self::Unix(l) => format!(
                "unix:{}",
                l.local_addr()?
                    .as_pathname()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
        })
    }

    /// Accepts one connection; the string names the peer for logs.
    pub async fn accept(&self) -> Result<(BoxStream, String)> {
        Ok(match self {
            Self::Tcp(l) => {
                let (s, a) = l.accept().await?;
                s.set_nodelay(true)?;
                (Box::pin(s), a.to_string())
            }
            Self::Unix(l) => {
                let (s, _) = l.accept().await?;
                (Box::pin(s), "unix peer".to_string())
            }
        })
    }
}

/// How links are secured and shaped.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    key: SharedKey,
    tls: bool,
    pins: Vec<[u8; 32]>,
    /// Shared by clones: a service that clones its configuration for
    /// every connection still presents one certificate.
    identity: Arc<Mutex<Option<Identity>>>,
    bandwidth: Option<u64>,
    compress: bool,
    handshake_timeout: Duration,
    max_payload: u32,
    /// The newest protocol version this side offers or accepts.
    max_version: u16,
}

impl LinkConfig {
    /// TLS on, authenticated with `key`, no bandwidth cap, no compression.
    pub fn new(key: SharedKey) -> Self {
        Self {
            key,
            tls: true,
            pins: Vec::new(),
            identity: Arc::default(),
            bandwidth: None,
            compress: false,
            handshake_timeout: Duration::from_secs(10),
            max_payload: MAX_PAYLOAD,
            max_version: MAX_VERSION,
        }
    }

    /// Offers and accepts protocol versions up to `version` only (clamped
    /// to what this build speaks, [`MIN_VERSION`] to [`MAX_VERSION`]): to
    /// behave as an older peer would, toward a peer that mishandles a newer
    /// version, or in a test of the older path.
    pub fn max_version(mut self, version: u16) -> Self {
        self.max_version = version.clamp(MIN_VERSION, MAX_VERSION);
        self
    }

    /// Turns TLS off. Only for links that are already private (a pipe set
    /// up by ssh, a test); authentication still applies.
    pub fn plaintext(mut self) -> Self {
        self.tls = false;
        self
    }

    /// Client: accept only a service certificate with this SHA-256
    /// fingerprint (may be given more than once).
    pub fn pin(mut self, fingerprint: [u8; 32]) -> Self {
        self.pins.push(fingerprint);
        self
    }

    /// Server: present this certificate (default: a self-signed one made
    /// on first use by [`LinkConfig::identity`]).
    pub fn with_identity(mut self, identity: Identity) -> Self {
        self.identity = Arc::new(Mutex::new(Some(identity)));
        self
    }

    /// The server's certificate, made now if none was set (and then the
    /// same for this configuration and all its clones).
    pub fn identity(&self) -> Result<Identity> {
        let mut id = self.identity.lock().unwrap_or_else(|e| e.into_inner());
        if id.is_none() {
            *id = Some(Identity::self_signed()?);
        }
        Ok(id.clone().expect("set above"))
    }

    /// Caps what this side sends, in bytes per second.
    pub fn bandwidth(mut self, bytes_per_sec: Option<u64>) -> Self {
        self.bandwidth = bytes_per_sec.filter(|b| *b > 0);
        self
    }

    /// Compresses stream data with lz4 (off by default: CRIU's pages are
    /// often incompressible and the CPU is better spent elsewhere).
    pub fn compress(mut self, on: bool) -> Self {
        self.compress = on;
        self
    }

    /// How long a handshake may take before the connection is dropped.
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.handshake_timeout = t;
        self
    }
}

/// A link half's `Debug`: its version (its stream has none).
fn debug_half(f: &mut std::fmt::Formatter<'_>, name: &str, version: u16) -> std::fmt::Result {
    f.debug_struct(name)
        .field("version", &version)
        .finish_non_exhaustive()
}

/// Reads frames.
pub struct FrameReader {
    inner: tokio::io::BufReader<ReadHalf<BoxStream>>,
    version: u16,
    max_payload: u32,
}

impl std::fmt::Debug for FrameReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_half(f, "FrameReader", self.version)
    }
}

impl FrameReader {
    /// Reads and drops whatever the peer still sends, until it closes, the
    /// connection fails, it has been quiet for [`DRAIN_QUIET`], or `grace`
    /// has passed. Closing a socket with unread data makes the kernel reset
    /// the connection, which can destroy frames not yet delivered to the
    /// peer: an `Error` frame just sent, most of all. See [`Link::refuse`].
    pub async fn drain(&mut self, grace: Duration) {
        let mut scratch = vec![0u8; 64 * 1024];
        let _ = tokio::time::timeout(grace, async {
            while let Ok(Ok(n)) =
                tokio::time::timeout(DRAIN_QUIET, self.inner.read(&mut scratch)).await
            {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }

    /// The next frame, checked against this link's version. A clean close
    /// between frames is [`Error::Closed`].
    pub async fn read_frame(&mut self) -> Result<Frame> {
        let mut head = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            let n = match self.inner.read(&mut head[got..]).await {
                Ok(n) => n,
                // TLS reports a peer that closed without close_notify as an
                // unexpected EOF; between frames that is just a close.
                Err(e) if got == 0 && e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Err(if got == 0 {
                    Error::Closed
                } else {
                    FrameError::Truncated {
                        got,
                        needed: HEADER_LEN,
                    }
                    .into()
                });
            }
            got += n;
        }
        let h = Header::decode(&head, self.max_payload)?;
        if h.version != self.version {
            return Err(FrameError::WrongVersion {
                got: h.version,
                expected: self.version,
            }
            .into());
        }
        let len = h.length as usize;
        // Filled by reads, never zeroed first: frames are up to 256 KiB and
        // come back to back.
        let mut payload = BytesMut::with_capacity(len);
        while payload.len() < len {
            let n = (&mut self.inner)
                .take((len - payload.len()) as u64)
                .read_buf(&mut payload)
                .await?;
            if n == 0 {
                return Err(FrameError::Truncated {
                    got: HEADER_LEN + payload.len(),
                    needed: HEADER_LEN + len,
                }
                .into());
            }
        }
        Ok(Frame {
            version: h.version,
            kind: h.kind,
            payload: payload.freeze(),
        })
    }

    /// The next frame after the handshake: handshake frames are refused
    /// here (a second hello is a protocol violation), and an `Error` frame
    /// becomes [`Error::Remote`].
    pub async fn recv(&mut self) -> Result<Frame> {
        let f = self.read_frame().await?;
        match f.kind {
            Kind::Hello | Kind::HelloReply | Kind::Auth | Kind::AuthOk => Err(Error::Protocol(
                format!("{:?} frame after the handshake", f.kind),
            )),
            Kind::Error => Err(remote_error(&f)),
            _ => Ok(f),
        }
    }

    /// The next frame, which must be of `kind`, decoded as `M`.
    pub async fn recv_msg<M: Message + Default>(&mut self, kind: Kind) -> Result<M> {
        let f = self.recv().await?;
        expect_msg(&f, kind)
    }

    /// Stream data: `Some(bytes)` for a data frame, `None` at `StreamEnd`.
    pub async fn recv_data(&mut self) -> Result<Option<Bytes>> {
        let f = self.recv().await?;
        data_of(f, self.max_payload as usize)
    }
}

pub(crate) fn data_of(f: Frame, max: usize) -> Result<Option<Bytes>> {
    match f.kind {
        Kind::Data => Ok(Some(f.payload)),
        Kind::DataLz4 => Ok(Some(Bytes::from(lz4_decompress(&f.payload, max)?))),
        Kind::StreamEnd => Ok(None),
        other => Err(Error::Protocol(format!("{other:?} frame in a data stream"))),
    }
}

pub(crate) fn expect_msg<M: Message + Default>(f: &Frame, kind: Kind) -> Result<M> {
    if f.kind != kind {
        return Err(Error::Protocol(format!(
            "expected a {kind:?} frame, got {:?}",
            f.kind
        )));
    }
    M::decode(f.payload.as_ref()).map_err(|source| Error::Decode { kind, source })
}

fn remote_error(f: &Frame) -> Error {
    match crate::proto::Error::decode(f.payload.as_ref()) {
        Ok(e) => Error::Remote {
            code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::ErrorInvalid),
            message: e.message,
        },
        Err(source) => Error::Decode {
            kind: Kind::Error,
            source,
        },
    }
}

/// Writes frames.
pub struct FrameWriter {
    inner: WriteHalf<BoxStream>,
    version: u16,
    compress: bool,
    limiter: Option<RateLimiter>,
}

impl std::fmt::Debug for FrameWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_half(f, "FrameWriter", self.version)
    }
}

impl FrameWriter {
    /// The header of a frame of `kind` carrying `payload`, which must fit
    /// in one.
    fn header(&self, kind: Kind, payload: &[u8]) -> Result<Header> {
        let length = u32::try_from(payload.len())
            .ok()
            .filter(|l| *l <= MAX_PAYLOAD)
            .ok_or(FrameError::TooLarge {
                length: u32::MAX,
                max: MAX_PAYLOAD,
            })?;
        Ok(Header {
            version: self.version,
            kind,
            length,
        })
    }

    /// Writes one frame and flushes it.
    pub async fn write_frame(&mut self, kind: Kind, payload: &[u8]) -> Result<()> {
        let mut head = BytesMut::with_capacity(HEADER_LEN);
        self.header(kind, payload)?.encode(&mut head);
        // Header and payload in one vectored write where the stream allows,
        // so the header never goes out as a packet of its own.
        let (mut h, mut p) = (&head[..], payload);
        while !h.is_empty() || !p.is_empty() {
            let bufs = [std::io::IoSlice::new(h), std::io::IoSlice::new(p)];
            let n = self.inner.write_vectored(&bufs).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
            }
            let from_h = n.min(h.len());
            h = &h[from_h..];
            p = &p[n - from_h..];
        }
        self.inner.flush().await?;
        if let Some(l) = self.limiter.as_mut() {
            l.account(HEADER_LEN + payload.len()).await;
        }
        Ok(())
    }

    /// Writes `frames` (each a kind and a payload) with one write and one
    /// flush: a run of small frames costs one write (one TLS record, one
    /// wake-up of the peer), not one each. The payloads are copied: meant
    /// for small ones; a large payload is better sent by
    /// [`FrameWriter::write_frame`].
    pub async fn write_frames(&mut self, frames: &[(Kind, &[u8])]) -> Result<()> {
        let total: usize = frames.iter().map(|(_, p)| HEADER_LEN + p.len()).sum();
        let mut buf = BytesMut::with_capacity(total);
        for (kind, payload) in frames {
            self.header(*kind, payload)?.encode(&mut buf);
            buf.extend_from_slice(payload);
        }
        self.inner.write_all(&buf).await?;
        self.inner.flush().await?;
        if let Some(l) = self.limiter.as_mut() {
            l.account(total).await;
        }
        Ok(())
    }

    /// The frame a chunk of stream bytes (at most [`DATA_CHUNK`]) goes out
    /// in: `DataLz4` where the link compresses and that is smaller, else
    /// `Data`.
    pub fn data_frame<'a>(&self, chunk: &'a [u8]) -> (Kind, std::borrow::Cow<'a, [u8]>) {
        if self.compress {
            let c = lz4_compress(chunk);
            if c.len() < chunk.len() {
                return (Kind::DataLz4, c.into());
            }
        }
        (Kind::Data, chunk.into())
    }

    /// Writes a message as a frame of `kind`.
    pub async fn send<M: Message>(&mut self, kind: Kind, msg: &M) -> Result<()> {
        self.write_frame(kind, &msg.encode_to_vec()).await
    }

    /// Sends stream bytes, in chunks, compressed if the link compresses and
    /// it helps.
    pub async fn send_data(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let n = data.len().min(DATA_CHUNK);
            let (chunk, rest) = data.split_at(n);
            let (kind, payload) = self.data_frame(chunk);
            self.write_frame(kind, &payload).await?;
            data = rest;
        }
        Ok(())
    }

    /// Ends this direction of a byte stream.
    pub async fn send_end(&mut self) -> Result<()> {
        self.send(Kind::StreamEnd, &crate::proto::StreamEnd {})
            .await
    }

    /// Sends an `Error` frame.
    pub async fn send_error(
        &mut self,
        code: ErrorCode,
        message: &str,
        request_id: u64,
    ) -> Result<()> {
        let e = crate::proto::Error {
            code: code as i32,
            message: message.to_string(),
            request_id,
        };
        self.send(Kind::Error, &e).await
    }

    /// Shuts the write side down (after the last frame).
    pub async fn shutdown(&mut self) -> Result<()> {
        self.inner.shutdown().await?;
        Ok(())
    }
}

/// Paces writes to a byte rate.
#[derive(Debug)]
struct RateLimiter {
    rate: u64,
    next: Instant,
}

impl RateLimiter {
    async fn account(&mut self, bytes: usize) {
        let now = Instant::now();
        // Credit never accumulates beyond the present: a link idle for a
        // minute does not then get to burst a minute's worth.
        if self.next < now {
            self.next = now;
        }
        self.next += Duration::from_secs_f64(bytes as f64 / self.rate as f64);
        if self.next > now {
            tokio::time::sleep_until(self.next.into()).await;
        }
    }
}

/// An authenticated, framed connection of one channel.
#[derive(Debug)]
pub struct Link {
    /// Reading half.
    pub reader: FrameReader,
    /// Writing half.
    pub writer: FrameWriter,
    channel: Channel,
    session: SessionId,
    peer: String,
}

impl Link {
    /// Which channel this is.
    pub fn channel(&self) -> Channel {
        self.channel
    }

    /// The session it belongs to.
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// The peer, for logs.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The negotiated protocol version.
    pub fn version(&self) -> u16 {
        self.writer.version
    }

    /// Refuses the rest of what the peer is sending: an `Error` frame, then
    /// the write side closed, then the peer's bytes read and dropped until it
    /// stops sending or hangs up (at most [`REFUSE_GRACE`]), so that the
    /// error reaches it instead of a connection reset. Best effort: the link is done either
    /// way.
    pub async fn refuse(&mut self, code: ErrorCode, message: &str) {
        refuse(&mut self.reader, &mut self.writer, code, message).await;
    }

    /// Splits into its halves (to read and write from different tasks).
    pub fn into_split(self) -> (FrameReader, FrameWriter) {
        (self.reader, self.writer)
    }

    /// Connects to a service and authenticates: a control channel when
    /// `session` is `None`, else `channel` joining that session.
    pub fn connect(
        endpoint: Endpoint,
        cfg: &LinkConfig,
        channel: Channel,
        session: Option<SessionId>,
    ) -> impl Future<Output = Result<Self>> + Send + 'static {
        let peer = format!("{endpoint:?}");
        let open = async move { open_stream(endpoint).await };
        let doing = "connecting and authenticating";
        Self::client(open, cfg, channel, session, peer, doing)
    }

    /// Runs the client side over a stream the caller opened.
    pub fn connect_stream(
        raw: BoxStream,
        cfg: &LinkConfig,
        channel: Channel,
        session: Option<SessionId>,
    ) -> impl Future<Output = Result<Self>> + Send + 'static {
        let open = std::future::ready(Ok(raw));
        Self::client(
            open,
            cfg,
            channel,
            session,
            "stream".into(),
            "authenticating",
        )
    }

    /// Opens a stream with `open` and runs the client side over it, both
    /// within the handshake's time (else [`Error::Timeout`] of `doing`).
    fn client(
        open: impl Future<Output = Result<BoxStream>> + Send + 'static,
        cfg: &LinkConfig,
        channel: Channel,
        session: Option<SessionId>,
        peer: String,
        doing: &'static str,
    ) -> impl Future<Output = Result<Self>> + Send + 'static {
        // The configuration is cloned (it is a few Arcs) so the future
        // borrows nothing and can be spawned.
        let cfg = cfg.clone();
        async move {
            let fut = async {
                let raw = open.await?;
                client_handshake(raw, &cfg, channel, session, peer).await
            };
            tokio::time::timeout(cfg.handshake_timeout, fut)
                .await
                .map_err(|_| Error::Timeout(doing))?
        }
    }

    /// Runs the server side over an accepted stream. The peer has proved it
    /// holds the key when this returns; a data channel's session is the
    /// caller's to check (answer [`ErrorCode::UnknownSession`] if unknown).
    pub async fn accept(raw: BoxStream, peer: String, cfg: &LinkConfig) -> Result<Self> {
        let identity = if cfg.tls { Some(cfg.identity()?) } else { None };
        let res = tokio::time::timeout(
            cfg.handshake_timeout,
            server_handshake(raw, cfg, identity, peer.clone()),
        )
        .await
        .map_err(|_| Error::Timeout("the peer's handshake"));
        let res = res.and_then(|r| r);
        if let Err(e) = &res {
            warn!(%peer, error = %e, "dropped a peer that failed the handshake");
        }
        res
    }
}

fn halves(stream: BoxStream, version: u16, cfg: &LinkConfig) -> (FrameReader, FrameWriter) {
    let (r, w) = tokio::io::split(stream);
    (
        // Buffered so that a 12-byte header costs no system call of its own,
        // but small: a payload read larger than the buffer bypasses it when
        // it is empty, so bulk data is copied once, not twice.
        FrameReader {
            inner: tokio::io::BufReader::with_capacity(READ_BUFFER, r),
            version,
            max_payload: cfg.max_payload,
        },
        FrameWriter {
            inner: w,
            version,
            compress: cfg.compress,
            limiter: cfg.bandwidth.map(|rate| RateLimiter {
                rate,
                next: Instant::now(),
            }),
        },
    )
}

async fn client_handshake(
    raw: BoxStream,
    cfg: &LinkConfig,
    channel: Channel,
    session: Option<SessionId>,
    peer: String,
) -> Result<Link> {
    let (stream, binding): (BoxStream, Vec<u8>) = if cfg.tls {
        let connector = tokio_rustls::TlsConnector::from(client_config(&cfg.pins)?);
        let tls = connector
            .connect(server_name(), raw)
            .await
            .map_err(|e| tls_error(e, "server"))?;
        let b = tls_binding(&**tls.get_ref().1)?;
        (Box::pin(tls), b)
    } else {
        (raw, Vec::new())
    };
    let (mut rd, mut wr) = halves(stream, HELLO_VERSION, cfg);

    let hello = Hello {
        min_version: u32::from(MIN_VERSION),
        max_version: u32::from(cfg.max_version),
        channel: channel as i32,
        nonce: random(32),
        session: session.map(|s| s.to_vec()).unwrap_or_default(),
        software: concat!("phaul ", env!("CARGO_PKG_VERSION")).to_string(),
    };
    let hello_bytes = hello.encode_to_vec();
    wr.write_frame(Kind::Hello, &hello_bytes).await?;
    let f = rd.read_frame().await?;
    if f.kind == Kind::Error {
        return Err(remote_error(&f));
    }
    let reply: HelloReply = expect_msg(&f, Kind::HelloReply)?;
    let version = u16::try_from(reply.version)
        .ok()
        .filter(|v| (MIN_VERSION..=cfg.max_version).contains(v))
        .ok_or(Error::Version {
            ours_min: MIN_VERSION,
            ours_max: cfg.max_version,
            theirs_min: reply.version,
            theirs_max: reply.version,
        })?;
    let sid: SessionId = reply
        .session
        .as_slice()
        .try_into()
        .map_err(|_| Error::Protocol("the server's session id is not 16 bytes".into()))?;
    if let Some(s) = session {
        if s != sid {
            return Err(Error::Protocol(
                "the server answered for another session".into(),
            ));
        }
    }
    let t = transcript(&[&hello_bytes, &f.payload, &binding]);
    rd.version = version;
    wr.version = version;
    wr.send(
        Kind::Auth,
        &Auth {
            proof: cfg.key.prove(Role::Client, &t),
        },
    )
    .await?;
    let f = rd.read_frame().await?;
    if f.kind == Kind::Error {
        return Err(match remote_error(&f) {
            Error::Remote {
                code: ErrorCode::AuthFailed,
                message,
            } => Error::AuthFailed(message),
            other => other,
        });
    }
    let ok: AuthOk = expect_msg(&f, Kind::AuthOk)?;
    if !cfg.key.verify(Role::Server, &t, &ok.proof) {
        return Err(Error::AuthFailed(
            "the service could not prove it holds the key".into(),
        ));
    }
    debug!(%peer, ?channel, version, "link authenticated");
    Ok(Link {
        reader: rd,
        writer: wr,
        channel,
        session: sid,
        peer,
    })
}

async fn server_handshake(
    raw: BoxStream,
    cfg: &LinkConfig,
    identity: Option<Identity>,
    peer: String,
) -> Result<Link> {
    let (stream, binding): (BoxStream, Vec<u8>) = match identity {
        Some(id) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(id.server_config()?);
            let tls = acceptor
                .accept(raw)
                .await
                .map_err(|e| tls_error(e, "client"))?;
            let b = tls_binding(&**tls.get_ref().1)?;
            (Box::pin(tls), b)
        }
        None => (raw, Vec::new()),
    };
    let (mut rd, mut wr) = halves(stream, HELLO_VERSION, cfg);
    match server_steps(&mut rd, &mut wr, cfg, &binding).await {
        Ok((channel, session)) => {
            debug!(%peer, ?channel, "peer authenticated");
            Ok(Link {
                reader: rd,
                writer: wr,
                channel,
                session,
                peer,
            })
        }
        Err((code, e)) => {
            // Tell the peer why before dropping it.
            if e.worth_reporting() {
                refuse(&mut rd, &mut wr, code, &e.to_string()).await;
            }
            Err(e)
        }
    }
}

/// The client's next handshake frame, which must be of `kind` (any other
/// arrived before `step`): the frame and its message, or the code to
/// refuse the peer with.
async fn handshake_msg<M: Message + Default>(
    rd: &mut FrameReader,
    kind: Kind,
    step: &str,
) -> std::result::Result<(Frame, M), (ErrorCode, Error)> {
    let f = rd
        .read_frame()
        .await
        .map_err(|e| (ErrorCode::Protocol, e))?;
    if f.kind != kind {
        let e = Error::Protocol(format!("{:?} frame before {step}", f.kind));
        return Err((ErrorCode::Protocol, e));
    }
    let m = expect_msg(&f, kind).map_err(|e| (ErrorCode::Protocol, e))?;
    Ok((f, m))
}

/// The server's half of the handshake; an error carries the code to send.
async fn server_steps(
    rd: &mut FrameReader,
    wr: &mut FrameWriter,
    cfg: &LinkConfig,
    binding: &[u8],
) -> std::result::Result<(Channel, SessionId), (ErrorCode, Error)> {
    let proto = |m: String| (ErrorCode::Protocol, Error::Protocol(m));
    let (f, hello): (_, Hello) = handshake_msg(rd, Kind::Hello, "the hello").await?;
    let lo = hello.min_version.max(u32::from(MIN_VERSION));
    let hi = hello.max_version.min(u32::from(cfg.max_version));
    if lo > hi {
        return Err((
            ErrorCode::Version,
            Error::Version {
                ours_min: MIN_VERSION,
                ours_max: cfg.max_version,
                theirs_min: hello.min_version,
                theirs_max: hello.max_version,
            },
        ));
    }
    let version = u16::try_from(hi).unwrap_or(cfg.max_version);
    let channel = Channel::try_from(hello.channel)
        .ok()
        .filter(|c| *c != Channel::Invalid)
        .ok_or_else(|| proto(format!("unknown channel {}", hello.channel)))?;
    if hello.nonce.len() != 32 {
        return Err(proto("the nonce is not 32 bytes".into()));
    }
    if channel == Channel::Manage && version < crate::frame::MANAGE_VERSION {
        return Err((
            ErrorCode::Version,
            Error::Version {
                ours_min: crate::frame::MANAGE_VERSION,
                ours_max: MAX_VERSION,
                theirs_min: hello.min_version,
                theirs_max: hello.max_version,
            },
        ));
    }
    // A controller's link, like a migration's control channel, starts a
    // session of its own.
    let session: SessionId = if matches!(channel, Channel::Control | Channel::Manage) {
        if !hello.session.is_empty() {
            return Err(proto("a control channel names a session".into()));
        }
        random(16).try_into().expect("16 bytes")
    } else {
        hello
            .session
            .as_slice()
            .try_into()
            .map_err(|_| proto("a data channel without a 16-byte session".into()))?
    };
    let reply = HelloReply {
        version: u32::from(version),
        nonce: random(32),
        session: session.to_vec(),
    };
    let reply_bytes = reply.encode_to_vec();
    wr.write_frame(Kind::HelloReply, &reply_bytes)
        .await
        .map_err(|e| (ErrorCode::Protocol, e))?;
    rd.version = version;
    wr.version = version;

    let t = transcript(&[&f.payload, &reply_bytes, binding]);
    let (_, auth): (_, Auth) = handshake_msg(rd, Kind::Auth, "authentication").await?;
    if !cfg.key.verify(Role::Client, &t, &auth.proof) {
        return Err((
            ErrorCode::AuthFailed,
            Error::AuthFailed("the peer does not hold the key".into()),
        ));
    }
    wr.send(
        Kind::AuthOk,
        &AuthOk {
            proof: cfg.key.prove(Role::Server, &t),
        },
    )
    .await
    .map_err(|e| (ErrorCode::Protocol, e))?;
    Ok((channel, session))
}

/// What both ends' key proofs are bound to under TLS: 32 bytes of keying
/// material exported from the session, the same on both ends of it only.
fn tls_binding<D>(conn: &rustls::ConnectionCommon<D>) -> Result<Vec<u8>> {
    let mut b = vec![0u8; 32];
    conn.export_keying_material(&mut b[..], EXPORTER_LABEL, None)?;
    Ok(b)
}

fn tls_error(e: std::io::Error, side: &str) -> Error {
    if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        if matches!(inner, rustls::Error::InvalidCertificate(_)) {
            return Error::AuthFailed(format!(
                "the {side}'s TLS certificate is not the pinned one"
            ));
        }
        return Error::Tls(inner.clone());
    }
    Error::Io(e)
}

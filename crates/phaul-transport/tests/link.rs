//! The link over real sockets: who gets in, who is refused, and what a
//! malformed or out-of-order peer gets.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use phaul_transport::frame::{
    HEADER_LEN, Header, Kind, MAGIC, MAX_PAYLOAD, MAX_VERSION, MIN_VERSION,
};
use phaul_transport::proto::{self, Hello, Request, request, response};
use phaul_transport::{
    Channel, ControlClient, ControlServer, Endpoint, Error, ErrorCode, Identity, Link, LinkConfig,
    Listener, RelayOptions, SharedKey, relay, relay_parts,
};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &[u8] = b"a shared secret of 32 bytes here";

fn cfg() -> LinkConfig {
    LinkConfig::new(SharedKey::new(KEY).unwrap()).handshake_timeout(Duration::from_secs(5))
}

/// A link pair over loopback TCP: the service's end, then the client's.
async fn pair(
    server: LinkConfig,
    client: &LinkConfig,
    channel: Channel,
    sid: Option<[u8; 16]>,
) -> (Link, Link) {
    let l = Listener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (s, c) = tokio::join!(
        serve_one(&l, server),
        Link::connect(Endpoint::Tcp(addr), client, channel, sid)
    );
    (s.unwrap(), c.unwrap())
}

/// Accepts one connection on `listener` and runs the server handshake.
async fn serve_one(listener: &Listener, cfg: LinkConfig) -> Result<Link, Error> {
    let (s, peer) = listener.accept().await?;
    Link::accept(s, peer, &cfg).await
}

async fn ping(client: &mut ControlClient, server: &mut ControlServer) {
    let c = client.call(request::Body::Ping(proto::Ping {
        payload: b"hi".to_vec(),
    }));
    let s = async {
        let (id, body) = server.next().await.unwrap().unwrap();
        let request::Body::Ping(p) = body else {
            panic!("not a ping")
        };
        server
            .reply(id, response::Body::Pong(proto::Pong { payload: p.payload }))
            .await
            .unwrap();
    };
    let (r, ()) = tokio::join!(c, s);
    match r.unwrap() {
        response::Body::Pong(p) => assert_eq!(p.payload, b"hi"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_right_key_works_over_tcp_with_tls() {
    let (s, c) = pair(cfg(), &cfg(), Channel::Control, None).await;
    assert_eq!(s.session(), c.session());
    assert_eq!(s.channel(), Channel::Control);
    assert_eq!(c.version(), MAX_VERSION);
    ping(&mut ControlClient::new(c), &mut ControlServer::new(s)).await;
}

#[tokio::test]
async fn either_side_can_hold_the_version_down() {
    let (s, c) = pair(cfg(), &cfg().max_version(4), Channel::Control, None).await;
    assert_eq!((s.version(), c.version()), (4, 4));
    ping(&mut ControlClient::new(c), &mut ControlServer::new(s)).await;
    let (s, c) = pair(cfg().max_version(3), &cfg(), Channel::Control, None).await;
    assert_eq!((s.version(), c.version()), (3, 3));
    // Clamped to what this build speaks.
    let (s, c) = pair(
        cfg().max_version(0),
        &cfg().max_version(99),
        Channel::Control,
        None,
    )
    .await;
    assert_eq!(
        (s.version(), c.version()),
        (
            phaul_transport::frame::MIN_VERSION,
            phaul_transport::frame::MIN_VERSION
        )
    );
}

#[tokio::test]
async fn the_right_key_works_over_a_unix_socket_and_data_channels_join_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phaul.sock");
    let l = Listener::bind(&format!("unix:{}", path.display()))
        .await
        .unwrap();
    let (s, c) = tokio::join!(
        serve_one(&l, cfg()),
        Link::connect(Endpoint::Unix(path.clone()), &cfg(), Channel::Control, None)
    );
    let (s, c) = (s.unwrap(), c.unwrap());
    let session = c.session();
    let (ds, dc) = tokio::join!(
        serve_one(&l, cfg()),
        Link::connect(Endpoint::Unix(path), &cfg(), Channel::Pages, Some(session))
    );
    let (ds, dc) = (ds.unwrap(), dc.unwrap());
    assert_eq!(ds.channel(), Channel::Pages);
    assert_eq!(ds.session(), session);
    assert_eq!(dc.session(), session);
    ping(&mut ControlClient::new(c), &mut ControlServer::new(s)).await;
}

#[tokio::test]
async fn the_right_key_works_over_preconnected_fds() {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let server = async {
        let stream = phaul_transport::link::fd_stream(a.into()).unwrap();
        Link::accept(stream, "fd".into(), &cfg()).await
    };
    let client = Link::connect(Endpoint::Fd(b.into()), &cfg(), Channel::Control, None);
    let (s, c) = tokio::join!(server, client);
    ping(
        &mut ControlClient::new(c.unwrap()),
        &mut ControlServer::new(s.unwrap()),
    )
    .await;
}

#[tokio::test]
async fn plaintext_must_be_asked_for_on_both_ends_and_still_authenticates() {
    let l = Listener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (s, c) = tokio::join!(
        serve_one(&l, cfg().plaintext()),
        Link::connect(
            Endpoint::Tcp(addr.clone()),
            &cfg().plaintext(),
            Channel::Control,
            None
        )
    );
    ping(
        &mut ControlClient::new(c.unwrap()),
        &mut ControlServer::new(s.unwrap()),
    )
    .await;

    // A plaintext client against a TLS service is refused.
    let (s, c) = tokio::join!(
        serve_one(&l, cfg()),
        Link::connect(
            Endpoint::Tcp(addr.clone()),
            &cfg().plaintext(),
            Channel::Control,
            None
        )
    );
    assert!(s.is_err());
    assert!(c.is_err());

    // A plaintext client with the wrong key is refused all the same.
    let wrong =
        LinkConfig::new(SharedKey::new(b"another secret, 32 bytes long!!!").unwrap()).plaintext();
    let (s, c) = tokio::join!(
        serve_one(&l, cfg().plaintext()),
        Link::connect(Endpoint::Tcp(addr), &wrong, Channel::Control, None)
    );
    assert!(matches!(s, Err(Error::AuthFailed(_))), "{s:?}");
    assert!(matches!(c, Err(Error::AuthFailed(_))), "{c:?}");
}

#[tokio::test]
async fn a_wrong_key_is_refused_on_both_sides() {
    let l = Listener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let wrong = LinkConfig::new(SharedKey::new(b"another secret, 32 bytes long!!!").unwrap());
    let (s, c) = tokio::join!(
        serve_one(&l, cfg()),
        Link::connect(Endpoint::Tcp(addr), &wrong, Channel::Control, None)
    );
    assert!(matches!(s, Err(Error::AuthFailed(_))), "{s:?}");
    assert!(matches!(c, Err(Error::AuthFailed(_))), "{c:?}");
}

#[tokio::test]
async fn clones_of_a_service_config_present_one_certificate() {
    // A service clones its configuration for every connection; the
    // certificate it makes on first use must be the same for all of them,
    // or a client could never pin it.
    let service = cfg();
    let pinned = cfg().pin(service.identity().unwrap().fingerprint());
    let l = Listener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    for _ in 0..3 {
        let (s, c) = tokio::join!(
            serve_one(&l, service.clone()),
            Link::connect(Endpoint::Tcp(addr.clone()), &pinned, Channel::Control, None)
        );
        assert!(s.is_ok() && c.is_ok(), "{s:?} {c:?}");
    }
}

#[tokio::test]
async fn a_pinned_certificate_is_required_when_pinned() {
    let l = Listener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let id = Identity::self_signed().unwrap();
    let other = Identity::self_signed().unwrap();

    let (s, c) = tokio::join!(
        serve_one(&l, cfg().with_identity(id.clone())),
        Link::connect(
            Endpoint::Tcp(addr.clone()),
            &cfg().pin(id.fingerprint()),
            Channel::Control,
            None
        )
    );
    assert!(s.is_ok() && c.is_ok());

    let (s, c) = tokio::join!(
        serve_one(&l, cfg().with_identity(id)),
        Link::connect(
            Endpoint::Tcp(addr),
            &cfg().pin(other.fingerprint()),
            Channel::Control,
            None
        )
    );
    assert!(s.is_err());
    assert!(matches!(c, Err(Error::AuthFailed(_))), "{c:?}");
}

/// A raw (plaintext) client: what the server does with frames a real client
/// would never send.
async fn raw_exchange(bytes: Vec<u8>) -> (Result<Link, Error>, Vec<u8>) {
    let l = Listener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let client = async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        // Half-close: what was written is all there is.
        s.shutdown().await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
        answer
    };
    tokio::join!(serve_one(&l, cfg().plaintext()), client)
}

fn raw_frame(version: u16, kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u32_le(MAGIC);
    b.put_u16_le(version);
    b.put_u16_le(kind);
    b.put_u32_le(payload.len() as u32);
    b.extend_from_slice(payload);
    b.to_vec()
}

/// A hello offering every version this build speaks, in a frame of
/// `version`.
fn hello_frame(version: u16) -> Vec<u8> {
    raw_frame(
        version,
        Kind::Hello as u16,
        &hello(MIN_VERSION.into(), MAX_VERSION.into()),
    )
}

fn hello(min: u32, max: u32) -> Vec<u8> {
    Hello {
        min_version: min,
        max_version: max,
        channel: Channel::Control as i32,
        nonce: vec![7; 32],
        session: vec![],
        software: "test".into(),
    }
    .encode_to_vec()
}

/// The error code in the server's answer, if it sent an Error frame (after
/// any HelloReply).
fn error_code_in(answer: &[u8]) -> Option<ErrorCode> {
    let mut rest = answer;
    while rest.len() >= HEADER_LEN {
        let h = Header::decode(rest[..HEADER_LEN].try_into().unwrap(), MAX_PAYLOAD).ok()?;
        let end = HEADER_LEN + h.length as usize;
        if h.kind == Kind::Error {
            let e = proto::Error::decode(&rest[HEADER_LEN..end]).ok()?;
            return ErrorCode::try_from(e.code).ok();
        }
        rest = &rest[end..];
    }
    None
}

#[tokio::test]
async fn a_message_before_authentication_is_refused() {
    // A request instead of a hello.
    let req = Request {
        id: 1,
        body: Some(request::Body::Ping(proto::Ping::default())),
    };
    let (s, answer) = raw_exchange(raw_frame(1, Kind::Request as u16, &req.encode_to_vec())).await;
    assert!(matches!(s, Err(Error::Protocol(_))), "{s:?}");
    assert_eq!(error_code_in(&answer), Some(ErrorCode::Protocol));

    // A hello, then a request instead of the proof.
    let mut bytes = hello_frame(1);
    bytes.extend(raw_frame(
        MAX_VERSION,
        Kind::Request as u16,
        &req.encode_to_vec(),
    ));
    let (s, answer) = raw_exchange(bytes).await;
    assert!(matches!(s, Err(Error::Protocol(_))), "{s:?}");
    assert_eq!(error_code_in(&answer), Some(ErrorCode::Protocol));

    // Two hellos.
    let mut bytes = hello_frame(1);
    // (the second in the negotiated version, so that it is read as a frame)
    bytes.extend(hello_frame(MAX_VERSION));
    let (s, answer) = raw_exchange(bytes).await;
    assert!(matches!(s, Err(Error::Protocol(_))), "{s:?}");
    assert_eq!(error_code_in(&answer), Some(ErrorCode::Protocol));
}

#[tokio::test]
async fn an_unknown_version_is_refused() {
    let (s, answer) = raw_exchange(raw_frame(1, Kind::Hello as u16, &hello(7, 9))).await;
    assert!(
        matches!(
            s,
            Err(Error::Version {
                theirs_min: 7,
                theirs_max: 9,
                ..
            })
        ),
        "{s:?}"
    );
    assert_eq!(error_code_in(&answer), Some(ErrorCode::Version));
    // A header claiming version 0 is malformed on its face.
    let (s, _) = raw_exchange(hello_frame(0)).await;
    assert!(
        matches!(
            s,
            Err(Error::Frame(phaul_transport::FrameError::BadVersion(0)))
        ),
        "{s:?}"
    );
}

#[tokio::test]
async fn garbage_unknown_kinds_oversize_and_truncated_frames_are_refused() {
    let (s, _) = raw_exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).await;
    assert!(
        matches!(
            s,
            Err(Error::Frame(phaul_transport::FrameError::BadMagic(_)))
        ),
        "{s:?}"
    );

    let (s, _) = raw_exchange(raw_frame(1, 0, b"")).await;
    assert!(
        matches!(
            s,
            Err(Error::Frame(phaul_transport::FrameError::UnknownKind(0)))
        ),
        "{s:?}"
    );
    let (s, _) = raw_exchange(raw_frame(1, 4242, b"")).await;
    assert!(
        matches!(
            s,
            Err(Error::Frame(phaul_transport::FrameError::UnknownKind(4242)))
        ),
        "{s:?}"
    );

    let mut huge = BytesMut::new();
    Header {
        version: 1,
        kind: Kind::Hello,
        length: MAX_PAYLOAD + 1,
    }
    .encode(&mut huge);
    let (s, _) = raw_exchange(huge.to_vec()).await;
    assert!(
        matches!(
            s,
            Err(Error::Frame(phaul_transport::FrameError::TooLarge { .. }))
        ),
        "{s:?}"
    );

    let mut cut = hello_frame(1);
    cut.truncate(cut.len() - 5);
    let (s, _) = raw_exchange(cut).await;
    assert!(
        matches!(
            s,
            Err(Error::Frame(phaul_transport::FrameError::Truncated { .. }))
        ),
        "{s:?}"
    );

    // A hello whose payload is not a Hello message.
    let (s, _) = raw_exchange(raw_frame(1, Kind::Hello as u16, &[0xff; 9])).await;
    assert!(matches!(s, Err(Error::Decode { .. })), "{s:?}");

    // Garbage instead of a TLS ClientHello.
    let l = Listener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let client = async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(&[0x55; 300]).await;
    };
    let (s, ()) = tokio::join!(serve_one(&l, cfg()), client);
    assert!(s.is_err());
}

#[tokio::test]
async fn a_silent_peer_is_dropped_after_the_handshake_timeout() {
    let l = Listener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let t = std::time::Instant::now();
    let s = serve_one(&l, cfg().handshake_timeout(Duration::from_millis(300))).await;
    assert!(matches!(s, Err(Error::Timeout(_))), "{s:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_second_hello_after_authentication_is_a_protocol_violation() {
    let (mut s, mut c) = pair(cfg(), &cfg(), Channel::Control, None).await;
    c.writer
        .write_frame(Kind::Hello, &hello(MIN_VERSION.into(), MAX_VERSION.into()))
        .await
        .unwrap();
    assert!(matches!(s.reader.recv().await, Err(Error::Protocol(_))));
    // And a request out of order on the control channel.
    let mut server = ControlServer::new(s);
    let bad = Request {
        id: 5,
        body: Some(request::Body::Ping(proto::Ping::default())),
    };
    c.writer.send(Kind::Request, &bad).await.unwrap();
    assert!(matches!(server.next().await, Err(Error::Protocol(_))));
    assert!(matches!(
        c.reader.recv().await,
        Err(Error::Remote {
            code: ErrorCode::Protocol,
            ..
        })
    ));
}

#[tokio::test]
async fn every_message_round_trips_through_a_link() {
    let (mut s, mut c) = pair(cfg(), &cfg(), Channel::Control, None).await;
    let requests = vec![
        request::Body::Ping(proto::Ping {
            payload: vec![1, 2, 3],
        }),
        request::Body::Preflight(proto::Preflight {
            criu_version: "4.1.1".into(),
            mem_track: false,
            lazy_pages: true,
            cpuinfo: vec![9; 100],
            nftables_lock: true,
        }),
        request::Body::Begin(proto::Begin {
            htype: "pid".into(),
            params: [("pid".to_string(), "42".to_string())].into(),
            mode: proto::Mode::PostCopy.into(),
            fs_driver: proto::FsDriver::Native.into(),
            restore_by: proto::RestoreBy::Criu.into(),
            migration_id: "job-42".into(),
        }),
        request::Body::StartPageServer(proto::StartPageServer {
            iteration: 3,
            has_parent: true,
        }),
        request::Body::Restore(proto::Restore {
            iteration: 3,
            lazy: true,
        }),
        request::Body::Commit(proto::Commit {
            valid_for_ms: 30_000,
            overhead_us: 1_234_567,
            replay: vec![vec![0x45, 0, 0, 20], vec![0x60; 40]],
            tree_pages: 67_339,
        }),
        request::Body::Abort(proto::Abort {
            reason: "cancelled".into(),
        }),
        request::Body::ListProcesses(proto::ListProcesses {}),
        request::Body::Images(proto::Images { iteration: 2 }),
        request::Body::Migrate(proto::MigrateOrder {
            target: "10.0.0.2:7070".into(),
            kind: "pid".into(),
            id: "4242".into(),
            mode: "post-copy".into(),
            fallback: true,
            migration_id: "job-7".into(),
            target_pin: vec![7; 32],
            freeze_timeout_ms: 5000,
        }),
        request::Body::CancelMigration(proto::CancelMigration {}),
        request::Body::PagemapsOf(proto::PagemapsOf { iteration: 4 }),
        request::Body::ProbeLink(proto::ProbeLink { bytes: 8 << 20 }),
        // Twice, so that every answer has a request to pair with.
        request::Body::CancelMigration(proto::CancelMigration {}),
    ];
    let responses = vec![
        response::Body::Pong(proto::Pong { payload: vec![4] }),
        response::Body::Preflight(proto::PreflightReply {
            criu_version: "4.1.1".into(),
            mem_track: false,
            lazy_pages: true,
            cpu_compatible: false,
            cpu_error: "no".into(),
            nftables_lock: true,
        }),
        response::Body::Begun(proto::Begun {
            work_dir: "/x".into(),
            overhead_us: 2_500_000,
            page_in_bytes_per_s: 60 << 20,
            overhead_beyond_restore_us: 900_000,
        }),
        response::Body::PageServerReady(proto::PageServerReady { iteration: 3 }),
        response::Body::Restored(proto::Restored {
            pid: 7,
            restore_time_us: 9,
        }),
        response::Body::Committed(proto::Committed {}),
        response::Body::Aborted(proto::Aborted {}),
        response::Body::ProcessList(proto::ProcessList {
            processes: vec![proto::ProcessInfo {
                pid: 1,
                ppid: 0,
                name: "init".into(),
                cmdline: "/sbin/init".into(),
                container: String::new(),
            }],
            containers: vec![proto::ContainerInfo {
                name: "ct1".into(),
                state: "RUNNING".into(),
                init_pid: 7,
            }],
        }),
        response::Body::ImagesStored(proto::ImagesStored {
            files: 12,
            bytes: 1 << 33,
        }),
        response::Body::MigrationAccepted(proto::MigrationAccepted {
            migration_id: "job-7".into(),
        }),
        response::Body::MigrationEvent(proto::MigrationEvent {
            event_json: r#"{"schema":1,"migration":"job-7","event":"frozen"}"#.into(),
        }),
        response::Body::MigrationEnded(proto::MigrationEnded {
            outcome: proto::MigrationOutcome::RolledBack.into(),
            report_json: "{}".into(),
            error: "cancelled".into(),
        }),
        response::Body::Pagemaps(proto::Pagemaps {
            iteration: 4,
            files: vec![proto::ImageCopy {
                name: "pagemap-42.img".into(),
                data: vec![0x54, 0x56, 0x01, 0x00],
            }],
        }),
        response::Body::LinkProbed(proto::LinkProbed { bytes: 8 << 20 }),
    ];
    // Every message once: the matches have no catch-all, so a message added
    // to link.proto fails to compile here until it is in the lists.
    let kinds = |r: &request::Body| match r {
        request::Body::Ping(_) => 0,
        request::Body::Preflight(_) => 1,
        request::Body::Begin(_) => 2,
        request::Body::StartPageServer(_) => 3,
        request::Body::Restore(_) => 4,
        request::Body::Commit(_) => 5,
        request::Body::Abort(_) => 6,
        request::Body::ListProcesses(_) => 7,
        request::Body::Images(_) => 8,
        request::Body::Migrate(_) => 9,
        request::Body::CancelMigration(_) => 10,
        request::Body::PagemapsOf(_) => 11,
        request::Body::ProbeLink(_) => 12,
    };
    let answers = |r: &response::Body| match r {
        response::Body::Pong(_) => 0,
        response::Body::Preflight(_) => 1,
        response::Body::Begun(_) => 2,
        response::Body::PageServerReady(_) => 3,
        response::Body::Restored(_) => 4,
        response::Body::Committed(_) => 5,
        response::Body::Aborted(_) => 6,
        response::Body::ProcessList(_) => 7,
        response::Body::ImagesStored(_) => 8,
        response::Body::MigrationAccepted(_) => 9,
        response::Body::MigrationEvent(_) => 10,
        response::Body::MigrationEnded(_) => 11,
        response::Body::Pagemaps(_) => 12,
        response::Body::LinkProbed(_) => 13,
    };
    assert_eq!(
        requests
            .iter()
            .map(kinds)
            .collect::<std::collections::BTreeSet<_>>(),
        (0..13).collect()
    );
    assert_eq!(
        responses
            .iter()
            .map(answers)
            .collect::<std::collections::BTreeSet<_>>(),
        (0..14).collect()
    );
    assert_eq!(requests.len(), responses.len());
    for (i, (rq, rs)) in requests.into_iter().zip(responses).enumerate() {
        let id = i as u64 + 1;
        let sent = proto::Request { id, body: Some(rq) };
        c.writer.send(Kind::Request, &sent).await.unwrap();
        let got: proto::Request = s.reader.recv_msg(Kind::Request).await.unwrap();
        assert_eq!(got, sent);
        let sent = proto::Response { id, body: Some(rs) };
        s.writer.send(Kind::Response, &sent).await.unwrap();
        let got: proto::Response = c.reader.recv_msg(Kind::Response).await.unwrap();
        assert_eq!(got, sent);
    }
    for (kind, bytes) in [
        (
            Kind::FileBegin,
            proto::FileBegin {
                name: "a.img".into(),
                size: 3,
                mode: 0o600,
            }
            .encode_to_vec(),
        ),
        (Kind::FileEnd, proto::FileEnd {}.encode_to_vec()),
        (
            Kind::BatchEnd,
            proto::BatchEnd { files: 1, bytes: 3 }.encode_to_vec(),
        ),
        (
            Kind::BatchAck,
            proto::BatchAck { files: 1, bytes: 3 }.encode_to_vec(),
        ),
        (Kind::StreamEnd, proto::StreamEnd {}.encode_to_vec()),
        (Kind::Data, b"raw bytes".to_vec()),
    ] {
        c.writer.write_frame(kind, &bytes).await.unwrap();
        let f = s.reader.recv().await.unwrap();
        assert_eq!((f.kind, f.payload.as_ref()), (kind, bytes.as_slice()));
    }
    s.writer
        .send_error(ErrorCode::Failed, "restore failed", 9)
        .await
        .unwrap();
    match c.reader.recv().await {
        Err(Error::Remote {
            code: ErrorCode::Failed,
            message,
        }) => assert_eq!(message, "restore failed"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn relay_carries_bytes_both_ways_with_half_closes_and_compression() {
    for compress in [false, true] {
        let c_cfg = cfg().compress(compress);
        let (s, c) = pair(
            cfg().compress(compress),
            &c_cfg,
            Channel::Pages,
            Some([3; 16]),
        )
        .await;
        // Each side's "CRIU" is one end of a local socket pair.
        let (src_criu, src_relay) = tokio::io::duplex(1 << 16);
        let (tgt_criu, tgt_relay) = tokio::io::duplex(1 << 16);
        let r1 = tokio::spawn(relay(c, src_relay));
        let r2 = tokio::spawn(relay(s, tgt_relay));
        let up: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let down = b"page requests".to_vec();
        let (mut sr, mut sw) = tokio::io::split(src_criu);
        let (mut tr, mut tw) = tokio::io::split(tgt_criu);
        let up2 = up.clone();
        let down2 = down.clone();
        let w1 = tokio::spawn(async move {
            sw.write_all(&up2).await.unwrap();
            sw.shutdown().await.unwrap();
        });
        let w2 = tokio::spawn(async move {
            tw.write_all(&down2).await.unwrap();
            tw.shutdown().await.unwrap();
        });
        let mut got_up = Vec::new();
        tr.read_to_end(&mut got_up).await.unwrap();
        let mut got_down = Vec::new();
        sr.read_to_end(&mut got_down).await.unwrap();
        w1.await.unwrap();
        w2.await.unwrap();
        assert_eq!(got_up, up);
        assert_eq!(got_down, down);
        let (a, b) = (r1.await.unwrap().unwrap(), r2.await.unwrap().unwrap());
        assert_eq!((a.sent, a.received), (up.len() as u64, down.len() as u64));
        assert_eq!((b.sent, b.received), (down.len() as u64, up.len() as u64));
    }
}

#[tokio::test]
async fn a_lenient_relay_drains_after_its_local_side_quits_and_keeps_the_link() {
    let (mut s, mut c) = pair(cfg(), &cfg(), Channel::Fs, Some([4; 16])).await;
    // The peer sends 1 MiB and its end; the local program reads 10 bytes
    // and exits (its pipe closes), having sent nothing.
    let (program, local) = tokio::io::duplex(64);
    let (mut prog_r, prog_w) = tokio::io::split(program);
    let (local_r, local_w) = tokio::io::split(local);
    drop(prog_w);
    let quitter = tokio::spawn(async move {
        let mut first = [0u8; 10];
        prog_r.read_exact(&mut first).await.unwrap();
        first
    });
    let peer = async {
        s.writer.send_data(&vec![7u8; 1 << 20]).await.unwrap();
        s.writer.send_end().await.unwrap();
        // The local side's end of stream arrives as StreamEnd.
        assert!(s.reader.recv_data().await.unwrap().is_none());
    };
    let opts = RelayOptions {
        lenient_local: true,
        ..RelayOptions::default()
    };
    let (st, ()) = tokio::join!(
        relay_parts(&mut c.reader, &mut c.writer, local_r, local_w, opts),
        peer
    );
    let st = st.unwrap();
    assert_eq!(quitter.await.unwrap(), [7u8; 10]);
    assert_eq!((st.sent, st.received), (0, 1 << 20));
    // Both ends are in step: the link still carries what comes next.
    s.writer.send_data(b"exit 0").await.unwrap();
    assert_eq!(&c.reader.recv_data().await.unwrap().unwrap()[..], b"exit 0");
}

#[tokio::test]
async fn a_strict_relay_reports_a_local_side_that_quits() {
    let (mut s, mut c) = pair(cfg(), &cfg(), Channel::Fs, Some([5; 16])).await;
    let (program, local) = tokio::io::duplex(64);
    drop(program);
    let (local_r, local_w) = tokio::io::split(local);
    let peer = async {
        let _ = s.writer.send_data(&vec![7u8; 1 << 20]).await;
    };
    let (st, ()) = tokio::join!(
        relay_parts(
            &mut c.reader,
            &mut c.writer,
            local_r,
            local_w,
            RelayOptions::default()
        ),
        peer
    );
    assert!(st.is_err(), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_reaches_a_peer_that_is_still_sending() {
    // Closing with the sender's bytes unread resets the connection, which
    // can destroy the Error frame on its way: refuse() must not.
    for round in 0..20u8 {
        let (mut s, c) = pair(cfg(), &cfg(), Channel::Fs, Some([round; 16])).await;
        let server = tokio::spawn(async move {
            s.reader.recv_data().await.unwrap();
            s.refuse(ErrorCode::Limit, "that is enough").await;
        });
        let (mut rd, mut wr) = c.into_split();
        let chunk = vec![1u8; 64 * 1024];
        let sending = async {
            for _ in 0..1024 {
                if wr.send_data(&chunk).await.is_err() {
                    break;
                }
            }
            std::future::pending::<()>().await;
        };
        let answer = tokio::select! {
            a = rd.recv() => a,
            () = sending => unreachable!(),
        };
        match answer {
            Err(Error::Remote { code, message }) => {
                assert_eq!(code, ErrorCode::Limit);
                assert_eq!(message, "that is enough");
            }
            other => panic!("round {round}: expected the refusal, got {other:?}"),
        }
        drop((rd, wr));
        server.await.unwrap();
    }
}

#[tokio::test]
async fn a_bandwidth_cap_paces_the_sender() {
    let l = Listener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let capped = cfg().plaintext().bandwidth(Some(4 << 20));
    let (s, c) = tokio::join!(
        serve_one(&l, cfg().plaintext()),
        Link::connect(Endpoint::Tcp(addr), &capped, Channel::Pages, Some([1; 16]))
    );
    let (mut s, mut c) = (s.unwrap(), c.unwrap());
    let t = std::time::Instant::now();
    let data = vec![0u8; 2 << 20];
    let send = async {
        c.writer.send_data(&data).await.unwrap();
        c.writer.send_end().await.unwrap();
    };
    let recv = async {
        let mut n = 0;
        while let Some(b) = s.reader.recv_data().await.unwrap() {
            n += b.len();
        }
        n
    };
    let ((), n) = tokio::join!(send, recv);
    assert_eq!(n, 2 << 20);
    // 2 MiB at 4 MiB/s: about half a second, not the milliseconds
    // loopback would take.
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
}

//! A controller's link (`MANAGE`, version 3) over real sockets: the order,
//! its answers in order, the cancel, a refusal, and what a peer that speaks
//! only version 2 or breaks the sequence gets.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use phaul_transport::frame::{HEADER_LEN, Header, Kind, MAGIC, MANAGE_VERSION, MAX_PAYLOAD};
use phaul_transport::manage::{Controller, OrderDesk, Stop, Update};
use phaul_transport::proto::{self, Hello, MigrateOrder, MigrationEnded, MigrationOutcome};
use phaul_transport::{Channel, Endpoint, Error, ErrorCode, Link, LinkConfig, Listener, SharedKey};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn cfg() -> LinkConfig {
    LinkConfig::new(SharedKey::new(b"a shared secret of 32 bytes here").unwrap())
        .handshake_timeout(Duration::from_secs(5))
}

fn order() -> MigrateOrder {
    MigrateOrder {
        target: "10.0.0.2:7070".into(),
        kind: "pid".into(),
        id: "4242".into(),
        mode: "stop-copy".into(),
        ..Default::default()
    }
}

/// A service accepting one controller's link on `l`.
async fn desk(l: &Listener, cfg: LinkConfig) -> OrderDesk {
    let (s, peer) = l.accept().await.unwrap();
    let link = Link::accept(s, peer, &cfg).await.unwrap();
    assert_eq!(link.channel(), Channel::Manage);
    OrderDesk::new(link)
}

#[tokio::test]
async fn an_order_is_accepted_reported_cancelled_and_ended() {
    let l = Listener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let service = async {
        let (got, pending) = desk(&l, cfg()).await.order().await.unwrap();
        assert_eq!(got, order());
        let (mut reporter, watch) = pending.accept("job-9").await.unwrap();
        reporter
            .event(r#"{"event":"frozen"}"#.into())
            .await
            .unwrap();
        // The controller cancels; the end answers it.
        assert_eq!(watch.wait().await, Stop::Cancel);
        reporter
            .ended(MigrationEnded {
                outcome: MigrationOutcome::RolledBack.into(),
                report_json: "{}".into(),
                error: "cancelled".into(),
            })
            .await
            .unwrap();
    };
    let controller = async {
        let ordered = Controller::connect(Endpoint::Tcp(addr.clone()), &cfg())
            .await
            .unwrap()
            .order(order())
            .await
            .unwrap();
        assert_eq!(ordered.migration_id(), "job-9");
        let (mut updates, canceller) = ordered.split();
        assert_eq!(
            updates.next().await.unwrap(),
            Some(Update::Event(r#"{"event":"frozen"}"#.into()))
        );
        canceller.cancel().await.unwrap();
        let Some(Update::Ended(end)) = updates.next().await.unwrap() else {
            panic!("no end")
        };
        assert_eq!(end.outcome(), MigrationOutcome::RolledBack);
        assert_eq!(end.error, "cancelled");
        assert_eq!(updates.next().await.unwrap(), None);
    };
    tokio::join!(service, controller);
}

#[tokio::test]
async fn a_refused_order_is_a_typed_error_and_a_controller_gone_is_seen() {
    let l = Listener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let service = async {
        let (_, pending) = desk(&l, cfg()).await.order().await.unwrap();
        pending
            .refuse(ErrorCode::BadRequest, "refusing PID 1, the host's init")
            .await;
        // A second controller accepted, then gone without a cancel.
        let (_, pending) = desk(&l, cfg()).await.order().await.unwrap();
        let (_reporter, watch) = pending.accept("job-10").await.unwrap();
        assert_eq!(watch.wait().await, Stop::Gone);
    };
    let controller = async {
        let c = Controller::connect(Endpoint::Tcp(addr.clone()), &cfg())
            .await
            .unwrap();
        match c.order(order()).await {
            Err(Error::Remote { code, message }) => {
                assert_eq!(code, ErrorCode::BadRequest);
                assert!(message.contains("PID 1"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let ordered = Controller::connect(Endpoint::Tcp(addr.clone()), &cfg())
            .await
            .unwrap()
            .order(order())
            .await
            .unwrap();
        let (_updates, canceller) = ordered.split();
        canceller.close().await;
    };
    tokio::join!(service, controller);
}

#[tokio::test]
async fn a_wrong_key_never_reaches_the_desk() {
    let l = Listener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let wrong = LinkConfig::new(SharedKey::new(b"not the key the service holds!!!").unwrap());
    let (s, c) = tokio::join!(
        async {
            let (s, peer) = l.accept().await.unwrap();
            Link::accept(s, peer, &cfg()).await
        },
        Controller::connect(Endpoint::Tcp(addr), &wrong)
    );
    assert!(matches!(s, Err(Error::AuthFailed(_))), "{s:?}");
    assert!(c.is_err());
}

fn frame(version: u16, kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u32_le(MAGIC);
    b.put_u16_le(version);
    b.put_u16_le(kind as u16);
    b.put_u32_le(u32::try_from(payload.len()).unwrap());
    b.extend_from_slice(payload);
    b.to_vec()
}

#[tokio::test]
async fn a_manage_hello_at_version_2_is_refused() {
    let l = Listener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hello = Hello {
        min_version: 2,
        max_version: 2,
        channel: Channel::Manage as i32,
        nonce: vec![7; 32],
        session: vec![],
        software: "an older controller".into(),
    };
    let client = async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&frame(1, Kind::Hello, &hello.encode_to_vec()))
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
        answer
    };
    let server = async {
        let (s, peer) = l.accept().await.unwrap();
        Link::accept(s, peer, &cfg().plaintext()).await
    };
    let (s, answer) = tokio::join!(server, client);
    assert!(
        matches!(s, Err(Error::Version { ours_min, .. }) if ours_min == MANAGE_VERSION),
        "{s:?}"
    );
    let h = Header::decode(answer[..HEADER_LEN].try_into().unwrap(), MAX_PAYLOAD).unwrap();
    assert_eq!(h.kind, Kind::Error);
    let e = proto::Error::decode(&answer[HEADER_LEN..HEADER_LEN + h.length as usize]).unwrap();
    assert_eq!(e.code, ErrorCode::Version as i32);
}

#[tokio::test]
async fn a_controller_link_takes_only_an_order_first() {
    let l = Listener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let service = async { desk(&l, cfg()).await.order().await };
    let controller = async {
        let mut link = Link::connect(Endpoint::Tcp(addr.clone()), &cfg(), Channel::Manage, None)
            .await
            .unwrap();
        let ping = proto::Request {
            id: 1,
            body: Some(proto::request::Body::Ping(proto::Ping::default())),
        };
        link.writer.send(Kind::Request, &ping).await.unwrap();
        link.reader.recv().await
    };
    let (s, c) = tokio::join!(service, controller);
    assert!(matches!(s, Err(Error::Protocol(_))), "{s:?}");
    assert!(
        matches!(
            c,
            Err(Error::Remote {
                code: ErrorCode::Protocol,
                ..
            })
        ),
        "{c:?}"
    );
}

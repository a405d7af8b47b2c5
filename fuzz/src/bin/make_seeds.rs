//! Writes the seed corpora of the fuzz targets to `fuzz/seeds/<target>/`
//! (or under the directory given as the only argument): a few valid frames
//! and messages of every shape, and some garbage.
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --bin make_seeds
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use phaul_transport::frame::{Frame, Kind, lz4_compress};
use phaul_transport::proto::{self, request, response};
use phaul_transport_fuzz::MESSAGES;
use prost::Message;

fn frame(kind: Kind, payload: impl Into<Bytes>) -> Vec<u8> {
    Frame {
        version: 1,
        kind,
        payload: payload.into(),
    }
    .encode()
    .expect("small frame")
    .to_vec()
}

fn msg_frame(kind: Kind, msg: &impl Message) -> Vec<u8> {
    frame(kind, msg.encode_to_vec())
}

fn hello(channel: proto::Channel, session: &[u8]) -> proto::Hello {
    proto::Hello {
        min_version: 1,
        max_version: 1,
        channel: channel as i32,
        nonce: (0u8..32).collect(),
        session: session.to_vec(),
        software: "phaul 0.1.0".into(),
    }
}

fn request(id: u64, body: request::Body) -> proto::Request {
    proto::Request {
        id,
        body: Some(body),
    }
}

/// Data that compresses, but not to nothing.
fn pagey(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| if i % 64 < 48 { 0 } else { (i * 7 % 251) as u8 })
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("create the seed directory");
    std::fs::write(dir.join(name), bytes).expect("write a seed");
    println!("{} ({} bytes)", dir.join(name).display(), bytes.len());
}

fn main() {
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds"));
    let session = [7u8; 16];
    let hello_control = msg_frame(Kind::Hello, &hello(proto::Channel::Control, &[]));
    let hello_pages = msg_frame(Kind::Hello, &hello(proto::Channel::Pages, &session));
    let auth = msg_frame(
        Kind::Auth,
        &proto::Auth {
            proof: vec![0xa5; 32],
        },
    );
    let ping = msg_frame(
        Kind::Request,
        &request(
            1,
            request::Body::Ping(proto::Ping {
                payload: b"ping".to_vec(),
            }),
        ),
    );
    let begin = msg_frame(
        Kind::Request,
        &request(
            2,
            request::Body::Begin(proto::Begin {
                htype: "pid".into(),
                params: HashMap::from([("pid".to_string(), "1234".to_string())]),
                mode: proto::Mode::StopCopy.into(),
                fs_driver: proto::FsDriver::NoFs.into(),
                restore_by: proto::RestoreBy::Criu.into(),
                migration_id: "seed-1".into(),
            }),
        ),
    );
    let restored = msg_frame(
        Kind::Response,
        &proto::Response {
            id: 3,
            body: Some(response::Body::Restored(proto::Restored {
                pid: 4321,
                restore_time_us: 1500,
            })),
        },
    );
    let lz4 = frame(Kind::DataLz4, lz4_compress(&pagey(2048)));
    let data = frame(Kind::Data, pagey(64));
    let end = msg_frame(Kind::StreamEnd, &proto::StreamEnd {});
    let error = msg_frame(
        Kind::Error,
        &proto::Error {
            code: proto::ErrorCode::AuthFailed as i32,
            message: "no".into(),
            request_id: 0,
        },
    );
    let file_begin = msg_frame(
        Kind::FileBegin,
        &proto::FileBegin {
            name: "pages-1.img".into(),
            size: 64,
            mode: 0o600,
        },
    );
    let file_end = msg_frame(Kind::FileEnd, &proto::FileEnd {});
    let batch_end = msg_frame(
        Kind::BatchEnd,
        &proto::BatchEnd {
            files: 1,
            bytes: 64,
        },
    );
    let batch_ack = msg_frame(
        Kind::BatchAck,
        &proto::BatchAck {
            files: 1,
            bytes: 64,
        },
    );

    let dir = root.join("frame_decode");
    write(&dir, "hello", &hello_control);
    write(
        &dir,
        "handshake",
        &[hello_pages.clone(), auth.clone()].concat(),
    );
    write(
        &dir,
        "requests",
        &[ping.clone(), begin.clone(), restored.clone(), error].concat(),
    );
    write(
        &dir,
        "page-stream",
        &[data.clone(), lz4.clone(), end.clone()].concat(),
    );
    write(
        &dir,
        "image-batch",
        &[file_begin, data, file_end.clone(), batch_end, batch_ack].concat(),
    );
    write(&dir, "truncated", &lz4[..lz4.len() / 2]);
    write(&dir, "garbage", b"GET / HTTP/1.1\r\nHost: phaul\r\n\r\n");

    let dir = root.join("message_decode");
    let pick = |name: &str| MESSAGES.iter().position(|m| *m == name).expect("a message") as u8;
    let seed = |name: &str, msg: &dyn Fn() -> Vec<u8>| [vec![pick(name)], msg()].concat();
    write(
        &dir,
        "hello",
        &seed("Hello", &|| {
            hello(proto::Channel::Images, &session).encode_to_vec()
        }),
    );
    write(
        &dir,
        "request-begin",
        &seed("Request", &|| begin[12..].to_vec()),
    );
    write(
        &dir,
        "response-restored",
        &seed("Response", &|| restored[12..].to_vec()),
    );
    write(
        &dir,
        "preflight",
        &seed("Preflight", &|| {
            proto::Preflight {
                criu_version: "4.1".into(),
                mem_track: true,
                lazy_pages: true,
                cpuinfo: vec![1, 2, 3, 4],
                nftables_lock: true,
            }
            .encode_to_vec()
        }),
    );
    write(
        &dir,
        "file-begin",
        &seed("FileBegin", &|| {
            proto::FileBegin {
                name: "core-1.img".into(),
                size: 1 << 20,
                mode: 0o644,
            }
            .encode_to_vec()
        }),
    );

    let dir = root.join("images_receive");
    let file = |name: &str, size: u64| {
        msg_frame(
            Kind::FileBegin,
            &proto::FileBegin {
                name: name.into(),
                size,
                mode: 0o600,
            },
        )
    };
    let data = |len: usize| frame(Kind::Data, pagey(len));
    let batch_end =
        |files: u32, bytes: u64| msg_frame(Kind::BatchEnd, &proto::BatchEnd { files, bytes });
    write(
        &dir,
        "two-files",
        &[
            file("core-1.img", 100),
            data(60),
            data(40),
            file_end.clone(),
            file("pages-1.img", 2048),
            lz4.clone(),
            file_end.clone(),
            batch_end(2, 2148),
        ]
        .concat(),
    );
    write(&dir, "empty-batch", &batch_end(0, 0));
    write(
        &dir,
        "short-file",
        &[file("a", 10), data(5), file_end.clone(), batch_end(1, 10)].concat(),
    );
    write(
        &dir,
        "bad-name",
        &[file("../escape", 4), data(4), file_end.clone()].concat(),
    );
    write(
        &dir,
        "same-name",
        &[file("a", 1), data(1), file_end.clone(), file("a", 1)].concat(),
    );

    let dir = root.join("link_read");
    write(
        &dir,
        "control-hello-auth",
        &[hello_control, auth.clone()].concat(),
    );
    write(
        &dir,
        "pages-hello-auth-data",
        &[hello_pages, auth, lz4, end].concat(),
    );
    let mut old = hello(proto::Channel::Control, &[]);
    old.min_version = 7;
    old.max_version = 9;
    write(&dir, "no-common-version", &msg_frame(Kind::Hello, &old));
    write(&dir, "request-first", &ping);
}

//! A hostile source's image stream: the input is split into frames (as
//! `Frame::parse` reads them; their version is replaced by the link's) and
//! sent, after a real plaintext handshake, to `images::receive_batch` on an
//! in-memory link, into a fresh directory on tmpfs. Whatever the frames,
//! the receiver must not panic or hang, must create nothing outside its
//! directory, must leave there only complete files of exactly the size a
//! `FileBegin` announced with permission bits only, must keep within its
//! limits, and on success must report what is on disk.

#![no_main]

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use phaul_transport::frame::{Frame, Kind, MAX_PAYLOAD};
use phaul_transport::images::{self, ImageLimits};
use phaul_transport::{Channel, Link, LinkConfig, SharedKey, proto};
use prost::Message;
use tokio::runtime::Runtime;

const LIMITS: ImageLimits = ImageLimits {
    max_files: 4,
    max_file_size: 64 * 1024,
    max_total: 96 * 1024,
    durable: false,
};

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// Where each run's directory goes: tmpfs (the receiver fsyncs every file)
/// when there is one.
fn scratch() -> PathBuf {
    let base = Path::new("/dev/shm");
    let base = if base.is_dir() {
        base.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    base.join(format!("phaul-fuzz-images-{}", std::process::id()))
}

fn config() -> LinkConfig {
    LinkConfig::new(SharedKey::new(b"0123456789abcdef").expect("a valid key"))
        .plaintext()
        .handshake_timeout(Duration::from_secs(5))
}

fuzz_target!(|data: &[u8]| {
    let mut frames = Vec::new();
    let mut rest = data;
    while let Ok(Some((frame, used))) = Frame::parse(rest, MAX_PAYLOAD) {
        frames.push(frame);
        rest = &rest[used..];
    }
    // The first size announced for each name: the only one that can stand
    // (a second `FileBegin` of the same name must be refused).
    let mut announced: HashMap<String, u64> = HashMap::new();
    for f in frames.iter().filter(|f| f.kind == Kind::FileBegin) {
        if let Ok(b) = proto::FileBegin::decode(f.payload.as_ref()) {
            announced.entry(b.name).or_insert(b.size);
        }
    }

    let parent = scratch();
    let _ = std::fs::remove_dir_all(&parent);
    let dir = parent.join("images");
    std::fs::create_dir_all(&dir).expect("create the scratch directory");

    let result = runtime().block_on(async {
        let (a, b) = tokio::io::duplex(1 << 20);
        let server_cfg = config();
        let (client, server) = tokio::join!(
            Link::connect_stream(Box::pin(a), &config(), Channel::Images, Some([7; 16])),
            Link::accept(Box::pin(b), "fuzz".into(), &server_cfg),
        );
        let (mut client, mut server) = (client.expect("handshake"), server.expect("handshake"));
        let send = async {
            for f in &frames {
                if client.writer.write_frame(f.kind, &f.payload).await.is_err() {
                    break;
                }
            }
            let _ = client.writer.shutdown().await;
        };
        let receive = images::receive_batch_over(&mut server, &dir, &LIMITS);
        let both = async { tokio::join!(send, receive).1 };
        tokio::time::timeout(Duration::from_secs(20), both)
            .await
            .expect("the receiver hangs")
    });

    // Nothing beside the directory.
    let beside: Vec<_> = std::fs::read_dir(&parent)
        .expect("read the scratch dir")
        .collect();
    assert_eq!(
        beside.len(),
        1,
        "the receiver created something outside its directory"
    );
    // Only complete, announced regular files with permission bits only.
    let (mut files, mut bytes) = (0u32, 0u64);
    for e in std::fs::read_dir(&dir).expect("read the directory") {
        let e = e.expect("a directory entry");
        let name = e.file_name().into_string().expect("a UTF-8 name");
        let meta = std::fs::symlink_metadata(e.path()).expect("stat a received file");
        assert!(meta.file_type().is_file(), "{name:?} is not a regular file");
        assert_eq!(
            meta.permissions().mode() & !0o777 & 0o7777,
            0,
            "{name:?} has special bits"
        );
        let Some(size) = announced.get(&name) else {
            panic!("{name:?} was never announced");
        };
        assert_eq!(
            meta.len(),
            *size,
            "{name:?} is incomplete: partial files must be removed"
        );
        files += 1;
        bytes += meta.len();
    }
    assert!(
        files <= LIMITS.max_files && bytes <= LIMITS.max_total,
        "limits exceeded"
    );
    if let Ok(stats) = result {
        assert_eq!(
            (stats.files, stats.bytes),
            (files, bytes),
            "stats differ from the disk"
        );
    }
    std::fs::remove_dir_all(&parent).expect("remove the scratch directory");
});

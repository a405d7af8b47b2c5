//! The image stream over real sockets: what arrives, what is refused, and
//! that a refused stream leaves nothing behind outside the target
//! directory.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use phaul_testkit::{link_config, noise};
use phaul_transport::frame::Kind;
use phaul_transport::images::{
    BatchStats, ImageLimits, receive_batch_over, send_dir_over, send_files_over,
};
use phaul_transport::link::FrameWriter;
use phaul_transport::proto::{BatchEnd, FileBegin, FileEnd};
use phaul_transport::{Channel, Error, ErrorCode, Link, LinkConfig};

/// A connected images channel over a socketpair: (source's end, target's).
async fn pair(cfg: LinkConfig) -> (Link, Link) {
    phaul_testkit::link_pair(&cfg, Channel::Images).await
}

fn write_file(dir: &Path, name: &str, data: &[u8], mode: u32) {
    let p = dir.join(name);
    fs::write(&p, data).unwrap();
    // `set_permissions` is not subject to the umask, so the mode is exact.
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Everything under `root`: path -> (kind, size, symlink target), to show
/// that nothing appeared, vanished or changed.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (String, u64, Option<PathBuf>)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            let ft = m.file_type();
            let kind = if ft.is_symlink() {
                "symlink"
            } else if ft.is_dir() {
                todo.push(e.path());
                "dir"
            } else {
                "file"
            };
            let link = ft.is_symlink().then(|| fs::read_link(e.path()).unwrap());
            out.insert(e.path(), (kind.to_string(), m.len(), link));
        }
    }
    out
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// A parent directory holding the receiver's `target/` and a bystander
/// file, to check that refused streams write nothing outside the target.
struct Scene {
    root: tempfile::TempDir,
    target: PathBuf,
}

impl Scene {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("target")).unwrap();
        fs::write(root.path().join("bystander"), b"untouched").unwrap();
        let target = root.path().join("target");
        Self { root, target }
    }
}

/// One file as a misbehaving sender would frame it.
struct RawFile<'a> {
    name: &'a str,
    size: u64,
    mode: u32,
    data: &'a [u8],
    end: bool,
}

/// A sender that does not check anything, to exercise the receiver.
async fn raw_send(w: &mut FrameWriter, files: &[RawFile<'_>], end: BatchEnd) {
    // The receiver may give up at any point and stop reading; errors here
    // are expected then, and the answer is what the test checks.
    let _ = async {
        for f in files {
            let begin = FileBegin {
                name: f.name.to_string(),
                size: f.size,
                mode: f.mode,
            };
            w.send(Kind::FileBegin, &begin).await?;
            w.send_data(f.data).await?;
            if f.end {
                w.send(Kind::FileEnd, &FileEnd {}).await?;
            }
        }
        w.send(Kind::BatchEnd, &end).await
    }
    .await;
}

/// Sends `files` with a hand-rolled sender and returns the receiver's
/// error and the error the sender then reads.
async fn refused_raw(
    cfg: LinkConfig,
    target: &Path,
    limits: ImageLimits,
    files: &[RawFile<'_>],
    end: BatchEnd,
) -> (Error, Error) {
    let (mut src, mut dst) = pair(cfg).await;
    let sender = async {
        raw_send(&mut src.writer, files, end).await;
        src.reader
            .recv()
            .await
            .expect_err("the receiver must answer with an error")
    };
    let receiver = receive_batch_over(&mut dst, target, &limits);
    let (sent, received) = tokio::join!(sender, receiver);
    (received.expect_err("the receiver must refuse"), sent)
}

fn assert_remote(e: &Error, want: ErrorCode) {
    match e {
        Error::Remote { code, .. } => assert_eq!(*code, want, "{e:?}"),
        other => panic!("expected a remote {want:?}, got {other:?}"),
    }
}

// --- round trips -----------------------------------------------------------

async fn round_trip(cfg: LinkConfig) {
    round_trip_with(cfg, ImageLimits::default()).await;
}

async fn round_trip_with(cfg: LinkConfig, limits: ImageLimits) {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    let big = noise(5 << 20, 0x9e37_79b9_7f4a_7c15);
    let zeros = vec![0u8; 1 << 20];
    write_file(s, "core-1.img", b"core image", 0o600);
    write_file(s, "empty.img", b"", 0o644);
    write_file(s, "pages-1.img", &big, 0o600);
    write_file(s, "zeros.img", &zeros, 0o644);
    write_file(s, "wide.img", b"rw for all", 0o666);
    // What a pre-copy image directory has besides files: never sent.
    symlink("../1", s.join("parent")).unwrap();
    fs::create_dir(s.join("sub")).unwrap();
    write_file(&s.join("sub"), "inner.img", b"inner", 0o600);

    let scene = Scene::new();
    let target = scene.target.clone();
    let (mut a, mut b) = pair(cfg).await;
    let (sent, received) = tokio::join!(
        send_dir_over(&mut a, s),
        receive_batch_over(&mut b, &target, &limits)
    );
    let (sent, received) = (sent.unwrap(), received.unwrap());
    let want_bytes = (10 + big.len() + zeros.len() + 10) as u64;
    assert_eq!(
        sent,
        BatchStats {
            files: 5,
            bytes: want_bytes
        }
    );
    assert_eq!(received, sent);

    assert_eq!(
        names_in(&target),
        [
            "core-1.img",
            "empty.img",
            "pages-1.img",
            "wide.img",
            "zeros.img"
        ]
    );
    for name in names_in(&target) {
        let (from, to) = (s.join(&name), target.join(&name));
        assert!(fs::symlink_metadata(&to).unwrap().file_type().is_file());
        assert_eq!(fs::read(&to).unwrap(), fs::read(&from).unwrap(), "{name}");
        assert_eq!(mode_of(&to), mode_of(&from), "{name}");
    }
    assert_eq!(mode_of(&target.join("core-1.img")), 0o600);
    assert_eq!(mode_of(&target.join("empty.img")), 0o644);
    assert_eq!(mode_of(&target.join("wide.img")), 0o666);

    // The link stays usable: a second batch (the next iteration) of named
    // files goes to another directory.
    let next = scene.root.path().join("next");
    fs::create_dir(&next).unwrap();
    let names = ["empty.img".to_string(), "core-1.img".to_string()];
    let (sent, received) = tokio::join!(
        send_files_over(&mut a, s, &names),
        receive_batch_over(&mut b, &next, &limits)
    );
    assert_eq!(
        sent.unwrap(),
        BatchStats {
            files: 2,
            bytes: 10
        }
    );
    assert_eq!(
        received.unwrap(),
        BatchStats {
            files: 2,
            bytes: 10
        }
    );
    assert_eq!(names_in(&next), ["core-1.img", "empty.img"]);
    assert_eq!(fs::read(next.join("core-1.img")).unwrap(), b"core image");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_round_trips_over_tls() {
    round_trip(link_config()).await;
}

#[tokio::test]
async fn a_directory_round_trips_in_plaintext() {
    round_trip(link_config().plaintext()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_round_trips_compressed() {
    round_trip(link_config().compress(true)).await;
}

#[tokio::test]
async fn a_directory_round_trips_without_fsyncs() {
    round_trip_with(
        link_config(),
        ImageLimits {
            durable: false,
            ..ImageLimits::default()
        },
    )
    .await;
}

#[tokio::test]
async fn an_empty_batch_is_acknowledged() {
    let src = tempfile::tempdir().unwrap();
    let scene = Scene::new();
    let (mut a, mut b) = pair(link_config()).await;
    let limits = ImageLimits::default();
    let (sent, received) = tokio::join!(
        send_files_over(&mut a, src.path(), &[]),
        receive_batch_over(&mut b, &scene.target, &limits)
    );
    assert_eq!(sent.unwrap(), BatchStats::default());
    assert_eq!(received.unwrap(), BatchStats::default());
    assert!(names_in(&scene.target).is_empty());
}

// --- names -------------------------------------------------------------------

#[tokio::test]
async fn the_receiver_refuses_names_that_are_not_plain() {
    let passwd = fs::read("/etc/passwd").ok();
    for name in ["../x", "/etc/passwd", "a/b", "x\0y", ".", "..", "", "x\ny"] {
        let scene = Scene::new();
        let before = snapshot(scene.root.path());
        let file = RawFile {
            name,
            size: 4,
            mode: 0o644,
            data: b"evil",
            end: true,
        };
        let (received, sent) = refused_raw(
            link_config(),
            &scene.target,
            ImageLimits::default(),
            &[file],
            BatchEnd { files: 1, bytes: 4 },
        )
        .await;
        match &received {
            Error::BadName { name: n, .. } => assert_eq!(n, name),
            other => panic!("{name:?}: {other:?}"),
        }
        assert_remote(&sent, ErrorCode::BadRequest);
        assert_eq!(snapshot(scene.root.path()), before, "{name:?}");
        assert!(names_in(&scene.target).is_empty(), "{name:?}");
    }
    assert_eq!(fs::read("/etc/passwd").ok(), passwd);
}

#[tokio::test]
async fn the_sender_refuses_a_bad_name_before_sending_anything() {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("src");
    fs::create_dir(&src).unwrap();
    // `../x` exists, so only its name can be the reason for the refusal.
    write_file(root.path(), "x", b"outside", 0o644);
    write_file(&src, "core-1.img", b"core", 0o600);
    let scene = Scene::new();
    let (mut a, mut b) = pair(link_config()).await;
    let limits = ImageLimits::default();
    let sender = async {
        let bad = send_files_over(&mut a, &src, &["../x".to_string()]).await;
        match bad {
            Err(Error::BadName { name, .. }) => assert_eq!(name, "../x"),
            other => panic!("{other:?}"),
        }
        let dup = ["core-1.img".to_string(), "core-1.img".to_string()];
        assert!(matches!(
            send_files_over(&mut a, &src, &dup).await,
            Err(Error::BadName {
                reason: "listed twice",
                ..
            })
        ));
        // Nothing went out for those: the receiver's one batch is this.
        send_files_over(&mut a, &src, &["core-1.img".to_string()]).await
    };
    let (sent, received) = tokio::join!(sender, receive_batch_over(&mut b, &scene.target, &limits));
    assert_eq!(sent.unwrap(), BatchStats { files: 1, bytes: 4 });
    assert_eq!(received.unwrap(), BatchStats { files: 1, bytes: 4 });
    assert_eq!(names_in(&scene.target), ["core-1.img"]);
}

#[tokio::test]
async fn modes_beyond_permission_bits_are_refused() {
    for mode in [0o4755, 0o2755, 0o1777, 0o100644] {
        let scene = Scene::new();
        let before = snapshot(scene.root.path());
        let file = RawFile {
            name: "core-1.img",
            size: 1,
            mode,
            data: b"x",
            end: true,
        };
        let (received, sent) = refused_raw(
            link_config(),
            &scene.target,
            ImageLimits::default(),
            &[file],
            BatchEnd { files: 1, bytes: 1 },
        )
        .await;
        assert!(
            matches!(received, Error::Protocol(_)),
            "{mode:#o}: {received:?}"
        );
        assert_remote(&sent, ErrorCode::BadRequest);
        assert_eq!(snapshot(scene.root.path()), before, "{mode:#o}");
    }
}

// --- symlinks ----------------------------------------------------------------

#[tokio::test]
async fn a_symlink_in_the_target_is_never_followed_nor_replaced() {
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    fs::write(&secret, b"keep me").unwrap();
    let scene = Scene::new();
    symlink(&secret, scene.target.join("core-1.img")).unwrap();
    let before = snapshot(scene.root.path());

    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "core-1.img", b"overwrite attempt", 0o600);
    let (mut a, mut b) = pair(link_config()).await;
    let limits = ImageLimits::default();
    let names = ["core-1.img".to_string()];
    let (sent, received) = tokio::join!(
        send_files_over(&mut a, src.path(), &names),
        receive_batch_over(&mut b, &scene.target, &limits)
    );
    match received {
        Err(Error::File { path, source }) => {
            assert_eq!(path, scene.target.join("core-1.img"));
            assert_eq!(source.raw_os_error(), Some(libc::EEXIST));
        }
        other => panic!("{other:?}"),
    }
    assert_remote(&sent.unwrap_err(), ErrorCode::BadRequest);
    assert_eq!(fs::read(&secret).unwrap(), b"keep me");
    // The symlink itself is left as it was, not removed as a partial file.
    assert_eq!(snapshot(scene.root.path()), before);
}

#[tokio::test]
async fn a_symlink_in_the_source_is_refused_by_name_and_skipped_by_directory() {
    let src = tempfile::tempdir().unwrap();
    symlink("/etc/passwd", src.path().join("evil.img")).unwrap();
    write_file(src.path(), "core-1.img", b"core", 0o600);
    let scene = Scene::new();
    let (mut a, mut b) = pair(link_config()).await;
    let limits = ImageLimits::default();
    let sender = async {
        match send_files_over(&mut a, src.path(), &["evil.img".to_string()]).await {
            Err(Error::File { path, source }) => {
                assert_eq!(path, src.path().join("evil.img"));
                assert_eq!(source.kind(), std::io::ErrorKind::InvalidInput);
            }
            other => panic!("{other:?}"),
        }
        // Nothing was sent for it; the directory send skips it.
        send_dir_over(&mut a, src.path()).await
    };
    let (sent, received) = tokio::join!(sender, receive_batch_over(&mut b, &scene.target, &limits));
    assert_eq!(sent.unwrap(), BatchStats { files: 1, bytes: 4 });
    assert_eq!(received.unwrap(), BatchStats { files: 1, bytes: 4 });
    assert_eq!(names_in(&scene.target), ["core-1.img"]);
}

// --- sizes -------------------------------------------------------------------

#[tokio::test]
async fn a_file_larger_than_announced_is_refused_and_removed() {
    let scene = Scene::new();
    let before = snapshot(scene.root.path());
    let files = [
        RawFile {
            name: "good.img",
            size: 3,
            mode: 0o600,
            data: b"abc",
            end: true,
        },
        RawFile {
            name: "big.img",
            size: 10,
            mode: 0o600,
            data: &[1; 20],
            end: true,
        },
    ];
    let (received, sent) = refused_raw(
        link_config(),
        &scene.target,
        ImageLimits::default(),
        &files,
        BatchEnd {
            files: 2,
            bytes: 13,
        },
    )
    .await;
    match &received {
        Error::Protocol(m) => assert!(m.contains("larger than announced"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_remote(&sent, ErrorCode::Protocol);
    // The partial file is gone; the completed one stays for the caller.
    assert_eq!(names_in(&scene.target), ["good.img"]);
    let mut after = snapshot(scene.root.path());
    after.remove(&scene.target.join("good.img"));
    assert_eq!(after, before);
}

#[tokio::test]
async fn a_file_shorter_than_announced_is_refused_and_removed() {
    let scene = Scene::new();
    let before = snapshot(scene.root.path());
    let file = RawFile {
        name: "short.img",
        size: 10,
        mode: 0o600,
        data: b"12345",
        end: true,
    };
    let (received, sent) = refused_raw(
        link_config().plaintext(),
        &scene.target,
        ImageLimits::default(),
        &[file],
        BatchEnd {
            files: 1,
            bytes: 10,
        },
    )
    .await;
    match &received {
        Error::Protocol(m) => assert!(m.contains("shorter than announced"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_remote(&sent, ErrorCode::Protocol);
    assert_eq!(snapshot(scene.root.path()), before);
}

#[tokio::test]
async fn a_batch_end_that_miscounts_is_refused() {
    let scene = Scene::new();
    let file = RawFile {
        name: "a.img",
        size: 2,
        mode: 0o600,
        data: b"ab",
        end: true,
    };
    let (received, sent) = refused_raw(
        link_config(),
        &scene.target,
        ImageLimits::default(),
        &[file],
        BatchEnd { files: 2, bytes: 2 },
    )
    .await;
    assert!(matches!(received, Error::Protocol(_)), "{received:?}");
    assert_remote(&sent, ErrorCode::Protocol);
}

#[tokio::test]
async fn a_new_file_before_the_last_one_ended_is_refused() {
    let scene = Scene::new();
    let before = snapshot(scene.root.path());
    let files = [
        RawFile {
            name: "a.img",
            size: 4,
            mode: 0o600,
            data: b"ab",
            end: false,
        },
        RawFile {
            name: "b.img",
            size: 0,
            mode: 0o600,
            data: b"",
            end: true,
        },
    ];
    let (received, sent) = refused_raw(
        link_config(),
        &scene.target,
        ImageLimits::default(),
        &files,
        BatchEnd { files: 2, bytes: 4 },
    )
    .await;
    assert!(matches!(received, Error::Protocol(_)), "{received:?}");
    assert_remote(&sent, ErrorCode::Protocol);
    assert_eq!(snapshot(scene.root.path()), before);
}

// --- limits ------------------------------------------------------------------

/// Sends the files of `src` with the real sender to a receiver with
/// `limits`, which must refuse with a LIMIT error.
async fn refused_by_limit(src: &Path, limits: ImageLimits) -> Scene {
    let scene = Scene::new();
    let (mut a, mut b) = pair(link_config()).await;
    let (sent, received) = tokio::join!(
        send_dir_over(&mut a, src),
        receive_batch_over(&mut b, &scene.target, &limits)
    );
    assert!(matches!(received, Err(Error::Limit(_))), "{received:?}");
    assert_remote(&sent.unwrap_err(), ErrorCode::Limit);
    scene
}

#[tokio::test]
async fn too_many_files_are_refused() {
    let src = tempfile::tempdir().unwrap();
    for n in ["a.img", "b.img", "c.img"] {
        write_file(src.path(), n, b"x", 0o600);
    }
    let limits = ImageLimits {
        max_files: 2,
        ..ImageLimits::default()
    };
    let scene = refused_by_limit(src.path(), limits).await;
    // The third file is refused before it is created.
    assert_eq!(names_in(&scene.target), ["a.img", "b.img"]);
}

#[tokio::test]
async fn a_file_above_the_size_limit_is_refused_before_it_is_written() {
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "pages-1.img", &noise(200, 1), 0o600);
    let limits = ImageLimits {
        max_file_size: 100,
        ..ImageLimits::default()
    };
    let scene = refused_by_limit(src.path(), limits).await;
    assert!(names_in(&scene.target).is_empty());
}

#[tokio::test]
async fn a_batch_above_the_total_limit_is_refused() {
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "a.img", &noise(200, 2), 0o600);
    write_file(src.path(), "b.img", &noise(200, 3), 0o600);
    let limits = ImageLimits {
        max_total: 300,
        ..ImageLimits::default()
    };
    let scene = refused_by_limit(src.path(), limits).await;
    assert_eq!(names_in(&scene.target), ["a.img"]);
}

#[tokio::test]
async fn a_big_file_is_stopped_early_when_refused() {
    // The receiver refuses at `FileBegin`; the sender, watching for the
    // answer, must not first push its 64 MiB into a socket nobody reads.
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "pages-1.img", &vec![0u8; 64 << 20], 0o600);
    let limits = ImageLimits {
        max_file_size: 1 << 20,
        ..ImageLimits::default()
    };
    let scene = tokio::time::timeout(
        Duration::from_secs(60),
        refused_by_limit(src.path(), limits),
    )
    .await
    .expect("the sender must stop on the receiver's error");
    assert!(names_in(&scene.target).is_empty());
}

// --- the receiving directory --------------------------------------------------

#[tokio::test]
async fn a_missing_or_symlinked_target_directory_fails() {
    let scene = Scene::new();
    let link = scene.root.path().join("link");
    symlink(&scene.target, &link).unwrap();
    for dir in [scene.root.path().join("missing"), link] {
        let (mut a, mut b) = pair(link_config().plaintext()).await;
        let src = tempfile::tempdir().unwrap();
        write_file(src.path(), "a.img", b"a", 0o600);
        let limits = ImageLimits::default();
        let (sent, received) = tokio::join!(
            send_dir_over(&mut a, src.path()),
            receive_batch_over(&mut b, &dir, &limits)
        );
        assert!(matches!(received, Err(Error::File { .. })), "{received:?}");
        assert_remote(&sent.unwrap_err(), ErrorCode::Failed);
    }
    assert!(names_in(&scene.target).is_empty());
}

#[tokio::test]
async fn a_sender_that_fails_mid_file_gets_its_partial_file_removed() {
    let scene = Scene::new();
    let before = snapshot(scene.root.path());
    let (mut src, mut dst) = pair(link_config()).await;
    let sender = async {
        let begin = FileBegin {
            name: "core-1.img".into(),
            size: 100,
            mode: 0o600,
        };
        src.writer.send(Kind::FileBegin, &begin).await.unwrap();
        src.writer.send_data(&[5; 40]).await.unwrap();
        // What the real sender does when its file changes under it.
        src.writer
            .send_error(ErrorCode::Failed, "core-1.img changed while being sent", 0)
            .await
            .unwrap();
    };
    let limits = ImageLimits::default();
    let ((), received) = tokio::join!(sender, receive_batch_over(&mut dst, &scene.target, &limits));
    match received {
        Err(Error::Remote { code, message }) => {
            assert_eq!(code, ErrorCode::Failed);
            assert!(message.contains("changed"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(snapshot(scene.root.path()), before);
}

#[tokio::test]
async fn a_file_that_grows_while_being_sent_fails_the_batch_and_the_receiver_is_told() {
    // A /proc file says it is empty and then has content: to the sender, a
    // file that grew after its `FileBegin` went out.
    let scene = Scene::new();
    let (mut a, mut b) = pair(link_config()).await;
    let limits = ImageLimits::default();
    let names = ["status".to_string()];
    let (sent, received) = tokio::join!(
        send_files_over(&mut a, Path::new("/proc/self"), &names),
        receive_batch_over(&mut b, &scene.target, &limits)
    );
    match sent {
        Err(Error::File { source, .. }) => assert!(source.to_string().contains("grew"), "{source}"),
        other => panic!("{other:?}"),
    }
    match received {
        Err(Error::Remote { code, message }) => {
            assert_eq!(code, ErrorCode::Failed);
            assert!(message.contains("grew"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(names_in(&scene.target).is_empty(), "the partial file stays");
}

//! The native target against a hostile or broken source: paths that would
//! escape the root, symlinks planted in the target's tree, limits, and
//! protocol violations. Hand-crafted messages go over a real TLS link; the
//! directory around the target's root is compared before and after to
//! show nothing outside it was touched.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;

use common::{noise, pair, snapshot, write_file};
use nix::sys::stat::{Mode, SFlag, mknod};
use phaul_fs::tree::{Kind, Meta};
use phaul_fs::wire::{ManifestEntry, Msg, MsgReader};
use phaul_fs::{Error, FsDriver, FsLimits, NativeSource, SyncStats, serve_native};
use phaul_transport::{ErrorCode, Link};

/// A source that speaks the protocol by hand.
struct Fake {
    link: Link,
    mr: MsgReader,
}

impl Fake {
    /// Starts pass `pass` (the final one when `last`) and reads the
    /// target's manifest.
    async fn begin(&mut self, pass: u32, last: bool) -> Vec<ManifestEntry> {
        self.send(&[Msg::PassBegin { pass, last }]).await;
        let mut out = Vec::new();
        loop {
            match self.mr.next(&mut self.link.reader).await.unwrap() {
                Msg::Entry(e) => out.push(e),
                Msg::ManifestEnd { entries } => {
                    assert_eq!(entries, out.len() as u64);
                    return out;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Sends messages; a send may fail once the target has given up.
    async fn send(&mut self, msgs: &[Msg]) {
        let mut buf = Vec::new();
        for m in msgs {
            m.encode(&mut buf);
        }
        let _ = self.link.writer.send_data(&buf).await;
    }

    /// The target's answer to the pass.
    async fn answer(&mut self) -> phaul_fs::Result<Msg> {
        self.mr.next(&mut self.link.reader).await
    }
}

fn meta(mode: u32) -> Meta {
    Meta {
        mode,
        uid: 0,
        gid: 0,
        mtime_sec: 1_600_000_000,
        mtime_nsec: 0,
    }
}

fn write(path: &[u8], data: &[u8]) -> [Msg; 2] {
    [
        Msg::Write {
            path: path.to_vec(),
            size: data.len() as u64,
            meta: meta(0o644),
        },
        Msg::Data(bytes::Bytes::copy_from_slice(data)),
    ]
}

/// Runs one hand-crafted pass of `ops` (then a `PassEnd` claiming
/// `files`, `bytes` and the number of operations) against a target
/// serving `root`; returns what the target returned and what the source
/// was answered.
async fn crafted(
    root: &Path,
    limits: FsLimits,
    ops: Vec<Msg>,
    files: u64,
    bytes: u64,
) -> (phaul_fs::Result<SyncStats>, phaul_fs::Result<Msg>) {
    let (a, b) = pair().await;
    let owned = root.to_path_buf();
    let target = tokio::spawn(async move { serve_native(b, &owned, &limits).await });
    let mut fake = Fake {
        link: a,
        mr: MsgReader::new(),
    };
    // The final pass, so that a target that accepts it returns.
    fake.begin(0, true).await;
    let n_ops = ops.iter().filter(|m| !matches!(m, Msg::Data(_))).count() as u64;
    let mut all = ops;
    all.push(Msg::PassEnd {
        files,
        bytes,
        ops: n_ops,
    });
    fake.send(&all).await;
    let answer = fake.answer().await;
    (target.await.unwrap(), answer)
}

fn assert_refused_remotely<T: std::fmt::Debug>(answer: &phaul_fs::Result<T>, code: ErrorCode) {
    match answer {
        Err(Error::Link(phaul_transport::Error::Remote { code: c, .. })) if *c == code => {}
        other => panic!("expected the target's {code:?} error, got {other:?}"),
    }
}

/// A directory holding the target's root, a file beside it and a
/// directory beside it: what must never change.
fn arena() -> (tempfile::TempDir, std::path::PathBuf) {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    fs::create_dir(&root).unwrap();
    write_file(&outer.path().join("victim"), b"must stay\n", 0o600);
    fs::create_dir(outer.path().join("outside")).unwrap();
    write_file(&outer.path().join("outside/keep"), b"keep me\n", 0o640);
    (outer, root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_that_would_escape_the_root_are_refused() {
    if !common::require_root("paths_that_would_escape_the_root_are_refused") {
        return;
    }
    let (outer, root) = arena();
    let victim_abs = outer.path().join("victim");
    let abs = victim_abs.as_os_str().as_encoded_bytes().to_vec();
    let cases: Vec<(&str, Vec<Msg>)> = vec![
        ("write ..", write(b"../victim", b"pwned").to_vec()),
        ("write absolute", write(&abs, b"pwned").to_vec()),
        ("write a/../..", write(b"a/../../victim", b"pwned").to_vec()),
        ("write empty component", write(b"a//b", b"x").to_vec()),
        ("write NUL", write(b"x\0y", b"x").to_vec()),
        ("write .", write(b"./victim", b"x").to_vec()),
        (
            "mkdir ..",
            vec![Msg::Mkdir {
                path: b"../newdir".to_vec(),
            }],
        ),
        (
            "delete ..",
            vec![Msg::Delete {
                path: b"../victim".to_vec(),
            }],
        ),
        ("delete absolute", vec![Msg::Delete { path: abs.clone() }]),
        (
            "set_meta ..",
            vec![Msg::SetMeta {
                path: b"..".to_vec(),
                meta: meta(0o777),
            }],
        ),
        (
            "hard link to outside",
            vec![Msg::Link {
                path: b"stolen".to_vec(),
                to: b"../victim".to_vec(),
            }],
        ),
        (
            "symlink at ..",
            vec![Msg::Symlink {
                path: b"../evil".to_vec(),
                target: b"/etc".to_vec(),
                meta: meta(0),
            }],
        ),
        (
            "node at absolute",
            vec![Msg::Node {
                path: abs.clone(),
                kind: Kind::Fifo,
                rdev: 0,
                meta: meta(0o644),
            }],
        ),
    ];
    let before = snapshot(outer.path());
    for (name, ops) in cases {
        let (target, answer) = crafted(&root, FsLimits::default(), ops, 0, 0).await;
        assert!(
            matches!(target, Err(Error::BadPath { .. })),
            "{name}: the target returned {target:?}"
        );
        assert_refused_remotely(&answer, ErrorCode::BadRequest);
        assert_eq!(snapshot(outer.path()), before, "{name}: something changed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_a_planted_symlink_are_refused() {
    if !common::require_root("writes_through_a_planted_symlink_are_refused") {
        return;
    }
    let (outer, root) = arena();
    let outside = outer.path().join("outside");
    symlink(&outside, root.join("dir")).unwrap();
    write_file(&root.join("f"), b"a file\n", 0o644);
    let cases: Vec<(&str, Vec<Msg>)> = vec![
        ("write dir/x", write(b"dir/x", b"pwned").to_vec()),
        ("overwrite dir/keep", write(b"dir/keep", b"pwned").to_vec()),
        (
            "mkdir dir/sub",
            vec![Msg::Mkdir {
                path: b"dir/sub".to_vec(),
            }],
        ),
        (
            "chmod dir/keep",
            vec![Msg::SetMeta {
                path: b"dir/keep".to_vec(),
                meta: meta(0o777),
            }],
        ),
        (
            "delete dir/keep",
            vec![Msg::Delete {
                path: b"dir/keep".to_vec(),
            }],
        ),
        (
            "symlink dir/s",
            vec![Msg::Symlink {
                path: b"dir/s".to_vec(),
                target: b"x".to_vec(),
                meta: meta(0),
            }],
        ),
        (
            "link dir/l",
            vec![Msg::Link {
                path: b"dir/l".to_vec(),
                to: b"f".to_vec(),
            }],
        ),
        (
            "link from dir/keep",
            vec![Msg::Link {
                path: b"stolen".to_vec(),
                to: b"dir/keep".to_vec(),
            }],
        ),
        (
            "fifo dir/p",
            vec![Msg::Node {
                path: b"dir/p".to_vec(),
                kind: Kind::Fifo,
                rdev: 0,
                meta: meta(0o644),
            }],
        ),
    ];
    let before = snapshot(outer.path());
    for (name, ops) in cases {
        let (target, answer) = crafted(&root, FsLimits::default(), ops, 0, 0).await;
        match &target {
            Err(Error::Refused { reason, .. }) => {
                assert!(reason.contains("symlink"), "{name}: {reason}")
            }
            other => panic!("{name}: the target returned {other:?}"),
        }
        assert_refused_remotely(&answer, ErrorCode::BadRequest);
        assert_eq!(snapshot(outer.path()), before, "{name}: something changed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_as_the_last_component_is_acted_on_not_followed() {
    if !common::require_root("a_symlink_as_the_last_component_is_acted_on_not_followed") {
        return;
    }
    let (outer, root) = arena();
    let keep = outer.path().join("outside/keep");
    symlink(&keep, root.join("to_keep")).unwrap();
    symlink(&keep, root.join("replace_me")).unwrap();
    symlink(outer.path().join("outside"), root.join("dirlink")).unwrap();
    let keep_before = fs::metadata(&keep).unwrap();
    let outside_before = snapshot(&outer.path().join("outside"));
    let mut ops = vec![
        // Owner and time of the symlink itself; no mode (symlinks have none).
        Msg::SetMeta {
            path: b"to_keep".to_vec(),
            meta: Meta {
                mode: 0o777,
                uid: 4321,
                gid: 4321,
                mtime_sec: 1_000_000_000,
                mtime_nsec: 7,
            },
        },
        // Unlinks the symlink, not what it points to.
        Msg::Delete {
            path: b"dirlink".to_vec(),
        },
    ];
    // Replaces the symlink with a file.
    ops.extend(write(b"replace_me", b"a real file\n"));
    let (target, answer) = crafted(&root, FsLimits::default(), ops, 1, 12).await;
    let stats = target.unwrap();
    assert!(
        matches!(answer, Ok(Msg::PassDone { files: 1, .. })),
        "{answer:?}"
    );
    assert_eq!((stats.files, stats.bytes, stats.deleted), (1, 12, 1));
    let l = fs::symlink_metadata(root.join("to_keep")).unwrap();
    assert!(l.file_type().is_symlink());
    assert_eq!(
        (l.uid(), l.gid(), l.mtime(), l.mtime_nsec()),
        (4321, 4321, 1_000_000_000, 7)
    );
    assert!(
        fs::symlink_metadata(root.join("replace_me"))
            .unwrap()
            .is_file()
    );
    assert_eq!(fs::read(root.join("replace_me")).unwrap(), b"a real file\n");
    assert!(!root.join("dirlink").exists());
    let keep_after = fs::metadata(&keep).unwrap();
    assert_eq!(
        (
            keep_after.mode(),
            keep_after.uid(),
            keep_after.mtime(),
            keep_after.mtime_nsec()
        ),
        (
            keep_before.mode(),
            keep_before.uid(),
            keep_before.mtime(),
            keep_before.mtime_nsec()
        )
    );
    assert_eq!(snapshot(&outer.path().join("outside")), outside_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_replaces_a_planted_directory_symlink_with_a_directory() {
    if !common::require_root("the_driver_replaces_a_planted_directory_symlink_with_a_directory") {
        return;
    }
    let (outer, root) = arena();
    symlink(outer.path().join("outside"), root.join("dir")).unwrap();
    let src = tempfile::tempdir().unwrap();
    fs::create_dir(src.path().join("dir")).unwrap();
    write_file(&src.path().join("dir/x"), b"inside\n", 0o644);
    write_file(
        &src.path().join("dir/keep"),
        b"not the outside one\n",
        0o644,
    );
    let outside_before = snapshot(&outer.path().join("outside"));
    let victim_before = fs::read(outer.path().join("victim")).unwrap();

    let (a, b) = pair().await;
    let owned = root.clone();
    let target = tokio::spawn(async move { serve_native(b, &owned, &FsLimits::default()).await });
    let mut driver = NativeSource::new(a, src.path().to_path_buf());
    driver.start().await.unwrap();
    driver.final_sync().await.unwrap();
    target.await.unwrap().unwrap();

    let m = fs::symlink_metadata(root.join("dir")).unwrap();
    assert!(m.is_dir(), "dir is a real directory now");
    assert_eq!(fs::read(root.join("dir/x")).unwrap(), b"inside\n");
    common::assert_same_tree(src.path(), &root);
    assert_eq!(snapshot(&outer.path().join("outside")), outside_before);
    assert_eq!(
        fs::read(outer.path().join("victim")).unwrap(),
        victim_before
    );
}

/// Runs the native driver's first pass from `src` into an empty target
/// with `limits`; returns the source's and the target's results.
async fn first_pass(
    src: &Path,
    dst: &Path,
    limits: FsLimits,
) -> (
    phaul_fs::Result<SyncStats>,
    phaul_fs::Result<SyncStats>,
    NativeSource,
) {
    let (a, b) = pair().await;
    let owned = dst.to_path_buf();
    let target = tokio::spawn(async move { serve_native(b, &owned, &limits).await });
    let mut driver = NativeSource::new(a, src.to_path_buf());
    let source = driver.start().await;
    (source, target.await.unwrap(), driver)
}

fn leftovers(dir: &Path) -> Vec<String> {
    snapshot(dir)
        .entries
        .into_keys()
        .filter(|k| k.contains(".phaul-tmp"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_enforced() {
    if !common::require_root("limits_are_enforced") {
        return;
    }
    // One file over the per-file limit.
    let src = tempfile::tempdir().unwrap();
    write_file(&src.path().join("small"), b"fine\n", 0o644);
    write_file(&src.path().join("big"), &noise(2 << 20, 5), 0o644);
    let dst = tempfile::tempdir().unwrap();
    let limits = FsLimits {
        max_file_size: 1 << 20,
        ..FsLimits::default()
    };
    let (source, target, mut driver) = first_pass(src.path(), dst.path(), limits).await;
    assert_refused_remotely(&source, ErrorCode::Limit);
    assert!(matches!(target, Err(Error::Limit(_))), "{target:?}");
    assert!(!dst.path().join("big").exists());
    assert!(leftovers(dst.path()).is_empty());
    // A failed pass leaves the driver unusable, and it says so.
    assert!(matches!(driver.next_iteration().await, Err(Error::Broken)));

    // Three files that together exceed the per-pass limit.
    let src = tempfile::tempdir().unwrap();
    for i in 0..3 {
        write_file(&src.path().join(format!("f{i}")), &noise(1 << 20, i), 0o644);
    }
    let dst = tempfile::tempdir().unwrap();
    let limits = FsLimits {
        max_pass_bytes: (5 << 20) / 2,
        ..FsLimits::default()
    };
    let (source, target, _) = first_pass(src.path(), dst.path(), limits).await;
    assert_refused_remotely(&source, ErrorCode::Limit);
    assert!(matches!(target, Err(Error::Limit(_))), "{target:?}");
    assert!(leftovers(dst.path()).is_empty());

    // More operations than entries allowed.
    let src = tempfile::tempdir().unwrap();
    for i in 0..30 {
        write_file(&src.path().join(format!("f{i}")), b"x", 0o644);
    }
    let dst = tempfile::tempdir().unwrap();
    let limits = FsLimits {
        max_entries: 10,
        ..FsLimits::default()
    };
    let (source, target, _) = first_pass(src.path(), dst.path(), limits).await;
    assert_refused_remotely(&source, ErrorCode::Limit);
    assert!(matches!(target, Err(Error::Limit(_))), "{target:?}");
    assert!(fs::read_dir(dst.path()).unwrap().count() <= 10);

    // A device node where devices are not allowed.
    let src = tempfile::tempdir().unwrap();
    mknod(
        &src.path().join("null"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    let dst = tempfile::tempdir().unwrap();
    let limits = FsLimits {
        allow_devices: false,
        ..FsLimits::default()
    };
    let (source, target, _) = first_pass(src.path(), dst.path(), limits).await;
    assert_refused_remotely(&source, ErrorCode::BadRequest);
    assert!(matches!(target, Err(Error::Refused { .. })), "{target:?}");
    assert!(!dst.path().join("null").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_abort_the_pass() {
    if !common::require_root("protocol_violations_abort_the_pass") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<Msg>, u64, u64)> = vec![
        (
            "data without a file",
            vec![Msg::Data(bytes::Bytes::from_static(b"x"))],
            0,
            0,
        ),
        (
            "more data than announced",
            vec![
                Msg::Write {
                    path: b"f".to_vec(),
                    size: 2,
                    meta: meta(0o644),
                },
                Msg::Data(bytes::Bytes::from_static(b"abc")),
            ],
            1,
            2,
        ),
        (
            "another operation inside a file",
            vec![
                Msg::Write {
                    path: b"f".to_vec(),
                    size: 10,
                    meta: meta(0o644),
                },
                Msg::Data(bytes::Bytes::from_static(b"abc")),
                Msg::Mkdir {
                    path: b"d".to_vec(),
                },
            ],
            1,
            10,
        ),
        (
            "counts that do not match",
            write(b"f", b"abc").to_vec(),
            5,
            3,
        ),
        (
            "a manifest message from the source",
            vec![Msg::ManifestEnd { entries: 0 }],
            0,
            0,
        ),
        (
            "delete the root",
            vec![Msg::Delete { path: Vec::new() }],
            0,
            0,
        ),
    ];
    for (name, ops, files, bytes) in cases {
        let (target, answer) = crafted(root.path(), FsLimits::default(), ops, files, bytes).await;
        assert!(
            matches!(target, Err(Error::Protocol(_) | Error::Refused { .. })),
            "{name}: {target:?}"
        );
        assert!(answer.is_err(), "{name}: {answer:?}");
        assert!(leftovers(root.path()).is_empty(), "{name}");
    }
    assert!(root.path().exists());

    // A pass that does not start at 0.
    let (a, b) = pair().await;
    let owned = root.path().to_path_buf();
    let target = tokio::spawn(async move { serve_native(b, &owned, &FsLimits::default()).await });
    let mut fake = Fake {
        link: a,
        mr: MsgReader::new(),
    };
    fake.send(&[Msg::PassBegin {
        pass: 5,
        last: false,
    }])
    .await;
    assert_refused_remotely(&fake.answer().await, ErrorCode::Protocol);
    assert!(matches!(target.await.unwrap(), Err(Error::Protocol(_))));

    // An oversized message header is refused before anything is read.
    let (a, b) = pair().await;
    let owned = root.path().to_path_buf();
    let target = tokio::spawn(async move { serve_native(b, &owned, &FsLimits::default()).await });
    let mut fake = Fake {
        link: a,
        mr: MsgReader::new(),
    };
    fake.begin(0, false).await;
    let _ = fake
        .link
        .writer
        .send_data(&[4, 0xff, 0xff, 0xff, 0x7f])
        .await;
    assert_refused_remotely(&fake.answer().await, ErrorCode::Protocol);
    assert!(matches!(target.await.unwrap(), Err(Error::Protocol(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_pass_leaves_no_partial_file() {
    if !common::require_root("an_aborted_pass_leaves_no_partial_file") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    // The source reports a failure in the middle of a file.
    let (a, b) = pair().await;
    let owned = root.path().to_path_buf();
    let target = tokio::spawn(async move { serve_native(b, &owned, &FsLimits::default()).await });
    let mut fake = Fake {
        link: a,
        mr: MsgReader::new(),
    };
    fake.begin(0, false).await;
    fake.send(&[
        Msg::Write {
            path: b"f".to_vec(),
            size: 1000,
            meta: meta(0o644),
        },
        Msg::Data(bytes::Bytes::from(vec![7u8; 100])),
    ])
    .await;
    fake.link
        .writer
        .send_error(ErrorCode::Failed, "the source's disk failed", 0)
        .await
        .unwrap();
    match target.await.unwrap() {
        Err(Error::Link(phaul_transport::Error::Remote {
            code: ErrorCode::Failed,
            ..
        })) => {}
        other => panic!("{other:?}"),
    }
    assert!(leftovers(root.path()).is_empty());
    assert!(!root.path().join("f").exists());

    // The source goes away in the middle of a file.
    let (a, b) = pair().await;
    let owned = root.path().to_path_buf();
    let target = tokio::spawn(async move { serve_native(b, &owned, &FsLimits::default()).await });
    let mut fake = Fake {
        link: a,
        mr: MsgReader::new(),
    };
    fake.begin(0, false).await;
    fake.send(&[
        Msg::Write {
            path: b"g".to_vec(),
            size: 1000,
            meta: meta(0o644),
        },
        Msg::Data(bytes::Bytes::from(vec![7u8; 100])),
    ])
    .await;
    drop(fake);
    assert!(target.await.unwrap().is_err());
    assert!(leftovers(root.path()).is_empty());
    assert!(!root.path().join("g").exists());
}

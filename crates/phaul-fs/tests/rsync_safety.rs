//! The rsync target against remote commands it must not run, and the
//! source's report of an rsync failure.

mod common;

use std::fs;
use std::os::unix::fs::symlink;

use common::{pair, snapshot, write_file};
use phaul_fs::wire::{Msg, decode_frame};
use phaul_fs::{Error, FsDriver, RsyncSource, RsyncTarget, serve_rsync};
use phaul_transport::ErrorCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_runs_only_rsync_servers_inside_its_root() {
    if !common::require_root_and_rsync("the_target_runs_only_rsync_servers_inside_its_root") {
        return;
    }
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    fs::create_dir(&root).unwrap();
    fs::create_dir(outer.path().join("outside")).unwrap();
    write_file(&outer.path().join("outside/keep"), b"keep\n", 0o644);
    symlink(outer.path().join("outside"), root.join("esc")).unwrap();
    let marker = outer.path().join("ran");
    let touch = format!("touch {}", marker.display());
    let outside = outer.path().join("outside").display().to_string();
    let opts = "-lHogDtpAXre.iLsfxCIvu";
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("a shell", vec!["sh".into(), "-c".into(), touch.clone()]),
        (
            "a shell as rsync's arguments",
            vec![
                "rsync".into(),
                "--server".into(),
                "-e".into(),
                touch,
                ".".into(),
                ".".into(),
            ],
        ),
        (
            "not a server",
            vec![
                "rsync".into(),
                "--daemon".into(),
                opts.into(),
                ".".into(),
                ".".into(),
            ],
        ),
        (
            "the sender",
            vec![
                "rsync".into(),
                "--server".into(),
                "--sender".into(),
                opts.into(),
                ".".into(),
                ".".into(),
            ],
        ),
        (
            "secluded args",
            vec![
                "rsync".into(),
                "--server".into(),
                "-slHogDtpAXre.iLsfxCIvu".into(),
                ".".into(),
                ".".into(),
            ],
        ),
        (
            "keep-dirlinks",
            vec![
                "rsync".into(),
                "--server".into(),
                "-Kre.iLsfxCIvu".into(),
                ".".into(),
                ".".into(),
            ],
        ),
        (
            "a log file",
            vec![
                "rsync".into(),
                "--server".into(),
                "--log-file=/tmp/x".into(),
                opts.into(),
                ".".into(),
                ".".into(),
            ],
        ),
        (
            "an absolute destination",
            vec![
                "rsync".into(),
                "--server".into(),
                opts.into(),
                ".".into(),
                outside.clone(),
            ],
        ),
        (
            "a destination with ..",
            vec![
                "rsync".into(),
                "--server".into(),
                opts.into(),
                ".".into(),
                "../outside".into(),
            ],
        ),
        (
            "a destination through a symlink",
            vec![
                "rsync".into(),
                "--server".into(),
                opts.into(),
                ".".into(),
                "esc/".into(),
            ],
        ),
    ];
    let before = snapshot(outer.path());
    for (name, argv) in cases {
        let (mut a, b) = pair().await;
        let owned = root.clone();
        let target =
            tokio::spawn(async move { serve_rsync(b, &owned, &RsyncTarget::default()).await });
        let argv = argv.into_iter().map(String::into_bytes).collect();
        a.writer
            .send_data(&Msg::RsyncCommand { last: true, argv }.to_vec())
            .await
            .unwrap();
        match a.reader.recv_data().await {
            Err(phaul_transport::Error::Remote {
                code: ErrorCode::BadRequest,
                ..
            }) => {}
            other => panic!("{name}: expected a refusal, got {other:?}"),
        }
        match target.await.unwrap() {
            Err(Error::RsyncCommand { .. }) => {}
            other => panic!("{name}: the target returned {other:?}"),
        }
        assert!(!marker.exists(), "{name}: a command ran");
        assert_eq!(snapshot(outer.path()), before, "{name}: something changed");
    }

    // The same target runs rsync's own command.
    let (mut a, b) = pair().await;
    let owned = root.clone();
    let target = tokio::spawn(async move { serve_rsync(b, &owned, &RsyncTarget::default()).await });
    let argv = [
        "rsync",
        "--server",
        opts,
        "--delete",
        "--numeric-ids",
        ".",
        ".",
    ]
    .into_iter()
    .map(|w| w.as_bytes().to_vec())
    .collect();
    a.writer
        .send_data(&Msg::RsyncCommand { last: true, argv }.to_vec())
        .await
        .unwrap();
    let frame = a.reader.recv_data().await.unwrap().unwrap();
    assert_eq!(decode_frame(&frame).unwrap(), Msg::RsyncAccepted);
    // No client behind it: end our side; the server fails and says so.
    a.writer.send_end().await.unwrap();
    while a.reader.recv_data().await.unwrap().is_some() {}
    let frame = a.reader.recv_data().await.unwrap().unwrap();
    match decode_frame(&frame).unwrap() {
        Msg::RsyncExit { code, .. } => assert_ne!(code, 0),
        other => panic!("{other:?}"),
    }
    target.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rsync_failure_is_reported_and_the_next_pass_still_works() {
    if !common::require_root_and_rsync("an_rsync_failure_is_reported_and_the_next_pass_still_works")
    {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let src = base.path().join("src");
    let dst = tempfile::tempdir().unwrap();
    let (a, b) = pair().await;
    let root = dst.path().to_path_buf();
    let target = tokio::spawn(async move { serve_rsync(b, &root, &RsyncTarget::default()).await });
    let helper = env!("CARGO_BIN_EXE_phaul-rsync-rsh").into();
    // No rsync at all: nothing reaches the link, which stays usable.
    let mut driver = RsyncSource::new(a, src.clone(), helper)
        .unwrap()
        .with_rsync("/nonexistent/rsync".into());
    assert!(matches!(driver.start().await, Err(Error::Io { .. })));
    let mut driver = driver.with_rsync("rsync".into());
    // rsync fails on the missing source directory.
    match driver.start().await {
        Err(Error::Rsync { status, stderr }) => {
            assert!(status.starts_with("exit status"), "{status}");
            assert!(stderr.contains("No such file"), "{stderr}");
        }
        other => panic!("{other:?}"),
    }
    // rsync failed cleanly; the link is still in step.
    fs::create_dir(&src).unwrap();
    write_file(&src.join("f"), b"now it exists\n", 0o644);
    // A time in a second of its own: rsync compares directory times to the
    // second only.
    common::set_mtime(&src, 1_600_000_000, 5);
    let s = driver.final_sync().await.unwrap();
    assert_eq!((s.files, s.bytes), (1, 14));
    target.await.unwrap().unwrap();
    common::assert_same_tree(&src, dst.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helper_path_rsync_would_split_is_refused() {
    let (a, _b) = pair().await;
    let r = RsyncSource::new(a, "/tmp".into(), "/tmp/has space/rsh".into());
    assert!(matches!(r, Err(Error::Helper(_))), "{r:?}");
}

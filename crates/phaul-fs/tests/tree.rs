//! The same tree test for both copying drivers, over a real TLS link:
//! a first pass into an empty target, a pass after changes while "running",
//! and the final sync after one more change "while frozen"; after each,
//! the target must be the source's exact copy (kinds, contents, modes with
//! setuid, numeric owners, nanosecond mtimes of files, directories and
//! symlinks, symlink targets, device numbers, hard-link grouping), and the
//! pass's counts must be the expected ones.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use common::{assert_same_tree, noise, pair, set_mtime, write_file};
use nix::sys::stat::{Mode, SFlag, mknod};
use nix::unistd::{Gid, Uid, chown, mkfifo};
use phaul_fs::{
    FsDriver, FsLimits, NativeSource, RsyncSource, RsyncTarget, SyncStats, serve_native,
    serve_rsync,
};

const BIG: usize = 3 << 20;

/// What the first pass must send: every regular file's content once per
/// inode.
struct Expect {
    files: u64,
    bytes: u64,
    entries: u64,
}

fn build(src: &Path) -> Expect {
    let f = |p: &str| src.join(p);
    fs::create_dir_all(f("dir/nested")).unwrap();
    fs::create_dir(f("links")).unwrap();
    fs::create_dir(f("hard")).unwrap();
    fs::create_dir(f("gone_dir")).unwrap();
    write_file(&f("empty"), b"", 0o644);
    write_file(&f("small.txt"), b"hello, phaul\n", 0o640);
    write_file(&f("big.bin"), &noise(BIG, 1), 0o600);
    write_file(&f("setuid"), b"#!/bin/true\n", 0o4755);
    write_file(&f("owned"), b"owned by 1234\n", 0o644);
    chown(
        &f("owned"),
        Some(Uid::from_raw(1234)),
        Some(Gid::from_raw(1234)),
    )
    .unwrap();
    write_file(&f("dir/exec.sh"), b"#!/bin/sh\necho hi\n", 0o755);
    write_file(&f("dir/nested/deep.txt"), b"deep\n", 0o644);
    write_file(&f("hard/a"), b"one inode, three names\n", 0o644);
    fs::hard_link(f("hard/a"), f("hard/b")).unwrap();
    fs::hard_link(f("hard/a"), f("dir/nested/hard_c")).unwrap();
    write_file(&f("gone_dir/x"), b"x\n", 0o644);
    write_file(&f("gone_dir/y"), b"yy\n", 0o644);
    write_file(&f("gone_file"), b"soon gone\n", 0o644);
    write_file(&f("change_me"), b"version 1\n", 0o644);
    write_file(&f("frozen_change"), b"before the freeze\n", 0o644);
    symlink("../small.txt", f("links/to_file")).unwrap();
    symlink("does/not/exist", f("links/dangling")).unwrap();
    symlink("../dir", f("links/to_dir")).unwrap();
    symlink("/etc", f("links/abs")).unwrap();
    mkfifo(&f("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
    fs::set_permissions(
        f("fifo"),
        std::os::unix::fs::PermissionsExt::from_mode(0o620),
    )
    .unwrap();
    mknod(
        &f("null"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    fs::set_permissions(
        f("dir"),
        std::os::unix::fs::PermissionsExt::from_mode(0o750),
    )
    .unwrap();
    fs::set_permissions(src, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // Times with nanoseconds, on everything (directories last, deepest
    // first, since making their children moved them).
    let mut t = 1_600_000_000i64;
    for p in [
        "empty",
        "small.txt",
        "big.bin",
        "setuid",
        "owned",
        "dir/exec.sh",
        "dir/nested/deep.txt",
        "hard/a",
        "gone_dir/x",
        "gone_dir/y",
        "gone_file",
        "change_me",
        "frozen_change",
        "links/to_file",
        "links/dangling",
        "links/to_dir",
        "links/abs",
        "fifo",
        "null",
        "dir/nested",
        "dir",
        "links",
        "hard",
        "gone_dir",
        "",
    ] {
        t += 1000;
        set_mtime(&f(p), t, 123_456_789);
    }
    // Regular files, one per inode: empty small big setuid owned exec deep
    // hard gone_x gone_y gone_file change_me frozen_change.
    let sizes = [0, 13, BIG as u64, 12, 14, 18, 5, 23, 2, 3, 10, 10, 18];
    Expect {
        files: sizes.len() as u64,
        bytes: sizes.iter().sum(),
        // root, 13 regular files' names + 2 more hard-link names, 5
        // directories, 4 symlinks, fifo, null.
        entries: 1 + 15 + 5 + 4 + 2,
    }
}

/// Runs the three passes with `driver` against a target already serving.
async fn exercise<D: FsDriver>(mut driver: D, src: &Path, dst: &Path, expect: &Expect) {
    let first = driver.start().await.unwrap();
    assert_same_tree(src, dst);
    assert_eq!(
        (first.files, first.bytes, first.deleted, first.scanned),
        (expect.files, expect.bytes, 0, expect.entries),
        "first pass of {}: {first:?}",
        driver.name()
    );

    // While "running": change a file, delete a file and a directory of two
    // files, add a directory with a file.
    write_file(&src.join("change_me"), b"version two, longer\n", 0o644);
    set_mtime(&src.join("change_me"), 1_700_000_000, 1);
    fs::remove_file(src.join("gone_file")).unwrap();
    fs::remove_dir_all(src.join("gone_dir")).unwrap();
    fs::create_dir(src.join("newdir")).unwrap();
    write_file(&src.join("newdir/added.txt"), b"added\n", 0o600);
    // The changed directories get times in seconds of their own: rsync
    // compares directory times to the second only, so a directory that
    // changed within the same second as the previous pass would keep a
    // sub-second difference there (the native driver is exact either way).
    set_mtime(&src.join("newdir/added.txt"), 1_700_000_010, 10);
    set_mtime(&src.join("newdir"), 1_700_000_020, 20);
    set_mtime(src, 1_700_000_030, 30);
    let second = driver.next_iteration().await.unwrap();
    assert_same_tree(src, dst);
    assert!(!dst.join("gone_dir").exists() && !dst.join("gone_file").exists());
    assert_eq!(
        (second.files, second.bytes, second.deleted),
        (2, 20 + 6, 4),
        "second pass of {}: {second:?}",
        driver.name()
    );
    assert!(second.bytes < first.bytes);
    assert_eq!(second.scanned, expect.entries - 4 + 2);

    // "While frozen": one more change, then the final sync.
    write_file(&src.join("frozen_change"), b"after the freeze!\n", 0o644);
    set_mtime(&src.join("frozen_change"), 1_700_000_100, 999_999_999);
    let last = driver.final_sync().await.unwrap();
    assert_same_tree(src, dst);
    assert_eq!(
        (last.files, last.bytes, last.deleted),
        (1, 18, 0),
        "final pass of {}: {last:?}",
        driver.name()
    );
    assert!(!driver.inodes_survive());
    // After the final sync the driver refuses more passes.
    assert!(driver.next_iteration().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_keeps_the_tree_identical_across_passes() {
    if !common::require_root("native_keeps_the_tree_identical_across_passes") {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let expect = build(src.path());
    let (a, b) = pair().await;
    let root = dst.path().to_path_buf();
    let target = tokio::spawn(async move { serve_native(b, &root, &FsLimits::default()).await });
    exercise(
        NativeSource::new(a, src.path().to_path_buf()),
        src.path(),
        dst.path(),
        &expect,
    )
    .await;
    let total: SyncStats = target.await.unwrap().unwrap();
    assert_eq!(total.files, expect.files + 2 + 1);
    assert_eq!(total.deleted, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsync_keeps_the_tree_identical_across_passes() {
    if !common::require_root_and_rsync("rsync_keeps_the_tree_identical_across_passes") {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let expect = build(src.path());
    let (a, b) = pair().await;
    let root = dst.path().to_path_buf();
    let target = tokio::spawn(async move { serve_rsync(b, &root, &RsyncTarget::default()).await });
    let helper = env!("CARGO_BIN_EXE_phaul-rsync-rsh").into();
    let driver = RsyncSource::new(a, src.path().to_path_buf(), helper).unwrap();
    exercise(driver, src.path(), dst.path(), &expect).await;
    target.await.unwrap().unwrap();
}

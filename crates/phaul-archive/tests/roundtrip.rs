//! A real process checkpointed into an archive and restored from it (root
//! and CRIU; skipped without them, failed under `CI`).

use std::time::Duration;

use phaul_archive::Store;
use phaul_testkit::{Workload, alive, require_criu, wait_until};

#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_archive_restores_the_process_it_holds() {
    let Some(criu) = require_criu("a_checkpoint_archive_restores_the_process_it_holds") else {
        return;
    };
    let mut w = Workload::start(16).expect("a workload");
    let before = w
        .counter_passes(1, Duration::from_secs(10))
        .expect("it counts");
    let options = phaul_htypes::registry::source_in("pid", &w.pid.to_string(), &Default::default())
        .expect("the pid htype")
        .dump_options();
    let work = tempfile::tempdir().unwrap();
    let store = Store::open(work.path(), criu_rpc::Criu::with_binary(&criu).quiet(true)).unwrap();

    let cp = store
        .checkpoint(w.pid, &options, false)
        .await
        .expect("checkpoint");
    assert!(cp.files > 0 && cp.bytes > 0, "{cp:?}");
    assert!(wait_until(Duration::from_secs(10), || (!alive(w.pid)).then_some(())).is_some());

    let dir = store.new_restore().unwrap();
    let archive = store.archive_path(&cp.id).expect("an id");
    std::fs::copy(&archive, dir.upload()).unwrap();
    let pid = store.restore(dir).await.expect("restore");
    w.adopt(pid);
    assert!(w.counter_passes(before, Duration::from_secs(10)).is_some());
    assert_eq!(w.memory_intact(pid), Some(true));
    let left: Vec<_> = std::fs::read_dir(work.path().join("restores"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

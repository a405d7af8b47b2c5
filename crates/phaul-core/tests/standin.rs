//! The engine's logic against the CRIU stand-in (`phaul_core::standin`),
//! over the real link on loopback: pre-copy and hybrid, which this
//! project's kernels cannot run for real (no soft-dirty tracking), the
//! convergence policies, mode fallback, and rollback on a failed restore.
//! Needs neither root nor CRIU.

use std::time::Duration;

use phaul_core::mode::HostCaps;
use phaul_core::policy::{Decision, DowntimeBudget, PhaulRules};
use phaul_core::standin::StandIn;
use phaul_core::{Migration, Mode, Progress, Report, Service};
use phaul_transport::{LinkConfig, Listener, SharedKey};

fn cfg() -> LinkConfig {
    LinkConfig::new(SharedKey::new(b"stand-in test key, 32 bytes long").unwrap())
}

const ALL: HostCaps = HostCaps {
    mem_track: true,
    lazy_pages: true,
    nftables_lock: false,
};

/// A process to name: the stand-in never touches it, but the pid htype
/// checks it exists.
struct Sleeper(std::process::Child);

impl Sleeper {
    fn new() -> Self {
        Self(
            std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .unwrap(),
        )
    }
    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn migrate(
    source: StandIn,
    target: StandIn,
    mode: Mode,
    fallback: bool,
    policy: Option<Box<dyn phaul_core::policy::ConvergencePolicy>>,
) -> (Report, Vec<Progress>) {
    migrate_with(source, target, mode, fallback, policy, |m| m).await
}

async fn migrate_with(
    source: StandIn,
    target: StandIn,
    mode: Mode,
    fallback: bool,
    policy: Option<Box<dyn phaul_core::policy::ConvergencePolicy>>,
    tweak: impl FnOnce(Migration<StandIn>) -> Migration<StandIn>,
) -> (Report, Vec<Progress>) {
    let target = TestTarget::start(target).await;
    let done = migrate_to(&target, source, mode, fallback, policy, tweak).await;
    target.finish().await;
    done
}

/// [`migrate_with`] to a target that is already running (and stays).
async fn migrate_to(
    target: &TestTarget,
    source: StandIn,
    mode: Mode,
    fallback: bool,
    policy: Option<Box<dyn phaul_core::policy::ConvergencePolicy>>,
    tweak: impl FnOnce(Migration<StandIn>) -> Migration<StandIn>,
) -> (Report, Vec<Progress>) {
    migrate_over(cfg(), target, source, mode, fallback, policy, tweak).await
}

/// [`migrate_to`] over a link configured by `link`.
async fn migrate_over(
    link: LinkConfig,
    target: &TestTarget,
    source: StandIn,
    mode: Mode,
    fallback: bool,
    policy: Option<Box<dyn phaul_core::policy::ConvergencePolicy>>,
    tweak: impl FnOnce(Migration<StandIn>) -> Migration<StandIn>,
) -> (Report, Vec<Progress>) {
    let sleeper = Sleeper::new();
    let htype = phaul_htypes::registry::source("pid", &sleeper.pid()).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut m = Migration::new(source, target.addr.clone(), link, htype)
        .mode(mode)
        .fallback(fallback)
        .work_dir(target.work.path().join("source"))
        .progress(tx);
    if let Some(p) = policy {
        m = m.policy(p);
    }
    m = tweak(m);
    let report = tokio::time::timeout(Duration::from_secs(60), m.run())
        .await
        .expect("migration hung");
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    (report, events)
}

/// A service with the stand-in on loopback, in a directory of its own.
struct TestTarget {
    addr: String,
    work: tempfile::TempDir,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<phaul_core::Result<()>>,
    events: tokio::sync::mpsc::UnboundedReceiver<phaul_core::ServiceEvent>,
}

impl TestTarget {
    async fn start(criu: StandIn) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("PHAUL_TEST_LOG"))
            .with_test_writer()
            .try_init();
        let work = tempfile::tempdir().unwrap();
        let listener = Listener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
        let svc = Service::new(criu, cfg(), work.path().join("target")).events(events_tx);
        let server = tokio::spawn(svc.serve(listener, async {
            let _ = stop_rx.await;
        }));
        Self {
            addr,
            work,
            stop,
            server,
            events,
        }
    }

    /// Checks that its sessions left nothing behind, and stops it.
    async fn finish(self) {
        // Give the target's session a moment to wind down.
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The service's lock file is its own, not a migration's.
        let left: Vec<_> = std::fs::read_dir(self.work.path().join("target"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n != ".phaul-service.lock")
            .collect();
        assert!(left.is_empty(), "the target left {left:?}");
        let _ = self.stop.send(());
        self.server.await.unwrap().unwrap();
    }
}

fn kinds(r: &Report) -> Vec<(String, u64)> {
    r.per_iteration
        .iter()
        .map(|i| (i.kind.clone(), i.pages_written))
        .collect()
}

#[tokio::test]
async fn pre_copy_converges_when_dirty_pages_shrink() {
    let src = StandIn::new(ALL).dirty_pages([10_000, 2_000, 400, 50, 30]);
    let tgt = StandIn::new(ALL);
    let (r, events) = migrate(src.clone(), tgt.clone(), Mode::PreCopy, false, None).await;
    assert!(r.success, "{:?}", r.error);
    assert_eq!(r.mode, "pre-copy");
    assert_eq!(
        kinds(&r),
        [
            ("pre-dump".into(), 10_000),
            ("pre-dump".into(), 2_000),
            ("pre-dump".into(), 400),
            ("pre-dump".into(), 50),
            ("dump".into(), 30)
        ]
    );
    assert_eq!(r.iterations, 5);
    assert_eq!(
        src.calls(),
        [
            "pre-dump 0 parent=- track_mem",
            "pre-dump 1 parent=../0 track_mem",
            "pre-dump 2 parent=../1 track_mem",
            "pre-dump 3 parent=../2 track_mem",
            "dump 4 parent=../3 track_mem",
            "source ended"
        ]
    );
    let t = tgt.calls();
    assert_eq!(t.iter().filter(|c| c.starts_with("page-server")).count(), 5);
    assert!(t.iter().any(|c| c.ends_with("/4 parent=../3")), "{t:?}");
    assert_eq!(&t[t.len() - 2..], ["restore lazy=false", "target runs"]);
    // Bytes really crossed: 12,480 "pages" at 64 bytes each, plus images.
    assert!(
        r.bytes_transferred >= 12_480 * 64,
        "{}",
        r.bytes_transferred
    );
    assert!(events.iter().any(|e| matches!(
        e,
        Progress::Decision(phaul_core::policy::Decision::Converged(_))
    )));
    assert!(r.downtime_ms.is_some());
}

#[tokio::test]
async fn pre_copy_gives_up_after_eight_iterations_when_flat() {
    let src = StandIn::new(ALL).dirty_pages(std::iter::repeat_n(5_000, 20));
    let (r, _) = migrate(src.clone(), StandIn::new(ALL), Mode::PreCopy, false, None).await;
    assert!(r.success, "{:?}", r.error);
    // Pre-dumps 0..=8 (nine), then the final dump.
    assert_eq!(r.iterations, 10);
    assert_eq!(src.calls()[9], "dump 9 parent=../8 track_mem");
}

#[tokio::test]
async fn pre_copy_stops_when_an_iteration_grows() {
    let src = StandIn::new(ALL).dirty_pages([1_000, 1_200, 900]);
    let (r, events) = migrate(src.clone(), StandIn::new(ALL), Mode::PreCopy, false, None).await;
    assert!(r.success);
    assert_eq!(
        kinds(&r),
        [
            ("pre-dump".into(), 1_000),
            ("pre-dump".into(), 1_200),
            ("dump".into(), 900)
        ]
    );
    assert!(events.iter().any(|e| matches!(
        e,
        Progress::Decision(phaul_core::policy::Decision::NotConverging(_))
    )));
}

#[tokio::test]
async fn hybrid_switches_to_post_copy_when_pre_copy_does_not_converge() {
    let src = StandIn::new(ALL).dirty_pages([1_000, 1_200, 900]);
    let tgt = StandIn::new(ALL);
    let (r, _) = migrate(src.clone(), tgt.clone(), Mode::Hybrid, false, None).await;
    assert!(r.success, "{:?}", r.error);
    assert_eq!(r.mode, "hybrid");
    assert_eq!(src.calls()[2], "lazy-dump 2 parent=../1 track_mem");
    assert_eq!(src.calls().last().unwrap(), "source ended");
    assert!(
        tgt.calls().contains(&"restore lazy=true".to_string()),
        "{:?}",
        tgt.calls()
    );
    assert_eq!(r.per_iteration.last().unwrap().kind, "lazy-dump");
}

/// A dirty rate the stand-in "kernel" reports: `dirtied` of 65536 pages
/// in `over_us`, half of them in the first half.
fn dirtying(dirtied: u64, over_us: u64) -> phaul_core::dirty::DirtyRate {
    phaul_core::dirty::DirtyRate {
        pages: 65_536,
        first_dirtied: dirtied / 2,
        first_us: over_us / 2,
        dirtied,
        over_us,
        processes: 1,
    }
}

#[tokio::test]
async fn a_tree_dirtying_faster_than_the_link_is_not_pre_dumped() {
    // 64 Ki pages in a millisecond: 256 GiB/s, beyond any loopback.
    let fast = dirtying(65_536, 1_000);
    let src = StandIn::new(ALL).dirty_rate(fast);
    let (r, events) = migrate(src.clone(), StandIn::new(ALL), Mode::Hybrid, false, None).await;
    assert!(r.success, "{:?}", r.error);
    let calls = src.calls();
    assert!(calls[0].starts_with("dirty-rate "), "{calls:?}");
    assert_eq!(calls[1], "lazy-dump 0 parent=-", "{calls:?}");
    assert!(events.iter().any(|e| matches!(e,
        Progress::Decision(phaul_core::policy::Decision::NotConverging(why))
            if why.starts_with("before the first pre-dump: the tree's dirty set grew 256") && why.contains("MiB/s the link carries"))));
    // Pre-copy asked for: the final dump at once, with all there is.
    let src = StandIn::new(ALL).dirty_rate(fast);
    let (r, _) = migrate(src.clone(), StandIn::new(ALL), Mode::PreCopy, false, None).await;
    assert!(r.success, "{:?}", r.error);
    assert_eq!(src.calls()[1], "dump 0 parent=-", "{:?}", src.calls());
    assert_eq!(kinds(&r).len(), 1);
}

#[tokio::test]
async fn a_quiet_tree_is_pre_dumped_after_its_probe() {
    let src = StandIn::new(ALL)
        .dirty_rate(dirtying(3, 1_000_000))
        .dirty_pages([500, 40, 20]);
    let (r, _) = migrate(src.clone(), StandIn::new(ALL), Mode::Hybrid, false, None).await;
    assert!(r.success, "{:?}", r.error);
    let calls = src.calls();
    assert!(calls[0].starts_with("dirty-rate "), "{calls:?}");
    assert_eq!(calls[1], "pre-dump 0 parent=- track_mem", "{calls:?}");
    assert_eq!(calls[3], "dump 2 parent=../1 track_mem", "{calls:?}");
}

/// A policy that answers before the first pre-dump by its rule (given the
/// probe asked about and the first it was asked about: whether to
/// pre-copy), and records every probe it is asked about.
#[derive(Debug, Clone)]
struct Judge {
    seen: std::sync::Arc<std::sync::Mutex<Vec<phaul_core::policy::Probe>>>,
    pre_copies: fn(&phaul_core::policy::Probe, &phaul_core::policy::Probe) -> bool,
}

impl Judge {
    fn new(pre_copies: fn(&phaul_core::policy::Probe, &phaul_core::policy::Probe) -> bool) -> Self {
        Self {
            seen: Default::default(),
            pre_copies,
        }
    }
    fn seen(&self) -> Vec<phaul_core::policy::Probe> {
        self.seen.lock().unwrap().clone()
    }
}

impl phaul_core::policy::ConvergencePolicy for Judge {
    fn decide(&self, h: &[phaul_core::policy::IterationSample]) -> Decision {
        PhaulRules::default().decide(h)
    }
    fn before_first(&self, probe: &phaul_core::policy::Probe) -> Decision {
        let mut seen = self.seen.lock().unwrap();
        seen.push(*probe);
        if (self.pre_copies)(probe, &seen[0]) {
            Decision::Continue
        } else {
            Decision::NotConverging("the judge says no".into())
        }
    }
}

/// A hybrid of a quiet tree (its dirty set grows 16 KiB/s) under a
/// [`Judge`] with `pre_copies`: its report, the probes the judge was asked
/// about, and the source's stand-in.
async fn judged_hybrid(
    pre_copies: fn(&phaul_core::policy::Probe, &phaul_core::policy::Probe) -> bool,
) -> (Report, Vec<phaul_core::policy::Probe>, StandIn) {
    let judge = Judge::new(pre_copies);
    let src = StandIn::new(ALL).dirty_rate(dirtying(3, 1_000_000));
    let policy = Box::new(judge.clone());
    let (r, _) = migrate(
        src.clone(),
        StandIn::new(ALL),
        Mode::Hybrid,
        false,
        Some(policy),
    )
    .await;
    assert!(r.success, "{:?}", r.error);
    (r, judge.seen(), src)
}

/// The link timed beside the pre-flight's checks (which here share the
/// test's CPUs with it) skips pre-copy, but one twice as fast would not:
/// the engine times it again, alone, and the policy decides from that.
/// Where no faster link changes the answer, it is not timed again.
#[tokio::test]
async fn a_link_timed_beside_the_checks_is_timed_again_when_it_decides() {
    use phaul_core::policy::CONTENDED_LINK_FACTOR;
    let faster = |p: &phaul_core::policy::Probe, first: &phaul_core::policy::Probe| {
        p.link_bytes_per_sec >= first.link_bytes_per_sec * 1.5
    };
    let (r, seen, _) = judged_hybrid(faster).await;
    let links: Vec<f64> = seen.iter().map(|p| p.link_bytes_per_sec).collect();
    // The first figure; the same at the factor (would it decide?); last,
    // the higher of the first and the one timed alone, which decides.
    assert!(links.len() >= 3, "{links:?}");
    assert_eq!(links[1], links[0] * CONTENDED_LINK_FACTOR);
    let decided = *links.last().unwrap();
    assert!(decided >= links[0], "{links:?}");
    let reported = r.link_mib_s.expect("the link's rate in the report") * f64::from(1 << 20);
    assert!(
        (reported - decided).abs() < 1.0,
        "{reported} against {links:?}"
    );

    let (_, seen, src) = judged_hybrid(|_, _| false).await;
    let links: Vec<f64> = seen.iter().map(|p| p.link_bytes_per_sec).collect();
    assert!(
        links
            .iter()
            .all(|&l| l == links[0] || l == links[0] * CONTENDED_LINK_FACTOR)
    );
    assert_eq!(
        *links.last().unwrap(),
        links[0],
        "not timed again: {links:?}"
    );
    assert_eq!(src.calls()[1], "lazy-dump 0 parent=-", "{:?}", src.calls());
}

/// The dirty rate is read first at a glance (a quarter of a second), and
/// again for a second only where twice or half the growth it read would
/// change the policy's answer; the longer reading decides.
#[tokio::test]
async fn a_glance_at_the_dirty_rate_is_read_again_only_near_the_border() {
    let windows = |src: &StandIn| -> Vec<String> {
        src.calls()
            .into_iter()
            .filter(|c| c.starts_with("dirty-rate "))
            .map(|c| c.rsplit(" over ").next().unwrap_or_default().to_owned())
            .collect()
    };
    let growths_of = |seen: &[phaul_core::policy::Probe]| -> Vec<f64> {
        seen.iter()
            .map(|p| p.dirty.growth_bytes_per_sec())
            .collect()
    };
    // 16 KiB/s of growth against a border at 20 KiB/s: twice it crosses.
    let (r, seen, src) = judged_hybrid(|p, _| p.dirty.growth_bytes_per_sec() < 20_000.0).await;
    assert!(r.success, "{:?}", r.error);
    assert_eq!(windows(&src), ["250 ms", "1000 ms"], "{:?}", src.calls());
    let growths = growths_of(&seen);
    assert!(
        growths.iter().any(|&g| g > 30_000.0),
        "asked at twice: {growths:?}"
    );
    assert_eq!(growths.last(), Some(&16_384.0), "{growths:?}");
    assert_eq!(
        src.calls()[2],
        "pre-dump 0 parent=- track_mem",
        "{:?}",
        src.calls()
    );
    // A border at 10 KiB/s: the glance skips pre-copy, half of it would not.
    let (_, seen, src) = judged_hybrid(|p, _| p.dirty.growth_bytes_per_sec() < 10_000.0).await;
    assert_eq!(windows(&src), ["250 ms", "1000 ms"], "{:?}", src.calls());
    let growths = growths_of(&seen);
    assert!(
        growths.iter().any(|&g| g < 10_000.0),
        "asked at half: {growths:?}"
    );
    assert_eq!(src.calls()[2], "lazy-dump 0 parent=-", "{:?}", src.calls());
    // A border far away: the glance decides.
    let (_, _, src) = judged_hybrid(|p, _| p.dirty.growth_bytes_per_sec() < 1e9).await;
    assert_eq!(windows(&src), ["250 ms"], "{:?}", src.calls());
}

/// Over a link of version 4 (an older peer), no link probe goes before
/// `Begin`: the target refuses one there, as a version-4 target would, and
/// the source times the link after `Begin` instead.
#[tokio::test]
async fn over_a_version_4_link_the_link_is_probed_after_begin() {
    use phaul_transport::proto::{self, request};
    use phaul_transport::{Channel, ControlClient, Endpoint, ErrorCode, Link};
    let target = TestTarget::start(StandIn::new(ALL)).await;
    let v4 = cfg().max_version(4);
    let endpoint = Endpoint::parse(&target.addr).unwrap();
    let link = Link::connect(endpoint, &v4, Channel::Control, None)
        .await
        .unwrap();
    assert_eq!(link.version(), 4);
    let mut ctl = ControlClient::new(link);
    let probe = request::Body::ProbeLink(proto::ProbeLink { bytes: 8192 });
    match ctl.call(probe).await {
        Err(phaul_transport::Error::Remote { code, message }) => {
            assert_eq!(code, ErrorCode::BadRequest, "{message}");
            assert!(message.contains("needs protocol version 5"), "{message}");
        }
        other => panic!("a probe before Begin on a version-4 link: {other:?}"),
    }
    ctl.close().await;
    let src = StandIn::new(ALL)
        .dirty_rate(dirtying(3, 1_000_000))
        .dirty_pages([500, 40, 20]);
    let (r, _) = migrate_over(v4, &target, src.clone(), Mode::Hybrid, false, None, |m| m).await;
    assert!(r.success, "{:?}", r.error);
    assert!(r.link_mib_s.is_some_and(|l| l > 0.0), "{:?}", r.link_mib_s);
    assert_eq!(
        src.calls()[1],
        "pre-dump 0 parent=- track_mem",
        "{:?}",
        src.calls()
    );
    target.finish().await;
}

/// The probe taken in the pre-flight is measured again when it has grown
/// old before the first pre-dump (a busy target's queue, a group's gate, a
/// long first file-system pass): here, with no validity at all, always.
#[tokio::test]
async fn an_old_probe_is_measured_again_before_the_first_pre_dump() {
    let quiet = || {
        StandIn::new(ALL)
            .dirty_rate(dirtying(3, 1_000_000))
            .dirty_pages([500, 40, 20])
    };
    let measures = |src: &StandIn| {
        src.calls()
            .iter()
            .filter(|c| c.starts_with("dirty-rate "))
            .count()
    };
    let src = quiet();
    let (r, _) = migrate(src.clone(), StandIn::new(ALL), Mode::Hybrid, false, None).await;
    assert!(r.success, "{:?}", r.error);
    assert_eq!(measures(&src), 1, "{:?}", src.calls());
    let src = quiet();
    let stale_at_once = phaul_core::Timeouts {
        probe_valid: Duration::ZERO,
        ..Default::default()
    };
    let target = TestTarget::start(StandIn::new(ALL)).await;
    let tweak = |m: Migration<StandIn>| m.timeouts(stale_at_once);
    let (r, _) = migrate_to(&target, src.clone(), Mode::Hybrid, false, None, tweak).await;
    target.finish().await;
    assert!(r.success, "{:?}", r.error);
    assert_eq!(measures(&src), 2, "{:?}", src.calls());
    assert!(r.link_mib_s.is_some_and(|l| l > 0.0), "{:?}", r.link_mib_s);
    assert_eq!(
        src.calls()[2],
        "pre-dump 0 parent=- track_mem",
        "{:?}",
        src.calls()
    );
}

#[tokio::test]
async fn hybrid_finishes_with_a_plain_dump_when_pre_copy_converges() {
    let src = StandIn::new(ALL).dirty_pages([500, 40, 20]);
    let tgt = StandIn::new(ALL);
    let (r, _) = migrate(src.clone(), tgt.clone(), Mode::Hybrid, false, None).await;
    assert!(r.success);
    assert_eq!(src.calls()[2], "dump 2 parent=../1 track_mem");
    assert!(tgt.calls().contains(&"restore lazy=false".to_string()));
}

#[tokio::test]
async fn a_downtime_budget_switches_over_when_the_prediction_fits() {
    // Loopback is fast: with a generous budget the first pre-dump already
    // predicts a fitting downtime.
    let src = StandIn::new(ALL).dirty_pages([50_000, 40_000, 30_000]);
    let policy = DowntimeBudget {
        budget: Duration::from_secs(5),
        ..Default::default()
    };
    let (r, _) = migrate(
        src.clone(),
        StandIn::new(ALL),
        Mode::PreCopy,
        false,
        Some(Box::new(policy)),
    )
    .await;
    assert!(r.success);
    assert_eq!(r.iterations, 2, "{:?}", src.calls());
    assert!(r.predicted_downtime_ms.is_some());
    // An impossible budget iterates until the iteration cap.
    let src = StandIn::new(ALL).dirty_pages(std::iter::repeat_n(50_000, 20));
    let policy = DowntimeBudget {
        budget: Duration::from_nanos(1),
        fixed: Duration::ZERO,
        max_iterations: 3,
        ..Default::default()
    };
    let (r, _) = migrate(
        src,
        StandIn::new(ALL),
        Mode::PreCopy,
        false,
        Some(Box::new(policy)),
    )
    .await;
    assert!(r.success);
    // Exactly the cap of pre-dumps, then the final dump.
    let k: Vec<String> = kinds(&r).into_iter().map(|(k, _)| k).collect();
    assert_eq!(k, ["pre-dump", "pre-dump", "pre-dump", "dump"], "{k:?}");
}

/// A target whose restores take 400 ms: a switch-over's cost beyond its
/// pages, for it to learn.
async fn slow_restoring_target() -> TestTarget {
    TestTarget::start(StandIn::new(ALL).restore_takes(Duration::from_millis(400))).await
}

/// A pre-copy to `target` under a 60 s downtime budget in the stand-in's
/// pages (it sends BYTES_PER_PAGE a page, so with that page size the
/// transfer predicted is what it takes); it must succeed.
async fn budgeted_pre_copy(target: &TestTarget, src: StandIn) -> Report {
    under_budget(target, src, Duration::from_secs(60), 8)
        .await
        .0
}

/// A pre-copy to `target` under `budget` (in the stand-in's pages) and at
/// most `max_iterations`; it must succeed.
async fn under_budget(
    target: &TestTarget,
    src: StandIn,
    budget: Duration,
    max_iterations: u32,
) -> (Report, Vec<Progress>) {
    let budget = DowntimeBudget {
        budget,
        page_size: phaul_core::standin::BYTES_PER_PAGE as u64,
        max_iterations,
        ..DowntimeBudget::default()
    };
    let policy = Some(Box::new(budget) as Box<dyn phaul_core::policy::ConvergencePolicy>);
    let (r, events) = migrate_to(target, src, Mode::PreCopy, false, policy, |m| m).await;
    assert!(r.success, "{:?}", r.error);
    (r, events)
}

/// A target learns what its switch-overs cost beyond their pages (here a
/// restore of 400 ms): the first pre-copy to it predicts the pages'
/// transfer alone, the next ones add what it learned, and come within a
/// quarter of the downtime measured.
#[tokio::test]
async fn the_next_pre_copy_predicts_the_switch_over_the_target_learned() {
    let target = slow_restoring_target().await;
    let mut predicted = Vec::new();
    for _ in 0..3 {
        let src = StandIn::new(ALL).dirty_pages([5_000, 200, 100]);
        let r = budgeted_pre_copy(&target, src).await;
        let (p, d) = (r.predicted_downtime_ms.unwrap(), r.downtime_ms.unwrap());
        assert!(d >= 400.0, "the restore alone takes 400 ms: {d}");
        predicted.push((p, d));
    }
    let (p, d) = predicted[0];
    assert!(
        p < d - 300.0,
        "nothing learned yet, the 400 ms restore is not predicted: {p} ms predicted, {d} measured"
    );
    for &(p, d) in &predicted[1..] {
        assert!(
            (p - d).abs() <= d / 4.0,
            "learned: {p} ms predicted, {d} measured ({predicted:?})"
        );
    }
    target.finish().await;
}

/// Before a target has learned anything, it says how fast it writes image
/// pages into fresh memory, and the first prediction adds the tree's
/// restore at that rate: 100 GiB of resident pages (as the stand-in
/// reports them) take far longer than any transfer here, and longer than a
/// second on any host, so a 1 s budget does not fit them.
#[tokio::test]
async fn the_first_pre_copy_predicts_the_restore_of_the_whole_tree() {
    let target = TestTarget::start(StandIn::new(ALL)).await;
    let src = StandIn::new(ALL)
        .dirty_pages([5_000, 200, 100])
        .resident(25 << 20);
    let (r, events) = under_budget(&target, src, Duration::from_secs(1), 2).await;
    let p = r.predicted_downtime_ms.unwrap();
    assert!(p > 1_000.0, "predicted {p} ms");
    assert!(
        events.iter().any(|e| matches!(e,
            Progress::Decision(Decision::NotConverging(why)) if why.contains("exceeds the budget"))),
        "{events:?}"
    );
    target.finish().await;
}

/// What a target learns follows the size of the next tree: it keeps what
/// a switch-over cost beyond the restore of its tree's pages (here about
/// the stand-in's 400 ms restore, the tree being small), and the next
/// source adds its own tree's restore at the target's page-in rate. A tree
/// of 100 GiB is predicted at least a second more than a small one.
#[tokio::test]
async fn what_a_target_learned_follows_the_next_trees_size() {
    let target = slow_restoring_target().await;
    let small = || StandIn::new(ALL).dirty_pages([5_000, 200, 100]);
    budgeted_pre_copy(&target, small()).await;
    let r = budgeted_pre_copy(&target, small()).await;
    let small_p = r.predicted_downtime_ms.unwrap();
    assert!(small_p >= 300.0, "the restore learned: {small_p} ms");
    let r = budgeted_pre_copy(&target, small().resident(25 << 20)).await;
    let large_p = r.predicted_downtime_ms.unwrap();
    assert!(
        large_p >= small_p + 1_000.0,
        "100 GiB: {large_p} ms predicted, a small tree {small_p} ms"
    );
    target.finish().await;
}

/// A budget that fits after the first pre-dump predicted all of memory as
/// the next dirty set (here a second of pre-dump, beyond a downtime of
/// about 400 ms); what the target learns is the downtime beyond what the
/// final dump really sent, so it still learns the 400 ms restore, which
/// the next prediction adds.
#[tokio::test]
async fn a_target_learns_even_when_the_prediction_was_all_of_memory() {
    let target = slow_restoring_target().await;
    let mut predicted = Vec::new();
    for _ in 0..2 {
        let src = StandIn::new(ALL)
            .dirty_pages([5_000, 100])
            .pre_dump_takes(Duration::from_secs(1));
        let r = budgeted_pre_copy(&target, src).await;
        assert_eq!(r.per_iteration.len(), 2, "one pre-dump, then the dump");
        let (p, d) = (r.predicted_downtime_ms.unwrap(), r.downtime_ms.unwrap());
        assert!(p > d, "all of memory predicted: {p} ms, {d} measured");
        predicted.push(p);
    }
    assert!(
        predicted[1] - predicted[0] >= 300.0,
        "the 400 ms restore learned and added: {predicted:?}"
    );
    target.finish().await;
}

/// The switch-over hook runs once the target holds its restored copy,
/// before the commit lets it run; its error rolls back: the held copy is
/// killed and the source resumes.
#[tokio::test]
async fn the_switchover_hook_runs_while_the_copy_is_held_and_its_error_rolls_back() {
    for fails in [false, true] {
        let tgt = StandIn::new(ALL);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (t, s) = (tgt.clone(), seen.clone());
        let hook = move || {
            let (t, s) = (t.clone(), s.clone());
            async move {
                *s.lock().unwrap() = t.calls();
                match fails {
                    true => Err("the address cannot move".to_string()),
                    false => Ok(()),
                }
            }
        };
        let src = StandIn::new(ALL);
        let (r, _) = migrate_with(src.clone(), tgt.clone(), Mode::StopCopy, false, None, |m| {
            m.switchover(hook)
        })
        .await;
        let seen = seen.lock().unwrap().clone();
        assert!(seen.contains(&"restore lazy=false".to_string()), "{seen:?}");
        assert!(!seen.contains(&"target runs".to_string()), "{seen:?}");
        if fails {
            assert!(!r.success);
            assert_eq!(r.outcome, phaul_core::Outcome::RolledBack);
            let error = r.error.unwrap_or_default();
            assert!(
                error.contains("switch-over hook failed: the address cannot move"),
                "{error}"
            );
            assert!(
                tgt.calls().contains(&"target killed".to_string()),
                "{:?}",
                tgt.calls()
            );
            assert!(
                src.calls().contains(&"source resumed".to_string()),
                "{:?}",
                src.calls()
            );
        } else {
            assert!(r.success, "{:?}", r.error);
            assert!(
                tgt.calls().contains(&"target runs".to_string()),
                "{:?}",
                tgt.calls()
            );
        }
    }
}

#[tokio::test]
async fn pre_copy_without_soft_dirty_is_refused_or_falls_back() {
    let here = HostCaps {
        mem_track: false,
        lazy_pages: true,
        nftables_lock: false,
    };
    let (r, _) = migrate(
        StandIn::new(here),
        StandIn::new(here),
        Mode::PreCopy,
        false,
        None,
    )
    .await;
    assert!(!r.success);
    let err = r.error.unwrap();
    assert!(err.contains("soft-dirty"), "{err}");
    assert_eq!(r.iterations, 0);
    assert_eq!(r.outcome, phaul_core::Outcome::NotStarted);

    let src = StandIn::new(here);
    let (r, _) = migrate(src.clone(), StandIn::new(here), Mode::PreCopy, true, None).await;
    assert!(r.success, "{:?}", r.error);
    assert_eq!(r.mode, "post-copy");
    assert_eq!(r.requested_mode, "pre-copy");
    assert!(r.mode_reason.contains("falling back"), "{}", r.mode_reason);
    assert_eq!(src.calls()[0], "lazy-dump 0 parent=-");
}

#[tokio::test]
async fn auto_picks_hybrid_with_both_features_post_copy_with_lazy_pages_and_stop_copy_without() {
    let here = HostCaps {
        mem_track: false,
        lazy_pages: true,
        nftables_lock: false,
    };
    let (r, _) = migrate(
        StandIn::new(here),
        StandIn::new(here),
        Mode::Auto,
        false,
        None,
    )
    .await;
    assert!(r.success);
    assert_eq!(r.mode, "post-copy");
    assert!(r.mode_reason.contains("lazy"), "{}", r.mode_reason);
    let none = HostCaps::default();
    let src = StandIn::new(none);
    let (r, _) = migrate(src.clone(), StandIn::new(none), Mode::Auto, false, None).await;
    assert!(r.success);
    assert_eq!(r.mode, "stop-copy");
    assert_eq!(src.calls(), ["dump 0 parent=-", "source ended"]);
    // Both features on both hosts: hybrid, which asks the dirty rate first.
    let src = StandIn::new(ALL)
        .dirty_rate(dirtying(65_536, 1_000))
        .dirty_pages([500]);
    let (r, _) = migrate(src.clone(), StandIn::new(ALL), Mode::Auto, false, None).await;
    assert!(r.success, "{:?}", r.error);
    assert_eq!(r.mode, "hybrid");
    assert!(r.mode_reason.contains("dirty rate"), "{}", r.mode_reason);
    assert_eq!(src.calls()[1], "lazy-dump 0 parent=-", "{:?}", src.calls());
}

#[tokio::test]
async fn a_failed_restore_resumes_the_source_in_every_final_mode() {
    for mode in [Mode::StopCopy, Mode::PostCopy] {
        let src = StandIn::new(ALL);
        let tgt = StandIn::new(ALL).failing_restore();
        let (r, events) = migrate(src.clone(), tgt.clone(), mode, false, None).await;
        assert!(!r.success, "{mode}");
        assert!(
            r.error
                .as_deref()
                .unwrap()
                .contains("restore fails as scripted"),
            "{:?}",
            r.error
        );
        assert_eq!(
            src.calls().last().unwrap(),
            "source resumed",
            "{mode}: {:?}",
            src.calls()
        );
        assert!(events.iter().any(|e| matches!(e, Progress::RollingBack(_))));
        assert_eq!(r.phase_reached, phaul_core::Phase::Rollback);
        assert_eq!(r.outcome, phaul_core::Outcome::RolledBack);
        assert!(r.downtime_ms.is_none());
    }
}

#[tokio::test]
async fn the_policy_defaults_are_p_haul_s() {
    assert_eq!(
        PhaulRules::default(),
        PhaulRules {
            min_pages: 64,
            max_growth_percent: 10,
            max_iterations: 8
        }
    );
}

#[tokio::test]
async fn failed_pre_flight_checks_refuse_unless_forced() {
    // A source with a newer CRIU than the target's, on another CPU.
    let newer_elsewhere = || StandIn::new(ALL).criu_version("4.2").cpu(b"another cpu");
    let (r, _) = migrate(
        newer_elsewhere(),
        StandIn::new(ALL),
        Mode::StopCopy,
        false,
        None,
    )
    .await;
    assert!(!r.success);
    let e = r.error.clone().unwrap();
    assert!(e.contains("newer than CRIU 4.1.1"), "{e}");

    let (r, _) = migrate_with(
        StandIn::new(ALL).cpu(b"another cpu"),
        StandIn::new(ALL),
        Mode::StopCopy,
        false,
        None,
        |m| m.skip_version_check(true),
    )
    .await;
    assert!(!r.success);
    let e = r.error.clone().unwrap();
    assert!(e.contains("CPU cannot run this tree"), "{e}");

    let source = newer_elsewhere();
    let (r, events) = migrate_with(
        source.clone(),
        StandIn::new(ALL),
        Mode::StopCopy,
        false,
        None,
        |m| m.force(true),
    )
    .await;
    assert!(r.success, "{:?}", r.error);
    let warnings: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            Progress::Warning(w) => Some(w),
            _ => None,
        })
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("newer than CRIU 4.1.1"));
    assert!(warnings[1].contains("CPU cannot run this tree"));
    assert!(
        source.calls().iter().any(|c| c.starts_with("dump")),
        "{:?}",
        source.calls()
    );
}

#[tokio::test]
async fn an_inherited_descriptor_is_refused_as_a_migration_target() {
    let sleeper = Sleeper::new();
    let htype = phaul_htypes::registry::source("pid", &sleeper.pid()).unwrap();
    let work = tempfile::tempdir().unwrap();
    // fd 0 is open, so only the rule can refuse it, and it must stay open.
    let r = Migration::new(StandIn::new(ALL), "fd:0", cfg(), htype)
        .work_dir(work.path())
        .run()
        .await;
    assert!(!r.success);
    assert!(
        r.error
            .as_deref()
            .unwrap()
            .contains("a connection per channel"),
        "{r:?}"
    );
    assert!(nix::fcntl::fcntl(std::io::stdin(), nix::fcntl::FcntlArg::F_GETFD).is_ok());
}

/// The target follows the plan it was sent and its session's order: a
/// request out of either is refused (BAD_REQUEST) and changes nothing, and
/// the session is undone when the source goes.
#[tokio::test]
async fn the_target_refuses_requests_out_of_order_or_out_of_plan() {
    use phaul_transport::proto::{self, request, response};
    use phaul_transport::{Channel, ControlClient, Endpoint, ErrorCode, Link};
    let work = tempfile::tempdir().unwrap();
    let listener = Listener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let svc = Service::new(StandIn::new(ALL), cfg(), work.path().join("target")).events(events_tx);
    let server = tokio::spawn(svc.serve(listener, async {
        let _ = stop_rx.await;
    }));
    let link = Link::connect(Endpoint::Tcp(addr.clone()), &cfg(), Channel::Control, None)
        .await
        .unwrap();
    let mut ctl = ControlClient::new(link);
    let refused = |r: Result<response::Body, phaul_transport::Error>, what: &str| match r {
        Err(phaul_transport::Error::Remote { code, message }) => {
            assert_eq!(code, ErrorCode::BadRequest, "{message}");
            assert!(message.contains(what), "{message}");
        }
        other => panic!("expected a refusal naming {what:?}, got {other:?}"),
    };
    let restore = |lazy| request::Body::Restore(proto::Restore { iteration: 0, lazy });
    let commit = request::Body::Commit(proto::Commit {
        valid_for_ms: 0,
        overhead_us: 0,
        replay: Vec::new(),
        tree_pages: 0,
    });
    let pagemaps_of = |iteration| request::Body::PagemapsOf(proto::PagemapsOf { iteration });
    let probe = |bytes| request::Body::ProbeLink(proto::ProbeLink { bytes });
    // Nothing has begun.
    refused(ctl.call(restore(false)).await, "no migration has begun");
    refused(ctl.call(commit.clone()).await, "nothing restored");
    refused(ctl.call(pagemaps_of(0)).await, "no migration has begun");
    // A link probe is served before Begin (version 5): the source times
    // the link while its own pre-flight checks run.
    // A probe's stream: `n` bytes on a page channel of the session.
    let sid = ctl.link().session();
    let stream = |n: usize| {
        let addr = addr.clone();
        async move {
            let pages = Link::connect(Endpoint::Tcp(addr), &cfg(), Channel::Pages, Some(sid))
                .await
                .unwrap();
            let (rd, mut wr) = pages.into_split();
            wr.send_data(&vec![7u8; n]).await.unwrap();
            wr.send_end().await.unwrap();
            rd
        }
    };
    let _early = stream(8192).await;
    match ctl.call(probe(8192)).await {
        Ok(response::Body::LinkProbed(p)) => assert_eq!(p.bytes, 8192),
        other => panic!("a probe before Begin was not served: {other:?}"),
    }
    // A Begin whose plan is invalid (version 1's strings leave it 0).
    let sleeper = Sleeper::new();
    let mut begin = proto::Begin {
        htype: "pid".into(),
        params: [("pid".to_string(), sleeper.pid())].into(),
        ..Default::default()
    };
    refused(
        ctl.call(request::Body::Begin(begin.clone())).await,
        "invalid mode",
    );
    // A plan the kind here cannot carry out: pids are restored by CRIU.
    let by_manager = phaul_core::plan::Plan {
        mode: Mode::StopCopy,
        restorer: phaul_core::plan::Restorer::Manager,
        files: phaul_core::plan::Files::None,
    };
    by_manager.to_wire(&mut begin);
    refused(
        ctl.call(request::Body::Begin(begin.clone())).await,
        "restored by",
    );
    // A good one, then a second.
    let plan = phaul_core::plan::Plan::new(
        Mode::StopCopy,
        phaul_htypes::Caps::PLAIN,
        phaul_core::plan::Files::None,
    );
    plan.to_wire(&mut begin);
    let begun = ctl.call(request::Body::Begin(begin.clone())).await.unwrap();
    let response::Body::Begun(b) = begun else {
        panic!("{begun:?}")
    };
    assert!(std::path::Path::new(&b.work_dir).is_dir());
    refused(ctl.call(request::Body::Begin(begin)).await, "already begun");
    // A lazy restore in a stop-copy, and a commit before any restore.
    refused(ctl.call(restore(true)).await, "does not belong");
    refused(ctl.call(commit).await, "nothing restored");
    // Pagemaps of a pre-dump that never was; a link probe beyond its limit
    // (refused before any page channel is waited for).
    refused(ctl.call(pagemaps_of(3)).await, "no pre-dump 3");
    // A probe whose stream carries more than it announced fails, and the
    // session goes on.
    let _long = stream(4096).await;
    match ctl.call(probe(1024)).await {
        Err(phaul_transport::Error::Remote { code, message }) => {
            assert_eq!(code, ErrorCode::Failed, "{message}");
            assert!(
                message.contains("more than the 1024 bytes announced"),
                "{message}"
            );
        }
        other => panic!("a probe too long was not refused: {other:?}"),
    }
    refused(ctl.call(pagemaps_of(3)).await, "no pre-dump 3");
    refused(
        ctl.call(probe(1 << 40)).await,
        "a link probe of 1099511627776 bytes",
    );
    // The service stops while the source is still there: it returns only
    // once the session is undone.
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
    assert!(
        !std::path::Path::new(&b.work_dir).exists(),
        "the session's directory outlived the service"
    );
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(e);
    }
    assert!(
        matches!(&seen[..], [phaul_core::ServiceEvent::Began { kind, .. }, phaul_core::ServiceEvent::RolledBack { .. }] if kind == "pid"),
        "{seen:?}"
    );
    drop(ctl);
}

/// What an embedder holds: a migration started in the background, its
/// events (with the form's version and the migration's id), and its typed
/// end; events and reports read back from their JSON.
#[tokio::test]
async fn a_started_migration_streams_events_and_ends_typed() {
    use phaul_core::{Event, Outcome, Report};
    // Succeeded.
    let target = TestTarget::start(StandIn::new(ALL)).await;
    let sleeper = Sleeper::new();
    let htype = phaul_htypes::registry::source("pid", &sleeper.pid()).unwrap();
    let m = Migration::new(StandIn::new(ALL), target.addr.clone(), cfg(), htype)
        .work_dir(target.work.path().join("source"))
        .with_id("job-42")
        .unwrap();
    let mut run = m.start();
    assert_eq!(run.id(), "job-42");
    let mut events = Vec::new();
    while let Some(e) = run.next_event().await {
        events.push(e);
    }
    let report = run.await.expect("the stand-in migration succeeds");
    assert_eq!(report.outcome, Outcome::Succeeded);
    assert_eq!((report.schema, report.migration_id.as_str()), (1, "job-42"));
    assert!(
        events
            .iter()
            .all(|e| e.migration == "job-42" && e.schema == 1)
    );
    // The time since the start, never going back, and under the report's
    // total.
    assert!(
        events
            .windows(2)
            .all(|w| w[0].elapsed_ms <= w[1].elapsed_ms)
    );
    assert!(events.first().is_some_and(|e| e.elapsed_ms < 50.0));
    assert!(events.last().unwrap().elapsed_ms <= report.total_ms + 1.0);
    assert_eq!(
        events.last().map(|e| &e.progress),
        Some(&Progress::Phase(phaul_core::Phase::Done))
    );
    for e in &events {
        let json = serde_json::to_string(e).unwrap();
        assert_eq!(&serde_json::from_str::<Event>(&json).unwrap(), e, "{json}");
    }
    let back: Report = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(back, report);
    let mut target = target;
    let mut seen = Vec::new();
    while let Ok(e) = target.events.try_recv() {
        seen.push(serde_json::to_value(&e).unwrap()["event"].clone());
    }
    assert_eq!(seen, ["began", "restored", "committed"]);
    target.finish().await;

    // Rolled back, with the typed error kept.
    let target = TestTarget::start(StandIn::new(ALL).failing_restore()).await;
    let htype = phaul_htypes::registry::source("pid", &sleeper.pid()).unwrap();
    let failure = Migration::new(StandIn::new(ALL), target.addr.clone(), cfg(), htype)
        .work_dir(target.work.path().join("source"))
        .start()
        .await
        .unwrap_err();
    assert_eq!(failure.outcome, Outcome::RolledBack);
    assert!(
        matches!(failure.error, phaul_core::Error::Target(_)),
        "{failure}"
    );
    assert_eq!(failure.report.outcome, Outcome::RolledBack);
    target.finish().await;

    // A dry run says what a migration would do, and touches nothing.
    let target = TestTarget::start(StandIn::new(ALL)).await;
    let src = StandIn::new(ALL);
    let pid = i32::try_from(sleeper.0.id()).unwrap();
    let htype = Box::new(phaul_htypes::pid::Pid::new(pid).unwrap());
    let m = Migration::new(src.clone(), target.addr.clone(), cfg(), htype)
        .work_dir(target.work.path().join("source"));
    let plan = m.dry_run().await.unwrap();
    assert_eq!(plan.mode, Mode::Hybrid, "{}", plan.reason);
    assert!(
        src.calls().iter().all(|c| !c.contains("dump")),
        "{:?}",
        src.calls()
    );
    target.finish().await;
    assert!(phaul_htypes::pid::Pid::new(1).is_err());

    // Refused before anything started: a bad id, then a mode the hosts lack.
    let htype = phaul_htypes::registry::source("pid", &sleeper.pid()).unwrap();
    let m = Migration::new(StandIn::new(ALL), "127.0.0.1:1", cfg(), htype);
    assert!(m.with_id("a b").is_err());
    let target = TestTarget::start(StandIn::new(ALL)).await;
    let none = HostCaps::default();
    let htype = phaul_htypes::registry::source("pid", &sleeper.pid()).unwrap();
    let failure = Migration::new(StandIn::new(none), target.addr.clone(), cfg(), htype)
        .work_dir(target.work.path().join("source"))
        .mode(Mode::PostCopy)
        .run_typed()
        .await
        .unwrap_err();
    assert_eq!(failure.outcome, Outcome::NotStarted);
    assert!(
        matches!(failure.error, phaul_core::Error::UnsupportedMode { .. }),
        "{failure}"
    );
    target.finish().await;
}

/// Keeps pre-copying for `limit` iterations: a member that is still busy
/// when another member of its group fails.
#[derive(Debug)]
struct Keeps(usize);

impl phaul_core::policy::ConvergencePolicy for Keeps {
    fn decide(
        &self,
        history: &[phaul_core::policy::IterationSample],
    ) -> phaul_core::policy::Decision {
        match history.len() >= self.0 {
            true => phaul_core::policy::Decision::NotConverging("enough".into()),
            false => phaul_core::policy::Decision::Continue,
        }
    }
}

/// A group of a member still pre-copying and one whose restore fails: the
/// failure reaches the first before it freezes, so it gives up unfrozen
/// (`NotStarted`, no final dump), while the second rolls back.
#[tokio::test]
async fn a_group_member_still_pre_copying_gives_up_unfrozen_when_another_fails() {
    let good = TestTarget::start(StandIn::new(ALL)).await;
    // The failure comes after the busy member has begun pre-copying (its
    // first pre-dump is milliseconds in), not in a race with it.
    let slow_failure = StandIn::new(ALL)
        .failing_restore()
        .restore_takes(Duration::from_millis(300));
    let bad = TestTarget::start(slow_failure).await;
    let (s1, s2) = (Sleeper::new(), Sleeper::new());
    let (src1, src2) = (StandIn::new(ALL), StandIn::new(ALL));
    let htype = |s: &Sleeper| phaul_htypes::registry::source("pid", &s.pid()).unwrap();
    let work = good.work.path().join("source");
    let busy = Migration::new(src1.clone(), good.addr.clone(), cfg(), htype(&s1))
        .mode(Mode::PreCopy)
        .policy(Box::new(Keeps(2000)))
        .work_dir(&work);
    let failing = Migration::new(src2.clone(), bad.addr.clone(), cfg(), htype(&s2))
        .mode(Mode::StopCopy)
        .work_dir(&work);
    let run = phaul_core::Group::new()
        .member(busy)
        .member(failing)
        .start();
    let end = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the group hung");
    let f = end.expect_err("a member's restore fails");
    assert_eq!(f.outcome, phaul_core::Outcome::RolledBack, "{f}");
    let [first, second] = &f.report.members[..] else {
        panic!("two members: {}", f.report)
    };
    assert_eq!(second.outcome, phaul_core::Outcome::RolledBack, "{second}");
    assert_eq!(first.outcome, phaul_core::Outcome::NotStarted, "{first}");
    assert!(
        first
            .error
            .as_deref()
            .unwrap()
            .contains("another member of the group failed"),
        "{first}"
    );
    let calls = src1.calls();
    assert!(calls.iter().any(|c| c.starts_with("pre-dump")), "{calls:?}");
    assert!(
        !calls.iter().any(|c| c.starts_with("dump")),
        "the busy member froze for its final dump: {calls:?}"
    );
    assert!(first.per_iteration.len() < 2000, "it pre-copied to the end");
    good.finish().await;
    bad.finish().await;
}

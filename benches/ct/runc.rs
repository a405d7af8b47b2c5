//! The containers bench's runc cases: redis-server in a runc container
//! whose config joins a network namespace by path (what CNI makes), with
//! a client on the LAN.
//!
//! Each host has its own namespace at that path, with the container's
//! address and MAC; the target's waits off the LAN. Both hosts are one
//! machine here, so everything on the target (phaul's service, or `runc
//! restore` by hand) runs in a mount namespace of its own in which the
//! target's namespace is bound over the path. When the container runs on
//! the target, the bench does the orchestrator's part: the source's
//! namespace leaves the LAN and the target's joins it — for phaul in its
//! switch-over hook, while the target holds the restored container with its
//! namespace locked (before the commit lets it run), by hand as soon as
//! `runc restore` returns (by hand the source leaves the LAN before the
//! checkpoint: nothing else would keep its kernel from resetting the
//! client's connection once the container is gone; phaul's `runc` kind
//! locks the namespace instead).
//!
//! By hand the client's stall is longer than the downtime by about a
//! second: runc runs the restored container at once, whose answer to the
//! request it held goes out before the target's namespace is on the LAN
//! and is lost, and TCP sends it again only at its retransmission timeout.
//! Switching before the restore is no cure (a namespace on the LAN before
//! its sockets are restored answers the client with a reset); switching
//! while the restored copy is held is, and phaul's stall is its downtime.
//!
//! phaul's target service runs as a second process of this bench binary
//! ([`SERVE_ENV`]): a process can enter a mount namespace only while it has
//! one thread.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use phaul_core::{Migration, Mode, Progress};
use phaul_htypes::registry::{Paths, source_in};
use phaul_testkit::lan::{LanClient, redis_cli, redis_ready_with};
use phaul_testkit::runc::{NamedNetns, redis_bundle};
use phaul_testkit::{Hosts, in_netns};
use phaul_transport::Listener;

use super::common::{self, engine_criu};
use super::{CLIENT_PERIOD, STEP_TIMEOUT, link_config, rsync, run};

/// Set (to the ready file's path) in the environment of this binary run as
/// the target's service; the rest of its set-up travels in the variables
/// below.
pub const SERVE_ENV: &str = "PHAUL_BENCH_RUNC_SERVE";
const LISTEN_ENV: &str = "PHAUL_BENCH_RUNC_LISTEN";
const WORK_ENV: &str = "PHAUL_BENCH_RUNC_WORK";
const ROOT_ENV: &str = "PHAUL_BENCH_RUNC_ROOT";
const BUNDLES_ENV: &str = "PHAUL_BENCH_RUNC_BUNDLES";
const CRIU_ENV: &str = "PHAUL_BENCH_RUNC_CRIU";
/// The container's MAC, the same on both hosts.
const MAC: &str = "02:70:68:61:75:47";
/// The container's address on the LAN (`.N`).
const CT_HOST: u8 = 71;

/// This binary as the target's phaul-service: serves until killed.
pub fn serve(ready: &str) -> Result<()> {
    let var = |k: &str| std::env::var(k).with_context(|| format!("{k} is not set"));
    let (listen, work) = (var(LISTEN_ENV)?, PathBuf::from(var(WORK_ENV)?));
    let paths = Paths {
        runc_root: var(ROOT_ENV)?.into(),
        runc_bundles: var(BUNDLES_ENV)?.into(),
        criu: var(CRIU_ENV)?.into(),
        ..Paths::default()
    };
    let criu = paths.criu.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = Listener::bind(&listen).await?;
        std::fs::write(ready, listener.local_addr()?)?;
        common::service(&criu, link_config()?, work)
            .htype_paths(paths)
            .keep_images(std::env::var_os("PHAUL_BENCH_KEEP").is_some())
            .serve(listener, std::future::pending::<()>())
            .await?;
        Ok(())
    })
}

/// `ip ARGS...`, to its end.
fn ip(args: &[&str]) -> Result<()> {
    let mut c = Command::new("ip");
    c.args(args);
    run(c)
}

/// Kills and deletes the container in both runc roots, and its service.
struct Container {
    id: String,
    roots: Vec<PathBuf>,
    service: Option<Child>,
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(mut s) = self.service.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        for root in &self.roots {
            for args in [
                vec!["kill", &self.id, "KILL"],
                vec!["delete", "-f", &self.id],
            ] {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(root)
                    .args(args)
                    .output();
            }
        }
    }
}

/// A runc container serving redis with `mib` MiB, its client, both hosts'
/// namespaces; everything is removed on drop.
pub struct RuncScene {
    // Dropped first: the client, then the container, then the namespaces.
    client: LanClient,
    container: Container,
    ip: String,
    id: String,
    /// The path both hosts' namespaces go by.
    path: String,
    spare: String,
    src_dev: String,
    tgt_dev: String,
    root_a: PathBuf,
    root_b: PathBuf,
    bundles: PathBuf,
    bundle: PathBuf,
    _src_ns: NamedNetns,
    _tgt_ns: NamedNetns,
    base: tempfile::TempDir,
    pub hosts: Hosts,
}

impl RuncScene {
    pub fn start(mib: u32) -> Result<Self> {
        let hosts = Hosts::with_lan()?;
        let lan = hosts.lan();
        let ip = lan.ip(CT_HOST);
        let tag = std::process::id() % 100_000;
        let (name, spare) = (format!("phbn{tag}"), format!("phbm{tag}"));
        let (src_dev, tgt_dev) = (format!("phbs{tag}"), format!("phbt{tag}"));
        let ct = (ip.as_str(), MAC);
        let src_ns = NamedNetns::new(&name, &hosts.src, &src_dev, &lan.bridge, ct, true)?;
        let tgt_ns = NamedNetns::new(&spare, &hosts.tgt, &tgt_dev, &lan.bridge, ct, false)?;
        // `PHAUL_BENCH_KEEP`: the scene's directory stays, with CRIU's logs.
        let keep = std::env::var_os("PHAUL_BENCH_KEEP").is_some();
        let base = tempfile::Builder::new()
            .prefix("phaul-bench-runc-")
            .disable_cleanup(keep)
            .tempdir()?;
        if keep {
            println!("  kept: {}", base.path().display());
        }
        let sub = |d: &str| -> Result<PathBuf> {
            let p = base.path().join(d);
            std::fs::create_dir_all(&p)?;
            Ok(p)
        };
        let (root_a, root_b, bundles) = (sub("root-a")?, sub("root-b")?, sub("bundles")?);
        let path = format!("/run/netns/{name}");
        let bundle = base.path().join("bundle");
        redis_bundle(&bundle, &path, &["--enable-debug-command", "yes"])?;
        let id = format!("phbn{tag}");
        let container = Container {
            id: id.clone(),
            roots: vec![root_a.clone(), root_b.clone()],
            service: None,
        };
        let mut c = Command::new("runc");
        c.arg("--root")
            .arg(&root_a)
            .args(["run", "-d", &id])
            .current_dir(&bundle);
        run(c).context("runc run")?;
        redis_ready_with(lan, &ip, "bench:k", 100)?;
        let populated = redis_cli(
            lan,
            &ip,
            &["DEBUG", "POPULATE", &mib.to_string(), "fill", "1048576"],
        );
        ensure!(populated == "OK", "DEBUG POPULATE answered {populated:?}");
        let client = LanClient::start(lan, &ip, 6379, CLIENT_PERIOD)?;
        Ok(Self {
            client,
            container,
            ip,
            id,
            path,
            spare,
            src_dev,
            tgt_dev,
            root_a,
            root_b,
            bundles,
            bundle,
            _src_ns: src_ns,
            _tgt_ns: tgt_ns,
            base,
            hosts,
        })
    }

    /// `program args...` on the target host: its network namespace, in a
    /// mount namespace where the target's container namespace is bound
    /// over the path. Data travel as arguments; the script is fixed.
    fn on_target(&self, program: &Path) -> Command {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
            .arg(r#"mount --bind "$1" "$2" && shift 2 && exec "$@""#)
            .arg("sh")
            .arg(format!("/run/netns/{}", self.spare))
            .arg(&self.path)
            .arg("nsenter")
            .arg(format!("--net=/run/netns/{}", self.hosts.tgt))
            .arg(program);
        c
    }

    /// The orchestrator's part once the target runs the container: the
    /// source's namespace off the LAN, the target's on it.
    fn switch_lan(&self) -> Result<()> {
        self.lan_switch().run()
    }

    /// What [`RuncScene::switch_lan`] does, as a value a hook can own.
    fn lan_switch(&self) -> LanSwitch {
        LanSwitch {
            src: self.hosts.src.clone(),
            tgt: self.hosts.tgt.clone(),
            src_dev: self.src_dev.clone(),
            tgt_dev: self.tgt_dev.clone(),
            bridge: self.hosts.lan().bridge.clone(),
        }
    }

    /// The container runs on the target, known to runc there, with its
    /// data, and its client goes on with no error; what the client saw.
    pub fn check_moved(&self) -> Result<phaul_testkit::lan::ClientStats> {
        let out = Command::new("runc")
            .arg("--root")
            .arg(&self.root_b)
            .args(["state", &self.id])
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        ensure!(
            v["status"] == "running",
            "on the target runc says {}",
            v["status"]
        );
        super::client_went_on(&self.client, self.hosts.lan(), &self.ip)
    }

    /// Starts phaul's service on the target (this binary, see [`serve`]);
    /// its address.
    fn start_service(&mut self, bin: &Path) -> Result<String> {
        let ready = self.base.path().join("service.ready");
        let log = std::fs::File::create(self.base.path().join("service.log"))?;
        let child = self
            .on_target(&std::env::current_exe()?)
            .env(SERVE_ENV, &ready)
            .env(LISTEN_ENV, format!("{}:0", self.hosts.tgt_ip))
            .env(WORK_ENV, self.base.path().join("target"))
            .env(ROOT_ENV, &self.root_b)
            .env(BUNDLES_ENV, &self.bundles)
            .env(CRIU_ENV, bin)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.container.service = Some(child);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(addr) = std::fs::read_to_string(&ready) {
                return Ok(addr);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(anyhow!("the target's service did not start"))
    }
}

/// The LAN switch: the source's namespace off the bridge, the target's on.
#[derive(Debug, Clone)]
struct LanSwitch {
    src: String,
    tgt: String,
    src_dev: String,
    tgt_dev: String,
    bridge: String,
}

impl LanSwitch {
    fn run(&self) -> Result<()> {
        ip(&[
            "-n",
            &self.src,
            "link",
            "set",
            &self.src_dev,
            "nomaster",
            "down",
        ])?;
        ip(&[
            "-n",
            &self.tgt,
            "link",
            "set",
            &self.tgt_dev,
            "master",
            &self.bridge,
            "up",
        ])
    }
}

/// phaul moves the container (kind `runc`) to its service on the target;
/// the LAN switches in phaul's switch-over hook, while the target holds
/// the restored container (both namespaces locked), before the commit lets
/// it run. Its downtime and total, in ms.
pub fn phaul(bin: &Path, scene: &mut RuncScene, mode: Mode) -> Result<(f64, f64)> {
    let addr = scene.start_service(bin)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
    let lan = scene.lan_switch();
    let switched = std::sync::Arc::new(std::sync::Mutex::new(None::<Result<(), String>>));
    let said = switched.clone();
    // The orchestrator's part, while the target holds the container.
    let hook = move || {
        let (lan, said) = (lan.clone(), said.clone());
        async move {
            let r = tokio::task::spawn_blocking(move || lan.run().map_err(|e| format!("{e:#}")))
                .await
                .map_err(|e| e.to_string())?;
            *said.lock().unwrap() = Some(r.clone());
            r
        }
    };
    let events = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut events = Vec::new();
            while let Some(p) = rx.blocking_recv() {
                events.push((Instant::now(), p));
            }
            events
        });
        let (b, id, src) = (bin.to_path_buf(), scene.id.clone(), scene.root_a.clone());
        let work = scene.base.path().join("source");
        let report = in_netns(&scene.hosts.src, move || async move {
            let paths = Paths {
                runc_root: src,
                criu: b.clone(),
                ..Paths::default()
            };
            let htype = source_in("runc", &id, &paths)?;
            let m = Migration::new(engine_criu(&b), addr, link_config()?, htype)
                .mode(mode)
                .work_dir(work)
                .images_in_ram(common::images_in_ram())
                .keep_images(std::env::var_os("PHAUL_BENCH_KEEP").is_some())
                .switchover(hook)
                .progress(tx);
            tokio::time::timeout(STEP_TIMEOUT, m.run())
                .await
                .map_err(|_| anyhow!("the migration hung"))
        })
        .join()
        .map_err(|_| anyhow!("the source thread panicked"));
        let events = watcher.join().map_err(|_| anyhow!("the watcher panicked"));
        (report, events)
    });
    let (report, events) = events;
    let report = report??;
    super::common::succeeded_as(&report, mode)?;
    let events = events?;
    let switched = switched.lock().unwrap().take();
    switched
        .ok_or_else(|| anyhow!("the switch-over hook did not run"))?
        .map_err(|e| anyhow!(e))?;
    super::print_phases(&report, &events);
    let downtime = report
        .downtime_ms
        .ok_or_else(|| anyhow!("the report has no downtime"))?;
    Ok((downtime, report.total_ms))
}

/// By hand, as runc's documentation moves a container: `runc checkpoint
/// --tcp-established` on the source (its connections are the point), rsync of the bundle and the images, `runc restore -d` on
/// the target, then the LAN switch. Downtime and total (the same), in ms.
pub fn by_hand(bin: &Path, scene: &RuncScene) -> Result<(f64, f64)> {
    let (s, t) = (scene.base.path().join("s"), scene.base.path().join("t"));
    let w = scene.base.path().join("w");
    for d in [&s, &w] {
        std::fs::create_dir_all(d)?;
    }
    let target_bundle = scene.bundles.join(&scene.id);
    // runc does not lock a namespace it joined by path, and CRIU locks only
    // one it dumps: the source leaves the LAN first, or its kernel would
    // reset the client's connection once the container is gone.
    let start = Instant::now();
    let src = &scene.hosts.src;
    ip(&["-n", src, "link", "set", &scene.src_dev, "nomaster", "down"])?;
    let mut c = Hosts::command(src, "runc");
    c.arg("--root")
        .arg(&scene.root_a)
        .arg("--criu")
        .arg(bin)
        .args(["checkpoint", "--tcp-established", "--image-path"])
        .arg(&s)
        .arg("--work-path")
        .arg(&w)
        .arg(&scene.id);
    run(c).context("runc checkpoint")?;
    run(rsync(&scene.bundle, &target_bundle)).context("rsync of the bundle")?;
    run(rsync(&s, &t)).context("rsync of the images")?;
    let mut c = scene.on_target(Path::new("runc"));
    c.arg("--root")
        .arg(&scene.root_b)
        .arg("--criu")
        .arg(bin)
        .args(["restore", "-d", "--tcp-established", "--image-path"])
        .arg(&t)
        .arg("--bundle")
        .arg(&target_bundle)
        .arg(&scene.id);
    run(c).context("runc restore")?;
    scene.switch_lan()?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    Ok((ms, ms))
}

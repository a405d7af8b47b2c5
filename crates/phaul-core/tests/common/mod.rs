//! What the real-migration test files share: a target service on its own
//! thread inside the target host, and the link configuration both ends use.
//!
//! Each test file compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use phaul_core::criu::{Criu, TargetCriu};
use phaul_core::{Migration, Report, Service};
use phaul_htypes::Htype;
use phaul_htypes::registry::Paths;
use phaul_testkit::{Hosts, in_netns};
use phaul_transport::{LinkConfig, Listener, SharedKey};

/// The shared key of both ends in every real test.
pub const KEY: &[u8] = b"real migration test key: 32 bytes";

/// The link configuration of both ends.
pub fn cfg() -> LinkConfig {
    LinkConfig::new(SharedKey::new(KEY).unwrap())
}

/// The engine's CRIU with `bin`, its stderr kept out of the test output.
pub fn criu(bin: &Path) -> Criu {
    Criu::new(criu_rpc::Criu::with_binary(bin).quiet(true))
}

/// Runs a migration from host `ns` to the service at `to`: of the kind
/// `open` returns (called inside that host), shaped by `tweak`, with a
/// fresh source work dir. Returns the report and that dir, which with
/// `PHAUL_KEEP` set outlives the test, its images and CRIU's logs kept for
/// a look afterwards. Panics when the migration hangs for 5 minutes.
pub fn migrate_from(
    ns: &str,
    bin: &Path,
    to: &str,
    open: impl FnOnce() -> Box<dyn Htype> + Send + 'static,
    tweak: impl FnOnce(Migration<Criu>) -> Migration<Criu> + Send + 'static,
) -> (Report, tempfile::TempDir) {
    let keep = std::env::var_os("PHAUL_KEEP").is_some();
    let work = tempfile::Builder::new()
        .prefix("phaul-source-")
        .disable_cleanup(keep)
        .tempdir()
        .unwrap();
    let (bin, to, w) = (bin.to_path_buf(), to.to_string(), work.path().to_path_buf());
    let report = in_netns(ns, move || async move {
        let m = Migration::new(criu(&bin), to, cfg(), open())
            .work_dir(&w)
            .keep_images(keep);
        tokio::time::timeout(Duration::from_secs(300), tweak(m).run())
            .await
            .expect("the migration hung")
    })
    .join()
    .expect("the source thread panicked");
    (report, work)
}

/// How a [`Target`] is set up.
#[derive(Debug, Default)]
pub struct Setup {
    /// Where the service's htypes find their tools and paths.
    pub paths: Option<Paths>,
    /// Clients reach the service through a proxy that cuts connection
    /// number `n` (0-based) after `bytes` client bytes.
    pub cut: Option<(usize, usize)>,
    /// The service's work dir (by default a fresh one).
    pub work: Option<tempfile::TempDir>,
    /// Where the service sends its events.
    pub events: Option<tokio::sync::mpsc::UnboundedSender<phaul_core::ServiceEvent>>,
}

/// A target service running on its own thread inside the target host.
/// Dropping it stops the service.
pub struct Target {
    pub addr: String,
    work: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Target {
    /// A service with `criu` and default paths.
    pub fn start<T: TargetCriu>(hosts: &Hosts, criu: T) -> Self {
        Self::start_with(hosts, criu, Setup::default())
    }

    pub fn start_with<T: TargetCriu>(hosts: &Hosts, criu: T, setup: Setup) -> Self {
        Self::start_on(&hosts.tgt, &hosts.tgt_ip, criu, setup)
    }

    /// A service in host `ns`, listening on `ip`.
    pub fn start_on<T: TargetCriu>(ns: &str, ip: &str, criu: T, setup: Setup) -> Self {
        let work = setup.work.unwrap_or_else(|| {
            tempfile::Builder::new()
                .prefix("phaul-target-")
                .tempdir()
                .unwrap()
        });
        let dir = work.path().to_path_buf();
        let ip = ip.to_string();
        let (paths, cut, events) = (setup.paths, setup.cut, setup.events);
        let (addr_tx, addr_rx) = std_mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = in_netns(ns, move || async move {
            let listener = Listener::bind(&format!("{ip}:0")).await.unwrap();
            let svc_addr = listener.local_addr().unwrap();
            let public = match cut {
                None => svc_addr.clone(),
                Some((n, bytes)) => proxy(&ip, svc_addr.clone(), n, bytes).await,
            };
            addr_tx.send(public).unwrap();
            let mut svc = Service::new(criu, cfg(), dir);
            if let Some(p) = paths {
                svc = svc.htype_paths(p);
            }
            if let Some(tx) = events {
                svc = svc.events(tx);
            }
            svc.serve(listener, async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
            // Returning drops this thread's runtime and every task on it,
            // as a crash of the service would.
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the service did not start");
        Self {
            addr,
            work,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Ends the service abruptly: its runtime, sessions and CRIU
    /// connections all go away at once.
    pub fn kill(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.work.path().to_path_buf()
    }

    /// Starts a new service on the same directory (after [`Target::kill`]).
    pub fn restart<T: TargetCriu>(mut self, hosts: &Hosts, criu: T) -> Self {
        self.kill();
        let work = std::mem::replace(&mut self.work, tempfile::tempdir().unwrap());
        Self::start_with(
            hosts,
            criu,
            Setup {
                work: Some(work),
                ..Setup::default()
            },
        )
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy that cuts connection number `nth` after `bytes` bytes from
/// the client.
async fn proxy(ip: &str, to: String, nth: usize, bytes: usize) -> String {
    let l = tokio::net::TcpListener::bind(format!("{ip}:0"))
        .await
        .unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut count = 0usize;
        loop {
            let Ok((mut c, _)) = l.accept().await else {
                return;
            };
            let limit = (count == nth).then_some(bytes);
            count += 1;
            let to = to.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let Ok(mut s) = tokio::net::TcpStream::connect(&to).await else {
                    return;
                };
                let (mut cr, mut cw) = c.split();
                let (mut sr, mut sw) = s.split();
                let up = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut sent = 0usize;
                    loop {
                        let n = cr.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        let n = match limit {
                            Some(l) if sent + n >= l => {
                                let _ = sw.write_all(&buf[..l - sent]).await;
                                break;
                            }
                            _ => n,
                        };
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        sent += n;
                    }
                };
                let down = tokio::io::copy(&mut sr, &mut cw);
                tokio::select! {
                    () = up => {}
                    _ = down => {}
                }
                // Dropping both sockets cuts the connection.
            });
        }
    });
    addr
}

/// A stand-in `criu` in front of the real one at `bin`, for managers that
/// run CRIU themselves (LXC on the command line, runc through `criu swrk`):
/// it runs the real one with a configuration file (`CRIU_CONFIG_FILE`)
/// naming an LSM profile this kernel lacks, which only a restore uses, so
/// CRIU's restore fails for real ("apparmor LSM specified but apparmor not
/// supported by kernel") after the images arrived. Returns its directory
/// (keep it) and its path.
pub fn criu_failing_restores(bin: &Path) -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("criu");
    let conf = dir.path().join("restore-fails.conf");
    std::fs::write(&conf, "lsm-profile apparmor:phaul-test\n").unwrap();
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n# A stand-in in front of the real CRIU: its restores fail.\n\
             CRIU_CONFIG_FILE={conf} exec {bin} \"$@\"\n",
            conf = conf.display(),
            bin = bin.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, path)
}

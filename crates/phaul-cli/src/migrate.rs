//! Everything `phaul migrate` accepts, and the [`Migration`] it describes.

use std::path::PathBuf;
use std::time::Duration;

use phaul_core::policy::{DowntimeBudget, PhaulRules};
use phaul_core::stats::Ongoing;
use phaul_core::{Group, GroupReport, Migration, Mode, ModeChoice, Order, Report};
use phaul_htypes::pid::{PidOptions, TcpConnections};
use phaul_transport::LinkConfig;

use crate::args::{CriuArgs, HostArgs, LinkArgs, TARGET_HELP, fs_choice};
use crate::error::{Error, Result};

/// The arguments of `phaul migrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    #[arg(long, help = TARGET_HELP)]
    #[allow(missing_docs)]
    pub to: String,
    /// Migrate from another host: ask the phaul-service at SRC (HOST:PORT)
    /// to move KIND ID of its host to --to, and follow it from here (a
    /// controller; any host that holds the key). --pin is then the
    /// target's, which the source's service checks.
    #[arg(long, value_name = "SRC")]
    pub from: Option<String>,
    /// With --from: accept only a source service certificate with this
    /// SHA-256 fingerprint.
    #[arg(long, requires = "from", value_name = "SHA256")]
    pub from_pin: Option<String>,
    /// The key, TLS and the pinned certificate.
    #[command(flatten)]
    pub link: LinkArgs,
    /// auto, stop-copy, post-copy, pre-copy, hybrid or restart.
    #[arg(long, default_value = "auto")]
    pub mode: Mode,
    /// If the mode is not possible here, use the best one that is.
    #[arg(long)]
    pub fallback: bool,
    /// Write the final report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write every progress event to this file as a JSON line, with
    /// `elapsed_ms`, `bytes_sent` (updated at least every 200 ms while
    /// memory streams) and, once the engine has said, `expected_bytes`.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Pre-copy stops when the predicted downtime fits this many ms
    /// (default: P.Haul's rules). The prediction includes what the
    /// target's service learned switch-overs to it cost beyond their pages.
    #[arg(long)]
    pub downtime_ms: Option<u64>,
    /// The longest the source may stay frozen, in seconds: past it phaul
    /// gives up, rolls back and resumes the source (a target that wakes up
    /// later refuses to run its copy).
    #[arg(long, default_value_t = phaul_core::source::DEFAULT_FREEZE_TIMEOUT.as_secs_f64())]
    pub freeze_timeout: f64,
    /// Run PROGRAM (no shell, no arguments) once the target has restored
    /// the tree and holds it, before the commit lets it run: where an
    /// orchestrator moves the tree's address or network over. It gets
    /// PHAUL_KIND, PHAUL_ID and PHAUL_TARGET in its environment; a failure
    /// (or running past the request timeout) rolls the migration back.
    #[arg(long, value_name = "PROGRAM")]
    pub switchover: Option<PathBuf>,
    /// Cap the bytes per second this side sends.
    #[arg(long)]
    pub bandwidth: Option<u64>,
    /// Compress memory pages with lz4.
    #[arg(long)]
    pub compress: bool,
    /// Where the source keeps its images.
    #[arg(long, default_value = "/var/tmp/phaul")]
    pub work_dir: PathBuf,
    /// Keep the source's images afterwards.
    #[arg(long)]
    pub keep_images: bool,
    /// Write a post-copy's images to the work directory, not to RAM
    /// (`/dev/shm`, the default: they hold no memory pages, and the dump
    /// writes them while the tree is frozen).
    #[arg(long)]
    pub no_images_in_ram: bool,
    /// Skip the CPU compatibility check.
    #[arg(long)]
    pub skip_cpu_check: bool,
    /// Skip the CRIU version check.
    #[arg(long)]
    pub skip_criu_check: bool,
    /// Run the pre-flight checks but go on when the CRIU version or CPU
    /// check fails (printed as warnings).
    #[arg(long)]
    pub force: bool,
    /// Which CRIU.
    #[command(flatten)]
    pub criu: CriuArgs,
    /// Container managers' state.
    #[command(flatten)]
    pub host: HostArgs,
    /// How a container's file system travels: native, rsync (over the
    /// phaul link) or shared (the same storage on both hosts).
    #[arg(
        long,
        default_value = "native",
        value_parser = clap::builder::PossibleValuesParser::new(phaul_fs::registry::NAMES)
    )]
    pub fs: String,
    /// CRIU options of a `pid` tree.
    #[command(flatten)]
    pub pid_opts: PidFlags,
    /// What to migrate: KIND ID, e.g. `pid 4242`, `lxc web1`, `runc web1`
    /// or `vz 101`. Several KIND ID pairs move as one group: all are
    /// checked, frozen and restored before any runs on the target, and one
    /// failure rolls them all back.
    #[arg(num_args = 2.., value_names = ["KIND", "ID"], required = true)]
    pub what: Vec<String>,
}

impl MigrateArgs {
    /// Whether several KIND ID pairs were given: a group migration.
    pub fn is_group(&self) -> bool {
        self.what.len() > 2
    }

    /// The migration these arguments describe, not started: the caller adds
    /// its progress channel and runs it. With several KIND ID pairs, the
    /// first one's (see [`MigrateArgs::group`]).
    pub fn migration(&self) -> Result<Migration> {
        self.pairs()?;
        self.migration_of(&self.what[0], &self.what[1])
    }

    /// The group these arguments describe: every KIND ID pair a member,
    /// each with the same settings.
    pub fn group(&self) -> Result<Group> {
        self.pairs()?
            .iter()
            .try_fold(Group::new(), |g, (kind, id)| {
                Ok(g.member(self.migration_of(kind, id)?))
            })
    }

    /// The KIND ID pairs; an odd count is refused by name.
    fn pairs(&self) -> Result<Vec<(&str, &str)>> {
        if self.what.len() % 2 != 0 {
            return Err(Error::Pairs(self.what.clone()));
        }
        Ok(self
            .what
            .chunks(2)
            .map(|p| (p[0].as_str(), p[1].as_str()))
            .collect())
    }

    fn migration_of(&self, kind: &str, id: &str) -> Result<Migration> {
        let htype = phaul_htypes::registry::source_with(
            kind,
            id,
            &self.host.paths(),
            &self.pid_opts.options()?,
        )?;
        let link = self
            .link
            .config()?
            .bandwidth(self.bandwidth)
            .compress(self.compress);
        let freeze_timeout = Duration::try_from_secs_f64(self.freeze_timeout)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or(Error::FreezeTimeout(self.freeze_timeout))?;
        let mig = Migration::new(self.criu.criu(), self.to.clone(), link, htype)
            .mode(self.mode)
            .fallback(self.fallback)
            .work_dir(&self.work_dir)
            .keep_images(self.keep_images)
            .images_in_ram(!self.no_images_in_ram)
            .skip_cpu_check(self.skip_cpu_check)
            .skip_version_check(self.skip_criu_check)
            .force(self.force)
            .freeze_timeout(freeze_timeout)
            .fs(fs_choice(&self.fs)?);
        let mig = match &self.switchover {
            Some(program) => mig.switchover(run_switchover(program, kind, id, &self.to)),
            None => mig,
        };
        Ok(match self.downtime_ms {
            Some(ms) => mig.policy(Box::new(DowntimeBudget {
                budget: Duration::from_millis(ms),
                ..Default::default()
            })),
            None => mig.policy(Box::new(PhaulRules::default())),
        })
    }

    /// The order these arguments describe for `--from`'s service, and the
    /// link to it. Flags the order does not carry are refused rather than
    /// ignored.
    pub fn order(&self) -> Result<(Order, LinkConfig)> {
        let pid_opts = self.pid_opts.options()? != PidOptions::default();
        let not_carried = [
            ("several KIND ID pairs (a group)", self.is_group()),
            ("--downtime-ms", self.downtime_ms.is_some()),
            ("--switchover", self.switchover.is_some()),
            ("--bandwidth", self.bandwidth.is_some()),
            ("--compress", self.compress),
            ("--keep-images", self.keep_images),
            ("--no-images-in-ram", self.no_images_in_ram),
            ("--skip-cpu-check", self.skip_cpu_check),
            ("--skip-criu-check", self.skip_criu_check),
            ("--force", self.force),
            ("--fs", self.fs != "native"),
            ("--criu", self.criu.criu.is_some()),
            ("the pid kind's options", pid_opts),
        ];
        if let Some((flag, _)) = not_carried.iter().find(|(_, set)| *set) {
            return Err(Error::NotWithFrom(flag));
        }
        let freeze_timeout = Duration::try_from_secs_f64(self.freeze_timeout)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or(Error::FreezeTimeout(self.freeze_timeout))?;
        let mut order = Order::new(self.to.clone(), &self.what[0], &self.what[1])
            .mode(self.mode)
            .fallback(self.fallback)
            .freeze_timeout(freeze_timeout);
        if let Some(p) = &self.link.pin {
            order = order.pin_target(phaul_transport::tls::parse_fingerprint(p)?);
        }
        let link = self.link.key.config()?;
        let link = match &self.from_pin {
            Some(p) => link.pin(phaul_transport::tls::parse_fingerprint(p)?),
            None => link,
        };
        Ok((order, link))
    }

    /// The report of a migration refused before anything started, so that
    /// an orchestrator reading `--json` always finds one.
    pub fn refusal(&self, error: String) -> Report {
        Ongoing::start(ModeChoice {
            mode: self.mode,
            requested: self.mode,
            reason: "refused before anything started".into(),
        })
        .finalize(Err(error))
    }

    /// The group report of a group refused before anything started.
    pub fn group_refusal(&self, error: String) -> GroupReport {
        GroupReport {
            schema: GroupReport::SCHEMA,
            group_id: String::new(),
            outcome: phaul_core::Outcome::NotStarted,
            success: false,
            downtime_ms: None,
            members: vec![self.refusal(error)],
        }
    }
}

/// The switch-over hook of `--switchover`: `program` with the migration
/// named in its environment; its failure says how it ended, with the last
/// line of its standard error.
fn run_switchover(
    program: &std::path::Path,
    kind: &str,
    id: &str,
    to: &str,
) -> impl Fn() -> std::pin::Pin<
    Box<dyn std::future::Future<Output = std::result::Result<(), String>> + Send>,
> + Send
+ Sync
+ 'static {
    let env = [
        ("PHAUL_KIND", kind.to_owned()),
        ("PHAUL_ID", id.to_owned()),
        ("PHAUL_TARGET", to.to_owned()),
    ];
    let program = program.to_path_buf();
    move || {
        let mut cmd = tokio::process::Command::new(&program);
        cmd.envs(env.clone())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        let name = program.display().to_string();
        Box::pin(async move {
            let out = cmd.output().await.map_err(|e| format!("{name}: {e}"))?;
            if out.status.success() {
                return Ok(());
            }
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            Err(format!("{name} ended with {}: {last}", out.status))
        })
    }
}

/// CRIU options of a `pid` tree (containers get their manager's). The
/// defaults suit a server with clients attached.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Options of the pid kind")]
pub struct PidFlags {
    /// Restore established TCP connections closed (peers see a reset)
    /// instead of moving them open.
    #[arg(long)]
    pub tcp_close: bool,
    /// Refuse a tree with connections still in a listening socket's accept
    /// queue instead of skipping them.
    #[arg(long)]
    pub no_skip_in_flight: bool,
    /// Allow unix sockets whose peer is outside the tree.
    #[arg(long)]
    pub ext_unix_sk: bool,
    /// Do not move file locks.
    #[arg(long)]
    pub no_file_locks: bool,
    /// Treat the tree as a shell job (default: when it has a controlling terminal).
    #[arg(long, overrides_with = "no_shell_job")]
    pub shell_job: bool,
    /// Never treat the tree as a shell job.
    #[arg(long)]
    pub no_shell_job: bool,
    /// A mount point bound into the tree's mount namespace from outside;
    /// the same path must exist on the target. Repeatable.
    #[arg(long, value_name = "PATH")]
    pub ext_mount: Vec<String>,
    /// A veth of the tree's network namespace to recreate on the target:
    /// IN=OUT[@BRIDGE]. Repeatable.
    #[arg(long, value_name = "IN=OUT[@BRIDGE]")]
    pub veth: Vec<String>,
    /// The largest deleted-but-open file copied into the images, in bytes
    /// (CRIU's default: 1 MiB).
    #[arg(long, value_name = "BYTES")]
    pub ghost_limit: Option<u32>,
    /// Resolve inotify watches by path (needed when inodes change).
    #[arg(long)]
    pub force_irmap: bool,
    /// Where to look for inotify watches' paths. Repeatable.
    #[arg(long, value_name = "PATH")]
    pub irmap_scan_path: Vec<String>,
    /// Restore mounts the way CRIU did before 4.0.
    #[arg(long)]
    pub mntns_compat_mode: bool,
}

impl PidFlags {
    /// The pid htype's options.
    pub fn options(&self) -> Result<PidOptions> {
        let veths = self
            .veth
            .iter()
            .map(|v| {
                v.split_once('=')
                    .map(|(i, o)| (i.to_string(), o.to_string()))
                    .ok_or_else(|| Error::Veth(v.clone()))
            })
            .collect::<Result<_>>()?;
        Ok(PidOptions {
            tcp: if self.tcp_close {
                TcpConnections::Close
            } else {
                TcpConnections::Migrate
            },
            skip_in_flight: !self.no_skip_in_flight,
            ext_unix_sk: self.ext_unix_sk,
            file_locks: !self.no_file_locks,
            shell_job: match (self.shell_job, self.no_shell_job) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            ext_mounts: self.ext_mount.clone(),
            veths,
            ghost_limit: self.ghost_limit,
            force_irmap: self.force_irmap,
            irmap_scan_paths: self.irmap_scan_path.clone(),
            mntns_compat_mode: self.mntns_compat_mode,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        m: MigrateArgs,
    }

    fn parse(extra: &[&str]) -> MigrateArgs {
        let mut argv = vec!["phaul", "--to", "unix:/x", "--key-file", "/k"];
        argv.extend_from_slice(extra);
        argv.extend_from_slice(&["pid", "1"]);
        Cli::try_parse_from(argv).expect("valid arguments").m
    }

    #[test]
    fn a_veth_without_an_equals_sign_is_refused_by_name() {
        let m = parse(&["--veth", "eth0"]);
        let e = m.pid_opts.options().unwrap_err();
        assert!(matches!(&e, Error::Veth(v) if v == "eth0"), "{e}");
        let m = parse(&["--veth", "eth0=veth9@br0", "--no-shell-job"]);
        let o = m.pid_opts.options().unwrap();
        assert_eq!(o.veths, vec![("eth0".into(), "veth9@br0".into())]);
        assert_eq!(o.shell_job, Some(false));
    }

    #[test]
    fn fs_takes_only_the_drivers_phaul_fs_registers() {
        assert_eq!(parse(&[]).fs, "native");
        for name in phaul_fs::registry::NAMES {
            let m = parse(&["--fs", name]);
            assert_eq!(fs_choice(&m.fs).unwrap().name(), name);
        }
        let argv = [
            "phaul",
            "--to",
            "a:1",
            "--key-file",
            "/k",
            "--fs",
            "nfs",
            "pid",
            "1",
        ];
        assert!(Cli::try_parse_from(argv).is_err());
    }

    #[test]
    fn a_refusal_report_says_it_failed_and_why() {
        let r = parse(&["--mode", "pre-copy"]).refusal("no such process".into());
        assert!(!r.success);
        assert_eq!(r.error.as_deref(), Some("no such process"));
        assert_eq!(r.mode, "pre-copy");
        assert_eq!(r.outcome, phaul_core::Outcome::NotStarted);
    }

    #[test]
    fn several_pairs_make_a_group_and_an_odd_count_is_refused() {
        let m = parse(&["lxc", "web1"]);
        assert!(m.is_group());
        assert_eq!(m.pairs().unwrap(), vec![("lxc", "web1"), ("pid", "1")]);
        let odd = parse(&["lxc"]);
        let e = odd.group().unwrap_err();
        assert!(matches!(&e, Error::Pairs(w) if w.len() == 3), "{e}");
        assert!(odd.migration().is_err());
        assert!(!parse(&[]).is_group());
    }

    #[test]
    fn a_group_cannot_be_ordered_through_from() {
        let mut m = parse(&["pid", "2"]);
        m.from = Some("10.0.0.1:7070".into());
        let e = m.order().unwrap_err();
        assert!(matches!(e, Error::NotWithFrom(w) if w.contains("group")));
    }
}

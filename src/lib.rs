//! phaul: live migration of Linux processes and containers, built on CRIU.
//!
//! The names an embedder needs sit at the top of this crate: a source-side
//! [`Migration`], its background [`MigrationRun`] with its [`Event`]s and
//! typed end ([`Report`] or [`Failure`], told apart by [`Outcome`]), a
//! target-side [`Service`] with its [`ServiceEvent`]s, and a controller's
//! [`Order`] that has another host's service migrate ([`RemoteRun`]). None of them asks for
//! a CRIU type: they use `criu` from `PATH` ([`Criu::default`]) unless told
//! otherwise ([`Migration::criu`], [`Service::new`]). The crates behind them
//! stay reachable as modules for what the common path does not need.
//!
//! Everything async runs on tokio, which is re-exported as [`tokio`]: a
//! runtime with time and I/O enabled (`#[tokio::main]` gives one).
//!
//! # A migration, start to end
//!
//! The source host runs it; the target host runs a [`Service`] (or the
//! `phaul-service` example) that holds the same key.
//!
//! ```no_run
//! use phaul::{LinkConfig, Migration, Mode, Outcome, Pid, SharedKey};
//!
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let link = LinkConfig::new(SharedKey::from_file("/etc/phaul/key")?);
//! let tree = Pid::new(4242)?; // refuses PID 1, this process, a zombie, ...
//! let mut run = Migration::to("10.0.0.2:7070", link, Box::new(tree))
//!     .mode(Mode::Auto)
//!     .with_id("job-42")? // else a fresh id; the target's logs carry it
//!     .start(); // on the current tokio runtime
//! while let Some(event) = run.next_event().await {
//!     // {"schema":1,"migration":"job-42","elapsed_ms":412.5,"event":"phase","value":"final-dump"}
//!     println!("{}", serde_json::to_string(&event)?);
//! }
//! match run.await {
//!     Ok(report) => println!("runs on the target as PID {:?}", report.target_pid),
//!     Err(failure) => match failure.outcome {
//!         Outcome::NotStarted => eprintln!("refused, nothing touched: {failure}"),
//!         Outcome::RolledBack => eprintln!("the source runs it again: {failure}"),
//!         Outcome::Diverged => eprintln!("look at both hosts: {failure}"),
//!         Outcome::Succeeded => unreachable!("a failure never succeeded"),
//!     },
//! }
//! # Ok(()) }
//! ```
//!
//! # Cancelling
//!
//! [`MigrationRun::cancel`] (or a [`CancelHandle`] from
//! [`MigrationRun::cancel_handle`], which is `Clone + Send`) asks the
//! migration to stop. Before the commit it rolls back and the source runs
//! the tree again; after it, the cancel changes nothing. The end still comes
//! from awaiting the run.
//!
//! ```no_run
//! use std::time::Duration;
//! use phaul::{LinkConfig, Migration, Outcome, Pid, SharedKey};
//!
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let link = LinkConfig::new(SharedKey::from_file("/etc/phaul/key")?);
//! let mut run = Migration::to("10.0.0.2:7070", link, Box::new(Pid::new(4242)?)).start();
//! let cancel = run.cancel_handle();
//! tokio::spawn(async move {
//!     tokio::time::sleep(Duration::from_secs(5)).await;
//!     cancel.cancel(); // too slow: give up
//! });
//! while run.next_event().await.is_some() {}
//! match run.await {
//!     // Cancelled before the freeze: NotStarted; during it: RolledBack.
//!     Err(f) if matches!(f.error, phaul::Error::Cancelled) => {
//!         assert_ne!(f.outcome, Outcome::Diverged);
//!     }
//!     Err(f) => eprintln!("{failure}", failure = f),
//!     Ok(_) => {} // it committed before the cancel came
//! }
//! # Ok(()) }
//! ```
//!
//! # A dry run
//!
//! [`Migration::dry_run`] checks both hosts (CRIU versions and features, the
//! CPU, the tree's sockets) and returns the mode the migration would use and
//! why, or the typed reason it could not start. Nothing is frozen and the
//! target keeps nothing: a scheduler can ask it of several targets.
//!
//! ```no_run
//! use phaul::{LinkConfig, Migration, Pid, SharedKey};
//!
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let link = LinkConfig::new(SharedKey::from_file("/etc/phaul/key")?);
//! for target in ["10.0.0.2:7070", "10.0.0.3:7070"] {
//!     let m = Migration::to(target, link.clone(), Box::new(Pid::new(4242)?));
//!     match m.dry_run().await {
//!         Ok(plan) => println!("{target}: {} ({})", plan.mode, plan.reason),
//!         Err(e) => println!("{target}: not possible: {e}"),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # The target side, in-process
//!
//! A [`Service`] serves many migrations at once until its shutdown future
//! completes; then it undoes every session not committed (its restored copy
//! killed, its images removed) before `serve` returns, at most 60 s. Its
//! [`ServiceEvent`]s say when a session began, restored (with the PID),
//! committed or was undone. The service is remote root for whoever holds
//! the key: it refuses peers that do not prove they hold it. Made with
//! [`Service::with_link`], it also takes controllers' orders
//! ([`Service::controllable`]). [`Service::metrics`] is a handle to its
//! counts ([`ServiceMetrics`]), rendered in Prometheus' text format.
//! [`Service::max_migrations`] bounds how many it receives at once (two per
//! CPU, at least 4, unless set); the next ones wait in a bounded queue
//! ([`Service::queue`]) or are refused as busy ([`Error::Busy`], outcome
//! [`Outcome::NotStarted`]) before their sources freeze anything. A
//! [`Group`] larger than what a target lets in at once is refused that way
//! once its queue wait runs out: its members hold places while they wait
//! for each other.
//!
//! ```no_run
//! use phaul::{Identity, LinkConfig, Listener, Service, SharedKey};
//!
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let identity = Identity::self_signed()?; // sources pin its fingerprint
//! println!("pin {}", identity.fingerprint_hex());
//! let link = LinkConfig::new(SharedKey::from_file("/etc/phaul/key")?).with_identity(identity);
//! let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
//! tokio::spawn(async move {
//!     while let Some(e) = events.recv().await {
//!         println!("{}", serde_json::to_string(&e).unwrap_or_default());
//!     }
//! });
//! let listener = Listener::bind("10.0.0.2:7070").await?;
//! Service::with_link(link, "/var/tmp/phaul-service")
//!     .max_migrations(8)
//!     .events(tx)
//!     .serve(listener, async { tokio::signal::ctrl_c().await.unwrap_or(()) })
//!     .await?; // returns once every unfinished session is undone
//! # Ok(()) }
//! ```
//!
//! # A controller: migrations between two other hosts
//!
//! From anywhere that holds the key, an [`Order`] asks the service of the
//! host that holds a tree to move it to another service (a managed
//! migration, as QEMU and libvirt call it); the [`RemoteRun`] follows it
//! like a local one. The source's service checks the order as strictly as
//! `phaul migrate` checks its arguments and refuses it otherwise (the error
//! says why; nothing started). Dropping the run, or losing the link, cancels
//! the migration there. [`list_processes`] asks a service what its host
//! runs, to choose what to order (`examples/balance.rs` does both).
//!
//! ```no_run
//! use phaul::{LinkConfig, Order, Outcome, SharedKey};
//!
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let link = LinkConfig::new(SharedKey::from_file("/etc/phaul/key")?);
//! let mut run = Order::new("10.0.0.2:7070", "pid", "4242")
//!     .with_id("rebalance-7")
//!     .send("10.0.0.1:7070", &link) // host A's service moves it to B
//!     .await?;
//! while let Some(event) = run.next_event().await {
//!     println!("{}", serde_json::to_string(&event)?);
//! }
//! match run.finish().await {
//!     Ok(report) => println!("on B as PID {:?}", report.target_pid),
//!     Err(f) if f.outcome == Outcome::Diverged => eprintln!("look at both hosts: {f}"),
//!     Err(f) => eprintln!("still on A: {f}"),
//! }
//! # Ok(()) }
//! ```
//!
//! # Reports and failures
//!
//! A [`Report`] is serde both ways, carries its form's version
//! ([`Report::SCHEMA`]), the migration's id and its [`Outcome`]; so does an
//! [`Event`] ([`Event::SCHEMA`]), and an [`Order`] ([`Order::SCHEMA`]). A
//! controller that receives them from node agents reads them back:
//!
//! ```
//! use phaul::{Event, Mode, ModeChoice, Outcome, Progress, Report};
//!
//! // What a refused migration reports (the engine makes these itself).
//! let choice = ModeChoice { mode: Mode::Auto, requested: Mode::Auto, reason: String::new() };
//! let report = phaul::core::stats::Ongoing::start(choice).finalize(Err("no such process".into()));
//! let back: Report = serde_json::from_str(&report.to_json()).unwrap();
//! assert_eq!(back.schema, Report::SCHEMA);
//! assert_eq!(back.outcome, Outcome::NotStarted);
//! assert!(!back.success);
//!
//! // A controller's order, as a control plane passes it on.
//! let order: phaul::Order = serde_json::from_str(
//!     r#"{"schema":1,"target":"10.0.0.2:7070","kind":"pid","id":"4242","mode":"post-copy"}"#,
//! ).unwrap();
//! assert_eq!(order, phaul::Order::new("10.0.0.2:7070", "pid", "4242").mode(Mode::PostCopy));
//!
//! let line = r#"{"schema":1,"migration":"job-42","elapsed_ms":250.0,"event":"bytes","value":1048576}"#;
//! let event: Event = serde_json::from_str(line).unwrap();
//! assert_eq!(event.progress, Progress::Bytes(1 << 20));
//! assert_eq!(serde_json::to_string(&event).unwrap(), line);
//! // From a writer before `elapsed_ms`: read as 0.
//! let old: Event = serde_json::from_str(r#"{"schema":1,"migration":"job-42","event":"frozen"}"#).unwrap();
//! assert_eq!((old.elapsed_ms, old.progress), (0.0, Progress::Frozen));
//! ```
//!
//! A [`Failure`] keeps the typed [`Error`] that ended the migration (its
//! `source()` chain reaches CRIU's or the link's error) beside the report:
//!
//! ```
//! use phaul::{Error, Failure, Outcome, Report};
//!
//! /// Whether an orchestrator may simply try again later.
//! fn worth_retrying(end: &Result<Report, Failure>) -> bool {
//!     match end {
//!         Ok(_) => false,
//!         Err(f) => match (&f.outcome, &f.error) {
//!             (Outcome::Diverged, _) => false, // a person must look first
//!             (_, Error::Link(_) | Error::Timeout(_) | Error::FreezeTimeout { .. }) => true,
//!             _ => false,
//!         },
//!     }
//! }
//! # let _ = worth_retrying;
//! ```
//!
//! # Several trees as one
//!
//! A [`Group`] moves several trees or containers as one cut: every member
//! is checked before any freezes, and none runs on its target until every
//! member is restored there; one failure before that rolls every member
//! back. The report has one entry per member and the group's downtime.
//!
//! ```no_run
//! use phaul::{Group, LinkConfig, Migration, Outcome, Pid, SharedKey};
//!
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let link = LinkConfig::new(SharedKey::from_file("/etc/phaul/key")?);
//! let member = |pid| -> Result<Migration, phaul::htypes::Error> {
//!     Ok(Migration::to("10.0.0.2:7070", link.clone(), Box::new(Pid::new(pid)?)))
//! };
//! let mut run = Group::new().member(member(4242)?).member(member(4343)?).start();
//! while let Some(event) = run.next_event().await {
//!     println!("{}: {:?}", event.migration, event.progress); // each names its member
//! }
//! match run.await {
//!     Ok(group) => println!("all moved; down {:?} ms", group.downtime_ms),
//!     Err(f) if f.outcome == Outcome::Diverged => eprintln!("split between hosts: {f}"),
//!     Err(f) => eprintln!("every source runs its tree again: {f}"),
//! }
//! # Ok(()) }
//! ```
//!
//! # Where each side must run
//!
//! - The **source** runs in the workload's mount and network namespaces.
//!   CRIU dumps the mount namespace it runs in, so a source started by `ip
//!   netns exec` (which makes a new mount namespace) fails at the final dump
//!   with CRIU's "doesn't have a proper root mount"; `nsenter --net` keeps
//!   the mount namespace. Post-copy's page server and its iptables guard
//!   live in the network namespace.
//! - The **target** restores into the namespaces of the thread that starts
//!   CRIU. To serve in another network namespace than the embedder's, give
//!   the service a dedicated OS thread that calls `setns` and then runs a
//!   *current-thread* tokio runtime, so that CRIU's processes and the
//!   blocking threads inherit the namespace (`phaul_testkit::in_netns` does
//!   exactly that).
//! - CRIU and its lazy-pages daemon run in process groups of their own, so a
//!   Ctrl-C or a service manager's signal to the embedder's group does not
//!   reach them: the engine decides how a migration ends.
//!
//! # Layout
//! - [`criu_rpc`]: async client for CRIU's RPC and readers for CRIU images.
//! - [`core`]: the migration engine, its source `Migration` and target
//!   `Service`.
//! - [`htypes`]: what is migrated: a process tree, LXC, Virtuozzo, runc.
//! - [`fs`]: file-system drivers: shared, native, rsync.
//! - [`transport`]: the authenticated link between source and target.
//! - [`archive`]: checkpoint a process tree into a tar archive and restore
//!   one.
//!
//! The binaries' own layers, `phaul-cli` (arguments, set-up, progress
//! display) and `phaul-web` (the web GUI's server), are not re-exported:
//! they serve `examples/`, not orchestrators.

pub use criu_rpc;
pub use phaul_archive as archive;
pub use phaul_core as core;
pub use phaul_fs as fs;
pub use phaul_htypes as htypes;
pub use phaul_transport as transport;
pub use tokio;

pub use phaul_core::criu::Criu;
pub use phaul_core::hostinfo::tree_size;
pub use phaul_core::target::metrics::Metrics as ServiceMetrics;
pub use phaul_core::{
    CancelHandle, Error, Event, Failure, Group, GroupCancel, GroupFailure, GroupReport, GroupRun,
    Migration, MigrationRun, Mode, ModeChoice, Order, Outcome, Phase, Progress, RemoteRun, Report,
    Service, ServiceEvent, Timeouts,
};
pub use phaul_htypes::Htype;
pub use phaul_htypes::pid::Pid;
pub use phaul_transport::proto::{ContainerInfo, ProcessInfo, ProcessList};
pub use phaul_transport::{Identity, LinkConfig, Listener, SharedKey};

/// What runs on the host of the phaul-service at `service` (`HOST:PORT` or
/// `unix:PATH`): its processes (kernel threads left out) and its LXC
/// containers, asked over the link. A controller uses it to see hosts it
/// does not run on before it sends an [`Order`]; [`tree_size`] measures a
/// tree in the answer. It gives up after 10 s ([`Error::Timeout`]).
///
/// ```no_run
/// use phaul::{LinkConfig, SharedKey};
///
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let link = LinkConfig::new(SharedKey::from_file("/etc/phaul/key")?);
/// let host = phaul::list_processes("10.0.0.1:7070", &link).await?;
/// for p in host.processes.iter().filter(|p| p.name == "redis-server") {
///     println!("{} ({} processes)", p.pid, phaul::tree_size(&host, p.pid));
/// }
/// # Ok(()) }
/// ```
pub async fn list_processes(service: &str, link: &LinkConfig) -> Result<ProcessList, Error> {
    phaul_core::hostinfo::remote(service, link).await
}

/// The thing to migrate named by its kind and id as the CLI takes them
/// (`pid 4242`, `lxc web1`, `runc web1`, `vz 101`), checked on this host
/// with the kinds' default paths: the same refusals as `phaul migrate`.
/// It may run a container manager's tools, so async code calls it through
/// `tokio::task::spawn_blocking`.
///
/// ```no_run
/// let tree = phaul::htype("pid", "4242")?;
/// # Ok::<(), phaul::htypes::Error>(())
/// ```
pub fn htype(kind: &str, id: &str) -> Result<Box<dyn Htype>, phaul_htypes::Error> {
    phaul_htypes::registry::source(kind, id)
}

//! phaul-web: a browser GUI for live migration between two hosts, both
//! ways, from one page.
//!
//! Both hosts run `phaul-service`, as for `phaul migrate`; phaul-web runs
//! on one of them ("this host") and reaches the other host's service
//! ([`Config::target`]). The page shows both hosts as trees side by side:
//!
//! - this host's processes and LXC containers, from
//!   [`phaul_core::hostinfo::list`] (read in this process);
//! - the other host's, from a `ListProcesses` request to its
//!   `phaul-service` over the authenticated link (the same key and TLS as a
//!   migration), on one control session kept open and reopened when it
//!   breaks.
//!
//! A migration goes through the host that owns the tree, as the seed's GUI
//! did:
//!
//! - dragging a tree of this host onto the other host asks `POST
//!   /api/migrate`, which starts a real [`phaul_core::Migration`] in this
//!   process ([`Migration::start`](phaul_core::Migration::start), mode
//!   `auto` unless the page picks another);
//! - dragging a tree of the other host onto this host asks `POST
//!   /api/migrate` with `"from": "remote"`, which sends an
//!   [`phaul_core::Order`] over the control API to the other host's
//!   service: that service becomes the source and migrates the tree to
//!   this host's `phaul-service`, named by [`Config::this_host`] (HOST:PORT
//!   as the other host reaches it; without it the page moves trees one
//!   way only). The other service must take orders
//!   ([`phaul_core::Service::controllable`], as `phaul-service` does).
//!
//! Either way the [`phaul_core::Progress`] events become the migration's
//! state (phase, iteration, bytes, downtime so far), pushed to every open
//! page over server-sent events, and cancel is the run's own (for an order,
//! the control API's cancel, which the other service obeys). The end
//! carries the engine's [`phaul_core::Report`] or its error text, which
//! holds CRIU's message. The confirmation's dry run ("what `auto` picks
//! here, and why") is offered for this host's trees only: the control API
//! has no dry run, so a tree of the other host is checked by its own
//! service when the order arrives, and a refusal comes back at once.
//!
//! Checkpoint and restore through an archive (what the original P.Haul
//! GUI's demo endpoints tried, done safely) are [`phaul_archive`]'s: a dump
//! into a fresh directory under the work directory, offered as a tar
//! archive of regular files with plain names; an uploaded archive, capped
//! in size, is checked whole before anything is written, then extracted
//! only into a fresh directory and restored with CRIU. An archive that
//! cannot be restored is answered 400 with the reason.
//!
//! # Security
//!
//! Whoever drives this page is root on both hosts (it dumps, restores and
//! migrates any process), so:
//!
//! - it binds loopback unless told otherwise (reach it from elsewhere
//!   through `ssh -L`: it speaks plain HTTP), see [`bind`];
//! - every `/api` request needs `Authorization: Bearer TOKEN`, compared in
//!   constant time; the token is random per start ([`random_token`],
//!   printed in the banner as a `#token=` URL fragment, which browsers do
//!   not send to servers) or read from a file ([`read_token_file`], mode
//!   600); the page keeps it in `sessionStorage` and the event stream is
//!   read with `fetch`, so the token is never in a URL the server sees;
//! - same origin only: a request whose `Origin` is not this server's is
//!   refused (403), its `Host` must name this server (against DNS
//!   rebinding), and no CORS header is ever sent; a strict
//!   Content-Security-Policy allows only this server's own scripts;
//! - every input is validated before use: PIDs through
//!   [`phaul_htypes::registry::source_in`] and against this host's process
//!   list (a PID of the other host as a positive decimal and against its
//!   list; its service checks the order again as `phaul migrate` checks its
//!   arguments), container names with [`phaul_htypes::lxc::validate_name`],
//!   modes by name, archive ids as hex; no shell is ever run;
//! - uploads are capped ([`Config::max_upload`]) and archives accept only
//!   regular files with plain names, extracted with `O_EXCL | O_NOFOLLOW`
//!   into a directory made for them.
//!
//! # Layout
//! - [`server`]: [`Config`], [`App`] (the router and the graceful stop),
//!   [`bind`].
//! - [`guard`]: the login token and the same-origin check every request
//!   passes.
//! - [`api`]: the `/api` handlers and their JSON errors.
//! - [`migrations`]: migrations both ways and their live state.
//! - [`remote`]: the other host's process list over the link.
//! - [`error`]: [`Error`], this crate's one error type.
//! - `static/`: the page (HTML, CSS, vanilla JS), embedded in the library.

pub mod api;
pub mod error;
pub mod guard;
mod memory;
pub mod migrations;
pub mod remote;
pub mod server;

pub use error::{Error, Result};
pub use guard::{random_token, read_token_file};
pub use server::{App, Config, bind};

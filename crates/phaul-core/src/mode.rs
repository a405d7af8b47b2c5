//! The migration modes, and how one is chosen from what the two hosts can do.
//!
//! A live migration moves memory in one of a few ways, and which ways are
//! possible depends on two kernel features that CRIU's `FEATURE_CHECK`
//! reports per host: memory tracking (soft-dirty pages, needed to pre-dump
//! and then send only what changed) and lazy pages (userfaultfd, needed to
//! resume the process on the target before its memory has arrived). Both
//! hosts take part in either scheme, so a mode is possible only when both
//! have what it needs. [`choose`] turns the mode asked for and the two
//! hosts' [`HostCaps`] into a [`ModeChoice`] that keeps a human reason, so
//! a report can say *why* a migration ran the way it did.

use std::fmt;
use std::str::FromStr;

use phaul_htypes::{Caps, DumpBy, RestoreBy};

use crate::error::{Error, Result};

/// How memory moves from the source to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Pick the best mode both hosts support: post-copy, else pre-copy,
    /// else stop-copy (see [`choose`]).
    Auto,
    /// Freeze, then stream the final dump through CRIU's page server, then
    /// restore. Downtime grows with the whole memory size; needs nothing
    /// from the kernel beyond what a dump needs.
    StopCopy,
    /// Lazy pages: the final dump leaves memory behind, the target resumes
    /// at once and pulls pages on fault (userfaultfd) while the rest
    /// follows in the background. Shortest downtime; the process depends on
    /// the source until the last page has arrived.
    PostCopy,
    /// Iterative pre-dumps while the process runs, each sending only the
    /// pages dirtied since the previous one (soft-dirty tracking), then a
    /// small final dump.
    PreCopy,
    /// Pre-copy; if the pre-dumps converge, a stop-copy-style final dump,
    /// and if they do not, post-copy for the final phase.
    Hybrid,
    /// Cold migration without memory: stop on the source, start afresh on
    /// the target.
    Restart,
}

impl Mode {
    /// Every mode, in the order the documentation lists them.
    pub const ALL: [Mode; 6] = [
        Mode::Auto,
        Mode::StopCopy,
        Mode::PostCopy,
        Mode::PreCopy,
        Mode::Hybrid,
        Mode::Restart,
    ];

    /// The mode's name, as [`FromStr`] accepts it and serde writes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::StopCopy => "stop-copy",
            Mode::PostCopy => "post-copy",
            Mode::PreCopy => "pre-copy",
            Mode::Hybrid => "hybrid",
            Mode::Restart => "restart",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = Error;

    /// Parses one of the names of [`Mode::as_str`], exactly.
    fn from_str(s: &str) -> Result<Self> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| Error::UnknownMode(s.to_owned()))
    }
}

/// What CRIU's `FEATURE_CHECK` said on one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct HostCaps {
    /// Memory change tracking (soft-dirty pages, CRIU's `mem_track`):
    /// needed for pre-dumps.
    pub mem_track: bool,
    /// Lazy pages (userfaultfd, CRIU's `lazy_pages`): needed for post-copy.
    pub lazy_pages: bool,
    /// CRIU can lock a tree's network with nftables, in process
    /// (`criu check --feature network_lock_nftables`): cheaper than
    /// iptables, and used when both hosts can.
    #[serde(default)]
    pub nftables_lock: bool,
}

impl From<criu_rpc::Features> for HostCaps {
    fn from(f: criu_rpc::Features) -> Self {
        Self {
            mem_track: f.mem_track,
            lazy_pages: f.lazy_pages,
            // Not in CRIU's FEATURE_CHECK: the real CRIU asks its binary.
            nftables_lock: false,
        }
    }
}

/// The mode a migration will use, the mode that was asked for, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModeChoice {
    /// The mode to use; never [`Mode::Auto`].
    pub mode: Mode,
    /// The mode that was asked for.
    pub requested: Mode,
    /// One human sentence saying why `mode` was chosen.
    pub reason: String,
}

/// Decides the mode of a migration from the mode asked for and what each
/// host supports.
///
/// [`Mode::Auto`] takes hybrid when both hosts have memory tracking and
/// lazy pages, else post-copy when both have lazy pages (the shortest
/// downtime), else pre-copy when both have memory tracking, else
/// stop-copy. [`Mode::PreCopy`] needs memory tracking on both hosts,
/// [`Mode::PostCopy`] lazy pages on both, [`Mode::Hybrid`] both features on
/// both; [`Mode::StopCopy`] and [`Mode::Restart`] are always possible.
///
/// When the mode asked for is not possible, `fallback` decides: without it
/// the answer is [`Error::UnsupportedMode`] naming the missing feature and
/// the host(s) lacking it; with it, the mode [`Mode::Auto`] would pick, with
/// a reason that starts by saying what was not possible.
pub fn choose(
    requested: Mode,
    source: HostCaps,
    target: HostCaps,
    fallback: bool,
) -> Result<ModeChoice> {
    plan(requested, fallback, source, target, KindCaps::any())
}

/// A kind's name and what it can do ([`Caps`], as the htype says): [`plan`]
/// weighs it beside the hosts' features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindCaps {
    /// The kind's name, for reasons (`"runc"`).
    pub name: &'static str,
    /// What it can do.
    pub caps: Caps,
}

impl KindCaps {
    /// A kind with no limits of its own: what the hosts allow decides
    /// (see [`choose`]).
    pub const fn any() -> Self {
        Self {
            name: "any",
            caps: Caps {
                restart: true,
                ..Caps::PLAIN
            },
        }
    }

    /// The kind of `htype`.
    pub fn of(htype: &dyn phaul_htypes::Htype) -> Self {
        Self {
            name: htype.kind(),
            caps: htype.caps(),
        }
    }
}

/// Why a feature cannot be used: the kind (whatever the hosts have), or
/// the hosts lacking it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Blocked {
    Kind(String),
    Hosts(&'static str),
}

impl Blocked {
    fn of(
        feature: Feature,
        source: HostCaps,
        target: HostCaps,
        kind: Option<String>,
    ) -> Option<Self> {
        kind.map(Blocked::Kind)
            .or_else(|| lacking(feature, source, target).map(Blocked::Hosts))
    }

    /// For an error: what the mode needs.
    fn need(&self, f: Feature) -> String {
        match self {
            Blocked::Kind(why) => why.clone(),
            Blocked::Hosts(hosts) => format!("{} on {hosts}", f.long),
        }
    }

    /// For a reason: why the feature is out.
    fn why(&self, f: Feature) -> String {
        match self {
            Blocked::Kind(why) => why.clone(),
            Blocked::Hosts(hosts) => format!("{} {} missing on {hosts}", f.short, f.is),
        }
    }
}

/// The features a migration can use, and why not where it cannot.
struct Limits {
    mem: Option<Blocked>,
    lazy: Option<Blocked>,
}

impl Limits {
    fn new(source: HostCaps, target: HostCaps, kind: KindCaps) -> Self {
        let caps = kind.caps;
        // A manager that dumps its kind itself never pre-dumps here, and
        // post-copies only when the kind says it can.
        let own = (caps.dump_by == DumpBy::Manager).then(|| {
            format!(
                "the {} kind makes its own dump (its manager runs CRIU), without pre-dumps",
                kind.name
            )
        });
        let mem = own.clone().or_else(|| {
            (!caps.pre_dump).then(|| format!("the {} kind cannot be pre-dumped", kind.name))
        });
        let lazy = (!caps.lazy_restore).then(|| match (&own, caps.restore_by) {
            (Some(own), _) => own.clone(),
            (None, RestoreBy::Manager) => format!(
                "the {} kind cannot be restored lazily (its manager restores it)",
                kind.name
            ),
            (None, RestoreBy::Criu) => format!("the {} kind cannot be restored lazily", kind.name),
        });
        Self {
            mem: Blocked::of(MEM_TRACK, source, target, mem),
            lazy: Blocked::of(LAZY_PAGES, source, target, lazy),
        }
    }

    /// What `mode` needs that it cannot have, in words, or `None`.
    fn missing_for(&self, mode: Mode) -> Option<String> {
        let parts: Vec<String> = match mode {
            Mode::PreCopy => vec![self.mem.as_ref().map(|b| b.need(MEM_TRACK))],
            Mode::PostCopy => vec![self.lazy.as_ref().map(|b| b.need(LAZY_PAGES))],
            Mode::Hybrid => vec![
                self.mem.as_ref().map(|b| b.need(MEM_TRACK)),
                self.lazy.as_ref().map(|b| b.need(LAZY_PAGES)),
            ],
            Mode::Auto | Mode::StopCopy | Mode::Restart => Vec::new(),
        }
        .into_iter()
        .flatten()
        .collect();
        let mut parts = parts;
        parts.dedup();
        (!parts.is_empty()).then(|| parts.join(", and "))
    }

    /// The [`Mode::Auto`] rules: hybrid where it can be had (it decides
    /// between pre-copy and post-copy from the tree's measured dirty rate,
    /// which a plan made before the migration cannot know), else the mode
    /// with the shortest downtime that can be had, and a sentence saying why, blaming what really is the
    /// cause (the kind or the host that lacks a feature).
    fn best(&self) -> (Mode, String) {
        match (&self.lazy, &self.mem) {
            (None, None) => (
                Mode::Hybrid,
                format!(
                    "both hosts support {} and {}: hybrid pre-copies while the process \
                     runs, as long as that shrinks what is left (it measures the dirty rate \
                     first and skips pre-copy when no pre-dump could keep up), then \
                     post-copies the rest, or ends with a short final dump if pre-copy \
                     converged",
                    MEM_TRACK.short, LAZY_PAGES.short
                ),
            ),
            (None, Some(mem)) => (
                Mode::PostCopy,
                format!(
                    "both hosts support {}: post-copy resumes the process on the target \
                     at once, the shortest downtime; {}, so pre-copy is not possible",
                    LAZY_PAGES.short,
                    mem.why(MEM_TRACK)
                ),
            ),
            (Some(lazy), None) => (
                Mode::PreCopy,
                format!(
                    "both hosts support {}: pre-copy sends memory while the process runs, so \
                     the final dump is small; {}, so post-copy is not possible",
                    MEM_TRACK.short,
                    lazy.why(LAZY_PAGES)
                ),
            ),
            (Some(lazy), Some(mem)) if lazy == mem => (Mode::StopCopy, lazy.why(LAZY_PAGES)),
            (Some(lazy), Some(mem)) => (
                Mode::StopCopy,
                format!(
                    "{}, so post-copy is not possible; {}, so pre-copy is not possible \
                     either: stop-copy copies all memory while the process is frozen",
                    lazy.why(LAZY_PAGES),
                    mem.why(MEM_TRACK)
                ),
            ),
        }
    }
}

/// The plan of a migration: the mode to use and why, computed once, from
/// the mode asked for, both hosts' features and what the kind can do.
/// Pure: the same inputs always give the same plan, and both hosts obey it.
///
/// [`Mode::Auto`] never fails: it takes hybrid when it can be had, else
/// post-copy (the shortest downtime), else pre-copy, else stop-copy, and its reason blames
/// the kind or the host that rules the others out. A mode asked for that
/// cannot be had is an [`Error::UnsupportedMode`] naming why, or with
/// `fallback` the mode `auto` would pick, with a reason saying so.
pub fn plan(
    requested: Mode,
    fallback: bool,
    source: HostCaps,
    target: HostCaps,
    kind: KindCaps,
) -> Result<ModeChoice> {
    let limits = Limits::new(source, target, kind);
    let (mode, reason) = match requested {
        Mode::Auto => limits.best(),
        Mode::StopCopy => (
            Mode::StopCopy,
            "stop-copy was asked for: the process stays frozen while all its memory is \
             copied, and no kernel feature beyond what a dump needs is required"
                .to_owned(),
        ),
        Mode::Restart if !kind.caps.restart => {
            let missing = format!(
                "a restart (cold) handler for the {} kind; only container kinds have one",
                kind.name
            );
            if !fallback {
                return Err(Error::UnsupportedMode {
                    mode: requested,
                    missing,
                });
            }
            let (mode, why) = limits.best();
            (
                mode,
                format!(
                    "restart is not possible here (it needs {missing}): falling back to {mode}; {why}"
                ),
            )
        }
        Mode::Restart => (
            Mode::Restart,
            "restart was asked for: the process is stopped on the source and started \
             afresh on the target, without its memory"
                .to_owned(),
        ),
        Mode::PreCopy | Mode::PostCopy | Mode::Hybrid => match limits.missing_for(requested) {
            None => (requested, supported_reason(requested)),
            Some(missing) if !fallback => {
                return Err(Error::UnsupportedMode {
                    mode: requested,
                    missing,
                });
            }
            Some(missing) => {
                let (mode, why) = limits.best();
                (
                    mode,
                    format!(
                        "{requested} is not possible here (it needs {missing}): \
                         falling back to {mode}; {why}"
                    ),
                )
            }
        },
    };
    Ok(ModeChoice {
        mode,
        requested,
        reason,
    })
}

/// The names of a feature: short for reasons, long (with CRIU's name) for
/// errors, where the reader may need to look it up.
#[derive(Clone, Copy)]
struct Feature {
    short: &'static str,
    /// "is" or "are", to agree with `short`.
    is: &'static str,
    long: &'static str,
    has: fn(HostCaps) -> bool,
}

const MEM_TRACK: Feature = Feature {
    short: "memory tracking (soft-dirty)",
    is: "is",
    long: "memory tracking (soft-dirty pages, CRIU's mem_track)",
    has: |c| c.mem_track,
};

const LAZY_PAGES: Feature = Feature {
    short: "lazy pages (userfaultfd)",
    is: "are",
    long: "lazy pages (userfaultfd, CRIU's lazy_pages)",
    has: |c| c.lazy_pages,
};

/// The host(s) lacking `feature`, as words, or `None` when both have it.
fn lacking(feature: Feature, source: HostCaps, target: HostCaps) -> Option<&'static str> {
    match ((feature.has)(source), (feature.has)(target)) {
        (true, true) => None,
        (false, true) => Some("the source"),
        (true, false) => Some("the target"),
        (false, false) => Some("the source and the target"),
    }
}

fn supported_reason(mode: Mode) -> String {
    match mode {
        Mode::PreCopy => format!(
            "pre-copy was asked for and {} {} available on both hosts",
            MEM_TRACK.short, MEM_TRACK.is
        ),
        Mode::PostCopy => format!(
            "post-copy was asked for and {} {} available on both hosts",
            LAZY_PAGES.short, LAZY_PAGES.is
        ),
        _ => format!(
            "{mode} was asked for and both hosts have {} and {}",
            MEM_TRACK.short, LAZY_PAGES.short
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: HostCaps = HostCaps {
        mem_track: false,
        lazy_pages: false,
        nftables_lock: false,
    };
    const TRACK: HostCaps = HostCaps {
        mem_track: true,
        lazy_pages: false,
        nftables_lock: false,
    };
    const LAZY: HostCaps = HostCaps {
        mem_track: false,
        lazy_pages: true,
        nftables_lock: false,
    };
    const BOTH: HostCaps = HostCaps {
        mem_track: true,
        lazy_pages: true,
        nftables_lock: false,
    };

    fn pick(requested: Mode, source: HostCaps, target: HostCaps, fallback: bool) -> ModeChoice {
        match choose(requested, source, target, fallback) {
            Ok(c) => c,
            Err(e) => panic!("{requested} on {source:?} -> {target:?}: {e}"),
        }
    }

    fn refused(requested: Mode, source: HostCaps, target: HostCaps) -> (Mode, String) {
        match choose(requested, source, target, false) {
            Err(Error::UnsupportedMode { mode, missing }) => (mode, missing),
            other => panic!("expected UnsupportedMode, got {other:?}"),
        }
    }

    #[test]
    fn names_round_trip_through_display_from_str_and_serde() {
        for m in Mode::ALL {
            let name = m.to_string();
            assert_eq!(name.parse::<Mode>().ok(), Some(m));
            assert_eq!(
                serde_json::to_value(m).ok(),
                Some(serde_json::Value::String(name))
            );
        }
        assert_eq!(Mode::StopCopy.to_string(), "stop-copy");
    }

    #[test]
    fn unknown_name_is_unknown_mode() {
        for bad in ["", "precopy", "Pre-Copy", "live", " auto"] {
            match bad.parse::<Mode>() {
                Err(Error::UnknownMode(s)) => assert_eq!(s, bad),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn host_caps_from_criu_features() {
        let f = criu_rpc::Features {
            mem_track: true,
            lazy_pages: false,
            pidfd_store: true,
        };
        assert_eq!(HostCaps::from(f), TRACK);
    }

    #[test]
    fn auto_takes_hybrid_where_both_hosts_track_memory_and_have_lazy_pages() {
        let c = pick(Mode::Auto, BOTH, BOTH, false);
        assert_eq!((c.mode, c.requested), (Mode::Hybrid, Mode::Auto));
        assert!(
            c.reason.contains("measures the dirty rate first"),
            "{}",
            c.reason
        );
    }

    #[test]
    fn auto_prefers_post_copy_when_only_lazy_pages_are_shared() {
        let c = pick(Mode::Auto, LAZY, BOTH, false);
        assert_eq!(c.mode, Mode::PostCopy);
        assert!(
            c.reason
                .contains("memory tracking (soft-dirty) is missing on the source, so pre-copy"),
            "{}",
            c.reason
        );
    }

    #[test]
    fn auto_takes_pre_copy_without_lazy_pages() {
        let c = pick(Mode::Auto, BOTH, TRACK, false);
        assert_eq!(c.mode, Mode::PreCopy);
        assert!(
            c.reason
                .contains("lazy pages (userfaultfd) are missing on the target"),
            "{}",
            c.reason
        );
    }

    #[test]
    fn auto_takes_stop_copy_when_nothing_is_shared() {
        let c = pick(Mode::Auto, TRACK, LAZY, false);
        assert_eq!(c.mode, Mode::StopCopy);
        assert!(c.reason.contains("missing on the target"), "{}", c.reason);
        assert!(
            c.reason
                .contains("missing on the source, so post-copy is not possible"),
            "{}",
            c.reason
        );
        assert_eq!(pick(Mode::Auto, NONE, NONE, false).mode, Mode::StopCopy);
    }

    #[test]
    fn stop_copy_and_restart_are_always_possible() {
        for m in [Mode::StopCopy, Mode::Restart] {
            for fallback in [false, true] {
                let c = pick(m, NONE, NONE, fallback);
                assert_eq!((c.mode, c.requested), (m, m));
                assert!(c.reason.starts_with(m.as_str()), "{}", c.reason);
            }
        }
    }

    #[test]
    fn supported_modes_are_used_as_asked() {
        assert_eq!(pick(Mode::PreCopy, TRACK, BOTH, false).mode, Mode::PreCopy);
        assert_eq!(pick(Mode::PostCopy, LAZY, LAZY, false).mode, Mode::PostCopy);
        let c = pick(Mode::Hybrid, BOTH, BOTH, false);
        assert_eq!((c.mode, c.requested), (Mode::Hybrid, Mode::Hybrid));
        assert!(c.reason.starts_with("hybrid was asked for"), "{}", c.reason);
    }

    #[test]
    fn pre_copy_without_tracking_is_refused_naming_the_hosts() {
        let (mode, missing) = refused(Mode::PreCopy, NONE, LAZY);
        assert_eq!(mode, Mode::PreCopy);
        assert_eq!(
            missing,
            "memory tracking (soft-dirty pages, CRIU's mem_track) on the source and the target"
        );
        let (_, missing) = refused(Mode::PreCopy, BOTH, LAZY);
        assert!(missing.ends_with("mem_track) on the target"), "{missing}");
    }

    #[test]
    fn post_copy_without_lazy_pages_is_refused() {
        let (mode, missing) = refused(Mode::PostCopy, TRACK, BOTH);
        assert_eq!(mode, Mode::PostCopy);
        assert_eq!(
            missing,
            "lazy pages (userfaultfd, CRIU's lazy_pages) on the source"
        );
    }

    #[test]
    fn hybrid_names_every_missing_feature() {
        let (_, missing) = refused(Mode::Hybrid, LAZY, TRACK);
        assert_eq!(
            missing,
            "memory tracking (soft-dirty pages, CRIU's mem_track) on the source, and \
             lazy pages (userfaultfd, CRIU's lazy_pages) on the target"
        );
        let (_, missing) = refused(Mode::Hybrid, BOTH, TRACK);
        assert!(!missing.contains("mem_track"), "{missing}");
        let e = Error::UnsupportedMode {
            mode: Mode::Hybrid,
            missing,
        };
        assert!(e.to_string().starts_with("hybrid needs lazy pages"), "{e}");
    }

    #[test]
    fn fallback_takes_what_auto_would() {
        let c = pick(Mode::PreCopy, LAZY, LAZY, true);
        assert_eq!((c.mode, c.requested), (Mode::PostCopy, Mode::PreCopy));
        assert!(
            c.reason.starts_with("pre-copy is not possible here (")
                && c.reason.contains(
                    "): falling back to post-copy; both hosts support lazy pages (userfaultfd)"
                ),
            "{}",
            c.reason
        );

        let c = pick(Mode::PostCopy, TRACK, TRACK, true);
        assert_eq!(c.mode, Mode::PreCopy);
        assert!(
            c.reason
                .starts_with("post-copy is not possible here (it needs lazy pages"),
            "{}",
            c.reason
        );

        assert_eq!(pick(Mode::Hybrid, TRACK, BOTH, true).mode, Mode::PreCopy);
        assert_eq!(pick(Mode::Hybrid, LAZY, BOTH, true).mode, Mode::PostCopy);
        let c = pick(Mode::Hybrid, NONE, BOTH, true);
        assert_eq!((c.mode, c.requested), (Mode::StopCopy, Mode::Hybrid));
        assert!(
            c.reason.contains("falling back to stop-copy"),
            "{}",
            c.reason
        );
    }

    const LXC: KindCaps = KindCaps {
        name: "lxc",
        caps: Caps {
            lazy_restore: false,
            restore_by: RestoreBy::Manager,
            restart: true,
            ..Caps::PLAIN
        },
    };
    const RUNC: KindCaps = KindCaps {
        name: "runc",
        caps: Caps {
            pre_dump: false,
            lazy_restore: false,
            dump_by: DumpBy::Manager,
            restore_by: RestoreBy::Manager,
            restart: false,
        },
    };

    #[test]
    fn restart_needs_a_kind_that_can_restart() {
        let pid = KindCaps {
            name: "pid",
            caps: Caps::PLAIN,
        };
        let e = plan(Mode::Restart, false, NONE, NONE, pid).unwrap_err();
        assert!(e.to_string().contains("restart (cold) handler"), "{e}");
        let c = plan(Mode::Restart, true, NONE, NONE, RUNC).unwrap();
        assert_eq!((c.mode, c.requested), (Mode::StopCopy, Mode::Restart));
        assert_eq!(
            plan(Mode::Restart, false, NONE, NONE, LXC).unwrap().mode,
            Mode::Restart
        );
    }

    #[test]
    fn a_kind_without_lazy_restore_says_so_and_not_that_the_hosts_lack_lazy_pages() {
        let lazy_only = HostCaps {
            mem_track: false,
            lazy_pages: true,
            nftables_lock: false,
        };
        let c = plan(Mode::Auto, false, lazy_only, lazy_only, LXC).unwrap();
        assert_eq!(c.mode, Mode::StopCopy);
        assert!(
            c.reason
                .starts_with("the lxc kind cannot be restored lazily"),
            "{}",
            c.reason
        );
        assert!(
            c.reason.contains("missing on the source and the target"),
            "{}",
            c.reason
        );
        assert!(
            !c.reason.contains("lazy pages (userfaultfd)"),
            "{}",
            c.reason
        );
        let both = HostCaps {
            mem_track: true,
            lazy_pages: true,
            nftables_lock: false,
        };
        assert_eq!(
            plan(Mode::Auto, false, both, both, LXC).unwrap().mode,
            Mode::PreCopy
        );
        let e = plan(Mode::PostCopy, false, both, both, LXC).unwrap_err();
        assert!(
            e.to_string()
                .contains("the lxc kind cannot be restored lazily"),
            "{e}"
        );
        let c = plan(Mode::PostCopy, true, both, both, RUNC).unwrap();
        assert_eq!((c.mode, c.requested), (Mode::StopCopy, Mode::PostCopy));
        assert!(
            c.reason.contains("falling back to stop-copy"),
            "{}",
            c.reason
        );
        assert!(
            c.reason.contains("the runc kind makes its own dump"),
            "{}",
            c.reason
        );
    }

    /// The review's first fault: `auto` without `--fallback` was refused
    /// for a kind that cannot pre-dump on hosts that track memory but lack
    /// lazy pages (runc on a soft-dirty kernel without userfaultfd).
    #[test]
    fn auto_never_refuses_a_kind_that_cannot_pre_dump() {
        let track_only = HostCaps {
            mem_track: true,
            lazy_pages: false,
            nftables_lock: false,
        };
        let no_pre_dump = KindCaps {
            name: "runc",
            caps: Caps {
                pre_dump: false,
                ..Caps::PLAIN
            },
        };
        let c = plan(Mode::Auto, false, track_only, track_only, no_pre_dump).unwrap();
        assert_eq!(c.mode, Mode::StopCopy);
        let c = plan(Mode::Auto, false, track_only, track_only, RUNC).unwrap();
        assert_eq!(c.mode, Mode::StopCopy);
        assert_eq!(c.reason.matches("the runc kind").count(), 1, "{}", c.reason);
    }

    /// The review's second fault: with `--fallback`, the reason blamed the
    /// source's memory tracking when the kind was the cause.
    #[test]
    fn a_fallback_blames_the_kind_not_the_hosts_memory_tracking() {
        let both = HostCaps {
            mem_track: true,
            lazy_pages: true,
            nftables_lock: false,
        };
        let no_pre_dump = KindCaps {
            name: "vz",
            caps: Caps {
                pre_dump: false,
                lazy_restore: false,
                ..Caps::PLAIN
            },
        };
        let c = plan(Mode::PreCopy, true, both, both, no_pre_dump).unwrap();
        assert_eq!(c.mode, Mode::StopCopy);
        assert!(
            c.reason.contains("the vz kind cannot be pre-dumped"),
            "{}",
            c.reason
        );
        assert!(!c.reason.contains("missing on the source"), "{}", c.reason);
    }

    #[test]
    fn choice_serializes_kebab_names() {
        let c = pick(Mode::Auto, BOTH, TRACK, false);
        let v = serde_json::to_value(&c).ok();
        assert_eq!(
            v.as_ref().and_then(|v| v["mode"].as_str()),
            Some("pre-copy")
        );
        assert_eq!(
            v.as_ref().and_then(|v| v["requested"].as_str()),
            Some("auto")
        );
    }
}

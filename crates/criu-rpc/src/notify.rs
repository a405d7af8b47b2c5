//! CRIU's notifications ("action scripts" sent over RPC).

use std::fmt;

/// The name of a notification, as CRIU sends it in `criu_notify.script`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Script {
    /// Dump starts; the tree still runs.
    PreDump,
    /// All images are written and the tree is frozen (network locked).
    /// Holding the answer keeps it frozen; success kills the tree, failure
    /// resumes it. This is how a migration keeps the source until the target
    /// has restored.
    PostDump,
    /// The tree's own network namespace is about to be locked.
    NetworkLock,
    /// The network is unlocked (after a rollback, or after restore).
    NetworkUnlock,
    /// The client may name external files; the answer can carry
    /// `external` entries ([`crate::Notification::ack_with_externals`]).
    QueryExtFiles,
    /// Restore starts.
    PreRestore,
    /// The root task exists with its namespaces; `pid` is its PID.
    SetupNamespaces,
    /// After `setup-namespaces`.
    PostSetupNamespaces,
    /// The master of an orphaned pty comes with this notification as an fd.
    OrphanPtsMaster,
    /// Everything is restored, tasks not yet resumed; `pid` is the root.
    /// Failure aborts the restore and kills the tasks.
    PostRestore,
    /// Just before the tasks resume.
    PreResume,
    /// The tasks run.
    PostResume,
    /// A page server or lazy-pages server is listening.
    StatusReady,
    /// Image streaming is about to start.
    PreStream,
    /// A name this crate does not know (a newer CRIU).
    Other(String),
}

impl Script {
    /// Maps CRIU's script name.
    pub fn from_name(name: &str) -> Self {
        match name {
            "pre-dump" => Self::PreDump,
            "post-dump" => Self::PostDump,
            "network-lock" => Self::NetworkLock,
            "network-unlock" => Self::NetworkUnlock,
            "query-ext-files" => Self::QueryExtFiles,
            "pre-restore" => Self::PreRestore,
            "setup-namespaces" => Self::SetupNamespaces,
            "post-setup-namespaces" => Self::PostSetupNamespaces,
            "orphan-pts-master" => Self::OrphanPtsMaster,
            "post-restore" => Self::PostRestore,
            "pre-resume" => Self::PreResume,
            "post-resume" => Self::PostResume,
            "status-ready" => Self::StatusReady,
            "pre-stream" => Self::PreStream,
            other => Self::Other(other.to_string()),
        }
    }

    /// CRIU's name for it.
    pub fn name(&self) -> &str {
        match self {
            Self::PreDump => "pre-dump",
            Self::PostDump => "post-dump",
            Self::NetworkLock => "network-lock",
            Self::NetworkUnlock => "network-unlock",
            Self::QueryExtFiles => "query-ext-files",
            Self::PreRestore => "pre-restore",
            Self::SetupNamespaces => "setup-namespaces",
            Self::PostSetupNamespaces => "post-setup-namespaces",
            Self::OrphanPtsMaster => "orphan-pts-master",
            Self::PostRestore => "post-restore",
            Self::PreResume => "pre-resume",
            Self::PostResume => "post-resume",
            Self::StatusReady => "status-ready",
            Self::PreStream => "pre-stream",
            Self::Other(s) => s,
        }
    }
}

impl fmt::Display for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_survive() {
        for n in [
            "pre-dump",
            "post-dump",
            "network-lock",
            "network-unlock",
            "query-ext-files",
            "pre-restore",
            "setup-namespaces",
            "post-setup-namespaces",
            "orphan-pts-master",
            "post-restore",
            "pre-resume",
            "post-resume",
            "status-ready",
            "pre-stream",
        ] {
            let s = Script::from_name(n);
            assert!(!matches!(s, Script::Other(_)), "{n}");
            assert_eq!(s.name(), n);
        }
        assert_eq!(
            Script::from_name("post-migrate"),
            Script::Other("post-migrate".into())
        );
        assert_eq!(Script::from_name("post-migrate").name(), "post-migrate");
    }
}

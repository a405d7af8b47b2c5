//! The kernel's perf context-switch hooks, kept enabled while CRIU runs.
//!
//! CRIU stops every task it infects (dump) or restores at a hardware
//! breakpoint, and ptrace makes each breakpoint a per-task perf event. While
//! no per-task perf event exists on the machine, the kernel's context-switch
//! hooks for perf are off; the first such event turns them on, and turning
//! them on waits for an RCU grace period. Measured on this project's test
//! machine: the first task of every LXC dump took 10–20 ms to stop, inside
//! the freeze, while the others took 0.1 ms; with a per-task event held
//! elsewhere, the first took 0.1 ms too. (The kernel turns the hooks off
//! again about a second after the last such event is closed, so each dump
//! and each restore paid it anew.)
//!
//! [`SchedHooks::hold`] opens one event of its own, a software "dummy"
//! event on this process's main thread that counts nothing, before the
//! freeze, and closes it when dropped. (The main thread, not the calling
//! one: a pool thread may exit while the event is held; the kernel keeps
//! the hooks on for any open event, but the main thread makes that plain.)
//! Where perf events are unavailable (a kernel without them, a seccomp
//! filter) nothing is held and nothing changes.

use std::os::fd::{FromRawFd, OwnedFd};

use tracing::debug;

/// `perf_event_attr` as of its first version (64 bytes,
/// `PERF_ATTR_SIZE_VER0`), the fields this module sets and the ones before
/// them; the kernel takes a shorter struct as that version.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// The bit fields: `disabled` is bit 0, `exclude_kernel` bit 5,
    /// `exclude_hv` bit 6.
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_SW_DUMMY: u64 = 9;
const DISABLED: u64 = 1;
const EXCLUDE_KERNEL: u64 = 1 << 5;
const EXCLUDE_HV: u64 = 1 << 6;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// A held per-task perf event, closed on drop.
#[derive(Debug)]
pub(crate) struct SchedHooks {
    _event: Option<OwnedFd>,
}

impl SchedHooks {
    /// Opens the event; may itself wait for the grace period (milliseconds),
    /// so it runs on the blocking pool, long before any freeze.
    pub(crate) async fn hold() -> Self {
        let event = tokio::task::spawn_blocking(open_dummy)
            .await
            .unwrap_or(None);
        Self { _event: event }
    }

    /// Whether an event is held.
    #[cfg(test)]
    fn held(&self) -> bool {
        self._event.is_some()
    }
}

/// A disabled dummy software event on the main thread, or `None`.
fn open_dummy() -> Option<OwnedFd> {
    let attr = PerfEventAttr {
        kind: PERF_TYPE_SOFTWARE,
        size: u32::try_from(std::mem::size_of::<PerfEventAttr>()).ok()?,
        config: PERF_COUNT_SW_DUMMY,
        flags: DISABLED | EXCLUDE_KERNEL | EXCLUDE_HV,
        ..PerfEventAttr::default()
    };
    let main = libc::pid_t::try_from(std::process::id()).ok()?;
    // SAFETY: perf_event_open reads `attr` (a live, initialized struct of
    // the size it names) and returns a new descriptor or -1; a thread id
    // with cpu -1 means that thread on any CPU, -1 no group.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &raw const attr,
            main,
            -1 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    match libc::c_int::try_from(fd) {
        Ok(fd) if fd >= 0 => {
            // SAFETY: a descriptor perf_event_open just returned, owned here.
            Some(unsafe { OwnedFd::from_raw_fd(fd) })
        }
        _ => {
            debug!(error = %std::io::Error::last_os_error(), "no perf event to keep the context-switch hooks on");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attr_is_the_first_version() {
        assert_eq!(std::mem::size_of::<PerfEventAttr>(), 64);
    }

    #[tokio::test]
    async fn root_holds_an_event() {
        if !phaul_testkit::require_root("root_holds_an_event") {
            return;
        }
        assert!(SchedHooks::hold().await.held());
    }
}

//! The plan both sides obey: computed once on the source, sent in `Begin`
//! as protocol enums, checked by the target against its own htype and then
//! followed, never worked out again.
//!
//! [`crate::mode::plan`] chooses the mode; [`Plan::new`] adds who restores
//! the tree and how its files travel. The target reads it back with
//! [`Plan::from_wire`], refuses one its own kind cannot carry out
//! ([`Plan::check_kind`]), and holds every later request to it
//! ([`Plan::check_restore`]).

use phaul_htypes::{Caps, RestoreBy};
use phaul_transport::proto;

use crate::error::{Error, Result};
use crate::mode::Mode;

/// Who brings the tree back on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restorer {
    /// The service, with CRIU, holding the tree until the commit.
    Criu,
    /// The kind's manager, so that it knows the tree.
    Manager,
    /// Nobody restores: restart mode starts the kind anew.
    ColdStart,
}

/// How the kind's file system travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Files {
    /// The kind has none.
    None,
    /// phaul's own sync.
    Native,
    /// rsync over the link.
    Rsync,
    /// Both hosts see the same storage.
    Shared,
}

/// What both sides do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The mode; never [`Mode::Auto`].
    pub mode: Mode,
    /// Who restores.
    pub restorer: Restorer,
    /// How the files travel.
    pub files: Files,
}

impl Plan {
    /// The plan for `mode` (already chosen) of a kind that can do `caps`.
    /// Pure.
    pub fn new(mode: Mode, caps: Caps, files: Files) -> Self {
        let restorer = match (mode, caps.restore_by) {
            (Mode::Restart, _) => Restorer::ColdStart,
            (_, RestoreBy::Manager) => Restorer::Manager,
            (_, RestoreBy::Criu) => Restorer::Criu,
        };
        Self {
            mode,
            restorer,
            files,
        }
    }

    /// Into `Begin`.
    pub fn to_wire(self, begin: &mut proto::Begin) {
        begin.set_mode(match self.mode {
            Mode::StopCopy => proto::Mode::StopCopy,
            Mode::PreCopy => proto::Mode::PreCopy,
            Mode::PostCopy => proto::Mode::PostCopy,
            Mode::Hybrid => proto::Mode::Hybrid,
            Mode::Restart => proto::Mode::Restart,
            Mode::Auto => proto::Mode::Invalid,
        });
        begin.set_restore_by(match self.restorer {
            Restorer::Criu => proto::RestoreBy::Criu,
            Restorer::Manager => proto::RestoreBy::Manager,
            Restorer::ColdStart => proto::RestoreBy::ColdStart,
        });
        begin.set_fs_driver(match self.files {
            Files::None => proto::FsDriver::NoFs,
            Files::Native => proto::FsDriver::Native,
            Files::Rsync => proto::FsDriver::Rsync,
            Files::Shared => proto::FsDriver::Shared,
        });
    }

    /// Out of `Begin`; 0 (invalid) or an unknown value in any field is a
    /// protocol error.
    pub fn from_wire(begin: &proto::Begin) -> Result<Self> {
        let bad = |field: &str, v: i32| Error::Protocol(format!("Begin: invalid {field} {v}"));
        let mode = match proto::Mode::try_from(begin.mode) {
            Ok(proto::Mode::StopCopy) => Mode::StopCopy,
            Ok(proto::Mode::PreCopy) => Mode::PreCopy,
            Ok(proto::Mode::PostCopy) => Mode::PostCopy,
            Ok(proto::Mode::Hybrid) => Mode::Hybrid,
            Ok(proto::Mode::Restart) => Mode::Restart,
            Ok(proto::Mode::Invalid) | Err(_) => return Err(bad("mode", begin.mode)),
        };
        let restorer = match proto::RestoreBy::try_from(begin.restore_by) {
            Ok(proto::RestoreBy::Criu) => Restorer::Criu,
            Ok(proto::RestoreBy::Manager) => Restorer::Manager,
            Ok(proto::RestoreBy::ColdStart) => Restorer::ColdStart,
            Ok(proto::RestoreBy::Invalid) | Err(_) => {
                return Err(bad("restorer", begin.restore_by));
            }
        };
        let files = match proto::FsDriver::try_from(begin.fs_driver) {
            Ok(proto::FsDriver::NoFs) => Files::None,
            Ok(proto::FsDriver::Native) => Files::Native,
            Ok(proto::FsDriver::Rsync) => Files::Rsync,
            Ok(proto::FsDriver::Shared) => Files::Shared,
            Ok(proto::FsDriver::Invalid) | Err(_) => {
                return Err(bad("file-system driver", begin.fs_driver));
            }
        };
        Ok(Self {
            mode,
            restorer,
            files,
        })
    }

    /// Target: whether this host's idea of the kind (`caps`, `has_fs`)
    /// agrees with the plan; two builds that disagree refuse rather than
    /// guess.
    pub fn check_kind(&self, kind: &str, caps: Caps, has_fs: bool) -> Result<()> {
        let expected = Plan::new(self.mode, caps, self.files);
        let why = if expected.restorer != self.restorer {
            Some(format!(
                "the plan has the tree restored by {:?}, but here the {kind} kind is restored by \
                 {:?}",
                self.restorer, expected.restorer
            ))
        } else if self.mode == Mode::Restart && !caps.restart {
            Some(format!("the {kind} kind cannot be restarted here"))
        } else if matches!(self.mode, Mode::PostCopy | Mode::Hybrid) && !caps.lazy_restore {
            Some(format!("the {kind} kind cannot be restored lazily here"))
        } else if (self.files != Files::None) != has_fs {
            Some(format!(
                "the plan's file system ({:?}) does not fit the {kind} kind here",
                self.files
            ))
        } else {
            None
        };
        why.map_or(Ok(()), |w| Err(Error::Protocol(w)))
    }

    /// Target: whether a restore (`lazy` or not) is the one the plan
    /// allows.
    pub fn check_restore(&self, lazy: bool) -> Result<()> {
        let allowed = match self.mode {
            Mode::PostCopy => lazy,
            // Hybrid ends lazily unless its pre-dumps converged.
            Mode::Hybrid => true,
            _ => !lazy,
        };
        if allowed {
            Ok(())
        } else {
            Err(Error::Protocol(format!(
                "a {} restore does not belong to a {} migration",
                if lazy { "lazy" } else { "full" },
                self.mode
            )))
        }
    }

    /// Target: the pre-dump that the images of restore `iteration` build
    /// on, which the target links as their `parent`: hybrid's lazy dump
    /// after pre-dumps. (A final dump after pre-dumps goes through a page
    /// server started with its parent, which links it itself; the image
    /// batch carries no symlink.)
    pub fn restore_parent(&self, iteration: u32, lazy: bool) -> Option<u32> {
        (self.mode == Mode::Hybrid && lazy)
            .then(|| iteration.checked_sub(1))
            .flatten()
    }

    /// Whether both sides keep the images in RAM (see `ramdir`): a
    /// post-copy's hold no memory pages, only the tree's description.
    /// Every other mode's target receives pages into them.
    pub fn images_in_memory(&self) -> bool {
        self.mode == Mode::PostCopy
    }

    /// The name of the file-system driver the target serves, if any.
    pub fn fs_driver(&self) -> Option<&'static str> {
        match self.files {
            Files::Native => Some("native"),
            Files::Rsync => Some("rsync"),
            Files::None | Files::Shared => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phaul_htypes::DumpBy;

    const LXC: Caps = Caps {
        lazy_restore: false,
        restore_by: RestoreBy::Manager,
        restart: true,
        ..Caps::PLAIN
    };

    fn round_trip(p: Plan) -> Plan {
        let mut b = proto::Begin::default();
        p.to_wire(&mut b);
        Plan::from_wire(&b).unwrap()
    }

    #[test]
    fn only_hybrids_lazy_restore_after_pre_dumps_has_a_parent_to_link() {
        let plan = |mode| Plan::new(mode, Caps::PLAIN, Files::None);
        assert_eq!(plan(Mode::Hybrid).restore_parent(3, true), Some(2));
        assert_eq!(plan(Mode::Hybrid).restore_parent(0, true), None);
        assert_eq!(plan(Mode::Hybrid).restore_parent(3, false), None);
        assert_eq!(plan(Mode::PreCopy).restore_parent(3, false), None);
        assert_eq!(plan(Mode::PostCopy).restore_parent(0, true), None);
    }

    #[test]
    fn a_plan_survives_the_wire() {
        for mode in [
            Mode::StopCopy,
            Mode::PreCopy,
            Mode::PostCopy,
            Mode::Hybrid,
            Mode::Restart,
        ] {
            for files in [Files::None, Files::Native, Files::Rsync, Files::Shared] {
                let p = Plan::new(mode, LXC, files);
                assert_eq!(round_trip(p), p);
            }
        }
    }

    #[test]
    fn who_restores_follows_the_mode_and_the_kind() {
        assert_eq!(
            Plan::new(Mode::PostCopy, Caps::PLAIN, Files::None).restorer,
            Restorer::Criu
        );
        assert_eq!(
            Plan::new(Mode::StopCopy, LXC, Files::Native).restorer,
            Restorer::Manager
        );
        assert_eq!(
            Plan::new(Mode::Restart, LXC, Files::Native).restorer,
            Restorer::ColdStart
        );
    }

    #[test]
    fn an_invalid_or_unknown_field_is_refused() {
        let mut b = proto::Begin::default();
        Plan::new(Mode::StopCopy, Caps::PLAIN, Files::None).to_wire(&mut b);
        for field in 0..3 {
            let mut bad = b.clone();
            match field {
                0 => bad.mode = 0,
                1 => bad.restore_by = 99,
                _ => bad.fs_driver = 0,
            }
            let e = Plan::from_wire(&bad).unwrap_err().to_string();
            assert!(e.contains("invalid"), "{e}");
        }
    }

    #[test]
    fn the_target_refuses_a_plan_its_kind_cannot_carry_out() {
        // The source thought CRIU restores; here the manager does.
        let p = Plan::new(Mode::StopCopy, Caps::PLAIN, Files::Native);
        let e = p.check_kind("lxc", LXC, true).unwrap_err().to_string();
        assert!(e.contains("restored by"), "{e}");
        // Lazily, where the kind cannot be.
        let p = Plan {
            mode: Mode::PostCopy,
            restorer: Restorer::Manager,
            files: Files::Native,
        };
        assert!(p.check_kind("lxc", LXC, true).is_err());
        // A file system for a kind without one.
        let p = Plan::new(Mode::StopCopy, Caps::PLAIN, Files::Native);
        assert!(p.check_kind("pid", Caps::PLAIN, false).is_err());
        // Restart of a kind that cannot.
        let runc = Caps {
            dump_by: DumpBy::Manager,
            ..Caps::PLAIN
        };
        let p = Plan::new(Mode::Restart, runc, Files::Native);
        assert!(p.check_kind("runc", runc, true).is_err());
        // And the plan it can.
        let p = Plan::new(Mode::StopCopy, LXC, Files::Native);
        p.check_kind("lxc", LXC, true).unwrap();
    }

    #[test]
    fn restores_out_of_plan_are_refused() {
        let post = Plan::new(Mode::PostCopy, Caps::PLAIN, Files::None);
        assert!(post.check_restore(true).is_ok());
        assert!(post.check_restore(false).is_err());
        let stop = Plan::new(Mode::StopCopy, Caps::PLAIN, Files::None);
        assert!(stop.check_restore(true).is_err());
        let hybrid = Plan::new(Mode::Hybrid, Caps::PLAIN, Files::None);
        assert!(hybrid.check_restore(true).is_ok() && hybrid.check_restore(false).is_ok());
    }
}

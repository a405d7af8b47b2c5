//! CRIU's version, as VERSION answers it.

use std::fmt;

use crate::proto::CriuVersion;

/// A CRIU version: `major.minor.sublevel`, plus the git id of a development
/// build. Ordered by number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version {
    /// Major number (4 for 4.1.1).
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Sublevel (patch) number, 0 when CRIU does not send one.
    pub sublevel: u32,
    /// The git id of a development build, if any.
    pub gitid: Option<String>,
}

impl Version {
    /// The oldest CRIU this crate works with: 4.0 (3.x lacks options it
    /// sends, and Debian 12's 3.17 fails on recent kernels).
    pub const MINIMUM: Version = Version::new(4, 0, 0);

    /// A version from its numbers.
    pub const fn new(major: u32, minor: u32, sublevel: u32) -> Self {
        Self {
            major,
            minor,
            sublevel,
            gitid: None,
        }
    }

    /// The single number runc, go-criu and libcriu compare:
    /// `major * 10000 + minor * 100 + sublevel`.
    pub fn as_number(&self) -> u32 {
        self.major * 10_000 + self.minor * 100 + self.sublevel
    }

    pub(crate) fn from_proto(v: &CriuVersion) -> Self {
        let n = |x: i32| u32::try_from(x).unwrap_or(0);
        Self {
            major: n(v.major_number.unwrap_or(0)),
            minor: n(v.minor_number),
            sublevel: n(v.sublevel.unwrap_or(0)),
            gitid: v.gitid.clone(),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if self.sublevel != 0 {
            write!(f, ".{}", self.sublevel)?;
        }
        if let Some(g) = &self.gitid {
            write!(f, " ({g})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_by_number_and_print_like_criu() {
        let v = Version::from_proto(&CriuVersion {
            major_number: Some(4),
            minor_number: 1,
            sublevel: Some(1),
            ..Default::default()
        });
        assert_eq!(v.to_string(), "4.1.1");
        assert_eq!(v.as_number(), 40101);
        assert!(v >= Version::MINIMUM);
        assert!(Version::new(3, 17, 1) < Version::MINIMUM);
        assert_eq!(Version::new(4, 0, 0).to_string(), "4.0");
    }
}

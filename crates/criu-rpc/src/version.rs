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

/// A string that is not a version as [`Version`] prints one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a CRIU version: {0:?}")]
pub struct ParseVersionError(pub String);

impl std::str::FromStr for Version {
    type Err = ParseVersionError;

    /// Reads what [`Version`]'s `Display` writes: `4.1`, `4.1.1`, or either
    /// with ` (gitid)` after it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseVersionError(s.to_string());
        let (nums, gitid) = match s.split_once(' ') {
            None => (s, None),
            Some((n, rest)) => {
                let g = rest
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .filter(|g| !g.is_empty())
                    .ok_or_else(bad)?;
                (n, Some(g.to_string()))
            }
        };
        let parts: Vec<u32> = nums
            .split('.')
            .map(|p| p.parse().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        let (major, minor, sublevel) = match parts[..] {
            [a, b] => (a, b, 0),
            [a, b, c] => (a, b, c),
            _ => return Err(bad()),
        };
        Ok(Self {
            major,
            minor,
            sublevel,
            gitid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_read_back_what_they_print() {
        for v in [
            Version::new(4, 1, 1),
            Version::new(4, 0, 0),
            Version {
                gitid: Some("3f00ab1".into()),
                ..Version::new(4, 0, 0)
            },
        ] {
            assert_eq!(v.to_string().parse::<Version>(), Ok(v));
        }
        // A development build is not read as 4.0.3 because of its git id.
        assert_eq!(
            "4.0 (3f00ab1)".parse::<Version>().unwrap().as_number(),
            40_000
        );
        for bad in ["", "4", "4.x", "4.1.1.1", "4.1 3f", "4.1 ()"] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
    }

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

//! The `vz` htype (being written).
use std::collections::BTreeMap;

use crate::registry::Paths;
use crate::{Error, Htype, Result};

/// A Virtuozzo container.
#[derive(Debug, Clone)]
pub struct Vz;

impl Vz {
    /// The source side.
    pub fn source(_ctid: &str, _paths: &Paths) -> Result<Self> {
        Err(Error::UnknownKind("vz".into()))
    }
    /// The target side.
    pub fn target(_params: &BTreeMap<String, String>, _paths: &Paths) -> Result<Self> {
        Err(Error::UnknownKind("vz".into()))
    }
}

impl Htype for Vz {
    fn kind(&self) -> &'static str {
        "vz"
    }
    fn root_pid(&self) -> Result<i32> {
        Err(Error::UnknownKind("vz".into()))
    }
}

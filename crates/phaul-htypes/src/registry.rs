//! Making htypes from their names.

use std::collections::BTreeMap;

use crate::{Error, Htype, Result, pid};

/// The kinds this build knows.
pub const NAMES: &[&str] = &["pid"];

/// The source side of kind `kind` for the thing the user named (`id`: a
/// PID for `pid`).
pub fn source(kind: &str, id: &str) -> Result<Box<dyn Htype>> {
    match kind {
        "pid" => Ok(Box::new(pid::Pid::source(id)?)),
        other => Err(Error::UnknownKind(other.to_string())),
    }
}

/// The target side of kind `kind`, from the parameters the source sent.
pub fn target(kind: &str, params: &BTreeMap<String, String>) -> Result<Box<dyn Htype>> {
    match kind {
        "pid" => Ok(Box::new(pid::Pid::target(params)?)),
        other => Err(Error::UnknownKind(other.to_string())),
    }
}

//! Checkpoint a process tree into a portable archive, and restore one, with
//! the archive treated as hostile input.
//!
//! A checkpoint is a CRIU dump into a fresh directory, offered as a tar
//! archive of regular files with plain names. A restore takes an uploaded
//! archive, checks it whole before a byte is written (only regular files
//! with plain names, each once, none cut short), extracts it with
//! `O_EXCL | O_NOFOLLOW` into a directory made for it, checks that its
//! `inventory.img` is one, and restores it with CRIU. Whatever makes an
//! archive unusable is an [`Error::Refused`] with a [`Refusal`] naming why,
//! which a server answers as the client's fault (HTTP 400).
//!
//! # Layout
//! - [`tar`]: the strict ustar writer and reader.
//! - [`checkpoint`]: [`Store`], the work directory of checkpoints and
//!   restores, and the CRIU calls.
//! - [`error`]: [`Error`], this crate's one error type, and [`Refusal`].

pub mod checkpoint;
pub mod error;
pub mod tar;

pub use checkpoint::{Checkpoint, RestoreDir, Store};
pub use error::{Error, Refusal, Result};

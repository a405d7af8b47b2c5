//! The link between a migration's source and target.
//!
//! **Status: skeleton.** This crate will carry phaul's control protocol
//! (framed, typed, versioned from day one with 0 = invalid, authenticated
//! before any other message is acted on, TLS by default) and the streams
//! beside it: CRIU images, memory pages for CRIU's page server and lazy-pages
//! connections, and file-system data. Nothing here is implemented yet.
//!
//! # Layout
//! - [`Error`]: the crate's error type (no variants are produced yet).

/// Errors of the transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {}

//! The generated CRIU messages (`proto/*.proto` of this crate), as prost structs.
//!
//! Names follow prost's rules: `criu_req` is [`CriuReq`], the enum
//! `criu_req_type` is [`CriuReqType`]. These are the raw wire types; most
//! callers use [`crate::Opts`] and the typed [`crate::Session`] methods and
//! only reach in here for an option the builder does not cover
//! ([`crate::Opts::raw_mut`]).
#![allow(missing_docs, clippy::all, clippy::pedantic, clippy::doc_markdown)]

include!(concat!(env!("OUT_DIR"), "/criu.rs"));

//! The generated messages of `crates/phaul-transport/proto/link.proto`.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/phaul.link.rs"));

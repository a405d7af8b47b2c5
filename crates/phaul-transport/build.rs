//! Compiles phaul's link protocol in `proto/` (this crate's) with protox (no
//! `protoc` needed).

use std::path::PathBuf;

fn main() {
    let root =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo")).join("proto");
    let files = ["link.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = match protox::compile(files, [&root]) {
        Ok(fds) => fds,
        Err(e) => panic!("compiling phaul's .proto files in {}: {e}", root.display()),
    };
    if let Err(e) = prost_build::Config::new().compile_fds(fds) {
        panic!("generating Rust from phaul's .proto files: {e}");
    }
}

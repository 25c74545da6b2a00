//! Compiles `revgate/activation/v1/activation.proto` into Rust with
//! `prost-build`, parsing the file with `protox` (a protobuf compiler written
//! in Rust) so the build needs no `protoc` on the machine.

use std::error::Error;

const PROTO_ROOT: &str = ".";
const ACTIVATION_PROTO: &str = "revgate/activation/v1/activation.proto";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={ACTIVATION_PROTO}");
    let descriptors = protox::compile([ACTIVATION_PROTO], [PROTO_ROOT])
        .map_err(|e| format!("parsing {ACTIVATION_PROTO} failed: {e}"))?;
    prost_build::Config::new()
        .compile_fds(descriptors)
        .map_err(|e| format!("generating Rust for {ACTIVATION_PROTO} failed: {e}"))?;
    Ok(())
}

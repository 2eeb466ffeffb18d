//! Generates the Steering gRPC client and server from `proto/steering.proto` (needs `protoc`,
//! which `scripts/setup` installs).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/steering.proto");
    tonic_prost_build::compile_protos("proto/steering.proto")?;
    Ok(())
}

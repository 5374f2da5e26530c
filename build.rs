//! Compiles the protobuf APIs. protoc comes from the `protoc-bin-vendored`
//! crate, so a fresh machine needs no system package.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    // the public API, then one file per node-to-node plane (see src/proto.rs)
    let protos = [
        "proto/funnel.proto",
        "proto/control.proto",
        "proto/data.proto",
        "proto/ops.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure().compile_protos(&protos, &["proto"])?;
    Ok(())
}

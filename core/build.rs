//! Compiles the model file format (`proto/isoflow/v1/model.proto`) with a
//! vendored `protoc`, so no system protobuf compiler is needed. The gRPC API
//! that embeds these messages is compiled by the service crate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
    let model = format!("{proto_dir}/isoflow/v1/model.proto");
    println!("cargo:rerun-if-changed={model}");
    prost_build::compile_protos(&[model], &[proto_dir.to_owned()])?;
    Ok(())
}

//! Compiles the protobuf contracts (model file format and gRPC API) with a
//! vendored `protoc`, so no system protobuf compiler is needed, and writes the
//! file descriptor set that gRPC server reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
    let protos = [
        format!("{proto_dir}/isoflow/v1/model.proto"),
        format!("{proto_dir}/isoflow/v1/api.proto"),
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("isoflow_descriptor.bin"))
        .compile_protos(&protos, &[proto_dir.to_owned()])?;
    Ok(())
}

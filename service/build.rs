//! Compiles the gRPC API (`proto/isoflow/v1/api.proto`) with a vendored
//! `protoc`, so no system protobuf compiler is needed, and writes the file
//! descriptor set that gRPC server reflection serves. The model file's
//! messages, which the API embeds, are `isoflow_core::pb`'s: every top-level
//! message and enum of `model.proto` is mapped there rather than generated
//! twice.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
    let model = format!("{proto_dir}/isoflow/v1/model.proto");
    let api = format!("{proto_dir}/isoflow/v1/api.proto");
    for p in [&model, &api] {
        println!("cargo:rerun-if-changed={p}");
    }
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut build = tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("isoflow_descriptor.bin"));
    for name in top_level_types(&std::fs::read_to_string(&model)?) {
        build = build.extern_path(
            format!(".isoflow.v1.{name}"),
            format!("::isoflow_core::pb::{name}"),
        );
    }
    build.compile_protos(&[api], &[proto_dir.to_owned()])?;
    Ok(())
}

/// Names of the messages and enums declared at the top level of a proto file
/// (those starting a line; nested ones are indented).
fn top_level_types(proto: &str) -> Vec<String> {
    proto
        .lines()
        .filter_map(|line| {
            let rest = line
                .strip_prefix("message ")
                .or_else(|| line.strip_prefix("enum "))?;
            let name = rest
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .next()?;
            (!name.is_empty()).then(|| name.to_owned())
        })
        .collect()
}

//! Compiles `portcullis/v1/*.proto` with protox (pure Rust, no system
//! `protoc`) and generates messages, clients and servers with tonic-prost.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "types.proto",
        "permission.proto",
        "admin.proto",
        "watch.proto",
        "diagnostics.proto",
        "audit.proto",
    ]
    .map(|f| format!("portcullis/v1/{f}"));
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(&files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("portcullis_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .codec_path("crate::codec::StrictCodec")
        .compile_fds(fds)?;
    Ok(())
}

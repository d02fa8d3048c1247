//! Compiles the contracts with `protox` (pure Rust, no system `protoc`) and keeps the
//! descriptor set so every server can offer reflection.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "complaints/common/v1/common.proto",
        "complaints/events/v1/events.proto",
        "complaints/intake/v1/intake.proto",
        "complaints/cases/v1/cases.proto",
        "complaints/sla/v1/sla.proto",
        "complaints/survey/v1/survey.proto",
        "complaints/scoring/v1/scoring.proto",
    ];
    println!("cargo:rerun-if-changed=complaints");
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("complaints_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}

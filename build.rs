//! Compiles the gRPC API and writes the descriptor set that server reflection serves.
//! protoc comes from the `protoc-bin-vendored` crate, so a fresh machine needs no
//! system package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of intent: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("presignd_descriptor.bin"))
        .compile_protos(&["proto/presignd/v1/presignd.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    // sqlx::migrate! embeds the migrations it finds when it expands; on stable
    // Rust it cannot ask to be expanded again when a file is added, so a new
    // migration would be missing from an incremental build (sqlx's advice).
    println!("cargo:rerun-if-changed=migrations");
    Ok(())
}

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
    revision();
    Ok(())
}

/// `presignd_build_info{revision}`: BUILD_REVISION if set (the container
/// build passes it: its context has no .git), else the checkout's commit, else
/// "unknown". Rebuilt when HEAD moves (its reflog changes on every commit and
/// checkout), so a dev build never names a stale commit.
fn revision() {
    println!("cargo:rerun-if-env-changed=BUILD_REVISION");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    for watched in ["HEAD", "logs/HEAD"] {
        // A path that does not exist would make cargo rerun this script every time.
        if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", watched])
            .filter(|p| std::path::Path::new(p).exists())
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let revision = std::env::var("BUILD_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=PRESIGND_REVISION={revision}");
}

//! The API contract check (.ci/contract: `buf lint` with buf.yaml, `buf
//! breaking` against the proto proto/LANDED names) passes on this tree, and
//! refuses what it is there to refuse: a breaking change and an uncommented
//! field. buf is the npm package pinned in .ci/tools, which .ci/contract
//! installs when missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const PROTO: &str = "proto/presignd/v1/presignd.proto";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A copy of buf.yaml and proto/ in a directory of its own, with `edit`
/// applied to the proto file.
fn edited_copy(edit: impl FnOnce(String) -> String) -> PathBuf {
    let dir = crate::pki::temp_dir();
    std::fs::copy(Path::new(REPO).join("buf.yaml"), dir.join("buf.yaml")).unwrap();
    let proto = dir.join(PROTO);
    std::fs::create_dir_all(proto.parent().unwrap()).unwrap();
    let original = std::fs::read_to_string(Path::new(REPO).join(PROTO)).unwrap();
    let edited = edit(original.clone());
    assert_ne!(edited, original, "the edit changed nothing");
    std::fs::write(proto, edited).unwrap();
    dir
}

fn buf() -> PathBuf {
    Path::new(REPO).join(".ci/tools/node_modules/.bin/buf")
}

#[test]
fn the_contract_check_passes_and_refuses_breaking_or_uncommented_changes() {
    // The check CI runs, on this tree (installs buf if needed).
    let out = Command::new(Path::new(REPO).join(".ci/contract"))
        .current_dir(REPO)
        .output()
        .expect(".ci/contract runs");
    assert!(out.status.success(), "{}", text(&out));

    // Renumbering a landed field breaks every client built against it.
    let dir = edited_copy(|p| p.replace("string content_type = 6;", "string content_type = 16;"));
    let out = Command::new(buf())
        .args(["breaking", "--against"])
        .arg(Path::new(REPO).join("proto"))
        .current_dir(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !out.status.success(),
        "a renumbered field passed buf breaking"
    );
    assert!(
        text(&out).contains("\"content_type\""),
        "buf names the field: {}",
        text(&out)
    );

    // A new field without a comment fails lint (COMMENTS).
    let dir = edited_copy(|p| {
        p.replace(
            "  string response_content_disposition = 7;\n",
            "  string response_content_disposition = 7;\n  string undocumented = 99;\n",
        )
    });
    let out = Command::new(buf())
        .arg("lint")
        .current_dir(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !out.status.success(),
        "an uncommented field passed buf lint"
    );
    assert!(text(&out).contains("\"undocumented\""), "{}", text(&out));
}

//! The layering of src/ (docs/ARCHITECTURE.md, "Layers"): a module imports only
//! modules of a lower layer, so no import runs back up and no cycle can form.
//! Read from the source itself: every `crate::` path outside comments, in `use`
//! lines and inline, `crate::{a, b}` groups included.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each top-level module of the library and its layer (higher imports lower).
const LAYERS: &[(&str, u8)] = &[
    ("app", 9),
    ("api", 8),
    ("health", 8),
    // The wire types: only the edge speaks them.
    ("proto", 7),
    ("issuance", 6),
    ("revocation", 6),
    ("dashboard", 6),
    ("auth", 5),
    ("ratelimit", 5),
    ("config", 5),
    ("keys", 4),
    ("policy", 4),
    ("audit", 4),
    ("metrics", 4),
    ("reseal", 4),
    ("lifecycle", 4),
    ("registry", 3),
    ("backend", 3),
    ("signing", 3),
    // The one paging scheme: tokens and cursors the registry pages with.
    ("paging", 2),
    ("domain", 1),
    ("seal", 1),
    ("secret", 1),
    ("tls", 1),
    ("telemetry", 1),
];

/// Adapters and the domain know no SQL.
const NO_SQL: &[&str] = &["domain", "signing", "backend"];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of src/ belongs to; None for the crate root and
/// the binaries.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    match first.as_str() {
        "lib.rs" | "main.rs" | "bin" => None,
        f => Some(f.trim_end_matches(".rs").to_owned()),
    }
}

fn without_comments(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules `text` names through `crate::`.
fn imported_modules(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Split the group at its top-level commas.
            let mut depth = 0;
            let mut start = 0;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.insert(ident(&group[start..j]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(ident(&group[start..j]));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.remove("");
    found
}

/// Every import of src/ that breaks the layering, as "file: a -> b (why)".
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut bad = Vec::new();
    for file in files {
        let Some(module) = module_of(src, &file) else {
            continue;
        };
        let text = without_comments(&std::fs::read_to_string(&file).unwrap());
        let name = file.strip_prefix(src).unwrap().display().to_string();
        let Some(own) = layer(&module) else {
            bad.push(format!("{name}: module {module} has no layer in the table"));
            continue;
        };
        for target in imported_modules(&text) {
            if target == module {
                continue;
            }
            match layer(&target) {
                Some(l) if l < own => {}
                Some(l) => bad.push(format!(
                    "{name}: {module} (layer {own}) -> {target} (layer {l}) runs up or sideways"
                )),
                None => bad.push(format!("{name}: {module} -> unknown module {target}")),
            }
        }
        if NO_SQL.contains(&module.as_str()) && text.contains("sqlx") {
            bad.push(format!(
                "{name}: {module} is an adapter or the domain and uses sqlx"
            ));
        }
    }
    bad.sort();
    bad
}

#[test]
fn no_module_imports_a_layer_above_or_beside_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));
}

#[test]
fn the_import_reader_sees_groups_inline_paths_and_skips_comments() {
    let text = without_comments(
        "use crate::{metrics, registry::{self, keys}};\n\
         // use crate::app;\n\
         fn f() { crate::audit::clean(\"x\"); }",
    );
    let found: Vec<String> = imported_modules(&text).into_iter().collect();
    assert_eq!(found, ["audit", "metrics", "registry"]);
}

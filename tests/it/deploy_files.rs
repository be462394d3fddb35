//! The deploy files (deploy/container, deploy/k8s, deploy/systemd, docs/DEPLOY.md
//! and the README's production example) are what users copy: these checks keep
//! them true to the binary. Every setting they name is asked of the built
//! `presignd` itself (`presignd <command> --help`), the unit goes through
//! `systemd-analyze verify`, and the Kubernetes objects are parsed and checked
//! to fit together (probes on the ports the server listens on, the policy a valid
//! policy, the pods locked down). No service is needed.

use serde::Deserialize;
use serde_norway::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The flags and environment variables `presignd <command> --help` documents;
/// None if the command does not exist.
fn help(command: &str) -> Option<(BTreeSet<String>, BTreeSet<String>)> {
    let out = Command::new(env!("CARGO_BIN_EXE_presignd"))
        .args([command, "--help"])
        .output()
        .expect("running presignd");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).expect("help is UTF-8");
    let flags = names_after(&text, "--", |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
    })
    .into_iter()
    .map(|f| format!("--{f}"))
    .collect();
    let envs = names_after(&text, "[env: ", is_env_char);
    Some((flags, envs))
}

fn is_env_char(c: char) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'
}

/// Every run of `allowed` characters that follows `marker`.
fn names_after(text: &str, marker: &str, allowed: impl Fn(char) -> bool) -> BTreeSet<String> {
    text.match_indices(marker)
        .map(|(i, _)| {
            text[i + marker.len()..]
                .chars()
                .take_while(|&c| allowed(c))
                .collect::<String>()
        })
        .filter(|n| !n.is_empty())
        .collect()
}

/// The environment variables of presignd's a text names: `PRESIGND_*` and
/// `DATABASE_URL*`, each starting a word.
fn env_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["PRESIGND_", "DATABASE_URL"] {
        for (i, _) in text.match_indices(prefix) {
            let starts_word = text[..i]
                .chars()
                .next_back()
                .is_none_or(|c| !(is_env_char(c) || c.is_ascii_lowercase()));
            if starts_word {
                let name: String = text[i..].chars().take_while(|&c| is_env_char(c)).collect();
                names.insert(name.trim_end_matches('_').to_owned());
            }
        }
    }
    names
}

/// The presignd command lines in shell text (lines joined at a trailing `\`,
/// `#` comments dropped): for each, its command and the `--flags` given to it.
/// presignd counts where it starts a command, after any `NAME=value` words.
fn presignd_invocations(shell: &str) -> Vec<(String, Vec<String>)> {
    let joined = shell.replace("\\\n", " ");
    let mut found = Vec::new();
    for line in joined.lines() {
        let line = line.split(" #").next().unwrap();
        if line.trim_start().starts_with('#') {
            continue;
        }
        for segment in line.split(['|', ';', '&']) {
            let mut words = segment.split_whitespace().skip_while(|w| {
                w.split_once('=')
                    .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(is_env_char))
            });
            let Some(program) = words.next() else {
                continue;
            };
            if program == "presignd" || program.ends_with("/presignd") {
                let rest: Vec<&str> = words.collect();
                if let Some(command) = rest.first() {
                    found.push((command.to_string(), flags_in(&rest[1..])));
                }
            }
        }
    }
    found
}

/// The text of a Markdown file's fenced code blocks.
fn code_blocks(markdown: &str) -> String {
    let mut code = String::new();
    let mut inside = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            inside = !inside;
        } else if inside {
            code.push_str(line);
            code.push('\n');
        }
    }
    code
}

fn flags_in<S: AsRef<str>>(words: &[S]) -> Vec<String> {
    words
        .iter()
        .map(|w| w.as_ref().trim_matches(['"', '`', ',', '[', ']']))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.split('=').next().unwrap_or(w).to_owned())
        .collect()
}

/// Every YAML document of every file in deploy/k8s, with its file's name.
fn k8s_documents() -> Vec<(String, Value)> {
    let dir = repo().join("deploy/k8s");
    let mut docs = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/k8s exists")
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.ends_with(".yaml"),
            "deploy/k8s/{name}: only .yaml files belong here"
        );
        for doc in serde_norway::Deserializer::from_str(&read(&path)) {
            let value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("deploy/k8s/{name} does not parse: {e}"));
            docs.push((name.clone(), value));
        }
    }
    docs
}

fn object<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("deploy/k8s has no {kind} {name}"))
}

/// The README's production section: from its heading to the next one of its level.
fn readme_production_section() -> String {
    let readme = read(&repo().join("README.md"));
    let start = readme
        .find("\n## Running it in production")
        .expect("README has a \"## Running it in production\" section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 3);
    rest[..end].to_owned()
}

#[test]
fn every_setting_the_deploy_files_name_exists_in_presignd() {
    let (serve_flags, serve_envs) = help("serve").expect("presignd serve --help");
    let mut texts: Vec<(String, String)> = [
        "deploy/container/Dockerfile",
        "deploy/systemd/presignd.service",
        "deploy/systemd/presignd.env",
        "docs/DEPLOY.md",
    ]
    .iter()
    .map(|p| (p.to_string(), read(&repo().join(p))))
    .collect();
    for entry in std::fs::read_dir(repo().join("deploy/k8s")).unwrap() {
        let path = entry.unwrap().path();
        let name = format!("deploy/k8s/{}", path.file_name().unwrap().to_string_lossy());
        texts.push((name, read(&path)));
    }
    texts.push(("README.md (production)".into(), readme_production_section()));

    // (where, command, flags) for every presignd command line: in the
    // Markdown's code blocks, the unit's Exec lines, the pods' args, the CMD.
    let mut invocations: Vec<(String, String, Vec<String>)> = Vec::new();
    for (file, text) in &texts {
        let shell = if file.ends_with(".service") {
            text.lines()
                .filter_map(|l| l.split_once('=').filter(|(k, _)| k.starts_with("Exec")))
                .map(|(_, v)| format!("{v}\n"))
                .collect()
        } else if file.contains(".md") || file.starts_with("README") {
            code_blocks(text)
        } else {
            continue;
        };
        for (command, flags) in presignd_invocations(&shell) {
            invocations.push((file.clone(), command, flags));
        }
    }
    for (file, doc) in k8s_documents() {
        let pod = &doc["spec"]["template"]["spec"];
        for c in pod["containers"].as_sequence().into_iter().flatten() {
            let args: Vec<String> = c["args"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect();
            let command = args
                .first()
                .expect("a presignd container names its command");
            invocations.push((
                format!("deploy/k8s/{file}"),
                command.clone(),
                flags_in(&args),
            ));
        }
    }
    let dockerfile = read(&repo().join("deploy/container/Dockerfile"));
    let cmd = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("the Dockerfile has a CMD");
    let cmd: Vec<String> = serde_json::from_str(cmd).expect("CMD is an exec-form JSON array");
    invocations.push((
        "deploy/container/Dockerfile".into(),
        cmd[0].clone(),
        flags_in(&cmd),
    ));

    let mut missing = Vec::new();
    for (file, text) in &texts {
        for name in env_names(text) {
            if !serve_envs.contains(&name) {
                missing.push(format!("{file}: environment variable {name}"));
            }
        }
    }
    let mut helps = BTreeMap::new();
    for (file, command, flags) in &invocations {
        match helps
            .entry(command.clone())
            .or_insert_with(|| help(command))
        {
            None => missing.push(format!("{file}: command `presignd {command}`")),
            Some((known, _)) => {
                for flag in flags {
                    if !known.contains(flag) {
                        missing.push(format!("{file}: flag {flag} of `presignd {command}`"));
                    }
                }
            }
        }
    }
    assert!(
        invocations
            .iter()
            .any(|(f, c, _)| f.starts_with("README") && c == "serve"),
        "the README's production example runs `presignd serve`"
    );
    assert!(
        serve_flags.contains("--listen"),
        "help parsed: {serve_flags:?}"
    );
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "named in the deploy files but unknown to `presignd <command> --help`:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = read(&repo().join("deploy/systemd/presignd.service"));
    // verify checks that ExecStart's binary exists: point it at the built one.
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart");
    let binary = exec.split_whitespace().next().unwrap();
    let dir = std::env::temp_dir().join(format!("presignd-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("presignd.service");
    std::fs::write(
        &copy,
        unit.replace(
            &format!("ExecStart={binary}"),
            &format!("ExecStart={}", env!("CARGO_BIN_EXE_presignd")),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze (Debian package systemd; deploy/dev/stack.sh installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // An unknown or misspelt directive is only a warning: it fails here too.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );

    // Each credential systemd loads is handed to presignd through a *_FILE
    // setting pointing at it, and the other way round.
    let loaded: BTreeSet<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("LoadCredential="))
        .map(|l| l.split(':').next().unwrap())
        .collect();
    let used: BTreeSet<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .filter(|l| l.split('=').next().unwrap().ends_with("_FILE"))
        .filter_map(|l| l.split_once("=%d/").map(|(_, id)| id))
        .collect();
    assert_eq!(
        loaded, used,
        "credentials loaded vs. *_FILE settings using %d/"
    );
    assert!(loaded.contains("database-url") && loaded.contains("master-key"));
    assert!(unit.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"));
}

#[test]
fn every_kubernetes_file_parses_and_kustomize_lists_each_one() {
    let docs = k8s_documents();
    for (file, doc) in &docs {
        for field in ["apiVersion", "kind"] {
            assert!(
                doc[field].as_str().is_some_and(|s| !s.is_empty()),
                "deploy/k8s/{file}: a document without {field}"
            );
        }
    }
    let k = &docs
        .iter()
        .find(|(f, _)| f == "kustomization.yaml")
        .expect("deploy/k8s/kustomization.yaml")
        .1;
    let listed: BTreeSet<String> = k["resources"]
        .as_sequence()
        .expect("kustomization resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let files: BTreeSet<String> = docs
        .iter()
        .map(|(f, _)| f.clone())
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, files,
        "kustomization.yaml lists every file of deploy/k8s"
    );
}

/// The port of a `host:port` setting in the presignd-env ConfigMap.
fn configured_port(env: &Value, name: &str) -> u64 {
    let addr = env["data"][name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} is set"));
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

fn container_port(container: &Value, port: &Value) -> u64 {
    match port.as_u64() {
        Some(n) => n,
        None => container["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == *port)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port named {port:?}")),
    }
}

#[test]
fn the_pods_probe_the_ports_presignd_listens_on_and_are_locked_down() {
    let docs = k8s_documents();
    let env = object(&docs, "ConfigMap", "presignd-env");
    let deployment = object(&docs, "Deployment", "presignd");
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(2));
    let pod = &deployment["spec"]["template"]["spec"];
    let server = &pod["containers"][0];
    assert_eq!(server["args"][0].as_str(), Some("serve"));
    assert_eq!(
        env["data"]["PRESIGND_MIGRATE_ON_START"].as_str(),
        Some("false"),
        "the Job migrates, the servers do not"
    );

    // Readiness: the kubelet's native gRPC probe asks grpc.health.v1.Health on
    // the gRPC listener; liveness: /livez on the metrics listener.
    let readiness = &server["readinessProbe"]["grpc"];
    assert_eq!(
        container_port(server, &readiness["port"]),
        configured_port(env, "PRESIGND_LISTEN")
    );
    let liveness = &server["livenessProbe"]["httpGet"];
    assert_eq!(liveness["path"].as_str(), Some("/livez"));
    assert_eq!(
        container_port(server, &liveness["port"]),
        configured_port(env, "PRESIGND_METRICS_LISTEN")
    );
    assert!(server["resources"]["requests"]["memory"].is_string());
    assert!(server["resources"]["limits"]["memory"].is_string());

    // The server and the migration Job: non-root, read-only, no privilege.
    let job = object(&docs, "Job", "presignd-migrate");
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["args"][0].as_str(),
        Some("migrate")
    );
    for owner in [deployment, job] {
        let pod = &owner["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
        let c = &pod["containers"][0];
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
        assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
        assert_eq!(sc["capabilities"]["drop"][0].as_str(), Some("ALL"));
        // Every *_FILE setting points into a mounted volume.
        let mounts: Vec<&str> = c["volumeMounts"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|m| m["mountPath"].as_str())
            .collect();
        for e in c["env"].as_sequence().into_iter().flatten() {
            let (name, value) = (e["name"].as_str().unwrap(), e["value"].as_str());
            if name.ends_with("_FILE") {
                let value = value.unwrap_or_else(|| panic!("{name} has a value"));
                assert!(
                    mounts.iter().any(|m| value.starts_with(&format!("{m}/"))),
                    "{name}={value} is under none of the mounts {mounts:?}"
                );
            }
        }
    }

    // The Service and the PodDisruptionBudget select the Deployment's pods.
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let service = object(&docs, "Service", "presignd");
    let pdb = object(&docs, "PodDisruptionBudget", "presignd");
    for selector in [
        &service["spec"]["selector"],
        &pdb["spec"]["selector"]["matchLabels"],
    ] {
        for (k, v) in selector.as_mapping().expect("a selector") {
            assert_eq!(&labels[k.as_str().unwrap()], v, "selector {k:?}");
        }
    }
}

#[test]
fn the_example_policy_is_one_presignd_accepts() {
    let docs = k8s_documents();
    let env = object(&docs, "ConfigMap", "presignd-env");
    let text = object(&docs, "ConfigMap", "presignd-policy")["data"]["policy.toml"]
        .as_str()
        .expect("presignd-policy holds policy.toml");
    let signers = env["data"]["PRESIGND_SIGNERS"]
        .as_str()
        .unwrap()
        .split(',')
        .map(|s| presignd::domain::SignerName::parse(s).unwrap())
        .collect();
    let settings = presignd::policy::Settings {
        signers,
        admins: Vec::new(),
        default_rate: None,
    };
    let policy = presignd::policy::Policy::parse(text, settings).expect("the example policy");
    assert!(policy.caller_count() >= 1);
}

#[test]
fn the_container_image_builds_both_binaries_with_the_crates_toolchain() {
    let dockerfile = read(&repo().join("deploy/container/Dockerfile"));
    let manifest = read(&repo().join("Cargo.toml"));
    let wanted = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("Cargo.toml names its rust-version")
        .trim_matches('"');
    let image = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("FROM rust:"))
        .expect("the build stage is an official rust image");
    let version = |v: &str| -> Vec<u32> {
        v.split(['-', ' '])
            .next()
            .unwrap()
            .split('.')
            .map(|n| n.parse().unwrap())
            .collect()
    };
    assert!(
        version(image) >= version(wanted),
        "rust:{image} is older than rust-version {wanted}"
    );
    for needle in [
        "cargo build --release --locked",
        "/out/presignd",
        "/out/presignctl",
        "EXPOSE 50051 9464",
        "USER 65532:65532",
        "ENTRYPOINT [\"/usr/local/bin/presignd\"]",
    ] {
        assert!(dockerfile.contains(needle), "the Dockerfile has {needle:?}");
    }
}

#[test]
fn the_setting_check_finds_commands_flags_and_variables_where_they_are() {
    let shell = "RUST_LOG=debug /usr/local/bin/presignd serve \\\n  --listen 0.0.0.0:1 --no-such-flag=x\n\
                 kubectl -n presignd wait  # presignd talks\n\
                 printf x | presignd hash-token && presignd frobnicate\n";
    assert_eq!(
        presignd_invocations(shell),
        [
            (
                "serve".to_owned(),
                vec!["--listen".to_owned(), "--no-such-flag".to_owned()]
            ),
            ("hash-token".to_owned(), vec![]),
            ("frobnicate".to_owned(), vec![]),
        ]
    );
    let (flags, envs) = help("serve").unwrap();
    assert!(flags.contains("--listen") && !flags.contains("--no-such-flag"));
    assert!(envs.contains("DATABASE_URL") && envs.contains("PRESIGND_LISTEN"));
    assert!(
        help("frobnicate").is_none(),
        "an unknown command is reported"
    );
    assert_eq!(
        env_names("x=$PRESIGND_LISTEN MY_PRESIGND_X DATABASE_URL_FILE=/f"),
        BTreeSet::from(["PRESIGND_LISTEN".to_owned(), "DATABASE_URL_FILE".to_owned()])
    );
}

/// A port free right now on 127.0.0.1 (for a child process to bind).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The README's production example, run as written in an empty environment,
/// with only its placeholders (hosts, password, token, paths, bucket, ports)
/// replaced by the dev stack's: it migrates an empty database, serves, and a
/// caller it configured gets a PUT link Garage accepts.
#[sqlx::test(migrations = false)]
async fn the_readme_production_example_runs_as_written(pool: sqlx::PgPool) {
    use crate::helpers::{database_url, env, test_bucket};
    let dir = crate::pki::temp_dir();
    let (grpc, metrics) = (free_port(), free_port());
    let mut script = code_blocks(&readme_production_section());
    let token = "it-readme-production-token";
    let bucket = test_bucket();
    for (placeholder, value) in [
        (
            "postgres://presignd:PASSWORD@db.internal:5432/presignd?sslmode=verify-full&sslrootcert=/etc/presignd/db-ca.pem",
            format!("{}?sslmode=disable", database_url(&pool)),
        ),
        ("/etc/presignd", dir.display().to_string()),
        (
            "'GARAGE_ADMIN_TOKEN'",
            format!("'{}'", env("GARAGE_ADMIN_TOKEN")),
        ),
        ("http://garage.internal:3903", env("GARAGE_ADMIN_URL")),
        ("https://s3.internal:3900", env("GARAGE_S3_URL")),
        ("TOKEN=$(openssl rand -hex 32)", format!("TOKEN={token}")),
        ("\"uploads\"", format!("\"{bucket}\"")),
        (
            "PRESIGND_BUCKETS=uploads",
            format!("PRESIGND_BUCKETS={bucket}"),
        ),
        ("0.0.0.0:50051", format!("127.0.0.1:{grpc}")),
        ("0.0.0.0:9464", format!("127.0.0.1:{metrics}")),
        ("\npresignd serve", "\nexec presignd serve".to_owned()),
    ] {
        assert!(
            script.contains(placeholder),
            "the README example has {placeholder:?}"
        );
        script = script.replace(placeholder, &value);
    }
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_presignd")).parent().unwrap();
    let log = dir.join("server.log");
    let mut server = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env_clear()
        .env(
            "PATH",
            format!("{}:/usr/local/bin:/usr/bin:/bin", bin_dir.display()),
        )
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let endpoint = format!("http://127.0.0.1:{grpc}");
    let ready = tokio::process::Command::new(env!("CARGO_BIN_EXE_presignctl"))
        .args([
            "wait-ready",
            "--timeout-secs",
            "60",
            "--endpoint",
            &endpoint,
        ])
        .output();
    let failure = tokio::select! {
        ready = ready => {
            let ready = ready.unwrap();
            (!ready.status.success()).then(|| String::from_utf8_lossy(&ready.stdout).into_owned())
        }
        exit = server.wait() => Some(format!("it exited ({})", exit.unwrap())),
    };
    if let Some(why) = failure {
        panic!(
            "the README's server did not become ready: {why}\n--- its log:\n{}",
            read(&log)
        );
    }
    let issued = tokio::process::Command::new(env!("CARGO_BIN_EXE_presignctl"))
        .args(["issue", "--json", "--method", "PUT", "--ttl", "60"])
        .args([
            "--bucket",
            &bucket,
            "--key",
            &crate::helpers::unique_key("readme"),
        ])
        .args(["--endpoint", &endpoint])
        .env("PRESIGND_TOKEN", token)
        .output()
        .await
        .unwrap();
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&issued.stdout).unwrap();
    let put = reqwest::Client::new()
        .put(reply["url"].as_str().unwrap())
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(
        put.status(),
        reqwest::StatusCode::OK,
        "Garage accepts the link"
    );
    server.start_kill().unwrap();
}

//! The client examples the README points at, run as a user would against a real
//! presignd: `examples/python/client.py` (grpcio, with the pinned dependencies
//! examples/python/setup.sh installs, run by deploy/dev/test.sh) and the crate's
//! `examples/client.rs` (`cargo run --example client`). Each runs as a plain
//! caller; the test checks what it printed and what really happened: its links'
//! rows, the bytes Garage serves, and a listing of that caller's links only.

use crate::helpers::*;
use presignd::proto::Method;
use reqwest::StatusCode;
use sqlx::PgPool;
use std::path::Path;
use tokio::process::Command;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Runs an example as CALLER_B against `app`, uploading to `key`.
async fn run_example(mut command: Command, app: &TestApp, key: &str) -> Output {
    let out = command
        .current_dir(REPO)
        .env(
            "PRESIGND_ENDPOINT",
            format!("http://127.0.0.1:{}", app.port),
        )
        .env("PRESIGND_TOKEN", TOKEN_B)
        .env("PRESIGND_BUCKET", &app.bucket)
        .env("PRESIGND_OBJECT_KEY", key)
        .kill_on_drop(true)
        .output()
        .await
        .expect("the example starts");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The link id printed after `prefix` ("issued PUT link <id> ...").
fn printed_id(stdout: &str, prefix: &str) -> uuid::Uuid {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{stdout}"));
    let id = line.split_whitespace().next().unwrap();
    uuid::Uuid::parse_str(id).unwrap_or_else(|_| panic!("{id:?} is not a link id"))
}

/// What every example must have done, checked outside the example: the links
/// it reports are CALLER_B's rows, the object holds its bytes, and its listing
/// holds its own two links and not the admin's.
async fn assert_example_worked(
    app: &mut TestApp,
    pool: &PgPool,
    run: &Output,
    key: &str,
    body: &str,
) {
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(
        !run.stdout.contains("X-Amz-Signature") && !run.stderr.contains("X-Amz-Signature"),
        "an example printed a URL:\n{}",
        run.stdout
    );
    let put = printed_id(&run.stdout, "issued PUT link ");
    let get = printed_id(&run.stdout, "issued GET link ");
    for (id, method) in [(put, "PUT"), (get, "GET")] {
        let row: (String, String, String, String) =
            sqlx::query_as("SELECT caller, method, bucket, object_key FROM links WHERE id = $1")
                .bind(id)
                .fetch_one(pool)
                .await
                .unwrap_or_else(|e| panic!("the {method} link {id} is not in the registry: {e}"));
        assert_eq!(
            row,
            (
                CALLER_B.into(),
                method.into(),
                app.bucket.clone(),
                key.into()
            )
        );
    }
    assert!(
        run.stdout.contains(&format!(
            "uploaded {} bytes to {}/{key}: HTTP 200",
            body.len(),
            app.bucket
        )),
        "{}",
        run.stdout
    );

    // The store holds what the example uploaded: read back through a link of our own.
    let ours = app
        .issue(link_request(&app.bucket.clone(), key, Method::Get, 60))
        .await
        .unwrap();
    let r = send(&app.http, reqwest::Method::GET, &ours, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), body);

    // "My links": the example's caller's two, not the admin's.
    let listed = format!("my links in {}: 2\n", app.bucket);
    assert!(run.stdout.contains(&listed), "{}", run.stdout);
    for id in [put, get] {
        assert!(run.stdout.contains(&format!("  {id} ")), "{}", run.stdout);
    }
    assert!(run.stdout.contains(&format!("caller={CALLER_B}\n")));
    assert!(!run.stdout.contains(&format!("caller={CALLER}\n")));
}

/// A link of the admin caller in the same bucket, which "my links" must not list.
async fn someone_elses_link(app: &mut TestApp) {
    app.issue(link_request(
        &app.bucket.clone(),
        &unique_key("examples-admin"),
        Method::Get,
        600,
    ))
    .await
    .unwrap();
}

#[sqlx::test]
async fn the_python_example_uploads_and_lists_my_links(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    someone_elses_link(&mut app).await;
    let python = Path::new(REPO).join("examples/python/.venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run examples/python/setup.sh (deploy/dev/test.sh does)",
        python.display()
    );
    let key = unique_key("examples-python");
    let mut command = Command::new(python);
    command.arg("examples/python/client.py");
    let run = run_example(command, &app, &key).await;
    assert_example_worked(
        &mut app,
        &pool,
        &run,
        &key,
        "hello from the presignd Python example\n",
    )
    .await;
}

#[sqlx::test]
async fn the_rust_example_uploads_and_lists_my_links(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    someone_elses_link(&mut app).await;
    let key = unique_key("examples-rust");
    // Built now (the test's own CARGO_TARGET_DIR), so it is never stale.
    let mut command = Command::new(env!("CARGO"));
    command.args(["run", "--quiet", "--example", "client"]);
    let run = run_example(command, &app, &key).await;
    assert_example_worked(
        &mut app,
        &pool,
        &run,
        &key,
        "hello from the presignd Rust example\n",
    )
    .await;
}

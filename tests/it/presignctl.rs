//! presignctl against a running server: output, exit codes, confirmation.

use crate::helpers::*;
use presignd::proto::Method;
use reqwest::StatusCode;
use sqlx::PgPool;

#[sqlx::test]
async fn plan_and_rotate_from_the_command_line(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = buckets()[0].clone();
    let link = app
        .issue(link_request(&bucket, "k", Method::Get, 600))
        .await
        .unwrap();
    app.issue(link_request(&bucket, "k2", Method::Put, 600))
        .await
        .unwrap();

    let run = presignctl(
        &app,
        TOKEN,
        &["plan", "--signer", "default", "--json"],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(plan["outstanding_links"], 2);
    let run = presignctl(&app, TOKEN, &["plan", "--signer", "default"], None).await;
    assert_eq!(run.code, 0);
    assert!(
        run.stdout.contains("outstanding links  2"),
        "{}",
        run.stdout
    );

    // Without --yes and without a terminal to ask at, nothing happens.
    let run = presignctl(
        &app,
        TOKEN,
        &[
            "rotate", "--signer", "default", "--mode", "revoke", "--reason", "leak",
        ],
        None,
    )
    .await;
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("--yes"), "{}", run.stderr);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM revocations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 0);

    let run = presignctl(
        &app,
        TOKEN,
        &[
            "rotate", "--signer", "default", "--mode", "revoke", "--reason", "leak", "--yes",
            "--json",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["state"], "SUCCEEDED");
    assert_eq!(report["links_revoked"], 2);
    assert_eq!(try_link(&app.http, &link).await, StatusCode::FORBIDDEN);

    let run = presignctl(&app, TOKEN, &["keys"], None).await;
    assert_eq!(run.code, 0);
    assert!(
        run.stdout.contains(" inactive ") && run.stdout.contains(" active "),
        "{}",
        run.stdout
    );
    let run = presignctl(
        &app,
        TOKEN,
        &["revocations", report["id"].as_str().unwrap()],
        None,
    )
    .await;
    assert_eq!(run.code, 0);
    assert!(
        run.stdout.contains("SUCCEEDED") && run.stdout.contains("links revoked      2"),
        "{}",
        run.stdout
    );
}

#[sqlx::test]
async fn presignctl_fails_with_a_clear_message_and_a_non_zero_exit(pool: PgPool) {
    let app = spawn_app(&pool).await;
    let run = presignctl(&app, TOKEN_B, &["plan", "--signer", "default"], None).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("PermissionDenied"), "{}", run.stderr);
    let run = presignctl(&app, TOKEN, &["plan", "--signer", "nobody"], None).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("NotFound"), "{}", run.stderr);
    let run = presignctl(&app, "wrong", &["keys"], None).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("Unauthenticated"), "{}", run.stderr);
}

/// A server that cannot become ready says why where the operator looks:
/// `presignctl wait-ready` names the health status and the server's last
/// readiness error, and the master-key error says what to do about it.
#[sqlx::test]
async fn wait_ready_names_the_status_and_why_the_server_is_not_ready(pool: PgPool) {
    // A registry whose key was sealed under the test master key...
    let app = spawn_app(&pool).await;
    let run = presignctl(&app, TOKEN, &["wait-ready", "--timeout-secs", "5"], None).await;
    let (code, err) = (run.code, run.stderr);
    assert_eq!(code, 0, "a ready server passes wait-ready: {err}");
    drop(app);

    // ...opened by a server holding another master key.
    let other = presignd::seal::MasterKey::generate();
    let config = test_config(&[&format!("--master-key={}", &*other.to_hex())]);
    let app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    let run = presignctl(&app, TOKEN, &["wait-ready", "--timeout-secs", "2"], None).await;
    let (code, err) = (run.code, run.stderr);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("health says NOT_SERVING"), "{err}");
    assert!(
        err.contains("because: opening the secret of key GK"),
        "{err}"
    );
    assert!(err.contains("presignd reseal"), "{err}");
    assert!(err.contains("deploy/dev/stack.sh reset"), "{err}");
}

#[tokio::test]
async fn wait_ready_says_when_nothing_answers() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_presignctl"))
        .args(["wait-ready", "--timeout-secs", "1"])
        .env("PRESIGND_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("presignctl runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("did not answer within 1s"), "{err}");
    assert!(err.contains("cannot connect to presignd"), "{err}");
}

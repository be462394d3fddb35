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

async fn ctl(app: &TestApp, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = presignctl(app, token, args, None).await;
    (out.code, out.stdout, out.stderr)
}

async fn presignctl_at(endpoint: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_presignctl"))
        .args(args)
        .env("PRESIGND_ENDPOINT", endpoint)
        .env("PRESIGND_TOKEN", token)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("presignctl runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `rotate` and `revoke` exit with one code per outcome: 0 succeeded, 2
/// failed, 3 still running, 4 refused, 5 unreachable; `lookup` prints the
/// revoke command; `--wait` prints each step.
#[sqlx::test]
async fn revoke_and_rotate_exit_codes_say_the_outcome(pool: PgPool) {
    use crate::helpers::Proxy;
    use presignd::backend::KeyBackend;
    let target: std::net::SocketAddr = env("GARAGE_ADMIN_URL")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let proxy = Proxy::start(target).await;
    let admin = format!("--garage-admin-url=http://{}", proxy.addr);
    let mut app = spawn_app_with(test_config(&[&admin]), (*pool.connect_options()).clone()).await;
    app.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let link = app
        .issue(link_request(&buckets()[0], "k", Method::Get, 600))
        .await
        .unwrap();
    let key = link.link.as_ref().unwrap().key_id.clone();
    let (code, out, err) = ctl(&app, TOKEN, &["lookup", &link.url]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("presignctl revoke --key {key} --reason")),
        "{out}"
    );

    let rotate = [
        "rotate", "--signer", "default", "--mode", "graceful", "--reason", "r", "--yes", "--wait",
    ];
    let (code, out, err) = ctl(&app, TOKEN, &rotate).await;
    assert_eq!(code, 0, "{err}");
    for step in ["create_key", "verify_key", "activate_key"] {
        assert!(out.contains(&format!("step {step}")), "{out}");
    }
    let revoke = [
        "revoke", "--key", &key, "--reason", "leak", "--yes", "--wait",
    ];
    let (code, out, err) = ctl(&app, TOKEN, &revoke).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("step deactivate_old_key") && out.contains("SUCCEEDED"),
        "{out}"
    );
    assert_eq!(try_link(&app.http, &link).await, StatusCode::FORBIDDEN);

    // Refused: the key is dead already; a caller who is no admin.
    let (code, _, err) = ctl(&app, TOKEN, &revoke).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("inactive"), "{err}");
    let (code, _, err) = ctl(&app, TOKEN_B, &revoke).await;
    assert_eq!(code, 4, "{err}");

    // Failed: the backend refuses to deactivate a key it no longer knows.
    let (code, _, err) = ctl(&app, TOKEN, &rotate).await;
    assert_eq!(code, 0, "{err}");
    let retired: String =
        sqlx::query_scalar("SELECT key_id FROM signing_keys WHERE state = 'retired'")
            .fetch_one(&pool)
            .await
            .unwrap();
    garage_backend()
        .delete_key("default", &retired)
        .await
        .unwrap();
    let (code, out, err) = ctl(
        &app,
        TOKEN,
        &["revoke", "--key", &retired, "--reason", "leak", "--yes"],
    )
    .await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("FAILED") && err.contains(&format!("revoke --key {retired}")),
        "{err}"
    );

    // Still running: the admin API is down.
    let addr = proxy.stop().await;
    let (code, out, err) = ctl(
        &app,
        TOKEN,
        &[
            "rotate",
            "--signer",
            "default",
            "--mode",
            "revoke",
            "--reason",
            "r",
            "--yes",
            "--wait",
            "--timeout-secs",
            "2",
        ],
    )
    .await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("retrying: create_key"), "{out}");
    assert!(err.contains("still RUNNING"), "{err}");
    let _back = Proxy::serve(tokio::net::TcpListener::bind(addr).await.unwrap(), target);

    // Unreachable: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (code, _, err) = presignctl_at(&endpoint, TOKEN, &revoke).await;
    assert_eq!(code, 5, "{err}");
}

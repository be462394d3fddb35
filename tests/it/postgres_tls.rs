//! PostgreSQL over TLS, with the options libpq users know in DATABASE_URL's query.
//! The dev stack's PostgreSQL serves a certificate for `localhost` only, issued by
//! its dev CA (`PRESIGND_DEV_PG_CA`): verify-full to localhost passes, to
//! 127.0.0.1 it is the wrong host name. A refused certificate stops `presignd
//! migrate` at once and keeps `serve` NOT_SERVING, both naming the cause.

use crate::helpers::*;
use presignd::health::NOT_READY_METADATA;
use presignd::proto::Method;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::{Duration, Instant};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// This test's database on `host`, with `query` (sslmode...) and an
/// application_name naming the sessions of this URL.
fn url(pool: &PgPool, host: &str, query: &[(&str, &str)]) -> (String, String) {
    let mut url = url::Url::parse(&database_url(pool)).unwrap();
    url.set_host(Some(host)).unwrap();
    let app_name = format!("presignd-it-{}", uuid::Uuid::now_v7().simple());
    url.query_pairs_mut()
        .extend_pairs(query)
        .append_pair("application_name", &app_name);
    (url.to_string(), app_name)
}

fn dev_ca() -> String {
    env("PRESIGND_DEV_PG_CA")
}

/// Whether a session made from `url` is encrypted, as PostgreSQL sees it.
async fn session_is_tls(url: &str) -> bool {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("a pool on the same URL connects");
    let ssl = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    ssl
}

/// The server's own sessions (by application_name): how many, and whether all
/// are encrypted.
async fn server_sessions(pool: &PgPool, app_name: &str) -> (i64, bool) {
    sqlx::query_as(
        "SELECT count(*), coalesce(bool_and(s.ssl), false)
         FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid
         WHERE a.application_name = $1",
    )
    .bind(app_name)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Starts presignd on `url`, waits until SERVING and issues one link, which
/// is recorded; returns the server (keep it: its sessions stay open).
async fn serves_and_issues(pool: &PgPool, url: &str) -> TestApp {
    let db: PgConnectOptions = url.parse().unwrap();
    let mut app = spawn_app_with(test_config(&[]), db).await;
    app.wait_for(ServingStatus::Serving).await;
    let link = app
        .issue(link_request(&app.bucket.clone(), "tls/k", Method::Get, 60))
        .await
        .expect("IssueLink over a TLS registry");
    let id = uuid::Uuid::parse_str(&link.link.unwrap().id).unwrap();
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM links WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(recorded, 1, "the link is recorded");
    app
}

#[sqlx::test]
async fn verify_full_with_the_servers_ca_serves_over_tls(pool: PgPool) {
    let ca = dev_ca();
    let (url, app_name) = url(
        &pool,
        "localhost",
        &[("sslmode", "verify-full"), ("sslrootcert", &ca)],
    );
    let _app = serves_and_issues(&pool, &url).await;
    assert!(session_is_tls(&url).await, "verify-full is TLS");
    let (n, all_tls) = server_sessions(&pool, &app_name).await;
    assert!(
        n >= 1 && all_tls,
        "presignd's own sessions: {n}, all TLS: {all_tls}"
    );
}

#[sqlx::test]
async fn require_encrypts_without_checking_the_certificate(pool: PgPool) {
    // 127.0.0.1 is not the certificate's name, and no CA is given: require
    // checks neither, and still encrypts.
    let (url, app_name) = url(&pool, "127.0.0.1", &[("sslmode", "require")]);
    let _app = serves_and_issues(&pool, &url).await;
    assert!(session_is_tls(&url).await, "require is TLS");
    let (n, all_tls) = server_sessions(&pool, &app_name).await;
    assert!(
        n >= 1 && all_tls,
        "presignd's own sessions: {n}, all TLS: {all_tls}"
    );
}

#[sqlx::test]
async fn disable_connects_in_clear(pool: PgPool) {
    let (url, app_name) = url(&pool, "127.0.0.1", &[("sslmode", "disable")]);
    let _app = serves_and_issues(&pool, &url).await;
    assert!(!session_is_tls(&url).await, "disable is not TLS");
    let (n, any_tls) = server_sessions(&pool, &app_name).await;
    assert!(
        n >= 1 && !any_tls,
        "presignd's own sessions: {n}, TLS: {any_tls}"
    );
}

/// `presignd migrate` on `url`: it must fail at once (not after the 30 s acquire
/// timeout) and say `cause`; returns its stderr.
async fn migrate_refused(url: &str, cause: &[&str]) -> String {
    let started = Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_presignd"))
        .args([
            "migrate",
            "--database-url",
            url,
            "--db-acquire-timeout-secs=30",
        ])
        .env("PRESIGND_LOG_FORMAT", "text")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "migrate must fail: {stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "migrate took {:?}: a refused certificate is not retried",
        started.elapsed()
    );
    for word in cause {
        assert!(stderr.contains(word), "{word:?} missing from: {stderr}");
    }
    assert!(
        !stderr.contains("presignd-dev"),
        "the password leaked: {stderr}"
    );
    stderr
}

/// The health answer's status and not-ready reason, polled until the reason
/// names every word of `cause` (10 s at most).
async fn not_serving_because(app: &TestApp, cause: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = HealthClient::new(app.channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health answers");
        let reason = response
            .metadata()
            .get(NOT_READY_METADATA)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert_eq!(
            response.into_inner().status,
            ServingStatus::NotServing as i32,
            "a refused registry certificate must keep the server NOT_SERVING"
        );
        if cause.iter().all(|w| reason.contains(w)) {
            return reason;
        }
        assert!(
            Instant::now() < deadline,
            "the not-ready reason does not name {cause:?}: {reason}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test]
async fn a_ca_that_did_not_sign_the_servers_certificate_is_refused_naming_the_cause(pool: PgPool) {
    let dir = crate::pki::temp_dir();
    let wrong_ca = dir.join("wrong-ca.pem");
    std::fs::write(&wrong_ca, crate::pki::Ca::new("not the PostgreSQL CA").pem).unwrap();
    let (url, _) = url(
        &pool,
        "localhost",
        &[
            ("sslmode", "verify-full"),
            ("sslrootcert", wrong_ca.to_str().unwrap()),
        ],
    );
    let cause = ["invalid peer certificate", "UnknownIssuer"];
    migrate_refused(&url, &cause).await;
    let app = spawn_app_with(test_config(&[]), url.parse().unwrap()).await;
    not_serving_because(&app, &cause).await;
}

#[sqlx::test]
async fn a_host_name_the_certificate_does_not_name_is_refused_naming_the_cause(pool: PgPool) {
    let ca = dev_ca();
    let (url, _) = url(
        &pool,
        "127.0.0.1",
        &[("sslmode", "verify-full"), ("sslrootcert", &ca)],
    );
    let cause = ["certificate not valid for name", "127.0.0.1", "localhost"];
    migrate_refused(&url, &cause).await;
    let app = spawn_app_with(test_config(&[]), url.parse().unwrap()).await;
    not_serving_because(&app, &cause).await;
}

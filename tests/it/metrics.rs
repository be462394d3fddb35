//! /metrics over HTTP: the issued-links counter, IssueLink's latency histogram,
//! the outstanding-links gauge, the revocations counter (wherever a revocation
//! finishes), denials by cause, build and process metrics, and the state gauges
//! (ready, revocations running, signers without an active key). The recorder is
//! one per process: each test runs a signer of its own (no other test touches its
//! label values) and asserts exact values on it; a label-free gauge is asserted
//! by a test alone in its process (nextest runs one process per test).

use crate::helpers::*;
use presignd::proto::{self, Method, RevocationState, RotationMode};
use presignd::revocation::{RotateRequest, Rotation};
use sqlx::PgPool;
use std::collections::BTreeSet;

/// A server whose only signer is `signer`: this test's own label value. Its
/// gauge refresher waits an hour: the tests run the refresh step themselves.
async fn spawn_app_signing_as(pool: &PgPool, signer: &str) -> TestApp {
    let app = spawn_app_with(
        test_config(&[
            &format!("--signers={signer}"),
            "--metrics-refresh-secs=3600",
        ]),
        (*pool.connect_options()).clone(),
    )
    .await;
    app.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    app
}

pub(crate) async fn scrape(app: &TestApp) -> String {
    let r = app
        .http
        .get(format!("http://127.0.0.1:{}/metrics", app.metrics_port))
        .send()
        .await
        .expect("the metrics listener answers");
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
        "Prometheus text format"
    );
    r.text().await.unwrap()
}

/// The value of the sample `name` carrying every label in `labels` (0 if absent).
pub(crate) fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[sqlx::test]
async fn issuing_links_counts_each_under_its_method_and_signer(pool: PgPool) {
    let mut app = spawn_app_signing_as(&pool, "metrics-issued").await;
    let get = [("method", "GET"), ("signer", "metrics-issued")];
    let put = [("method", "PUT"), ("signer", "metrics-issued")];
    let text = scrape(&app).await;
    let (get_before, put_before) = (
        sample(&text, "presignd_links_issued_total", &get),
        sample(&text, "presignd_links_issued_total", &put),
    );
    let latency_before = sample(
        &text,
        "presignd_issue_link_duration_seconds_count",
        &[("outcome", "ok")],
    );
    let (commits_before, committed_before) = (
        sample(&text, "presignd_link_commit_duration_seconds_count", &[]),
        sample(&text, "presignd_link_commit_links_sum", &[]),
    );

    let bucket = app.bucket.clone();
    for method in [Method::Get, Method::Get, Method::Put] {
        app.issue(link_request(&bucket, &unique_key("metrics"), method, 60))
            .await
            .unwrap();
    }
    // Refused by validation: counted nowhere under this signer.
    app.issue(link_request(&bucket, "", Method::Get, 60))
        .await
        .unwrap_err();
    let text = scrape(&app).await;
    assert_eq!(
        sample(&text, "presignd_links_issued_total", &get) - get_before,
        2.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "presignd_links_issued_total", &put) - put_before,
        1.0,
        "{text}"
    );
    // The histogram is labelled by outcome only, which other tests share: its
    // count can only be said to have grown by at least ours.
    assert!(
        sample(
            &text,
            "presignd_issue_link_duration_seconds_count",
            &[("outcome", "ok")]
        ) >= latency_before + 3.0
    );
    assert!(
        text.contains("presignd_issue_link_duration_seconds_bucket{outcome=\"ok\",le=\"0.003\"}"),
        "a histogram with buckets, not a summary: {text}"
    );
    assert!(text.contains("# TYPE presignd_issue_link_duration_seconds histogram"));
    // The group commits that carried them: one at least (each link here was
    // awaited before the next was asked for), and their links among those
    // the commits carried.
    assert!(
        sample(&text, "presignd_link_commit_duration_seconds_count", &[]) >= commits_before + 1.0
    );
    assert!(sample(&text, "presignd_link_commit_links_sum", &[]) >= committed_before + 3.0);
    assert!(
        text.contains("presignd_link_commit_links_bucket{le=\"16\"}"),
        "links a commit in buckets: {text}"
    );
    // Buckets are labels only of the preflight's gauge, where they come from
    // the configuration (bounded); never of a per-request series.
    assert!(
        !text
            .lines()
            .filter(|l| !l.starts_with("presignd_bucket_ready"))
            .any(|l| l.contains(&bucket)),
        "no object keys or buckets in labels"
    );
}

/// Each registry pool's connections, in use and idle, and its maximum: a
/// server that turned SERVING has its minimum open (by default all of
/// --db-max-connections); the read RPCs' pool opens on demand.
#[sqlx::test]
async fn the_registry_pools_connections_are_exported(pool: PgPool) {
    let config = test_config(&[
        "--db-min-connections",
        "--db-max-connections=5",
        "--read-db-max-connections=3",
    ]);
    let app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let text = scrape(&app).await;
    let open = |pool| {
        ["idle", "in_use"]
            .iter()
            .map(|state| {
                sample(
                    &text,
                    "presignd_registry_connections",
                    &[("pool", pool), ("state", state)],
                )
            })
            .sum::<f64>()
    };
    assert_eq!(open("primary"), 5.0, "{text}");
    let max = |pool| {
        sample(
            &text,
            "presignd_registry_connections_max",
            &[("pool", pool)],
        )
    };
    assert_eq!((max("primary"), max("read")), (5.0, 3.0), "{text}");
    // The key-change listener holds one of the primary's for good.
    assert!(
        sample(
            &text,
            "presignd_registry_connections",
            &[("pool", "primary"), ("state", "in_use")]
        ) >= 1.0,
        "{text}"
    );
    assert!(
        !text.contains("pool=\"replica\""),
        "no replica configured, no replica series: {text}"
    );
}

#[sqlx::test]
async fn the_outstanding_links_gauge_follows_the_registry(pool: PgPool) {
    let mut app = spawn_app_signing_as(&pool, "metrics-gauge").await;
    let bucket = app.bucket.clone();
    let mut old_key = String::new();
    for _ in 0..3 {
        old_key = app
            .issue(link_request(
                &bucket,
                &unique_key("gauge"),
                Method::Get,
                600,
            ))
            .await
            .unwrap()
            .link
            .unwrap()
            .key_id;
    }
    // One refresh step, as the server's refresher runs it every
    // --metrics-refresh-secs (that loop writes the same values, if it runs).
    let mut reported = BTreeSet::new();
    presignd::metrics::refresh_outstanding(&pool, &mut reported)
        .await
        .unwrap();
    let gauge = |text: &str, key: &str| {
        sample(
            text,
            "presignd_outstanding_links",
            &[("signer", "metrics-gauge"), ("key_id", key)],
        )
    };
    let text = scrape(&app).await;
    assert_eq!(gauge(&text, &old_key), 3.0, "{text}");

    // REVOKE kills the key's links: the next step reports it at 0, and the new
    // key with its one link.
    let report = app
        .rotate(rotate_req("metrics-gauge", RotationMode::Revoke, ""))
        .await;
    app.issue(link_request(
        &bucket,
        &unique_key("gauge"),
        Method::Get,
        600,
    ))
    .await
    .unwrap();
    presignd::metrics::refresh_outstanding(&pool, &mut reported)
        .await
        .unwrap();
    let text = scrape(&app).await;
    assert_eq!(gauge(&text, &old_key), 0.0, "{text}");
    assert_eq!(gauge(&text, &report.new_key_id), 1.0, "{text}");
}

#[sqlx::test]
async fn a_rotation_counts_once_under_its_mode_outcome_and_signer(pool: PgPool) {
    let mut app = spawn_app_signing_as(&pool, "metrics-rotated").await;
    let labels = |mode| {
        [
            ("mode", mode),
            ("outcome", "succeeded"),
            ("signer", "metrics-rotated"),
        ]
    };
    let text = scrape(&app).await;
    let graceful_before = sample(&text, "presignd_revocations_total", &labels("graceful"));
    let revoke_before = sample(&text, "presignd_revocations_total", &labels("revoke"));
    let report = app
        .rotate(rotate_req("metrics-rotated", RotationMode::Graceful, ""))
        .await;
    assert_eq!(report.state, RevocationState::Succeeded as i32);
    // A dry run revokes nothing and counts nothing.
    let mut dry_run = rotate_req("metrics-rotated", RotationMode::Revoke, "");
    dry_run.dry_run = true;
    app.rotate(dry_run).await;
    let text = scrape(&app).await;
    assert_eq!(
        sample(&text, "presignd_revocations_total", &labels("graceful")) - graceful_before,
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "presignd_revocations_total", &labels("revoke")) - revoke_before,
        0.0,
        "{text}"
    );
}

#[sqlx::test]
async fn refusals_are_counted_by_cause(pool: PgPool) {
    let mut app = spawn_app_with(
        test_config(&["--issue-rate-per-sec=1", "--issue-burst=1"]),
        (*pool.connect_options()).clone(),
    )
    .await;
    app.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let denials = |text: &str, cause| sample(text, "presignd_denials_total", &[("cause", cause)]);
    let before = scrape(&app).await;

    // Authentication: no token, then an unknown one.
    let mut anonymous =
        presignd::proto::link_service_client::LinkServiceClient::new(app.channel.clone());
    let bucket = app.bucket.clone();
    for token in [None, Some("Bearer not-a-token")] {
        let mut req = tonic::Request::new(link_request(&bucket, "k", Method::Get, 60));
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", t.parse().unwrap());
        }
        let s = anonymous.issue_link(req).await.unwrap_err();
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
    }
    // Policy: a plain caller on KeyService, and reading another caller's links.
    let mut plain_keys = presignd::proto::key_service_client::KeyServiceClient::with_interceptor(
        app.channel.clone(),
        with_token_b as Auth,
    );
    let s = plain_keys
        .list_signing_keys(proto::ListSigningKeysRequest::default())
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::PermissionDenied);
    let mut plain_links = presignd::proto::link_service_client::LinkServiceClient::with_interceptor(
        app.channel.clone(),
        with_token_b as Auth,
    );
    let s = plain_links
        .list_links(proto::ListLinksRequest {
            filter: Some(proto::LinkFilter {
                caller: CALLER.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    // Rate limit: burst 1, so the second call in the same instant is refused.
    app.issue(link_request(
        &bucket,
        &unique_key("denials"),
        Method::Get,
        60,
    ))
    .await
    .unwrap();
    let s = app
        .issue(link_request(
            &bucket,
            &unique_key("denials"),
            Method::Get,
            60,
        ))
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::ResourceExhausted);

    let after = scrape(&app).await;
    for (cause, n) in [
        ("authentication", 2.0),
        ("policy", 2.0),
        ("rate_limit", 1.0),
    ] {
        assert_eq!(
            denials(&after, cause) - denials(&before, cause),
            n,
            "{cause}: {after}"
        );
    }
}

#[sqlx::test]
async fn the_build_and_the_process_are_described(pool: PgPool) {
    let app = spawn_app(&pool).await;
    let text = scrape(&app).await;
    let revision = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_owned());
    let revision = std::env::var("BUILD_REVISION")
        .ok()
        .or(revision)
        .unwrap_or_else(|| "unknown".into());
    let build = format!(
        "presignd_build_info{{version=\"{}\",revision=\"{revision}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.lines().any(|l| l == build), "{build} in {text}");
    let value = |name| sample(&text, name, &[]);
    assert!(value("process_resident_memory_bytes") > 1e6, "{text}");
    assert!(value("process_open_fds") >= 3.0, "{text}");
    assert!(
        value("process_max_fds") >= value("process_open_fds"),
        "{text}"
    );
    assert!(value("process_cpu_seconds_total") > 0.0, "{text}");
    assert!(value("process_start_time_seconds") > 1.6e9, "{text}");
}

#[sqlx::test]
async fn the_ready_gauge_follows_readiness(pool: PgPool) {
    let options = (*pool.connect_options()).clone();
    let target: std::net::SocketAddr = format!("{}:{}", options.get_host(), options.get_port())
        .parse()
        .unwrap();
    let proxy = Proxy::start(target).await;
    let app = spawn_app_with(test_config(&[]), options.port(proxy.addr.port())).await;
    use tonic_health::pb::health_check_response::ServingStatus;
    app.wait_for(ServingStatus::Serving).await;
    assert_eq!(sample(&scrape(&app).await, "presignd_ready", &[]), 1.0);
    let _addr = proxy.stop().await;
    app.wait_for(ServingStatus::NotServing).await;
    assert_eq!(sample(&scrape(&app).await, "presignd_ready", &[]), 0.0);
}

/// A signer's rotation recorded but not run: the maintenance loop's work.
fn recorded_only(signer: &str, mode: presignd::domain::RotationMode) -> RotateRequest {
    RotateRequest {
        signer: presignd::domain::SignerName::parse(signer).unwrap(),
        mode,
        reason: "integration test".into(),
        expected_key_id: None,
        dry_run: false,
        requested_by: CALLER.into(),
        quarantine_link_ids: Vec::new(),
    }
}

#[sqlx::test]
async fn state_gauges_show_a_stuck_revocation_and_a_signer_without_a_key(pool: PgPool) {
    let app = spawn_app_signing_as(&pool, "metrics-state").await;
    let gauges = |text: &str| {
        [
            "presignd_revocations_running",
            "presignd_revocation_oldest_running_age_seconds",
            "presignd_signers_without_active_key",
        ]
        .map(|name| sample(text, name, &[]))
    };
    presignd::metrics::refresh_state(&pool).await.unwrap();
    assert_eq!(gauges(&scrape(&app).await), [0.0, 0.0, 0.0]);

    // A revocation recorded an hour ago and never driven; a signer with no key.
    let Rotation::Ran(row) = app
        .revocations
        .start(recorded_only(
            "metrics-state",
            presignd::domain::RotationMode::Graceful,
        ))
        .await
        .unwrap()
    else {
        panic!("not a dry run")
    };
    sqlx::query("UPDATE revocations SET created_at = now() - interval '1 hour' WHERE id = $1")
        .bind(row.id)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO signers (name, backend) VALUES ('metrics-keyless', 'garage')")
        .execute(&pool)
        .await
        .unwrap();
    presignd::metrics::refresh_state(&pool).await.unwrap();
    let [running, age, keyless] = gauges(&scrape(&app).await);
    assert_eq!((running, keyless), (1.0, 1.0));
    assert!((3600.0..3700.0).contains(&age), "{age}");

    // Finished: nothing running any more.
    app.revocations.resume_all().await.unwrap();
    presignd::metrics::refresh_state(&pool).await.unwrap();
    assert_eq!(gauges(&scrape(&app).await)[..2], [0.0, 0.0]);
}

#[sqlx::test]
async fn a_revocation_the_maintenance_loop_finishes_is_counted_once(pool: PgPool) {
    let app = spawn_app_signing_as(&pool, "metrics-resumed").await;
    let labels = [
        ("mode", "revoke"),
        ("outcome", "succeeded"),
        ("signer", "metrics-resumed"),
    ];
    let before = sample(&scrape(&app).await, "presignd_revocations_total", &labels);
    app.revocations
        .start(recorded_only(
            "metrics-resumed",
            presignd::domain::RotationMode::Revoke,
        ))
        .await
        .unwrap();
    // What the maintenance loop (and startup) runs: it finishes the revocation.
    assert!(app.revocations.resume_all().await.unwrap().is_empty());
    // Resuming again finds nothing to finish and counts nothing more.
    assert!(app.revocations.resume_all().await.unwrap().is_empty());
    let after = sample(&scrape(&app).await, "presignd_revocations_total", &labels);
    assert_eq!(after - before, 1.0);
}

//! /metrics over HTTP: the issued-links counter, IssueLink's latency histogram,
//! the outstanding-links gauge and the revocations counter. The recorder is one
//! per process and tests run side by side, so each test runs a signer of its own
//! (no other test touches its label values) and asserts exact values on it.

use crate::helpers::*;
use presignd::proto::{Method, RevocationState, RotationMode};
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

async fn scrape(app: &TestApp) -> String {
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
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
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
    assert!(
        !text.contains(&bucket),
        "no object keys or buckets in labels"
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

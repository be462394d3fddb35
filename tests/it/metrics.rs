//! /metrics over HTTP: the issued-links counter moves, IssueLink's latency is a
//! histogram, the outstanding-links gauge follows the registry. The recorder is
//! one per process, so counters are compared before and after, never absolutely.

use crate::helpers::*;
use presignd::proto::Method;
use sqlx::PgPool;
use std::time::{Duration, Instant};

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
async fn issuing_a_link_moves_the_counter_and_records_its_latency(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let get = [("method", "GET"), ("signer", "default")];
    let before = sample(&scrape(&app).await, "presignd_links_issued_total", &get);
    let latency_before = sample(
        &scrape(&app).await,
        "presignd_issue_link_duration_seconds_count",
        &[("outcome", "ok")],
    );

    let bucket = app.bucket.clone();
    for _ in 0..2 {
        app.issue(link_request(
            &bucket,
            &unique_key("metrics"),
            Method::Get,
            60,
        ))
        .await
        .unwrap();
    }
    let text = scrape(&app).await;
    assert!(
        sample(&text, "presignd_links_issued_total", &get) >= before + 2.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            "presignd_issue_link_duration_seconds_count",
            &[("outcome", "ok")]
        ) >= latency_before + 2.0
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
    let mut app = spawn_app_with(
        test_config(&["--metrics-refresh-secs=1"]),
        (*pool.connect_options()).clone(),
    )
    .await;
    app.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let bucket = app.bucket.clone();
    let mut key_id = String::new();
    for _ in 0..3 {
        key_id = app
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
    let labels = [("signer", "default"), ("key_id", key_id.as_str())];
    // The gauge is recomputed every second: poll until it catches up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(&app).await;
        if sample(&text, "presignd_outstanding_links", &labels) == 3.0 {
            break;
        }
        assert!(Instant::now() < deadline, "gauge never reached 3: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[sqlx::test]
async fn a_rotation_moves_the_revocations_counter_by_mode_and_outcome(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let labels = [("mode", "graceful"), ("outcome", "succeeded")];
    let before = sample(&scrape(&app).await, "presignd_revocations_total", &labels);
    let report = app
        .rotate(presignd::proto::RotateKeyRequest {
            signer: "default".into(),
            mode: presignd::proto::RotationMode::Graceful as i32,
            reason: "metrics test".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        report.state,
        presignd::proto::RevocationState::Succeeded as i32
    );
    let text = scrape(&app).await;
    assert!(
        sample(&text, "presignd_revocations_total", &labels) >= before + 1.0,
        "{text}"
    );
}

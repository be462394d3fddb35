//! Per-caller rate limits on IssueLink: a caller past its burst gets
//! RESOURCE_EXHAUSTED naming the limit; other callers are not affected; the
//! default comes from the flags, the policy overrides it per caller.

use crate::helpers::*;
use presignd::proto::{Method, link_service_client::LinkServiceClient};
use sqlx::PgPool;
use tonic::Code;

const POLICY: &str = r#"
[callers.it-caller]
role = "admin"
buckets = ["*"]
methods = ["*"]
issue_rate_per_sec = 1000

[callers.it-caller-b]
buckets = ["*"]
methods = ["*"]
issue_rate_per_sec = 1
issue_burst = 3
"#;

#[sqlx::test]
async fn a_caller_past_its_burst_is_refused_naming_its_limit(pool: PgPool) {
    let (config, _) = policy_config(POLICY, &["--issue-rate-per-sec=2"]);
    let mut app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let bucket = app.bucket.clone();
    let mut b = LinkServiceClient::with_interceptor(app.channel.clone(), with_token_b as Auth);
    for _ in 0..3 {
        b.issue_link(link_request(&bucket, "k", Method::Get, 60))
            .await
            .expect("within the burst");
    }
    let st = b
        .issue_link(link_request(&bucket, "k", Method::Get, 60))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::ResourceExhausted);
    assert_eq!(
        st.message(),
        "rate limit: caller it-caller-b may issue 1 links per second (burst 3); retry later"
    );
    // Even a malformed request counts: the limit comes before anything else.
    let st = b
        .issue_link(link_request(&bucket, "", Method::Get, 60))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::ResourceExhausted);
    // The admin has its own, larger bucket (its policy overrides the flag's 2/s).
    for _ in 0..10 {
        app.issue(link_request(&bucket, "k", Method::Get, 60))
            .await
            .expect("another caller is not limited by b's bucket");
    }
    // A token comes back after a second of real time (the bucket's clock):
    // the one sleep here that cannot be a step.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    b.issue_link(link_request(&bucket, "k", Method::Get, 60))
        .await
        .expect("refilled");
}

#[sqlx::test]
async fn without_a_policy_the_flag_limits_every_caller(pool: PgPool) {
    let mut app = spawn_app_with(
        test_config(&["--issue-rate-per-sec=1", "--issue-burst=2"]),
        (*pool.connect_options()).clone(),
    )
    .await;
    app.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let bucket = app.bucket.clone();
    for _ in 0..2 {
        app.issue(link_request(&bucket, "k", Method::Get, 60))
            .await
            .unwrap();
    }
    let st = app
        .issue(link_request(&bucket, "k", Method::Get, 60))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::ResourceExhausted);
    assert!(st.message().contains("burst 2"), "{st:?}");
}

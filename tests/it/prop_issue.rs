//! Generated IssueLink requests (the generator of src/api/prop_tests.rs, which
//! runs 10,000 cases against the validation and policy functions) sent through
//! a real server: never INTERNAL, never a dropped connection; every refusal is
//! INVALID_ARGUMENT or PERMISSION_DENIED naming the field or the rule; every
//! link granted lies inside the caller's rules and was recorded.

use crate::helpers::*;
use presignd::policy::key_has_dot_segment;
use presignd::proto;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use sqlx::PgPool;
use tonic::Code;

mod strategy {
    use presignd::proto;
    include!("../../src/api/request_strategy.rs");
}

const CASES: usize = 1_000;

const POLICY: &str = r#"
[callers.it-caller]
role = "admin"
buckets = ["*"]
methods = ["*"]

[callers.it-caller-b]
signer = "team-a"
buckets = ["uploads", "reports"]
prefixes = ["team-a/", "shared/x"]
methods = ["GET", "HEAD"]
max_ttl_secs = 3600
"#;

const FIELDS: [&str; 8] = [
    "bucket:",
    "object_key:",
    "method:",
    "ttl:",
    "labels:",
    "content_type:",
    "response_content_disposition:",
    "policy: caller it-caller-b may not",
];

#[sqlx::test]
async fn generated_requests_through_the_server_are_granted_or_refused_precisely(pool: PgPool) {
    // The policy's buckets exist, so the preflight proves them and a request
    // the policy grants gets its link.
    for bucket in ["uploads", "reports"] {
        ensure_garage_bucket(bucket).await;
    }
    let (config, _) = policy_config(POLICY, &["--signers=default,team-a"]);
    let app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let mut client = presignd::proto::link_service_client::LinkServiceClient::with_interceptor(
        app.channel.clone(),
        with_token_b as Auth,
    );
    let mut runner = TestRunner::default();
    let (mut granted, mut refused) = (0i64, 0);
    for i in 0..CASES {
        let req = strategy::request().new_tree(&mut runner).unwrap().current();
        match client.issue_link(req.clone()).await {
            Ok(resp) => {
                granted += 1;
                let link = resp.into_inner().link.unwrap();
                let key = link.object_key.as_str();
                assert!(
                    ["uploads", "reports"].contains(&link.bucket.as_str())
                        && (key.starts_with("team-a/") || key.starts_with("shared/x"))
                        && !key_has_dot_segment(key)
                        && link.signer == "team-a"
                        && matches!(
                            proto::Method::try_from(link.method),
                            Ok(proto::Method::Get | proto::Method::Head)
                        )
                        && link.expires_at.unwrap().seconds - link.issued_at.unwrap().seconds
                            <= 3600,
                    "case {i}: granted outside the policy: {req:?} -> {link:?}"
                );
            }
            Err(st) => {
                refused += 1;
                assert!(
                    matches!(st.code(), Code::InvalidArgument | Code::PermissionDenied)
                        && FIELDS.iter().any(|f| st.message().starts_with(f)),
                    "case {i}: {req:?} -> {st:?}"
                );
            }
        }
    }
    assert!(
        granted > 20 && refused > 200,
        "{granted} granted, {refused} refused"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM links")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        rows, granted,
        "every granted link, and only those, recorded"
    );
    assert_eq!(
        app.health().await,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

//! The google.rpc richer error model, read by a client (tonic-types'
//! `StatusExt`): INVALID_ARGUMENT carries BadRequest field violations,
//! PERMISSION_DENIED and FAILED_PRECONDITION an ErrorInfo (reason, domain
//! `presignd`, metadata), UNAVAILABLE and RESOURCE_EXHAUSTED a RetryInfo. The
//! messages are the ones callers already read.

use crate::helpers::*;
use presignd::proto::{self, Method, RotationMode, link_service_client::LinkServiceClient};
use sqlx::PgPool;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;

/// (field, description) of each violation in the status's BadRequest.
fn violations(s: &tonic::Status) -> Vec<(String, String)> {
    let details = s.get_error_details();
    let bad = details.bad_request().expect("a BadRequest detail");
    bad.field_violations
        .iter()
        .map(|v| (v.field.clone(), v.description.clone()))
        .collect()
}

/// (reason, domain, metadata) of the status's ErrorInfo.
fn error_info(s: &tonic::Status) -> (String, String, HashMap<String, String>) {
    let details = s.get_error_details();
    let info = details.error_info().expect("an ErrorInfo detail");
    (
        info.reason.clone(),
        info.domain.clone(),
        info.metadata.clone(),
    )
}

fn retry_delay(s: &tonic::Status) -> Duration {
    let details = s.get_error_details();
    details
        .retry_info()
        .expect("a RetryInfo detail")
        .retry_delay
        .expect("a delay")
}

#[sqlx::test]
async fn a_bad_field_is_named_in_a_bad_request_violation(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let s = app
        .issue(link_request(&bucket, "k", Method::Get, 8 * 24 * 3600))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().starts_with("ttl: "), "message unchanged: {s:?}");
    let v = violations(&s);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].0, "ttl");
    assert_eq!(format!("ttl: {}", v[0].1), s.message());

    let s = app
        .links
        .list_links(proto::ListLinksRequest {
            filter: Some(proto::LinkFilter {
                bucket: "Not A Bucket".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert_eq!(violations(&s)[0].0, "filter.bucket", "{s:?}");

    // An unset oneof is a field too.
    let s = app
        .links
        .verify_link(proto::VerifyLinkRequest { link: None })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert_eq!(s.message(), "link: set link_id or url, the link to verify");
    assert_eq!(violations(&s)[0].0, "link", "{s:?}");
}

#[sqlx::test]
async fn refusals_carry_an_error_info_naming_the_rule(pool: PgPool) {
    let bs = buckets();
    let (config, _) = policy_config(&crate::authz::policy(&bs[0], &bs[1]), &[]);
    let app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(ServingStatus::Serving).await;
    let mut b = LinkServiceClient::with_interceptor(app.channel.clone(), with_token_b as Auth);

    // it-caller-b may use bucket 0 only.
    let s = b
        .issue_link(link_request(&bs[1], "team-a/x", Method::Get, 60))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    assert!(
        s.message()
            .starts_with("policy: caller it-caller-b may not use bucket"),
        "{s:?}"
    );
    let (reason, domain, metadata) = error_info(&s);
    assert_eq!(
        (reason.as_str(), domain.as_str()),
        ("POLICY_DENIED", "presignd")
    );
    assert_eq!(metadata["rule"], "buckets");
    // ... and no TTL over 600 s.
    let s = b
        .issue_link(link_request(&bs[0], "team-a/x", Method::Get, 601))
        .await
        .unwrap_err();
    assert_eq!(error_info(&s).2["rule"], "max_ttl_secs", "{s:?}");

    // A plain caller on KeyService.
    let mut keys = proto::key_service_client::KeyServiceClient::with_interceptor(
        app.channel.clone(),
        with_token_b as Auth,
    );
    let s = keys
        .list_signing_keys(proto::ListSigningKeysRequest::default())
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    let (reason, _, metadata) = error_info(&s);
    assert_eq!(reason, "ADMIN_ONLY");
    assert_eq!(metadata["service"], "presignd.v1.KeyService");
}

#[sqlx::test]
async fn a_failed_precondition_names_the_keys_involved(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let s = app
        .keys
        .rotate_key(rotate_req(
            "default",
            RotationMode::Graceful,
            "GKnot-the-active-key",
        ))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(
        s.message()
            .contains("not the expected GKnot-the-active-key"),
        "{s:?}"
    );
    let (reason, domain, metadata) = error_info(&s);
    assert_eq!(
        (reason.as_str(), domain.as_str()),
        ("EXPECTED_KEY_MISMATCH", "presignd")
    );
    assert_eq!(metadata["signer"], "default");
    assert_eq!(metadata["expected_key_id"], "GKnot-the-active-key");
    let active = app
        .issue(link_request(&app.bucket.clone(), "k", Method::Get, 60))
        .await
        .unwrap()
        .link
        .unwrap()
        .key_id;
    assert_eq!(metadata["active_key_id"], active);
}

#[sqlx::test]
async fn a_caller_over_its_rate_is_told_when_to_retry(pool: PgPool) {
    let mut app = spawn_app_with(
        test_config(&["--issue-rate-per-sec=2", "--issue-burst=1"]),
        (*pool.connect_options()).clone(),
    )
    .await;
    app.wait_for(ServingStatus::Serving).await;
    let bucket = app.bucket.clone();
    app.issue(link_request(&bucket, "k", Method::Get, 60))
        .await
        .unwrap();
    let s = app
        .issue(link_request(&bucket, "k", Method::Get, 60))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert!(s.message().starts_with("rate limit: "), "{s:?}");
    assert_eq!(
        retry_delay(&s),
        Duration::from_millis(500),
        "one token every 1/2 s"
    );
}

#[sqlx::test]
async fn a_registry_outage_is_unavailable_with_a_retry_delay(pool: PgPool) {
    let options = (*pool.connect_options()).clone();
    let target: SocketAddr = format!("{}:{}", options.get_host(), options.get_port())
        .parse()
        .unwrap();
    let proxy = Proxy::start(target).await;
    let mut app = spawn_app_with(test_config(&[]), options.port(proxy.addr.port())).await;
    app.wait_for(ServingStatus::Serving).await;
    let _addr = proxy.stop().await;
    let bucket = app.bucket.clone();
    let s = app
        .issue(link_request(&bucket, "k", Method::Get, 60))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(s.message().contains("no link was issued"), "{s:?}");
    assert_eq!(retry_delay(&s), Duration::from_secs(1));
}

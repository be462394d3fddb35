//! The preflight against the dev Garage: a bucket a policy reload adds is
//! granted to the signer's key and serves its links without a restart; a
//! bucket that cannot be granted is refused by IssueLink with
//! FAILED_PRECONDITION naming it (no row recorded), and shows in health's
//! degraded detail, /readyz, the metric and ListSigningKeys; one checked
//! during a store outage is UNAVAILABLE until it is checked again.

use crate::helpers::*;
use presignd::proto::{self, Method};
use sqlx::PgPool;
use std::time::Duration;
use tonic::Code;
use tonic_types::StatusExt;

fn policy(buckets: &[&str]) -> String {
    let list: Vec<String> = buckets.iter().map(|b| format!("{b:?}")).collect();
    format!(
        "[callers.{CALLER}]\nrole = \"admin\"\nbuckets = [{}]\nmethods = [\"*\"]\n",
        list.join(", ")
    )
}

/// A bucket of its own on Garage, made by the test.
async fn new_garage_bucket() -> String {
    let name = format!("pf-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    garage_admin(
        "CreateBucket",
        &[],
        Some(serde_json::json!({ "globalAlias": name })),
    )
    .await;
    name
}

/// The preflight of the signer's active key for `bucket`, per ListSigningKeys.
async fn bucket_status(app: &mut TestApp, bucket: &str) -> Option<proto::BucketStatus> {
    let signers = app
        .keys
        .list_signing_keys(proto::ListSigningKeysRequest::default())
        .await
        .unwrap()
        .into_inner()
        .signers;
    signers
        .into_iter()
        .flat_map(|s| s.keys)
        .filter(|k| k.state == proto::KeyState::Active as i32)
        .flat_map(|k| k.buckets)
        .find(|b| b.bucket == bucket)
}

async fn link_rows(pool: &PgPool, bucket: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM links WHERE bucket = $1")
        .bind(bucket)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn a_policy_reload_adding_a_bucket_makes_its_links_work_without_a_restart(pool: PgPool) {
    let b0 = test_bucket();
    let (config, path) = policy_config(&policy(&[&b0]), &[]);
    let mut app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    // Made after the key: only the preflight can grant it.
    let added = new_garage_bucket().await;
    let key = unique_key("reload");
    let s = app
        .issue(link_request(&added, &key, Method::Put, 600))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");

    std::fs::write(&path, policy(&[&b0, &added])).unwrap();
    app.policy.reload().unwrap();
    let mut status = None;
    for _ in 0..100 {
        status = bucket_status(&mut app, &added).await;
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = status.expect("the reload's new bucket was checked within 10 s");
    assert!(status.ready, "{status:?}");
    assert_eq!(status.region, env("GARAGE_REGION"));

    let put = app
        .issue(link_request(&added, &key, Method::Put, 600))
        .await
        .expect("a link for the added bucket");
    let r = send(
        &app.http,
        reqwest::Method::PUT,
        &put,
        Some(b"added".to_vec()),
    )
    .await;
    assert_eq!(r.status(), 200, "Garage serves the PUT");
    let get = app
        .issue(link_request(&added, &key, Method::Get, 600))
        .await
        .unwrap();
    let r = send(&app.http, reqwest::Method::GET, &get, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"added");

    // A rotation's new key is prepared for every bucket before it signs: the
    // first link it signs for the added bucket works at once.
    let old = get.link.unwrap().key_id;
    let rotated = app
        .rotate(rotate_req("default", proto::RotationMode::Revoke, &old))
        .await;
    let get = app
        .issue(link_request(&added, &key, Method::Get, 600))
        .await
        .unwrap();
    assert_eq!(get.link.as_ref().unwrap().key_id, rotated.new_key_id);
    let r = send(&app.http, reqwest::Method::GET, &get, None).await;
    assert_eq!(
        r.status(),
        200,
        "the new key was granted on the added bucket"
    );
}

#[sqlx::test]
async fn a_bucket_that_cannot_be_granted_is_refused_naming_it_and_shows_everywhere(pool: PgPool) {
    let b0 = test_bucket();
    let missing = format!(
        "pf-missing-{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    let (config, _) = policy_config(&policy(&[&b0, &missing]), &[]);
    let mut app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    // One bucket that cannot be used does not hold the others.
    app.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;

    let s = app
        .issue(link_request(&missing, "it/x", Method::Get, 600))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(
        s.message()
            .contains(&format!("bucket {missing} cannot be used")),
        "{}",
        s.message()
    );
    let details = s.get_error_details();
    let info = details.error_info().expect("an ErrorInfo");
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("BUCKET_NOT_READY", "presignd")
    );
    assert_eq!(info.metadata["bucket"], missing);
    assert_eq!(info.metadata["signer"], "default");
    assert!(
        info.metadata["cause"].contains("granting the bucket"),
        "{:?}",
        info.metadata
    );
    assert_eq!(link_rows(&pool, &missing).await, 0, "no row was recorded");

    // A bucket neither --buckets nor the policy names is not prepared at all
    // (the policy refuses it first; the admin's `*` would reach this).
    let ok = app
        .issue(link_request(&b0, "it/x", Method::Get, 600))
        .await
        .expect("the granted bucket still works");
    assert!(ok.url.contains(&format!("/{b0}/")));

    let listed = bucket_status(&mut app, &missing).await.expect("listed");
    assert!(
        !listed.ready && listed.cause.contains("granting"),
        "{listed:?}"
    );
    assert!(bucket_status(&mut app, &b0).await.unwrap().ready);

    let health = tonic_health::pb::health_client::HealthClient::new(app.channel.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    let degraded = health
        .metadata()
        .get(presignd::health::DEGRADED_METADATA)
        .expect("health names the bucket")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        degraded.contains(&format!("bucket {missing} for signer default")),
        "{degraded}"
    );
    let readyz = app
        .http
        .get(format!("http://127.0.0.1:{}/readyz", app.metrics_port))
        .send()
        .await
        .unwrap();
    assert_eq!(readyz.status(), 200);
    assert!(readyz.text().await.unwrap().contains(&missing));

    let metrics = app
        .http
        .get(format!("http://127.0.0.1:{}/metrics", app.metrics_port))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge = |bucket: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("presignd_bucket_ready{")
                    && l.contains("signer=\"default\"")
                    && l.contains(&format!("bucket=\"{bucket}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
    };
    assert_eq!(gauge(&missing).as_deref(), Some("0"), "{metrics}");
    assert_eq!(gauge(&b0).as_deref(), Some("1"), "{metrics}");
}

#[sqlx::test]
async fn a_bucket_outside_the_prepared_ones_gets_no_link(pool: PgPool) {
    // Without a policy file every caller may use any bucket: only --buckets
    // are prepared, so any other is refused before signing.
    let mut app = spawn_app(&pool).await;
    let s = app
        .issue(link_request("not-prepared", "it/x", Method::Get, 600))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    let details = s.get_error_details();
    let info = details.error_info().unwrap();
    assert_eq!(info.reason, "BUCKET_NOT_PREPARED");
    assert_eq!(info.metadata["bucket"], "not-prepared");
    assert_eq!(link_rows(&pool, "not-prepared").await, 0);
}

/// A bucket checked while the S3 endpoint is down (here: added by a policy
/// reload then) met an outage, not a verdict: IssueLink answers UNAVAILABLE
/// (retry shortly), not FAILED_PRECONDITION (which callers do not retry);
/// once the store is back the maintenance loop checks it again and its
/// links are issued.
#[sqlx::test]
async fn a_bucket_checked_during_a_store_outage_is_unavailable_then_ready(pool: PgPool) {
    let proxy = Proxy::start(crate::incident::s3_target()).await;
    let s3_url = format!("--s3-endpoint=http://{}", proxy.addr);
    let b0 = test_bucket();
    let (config, path) = policy_config(
        &policy(&[&b0]),
        &[s3_url.as_str(), "--maintenance-interval-secs=1"],
    );
    let mut app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let added = new_garage_bucket().await;
    let addr = proxy.stop().await;
    std::fs::write(&path, policy(&[&b0, &added])).unwrap();
    app.policy.reload().unwrap();
    let mut status = None;
    for _ in 0..200 {
        status = bucket_status(&mut app, &added).await;
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = status.expect("the added bucket was checked within 20 s");
    assert!(!status.ready, "{status:?}");
    let key = unique_key("outage");
    let s = app
        .issue(link_request(&added, &key, Method::Put, 600))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(s.message().contains(&added), "{}", s.message());
    assert_eq!(link_rows(&pool, &added).await, 0);

    let _proxy = Proxy::serve(
        tokio::net::TcpListener::bind(addr).await.unwrap(),
        crate::incident::s3_target(),
    );
    let mut put = None;
    for _ in 0..200 {
        if let Ok(link) = app
            .issue(link_request(&added, &key, Method::Put, 600))
            .await
        {
            put = Some(link);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let put = put.expect("the bucket is ready once the store is back");
    let r = send(&app.http, reqwest::Method::PUT, &put, Some(b"x".to_vec())).await;
    assert_eq!(r.status(), 200, "Garage serves the PUT");
}

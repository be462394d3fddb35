//! Safe retries (`IssueLinkRequest.request_id`): a retry gets the link its id
//! issued — the same row, the same URL byte for byte, which the store serves —
//! never a second row, whether the reply was lost, the retries race, or a
//! rotation retired the key meanwhile; another request under the same id is
//! INVALID_ARGUMENT naming `request_id`; a revoked link is FAILED_PRECONDITION
//! and no URL; an expired link frees its id.

use crate::helpers::*;
use presignd::lifecycle::{self, Retention};
use presignd::proto::{self, Method, RotationMode, link_service_client::LinkServiceClient};
use reqwest::StatusCode;
use sqlx::PgPool;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

fn request(bucket: &str, key: &str, method: Method, ttl: i64, id: &str) -> proto::IssueLinkRequest {
    let mut r = link_request(bucket, key, method, ttl);
    r.labels = [("ticket", "T-7"), ("team", "a")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    r.request_id = id.to_owned();
    r
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

async fn rows_for_key(pool: &PgPool, object_key: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM links WHERE object_key = $1")
        .bind(object_key)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn link_named_by(pool: &PgPool, request_id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT link_id::text FROM link_requests WHERE request_id = $1")
        .bind(request_id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// A TCP proxy in front of the server that can stop delivering the server's
/// bytes: requests still arrive and are served, their replies are lost.
struct ReplyCutter {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
}

impl ReplyCutter {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let cutting = cut.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let outbound = TcpStream::connect(target).await.unwrap();
                let (mut in_read, mut in_write) = inbound.into_split();
                let (mut out_read, mut out_write) = outbound.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut in_read, &mut out_write).await;
                });
                let cutting = cutting.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = out_read.read(&mut buf).await {
                        if !cutting.load(Ordering::SeqCst)
                            && in_write.write_all(&buf[..n]).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, cut }
    }
}

#[sqlx::test]
async fn a_retry_after_the_reply_was_lost_gets_the_link_recorded_once(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let (key, _) = put_sample(&mut app, &bucket).await;
    let proxy = ReplyCutter::start(format!("127.0.0.1:{}", app.port).parse().unwrap()).await;
    let channel = Channel::from_shared(format!("http://{}", proxy.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = LinkServiceClient::with_interceptor(channel, with_token as Auth);
    // The connection works both ways first (HTTP/2 set up)...
    client
        .issue_link(link_request(&bucket, "warm-up", Method::Get, 60))
        .await
        .expect("through the proxy");

    // ...then the server's answers stop reaching the client.
    proxy.cut.store(true, Ordering::SeqCst);
    let id = new_id();
    let req = request(&bucket, &key, Method::Get, 600, &id);
    let lost = tokio::time::timeout(Duration::from_secs(3), client.issue_link(req.clone())).await;
    assert!(lost.is_err(), "the reply was lost: {lost:?}");
    assert_eq!(
        wait_for_count(&pool, "SELECT count(*) FROM link_requests", 1).await,
        1,
        "the server committed the link whose reply was lost"
    );
    let recorded = link_named_by(&pool, &id).await.unwrap();

    let retry = app.issue(req).await.expect("the retry succeeds");
    let link = retry.link.as_ref().unwrap();
    assert_eq!(
        link.id, recorded,
        "the retry gets the link already recorded"
    );
    assert_eq!(
        rows_for_key(&pool, &key).await,
        2,
        "the sample's PUT and one GET link, not two"
    );
    assert_eq!(try_link(&app.http, &retry).await, StatusCode::OK);
}

#[sqlx::test]
async fn a_retry_gets_byte_for_byte_the_same_url_which_the_store_serves(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let key = unique_key("retry-put");
    let id = new_id();
    let mut req = request(&bucket, &key, Method::Put, 600, &id);
    req.content_type = "application/json".into();
    let first = app.issue(req.clone()).await.unwrap();
    // A second later: a URL signed as of "now" would differ (X-Amz-Date).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let retry = app.issue(req).await.unwrap();

    assert_eq!(retry.url, first.url, "the same URL, byte for byte");
    assert_eq!(retry.headers, first.headers);
    assert_eq!(
        retry.link, first.link,
        "the same link: id, key, issued_at, expires_at"
    );
    assert_eq!(rows_for_key(&pool, &key).await, 1);
    let r = send(
        &app.http,
        reqwest::Method::PUT,
        &retry,
        Some(b"{}".to_vec()),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK, "Garage serves the retry's URL");
    let found = app
        .links
        .lookup_link(proto::LookupLinkRequest { url: retry.url })
        .await
        .expect("LookupLink knows the retry's URL")
        .into_inner();
    assert_eq!(found.link.unwrap().id, first.link.unwrap().id);
}

#[sqlx::test]
async fn concurrent_retries_record_one_link_and_all_get_it(pool: PgPool) {
    // Small batches on several workers: the retries meet both within one
    // batch and across concurrent transactions. Each retry told its id is
    // taken looks its link up on a connection of its own. With the pool's
    // connections opened one per call instead of before SERVING (the
    // default, --db-min-connections = --db-max-connections), a loaded
    // machine (CI) took longer than the 1 s acquire timeout to open them
    // (UNAVAILABLE, "pool timed out"; 10 of 10 under 4 CPU hogs).
    let app = spawn_app_with(
        test_config(&[
            "--record-workers=4",
            "--record-batch-max=3",
            "--db-min-connections",
        ]),
        (*pool.connect_options()).clone(),
    )
    .await;
    app.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let key = unique_key("retry-race");
    let req = request(&app.bucket, &key, Method::Get, 600, &new_id());
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..24 {
        let mut client = app.links.clone();
        let req = req.clone();
        calls.spawn(async move { client.issue_link(req).await.map(|r| r.into_inner()) });
    }
    let answers: Vec<proto::IssueLinkResponse> = calls
        .join_all()
        .await
        .into_iter()
        .map(|r| r.expect("every retry succeeds"))
        .collect();
    let ids: HashSet<String> = answers.iter().map(|a| a.link.clone().unwrap().id).collect();
    let urls: HashSet<&str> = answers.iter().map(|a| a.url.as_str()).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(urls.len(), 1, "every retry gets the same URL");
    assert_eq!(rows_for_key(&pool, &key).await, 1);
    let named: i64 = sqlx::query_scalar("SELECT count(*) FROM link_requests")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(named, 1);
}

#[sqlx::test]
async fn the_same_id_for_another_request_is_invalid_argument_naming_request_id(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let key = unique_key("retry-other");
    let id = new_id();
    let req = request(&bucket, &key, Method::Get, 600, &id);
    let first = app.issue(req.clone()).await.unwrap();
    let link_id = first.link.unwrap().id;

    let mut other_key = req.clone();
    other_key.object_key = unique_key("retry-other");
    let mut other_ttl = req.clone();
    other_ttl.ttl = Some(prost_types::Duration {
        seconds: 601,
        nanos: 0,
    });
    let mut other_labels = req.clone();
    other_labels.labels.insert("team".into(), "b".into());
    let mut other_method = req.clone();
    other_method.method = Method::Head as i32;
    for (what, changed) in [
        ("object key", other_key),
        ("ttl", other_ttl),
        ("labels", other_labels),
        ("method", other_method),
    ] {
        let s = app.issue(changed).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{what}: {s:?}");
        assert!(s.message().starts_with("request_id: "), "{what}: {s:?}");
        assert!(s.message().contains(&link_id), "names the link: {s:?}");
        let details = s.get_error_details();
        let bad = details.bad_request().expect("a BadRequest detail");
        assert_eq!(bad.field_violations.len(), 1);
        assert_eq!(bad.field_violations[0].field, "request_id");
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM links")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1, "nothing recorded for the refused requests");

    // Ids are per caller: another caller's same id is another link.
    let mut b = LinkServiceClient::with_interceptor(app.channel.clone(), with_token_b as Auth);
    let theirs = b.issue_link(req.clone()).await.unwrap().into_inner();
    assert_ne!(theirs.link.unwrap().id, link_id);
    assert_eq!(rows_for_key(&pool, &key).await, 2);
}

#[sqlx::test]
async fn without_a_request_id_every_call_issues_a_link(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let key = unique_key("no-retry");
    let req = request(&app.bucket.clone(), &key, Method::Get, 600, "");
    let a = app.issue(req.clone()).await.unwrap();
    let b = app.issue(req).await.unwrap();
    assert_ne!(a.link.unwrap().id, b.link.unwrap().id);
    assert_eq!(rows_for_key(&pool, &key).await, 2);
    let named: i64 = sqlx::query_scalar("SELECT count(*) FROM link_requests")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(named, 0, "nothing is kept for a call without an id");
}

#[sqlx::test]
async fn a_retry_after_a_graceful_rotation_gets_the_url_its_retired_key_signed(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let (key, _) = put_sample(&mut app, &bucket).await;
    let req = request(&bucket, &key, Method::Get, 600, &new_id());
    let first = app.issue(req.clone()).await.unwrap();
    let old_key = first.link.as_ref().unwrap().key_id.clone();
    app.rotate(rotate_req("default", RotationMode::Graceful, &old_key))
        .await;
    let fresh = app
        .issue(link_request(&bucket, &key, Method::Get, 60))
        .await
        .unwrap();
    assert_ne!(fresh.link.unwrap().key_id, old_key, "the rotation happened");

    let retry = app.issue(req).await.unwrap();
    assert_eq!(retry.url, first.url);
    assert_eq!(retry.link.as_ref().unwrap().key_id, old_key);
    assert_eq!(try_link(&app.http, &retry).await, StatusCode::OK);
    assert_eq!(
        rows_for_key(&pool, &key).await,
        3,
        "the sample's PUT, the link, the fresh one"
    );
}

#[sqlx::test]
async fn a_retry_of_a_revoked_link_is_failed_precondition_and_no_url(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let key = unique_key("retry-revoked");
    let req = request(&bucket, &key, Method::Get, 600, &new_id());
    let first = app.issue(req.clone()).await.unwrap();
    let link = first.link.unwrap();
    app.rotate(rotate_req("default", RotationMode::Revoke, &link.key_id))
        .await;

    let s = app.issue(req).await.unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    let details = s.get_error_details();
    let info = details.error_info().expect("an ErrorInfo detail");
    assert_eq!(info.reason, "LINK_REVOKED");
    assert_eq!(info.domain, "presignd");
    assert_eq!(info.metadata["link_id"], link.id);
    assert_eq!(info.metadata["key_id"], link.key_id);
    assert_eq!(rows_for_key(&pool, &key).await, 1);
}

#[sqlx::test]
async fn once_its_link_expired_an_id_issues_a_new_link_and_is_then_forgotten(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let key = unique_key("retry-expired");
    let id = new_id();
    let req = request(&bucket, &key, Method::Get, 1, &id);
    let first = app.issue(req.clone()).await.unwrap().link.unwrap();
    let live = request(&bucket, &key, Method::Get, 600, &new_id());
    app.issue(live).await.unwrap();
    // issued_at is truncated to the second: 1 s of ttl is gone within 2 s.
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let again = app.issue(req).await.unwrap().link.unwrap();
    assert_ne!(again.id, first.id, "the expired link freed its id");
    assert_eq!(link_named_by(&pool, &id).await.unwrap(), again.id);
    assert_eq!(rows_for_key(&pool, &key).await, 3);

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let report = lifecycle::step(&pool, chrono::Utc::now(), Retention::new(0, 90).unwrap())
        .await
        .unwrap();
    assert_eq!(report.request_ids_forgotten, 1, "{report:?}");
    assert_eq!(link_named_by(&pool, &id).await, None);
    let named: i64 = sqlx::query_scalar("SELECT count(*) FROM link_requests")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(named, 1, "the live link's id is kept");
}

#[sqlx::test]
async fn presignctl_issue_with_a_request_id_is_safe_to_repeat(pool: PgPool) {
    let app = spawn_app(&pool).await;
    let key = unique_key("retry-cli");
    let id = new_id();
    let args = [
        "issue",
        "--bucket",
        &app.bucket,
        "--key",
        &key,
        "--ttl",
        "60",
        "--request-id",
        &id,
        "--json",
    ];
    let mut replies = Vec::new();
    for _ in 0..2 {
        let out = presignctl(&app, TOKEN, &args, None).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        replies.push((v["link_id"].clone(), v["url"].clone()));
    }
    assert_eq!(replies[0], replies[1]);
    assert_eq!(rows_for_key(&pool, &key).await, 1);
}

#[sqlx::test]
async fn a_retry_that_cannot_be_signed_identically_is_refused_not_answered_with_another_url(
    pool: PgPool,
) {
    let mut app = spawn_app(&pool).await;
    let key = unique_key("retry-moved");
    let req = request(&app.bucket.clone(), &key, Method::Get, 600, &new_id());
    let first = app.issue(req.clone()).await.unwrap().link.unwrap();

    // Another replica, configured with another name for the same S3 endpoint:
    // its URL would work, but would not be the one recorded.
    let endpoint = env("GARAGE_S3_URL").replace("127.0.0.1", "localhost");
    let mut moved = spawn_app_with(
        test_config(&[&format!("--s3-endpoint={endpoint}")]),
        (*pool.connect_options()).clone(),
    )
    .await;
    moved
        .wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let s = moved.issue(req).await.unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    let details = s.get_error_details();
    let info = details.error_info().expect("an ErrorInfo detail");
    assert_eq!(info.reason, "LINK_NOT_REPRODUCIBLE");
    assert_eq!(info.metadata["link_id"], first.id);
    assert_eq!(rows_for_key(&pool, &key).await, 1);
}

//! VerifyLink against the dev Garage: each verdict Garage can produce, by URL
//! (the URL sent as is) and by id (a probe presignd signs), and the true
//! expiry of a short link.

use crate::helpers::*;
use presignd::proto::{
    self, Method, RotationMode, Verdict, link_service_client::LinkServiceClient,
    verify_link_request::Link,
};
use presignd::secret::SecretString;
use presignd::signing::{S3Target, SigningKey};
use sqlx::PgPool;
use std::time::Duration;
use tonic::Code;

async fn verify(app: &mut TestApp, link: Link) -> Result<proto::VerifyLinkResponse, tonic::Status> {
    app.links
        .verify_link(proto::VerifyLinkRequest { link: Some(link) })
        .await
        .map(|r| r.into_inner())
}

async fn by_url(app: &mut TestApp, url: &str) -> proto::VerifyLinkResponse {
    verify(app, Link::Url(url.into())).await.unwrap()
}

async fn by_id(app: &mut TestApp, issued: &proto::IssueLinkResponse) -> proto::VerifyLinkResponse {
    let id = issued.link.as_ref().unwrap().id.clone();
    verify(app, Link::LinkId(id)).await.unwrap()
}

fn verdict(r: &proto::VerifyLinkResponse) -> Verdict {
    Verdict::try_from(r.verdict).unwrap()
}

#[sqlx::test]
async fn a_served_object_is_ok_and_a_missing_one_is_object_missing(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let (key, _) = put_sample(&mut app, &bucket).await;
    let get = app
        .issue(link_request(&bucket, &key, Method::Get, 600))
        .await
        .unwrap();
    let head = app
        .issue(link_request(&bucket, &key, Method::Head, 600))
        .await
        .unwrap();
    for issued in [&get, &head] {
        let r = by_url(&mut app, &issued.url).await;
        assert_eq!((verdict(&r), r.store_status), (Verdict::Ok, 200), "{r:?}");
        assert_eq!(
            r.link.as_ref().unwrap().id,
            issued.link.as_ref().unwrap().id
        );
        assert_eq!(verdict(&by_id(&mut app, issued).await), Verdict::Ok);
    }
    // A PUT link is probed with a missing object: its own object is not touched.
    let put = app
        .issue(link_request(&bucket, &unique_key("v"), Method::Put, 600))
        .await
        .unwrap();
    let r = by_id(&mut app, &put).await;
    assert_eq!(
        (verdict(&r), r.store_status, r.store_code.as_str()),
        (Verdict::Ok, 404, "NoSuchKey")
    );
    assert_eq!(verdict(&by_url(&mut app, &put.url).await), Verdict::Ok);

    let missing = app
        .issue(link_request(
            &bucket,
            &unique_key("missing"),
            Method::Get,
            600,
        ))
        .await
        .unwrap();
    let r = by_url(&mut app, &missing.url).await;
    assert_eq!(
        (verdict(&r), r.store_status, r.store_code.as_str()),
        (Verdict::ObjectMissing, 404, "NoSuchKey")
    );
    assert_eq!(
        verdict(&by_id(&mut app, &missing).await),
        Verdict::ObjectMissing
    );
}

/// The recorded expiry is the true expiry: a 2-second link is served at once,
/// refused after 3 s, and the registry and VerifyLink both say EXPIRED.
#[sqlx::test]
async fn a_two_second_link_is_served_at_once_and_refused_and_expired_after_three(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let (key, _) = put_sample(&mut app, &bucket).await;
    let link = app
        .issue(link_request(&bucket, &key, Method::Get, 2))
        .await
        .unwrap();
    assert_eq!(try_link(&app.http, &link).await, reqwest::StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        try_link(&app.http, &link).await,
        reqwest::StatusCode::BAD_REQUEST
    );
    let id = link.link.as_ref().unwrap().id.clone();
    let got = app
        .links
        .get_link(proto::GetLinkRequest { id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.state, proto::LinkState::Expired as i32);

    let r = by_url(&mut app, &link.url).await;
    assert_eq!(
        (verdict(&r), r.store_status, r.store_code.as_str()),
        (Verdict::Expired, 400, "InvalidRequest"),
        "{r:?}"
    );
    assert_eq!(r.link.unwrap().state, proto::LinkState::Expired as i32);
    // By id: a fresh signature cannot show an expiry; the registry does.
    assert_eq!(verdict(&by_id(&mut app, &link).await), Verdict::Expired);
}

#[sqlx::test]
async fn a_revoked_key_is_key_inactive(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let (key, _) = put_sample(&mut app, &bucket).await;
    let get = app
        .issue(link_request(&bucket, &key, Method::Get, 600))
        .await
        .unwrap();
    let put = app
        .issue(link_request(&bucket, &unique_key("v"), Method::Put, 600))
        .await
        .unwrap();
    app.rotate(rotate_req("default", RotationMode::Revoke, ""))
        .await;

    let r = by_url(&mut app, &get.url).await;
    assert_eq!(
        (verdict(&r), r.store_status, r.store_code.as_str()),
        (Verdict::KeyInactive, 403, "AccessDenied"),
        "{r:?}"
    );
    assert_eq!(r.link.unwrap().state, proto::LinkState::Revoked as i32);
    assert_eq!(verdict(&by_id(&mut app, &get).await), Verdict::KeyInactive);
    assert_eq!(verdict(&by_id(&mut app, &put).await), Verdict::KeyInactive);
}

#[sqlx::test]
async fn a_bucket_the_key_has_no_grant_on_is_access_denied(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let (key, _) = put_sample(&mut app, &bucket).await;
    let get = app
        .issue(link_request(&bucket, &key, Method::Get, 600))
        .await
        .unwrap();
    let key_id = get.link.as_ref().unwrap().key_id.clone();
    // Take this test's own key's grant away.
    let info = garage_admin("GetBucketInfo", &[("globalAlias", &bucket)], None).await;
    let bucket_id = info["id"].as_str().unwrap();
    garage_admin(
        "DenyBucketKey",
        &[],
        Some(serde_json::json!({
            "bucketId": bucket_id, "accessKeyId": key_id,
            "permissions": {"read": true, "write": true, "owner": true}
        })),
    )
    .await;

    let r = by_url(&mut app, &get.url).await;
    assert_eq!(
        (verdict(&r), r.store_status, r.store_code.as_str()),
        (Verdict::AccessDenied, 403, "AccessDenied"),
        "{r:?}"
    );
    assert!(r.store_message.contains("not allowed"), "{r:?}");
    assert_eq!(verdict(&by_id(&mut app, &get).await), Verdict::AccessDenied);
}

#[sqlx::test]
async fn an_altered_signature_is_a_signature_mismatch(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let (key, _) = put_sample(&mut app, &bucket).await;
    let get = app
        .issue(link_request(&bucket, &key, Method::Get, 600))
        .await
        .unwrap();
    let altered = with_signature_altered(&get.url);

    let r = by_url(&mut app, &altered).await;
    assert_eq!(
        (verdict(&r), r.store_status, r.store_code.as_str()),
        (Verdict::SignatureMismatch, 403, "AccessDenied"),
        "{r:?}"
    );
    assert_eq!(r.link.unwrap().id, get.link.unwrap().id);
}

#[sqlx::test]
async fn a_url_signed_for_another_region_names_the_region_the_store_expects(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let (key, _) = put_sample(&mut app, &bucket).await;
    let get = app
        .issue(link_request(&bucket, &key, Method::Get, 600))
        .await
        .unwrap();
    let link = get.link.as_ref().unwrap();
    // The same request, signed with the same key at the same second, for us-east-1.
    let secret = garage_key_info(&link.key_id, true).await["secretAccessKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let target = S3Target {
        endpoint: env("GARAGE_S3_URL"),
        region: "us-east-1".into(),
        path_style: true,
    };
    let signer = SigningKey::new(
        &target,
        &link.key_id,
        &SecretString::new(secret),
        &link.signer,
    );
    let spec = presignd::domain::LinkSpec {
        method: presignd::domain::Method::Get,
        bucket: presignd::domain::Bucket::parse(&bucket).unwrap(),
        object_key: presignd::domain::ObjectKey::parse(&key).unwrap(),
        ttl: presignd::domain::Ttl::parse(600, 0).unwrap(),
        content_type: None,
        content_disposition: None,
    };
    let issued_at = link.issued_at.unwrap();
    let at = std::time::UNIX_EPOCH + Duration::from_secs(issued_at.seconds as u64);
    let other_region = signer.presign(&spec, at).unwrap();

    let r = by_url(&mut app, &other_region.url).await;
    assert_eq!(
        (
            verdict(&r),
            r.store_code.as_str(),
            r.expected_region.as_str()
        ),
        (
            Verdict::RegionMismatch,
            "AuthorizationHeaderMalformed",
            env("GARAGE_REGION").as_str()
        ),
        "{r:?}"
    );
}

#[sqlx::test]
async fn callers_verify_their_own_links_and_urls_go_only_to_the_store(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let get = app
        .issue(link_request(&bucket, &unique_key("v"), Method::Get, 600))
        .await
        .unwrap();
    let mut other = LinkServiceClient::with_interceptor(app.channel.clone(), with_token_b as Auth);
    for link in [
        Link::Url(get.url.clone()),
        Link::LinkId(get.link.as_ref().unwrap().id.clone()),
    ] {
        let e = other
            .verify_link(proto::VerifyLinkRequest { link: Some(link) })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
    }
    // A URL of ours pointed at another host is not sent anywhere.
    let (_, rest) = get.url.split_once("://").unwrap();
    let (_, path) = rest.split_once('/').unwrap();
    let elsewhere = format!("http://127.0.0.1:9/{path}");
    let e = verify(&mut app, Link::Url(elsewhere)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("url"), "{e:?}");
    for bad in [Link::LinkId("nope".into()), Link::Url("not a url".into())] {
        let e = verify(&mut app, bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    let e = app
        .links
        .verify_link(proto::VerifyLinkRequest { link: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

//! Bad requests get INVALID_ARGUMENT naming the field; no credentials get
//! UNAUTHENTICATED. Never INTERNAL, never a panic.

use crate::helpers::*;
use presignd::proto::{self, Method, link_service_client::LinkServiceClient};
use sqlx::PgPool;
use tonic::Code;

fn base() -> proto::IssueLinkRequest {
    link_request(&test_bucket(), "reports/a.pdf", Method::Get, 60)
}

#[sqlx::test]
async fn each_bad_request_is_invalid_argument_naming_the_field(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    type Case = (
        &'static str,
        &'static str,
        Box<dyn Fn(&mut proto::IssueLinkRequest)>,
    );
    let cases: Vec<Case> = vec![
        (
            "empty bucket",
            "bucket",
            Box::new(|r| r.bucket = String::new()),
        ),
        (
            "bucket with uppercase",
            "bucket",
            Box::new(|r| r.bucket = "MyBucket".into()),
        ),
        (
            "bucket of 2 chars",
            "bucket",
            Box::new(|r| r.bucket = "ab".into()),
        ),
        (
            "bucket as an IP",
            "bucket",
            Box::new(|r| r.bucket = "10.0.0.1".into()),
        ),
        (
            "empty key",
            "object_key",
            Box::new(|r| r.object_key = String::new()),
        ),
        (
            "key over 1024 bytes",
            "object_key",
            Box::new(|r| r.object_key = "k".repeat(1025)),
        ),
        (
            "key with a newline",
            "object_key",
            Box::new(|r| r.object_key = "a\nb".into()),
        ),
        ("unspecified method", "method", Box::new(|r| r.method = 0)),
        ("unknown method", "method", Box::new(|r| r.method = 99)),
        ("no ttl", "ttl", Box::new(|r| r.ttl = None)),
        (
            "ttl 0",
            "ttl",
            Box::new(|r| {
                r.ttl = Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 0,
                })
            }),
        ),
        (
            "ttl 8 days",
            "ttl",
            Box::new(|r| {
                r.ttl = Some(prost_types::Duration {
                    seconds: 8 * 86400,
                    nanos: 0,
                })
            }),
        ),
        (
            "negative ttl",
            "ttl",
            Box::new(|r| {
                r.ttl = Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                })
            }),
        ),
        (
            "fractional ttl",
            "ttl",
            Box::new(|r| {
                r.ttl = Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 5,
                })
            }),
        ),
        (
            "too many labels",
            "labels",
            Box::new(|r| {
                r.labels = (0..17).map(|i| (format!("k{i}"), "v".into())).collect();
            }),
        ),
        (
            "label key with uppercase",
            "labels",
            Box::new(|r| {
                r.labels.insert("Team".into(), "x".into());
            }),
        ),
        (
            "label value too long",
            "labels",
            Box::new(|r| {
                r.labels.insert("k".into(), "v".repeat(300));
            }),
        ),
        (
            "content type on a GET",
            "content_type",
            Box::new(|r| r.content_type = "text/plain".into()),
        ),
        (
            "content type without a slash",
            "content_type",
            Box::new(|r| {
                r.method = Method::Put as i32;
                r.content_type = "plain".into();
            }),
        ),
        (
            "disposition on a PUT",
            "response_content_disposition",
            Box::new(|r| {
                r.method = Method::Put as i32;
                r.response_content_disposition = "attachment".into();
            }),
        ),
        (
            "request id over 128 characters",
            "request_id",
            Box::new(|r| r.request_id = "r".repeat(129)),
        ),
        (
            "request id with a space",
            "request_id",
            Box::new(|r| r.request_id = "order 1".into()),
        ),
    ];
    let rows_before: i64 = sqlx::query_scalar("SELECT count(*) FROM links")
        .fetch_one(&pool)
        .await
        .unwrap();
    for (name, field, mutate) in cases {
        let mut req = base();
        mutate(&mut req);
        let status = app.issue(req).await.expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(
            status.message().starts_with(&format!("{field}:")),
            "{name}: the message names {field}: {:?}",
            status.message()
        );
    }
    let rows_after: i64 = sqlx::query_scalar("SELECT count(*) FROM links")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows_before, rows_after, "refused requests record nothing");
}

#[sqlx::test]
async fn a_missing_or_unknown_token_is_unauthenticated(pool: PgPool) {
    let app = spawn_app(&pool).await;
    let mut anonymous = LinkServiceClient::new(app.channel.clone());
    let status = anonymous.issue_link(base()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    let mut wrong =
        LinkServiceClient::with_interceptor(app.channel.clone(), |mut r: tonic::Request<()>| {
            r.metadata_mut()
                .insert("authorization", "Bearer not-the-token".parse().unwrap());
            Ok(r)
        });
    let status = wrong.issue_link(base()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

/// An access key id no key can have (a NUL, a quote, a space) is the
/// caller's mistake, named: in a URL given to LookupLink or VerifyLink, and
/// as RevokeKey's or PlanRevocation's key_id. A NUL reached PostgreSQL
/// (which refuses it in text) and came back INTERNAL.
#[sqlx::test]
async fn an_access_key_id_no_key_can_have_is_invalid_argument(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    for id in ["GK%00x", "GK%27x", "GK%20x"] {
        let url = format!(
            "http://127.0.0.1:3900/{}/a.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential={id}%2F20250102%2Fgarage%2Fs3%2Faws4_request\
             &X-Amz-Date=20250102T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host\
             &X-Amz-Signature={}",
            test_bucket(),
            "0".repeat(64)
        );
        let lookup = app
            .links
            .lookup_link(proto::LookupLinkRequest { url: url.clone() })
            .await
            .expect_err("no such key id");
        let verify = app
            .links
            .verify_link(proto::VerifyLinkRequest {
                link: Some(proto::verify_link_request::Link::Url(url)),
            })
            .await
            .expect_err("no such key id");
        for (rpc, s) in [("LookupLink", lookup), ("VerifyLink", verify)] {
            assert_eq!(s.code(), Code::InvalidArgument, "{rpc} {id}: {s:?}");
            assert!(s.message().starts_with("url:"), "{rpc} {id}: {s:?}");
        }
    }
    let revoke = app
        .keys
        .revoke_key(proto::RevokeKeyRequest {
            key_id: "GK\0x".into(),
            reason: "bad id".into(),
            dry_run: true,
            detach: false,
            quarantine_link_ids: Vec::new(),
        })
        .await
        .expect_err("no such key id");
    let plan = app
        .keys
        .plan_revocation(proto::PlanRevocationRequest {
            target: Some(proto::plan_revocation_request::Target::KeyId("GK'x".into())),
        })
        .await
        .expect_err("no such key id");
    for (rpc, s) in [("RevokeKey", revoke), ("PlanRevocation", plan)] {
        assert_eq!(s.code(), Code::InvalidArgument, "{rpc}: {s:?}");
        assert!(s.message().starts_with("key_id:"), "{rpc}: {s:?}");
    }
}

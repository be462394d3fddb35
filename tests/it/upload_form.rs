//! IssueUploadForm against the dev Garage: a browser-style multipart/form-data
//! POST with the returned fields uploads within the form's conditions and is
//! refused outside them, the form is a link (recorded, counted in the blast
//! radius, killed with its key), and the policy and the fields' validation
//! refuse before anything is recorded or signed.

use crate::helpers::*;
use presignd::proto::{
    self, IssueUploadFormRequest, IssueUploadFormResponse, LinkState, Method,
    PlanRevocationRequest, RevocationState, RevokeKeyRequest,
    link_service_client::LinkServiceClient, plan_revocation_request::Target,
};
use reqwest::StatusCode;
use sqlx::PgPool;
use tonic::Code;
use tonic_types::StatusExt;

fn form_request(bucket: &str, key: &str, max: u64) -> IssueUploadFormRequest {
    IssueUploadFormRequest {
        bucket: bucket.to_owned(),
        object_key: key.to_owned(),
        content_length_range: Some(proto::ContentLengthRange { min: 1, max }),
        ttl: Some(prost_types::Duration {
            seconds: 600,
            nanos: 0,
        }),
        ..Default::default()
    }
}

fn prefix_request(bucket: &str, prefix: &str, max: u64) -> IssueUploadFormRequest {
    IssueUploadFormRequest {
        object_key: String::new(),
        object_key_prefix: prefix.to_owned(),
        ..form_request(bucket, "", max)
    }
}

/// Posts the form as a browser does: its fields (the key replaced by `key`
/// when given, `extra` fields after them), then the file. The status and
/// body of Garage's answer.
async fn post(
    form: &IssueUploadFormResponse,
    key: Option<&str>,
    extra: &[(&str, &str)],
    file: Vec<u8>,
) -> (StatusCode, String) {
    let mut multipart = reqwest::multipart::Form::new();
    for f in &form.fields {
        let value = match (f.name.as_str(), key) {
            ("key", Some(k)) => k.to_owned(),
            _ => f.value.clone(),
        };
        multipart = multipart.text(f.name.clone(), value);
    }
    for (name, value) in extra {
        multipart = multipart.text(name.to_string(), value.to_string());
    }
    multipart = multipart.part(
        "file",
        reqwest::multipart::Part::bytes(file).file_name("upload.bin"),
    );
    let r = reqwest::Client::new()
        .post(&form.url)
        .multipart(multipart)
        .send()
        .await
        .expect("Garage answers");
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    // Garage's XML error body escapes the quotes of its messages.
    (status, body.replace("&apos;", "'"))
}

async fn links_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM links")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn a_form_upload_succeeds_and_a_get_link_returns_the_bytes(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let key = unique_key("form");
    let form = app
        .links
        .issue_upload_form(IssueUploadFormRequest {
            content_type: "text/plain".into(),
            labels: [("purpose".to_owned(), "avatar".to_owned())].into(),
            ..form_request(&bucket, &key, 1024)
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = form.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "key",
            "Content-Type",
            "x-amz-algorithm",
            "x-amz-credential",
            "x-amz-date",
            "policy",
            "x-amz-signature"
        ]
    );
    assert_eq!(form.url, format!("{}/{bucket}", env("GARAGE_S3_URL")));

    let body = b"uploaded through a browser form".to_vec();
    let (status, text) = post(&form, None, &[], body.clone()).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{text}");

    let get = app
        .issue(link_request(&bucket, &key, Method::Get, 60))
        .await
        .unwrap();
    let r = send(&app.http, reqwest::Method::GET, &get, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain",
        "the type the form bound"
    );
    assert_eq!(r.bytes().await.unwrap().to_vec(), body);

    // The form is a link like any other, the signature only as its hash.
    let link = form.link.unwrap();
    let read = app
        .links
        .get_link(proto::GetLinkRequest {
            id: link.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.method, Method::Post as i32);
    assert_eq!(
        (read.object_key.as_str(), read.object_key_is_prefix),
        (key.as_str(), false)
    );
    assert_eq!(read.state, LinkState::Active as i32);
    assert_eq!(read.labels["purpose"], "avatar");
    let signature = &form.fields.last().unwrap().value;
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT signature_sha256 FROM links WHERE id = $1::uuid")
            .bind(&link.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    use sha2::Digest;
    assert_eq!(stored, sha2::Sha256::digest(signature.as_bytes()).to_vec());
}

#[sqlx::test]
async fn garage_refuses_a_file_over_the_range_a_key_outside_the_prefix_and_another_type(
    pool: PgPool,
) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let prefix = format!("{}/", unique_key("form-prefix"));
    let form = app
        .links
        .issue_upload_form(IssueUploadFormRequest {
            content_type_prefix: "text/".into(),
            ..prefix_request(&bucket, &prefix, 16)
        })
        .await
        .unwrap()
        .into_inner();
    let link = form.link.clone().unwrap();
    assert_eq!(
        (link.object_key.as_str(), link.object_key_is_prefix),
        (prefix.as_str(), true)
    );
    let inside = format!("{prefix}a.txt");
    let text = [("Content-Type", "text/plain")];

    let (status, body) = post(&form, Some(&inside), &text, vec![b'x'; 16]).await;
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "within every condition: {body}"
    );

    let (status, body) = post(&form, Some(&inside), &text, vec![b'x'; 17]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("<Code>InvalidRequest</Code>"), "{body}");
    assert!(body.contains("File size does not match policy"), "{body}");

    let outside = format!("{}/a.txt", unique_key("elsewhere"));
    let (status, body) = post(&form, Some(&outside), &text, vec![b'x'; 4]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.contains("Key 'key' has value not allowed in policy"),
        "{body}"
    );

    let image = [("Content-Type", "image/png")];
    let (status, body) = post(&form, Some(&inside), &image, vec![b'x'; 4]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.contains("Key 'content-type' has value not allowed in policy"),
        "{body}"
    );
}

#[sqlx::test]
async fn revoking_the_key_kills_the_form_and_the_reports_count_it(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let key = unique_key("form-revoked");
    let form = app
        .links
        .issue_upload_form(form_request(&bucket, &key, 64))
        .await
        .unwrap()
        .into_inner();
    let key_id = form.link.as_ref().unwrap().key_id.clone();

    let plan = app
        .keys
        .plan_revocation(PlanRevocationRequest {
            target: Some(Target::KeyId(key_id.clone())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.outstanding_links, 1);
    let per_method: Vec<(&str, u64)> = plan
        .per_method
        .iter()
        .map(|c| (c.name.as_str(), c.count))
        .collect();
    assert_eq!(per_method, [("POST", 1)]);

    let report = app
        .keys
        .revoke_key(RevokeKeyRequest {
            key_id: key_id.clone(),
            reason: "test: a leaked upload form".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        report.state,
        RevocationState::Succeeded as i32,
        "{report:?}"
    );
    assert_eq!(report.blast_radius.as_ref().unwrap().outstanding_links, 1);
    assert_eq!(report.links_revoked, 1);

    let (status, body) = post(&form, None, &[], b"too late".to_vec()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("<Code>AccessDenied</Code>"), "{body}");
    let read = app
        .links
        .get_link(proto::GetLinkRequest {
            id: form.link.unwrap().id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.state, LinkState::Revoked as i32);
    assert_eq!(read.revocation_id, report.id);
}

/// it-caller: admin, every bucket, GET and PUT only. it-caller-b: forms
/// under team-a/ of the first bucket, 1000 bytes at most.
fn policy(bucket: &str) -> String {
    format!(
        r#"
[callers.it-caller]
role = "admin"
buckets = ["*"]
methods = ["GET", "PUT"]

[callers.it-caller-b]
buckets = ["{bucket}"]
prefixes = ["team-a/"]
methods = ["POST"]
max_upload_bytes = 1000
"#
    )
}

#[sqlx::test]
async fn the_policy_refuses_forms_outside_it_and_records_nothing(pool: PgPool) {
    let bucket = test_bucket();
    let (config, _path) = policy_config(&policy(&bucket), &[]);
    let mut app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let mut b = LinkServiceClient::with_interceptor(app.channel.clone(), with_token_b as Auth);

    let cases = [
        (
            app.links
                .issue_upload_form(form_request(&bucket, "team-a/x", 10))
                .await,
            "methods",
            "may not issue upload forms (POST) (allowed: GET, PUT)",
        ),
        (
            b.issue_upload_form(prefix_request(&bucket, "team-a/in/", 1001))
                .await,
            "max_upload_bytes",
            "uploads of 1001 bytes (max_upload_bytes: 1000)",
        ),
        (
            b.issue_upload_form(prefix_request(&bucket, "team-b/", 10))
                .await,
            "prefixes",
            "key prefix \"team-b/\"",
        ),
        (
            // Wider than the policy's prefix: it would allow team-b/ keys.
            b.issue_upload_form(prefix_request(&bucket, "team", 10))
                .await,
            "prefixes",
            "key prefix \"team\"",
        ),
    ];
    for (result, rule, needle) in cases {
        let s = result.unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
        assert!(s.message().contains(needle), "{rule}: {s:?}");
        let info = s.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.metadata["rule"], rule);
    }
    assert_eq!(links_rows(&pool).await, 0, "a refused form records nothing");

    let ok = b
        .issue_upload_form(prefix_request(&bucket, "team-a/in/", 1000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.link.unwrap().caller, CALLER_B);
    assert_eq!(links_rows(&pool).await, 1);
}

#[sqlx::test]
async fn malformed_forms_are_invalid_argument_naming_the_field(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let good = || form_request(&bucket, "it/form/x", 10);
    let cases = [
        (
            IssueUploadFormRequest {
                bucket: String::new(),
                ..good()
            },
            "bucket",
        ),
        (
            IssueUploadFormRequest {
                object_key: String::new(),
                ..good()
            },
            "object_key",
        ),
        (
            IssueUploadFormRequest {
                object_key_prefix: "it/form/".into(),
                ..good()
            },
            "object_key_prefix",
        ),
        (
            IssueUploadFormRequest {
                content_length_range: None,
                ..good()
            },
            "content_length_range",
        ),
        (
            IssueUploadFormRequest {
                content_length_range: Some(proto::ContentLengthRange { min: 11, max: 10 }),
                ..good()
            },
            "content_length_range.max",
        ),
        (
            IssueUploadFormRequest {
                content_length_range: Some(proto::ContentLengthRange {
                    min: 0,
                    max: 6 << 30,
                }),
                ..good()
            },
            "content_length_range.max",
        ),
        (
            IssueUploadFormRequest {
                content_type: "json".into(),
                ..good()
            },
            "content_type",
        ),
        (
            IssueUploadFormRequest {
                content_type: "text/plain".into(),
                content_type_prefix: "text/".into(),
                ..good()
            },
            "content_type_prefix",
        ),
        (
            IssueUploadFormRequest {
                ttl: None,
                ..good()
            },
            "ttl",
        ),
    ];
    for (req, field) in cases {
        let s = app.links.issue_upload_form(req).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{field}: {s:?}");
        assert!(s.message().starts_with(&format!("{field}: ")), "{s:?}");
        let details = s.get_error_details();
        let v = &details
            .bad_request()
            .expect("a BadRequest")
            .field_violations;
        assert_eq!(v[0].field, field);
    }
    // And IssueLink refuses POST: a form is not a URL.
    let s = app
        .issue(link_request(&bucket, "it/form/x", Method::Post, 60))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("IssueUploadForm"), "{s:?}");
    assert_eq!(links_rows(&pool).await, 0);
}

#[sqlx::test]
async fn presignctl_form_prints_the_form_or_uploads_a_file(pool: PgPool) {
    let app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let key = unique_key("form-cli");
    let max = "64".to_owned();
    let out = presignctl(
        &app,
        TOKEN,
        &[
            "form",
            "--bucket",
            &bucket,
            "--key",
            &key,
            "--max-bytes",
            &max,
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with(&format!("POST {}/{bucket}\n", env("GARAGE_S3_URL")))
    );
    assert!(
        out.stdout.contains(&format!("\nkey={key}\n")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("\nx-amz-signature="), "{}", out.stdout);
    assert!(!out.stderr.contains("x-amz-signature"), "{}", out.stderr);

    let dir = crate::pki::temp_dir();
    let file = dir.join("photo.txt");
    std::fs::write(&file, b"from presignctl").unwrap();
    let prefix = format!("{}/", unique_key("form-cli-prefix"));
    let file_arg = file.display().to_string();
    let out = presignctl(
        &app,
        TOKEN,
        &[
            "form",
            "--bucket",
            &bucket,
            "--prefix",
            &prefix,
            "--max-bytes",
            &max,
            "--upload",
            &file_arg,
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .starts_with(&format!("204 {prefix}photo.txt (link ")),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("x-amz-signature"), "{}", out.stdout);

    // Too big for the form: Garage's 400, and exit 1.
    std::fs::write(&file, vec![b'x'; 65]).unwrap();
    let out = presignctl(
        &app,
        TOKEN,
        &[
            "form",
            "--bucket",
            &bucket,
            "--prefix",
            &prefix,
            "--max-bytes",
            &max,
            "--upload",
            &file_arg,
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 1, "{} {}", out.stdout, out.stderr);
    assert!(out.stdout.starts_with("400 "), "{}", out.stdout);
}

//! Multipart uploads against Garage: part URLs presigned and recorded as
//! links, Complete and Abort server-side, revocation in the middle of an
//! upload, S3's limits as named errors, the policy, whose upload it is, the
//! maintenance abort, and presignctl's upload of a local file.

use crate::helpers::*;
use presignd::proto::{
    self, AbortMultipartUploadRequest, CompleteMultipartUploadRequest, CompletedPart, Method,
    PlanRevocationRequest, RevocationState, RevokeKeyRequest, StartMultipartUploadRequest,
    StartMultipartUploadResponse, link_service_client::LinkServiceClient,
    start_multipart_upload_request::Size,
};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tonic::Code;
use tonic_types::StatusExt;

const MIB: u64 = 1024 * 1024;

fn start_req(bucket: &str, key: &str, size: Size, part_size: u64) -> StartMultipartUploadRequest {
    StartMultipartUploadRequest {
        bucket: bucket.into(),
        object_key: key.into(),
        size: Some(size),
        part_size,
        ttl: Some(prost_types::Duration {
            seconds: 600,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// Bytes that differ from part to part (a swapped part changes the hash).
/// An upload's state in the registry (`upload_id`: its id, as the API gives it).
async fn upload_state(pool: &PgPool, upload_id: &str) -> String {
    sqlx::query_scalar("SELECT state FROM multipart_uploads WHERE id = $1::uuid")
        .bind(upload_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A two-part upload of a fresh key in the app's bucket.
async fn start_two_parts(app: &TestApp, what: &str) -> StartMultipartUploadResponse {
    app.links
        .clone()
        .start_multipart_upload(start_req(
            &app.bucket,
            &unique_key(what),
            Size::PartCount(2),
            0,
        ))
        .await
        .unwrap()
        .into_inner()
}

fn bytes(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 13) as u8)
        .collect()
}

/// PUTs `body` through a part URL: the status, the ETag, the body.
async fn put_part(
    http: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
) -> (StatusCode, String, String) {
    let r = http
        .put(url)
        .body(body)
        .send()
        .await
        .expect("Garage answers");
    let status = r.status();
    let etag = r
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, etag, r.text().await.unwrap_or_default())
}

/// An S3 client with `key_id`'s secret (from Garage's admin API): the test's
/// own look at the store (ListParts, ListMultipartUploads).
async fn s3_as(key_id: &str) -> aws_sdk_s3::Client {
    let info = garage_key_info(key_id, true).await;
    let secret = info["secretAccessKey"].as_str().expect("the secret");
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(env("GARAGE_REGION")))
        .endpoint_url(env("GARAGE_S3_URL"))
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            key_id, secret, None, None, "it",
        ))
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// The uploads Garage has in progress under `key` (S3's ListMultipartUploads).
async fn uploads_at_store(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> usize {
    s3.list_multipart_uploads()
        .bucket(bucket)
        .prefix(key)
        .send()
        .await
        .expect("ListMultipartUploads")
        .uploads()
        .len()
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap()
}

fn field_violations(s: &tonic::Status) -> Vec<String> {
    s.get_error_details()
        .bad_request()
        .expect("a BadRequest detail")
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect()
}

async fn get_object_sha256(app: &mut TestApp, key: &str) -> String {
    let get = app
        .issue(link_request(&app.bucket.clone(), key, Method::Get, 600))
        .await
        .unwrap();
    let r = send(&app.http, reqwest::Method::GET, &get, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    hex::encode(Sha256::digest(r.bytes().await.unwrap()))
}

#[sqlx::test]
async fn a_16_mib_file_in_4_parts_goes_up_through_part_urls_and_comes_back_identical(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let key = unique_key("multipart");
    let file = bytes(16 * MIB, 7);
    let started: StartMultipartUploadResponse = app
        .links
        .start_multipart_upload(start_req(&bucket, &key, Size::TotalSize(16 * MIB), 5 * MIB))
        .await
        .unwrap()
        .into_inner();
    // 5 + 5 + 5 + 1 MiB: S3's minimum part size, the last one smaller.
    let ranges: Vec<(u64, u64)> = started.parts.iter().map(|p| (p.offset, p.size)).collect();
    assert_eq!(
        ranges,
        [
            (0, 5 * MIB),
            (5 * MIB, 5 * MIB),
            (10 * MIB, 5 * MIB),
            (15 * MIB, MIB)
        ]
    );
    assert_eq!(started.part_size, 5 * MIB);

    // Recorded before they left: the upload and one PUT link per part URL.
    let id = started.upload_id.clone();
    let row: (String, String, i32, String) = sqlx::query_as(
        "SELECT state, key_id, part_count, upload_id FROM multipart_uploads WHERE id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "open".into(),
            started.key_id.clone(),
            4,
            started.store_upload_id.clone()
        )
    );
    for p in &started.parts {
        let link = app
            .links
            .get_link(proto::GetLinkRequest {
                id: p.link_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(link.method, Method::Put as i32);
        assert_eq!(link.object_key, key);
        assert_eq!(link.labels["presignd.upload"], id);
        assert_eq!(link.labels["presignd.part"], p.part_number.to_string());
        assert!(p.url.contains(&format!("partNumber={}", p.part_number)));
        // LookupLink knows a part URL by its signature, like any link's.
        let found = app
            .links
            .lookup_link(proto::LookupLinkRequest { url: p.url.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(found.link.unwrap().id, p.link_id);
    }

    let mut parts = Vec::new();
    for p in &started.parts {
        let chunk = file[p.offset as usize..(p.offset + p.size) as usize].to_vec();
        let (status, etag, _) = put_part(&app.http, &p.url, chunk).await;
        assert_eq!(status, StatusCode::OK, "part {}", p.part_number);
        parts.push(CompletedPart {
            part_number: p.part_number,
            etag,
        });
    }
    let done = app
        .links
        .complete_multipart_upload(CompleteMultipartUploadRequest {
            upload_id: id.clone(),
            parts,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        done.key_id, started.key_id,
        "sent with the key that started it"
    );
    assert_eq!(
        get_object_sha256(&mut app, &key).await,
        hex::encode(Sha256::digest(&file))
    );
    assert_eq!(upload_state(&pool, &id).await, "completed");
    // Finished once: an Abort after the Complete is refused, naming the state.
    let again = app
        .links
        .abort_multipart_upload(AbortMultipartUploadRequest { upload_id: id })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    let info = again.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "UPLOAD_NOT_OPEN");
    assert_eq!(info.metadata["state"], "completed");
}

#[sqlx::test]
async fn revoking_the_key_mid_upload_kills_the_remaining_part_urls_and_counts_them(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let key = unique_key("multipart-revoked");
    let started = app
        .links
        .start_multipart_upload(start_req(&bucket, &key, Size::PartCount(4), 0))
        .await
        .unwrap()
        .into_inner();
    let old_key = started.key_id.clone();
    // Parts 1 and 2 go up before the incident.
    let part1 = bytes(5 * MIB, 1);
    let mut etags = Vec::new();
    for (p, body) in started.parts[..2]
        .iter()
        .zip([part1.clone(), bytes(MIB, 2)])
    {
        let (status, etag, _) = put_part(&app.http, &p.url, body).await;
        assert_eq!(status, StatusCode::OK);
        etags.push(etag);
    }
    // One ordinary link of the same key beside them.
    let plain = app
        .issue(link_request(
            &bucket,
            &unique_key("plain"),
            Method::Get,
            600,
        ))
        .await
        .unwrap();
    assert_eq!(plain.link.as_ref().unwrap().key_id, old_key);

    let plan = app
        .keys
        .plan_revocation(PlanRevocationRequest {
            target: Some(proto::plan_revocation_request::Target::KeyId(
                old_key.clone(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.outstanding_links, 5, "four part URLs and the GET link");
    let puts = plan.per_method.iter().find(|c| c.name == "PUT").unwrap();
    assert_eq!(puts.count, 4);

    let report = app
        .keys
        .revoke_key(RevokeKeyRequest {
            key_id: old_key.clone(),
            reason: "incident: a part URL leaked".into(),
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
    assert_eq!(report.links_revoked, 5);
    assert_eq!(revoked_by(&pool, &report.id).await, 5);

    // The rest of the part URLs are refused by Garage now. A small body: the
    // store refuses on the signature before it reads a body, and closing on a
    // large one in flight would show as a broken pipe, not as its 403.
    for p in &started.parts[2..] {
        let (status, _, body) = put_part(&app.http, &p.url, bytes(1000, 3)).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "part {}: {body}",
            p.part_number
        );
    }
    // ReissueLinks replaces the GET link, not the part URLs (a plain PUT
    // would not be a part upload): each skipped with its reason.
    let reissued = app
        .links
        .reissue_links(proto::ReissueLinksRequest {
            revocation_id: report.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reissued.links.len(), 1);
    assert_eq!(
        reissued.links[0].replaces_link_id,
        plain.link.as_ref().unwrap().id
    );
    let mut skipped: Vec<(String, i32)> = reissued
        .skipped
        .iter()
        .map(|s| (s.link_id.clone(), s.reason))
        .collect();
    skipped.sort();
    let mut parts: Vec<(String, i32)> = started
        .parts
        .iter()
        .map(|p| (p.link_id.clone(), proto::SkipReason::UploadPart as i32))
        .collect();
    parts.sort();
    assert_eq!(skipped, parts);

    // Completing still works: with the signer's new key (the old one is dead).
    let done = app
        .links
        .complete_multipart_upload(CompleteMultipartUploadRequest {
            upload_id: started.upload_id.clone(),
            parts: vec![CompletedPart {
                part_number: 1,
                etag: etags[0].clone(),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(done.key_id, old_key);
    assert_eq!(done.key_id, report.new_key_id);
    assert_eq!(
        get_object_sha256(&mut app, &key).await,
        hex::encode(Sha256::digest(&part1))
    );
}

#[sqlx::test]
async fn part_counts_and_sizes_outside_s3s_limits_are_refused_naming_the_field(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let key = unique_key("multipart-limits");
    let cases = [
        (Size::PartCount(0), 0, "part_count"),
        (Size::PartCount(10_001), 0, "part_count"),
        (Size::TotalSize(16 * MIB), MIB, "part_size"),
        (Size::TotalSize(16 * MIB), 5 * MIB - 1, "part_size"),
        (Size::TotalSize(0), 0, "total_size"),
        (Size::TotalSize(5 * 1024 * 1024 * MIB + 1), 0, "total_size"),
        (Size::TotalSize(10_001 * 5 * MIB), 5 * MIB, "total_size"),
    ];
    for (size, part_size, field) in cases {
        let e = app
            .links
            .start_multipart_upload(start_req(&bucket, &key, size, part_size))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{size:?}: {e:?}");
        assert_eq!(field_violations(&e), [field], "{size:?}");
    }
    let mut none = start_req(&bucket, &key, Size::PartCount(1), 0);
    none.size = None;
    let e = app.links.start_multipart_upload(none).await.unwrap_err();
    assert_eq!(field_violations(&e), ["size"]);

    assert_eq!(
        count(&pool, "SELECT count(*) FROM multipart_uploads").await,
        0
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM links").await, 0);
    let key_id = app.km.active_key("default").unwrap().key_id.clone();
    let s3 = s3_as(&key_id).await;
    assert_eq!(
        uploads_at_store(&s3, &bucket, &key).await,
        0,
        "no CreateMultipartUpload reached the store"
    );
    // The check can fail: a valid request does create one.
    app.links
        .start_multipart_upload(start_req(&bucket, &key, Size::PartCount(1), 0))
        .await
        .unwrap();
    assert_eq!(uploads_at_store(&s3, &bucket, &key).await, 1);
}

#[sqlx::test]
async fn a_caller_without_the_put_right_is_refused_and_nothing_is_recorded(pool: PgPool) {
    let bs = buckets();
    let (config, _) = policy_config(&crate::authz::policy(&bs[0], &bs[1]), &[]);
    let app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    // it-caller-b may GET and HEAD under team-a/ in bs[0], not PUT.
    let mut b = LinkServiceClient::with_interceptor(app.channel.clone(), with_token_b as Auth);
    let key = format!("team-a/{}", uuid::Uuid::now_v7());
    let e = b
        .start_multipart_upload(start_req(&bs[0], &key, Size::PartCount(2), 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let info = e.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "POLICY_DENIED");
    assert_eq!(info.metadata["rule"], "methods");

    assert_eq!(
        count(&pool, "SELECT count(*) FROM multipart_uploads").await,
        0
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM links").await, 0);
    let key_id = app.km.active_key("default").unwrap().key_id.clone();
    assert_eq!(
        uploads_at_store(&s3_as(&key_id).await, &bs[0], &key).await,
        0
    );
}

#[sqlx::test]
async fn another_caller_can_neither_complete_nor_abort_an_upload(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let key = unique_key("multipart-owner");
    let started = app
        .links
        .start_multipart_upload(start_req(&bucket, &key, Size::PartCount(1), 0))
        .await
        .unwrap()
        .into_inner();
    let (status, etag, _) = put_part(&app.http, &started.parts[0].url, bytes(1000, 9)).await;
    assert_eq!(status, StatusCode::OK);

    // it-caller-b is a plain caller: another caller's upload is unknown to it.
    let mut b = LinkServiceClient::with_interceptor(app.channel.clone(), with_token_b as Auth);
    let parts = vec![CompletedPart {
        part_number: 1,
        etag,
    }];
    let e = b
        .complete_multipart_upload(CompleteMultipartUploadRequest {
            upload_id: started.upload_id.clone(),
            parts: parts.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = b
        .abort_multipart_upload(AbortMultipartUploadRequest {
            upload_id: started.upload_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(
        upload_state(&pool, &started.upload_id).await,
        "open",
        "untouched"
    );

    // Its owner completes it.
    app.links
        .complete_multipart_upload(CompleteMultipartUploadRequest {
            upload_id: started.upload_id.clone(),
            parts,
        })
        .await
        .unwrap();
}

#[sqlx::test]
async fn the_maintenance_aborts_an_upload_left_open_past_its_ttl(pool: PgPool) {
    let app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let key = unique_key("multipart-expired");
    let mut links = app.links.clone();
    let started = links
        .start_multipart_upload(start_req(&bucket, &key, Size::PartCount(2), 0))
        .await
        .unwrap()
        .into_inner();
    let (status, _, _) = put_part(&app.http, &started.parts[0].url, bytes(1000, 4)).await;
    assert_eq!(status, StatusCode::OK);
    let s3 = s3_as(&started.key_id).await;
    let list_parts = || {
        s3.list_parts()
            .bucket(&bucket)
            .key(&key)
            .upload_id(&started.store_upload_id)
            .send()
    };
    assert_eq!(list_parts().await.expect("ListParts").parts().len(), 1);

    // Not yet expired: nothing to do.
    let now = chrono::Utc::now();
    assert_eq!(
        presignd::issuance::abort_expired(&pool, &app.km, now)
            .await
            .unwrap(),
        0
    );
    // Past the TTL (600 s).
    let later = now + chrono::Duration::seconds(601);
    assert_eq!(
        presignd::issuance::abort_expired(&pool, &app.km, later)
            .await
            .unwrap(),
        1
    );
    let (state, by): (String, String) =
        sqlx::query_as("SELECT state, finished_by FROM multipart_uploads WHERE id = $1::uuid")
            .bind(&started.upload_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), by.as_str()), ("aborted", "maintenance"));

    // Garage has forgotten it: a part PUT (its URL is still within its
    // signature's validity) and ListParts both answer NoSuchUpload.
    let (status, _, body) = put_part(&app.http, &started.parts[1].url, bytes(1000, 5)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        presignd::signing::xml_field(&body, "Code"),
        Some("NoSuchUpload")
    );
    let e = list_parts().await.unwrap_err();
    let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&e).map(str::to_owned);
    assert_eq!(code.as_deref(), Some("NoSuchUpload"), "{e:?}");
    // Once: the next run finds nothing.
    assert_eq!(
        presignd::issuance::abort_expired(&pool, &app.km, later)
            .await
            .unwrap(),
        0
    );
}

#[sqlx::test]
async fn presignctl_upload_sends_a_local_file_that_comes_back_identical(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let key = unique_key("presignctl-upload");
    let file = bytes(11 * MIB + 12_345, 3);
    let path = crate::pki::temp_dir().join("upload.bin");
    std::fs::write(&path, &file).unwrap();
    let out = presignctl(
        &app,
        TOKEN,
        &[
            "upload",
            path.to_str().unwrap(),
            "--bucket",
            &bucket,
            "--key",
            &key,
            "--part-size",
            &(5 * MIB).to_string(),
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let want = hex::encode(Sha256::digest(&file));
    assert!(
        out.stdout.contains(&format!("sha256 {want}")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("in 3 parts"), "{}", out.stdout);
    assert!(!out.stdout.contains("X-Amz-Signature") && !out.stderr.contains("X-Amz-"));
    let upload_id = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("upload_id "))
        .unwrap();
    assert_eq!(upload_state(&pool, upload_id).await, "completed");
    assert_eq!(get_object_sha256(&mut app, &key).await, want);
}

#[sqlx::test]
async fn a_policy_max_upload_bytes_bounds_the_declared_size(pool: PgPool) {
    let b0 = test_bucket();
    let policy = format!(
        "[callers.it-caller]\nrole = \"admin\"\nbuckets = [\"*\"]\nmethods = [\"*\"]\n\n\
         [callers.it-caller-b]\nbuckets = [\"{b0}\"]\nmethods = [\"PUT\"]\nmax_upload_bytes = 10485760\n"
    );
    let (config, _) = policy_config(&policy, &[]);
    let app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let mut b = LinkServiceClient::with_interceptor(app.channel.clone(), with_token_b as Auth);
    let key = unique_key("multipart-max");
    for size in [Size::TotalSize(16 * MIB), Size::PartCount(2)] {
        let e = b
            .start_multipart_upload(start_req(&b0, &key, size, 0))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{size:?}: {e:?}");
        let info = e.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.metadata["rule"], "max_upload_bytes", "{size:?}");
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM multipart_uploads").await,
        0
    );
    let ok = b
        .start_multipart_upload(start_req(&b0, &key, Size::TotalSize(10 * MIB), 5 * MIB))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.parts.len(), 2);
    b.abort_multipart_upload(AbortMultipartUploadRequest {
        upload_id: ok.upload_id,
    })
    .await
    .unwrap();
}

/// Expired uploads that cannot be aborted (here a hundred of a signer with
/// no key left to send the call with) do not hold back the ones after them:
/// the maintenance pages past them. It used to read the oldest hundred every
/// tick and never get further.
#[sqlx::test]
async fn uploads_that_cannot_be_aborted_hold_back_none_after_them(pool: PgPool) {
    let app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let started = start_two_parts(&app, "multipart-behind").await;
    // A signer with no live key, and a hundred of its uploads that expired
    // before this one.
    sqlx::query("INSERT INTO signers (name, backend) VALUES ('stuck', 'garage')")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO signing_keys (key_id, signer, state, sealed_secret, deleted_at)
         VALUES ('GKstuck', 'stuck', 'deleted', '\\x00', now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO multipart_uploads (id, upload_id, bucket, object_key, signer, key_id, caller,
                                        part_count, created_at, expires_at)
         SELECT gen_random_uuid(), 'u' || n, $1, 'stuck/' || n, 'stuck', 'GKstuck', 'it',
                2, now() - interval '2 hours', now() - interval '1 hour' - n * interval '1 second'
         FROM generate_series(1, 100) n",
    )
    .bind(&bucket)
    .execute(&pool)
    .await
    .unwrap();

    let later = chrono::Utc::now() + chrono::Duration::seconds(601);
    assert_eq!(
        presignd::issuance::abort_expired(&pool, &app.km, later)
            .await
            .unwrap(),
        1,
        "the upload behind the stuck ones is aborted"
    );
    assert_eq!(upload_state(&pool, &started.upload_id).await, "aborted");
    let stuck: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM multipart_uploads WHERE signer = 'stuck' AND state = 'open'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stuck, 100, "tried again next tick");
}

/// A Complete and an Abort of one upload go one after the other (the row
/// locked through the store's call): an Abort arriving while a Complete is
/// under way (here the test holds the row, then marks it completed, as the
/// Complete does) waits, then says the upload is completed. It used to go
/// ahead, find nothing at the store once the Complete had gone through
/// (NoSuchUpload), and answer OK for an object that exists.
#[sqlx::test]
async fn an_abort_racing_a_complete_waits_and_says_it_was_completed(pool: PgPool) {
    let app = spawn_app(&pool).await;
    let started = start_two_parts(&app, "multipart-race").await;
    let mut links = app.links.clone();
    let id: uuid::Uuid = started.upload_id.parse().unwrap();

    let mut complete = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM multipart_uploads WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *complete)
        .await
        .unwrap();
    let abort = tokio::spawn(async move {
        links
            .abort_multipart_upload(AbortMultipartUploadRequest {
                upload_id: started.upload_id,
            })
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!abort.is_finished(), "the Abort waits for the Complete");
    sqlx::query(
        "UPDATE multipart_uploads SET state = 'completed', finished_at = now(), finished_by = 'it'
         WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *complete)
    .await
    .unwrap();
    complete.commit().await.unwrap();

    let e = abort.await.unwrap().unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("completed"), "{e:?}");
    assert_eq!(upload_state(&pool, &id.to_string()).await, "completed");
}

//! Invariant 5 after a full run with secrets and URLs in play (links of every
//! method, an upload form, multipart part URLs, URLs given to LookupLink and
//! VerifyLink whole, altered and malformed, a refused token, a failed admin
//! call, a REVOKE rotation, its repair by ReissueLinks): neither the
//! captured logs (every level, every crate) nor a pg_dump of the registry holds
//! a secret (Garage key secrets, the Garage admin token, the master key, bearer
//! tokens, the database password), a signature or a URL.

use crate::helpers::*;
use presignd::proto::{
    self, Method, RotateKeyRequest, RotationMode, link_service_client::LinkServiceClient,
};
use sqlx::PgPool;
use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line of this process (the server runs in it), at trace level for
/// presignd and debug for the libraries.
fn capture_logs() -> Captured {
    let buf = Captured::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("debug,presignd=trace"))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("one subscriber per test process");
    buf
}

async fn pg_dump(pool: &PgPool) -> String {
    let out = tokio::process::Command::new("pg_dump")
        .arg("--no-owner")
        .arg(database_url(pool))
        .output()
        .await
        .expect("pg_dump runs (postgresql-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[sqlx::test]
async fn no_secret_signature_or_url_reaches_the_logs_or_the_database(pool: PgPool) {
    let logs = capture_logs();
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let key = unique_key("secrets");
    let mut issued = Vec::new();
    let mut put = link_request(&bucket, &key, Method::Put, 600);
    put.content_type = "text/plain".into();
    put.labels.insert("team".into(), "billing".into());
    issued.push(app.issue(put).await.unwrap());
    let r = send(
        &app.http,
        reqwest::Method::PUT,
        &issued[0],
        Some(b"x".to_vec()),
    )
    .await;
    assert!(r.status().is_success());
    for m in [Method::Get, Method::Head, Method::Delete] {
        issued.push(
            app.issue(link_request(&bucket, &key, m, 600))
                .await
                .unwrap(),
        );
    }
    let mut b = LinkServiceClient::with_interceptor(app.channel.clone(), with_token_b as Auth);
    issued.push(
        b.issue_link(link_request(&bucket, &key, Method::Get, 60))
            .await
            .unwrap()
            .into_inner(),
    );
    // The other credentials presignd hands out: an upload form (its policy
    // and signature) and a multipart upload's part URLs.
    let ten_minutes = Some(prost_types::Duration {
        seconds: 600,
        nanos: 0,
    });
    let form = app
        .links
        .issue_upload_form(proto::IssueUploadFormRequest {
            bucket: bucket.clone(),
            object_key: unique_key("secrets-form"),
            content_length_range: Some(proto::ContentLengthRange { min: 1, max: 1024 }),
            ttl: ten_minutes,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let upload = app
        .links
        .start_multipart_upload(proto::StartMultipartUploadRequest {
            bucket: bucket.clone(),
            object_key: unique_key("secrets-multipart"),
            size: Some(proto::start_multipart_upload_request::Size::PartCount(2)),
            ttl: ten_minutes,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(upload.parts.len(), 2);
    // URLs given to presignd: LookupLink and VerifyLink take them as input,
    // whole, altered, and malformed (refused naming `url`).
    let altered = with_signature_altered(&issued[1].url);
    let malformed = issued[1]
        .url
        .replace("X-Amz-Credential", "X-Amz-Kredential");
    let mut given = vec![altered.clone(), malformed.clone()];
    app.links
        .lookup_link(proto::LookupLinkRequest {
            url: issued[1].url.clone(),
        })
        .await
        .unwrap();
    app.links
        .lookup_link(proto::LookupLinkRequest {
            url: upload.parts[0].url.clone(),
        })
        .await
        .unwrap();
    let refused = app
        .links
        .lookup_link(proto::LookupLinkRequest {
            url: malformed.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let unknown = app
        .links
        .lookup_link(proto::LookupLinkRequest {
            url: altered.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
    for url in [issued[1].url.clone(), altered.clone()] {
        app.links
            .verify_link(proto::VerifyLinkRequest {
                link: Some(proto::verify_link_request::Link::Url(url)),
            })
            .await
            .unwrap();
    }
    let refused = app
        .links
        .verify_link(proto::VerifyLinkRequest {
            link: Some(proto::verify_link_request::Link::Url(malformed)),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let wrong = format!("{TOKEN}-but-wrong");
    let mut stranger = LinkServiceClient::with_interceptor(
        app.channel.clone(),
        move |mut r: tonic::Request<()>| {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {wrong}").parse().unwrap());
            Ok(r)
        },
    );
    stranger
        .issue_link(link_request(&bucket, &key, Method::Get, 60))
        .await
        .unwrap_err();
    app.keys
        .rotate_key(RotateKeyRequest {
            signer: "nobody".into(),
            mode: RotationMode::Revoke as i32,
            reason: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let report = app
        .rotate(RotateKeyRequest {
            signer: "default".into(),
            mode: RotationMode::Revoke as i32,
            reason: "leak drill".into(),
            ..Default::default()
        })
        .await;
    // The form and the two part URLs are links too.
    assert_eq!(report.links_revoked, issued.len() as u64 + 3);
    // Repair after the revocation hands out fresh URLs: not the form's nor
    // the parts' (skipped), every other killed link's.
    let reissued = app
        .links
        .reissue_links(proto::ReissueLinksRequest {
            revocation_id: report.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reissued.links.len(), reissued.skipped.len()),
        (issued.len(), 3),
        "{reissued:?}"
    );
    given.extend(reissued.links.iter().map(|r| r.url.clone()));
    issued.push(
        app.issue(link_request(&bucket, &key, Method::Get, 60))
            .await
            .unwrap(),
    );
    app.keys
        .list_audit_events(proto::ListAuditEventsRequest::default())
        .await
        .unwrap();
    wait_for_count(
        &pool,
        "SELECT count(*) FROM audit_events WHERE caller IS NULL",
        1,
    )
    .await;

    // What must not appear anywhere.
    let mut secrets: Vec<(String, String)> = vec![
        ("bearer token".into(), TOKEN.into()),
        ("bearer token b".into(), TOKEN_B.into()),
        ("master key".into(), master_key_hex().to_owned()),
        ("garage admin token".into(), env("GARAGE_ADMIN_TOKEN")),
    ];
    let db_url = env("DATABASE_URL");
    if let Some(password) = db_url
        .split('@')
        .next()
        .and_then(|s| s.rsplit(':').next())
        .filter(|p| !p.contains('/'))
    {
        secrets.push(("database password".into(), password.to_owned()));
    }
    let rows: Vec<presignd::registry::keys::KeyRow> =
        sqlx::query_as("SELECT key_id, signer, state, sealed_secret, created_at FROM signing_keys")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        let secret = app.km.open_secret(row).unwrap();
        secrets.push((
            format!("secret of {}", row.key_id),
            secret.expose().to_owned(),
        ));
    }
    for link in &issued {
        let sig = presignd::signing::signature_of(&link.url)
            .unwrap()
            .to_owned();
        let query = link.url.split_once('?').unwrap().1.to_owned();
        secrets.push(("signature".into(), sig));
        secrets.push(("URL query".into(), query));
        secrets.push(("URL".into(), link.url.clone()));
    }
    for url in given.iter().chain(upload.parts.iter().map(|p| &p.url)) {
        secrets.push(("URL".into(), url.clone()));
        if let Some(sig) = presignd::signing::signature_of(url) {
            secrets.push(("signature".into(), sig.to_owned()));
        }
    }
    for field in &form.fields {
        if ["policy", "x-amz-signature"].contains(&field.name.as_str()) {
            secrets.push((format!("form's {}", field.name), field.value.clone()));
        }
    }
    let markers = ["X-Amz-Signature", "X-Amz-Credential", "x-amz-signature"];

    let dump = pg_dump(&pool).await;
    assert!(
        dump.contains("audit_events") && dump.contains("leak drill"),
        "the dump is complete"
    );
    drop(app);
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("issued link") && logs.contains("revocation"),
        "the logs were captured"
    );
    for (what, text) in [("logs", &logs), ("database dump", &dump)] {
        for (name, secret) in &secrets {
            assert!(!text.contains(secret.as_str()), "{what} contain a {name}");
        }
        for m in markers {
            assert!(!text.contains(m), "{what} contain {m}");
        }
    }
}

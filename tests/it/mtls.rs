//! mTLS end to end, with certificates made in the test: a caller identified by
//! its client certificate gets a link that Garage serves; refused certificates
//! are audited with the caller unknown; TLS without client certificates works
//! with tokens, and a plaintext client gets nowhere.

use crate::authz::{Call, Who, call, spawn_secure_app};
use crate::helpers::*;
use crate::pki::{self, Ca};
use presignd::proto::{Method, link_service_client::LinkServiceClient};
use reqwest::StatusCode;
use sqlx::PgPool;
use tonic::Code;

#[sqlx::test]
async fn a_client_certificate_identifies_its_caller_and_its_link_works(pool: PgPool) {
    let mut s = spawn_secure_app(&pool, &[]).await;
    let bucket = buckets()[0].clone();
    let key = format!("certs/{}", uuid::Uuid::now_v7());
    // The admin (token over TLS) uploads; the certificate caller reads.
    let put = s
        .app
        .issue(link_request(&bucket, &key, Method::Put, 60))
        .await
        .unwrap();
    let r = send(
        &s.app.http,
        reqwest::Method::PUT,
        &put,
        Some(b"via mTLS".to_vec()),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);

    let leaf = s.ca.client("cert-svc");
    let channel = tls_channel(s.app.port, &s.ca.pem, Some((&leaf.cert, &leaf.key)))
        .await
        .unwrap();
    let get = LinkServiceClient::new(channel)
        .issue_link(link_request(&bucket, &key, Method::Get, 120))
        .await
        .unwrap()
        .into_inner();
    let link = get.link.as_ref().unwrap();
    assert_eq!(link.caller, "cert-svc");
    let r = send(&s.app.http, reqwest::Method::GET, &get, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"via mTLS");
}

#[sqlx::test]
async fn refused_certificates_are_audited_with_the_caller_unknown(pool: PgPool) {
    let s = spawn_secure_app(&pool, &[]).await;
    let expired = s.ca.expired_client("cert-svc");
    let foreign = s.other_ca.client("cert-svc");
    let bucket = buckets()[0].clone();
    for leaf in [&expired, &foreign] {
        let st = call(
            s.app.port,
            &s.ca.pem,
            &Who::Cert(leaf),
            &Call::Issue(link_request(&bucket, "certs/x", Method::Get, 60)),
        )
        .await
        .unwrap_err();
        assert_eq!(st.code(), Code::Unauthenticated);
    }
    let n = wait_for_count(
        &pool,
        "SELECT count(*) FROM audit_events WHERE caller IS NULL AND code = 'UNAUTHENTICATED'",
        2,
    )
    .await;
    assert_eq!(n, 2);
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT rpc, message, peer FROM audit_events WHERE caller IS NULL ORDER BY at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows[0].0, "presignd.v1.LinkService/IssueLink");
    assert_eq!(rows[0].1, "client certificate: expired");
    assert!(rows[1].1.contains("not issued by a trusted CA"), "{rows:?}");
    assert!(
        rows[0]
            .2
            .as_deref()
            .is_some_and(|p| p.starts_with("127.0.0.1:"))
    );
}

#[sqlx::test]
async fn tls_without_client_certificates_serves_tokens_and_refuses_plaintext(pool: PgPool) {
    let ca = Ca::new("presignd it CA");
    let dir = pki::temp_dir();
    let flags = pki::server_flags(&dir, &ca, false);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut app = spawn_tls_app(
        test_config(&flags),
        (*pool.connect_options()).clone(),
        &ca.pem,
    )
    .await;
    let bucket = app.bucket.clone();
    app.issue(link_request(&bucket, "k", Method::Get, 60))
        .await
        .expect("a token over TLS works");
    // A plaintext client does not get an answer.
    let plain = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", app.port))
        .unwrap()
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(2))
        .connect_lazy();
    let st = LinkServiceClient::with_interceptor(plain, with_token as Auth)
        .issue_link(link_request(&bucket, "k", Method::Get, 60))
        .await
        .unwrap_err();
    assert!(
        matches!(
            st.code(),
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
        ),
        "{st:?}"
    );
    let links: i64 = sqlx::query_scalar("SELECT count(*) FROM links")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(links, 1);
}

#[sqlx::test]
async fn presignctl_speaks_mtls_with_a_client_certificate(pool: PgPool) {
    let s = spawn_secure_app(&pool, &[]).await;
    let dir = pki::temp_dir();
    let leaf = s.ca.client("cert-svc");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let (ca, cert, key) = (
        write("ca.pem", &s.ca.pem),
        write("c.pem", &leaf.cert),
        write("c.key", &leaf.key),
    );
    let bucket = buckets()[0].clone();
    let run = |args: Vec<String>| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_presignctl"));
        cmd.args(args)
            .env(
                "PRESIGND_ENDPOINT",
                format!("https://127.0.0.1:{}", s.app.port),
            )
            .env("PRESIGND_CA_CERT", &ca)
            .env("PRESIGND_CLIENT_CERT", &cert)
            .env("PRESIGND_CLIENT_KEY", &key)
            .env("PRESIGND_TLS_SERVER_NAME", "localhost")
            .env_remove("PRESIGND_TOKEN");
        cmd.output()
    };
    let out = run([
        "issue",
        "--bucket",
        &bucket,
        "--key",
        "certs/cli",
        "--ttl",
        "60",
        "--json",
    ]
    .map(String::from)
    .to_vec())
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["link_id"].as_str().unwrap().to_owned();
    let caller: String = sqlx::query_scalar("SELECT caller FROM links WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(caller, "cert-svc");
    let out = run(vec!["keys".into()]).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PermissionDenied"));
}

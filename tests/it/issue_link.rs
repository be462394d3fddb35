//! IssueLink end to end: the URL works against Garage, the row is recorded, and
//! nothing secret lands in the registry.

use crate::helpers::*;
use presignd::proto::{LinkState, Method};
use reqwest::StatusCode;
use sqlx::{PgPool, Row};

async fn put_object(app: &mut TestApp, key: &str, body: &[u8]) {
    let put = app
        .issue(link_request(&app.bucket.clone(), key, Method::Put, 300))
        .await
        .unwrap();
    let r = send(&app.http, reqwest::Method::PUT, &put, Some(body.to_vec())).await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "PUT through the link: {}",
        r.text().await.unwrap()
    );
}

#[sqlx::test]
async fn a_put_link_uploads_and_a_get_link_serves_the_same_bytes(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let key = unique_key("put-get");
    put_object(&mut app, &key, b"first version").await;
    put_object(&mut app, &key, b"new bytes").await;

    let get = app
        .issue(link_request(&app.bucket.clone(), &key, Method::Get, 60))
        .await
        .unwrap();
    let r = send(&app.http, reqwest::Method::GET, &get, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"new bytes");
}

#[sqlx::test]
async fn head_and_delete_links_do_what_they_say(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let key = unique_key("head-delete");
    put_object(&mut app, &key, b"short-lived").await;
    let bucket = app.bucket.clone();

    let head = app
        .issue(link_request(&bucket, &key, Method::Head, 60))
        .await
        .unwrap();
    let r = send(&app.http, reqwest::Method::HEAD, &head, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], "11");

    let delete = app
        .issue(link_request(&bucket, &key, Method::Delete, 60))
        .await
        .unwrap();
    let r = send(&app.http, reqwest::Method::DELETE, &delete, None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = send(&app.http, reqwest::Method::HEAD, &head, None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "the object is gone");
}

#[sqlx::test]
async fn a_get_link_only_works_for_get(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let key = unique_key("method-bound");
    put_object(&mut app, &key, b"x").await;
    let get = app
        .issue(link_request(&app.bucket.clone(), &key, Method::Get, 60))
        .await
        .unwrap();
    let r = send(&app.http, reqwest::Method::DELETE, &get, None).await;
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "a GET signature must not allow DELETE"
    );
}

#[sqlx::test]
async fn a_put_link_bound_to_a_content_type_needs_that_header(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let key = unique_key("content-type");
    let mut req = link_request(&app.bucket.clone(), &key, Method::Put, 60);
    req.content_type = "application/json".into();
    let put = app.issue(req).await.unwrap();
    assert!(
        put.headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("content-type") && h.value == "application/json"),
        "the response tells the client which header to send: {:?}",
        put.headers
    );
    let r = send(&app.http, reqwest::Method::PUT, &put, Some(b"{}".to_vec())).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .http
        .put(&put.url)
        .header("content-type", "text/html")
        .body("<script>")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "another content type breaks the signature"
    );
}

#[sqlx::test]
async fn a_get_link_can_set_the_response_content_disposition(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let key = unique_key("disposition");
    put_object(&mut app, &key, b"report").await;
    let mut req = link_request(&app.bucket.clone(), &key, Method::Get, 60);
    req.response_content_disposition = "attachment; filename=\"report.txt\"".into();
    let get = app.issue(req).await.unwrap();
    let r = send(&app.http, reqwest::Method::GET, &get, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"report.txt\""
    );
}

#[sqlx::test]
async fn a_url_with_one_signature_character_changed_is_refused(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let key = unique_key("tamper");
    put_object(&mut app, &key, b"secret document").await;
    let get = app
        .issue(link_request(&app.bucket.clone(), &key, Method::Get, 60))
        .await
        .unwrap();

    let mut tampered = get.url.clone().into_bytes();
    let last = tampered.len() - 1; // the signature is the last query parameter
    tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_ne!(tampered, get.url);
    let r = app.http.get(&tampered).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // ...while the untouched URL works, so the 403 is the tampering's doing.
    assert_eq!(
        app.http.get(&get.url).send().await.unwrap().status(),
        StatusCode::OK
    );
}

#[sqlx::test]
async fn the_link_row_records_who_what_which_key_and_when(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let key = unique_key("row");
    let mut req = link_request(&app.bucket.clone(), &key, Method::Get, 3600);
    req.labels.insert("ticket".into(), "SEC-1".into());
    let before = chrono::Utc::now();
    let resp = app.issue(req).await.unwrap();
    let link = resp.link.clone().unwrap();

    let row = sqlx::query(
        "SELECT key_id, signer, caller, method, bucket, object_key, labels, issued_at, expires_at,
                signature_sha256
         FROM links WHERE id = $1::uuid",
    )
    .bind(&link.id)
    .fetch_one(&pool)
    .await
    .expect("the link row is committed before the URL is returned");

    let credential_key = resp
        .url
        .split("X-Amz-Credential=")
        .nth(1)
        .unwrap()
        .split("%2F")
        .next()
        .unwrap();
    assert_eq!(
        row.get::<String, _>("key_id"),
        credential_key,
        "the key that signed the URL"
    );
    assert_eq!(row.get::<String, _>("key_id"), link.key_id);
    assert_eq!(row.get::<String, _>("signer"), "default");
    assert_eq!(row.get::<String, _>("caller"), CALLER);
    assert_eq!(row.get::<String, _>("method"), "GET");
    assert_eq!(row.get::<String, _>("bucket"), app.bucket);
    assert_eq!(row.get::<String, _>("object_key"), key);
    assert_eq!(
        row.get::<serde_json::Value, _>("labels"),
        serde_json::json!({"ticket": "SEC-1"})
    );
    let issued: chrono::DateTime<chrono::Utc> = row.get("issued_at");
    let expires: chrono::DateTime<chrono::Utc> = row.get("expires_at");
    assert_eq!((expires - issued).num_seconds(), 3600);
    assert_eq!(
        issued.timestamp_subsec_nanos(),
        0,
        "issued_at is the signature's X-Amz-Date"
    );
    assert!(
        (issued - before).num_seconds().abs() <= 2,
        "issued just now"
    );
    let amz_date = resp
        .url
        .split("X-Amz-Date=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    assert_eq!(issued.format("%Y%m%dT%H%M%SZ").to_string(), amz_date);

    let signature = resp.url.split("X-Amz-Signature=").nth(1).unwrap();
    let hash: Vec<u8> = row.get("signature_sha256");
    use sha2::Digest;
    assert_eq!(hash, sha2::Sha256::digest(signature.as_bytes()).to_vec());

    assert_eq!(link.state, LinkState::Active as i32);
    assert_eq!(link.expires_at.unwrap().seconds, expires.timestamp());
}

/// Every table in the registry as text, bytea as hex: what a dump would show.
async fn dump_registry(pool: &PgPool) -> String {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(tables.iter().any(|t| t == "links"));
    let mut dump = String::new();
    for t in tables {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT t::text FROM \"{t}\" t"
        )))
        .fetch_all(pool)
        .await
        .unwrap();
        dump.push_str(&rows.join("\n"));
    }
    dump
}

#[sqlx::test]
async fn neither_url_nor_signature_nor_secret_appears_in_the_registry(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let key = unique_key("no-secrets");
    let resp = app
        .issue(link_request(&app.bucket.clone(), &key, Method::Get, 60))
        .await
        .unwrap();
    let key_id = resp.link.unwrap().key_id;
    let signature = resp
        .url
        .split("X-Amz-Signature=")
        .nth(1)
        .unwrap()
        .to_owned();

    // The secret, as Garage knows it.
    let info = garage_key_info(&key_id, true).await;
    let secret = info["secretAccessKey"]
        .as_str()
        .expect("garage shows the secret")
        .to_owned();

    let dump = dump_registry(&pool).await;
    assert!(dump.contains(&key_id), "sanity: the dump holds the rows");
    for (what, needle) in [
        ("URL", resp.url.as_str()),
        ("URL query", resp.url.split('?').nth(1).unwrap()),
        ("signature", signature.as_str()),
        ("secret", secret.as_str()),
        ("secret bytes as hex", &hex::encode(secret.as_bytes())),
        ("secret prefix", &secret[..16]),
    ] {
        assert!(!dump.contains(needle), "the {what} appears in the registry");
    }
}

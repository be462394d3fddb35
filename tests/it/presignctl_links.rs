//! The CLI against a running server: `presignctl links`, `summarize` and
//! `lookup` and `verify`, as text and JSON; a failure exits non-zero.

use crate::helpers::*;
use presignd::proto::Method;
use sqlx::PgPool;

#[sqlx::test]
async fn links_lists_issued_links_as_a_table_or_as_json(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let mut ids = Vec::new();
    for method in [Method::Get, Method::Put] {
        let issued = app
            .issue(link_request(&bucket, &unique_key("cli"), method, 600))
            .await
            .unwrap();
        ids.push(issued.link.unwrap().id);
    }

    let out = presignctl(&app, TOKEN, &["links", "--bucket", &bucket], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("ID"), "a header: {}", out.stdout);
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(
        lines[1].starts_with(&ids[1]),
        "newest first: {}",
        out.stdout
    );
    assert!(lines[2].starts_with(&ids[0]) && lines[2].contains("active"));

    let out = presignctl(
        &app,
        TOKEN,
        &["links", "--json", "--state", "active", "--limit", "1"],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["links"].as_array().unwrap().len(), 1);
    assert_eq!(json["links"][0]["id"], ids[1]);
    assert_eq!(json["links"][0]["method"], "PUT");
    let next = json["next_page_token"].as_str().unwrap();
    assert!(!next.is_empty(), "one more link to page to");

    let out = presignctl(
        &app,
        TOKEN,
        &["links", "--json", "--state", "active", "--page-token", next],
        None,
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["links"][0]["id"], ids[0]);
    assert_eq!(json["next_page_token"], "");

    let out = presignctl(
        &app,
        TOKEN,
        &["summarize", "--by", "signer", "--json"],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["groups"][0]["group"], "default");
    assert_eq!(json["groups"][0]["active"], 2);
}

#[sqlx::test]
async fn lookup_prints_the_link_and_its_blast_radius(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let issued = app
        .issue(link_request(
            &app.bucket.clone(),
            &unique_key("cli"),
            Method::Get,
            600,
        ))
        .await
        .unwrap();
    let link = issued.link.unwrap();

    // From stdin (the default): the URL stays out of the process list.
    let out = presignctl(&app, TOKEN, &["lookup"], Some(&issued.url)).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!("link       {}", link.id)),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains(&format!("blast radius of revoking key {}", link.key_id))
    );
    assert!(
        out.stdout.contains("outstanding links  1"),
        "{}",
        out.stdout
    );

    let out = presignctl(&app, TOKEN, &["lookup", "--json", &issued.url], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["link"]["id"], link.id);
    assert_eq!(json["blast_radius"]["outstanding_links"], 1);
    assert_eq!(json["blast_radius"]["per_method"][0]["name"], "GET");
}

#[sqlx::test]
async fn a_failed_lookup_or_listing_exits_non_zero_saying_why(pool: PgPool) {
    let app = spawn_app(&pool).await;
    let out = presignctl(&app, TOKEN, &["lookup", "not a url"], None).await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("InvalidArgument"), "{}", out.stderr);
    assert!(out.stderr.contains("url:"), "{}", out.stderr);

    let out = presignctl(&app, TOKEN, &["links", "--bucket", "NOT VALID"], None).await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("filter.bucket"), "{}", out.stderr);

    let out = presignctl(&app, TOKEN, &["summarize", "--by", "colour"], None).await;
    assert_ne!(out.code, 0, "clap refuses an unknown group");
}

#[sqlx::test]
async fn verify_reads_a_url_from_stdin_or_takes_a_link_id_and_exits_one_unless_ok(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let missing = app
        .issue(link_request(
            &app.bucket.clone(),
            &unique_key("cli"),
            Method::Get,
            600,
        ))
        .await
        .unwrap();
    let out = presignctl(&app, TOKEN, &["verify"], Some(&missing.url)).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stdout.contains("verdict    OBJECT_MISSING"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("store      HTTP 404 NoSuchKey"),
        "{}",
        out.stdout
    );

    let put = app
        .issue(link_request(
            &app.bucket.clone(),
            &unique_key("cli"),
            Method::Put,
            600,
        ))
        .await
        .unwrap();
    let id = put.link.unwrap().id;
    let out = presignctl(&app, TOKEN, &["verify", "--json", "--link", &id], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["verdict"], "OK", "{v}");
    assert_eq!(v["link"]["id"], id.as_str(), "{v}");
}

/// `presignctl watch` reconnects when the server goes away, but a refusal
/// ends it with exit 1 and the server's words: here a caller asking for
/// another caller's events. It used to print "reconnecting" and retry the
/// same request every second, for ever.
#[sqlx::test]
async fn watch_exits_1_on_a_refusal_instead_of_reconnecting_for_ever(pool: PgPool) {
    let app = spawn_app(&pool).await;
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        presignctl(&app, TOKEN_B, &["watch", "--caller", CALLER], None),
    )
    .await
    .expect("watch ends on a refusal");
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("PermissionDenied"), "{}", out.stderr);
    assert!(!out.stderr.contains("reconnecting"), "{}", out.stderr);
}

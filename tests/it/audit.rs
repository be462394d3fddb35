//! The audit trail: every KeyService call is recorded with its outcome (OK,
//! PERMISSION_DENIED, NOT_FOUND, FAILED_PRECONDITION, INVALID_ARGUMENT), and so
//! are denied IssueLink requests and unauthenticated ones; it is listed newest
//! first with keyset paging, by the RPC and by presignctl; the database refuses
//! to change it.

use crate::helpers::*;
use presignd::proto::{
    self, Method, RotationMode, key_service_client::KeyServiceClient,
    link_service_client::LinkServiceClient,
};
use sqlx::PgPool;
use tonic::Code;

const POLICY: &str = r#"
[callers.it-caller]
role = "admin"
buckets = ["*"]
methods = ["*"]

[callers.it-caller-b]
buckets = ["*"]
prefixes = ["mine/"]
methods = ["GET"]
"#;

async fn all_events(keys: &mut Keys) -> Vec<proto::AuditEvent> {
    let mut events = Vec::new();
    let mut token = String::new();
    loop {
        let page = keys
            .list_audit_events(proto::ListAuditEventsRequest {
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.events.len() <= 2);
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            return events;
        }
        token = page.next_page_token;
    }
}

#[sqlx::test]
async fn every_admin_call_and_every_denial_is_audited(pool: PgPool) {
    let (config, _) = policy_config(POLICY, &[]);
    let mut app = spawn_app_with(config, (*pool.connect_options()).clone()).await;
    app.wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let bucket = app.bucket.clone();
    let ok = app
        .keys
        .list_signing_keys(proto::ListSigningKeysRequest::default())
        .await;
    assert!(ok.is_ok());
    let first = app
        .rotate(rotate_req("default", RotationMode::Graceful, ""))
        .await;
    let mut leaked = rotate_req("default", RotationMode::Graceful, "");
    leaked.reason = format!("leaked: {}/b/k?X-Amz-Signature=00ff", env("GARAGE_S3_URL"));
    let st = app.keys.rotate_key(leaked).await.unwrap_err();
    assert!(
        st.message().starts_with("reason: must not contain a URL"),
        "{st:?}"
    );
    let codes = [
        app.keys
            .rotate_key(rotate_req("nobody", RotationMode::Graceful, ""))
            .await
            .unwrap_err()
            .code(),
        app.keys
            .rotate_key(rotate_req(
                "default",
                RotationMode::Graceful,
                &first.old_key_id,
            ))
            .await
            .unwrap_err()
            .code(),
        app.keys
            .get_revocation(proto::GetRevocationRequest { id: "nope".into() })
            .await
            .unwrap_err()
            .code(),
    ];
    assert_eq!(
        codes,
        [
            Code::NotFound,
            Code::FailedPrecondition,
            Code::InvalidArgument
        ]
    );
    let mut plain = KeyServiceClient::with_interceptor(app.channel.clone(), with_token_b as Auth);
    let st = plain
        .rotate_key(rotate_req("default", RotationMode::Graceful, ""))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    let mut b = LinkServiceClient::with_interceptor(app.channel.clone(), with_token_b as Auth);
    let st = b
        .issue_link(link_request(&bucket, "theirs/secret.pdf", Method::Get, 60))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::PermissionDenied);
    b.issue_link(link_request(&bucket, "mine/a", Method::Get, 60))
        .await
        .expect("granted requests are not audited");
    let st = LinkServiceClient::new(app.channel.clone())
        .issue_link(link_request(&bucket, "mine/a", Method::Get, 60))
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated);
    wait_for_count(
        &pool,
        "SELECT count(*) FROM audit_events WHERE caller IS NULL",
        1,
    )
    .await;

    let events = all_events(&mut app.keys).await;
    let seen: Vec<(String, String, String)> = events
        .iter()
        .rev()
        .map(|e| {
            (
                e.caller.clone(),
                e.rpc.rsplit('/').next().unwrap().to_owned(),
                e.code.clone(),
            )
        })
        .collect();
    let expect = |c: &str, rpc: &str, code: &str| (c.to_owned(), rpc.to_owned(), code.to_owned());
    assert_eq!(
        seen,
        [
            expect(CALLER, "ListSigningKeys", "OK"),
            expect(CALLER, "RotateKey", "OK"),
            expect(CALLER, "RotateKey", "INVALID_ARGUMENT"),
            expect(CALLER, "RotateKey", "NOT_FOUND"),
            expect(CALLER, "RotateKey", "FAILED_PRECONDITION"),
            expect(CALLER, "GetRevocation", "INVALID_ARGUMENT"),
            expect(CALLER_B, "RotateKey", "PERMISSION_DENIED"),
            expect(CALLER_B, "IssueLink", "PERMISSION_DENIED"),
            expect("", "IssueLink", "UNAUTHENTICATED"),
        ],
        "oldest first here; the RPC lists newest first"
    );
    let by_rpc = |rpc: &str, code: &str| {
        events
            .iter()
            .find(|e| e.rpc.ends_with(rpc) && e.code == code)
            .unwrap()
            .clone()
    };
    let denied = by_rpc("IssueLink", "PERMISSION_DENIED");
    assert_eq!(denied.target, format!("GET {bucket}/theirs/secret.pdf"));
    assert!(
        denied
            .message
            .starts_with("policy: caller it-caller-b may not use object key")
    );
    assert_eq!(
        by_rpc("RotateKey", "OK").target,
        "signer=default mode=ROTATION_MODE_GRACEFUL dry_run=false"
    );
    assert!(
        by_rpc("RotateKey", "PERMISSION_DENIED")
            .message
            .contains("KeyService is for admins")
    );
    let at = |e: &proto::AuditEvent| e.at.map(|t| (t.seconds, t.nanos));
    assert!(
        events.windows(2).all(|w| at(&w[0]) >= at(&w[1])),
        "newest first"
    );

    // Filter by caller. (The listings above were audited too.)
    let only_b = app
        .keys
        .list_audit_events(proto::ListAuditEventsRequest {
            caller: CALLER_B.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only_b.events.len(), 2);
    let listings: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE rpc = 'presignd.v1.KeyService/ListAuditEvents'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(listings >= 5, "{listings}");
}

#[sqlx::test]
async fn the_audit_table_refuses_update_delete_and_truncate(pool: PgPool) {
    let app = spawn_app(&pool).await;
    let mut plain = KeyServiceClient::with_interceptor(app.channel.clone(), with_token_b as Auth);
    plain
        .list_signing_keys(proto::ListSigningKeysRequest::default())
        .await
        .unwrap_err();
    // Denials are written in the background (src/audit.rs).
    let n = wait_for_count(&pool, "SELECT count(*) FROM audit_events", 1).await;
    assert_eq!(n, 1);
    for statement in [
        "UPDATE audit_events SET code = 'OK'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
    ] {
        let e = sqlx::query(statement).execute(&pool).await.unwrap_err();
        let db = e.as_database_error().expect("a database error");
        assert!(db.message().contains("append-only"), "{statement}: {db}");
    }
    let codes: Vec<String> = sqlx::query_scalar("SELECT code FROM audit_events")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(codes, ["PERMISSION_DENIED"]);
}

#[sqlx::test]
async fn presignctl_audit_lists_the_trail(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    app.keys
        .rotate_key(rotate_req("nobody", RotationMode::Graceful, ""))
        .await
        .unwrap_err();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_presignctl"))
        .args(["audit", "--json"])
        .env(
            "PRESIGND_ENDPOINT",
            format!("http://127.0.0.1:{}", app.port),
        )
        .env("PRESIGND_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Newest first: presignctl's own listing is not in its answer yet.
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["rpc"], "presignd.v1.KeyService/RotateKey");
    assert_eq!(lines[0]["code"], "NOT_FOUND");
    assert_eq!(lines[0]["caller"], CALLER);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_presignctl"))
        .args(["audit"])
        .env(
            "PRESIGND_ENDPOINT",
            format!("http://127.0.0.1:{}", app.port),
        )
        .env("PRESIGND_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("RotateKey") && text.contains("NOT_FOUND") && text.contains("signer=nobody"),
        "{text}"
    );
}

/// A flood of identical refusals does not grow the table: per peer and cause,
/// the first is a row at once and the repeats one more row carrying their
/// count, written when the window closes (here: at shutdown, which closes
/// every window). Counts add up to the requests made.
#[sqlx::test]
async fn repeated_refusals_are_two_rows_whose_counts_add_up(pool: PgPool) {
    const N: i64 = 150;
    let app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let mut anonymous = LinkServiceClient::new(app.channel.clone());
    let mut plain = KeyServiceClient::with_interceptor(app.channel.clone(), with_token_b as Auth);
    for _ in 0..N {
        let st = anonymous
            .issue_link(link_request(&bucket, "k", Method::Get, 60))
            .await
            .unwrap_err();
        assert_eq!(st.code(), Code::Unauthenticated);
        let st = plain
            .list_signing_keys(proto::ListSigningKeysRequest::default())
            .await
            .unwrap_err();
        assert_eq!(st.code(), Code::PermissionDenied);
    }
    let denials = "FROM audit_events WHERE code IN ('UNAUTHENTICATED', 'PERMISSION_DENIED')";
    wait_for_count(&pool, &format!("SELECT count(*) {denials}"), 2).await;
    drop((anonymous, plain, app));
    let total = wait_for_count(
        &pool,
        &format!("SELECT coalesce(sum(count), 0)::bigint {denials}"),
        2 * N,
    )
    .await;
    let rows: Vec<(Option<String>, String, i64)> = sqlx::query_as(
        "SELECT caller, code, count FROM audit_events
         WHERE code IN ('UNAUTHENTICATED', 'PERMISSION_DENIED') ORDER BY code, at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(total, 2 * N, "every refusal is counted: {rows:?}");
    assert_eq!(
        rows,
        [
            (Some(CALLER_B.to_owned()), "PERMISSION_DENIED".to_owned(), 1),
            (
                Some(CALLER_B.to_owned()),
                "PERMISSION_DENIED".to_owned(),
                N - 1
            ),
            (None, "UNAUTHENTICATED".to_owned(), 1),
            (None, "UNAUTHENTICATED".to_owned(), N - 1),
        ]
    );
}

//! ListLinks paging: every link exactly once while links are being added, and
//! page tokens that only open for the filter they were issued with.

use crate::fixture::*;
use crate::helpers::*;
use presignd::proto::{self, LinkFilter, Method};
use sqlx::PgPool;
use std::collections::HashSet;
use std::time::Duration;
use tonic::Code;

#[sqlx::test]
async fn an_altered_page_token_or_one_used_with_another_filter_is_refused(pool: PgPool) {
    let mut app = spawn_app_with_fixture(&pool).await;
    let photos = LinkFilter {
        bucket: "photos".into(),
        ..Default::default()
    };
    let first = list_page(&mut app, photos.clone(), 2, "").await.unwrap();
    assert_eq!(first.links.len(), 2);
    let token = first.next_page_token;
    assert!(!token.is_empty());

    let second = list_page(&mut app, photos.clone(), 2, &token)
        .await
        .unwrap();
    assert_eq!(
        second
            .links
            .iter()
            .map(|l| l.id.clone())
            .collect::<Vec<_>>(),
        ids(&[5, 6])
    );

    let mut altered = token.clone().into_bytes();
    altered[10] = if altered[10] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    for (name, filter, token) in [
        ("altered", photos.clone(), altered.as_str()),
        ("garbage", photos.clone(), "not a token"),
        (
            "another filter",
            LinkFilter {
                bucket: "docs".into(),
                ..Default::default()
            },
            token.as_str(),
        ),
        ("no filter", LinkFilter::default(), token.as_str()),
    ] {
        let status = list_page(&mut app, filter, 2, token).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(
            status.message().starts_with("page_token:"),
            "{name}: {status:?}"
        );
    }
}

#[sqlx::test]
async fn paging_returns_every_link_once_while_links_are_being_added(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let key_id: String =
        sqlx::query_scalar("SELECT key_id FROM signing_keys WHERE signer = 'default'")
            .fetch_one(&pool)
            .await
            .unwrap();
    // 300 links, ten per second: ties on issued_at are broken by id.
    let insert = "INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key,
                                     issued_at, expires_at, signature_sha256)
                  SELECT gen_random_uuid(), $1, 'default', 'it-caller', 'GET', 'seeded',
                         'k/' || i, $2 - (i / 10) * interval '1 second',
                         $2 + interval '1 hour', sha256(gen_random_uuid()::text::bytea)
                  FROM generate_series(1, $3) AS i";
    let base = chrono::Utc::now() - chrono::Duration::minutes(5);
    sqlx::query(insert)
        .bind(&key_id)
        .bind(base)
        .bind(300)
        .execute(&pool)
        .await
        .unwrap();
    let initial: HashSet<String> = sqlx::query_scalar("SELECT id::text FROM links")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();

    // Meanwhile: new links through IssueLink, and rows landing in the middle of
    // the range already listed or still ahead.
    let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
    let (mut links, bucket, writer_pool) = (app.links.clone(), app.bucket.clone(), pool.clone());
    let writer = tokio::spawn(async move {
        let mut written = 0;
        while stop.try_recv().is_err() {
            links
                .issue_link(link_request(&bucket, "k/new", Method::Get, 60))
                .await
                .unwrap();
            sqlx::query(insert)
                .bind(&key_id)
                .bind(base - chrono::Duration::seconds(written % 30))
                .bind(3)
                .execute(&writer_pool)
                .await
                .unwrap();
            written += 1;
            tokio::task::yield_now().await;
        }
        written
    });

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list_page(&mut app, LinkFilter::default(), 7, &token)
            .await
            .unwrap();
        seen.extend(page.links);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop_tx.send(()).unwrap();
    let written = writer.await.unwrap();
    assert!(written > 0, "links were added while paging");

    let mut unique = HashSet::new();
    for l in &seen {
        assert!(unique.insert(l.id.clone()), "{} returned twice", l.id);
    }
    let missing: Vec<_> = initial.difference(&unique).collect();
    assert!(missing.is_empty(), "links skipped: {missing:?}");
    let position = |l: &proto::Link| {
        let t = l.issued_at.unwrap();
        (t.seconds, t.nanos, l.id.clone())
    };
    assert!(
        seen.windows(2).all(|w| position(&w[0]) > position(&w[1])),
        "newest first, strictly"
    );
}

//! ListLinks paging over the dashboards fixture: page tokens that only open for
//! the filter they were issued with (every listing's paging: tests/it/paging.rs).

use crate::fixture::*;
use presignd::proto::LinkFilter;
use sqlx::PgPool;
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

/// A listing is read in slices of issued_at, each pruned to the partitions of
/// expiry that can hold it (link_queries::list_page). Over links issued across
/// 24 days, expiring up to 7 days later (so every page crosses day and
/// partition boundaries), with live, retired, inactive and deleted keys and
/// links marked by a revocation, paging through every filter in pages of 7
/// and of 60 yields exactly what one scan of the table yields, in order.
#[sqlx::test]
async fn paging_across_partitions_yields_exactly_what_one_scan_does(pool: PgPool) {
    use chrono::{Duration, DurationRound, Utc};
    use presignd::domain::LinkState as State;
    use presignd::paging::Cursor;
    use presignd::registry::link_queries::{self, LinkFilter as Filter};
    use presignd::registry::links::STATE_SQL;
    use presignd::registry::partitions::{self, Table};

    let now = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    // Daily partitions back to 32 days ago instead of the table as it was
    // before the upgrade (MINVALUE to tomorrow), as a registry that has run
    // for a month has.
    let mut conn = pool.acquire().await.unwrap();
    for name in partitions::list(&mut conn, Table::Links).await.unwrap() {
        if name.starts_with("links_before_") {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {name}")))
                .execute(&mut *conn)
                .await
                .unwrap();
        }
    }
    for n in -32..=0 {
        let day = (now + Duration::days(n)).date_naive();
        assert!(
            partitions::create(&mut conn, Table::Links, day, 5_000)
                .await
                .unwrap()
        );
    }
    drop(conn);
    sqlx::raw_sql(
        "INSERT INTO signers (name, backend) VALUES ('s', 'garage');
         INSERT INTO signing_keys (key_id, signer, state, sealed_secret) VALUES
             ('GKgone', 's', 'deleted', '\\x00'), ('GKdead', 's', 'inactive', '\\x00'),
             ('GKold', 's', 'retired', '\\x00'), ('GKlive', 's', 'active', '\\x00');
         INSERT INTO revocations (id, signer, mode, requested_by, reason, state, next_step,
                                  blast_radius)
         VALUES ('0198c0de-0000-7000-8000-000000000001', 's', 'revoke', 't', 't',
                 'succeeded', 'done', '{}');",
    )
    .execute(&pool)
    .await
    .unwrap();
    // 700 links, one every ~49 minutes back from an hour ahead over 24 days
    // (three at a time share a second, so ids break ties across slices); the
    // key follows the age (deleted, inactive, retired, then the live one), one
    // in nine is marked, TTLs from a minute to 7 days.
    sqlx::query(
        "INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key,
                            issued_at, expires_at, signature_sha256, revocation_id)
         SELECT gen_random_uuid(), k, 's', 'svc-' || (i % 4), 'GET', 'b' || (i % 3),
                'o/' || (i % 5) || '/' || i, at, at + ttl, sha256(i::text::bytea),
                CASE WHEN i % 9 = 0 THEN '0198c0de-0000-7000-8000-000000000001'::uuid END
         FROM (SELECT i, $1 + interval '1 hour' - (i / 3) * interval '147 minutes' AS at,
                      (ARRAY[interval '1 minute', interval '2 hours', interval '1 day',
                             interval '3 days', interval '7 days'])[1 + i % 5] AS ttl,
                      CASE WHEN i < 120 THEN 'GKlive' WHEN i < 300 THEN 'GKold'
                           WHEN i < 600 THEN 'GKdead' ELSE 'GKgone' END AS k
               FROM generate_series(0, 699) i) g",
    )
    .bind(now)
    .execute(&pool)
    .await
    .unwrap();

    #[derive(sqlx::FromRow)]
    struct Row {
        id: uuid::Uuid,
        key_id: String,
        caller: String,
        bucket: String,
        object_key: String,
        expires_at: chrono::DateTime<Utc>,
        state: State,
    }
    let all: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT l.id, l.key_id, l.caller, l.bucket, l.object_key, l.expires_at,
                {STATE_SQL} AS state
         FROM links l JOIN signing_keys k ON k.key_id = l.key_id
         ORDER BY l.issued_at DESC, l.id DESC"
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(all.len(), 700);

    let f = Filter::default;
    let window = (now - Duration::days(12), now - Duration::days(9));
    type Wanted = Box<dyn Fn(&Row) -> bool>;
    let cases: Vec<(&str, Filter, Wanted)> = vec![
        ("no filter", f(), Box::new(|_| true)),
        (
            "active",
            Filter {
                state: Some(State::Active),
                ..f()
            },
            Box::new(|r| r.state == State::Active),
        ),
        (
            "expired",
            Filter {
                state: Some(State::Expired),
                ..f()
            },
            Box::new(|r| r.state == State::Expired),
        ),
        (
            "revoked",
            Filter {
                state: Some(State::Revoked),
                ..f()
            },
            Box::new(|r| r.state == State::Revoked),
        ),
        (
            "an old key",
            Filter {
                key_id: Some("GKdead".into()),
                ..f()
            },
            Box::new(|r| r.key_id == "GKdead"),
        ),
        (
            "bucket and caller",
            Filter {
                bucket: Some("b1".into()),
                caller: Some("svc-2".into()),
                ..f()
            },
            Box::new(|r| r.bucket == "b1" && r.caller == "svc-2"),
        ),
        (
            "prefix",
            Filter {
                object_key_prefix: Some("o/3/".into()),
                ..f()
            },
            Box::new(|r| r.object_key.starts_with("o/3/")),
        ),
        (
            "expiry window",
            Filter {
                expires_after: Some(window.0),
                expires_before: Some(window.1),
                ..f()
            },
            Box::new(move |r| r.expires_at >= window.0 && r.expires_at < window.1),
        ),
        (
            "revoked, one caller",
            Filter {
                state: Some(State::Revoked),
                caller: Some("svc-1".into()),
                ..f()
            },
            Box::new(|r| r.state == State::Revoked && r.caller == "svc-1"),
        ),
        (
            "expired, one key",
            Filter {
                state: Some(State::Expired),
                key_id: Some("GKold".into()),
                ..f()
            },
            Box::new(|r| r.state == State::Expired && r.key_id == "GKold"),
        ),
        (
            "nothing",
            Filter {
                key_id: Some("GKnone".into()),
                ..f()
            },
            Box::new(|_| false),
        ),
        (
            "nothing: a prefix no key has",
            Filter {
                object_key_prefix: Some("o/9/".into()),
                ..f()
            },
            Box::new(|_| false),
        ),
    ];
    // Each case twice: with the roll-up's cells as the inserts left them
    // (deltas), then folded into days (what the maintenance loop does).
    for folded in [false, true] {
        if folded {
            presignd::registry::link_summary::fold(&pool).await.unwrap();
        }
        for (name, filter, wanted) in &cases {
            let expected: Vec<uuid::Uuid> =
                all.iter().filter(|r| wanted(r)).map(|r| r.id).collect();
            if !name.starts_with("nothing") {
                assert!(expected.len() > 14, "{name}: too few links to page");
            }
            for size in [7, 60] {
                let mut listed = Vec::new();
                let mut after: Option<Cursor> = None;
                loop {
                    let page = link_queries::list_page(&pool, filter, after, size)
                        .await
                        .unwrap();
                    listed.extend(page.iter().map(|l| l.id));
                    match page.last() {
                        Some(last) if page.len() as i64 == size => after = Some(last.into()),
                        _ => break,
                    }
                }
                assert_eq!(
                    listed, expected,
                    "{name}, pages of {size}, folded: {folded}"
                );
            }
        }
    }
}

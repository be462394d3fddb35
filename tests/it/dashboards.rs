//! GetLink, ListLinks and SummarizeLinks against links whose answers are known:
//! tests/fixtures/dashboards.sql seeds eleven links over five keys in every state.

use crate::helpers::*;
use presignd::proto::{self, GroupBy, LinkFilter, LinkState, Method};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use tonic::Code;

/// A server whose registry holds the fixture links. The fixture goes in once the
/// server is ready: its keys' secrets are fake, and a server loads active keys
/// only at startup.
async fn spawn_app_with_fixture(pool: &PgPool) -> TestApp {
    let app = spawn_app(pool).await;
    seed_fixture(pool).await;
    app
}

pub async fn seed_fixture(pool: &PgPool) {
    sqlx::raw_sql(include_str!("../fixtures/dashboards.sql"))
        .execute(pool)
        .await
        .expect("the dashboards fixture loads");
}

/// The id of fixture link `n`.
fn id(n: u8) -> String {
    format!("00000000-0000-7000-8000-0000000000{n:02}")
}

fn ids(ns: &[u8]) -> Vec<String> {
    ns.iter().map(|&n| id(n)).collect()
}

/// The fixture link's expires_at, as the registry holds it.
async fn expires_at(pool: &PgPool, n: u8) -> prost_types::Timestamp {
    let t: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT expires_at FROM links WHERE id = $1::uuid")
            .bind(id(n))
            .fetch_one(pool)
            .await
            .unwrap();
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

async fn list_page(
    app: &mut TestApp,
    filter: LinkFilter,
    page_size: u32,
    page_token: &str,
) -> Result<proto::ListLinksResponse, tonic::Status> {
    app.links
        .list_links(proto::ListLinksRequest {
            filter: Some(filter),
            page_size,
            page_token: page_token.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Every link matching `filter`, walking pages of 3.
async fn list_all(app: &mut TestApp, filter: LinkFilter) -> Vec<proto::Link> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = list_page(app, filter.clone(), 3, &token).await.unwrap();
        assert!(page.links.len() <= 3);
        out.extend(page.links);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

async fn list_ids(app: &mut TestApp, filter: LinkFilter) -> Vec<String> {
    list_all(app, filter)
        .await
        .into_iter()
        .map(|l| l.id)
        .collect()
}

#[sqlx::test]
async fn every_filter_selects_exactly_its_links_newest_first(pool: PgPool) {
    let mut app = spawn_app_with_fixture(&pool).await;
    let f = LinkFilter::default;
    let state = |s: LinkState| LinkFilter {
        state: s as i32,
        ..f()
    };
    let cases: Vec<(&str, LinkFilter, &[u8])> = vec![
        ("no filter", f(), &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
        ("active", state(LinkState::Active), &[1, 2, 4, 7, 11]),
        ("expired", state(LinkState::Expired), &[3, 8]),
        ("revoked", state(LinkState::Revoked), &[5, 6, 9, 10]),
        (
            "bucket",
            LinkFilter {
                bucket: "photos".into(),
                ..f()
            },
            &[1, 2, 5, 6, 9],
        ),
        (
            "object key prefix",
            LinkFilter {
                object_key_prefix: "users/1/".into(),
                ..f()
            },
            &[1, 2, 5, 6, 11],
        ),
        (
            "a prefix with LIKE wildcards matches them literally",
            LinkFilter {
                object_key_prefix: "report_%".into(),
                ..f()
            },
            &[4],
        ),
        (
            "caller",
            LinkFilter {
                caller: "svc-b".into(),
                ..f()
            },
            &[3, 4, 10],
        ),
        (
            "key id",
            LinkFilter {
                key_id: "GKALPHA1".into(),
                ..f()
            },
            &[1, 2, 3, 4],
        ),
        (
            "signer",
            LinkFilter {
                signer: "beta".into(),
                ..f()
            },
            &[7, 8, 9, 10, 11],
        ),
        (
            "expiry window: after inclusive, before exclusive",
            LinkFilter {
                expires_after: Some(expires_at(&pool, 2).await),
                expires_before: Some(expires_at(&pool, 7).await),
                ..f()
            },
            &[2, 4, 5],
        ),
        (
            "state and bucket",
            LinkFilter {
                state: LinkState::Active as i32,
                bucket: "docs".into(),
                ..f()
            },
            &[4, 7],
        ),
        (
            "state and signer",
            LinkFilter {
                state: LinkState::Revoked as i32,
                signer: "alpha".into(),
                ..f()
            },
            &[5, 6],
        ),
        (
            "nothing matches",
            LinkFilter {
                bucket: "photos".into(),
                caller: "svc-b".into(),
                ..f()
            },
            &[],
        ),
    ];
    for (name, filter, expected) in cases {
        assert_eq!(list_ids(&mut app, filter).await, ids(expected), "{name}");
    }
}

#[sqlx::test]
async fn the_state_filter_agrees_with_the_state_each_link_reports(pool: PgPool) {
    let mut app = spawn_app_with_fixture(&pool).await;
    let all = list_all(&mut app, LinkFilter::default()).await;
    let expected: BTreeMap<String, LinkState> = [
        (1, LinkState::Active),
        (2, LinkState::Active),
        (3, LinkState::Expired),
        (4, LinkState::Active),
        (5, LinkState::Revoked),
        (6, LinkState::Revoked),
        (7, LinkState::Active),
        (8, LinkState::Expired),
        (9, LinkState::Revoked),
        (10, LinkState::Revoked),
        (11, LinkState::Active),
    ]
    .into_iter()
    .map(|(n, s)| (id(n), s))
    .collect();
    assert_eq!(all.len(), expected.len());
    for link in &all {
        assert_eq!(link.state, expected[&link.id] as i32, "{}", link.id);
    }
    for s in [LinkState::Active, LinkState::Expired, LinkState::Revoked] {
        let filtered = list_ids(
            &mut app,
            LinkFilter {
                state: s as i32,
                ..Default::default()
            },
        )
        .await;
        let reported: Vec<String> = all
            .iter()
            .filter(|l| l.state == s as i32)
            .map(|l| l.id.clone())
            .collect();
        assert_eq!(filtered, reported, "{s:?}");
    }
}

async fn state_of(app: &mut TestApp, id: &str) -> i32 {
    app.links
        .get_link(proto::GetLinkRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .state
}

#[sqlx::test]
async fn a_link_expires_and_a_link_of_a_deactivated_key_is_revoked(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let bucket = app.bucket.clone();
    let short = app
        .issue(link_request(&bucket, &unique_key("short"), Method::Get, 1))
        .await
        .unwrap()
        .link
        .unwrap();
    let long = app
        .issue(link_request(&bucket, &unique_key("long"), Method::Get, 600))
        .await
        .unwrap()
        .link
        .unwrap();
    // The only way to let a 1-second link expire is to wait past it.
    tokio::time::sleep(Duration::from_millis(2100)).await;

    assert_eq!(
        state_of(&mut app, &short.id).await,
        LinkState::Expired as i32
    );
    assert_eq!(state_of(&mut app, &long.id).await, LinkState::Active as i32);

    // Rotation is not there yet: deactivate the key in the registry directly.
    sqlx::query("UPDATE signing_keys SET state = 'inactive' WHERE key_id = $1")
        .bind(&long.key_id)
        .execute(&pool)
        .await
        .unwrap();
    for link in [&short, &long] {
        assert_eq!(
            state_of(&mut app, &link.id).await,
            LinkState::Revoked as i32,
            "a link of an inactive key is revoked, expired or not"
        );
    }
    let by_state = |s: LinkState| LinkFilter {
        state: s as i32,
        ..Default::default()
    };
    assert_eq!(
        list_ids(&mut app, by_state(LinkState::Revoked)).await,
        vec![long.id.clone(), short.id.clone()]
    );
    assert!(
        list_ids(&mut app, by_state(LinkState::Active))
            .await
            .is_empty()
    );
    assert!(
        list_ids(&mut app, by_state(LinkState::Expired))
            .await
            .is_empty()
    );
}

#[sqlx::test]
async fn get_link_returns_the_link_or_not_found_and_refuses_a_malformed_id(pool: PgPool) {
    let mut app = spawn_app_with_fixture(&pool).await;
    let link = app
        .links
        .get_link(proto::GetLinkRequest { id: id(4) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            link.key_id.as_str(),
            link.signer.as_str(),
            link.caller.as_str(),
            link.bucket.as_str(),
            link.object_key.as_str()
        ),
        ("GKALPHA1", "alpha", "svc-b", "docs", "report_%_x.pdf")
    );
    assert_eq!(link.method, Method::Head as i32);
    assert_eq!(link.expires_at, Some(expires_at(&pool, 4).await));

    let unknown = uuid::Uuid::now_v7().to_string();
    let status = app
        .links
        .get_link(proto::GetLinkRequest { id: unknown })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    for bad in ["", "not-a-uuid", "0000"] {
        let status = app
            .links
            .get_link(proto::GetLinkRequest { id: bad.into() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}: {status:?}");
        assert!(status.message().starts_with("id:"), "{status:?}");
    }
}

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
async fn bad_filter_fields_are_invalid_arguments_naming_them(pool: PgPool) {
    let mut app = spawn_app_with_fixture(&pool).await;
    let t = |s| prost_types::Timestamp {
        seconds: s,
        nanos: 0,
    };
    let f = LinkFilter::default;
    for (field, filter) in [
        (
            "filter.bucket",
            LinkFilter {
                bucket: "Not A Bucket".into(),
                ..f()
            },
        ),
        (
            "filter.caller",
            LinkFilter {
                caller: "UPPER".into(),
                ..f()
            },
        ),
        (
            "filter.key_id",
            LinkFilter {
                key_id: "GK 1".into(),
                ..f()
            },
        ),
        ("filter.state", LinkFilter { state: 42, ..f() }),
        (
            "filter.expires_before",
            LinkFilter {
                expires_after: Some(t(2_000_000_000)),
                expires_before: Some(t(1_000_000_000)),
                ..f()
            },
        ),
    ] {
        let status = list_page(&mut app, filter, 0, "").await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().starts_with(&format!("{field}:")),
            "{status:?}"
        );
    }
}

/// (group, active, expired, revoked, the fixture link holding the latest expiry)
type Expected = (&'static str, u64, u64, u64, u8);

async fn assert_summary(
    app: &mut TestApp,
    pool: &PgPool,
    filter: LinkFilter,
    group_by: GroupBy,
    expected: &[Expected],
) {
    let groups = app
        .links
        .summarize_links(proto::SummarizeLinksRequest {
            filter: Some(filter),
            group_by: group_by as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .groups;
    let mut want = Vec::new();
    for &(group, active, expired, revoked, latest) in expected {
        want.push(proto::LinkSummaryGroup {
            group: group.into(),
            active,
            expired,
            revoked,
            latest_expiry: Some(expires_at(pool, latest).await),
        });
    }
    assert_eq!(groups, want, "{group_by:?}");
}

#[sqlx::test]
async fn every_group_by_counts_each_state_and_the_latest_expiry(pool: PgPool) {
    let mut app = spawn_app_with_fixture(&pool).await;
    let all = LinkFilter::default;
    #[rustfmt::skip]
    let cases: Vec<(GroupBy, LinkFilter, Vec<Expected>)> = vec![
        (GroupBy::Key, all(), vec![
            ("GKALPHA0", 0, 0, 2, 5),
            ("GKALPHA1", 3, 1, 0, 4),
            ("GKBETA0", 0, 0, 1, 10),
            ("GKBETA1", 1, 1, 0, 7),
            ("GKBETA2", 1, 0, 1, 9),
        ]),
        (GroupBy::Signer, all(), vec![
            ("alpha", 3, 1, 2, 5),
            ("beta", 2, 1, 2, 10),
        ]),
        (GroupBy::Bucket, all(), vec![
            ("archive", 1, 0, 0, 11),
            ("docs", 2, 2, 1, 10),
            ("photos", 2, 0, 3, 9),
        ]),
        (GroupBy::Caller, all(), vec![
            ("svc-a", 3, 0, 2, 5),
            ("svc-b", 1, 1, 1, 10),
            ("svc-c", 1, 1, 1, 9),
        ]),
        (GroupBy::Bucket, LinkFilter { signer: "alpha".into(), ..all() }, vec![
            ("docs", 1, 1, 0, 4),
            ("photos", 2, 0, 2, 5),
        ]),
        (GroupBy::Signer, LinkFilter { state: LinkState::Active as i32, ..all() }, vec![
            ("alpha", 3, 0, 0, 4),
            ("beta", 2, 0, 0, 7),
        ]),
        (GroupBy::Bucket, LinkFilter { state: LinkState::Expired as i32, ..all() }, vec![
            ("docs", 0, 2, 0, 3),
        ]),
        (GroupBy::Key, LinkFilter { state: LinkState::Revoked as i32, ..all() }, vec![
            ("GKALPHA0", 0, 0, 2, 5),
            ("GKBETA0", 0, 0, 1, 10),
            ("GKBETA2", 0, 0, 1, 9),
        ]),
        (GroupBy::Caller, LinkFilter { caller: "nobody".into(), ..all() }, vec![]),
    ];
    for (group_by, filter, expected) in cases {
        assert_summary(&mut app, &pool, filter, group_by, &expected).await;
    }
}

#[sqlx::test]
async fn summarize_without_a_group_by_is_invalid_argument_naming_it(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    for group_by in [GroupBy::Unspecified as i32, 42] {
        let status = app
            .links
            .summarize_links(proto::SummarizeLinksRequest {
                filter: None,
                group_by,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with("group_by:"), "{status:?}");
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

#[sqlx::test]
async fn a_link_marked_by_a_revocation_is_revoked_even_while_its_key_lives(pool: PgPool) {
    let mut app = spawn_app_with_fixture(&pool).await;
    // The newest link, of an active key: newer than every link of a dead key.
    sqlx::query("UPDATE links SET revocation_id = gen_random_uuid() WHERE id = $1::uuid")
        .bind(id(1))
        .execute(&pool)
        .await
        .unwrap();
    let revoked = LinkFilter {
        state: LinkState::Revoked as i32,
        ..Default::default()
    };
    assert_eq!(list_ids(&mut app, revoked).await, ids(&[1, 5, 6, 9, 10]));
    assert_eq!(state_of(&mut app, &id(1)).await, LinkState::Revoked as i32);
}

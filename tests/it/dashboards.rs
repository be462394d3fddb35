//! GetLink and ListLinks filters against the fixture's links, and how states
//! are derived: expiry, a deactivated key, a revocation's mark.

use crate::fixture::*;
use crate::helpers::*;
use presignd::proto::{self, LinkFilter, LinkState, Method};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::Code;

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
        // Seconds Postgres cannot store (year 300000; 5000 BC, which chrono
        // accepts): the caller's mistake, not an INTERNAL.
        (
            "filter.expires_before",
            LinkFilter {
                expires_before: Some(t(300_000 * 31_556_952)),
                ..f()
            },
        ),
        (
            "filter.expires_after",
            LinkFilter {
                expires_after: Some(t(-7_000 * 31_556_952)),
                ..f()
            },
        ),
        (
            "filter.expires_after",
            LinkFilter {
                expires_after: Some(t(i64::MIN)),
                ..f()
            },
        ),
    ] {
        let status = app
            .links
            .summarize_links(proto::SummarizeLinksRequest {
                filter: Some(filter.clone()),
                group_by: proto::GroupBy::Key as i32,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().starts_with(&format!("{field}:")),
            "{status:?}"
        );
        let status = list_page(&mut app, filter, 0, "").await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().starts_with(&format!("{field}:")),
            "{status:?}"
        );
    }
}

#[sqlx::test]
async fn a_link_marked_by_a_revocation_is_revoked_even_while_its_key_lives(pool: PgPool) {
    let mut app = spawn_app_with_fixture(&pool).await;
    // The newest link, of an active key: newer than every link of a dead key.
    // (The fixture's revocation, which already marked link 9.)
    sqlx::query("UPDATE links SET revocation_id = '0198c0de-0000-7000-8000-000000000001' WHERE id = $1::uuid")
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

/// Object keys around the edges of a prefix's range (link_queries'
/// prefix_successor): LIKE's wildcards, multibyte chars, the last scalar
/// value before the surrogates and the last of all. Link n was issued n - 100
/// seconds ago: newer than every fixture link, and listed in order of n.
const EDGE_KEYS: [(u16, &str); 17] = [
    (101, "a%b/1"),
    (102, "a%b/2"),
    (103, "aXb/1"),
    (104, "a_b/1"),
    (105, "aYb/1"),
    (106, "日本/1"),
    (107, "日本/2"),
    // The successor of "日本": its last char plus one.
    (108, "日札"),
    (109, "日本"),
    (110, "q\u{D7FF}1"),
    // The successor of "q\u{D7FF}": the surrogates are skipped.
    (111, "q\u{E000}"),
    (112, "\u{10FFFF}"),
    (113, "\u{10FFFF}\u{10FFFF}/x"),
    (114, "z\u{10FFFF}/1"),
    // The successor of "z\u{10FFFF}": char::MAX cannot grow, so 'z' does.
    (115, "{"),
    (116, "z\u{10FFFE}"),
    (117, "\u{10FFFE}\u{10FFFF}"),
];

fn edge_id(n: u16) -> String {
    format!("00000000-0000-7000-8000-000000000{n:03}")
}

#[sqlx::test]
async fn an_object_key_prefix_selects_exactly_the_keys_starting_with_it(pool: PgPool) {
    let mut app = spawn_app_with_fixture(&pool).await;
    // One statement, so one now() for all.
    let (ns, keys): (Vec<i32>, Vec<&str>) =
        EDGE_KEYS.iter().map(|&(n, k)| (i32::from(n), k)).unzip();
    sqlx::query(
        "INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key,
                            issued_at, expires_at, signature_sha256)
         SELECT ('00000000-0000-7000-8000-000000000' || n)::uuid, 'GKALPHA1', 'alpha',
                'svc-a', 'GET', 'edges', key,
                date_trunc('second', now()) - (n - 100) * interval '1 second',
                date_trunc('second', now()) + interval '1 hour', sha256(n::text::bytea)
         FROM unnest($1::int[], $2::text[]) AS t (n, key)",
    )
    .bind(&ns)
    .bind(&keys)
    .execute(&pool)
    .await
    .unwrap();
    let cases: &[(&str, &[u16])] = &[
        ("a%b/", &[101, 102]),
        ("a%", &[101, 102]),
        ("a_b", &[104]),
        ("a", &[101, 102, 103, 104, 105]),
        ("日本", &[106, 107, 109]),
        ("日本/", &[106, 107]),
        ("日", &[106, 107, 108, 109]),
        ("q\u{D7FF}", &[110]),
        // No string is greater than every one starting with it: no upper end.
        ("\u{10FFFF}", &[112, 113]),
        ("\u{10FFFF}\u{10FFFF}", &[113]),
        ("z\u{10FFFF}", &[114]),
        ("z", &[114, 116]),
        ("\u{10FFFE}", &[117]),
        ("nobody/", &[]),
        ("\u{10FFFF}nobody", &[]),
    ];
    for &(prefix, expected) in cases {
        // Every key the prefix should select does start with it, and no other.
        let starting: Vec<u16> = EDGE_KEYS
            .iter()
            .filter(|(_, key)| key.starts_with(prefix))
            .map(|&(n, _)| n)
            .collect();
        assert_eq!(starting, expected, "the case for {prefix:?} is wrong");
        let filter = LinkFilter {
            object_key_prefix: prefix.into(),
            ..Default::default()
        };
        assert_eq!(
            list_ids(&mut app, filter.clone()).await,
            expected.iter().map(|&n| edge_id(n)).collect::<Vec<_>>(),
            "{prefix:?}"
        );
        let counted: u64 = app
            .links
            .summarize_links(proto::SummarizeLinksRequest {
                filter: Some(filter),
                group_by: proto::GroupBy::Signer as i32,
            })
            .await
            .unwrap()
            .into_inner()
            .groups
            .iter()
            .map(|g| g.active + g.expired + g.revoked)
            .sum();
        assert_eq!(counted, expected.len() as u64, "summary of {prefix:?}");
    }
}

/// A page is read in slices of issued_at, each pruned to the partitions that
/// can hold it: every slice is planned for its values, never a cached
/// prepared statement (which Postgres may switch to one generic plan after
/// five runs, pruning nothing at plan time and guessing every filter's
/// selectivity), whatever the filter (link_queries::list_page).
#[sqlx::test]
async fn a_listing_is_planned_for_its_values_every_time(pool: PgPool) {
    use presignd::registry::link_queries::{self, LinkFilter};
    seed_fixture(&pool).await;
    // One connection, so its prepared statements are the listing's.
    let one = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    let filters = [
        LinkFilter {
            object_key_prefix: Some("users/".into()),
            expires_after: Some(chrono::Utc::now()),
            ..Default::default()
        },
        LinkFilter {
            bucket: Some("photos".into()),
            ..Default::default()
        },
    ];
    for filter in &filters {
        for _ in 0..8 {
            let page = link_queries::list_page(&one, filter, None, 3)
                .await
                .unwrap();
            assert_eq!(page.len(), 3);
        }
    }
    // The pages' statements, not the prefix's existence probe: that one is
    // planned once for any prefix on purpose (`Probe::prefix_exists`), and is
    // prepared.
    for pattern in ["%object_key COLLATE%", "%l.bucket = $1%"] {
        let cached: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_prepared_statements
             WHERE statement LIKE $1 AND statement NOT LIKE 'SELECT EXISTS (SELECT FROM links l%'",
        )
        .bind(pattern)
        .fetch_one(&one)
        .await
        .unwrap();
        assert_eq!(cached, 0, "{pattern}");
    }
}

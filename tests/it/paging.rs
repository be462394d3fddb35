//! The one paging scheme on every listing (ListLinks, ListRevocations,
//! ListAuditEvents): every row exactly once while rows are inserted, each
//! listing refuses the others' tokens, and page_size reads alike.

use crate::helpers::*;
use chrono::{DateTime, Duration, Utc};
use presignd::proto::{self, LinkFilter};
use sqlx::PgPool;
use std::collections::HashSet;
use tonic::{Code, Status};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Listing {
    Links,
    Revocations,
    AuditEvents,
}

const LISTINGS: [Listing; 3] = [Listing::Links, Listing::Revocations, Listing::AuditEvents];

impl Listing {
    fn rpc(self) -> &'static str {
        match self {
            Self::Links => "ListLinks",
            Self::Revocations => "ListRevocations",
            Self::AuditEvents => "ListAuditEvents",
        }
    }

    /// Inserts `n` rows, ten per second from `newest` back, straight into the
    /// registry (as old as the test wants, and fast).
    async fn seed(self, pool: &PgPool, newest: DateTime<Utc>, n: i32) {
        let sql = match self {
            Self::Links => {
                "INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key,
                                    issued_at, expires_at, signature_sha256)
                 SELECT gen_random_uuid(), k.key_id, 'default', 'it-caller', 'GET', 'seeded',
                        'k/' || i, $1 - (i / 10) * interval '1 second', $1 + interval '1 hour',
                        sha256(gen_random_uuid()::text::bytea)
                 FROM generate_series(1, $2) AS i
                 JOIN signing_keys k ON k.signer = 'default' AND k.state = 'active'"
            }
            Self::Revocations => {
                "INSERT INTO revocations (id, signer, mode, requested_by, reason, state,
                                          next_step, blast_radius, created_at)
                 SELECT gen_random_uuid(), 'default', 'graceful', 'it-caller', 'seeded',
                        'succeeded', 'done', $3::jsonb, $1 - (i / 10) * interval '1 second'
                 FROM generate_series(1, $2) AS i"
            }
            Self::AuditEvents => {
                "INSERT INTO audit_events (id, at, caller, rpc, code)
                 SELECT gen_random_uuid(), $1 - (i / 10) * interval '1 second', 'seeded',
                        'presignd.v1.KeyService/Seeded', 'OK'
                 FROM generate_series(1, $2) AS i"
            }
        };
        let radius =
            serde_json::to_string(&presignd::registry::blast_radius::BlastRadius::default())
                .unwrap();
        let q = sqlx::query(sql).bind(newest).bind(n);
        let q = match self {
            Self::Revocations => q.bind(radius),
            _ => q,
        };
        q.execute(pool).await.expect("seeding rows");
    }

    async fn count(self, pool: &PgPool) -> i64 {
        let table = match self {
            Self::Links => "links",
            Self::Revocations => "revocations",
            Self::AuditEvents => "audit_events",
        };
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(pool)
            .await
            .unwrap()
    }

    async fn ids(self, pool: &PgPool) -> HashSet<String> {
        let table = match self {
            Self::Links => "links",
            Self::Revocations => "revocations",
            Self::AuditEvents => "audit_events",
        };
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT id::text FROM {table}")))
            .fetch_all(pool)
            .await
            .unwrap()
            .into_iter()
            .collect()
    }

    /// One page through the RPC, unfiltered unless `filtered` (the listing's
    /// one equality filter): its rows' `(time µs, id)` and the next token.
    async fn page(
        self,
        app: &mut TestApp,
        filtered: bool,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<(i64, String)>, String), Status> {
        let pos = |t: Option<prost_types::Timestamp>, id: String| {
            let t = t.unwrap();
            (t.seconds * 1_000_000 + i64::from(t.nanos / 1000), id)
        };
        let page_token = page_token.to_owned();
        Ok(match self {
            Self::Links => {
                let r = app
                    .links
                    .list_links(proto::ListLinksRequest {
                        filter: Some(LinkFilter {
                            bucket: if filtered { "seeded".into() } else { "".into() },
                            ..Default::default()
                        }),
                        page_size,
                        page_token,
                    })
                    .await?
                    .into_inner();
                let rows = r.links.into_iter().map(|l| pos(l.issued_at, l.id));
                (rows.collect(), r.next_page_token)
            }
            Self::Revocations => {
                let r = app
                    .keys
                    .list_revocations(proto::ListRevocationsRequest {
                        signer: if filtered {
                            "default".into()
                        } else {
                            "".into()
                        },
                        page_size,
                        page_token,
                    })
                    .await?
                    .into_inner();
                let rows = r.revocations.into_iter().map(|x| pos(x.created_at, x.id));
                (rows.collect(), r.next_page_token)
            }
            Self::AuditEvents => {
                let r = app
                    .keys
                    .list_audit_events(proto::ListAuditEventsRequest {
                        caller: if filtered { "seeded".into() } else { "".into() },
                        page_size,
                        page_token,
                    })
                    .await?
                    .into_inner();
                let rows = r.events.into_iter().map(|e| pos(e.at, e.id));
                (rows.collect(), r.next_page_token)
            }
        })
    }
}

async fn every_row_once_while_rows_are_inserted(pool: PgPool, listing: Listing) {
    let mut app = spawn_app(&pool).await;
    let base = Utc::now() - Duration::minutes(5);
    listing.seed(&pool, base, 300).await;
    let initial = listing.ids(&pool).await;

    // Meanwhile: rows landing in the middle of the range already listed or
    // still ahead, and newer than every row (the listing's own audit rows too).
    let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
    let writer_pool = pool.clone();
    let writer = tokio::spawn(async move {
        let mut written = 0;
        while stop.try_recv().is_err() {
            let at = base - Duration::seconds(written % 30) - Duration::milliseconds(500);
            listing.seed(&writer_pool, at, 3).await;
            listing.seed(&writer_pool, Utc::now(), 1).await;
            written += 1;
            tokio::task::yield_now().await;
        }
        written
    });

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let (rows, next) = listing.page(&mut app, false, 7, &token).await.unwrap();
        assert!(rows.len() <= 7);
        seen.extend(rows);
        if next.is_empty() {
            break;
        }
        token = next;
        // Let the writer in between pages.
        tokio::task::yield_now().await;
    }
    stop_tx.send(()).unwrap();
    let written = writer.await.unwrap();
    assert!(written > 0, "{listing:?}: rows were added while paging");

    let mut unique = HashSet::new();
    for (_, id) in &seen {
        assert!(
            unique.insert(id.clone()),
            "{listing:?}: {id} returned twice"
        );
    }
    let missing: Vec<_> = initial.difference(&unique).collect();
    assert!(missing.is_empty(), "{listing:?}: rows skipped: {missing:?}");
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "{listing:?}: newest first, strictly"
    );
}

#[sqlx::test]
async fn list_links_returns_every_link_once_while_links_are_inserted(pool: PgPool) {
    every_row_once_while_rows_are_inserted(pool, Listing::Links).await;
}

#[sqlx::test]
async fn list_revocations_returns_every_revocation_once_while_revocations_are_inserted(
    pool: PgPool,
) {
    every_row_once_while_rows_are_inserted(pool, Listing::Revocations).await;
}

#[sqlx::test]
async fn list_audit_events_returns_every_event_once_while_events_are_inserted(pool: PgPool) {
    every_row_once_while_rows_are_inserted(pool, Listing::AuditEvents).await;
}

fn assert_refused(result: Result<(Vec<(i64, String)>, String), Status>, reason: &str, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    assert!(
        status.message().starts_with("page_token:") && status.message().contains(reason),
        "{what}: {status:?}"
    );
}

#[sqlx::test]
async fn a_token_opens_only_on_its_listing_with_its_filter(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let base = Utc::now() - Duration::minutes(5);
    let mut tokens = Vec::new();
    for listing in LISTINGS {
        listing.seed(&pool, base, 5).await;
        let (_, token) = listing.page(&mut app, true, 2, "").await.unwrap();
        assert_eq!(token.len(), 99, "{listing:?}: the same token layout");
        // The token works where it was issued...
        let (rows, _) = listing.page(&mut app, true, 2, &token).await.unwrap();
        assert_eq!(rows.len(), 2, "{listing:?}");
        tokens.push((listing, token));
    }
    for (from, token) in &tokens {
        // ...and nowhere else, nor with another filter, nor altered.
        for to in LISTINGS.into_iter().filter(|l| l != from) {
            let issued_by = format!("issued by {}, not {}", from.rpc(), to.rpc());
            let what = format!("{from:?} token on {to:?}");
            assert_refused(to.page(&mut app, true, 2, token).await, &issued_by, &what);
        }
        let what = format!("{from:?} token without its filter");
        let another = from.page(&mut app, false, 2, token).await;
        assert_refused(another, "another filter", &what);
        let mut altered = token.clone().into_bytes();
        altered[40] = if altered[40] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        let what = format!("{from:?} token altered");
        let forged = from.page(&mut app, true, 2, &altered).await;
        assert_refused(forged, "altered or forged", &what);
    }
}

#[sqlx::test]
async fn page_size_0_1_and_1001_read_alike_on_every_listing(pool: PgPool) {
    let mut app = spawn_app(&pool).await;
    let base = Utc::now() - Duration::minutes(5);
    for listing in LISTINGS {
        listing.seed(&pool, base, 1001).await;
        // The audit trail also holds this test's earlier calls: count, then read.
        let total = listing.count(&pool).await;
        assert!(total > 1000, "{listing:?}: {total} rows");
        let (rows, token) = listing.page(&mut app, false, 1001, "").await.unwrap();
        assert_eq!(rows.len(), 1000, "{listing:?}: 1001 is coerced to 1000");
        assert!(!token.is_empty(), "{listing:?}: more rows follow");
        let (rest, last) = listing.page(&mut app, false, 1001, &token).await.unwrap();
        assert_eq!(rest.len() as i64, total - 1000, "{listing:?}: the rest");
        assert!(last.is_empty(), "{listing:?}: the last page has no token");

        let (rows, token) = listing.page(&mut app, false, 0, "").await.unwrap();
        assert_eq!(rows.len(), 100, "{listing:?}: 0 means 100");
        assert!(!token.is_empty());
        let (rows, token) = listing.page(&mut app, false, 1, "").await.unwrap();
        assert_eq!(rows.len(), 1, "{listing:?}: 1 is one row");
        assert!(!token.is_empty());
    }
}

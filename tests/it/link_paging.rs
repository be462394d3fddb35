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
/// expiry that can hold it, and skips to where a stopped key's window (or,
/// for REVOKED, the dead keys' windows and the marked links) says links are
/// (link_queries::list_page). Over links issued across 24 days, expiring up
/// to 7 days later (so every page crosses day and partition boundaries), with
/// live, retired, inactive and deleted keys stopped through the registry
/// (which records their windows), dead keys of another signer whose windows
/// overlap them and each other, a dead key whose window is unknown, a key
/// that signed nothing, and links marked by a revocation (of live keys too):
/// paging through every filter in pages of 7 and of 60, and one page from
/// cursors before, inside, at the edges of and after every window, yields
/// exactly what one scan of the table yields, in order. A window one link
/// too narrow at either end loses that link (the test fails).
#[sqlx::test]
async fn paging_across_partitions_yields_exactly_what_one_scan_does(pool: PgPool) {
    use chrono::{Duration, DurationRound, Utc};
    use presignd::domain::LinkState as State;
    use presignd::paging::Cursor;
    use presignd::registry::link_queries::{self, LinkFilter as Filter};

    let now = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    // As a registry that has run for a month has.
    daily_partitions_since(&pool, now, 32).await;
    sqlx::raw_sql(
        "INSERT INTO signers (name, backend) VALUES ('s', 'garage'), ('t', 'garage'), ('u', 'garage');
         INSERT INTO signing_keys (key_id, signer, state, sealed_secret) VALUES
             ('GKgone', 's', 'pending', '\\x00'), ('GKdead', 's', 'pending', '\\x00'),
             ('GKold', 's', 'pending', '\\x00'), ('GKlive', 's', 'pending', '\\x00'),
             ('GKt1', 't', 'pending', '\\x00'), ('GKt2', 't', 'pending', '\\x00'),
             ('GKempty', 't', 'pending', '\\x00'),
             -- As a registry before 0019 could leave it: dead, window unknown.
             ('GKraw', 'u', 'inactive', '\\x00');
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
    // key follows the age (deleted, inactive, retired, then the live one) but
    // for signer t's two dead keys, whose windows overlap each other and s's
    // (one in four links of 250-449 and of 380-649), and a few of GKraw's;
    // one in nine is marked, TTLs from a minute to 7 days.
    sqlx::query(
        "INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key,
                            issued_at, expires_at, signature_sha256, revocation_id)
         SELECT gen_random_uuid(), k,
                CASE WHEN k LIKE 'GKt%' THEN 't' WHEN k = 'GKraw' THEN 'u' ELSE 's' END,
                'svc-' || (i % 4), 'GET', 'b' || (i % 3),
                'o/' || (i % 5) || '/' || i, at, at + ttl, sha256(i::text::bytea),
                CASE WHEN i % 9 = 0 THEN '0198c0de-0000-7000-8000-000000000001'::uuid END
         FROM (SELECT i, $1 + interval '1 hour' - (i / 3) * interval '147 minutes' AS at,
                      (ARRAY[interval '1 minute', interval '2 hours', interval '1 day',
                             interval '3 days', interval '7 days'])[1 + i % 5] AS ttl,
                      CASE WHEN i % 4 = 0 AND i BETWEEN 250 AND 449 THEN 'GKt1'
                           WHEN i % 4 = 1 AND i BETWEEN 380 AND 649 THEN 'GKt2'
                           WHEN i % 7 = 3 AND i BETWEEN 500 AND 560 THEN 'GKraw'
                           WHEN i < 120 THEN 'GKlive' WHEN i < 300 THEN 'GKold'
                           WHEN i < 600 THEN 'GKdead' ELSE 'GKgone' END AS k
               FROM generate_series(0, 699) i) g",
    )
    .bind(now)
    .execute(&pool)
    .await
    .unwrap();

    // Each key signs in turn (one active key per signer), then stops the way
    // the service stops it. GKempty signed nothing and is discarded while
    // pending.
    sign_then_stop(
        &pool,
        &[
            ("GKgone", "deleted"),
            ("GKdead", "inactive"),
            ("GKold", "retired"),
            ("GKlive", "active"),
            ("GKt2", "deleted"),
            ("GKt1", "inactive"),
        ],
    )
    .await;
    presignd::registry::keys::mark_deleted(&pool, "GKempty")
        .await
        .unwrap();
    type KeyWindow = (
        String,
        Option<chrono::DateTime<Utc>>,
        Option<chrono::DateTime<Utc>>,
    );
    // The windows are the keys' links' range exactly (GKraw's is unknown,
    // GKempty's empty, GKlive's unknown while it signs).
    let windows: Vec<KeyWindow> = sqlx::query_as(
        "SELECT k.key_id, k.signed_from, k.signed_until FROM signing_keys k
             WHERE k.signed_until IS NOT NULL AND k.signed_from <= k.signed_until
             ORDER BY k.key_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let actual: Vec<KeyWindow> = sqlx::query_as(
        "SELECT key_id, min(issued_at), max(issued_at) FROM links
             WHERE key_id NOT IN ('GKlive', 'GKraw') GROUP BY key_id ORDER BY key_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(windows, actual);
    assert_eq!(windows.len(), 5);
    let unknown: Vec<String> = sqlx::query_scalar(
        "SELECT key_id FROM signing_keys WHERE signed_until IS NULL ORDER BY key_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(unknown, ["GKlive", "GKraw"]);

    let all = scan(&pool).await;
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
            "a dead key whose window overlaps others",
            Filter {
                key_id: Some("GKt2".into()),
                ..f()
            },
            Box::new(|r| r.key_id == "GKt2"),
        ),
        (
            "a retired key",
            Filter {
                key_id: Some("GKold".into()),
                ..f()
            },
            Box::new(|r| r.key_id == "GKold"),
        ),
        (
            "the live key",
            Filter {
                key_id: Some("GKlive".into()),
                ..f()
            },
            Box::new(|r| r.key_id == "GKlive"),
        ),
        (
            "revoked, one dead key",
            Filter {
                state: Some(State::Revoked),
                key_id: Some("GKt1".into()),
                ..f()
            },
            Box::new(|r| r.state == State::Revoked && r.key_id == "GKt1"),
        ),
        (
            "revoked, the retired key's marked links",
            Filter {
                state: Some(State::Revoked),
                key_id: Some("GKold".into()),
                ..f()
            },
            Box::new(|r| r.state == State::Revoked && r.key_id == "GKold"),
        ),
        (
            "a signer: its keys' windows, one still signing",
            Filter {
                signer: Some("s".into()),
                ..f()
            },
            Box::new(|r| r.signer == "s"),
        ),
        (
            "a signer whose keys all stopped",
            Filter {
                signer: Some("t".into()),
                ..f()
            },
            Box::new(|r| r.signer == "t"),
        ),
        (
            "a signer, active",
            Filter {
                state: Some(State::Active),
                signer: Some("s".into()),
                ..f()
            },
            Box::new(|r| r.state == State::Active && r.signer == "s"),
        ),
        (
            "a signer, revoked (its live keys' marked links too)",
            Filter {
                state: Some(State::Revoked),
                signer: Some("s".into()),
                ..f()
            },
            Box::new(|r| r.state == State::Revoked && r.signer == "s"),
        ),
        (
            "a signer, one caller and a prefix",
            Filter {
                signer: Some("s".into()),
                caller: Some("svc-1".into()),
                object_key_prefix: Some("o/".into()),
                ..f()
            },
            Box::new(|r| r.signer == "s" && r.caller == "svc-1"),
        ),
        (
            "a signer and one of its keys",
            Filter {
                signer: Some("t".into()),
                key_id: Some("GKt1".into()),
                ..f()
            },
            Box::new(|r| r.key_id == "GKt1"),
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
            "nothing: a signer with no key",
            Filter {
                signer: Some("nobody".into()),
                ..f()
            },
            Box::new(|_| false),
        ),
        (
            "nothing: a signer and another signer's key",
            Filter {
                signer: Some("s".into()),
                key_id: Some("GKt1".into()),
                ..f()
            },
            Box::new(|_| false),
        ),
        (
            "nothing: a key that signed nothing",
            Filter {
                key_id: Some("GKempty".into()),
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
    let tick = Duration::microseconds(1);
    let (least, greatest) = (uuid::Uuid::nil(), uuid::Uuid::from_u128(u128::MAX));
    let mut cursors: Vec<Cursor> = all
        .iter()
        .step_by(23)
        .map(|r| Cursor {
            at: r.issued_at,
            id: r.id,
        })
        .collect();
    for (_, from, until) in &windows {
        for at in [from.unwrap(), until.unwrap()] {
            for (at, id) in [
                (at, least),
                (at, greatest),
                (at + tick, least),
                (at - tick, greatest),
            ] {
                cursors.push(Cursor { at, id });
            }
        }
    }
    // Each case three times: with the roll-up's cells as the inserts left
    // them (deltas); folded into days (what the maintenance loop does); then
    // with GKraw's window recorded too (as 0019 records it), so that REVOKED
    // skips between the dead keys' windows (one unknown window forbids it).
    for pass in ["deltas", "folded", "every dead key's window known"] {
        if pass == "folded" {
            presignd::registry::link_summary::fold(&pool).await.unwrap();
        }
        if pass == "every dead key's window known" {
            sqlx::query(
                "UPDATE signing_keys k
                 SET signed_from = (SELECT min(issued_at) FROM links l WHERE l.key_id = k.key_id),
                     signed_until = (SELECT max(issued_at) FROM links l WHERE l.key_id = k.key_id)
                 WHERE k.key_id = 'GKraw'",
            )
            .execute(&pool)
            .await
            .unwrap();
        }
        for (name, filter, wanted) in &cases {
            let expected: Vec<uuid::Uuid> =
                all.iter().filter(|r| wanted(r)).map(|r| r.id).collect();
            if !name.starts_with("nothing") {
                assert!(expected.len() > 14, "{name}: too few links to page");
            }
            for size in [7, 60] {
                let listed = page_through(&pool, filter, size).await;
                assert_eq!(listed, expected, "{name}, pages of {size}, {pass}");
            }
            // One page from each cursor: every 23rd link's, and each
            // window's edges (its first and last link's instant with the
            // least and greatest id, and a microsecond beyond).
            for cursor in &cursors {
                let expected: Vec<uuid::Uuid> = all
                    .iter()
                    .filter(|r| (r.issued_at, r.id) < (cursor.at, cursor.id) && wanted(r))
                    .take(7)
                    .map(|r| r.id)
                    .collect();
                let page = link_queries::list_page(&pool, filter, Some(*cursor), 7)
                    .await
                    .unwrap();
                let listed: Vec<uuid::Uuid> = page.iter().map(|l| l.id).collect();
                assert_eq!(
                    listed, expected,
                    "{name}, one page after {cursor:?}, {pass}"
                );
            }
        }
    }

    // A key window one link too narrow loses that link: the pages rely on the
    // window, and the comparisons above would catch one off by a link.
    let (from, until) = windows
        .iter()
        .find(|w| w.0 == "GKdead")
        .map(|w| (w.1.unwrap(), w.2.unwrap()))
        .unwrap();
    for (narrowed, lost) in [((from, until - tick), until), ((from + tick, until), from)] {
        sqlx::query(
            "UPDATE signing_keys SET signed_from = $2, signed_until = $3 WHERE key_id = $1",
        )
        .bind("GKdead")
        .bind(narrowed.0)
        .bind(narrowed.1)
        .execute(&pool)
        .await
        .unwrap();
        // (REVOKED would still list it: GKt1's window overlaps it.)
        for filter in [Filter {
            key_id: Some("GKdead".into()),
            ..f()
        }] {
            let listed = page_through(&pool, &filter, 60).await;
            let missing: Vec<&Row> = all
                .iter()
                .filter(|r| r.key_id == "GKdead" && !listed.contains(&r.id))
                .collect();
            assert!(
                !missing.is_empty(),
                "{filter:?}: a narrowed window lost no link"
            );
            assert!(missing.iter().all(|r| r.issued_at == lost), "{filter:?}");
        }
    }

    // A signer's pages rely on its keys' windows too: with GKt2's one tick
    // short at its start, the page after its oldest link's instant (the
    // oldest of signer t's, listed above) loses that link.
    let from = windows.iter().find(|w| w.0 == "GKt2").unwrap().1.unwrap();
    sqlx::query("UPDATE signing_keys SET signed_from = $2 WHERE key_id = $1")
        .bind("GKt2")
        .bind(from + tick)
        .execute(&pool)
        .await
        .unwrap();
    let signer_t = Filter {
        signer: Some("t".into()),
        ..f()
    };
    let after = Cursor {
        at: from,
        id: greatest,
    };
    let oldest: Vec<uuid::Uuid> = all
        .iter()
        .filter(|r| r.signer == "t" && (r.issued_at, r.id) < (after.at, after.id))
        .map(|r| r.id)
        .collect();
    assert_eq!(oldest.len(), 1, "GKt2's oldest link is signer t's oldest");
    let page = link_queries::list_page(&pool, &signer_t, Some(after), 7)
        .await
        .unwrap();
    assert!(page.is_empty(), "a narrowed window lost no link: {page:?}");
}

/// A key stopped (deactivated, or retired) while batches of its links are
/// being recorded, as IssueLink's group commits do (`links::record`): the window recorded when
/// it stops (signing_keys.signed_from, signed_until) are exactly its oldest
/// and newest committed links' issued_at, and its pages (key id, REVOKED)
/// equal a scan. The links are signed an hour ahead of the database's clock
/// (a server whose clock is ahead): a bound from the database's now() would
/// miss them.
#[sqlx::test]
async fn a_key_stopped_while_its_links_are_inserted_keeps_an_exact_window(pool: PgPool) {
    use chrono::{Duration, DurationRound, Utc};
    use presignd::registry::link_queries::LinkFilter as Filter;
    use presignd::registry::links::{self, NewLink};

    sqlx::raw_sql(
        "INSERT INTO signers (name, backend) VALUES ('s', 'garage'), ('t', 'garage');
         INSERT INTO signing_keys (key_id, signer, state, sealed_secret) VALUES
             ('GKdeactivated', 's', 'active', '\\x00'), ('GKretired', 't', 'active', '\\x00');",
    )
    .execute(&pool)
    .await
    .unwrap();
    for key in ["GKdeactivated", "GKretired"] {
        let signer = if key == "GKretired" { "t" } else { "s" };
        // Four writers insert batches of 5 until the key is no longer active.
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let mut inserted = 0;
                    for n in 0.. {
                        let at = (Utc::now() + Duration::hours(1))
                            .duration_trunc(Duration::microseconds(1))
                            .unwrap();
                        let batch: Vec<NewLink> = (0..5)
                            .map(|i| NewLink {
                                bucket: "b".into(),
                                object_key: format!("o/{w}/{n}/{i}"),
                                issued_at: at,
                                expires_at: at + Duration::minutes(15),
                                signature_sha256: vec![w as u8; 32],
                                ..crate::helpers::new_link(key, signer, &format!("w{w}"))
                            })
                            .collect();
                        // One transaction: the key's issuance lock shared,
                        // the insert if the key is still active, the commit.
                        let done = links::record(&pool, &[key], &batch.iter().collect::<Vec<_>>())
                            .await
                            .unwrap()
                            .active_keys
                            .is_empty();
                        if done {
                            return inserted;
                        }
                        inserted += batch.len();
                    }
                    unreachable!()
                })
            })
            .collect();
        // Stop it once the writers are under way: a batch of theirs
        // committed (a fixed sleep was not always enough on a loaded
        // machine: CI once saw none within 300 ms).
        let started = std::time::Instant::now();
        loop {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM links WHERE key_id = $1")
                .bind(key)
                .fetch_one(&pool)
                .await
                .unwrap();
            if n > 0 {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "{key}: the writers inserted nothing in 60 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let mut tx = pool.begin().await.unwrap();
        presignd::keys::lock_for_state_change(&mut tx, key)
            .await
            .unwrap();
        if key == "GKretired" {
            assert!(
                presignd::registry::keys::retire(&mut tx, key)
                    .await
                    .unwrap()
            );
        } else {
            presignd::registry::keys::deactivate(&mut tx, key, None)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        let mut inserted = 0;
        for w in writers {
            inserted += w.await.unwrap();
        }
        assert!(
            inserted > 0,
            "{key}: no link was inserted before it stopped"
        );

        type Bounds = (
            Option<chrono::DateTime<Utc>>,
            Option<chrono::DateTime<Utc>>,
            i64,
        );
        let recorded: Bounds = sqlx::query_as(
            "SELECT signed_from, signed_until, 0::bigint FROM signing_keys WHERE key_id = $1",
        )
        .bind(key)
        .fetch_one(&pool)
        .await
        .unwrap();
        let actual: Bounds = sqlx::query_as(
            "SELECT min(issued_at), max(issued_at), count(*) FROM links WHERE key_id = $1",
        )
        .bind(key)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(actual.2 as usize, inserted, "{key}");
        assert_eq!((recorded.0, recorded.1), (actual.0, actual.1), "{key}");
        assert!(
            actual.1.unwrap() > Utc::now(),
            "{key}: signed ahead of the clock"
        );

        let expected: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT id FROM links WHERE key_id = $1 ORDER BY issued_at DESC, id DESC",
        )
        .bind(key)
        .fetch_all(&pool)
        .await
        .unwrap();
        let filter = Filter {
            key_id: Some(key.into()),
            ..Filter::default()
        };
        let listed = page_through(&pool, &filter, 7).await;
        assert_eq!(listed, expected, "{key}");
    }
}

/// A prefix's pages where a partition's newest links do not hold it, the
/// shape in which each part of a slice (`link_queries::read_slice`) is
/// planned on its own partition's statistics, walking or fetching and
/// sorting: a burst of other links issued in the last hour over matches
/// issued before it, in the same partitions; a prefix sprinkled through the
/// burst, one dense in it, one among the burst's newest links only; each
/// with a state too (the key's join in each part). Paging in pages of 7, 60
/// and 700, and one page of 7 and of 60 from cursors all along, yields
/// exactly what one scan of the table yields, in order.
#[sqlx::test]
async fn a_prefix_under_a_burst_of_other_links_pages_like_one_scan(pool: PgPool) {
    use chrono::{Duration, DurationRound, Utc};
    use presignd::domain::LinkState as State;
    use presignd::paging::Cursor;
    use presignd::registry::link_queries::{self, LinkFilter as Filter};

    let now = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    daily_partitions_since(&pool, now, 3).await;
    sqlx::raw_sql(
        "INSERT INTO signers (name, backend) VALUES ('s', 'garage');
         INSERT INTO signing_keys (key_id, signer, state, sealed_secret) VALUES
             ('GKold', 's', 'pending', '\\x00'), ('GKlive', 's', 'pending', '\\x00');",
    )
    .execute(&pool)
    .await
    .unwrap();
    // 12,000 links in the last hour, one every 0.3 s, expiring tomorrow or
    // (one in four) the day after: 'burst/…', but every 150th 'sprinkled/…'
    // (~7 among the 1,000 a part walks first, fewer than a page of 60),
    // every 7th 'dense/…', and every 50th of the newest 1,000 'mixed/…' (a
    // share that promises a page, then none). Under them, 600 links issued
    // 1 to 21 hours ago, expiring in the same two partitions: 'under/…', one
    // in three 'mixed/…'. One in four of those by a key since retired, one in
    // five already expired.
    sqlx::query(
        "INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key,
                            issued_at, expires_at, signature_sha256)
         SELECT gen_random_uuid(), CASE WHEN i % 4 = 0 AND i >= 12000 THEN 'GKold' ELSE 'GKlive' END,
                's', 'svc', 'GET', 'b',
                CASE WHEN i >= 12000 AND i % 3 = 0 THEN 'mixed/' || i
                     WHEN i >= 12000 THEN 'under/' || i
                     WHEN i < 1000 AND i % 50 = 0 THEN 'mixed/' || i
                     WHEN i % 150 = 0 THEN 'sprinkled/' || i
                     WHEN i % 7 = 0 THEN 'dense/' || i
                     ELSE 'burst/' || i END,
                at, CASE WHEN i % 5 = 0 AND i >= 12000 THEN at + interval '1 minute'
                         WHEN i >= 12000 THEN $1 + (1 + i % 2) * interval '1 day'
                         WHEN i % 4 = 0 THEN $1 + interval '2 days 1 hour'
                         ELSE $1 + interval '1 day 1 hour' END,
                sha256(i::text::bytea)
         FROM (SELECT i, CASE WHEN i < 12000 THEN $1 - i * interval '300 milliseconds'
                              ELSE $1 - interval '1 hour' - (i - 12000) * interval '2 minutes' END AS at
               FROM generate_series(0, 12599) i) g",
    )
    .bind(now)
    .execute(&pool)
    .await
    .unwrap();
    {
        use presignd::registry::keys;
        let mut tx = pool.begin().await.unwrap();
        for (key, retire) in [("GKold", true), ("GKlive", false)] {
            assert!(keys::activate(&mut *tx, key).await.unwrap());
            if retire {
                presignd::keys::lock_for_state_change(&mut tx, key)
                    .await
                    .unwrap();
                assert!(keys::retire(&mut tx, key).await.unwrap());
            }
        }
        tx.commit().await.unwrap();
    }
    sqlx::query("ANALYZE links").execute(&pool).await.unwrap();

    let all = scan(&pool).await;
    assert_eq!(all.len(), 12_600);
    let mut cases = Vec::new();
    for (prefix, states) in [
        (
            "under/",
            &[None, Some(State::Active), Some(State::Expired)][..],
        ),
        ("sprinkled/", &[None, Some(State::Active)]),
        ("dense/", &[None, Some(State::Active)]),
        ("mixed/", &[None, Some(State::Active)]),
    ] {
        for &state in states {
            let filter = Filter {
                object_key_prefix: Some(prefix.into()),
                state,
                ..Filter::default()
            };
            let expected: Vec<&Row> = all
                .iter()
                .filter(|r| r.object_key.starts_with(prefix) && state.is_none_or(|s| r.state == s))
                .collect();
            cases.push((filter, expected));
        }
    }
    // Enough of each to page through.
    for (filter, expected) in &cases {
        assert!(expected.len() > 40, "{filter:?}: {} links", expected.len());
    }
    let cursors: Vec<Cursor> = all
        .iter()
        .step_by(131)
        .map(|r| Cursor {
            at: r.issued_at,
            id: r.id,
        })
        .collect();
    for (filter, expected) in &cases {
        let ids: Vec<uuid::Uuid> = expected.iter().map(|r| r.id).collect();
        for size in [7, 60, 700] {
            let listed = page_through(&pool, filter, size).await;
            assert_eq!(listed, ids, "{filter:?}, pages of {size}");
        }
        for cursor in &cursors {
            for size in [7, 60] {
                // The filter's links, in the scan's order, after the cursor.
                let wanted: Vec<uuid::Uuid> = expected
                    .iter()
                    .filter(|r| (r.issued_at, r.id) < (cursor.at, cursor.id))
                    .take(size)
                    .map(|r| r.id)
                    .collect();
                let page = link_queries::list_page(&pool, filter, Some(*cursor), size as i64)
                    .await
                    .unwrap();
                let listed: Vec<uuid::Uuid> = page.iter().map(|l| l.id).collect();
                assert_eq!(
                    listed, wanted,
                    "{filter:?}, a page of {size} after {cursor:?}"
                );
            }
        }
    }
}

/// EXPIRED's walk stops below the oldest link of a live key (`keys_floor`):
/// the retired key's window is its first link, an active key's its oldest
/// link. An active key that has signed for longer than its signer's rotated
/// keys still has its old expired links listed from every depth; below every
/// live key's link, only dead keys' links (REVOKED), a page is empty. Pages
/// from cursors at every depth, and paged through, against one scan.
#[sqlx::test]
async fn expired_pages_stop_at_the_live_keys_oldest_link_and_not_before(pool: PgPool) {
    use chrono::{Duration, DurationRound, Utc};
    use presignd::domain::LinkState as State;
    use presignd::paging::Cursor;
    use presignd::registry::link_queries::{self, LinkFilter as Filter};

    let now = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    daily_partitions_since(&pool, now, 36).await;
    sqlx::raw_sql(
        "INSERT INTO signers (name, backend) VALUES ('rot', 'garage'), ('long', 'garage');
         INSERT INTO signing_keys (key_id, signer, state, sealed_secret) VALUES
             ('GKgone', 'rot', 'pending', '\\x00'), ('GKold', 'rot', 'pending', '\\x00'),
             ('GKlive', 'rot', 'pending', '\\x00'), ('GKlong', 'long', 'pending', '\\x00');",
    )
    .execute(&pool)
    .await
    .unwrap();
    // 420 links, one every 2 hours back from now over 35 days, each living an
    // hour (all but the newest expired). One in three is GKlong's, down to 25
    // days back; the others are signer rot's: GKlive's for the newest 100,
    // GKold's (since retired) for the next 100, then GKgone's (since
    // deleted). Below GKlong's oldest link, every link is GKgone's: REVOKED.
    sqlx::query(
        "INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key,
                            issued_at, expires_at, signature_sha256)
         SELECT gen_random_uuid(), k, CASE WHEN k = 'GKlong' THEN 'long' ELSE 'rot' END,
                'svc', 'GET', 'b', 'o/' || i, at, at + interval '1 hour', sha256(i::text::bytea)
         FROM (SELECT i, $1 - i * interval '2 hours' AS at,
                      CASE WHEN i % 3 = 0 AND i < 300 THEN 'GKlong'
                           WHEN i < 100 THEN 'GKlive' WHEN i < 200 THEN 'GKold'
                           ELSE 'GKgone' END AS k
               FROM generate_series(0, 419) i) g",
    )
    .bind(now)
    .execute(&pool)
    .await
    .unwrap();
    sign_then_stop(
        &pool,
        &[
            ("GKgone", "deleted"),
            ("GKold", "retired"),
            ("GKlive", "active"),
            ("GKlong", "active"),
        ],
    )
    .await;

    let all = scan(&pool).await;
    let expired: Vec<&Row> = all.iter().filter(|r| r.state == State::Expired).collect();
    // What the test is about: expired links of the active GKlong older than
    // the retired GKold's window, and dead keys' links below GKlong's oldest.
    let old_from: chrono::DateTime<Utc> =
        sqlx::query_scalar("SELECT signed_from FROM signing_keys WHERE key_id = 'GKold'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let long_oldest = expired
        .iter()
        .filter(|r| r.key_id == "GKlong")
        .map(|r| r.issued_at)
        .min()
        .unwrap();
    assert!(
        expired.iter().filter(|r| r.issued_at < old_from).count() > 20,
        "GKlong's expired links below GKold's window"
    );
    assert!(
        all.iter()
            .filter(|r| r.issued_at < long_oldest)
            .all(|r| r.key_id == "GKgone" && r.state == State::Revoked)
    );

    let filter = Filter {
        state: Some(State::Expired),
        ..Default::default()
    };
    let ids = |rows: &[&Row]| rows.iter().map(|r| r.id).collect::<Vec<_>>();
    for size in [5, 60] {
        assert_eq!(
            page_through(&pool, &filter, size).await,
            ids(&expired),
            "paged through in pages of {size}"
        );
    }
    for cursor in all.iter().step_by(7).map(|r| Cursor {
        at: r.issued_at,
        id: r.id,
    }) {
        let wanted: Vec<&Row> = expired
            .iter()
            .filter(|r| (r.issued_at, r.id) < (cursor.at, cursor.id))
            .take(5)
            .copied()
            .collect();
        let page = link_queries::list_page(&pool, &filter, Some(cursor), 5)
            .await
            .unwrap();
        assert_eq!(
            page.iter().map(|l| l.id).collect::<Vec<_>>(),
            ids(&wanted),
            "one page after {cursor:?}"
        );
    }
}

/// The live keys' floor counts today's partition: a link of a key still
/// signing, issued 7 days ago and expired a second ago, lies in today's
/// partition, far below a page's first slice. EXPIRED lists it (a floor read
/// from the days before today only would end the walk without it).
#[sqlx::test]
async fn an_expired_link_in_todays_partition_is_below_the_first_slice_and_listed(pool: PgPool) {
    use chrono::{Duration, DurationRound, Utc};
    use presignd::domain::LinkState as State;
    use presignd::registry::link_queries::LinkFilter as Filter;

    let now = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    daily_partitions_since(&pool, now, 9).await;
    sqlx::raw_sql(
        "INSERT INTO signers (name, backend) VALUES ('s', 'garage');
         INSERT INTO signing_keys (key_id, signer, state, sealed_secret)
         VALUES ('GKonly', 's', 'pending', '\\x00');",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key,
                            issued_at, expires_at, signature_sha256)
         VALUES (gen_random_uuid(), 'GKonly', 's', 'svc', 'GET', 'b', 'old',
                 $1 - interval '7 days', $1 - interval '1 second', sha256('old'))",
    )
    .bind(now)
    .execute(&pool)
    .await
    .unwrap();
    sign_then_stop(&pool, &[("GKonly", "active")]).await;
    let all = scan(&pool).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, State::Expired);
    let filter = Filter {
        state: Some(State::Expired),
        ..Default::default()
    };
    for size in [1, 5] {
        assert_eq!(
            page_through(&pool, &filter, size).await,
            [all[0].id],
            "pages of {size}"
        );
    }
}

/// A link as one scan of the registry reads it, with its state.
#[derive(sqlx::FromRow)]
struct Row {
    id: uuid::Uuid,
    key_id: String,
    signer: String,
    caller: String,
    bucket: String,
    object_key: String,
    issued_at: chrono::DateTime<chrono::Utc>,
    expires_at: chrono::DateTime<chrono::Utc>,
    state: presignd::domain::LinkState,
}

/// A signer's page merges one walk per key that signed in the slice
/// (link_queries::read_slice), up to a number of keys; a signer with more
/// keys signing in one slice (here 10, all in the same two days, rotated
/// and stopped in every way, one still signing) is read in one walk for
/// all of them. Both page like one scan, by state too, and beside the
/// other signer's links interleaved with them.
#[sqlx::test]
async fn a_signer_with_more_keys_in_a_slice_than_walks_pages_like_one_scan(pool: PgPool) {
    use chrono::{Duration, DurationRound, Utc};
    use presignd::domain::LinkState as State;
    use presignd::registry::link_queries::LinkFilter as Filter;

    let now = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    daily_partitions_since(&pool, now, 3).await;
    sqlx::raw_sql(
        "INSERT INTO signers (name, backend) VALUES ('many', 'garage'), ('few', 'garage');
         INSERT INTO signing_keys (key_id, signer, state, sealed_secret)
         SELECT 'GKm' || n, 'many', 'pending', '\\x00'::bytea FROM generate_series(0, 9) n
         UNION ALL SELECT 'GKf0', 'few', 'pending', '\\x00'::bytea
         UNION ALL SELECT 'GKf1', 'few', 'pending', '\\x00'::bytea;",
    )
    .execute(&pool)
    .await
    .unwrap();
    // 600 links over the last two days, one every ~5 minutes: signer many's
    // ten keys in turn, every third link signer few's.
    sqlx::query(
        "INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key,
                            issued_at, expires_at, signature_sha256)
         SELECT gen_random_uuid(),
                CASE WHEN i % 3 = 0 THEN 'GKf' || (i / 300) ELSE 'GKm' || (i % 10) END,
                CASE WHEN i % 3 = 0 THEN 'few' ELSE 'many' END,
                'svc', 'GET', 'b', 'o/' || i, at, at + interval '1 day', sha256(i::text::bytea)
         FROM (SELECT i, $1 - i * interval '287 seconds' AS at
               FROM generate_series(0, 599) i) g",
    )
    .bind(now)
    .execute(&pool)
    .await
    .unwrap();
    let ends = ["retired", "inactive", "deleted"];
    let mut keys: Vec<(String, &str)> = (0..9).map(|n| (format!("GKm{n}"), ends[n % 3])).collect();
    keys.push(("GKm9".into(), "active"));
    keys.push(("GKf1".into(), "inactive"));
    keys.push(("GKf0".into(), "active"));
    let keys: Vec<(&str, &str)> = keys.iter().map(|(k, e)| (k.as_str(), *e)).collect();
    sign_then_stop(&pool, &keys).await;

    let all = scan(&pool).await;
    type Wanted = Box<dyn Fn(&Row) -> bool>;
    let signer = |name: &str, state: Option<State>| Filter {
        signer: Some(name.into()),
        state,
        ..Default::default()
    };
    let cases: Vec<(Filter, Wanted)> = vec![
        (signer("many", None), Box::new(|r| r.signer == "many")),
        (
            signer("many", Some(State::Active)),
            Box::new(|r| r.signer == "many" && r.state == State::Active),
        ),
        (
            signer("many", Some(State::Revoked)),
            Box::new(|r| r.signer == "many" && r.state == State::Revoked),
        ),
        (signer("few", None), Box::new(|r| r.signer == "few")),
    ];
    for (filter, wanted) in &cases {
        let expected: Vec<uuid::Uuid> = all.iter().filter(|r| wanted(r)).map(|r| r.id).collect();
        assert!(expected.len() > 30, "{filter:?}: too few links to page");
        for size in [7, 60] {
            assert_eq!(
                page_through(&pool, filter, size).await,
                expected,
                "{filter:?}, pages of {size}"
            );
        }
    }
}

/// Every link, in ListLinks' order (newest first), with its state: what
/// the pages are compared with.
async fn scan(pool: &PgPool) -> Vec<Row> {
    use presignd::registry::links::STATE_SQL;
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT l.id, l.key_id, l.signer, l.caller, l.bucket, l.object_key, l.issued_at,
                l.expires_at, {STATE_SQL} AS state
         FROM links l JOIN signing_keys k ON k.key_id = l.key_id
         ORDER BY l.issued_at DESC, l.id DESC"
    )))
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Activates each key in turn, then stops it the way the service does:
/// under its state-change lock, which records its window (0019). `end`:
/// "retired", "inactive", "deleted", or "active" (left signing).
async fn sign_then_stop(pool: &PgPool, keys: &[(&str, &str)]) {
    use presignd::registry::keys;
    let mut tx = pool.begin().await.unwrap();
    for (key, end) in keys {
        assert!(keys::activate(&mut *tx, key).await.unwrap());
        presignd::keys::lock_for_state_change(&mut tx, key)
            .await
            .unwrap();
        match *end {
            "retired" => assert!(keys::retire(&mut tx, key).await.unwrap()),
            "inactive" => keys::deactivate(&mut tx, key, None).await.unwrap(),
            "deleted" => {
                keys::deactivate(&mut tx, key, None).await.unwrap();
                keys::mark_deleted(&mut *tx, key).await.unwrap();
            }
            "active" => {}
            other => panic!("no such end: {other}"),
        }
    }
    tx.commit().await.unwrap();
}

/// Daily partitions of `links` from `days` days before `now` on, instead of
/// the table as it was before the upgrade (MINVALUE to tomorrow); the
/// migrations made the days ahead.
async fn daily_partitions_since(pool: &PgPool, now: chrono::DateTime<chrono::Utc>, days: i64) {
    use presignd::registry::partitions::{self, Table};
    let mut conn = pool.acquire().await.unwrap();
    for name in partitions::list(&mut conn, Table::Links).await.unwrap() {
        if name.starts_with("links_before_") {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {name}")))
                .execute(&mut *conn)
                .await
                .unwrap();
        }
    }
    for n in -days..=0 {
        let day = (now + chrono::Duration::days(n)).date_naive();
        assert!(
            partitions::create(&mut conn, Table::Links, day, 5_000)
                .await
                .unwrap()
        );
    }
}

/// Every link of `filter`, paged through in pages of `size`.
async fn page_through(
    pool: &PgPool,
    filter: &presignd::registry::link_queries::LinkFilter,
    size: i64,
) -> Vec<uuid::Uuid> {
    use presignd::paging::Cursor;
    let mut listed = Vec::new();
    let mut after: Option<Cursor> = None;
    loop {
        let page = presignd::registry::link_queries::list_page(pool, filter, after, size)
            .await
            .unwrap();
        listed.extend(page.iter().map(|l| l.id));
        match page.last() {
            Some(last) if page.len() as i64 == size => after = Some(last.into()),
            _ => break,
        }
    }
    listed
}

//! The link roll-up (migration 0005) answers every summary exactly as a pass
//! over every link does: before and after folds, across hours, after links are
//! updated, deleted or truncated, after a key dies, and while links are
//! inserted during folds.

use crate::fixture::seed_fixture;
use presignd::domain::LinkState;
use presignd::registry::keys;
use presignd::registry::link_queries::LinkFilter;
use presignd::registry::link_summary::{self, GroupBy};
use sqlx::PgPool;

/// `n` links over the fixture's keys, buckets and callers, expiring from three
/// hours ago to three hours ahead (so every hour kind is present, the current
/// one included), one in twenty marked by the fixture's revocation.
async fn add_links(pool: &PgPool, n: i64, seed: f64) {
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SELECT setseed($1)")
        .bind(seed)
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key,
                            issued_at, expires_at, signature_sha256, revocation_id)
         SELECT gen_random_uuid(), k.key_id, k.signer,
                (ARRAY['svc-a', 'svc-b', 'svc-c'])[1 + floor(random() * 3)::int],
                'GET',
                (ARRAY['photos', 'docs', 'archive'])[1 + floor(random() * 3)::int],
                'gen/' || i, e - interval '1 second' * (1 + (random() * 86400)::int), e,
                sha256(i::text::bytea),
                CASE WHEN random() < 0.05 THEN '0198c0de-0000-7000-8000-000000000001'::uuid END
         FROM generate_series(1, $1) i
         CROSS JOIN LATERAL (SELECT now() + interval '1 second' * (random() * 21600 - 10800)
                             + interval '0' * i AS e) t
         CROSS JOIN LATERAL (SELECT key_id, signer FROM signing_keys
                             ORDER BY key_id OFFSET (i % 5) LIMIT 1) k",
    )
    .bind(n)
    .execute(&mut *conn)
    .await
    .expect("generated links insert");
}

/// Adds one equality filter.
type Narrow = fn(&mut LinkFilter);

/// Every group_by, every state, and each equality filter: the roll-up's answer
/// equals the scan's, both read in one transaction (one `now()`).
pub async fn assert_rollup_equals_scan(pool: &PgPool, when: &str) {
    let mut tx = pool.begin().await.unwrap();
    let states = [
        None,
        Some(LinkState::Active),
        Some(LinkState::Expired),
        Some(LinkState::Revoked),
    ];
    let narrowed: [(&str, Narrow); 5] = [
        ("no filter", |_| {}),
        ("bucket", |f| f.bucket = Some("photos".into())),
        ("caller", |f| f.caller = Some("svc-a".into())),
        ("key", |f| f.key_id = Some("GKBETA2".into())),
        ("signer", |f| f.signer = Some("beta".into())),
    ];
    let mut checked = 0;
    for group_by in [
        GroupBy::Key,
        GroupBy::Signer,
        GroupBy::Bucket,
        GroupBy::Caller,
    ] {
        for state in states {
            for (name, narrow) in narrowed {
                let mut filter = LinkFilter {
                    state,
                    ..LinkFilter::default()
                };
                narrow(&mut filter);
                assert!(!filter.has_ranges(), "the roll-up answers it");
                let scan = link_summary::summarize_scan(&mut *tx, &filter, group_by)
                    .await
                    .unwrap();
                let rollup = link_summary::summarize_rollup(&mut *tx, &filter, group_by)
                    .await
                    .unwrap();
                assert_eq!(
                    rollup, scan,
                    "{when}: {group_by:?}, state {state:?}, {name}"
                );
                checked += scan.len();
            }
        }
    }
    assert!(checked > 100, "{when}: the cases compared real groups");

    // ListSigningKeys' outstanding links and latest expiry per key (the
    // outstanding-links gauge's counts), from the roll-up, equal a pass over
    // every link.
    type PerKey = (String, i64, Option<chrono::DateTime<chrono::Utc>>);
    let oracle: Vec<PerKey> = sqlx::query_as(
        "SELECT k.key_id, count(l.id), max(l.expires_at)
         FROM signing_keys k
         LEFT JOIN links l ON l.key_id = k.key_id AND l.expires_at > now()
                          AND l.revocation_id IS NULL AND k.state IN ('active', 'retired')
         GROUP BY k.key_id ORDER BY k.key_id",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert!(
        oracle.iter().filter(|o| o.1 > 0).count() >= 2,
        "{when}: keys with outstanding links compared: {oracle:?}"
    );
    let mut listed: Vec<PerKey> = keys::list_with_outstanding(&mut *tx, None)
        .await
        .unwrap()
        .into_iter()
        .map(|k| (k.key_id, k.outstanding_links, k.latest_expiry))
        .collect();
    listed.sort();
    assert_eq!(listed, oracle, "{when}: ListSigningKeys' outstanding links");
    tx.rollback().await.unwrap();
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn fold(pool: &PgPool) {
    link_summary::fold(pool)
        .await
        .unwrap()
        .expect("no other fold holds the lock");
}

#[sqlx::test]
async fn the_rollup_answers_every_summary_as_a_scan_does(pool: PgPool) {
    presignd::registry::migrate(&pool).await.unwrap();
    seed_fixture(&pool).await;
    add_links(&pool, 3000, 0.25).await;
    assert_rollup_equals_scan(&pool, "deltas only").await;

    // Cells of hours that ended before the fold began must be merged (an hour
    // ending while the test runs must not fail it).
    let before_fold: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&pool)
        .await
        .unwrap();
    fold(&pool).await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM link_rollup_delta").await,
        0
    );
    assert!(
        count(
            &pool,
            "SELECT count(*) FROM link_rollup
             WHERE expires_hour = date_trunc('day', expires_hour, 'UTC')"
        )
        .await
            > 0,
        "settled cells are merged into their day's"
    );
    let unmerged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM link_rollup
         WHERE expires_hour <> date_trunc('day', expires_hour, 'UTC')
           AND expires_hour < date_trunc('hour', $1::timestamptz, 'UTC')",
    )
    .bind(before_fold)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(unmerged, 0, "no cell of an earlier hour is left unmerged");
    assert_eq!(
        count(&pool, "SELECT sum(links)::bigint FROM link_rollup").await,
        count(&pool, "SELECT count(*) FROM links").await
    );
    assert_rollup_equals_scan(&pool, "after a fold").await;

    add_links(&pool, 1000, 0.5).await;
    assert_rollup_equals_scan(&pool, "roll-up plus deltas").await;
    fold(&pool).await;
    assert_rollup_equals_scan(&pool, "after a second fold").await;

    // UPDATE recounts the keys it touched (cells move across hours and states).
    sqlx::query(
        "UPDATE links SET expires_at = expires_at - interval '2 hours',
                          issued_at = issued_at - interval '2 hours'
         WHERE caller = 'svc-b'",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE links SET revocation_id = '0198c0de-0000-7000-8000-000000000001'
         WHERE caller = 'svc-c' AND bucket = 'docs'",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_rollup_equals_scan(&pool, "after updates").await;

    // A key dies: all its cells are revoked now, and the fold merges them.
    sqlx::query("UPDATE signing_keys SET state = 'inactive' WHERE key_id = 'GKALPHA1'")
        .execute(&pool)
        .await
        .unwrap();
    assert_rollup_equals_scan(&pool, "after a key died").await;
    fold(&pool).await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM link_rollup
             WHERE key_id = 'GKALPHA1'
               AND expires_hour <> date_trunc('day', expires_hour, 'UTC')"
        )
        .await,
        0,
        "a dead key's cells are merged"
    );
    assert_rollup_equals_scan(&pool, "after folding a dead key").await;

    sqlx::query("DELETE FROM links WHERE bucket = 'archive'")
        .execute(&pool)
        .await
        .unwrap();
    assert_rollup_equals_scan(&pool, "after a delete").await;
    fold(&pool).await;
    assert_rollup_equals_scan(&pool, "after a delete and a fold").await;

    sqlx::query("TRUNCATE links").execute(&pool).await.unwrap();
    assert_eq!(
        count(
            &pool,
            "SELECT (SELECT count(*) FROM link_rollup) + (SELECT count(*) FROM link_rollup_delta)"
        )
        .await,
        0,
        "TRUNCATE empties the roll-up"
    );
}

/// Replaces the minute cells (and deltas) of unmarked links from the current
/// hour on that `which` selects by their hour's sum (minute -1): what the
/// triggers write for hours two or more ahead, and what a registry migrated
/// from before 0025 holds.
async fn coarsen(pool: &PgPool, which: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH gone AS (DELETE FROM link_rollup
                       WHERE NOT marked AND minute <> -1
                         AND expires_hour >= date_trunc('hour', now(), 'UTC') AND {which}
                       RETURNING *),
              gone_deltas AS (DELETE FROM link_rollup_delta
                              WHERE NOT marked AND minute <> -1
                                AND expires_hour >= date_trunc('hour', now(), 'UTC') AND {which}
                              RETURNING *)
         INSERT INTO link_rollup_delta
             (key_id, signer, bucket, caller, expires_hour, minute, marked, links, latest)
         SELECT key_id, signer, bucket, caller, expires_hour, -1, false, sum(links), max(latest)
         FROM (SELECT * FROM gone UNION ALL SELECT * FROM gone_deltas) g
         GROUP BY 1, 2, 3, 4, 5"
    )))
    .execute(pool)
    .await
    .expect("coarsened");
}

/// Cells of a whole hour of a live key's unmarked links, in the current and
/// the next hour: the current hour from them as the whole hour (its live
/// links read from `links`), beside keys counted by minute and, for one key,
/// beside minute cells of the same hour. A fold counts those hours by minute.
#[sqlx::test]
async fn an_hour_not_counted_by_minute_yet_is_summarized_exactly_and_refined_by_a_fold(
    pool: PgPool,
) {
    presignd::registry::migrate(&pool).await.unwrap();
    seed_fixture(&pool).await;
    add_links(&pool, 3000, 0.6).await;
    let minute_cells = "SELECT count(*) FROM (SELECT minute FROM link_rollup
                                              UNION ALL SELECT minute FROM link_rollup_delta) c
                        WHERE minute <> -1";
    assert!(
        count(&pool, minute_cells).await > 50,
        "links of this hour and the next are counted by minute"
    );
    fold(&pool).await;
    coarsen(&pool, "key_id = 'GKBETA2'").await;
    coarsen(&pool, "key_id = 'GKGAMMA1' AND bucket = 'photos'").await;
    add_links(&pool, 600, 0.7).await;
    coarsen(&pool, "key_id = 'GKALPHA1'").await;
    let coarse_now =
        "SELECT count(*) FROM (SELECT key_id, minute, marked, expires_hour FROM link_rollup
                                            UNION ALL
                                            SELECT key_id, minute, marked, expires_hour
                                            FROM link_rollup_delta) c
                      JOIN signing_keys k USING (key_id)
                      WHERE c.minute = -1 AND NOT c.marked AND k.state IN ('active', 'retired')
                        AND c.expires_hour = date_trunc('hour', now(), 'UTC')";
    assert!(
        count(&pool, coarse_now).await > 0,
        "some live key's current hour is a whole hour's cell"
    );
    assert_rollup_equals_scan(&pool, "whole hours beside minutes").await;

    // The check below needs the fold's hours: fold again if one ended meanwhile.
    let hour = "SELECT extract(epoch FROM date_trunc('hour', clock_timestamp(), 'UTC'))::bigint";
    loop {
        let before = count(&pool, hour).await;
        let links = count(
            &pool,
            "SELECT ((SELECT coalesce(sum(links), 0) FROM link_rollup)
                   + (SELECT coalesce(sum(links), 0) FROM link_rollup_delta))::bigint",
        )
        .await;
        fold(&pool).await;
        assert_eq!(
            count(
                &pool,
                "SELECT ((SELECT coalesce(sum(links), 0) FROM link_rollup)
                       + (SELECT coalesce(sum(links), 0) FROM link_rollup_delta))::bigint",
            )
            .await,
            links,
            "a fold recounts no link twice and loses none"
        );
        if count(&pool, hour).await == before {
            break;
        }
    }
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM (SELECT key_id, minute, marked, expires_hour FROM link_rollup
                                   UNION ALL
                                   SELECT key_id, minute, marked, expires_hour FROM link_rollup_delta) c
             JOIN signing_keys k USING (key_id)
             WHERE c.minute = -1 AND NOT c.marked AND k.state IN ('active', 'retired')
               AND c.expires_hour >= date_trunc('hour', now(), 'UTC')
               AND c.expires_hour < date_trunc('hour', now(), 'UTC') + interval '2 hours'"
        )
        .await,
        0,
        "the fold counted the current and the next hour of every live key by minute"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM link_rollup_delta").await,
        0,
        "the refined hours' deltas were folded too"
    );
    assert_rollup_equals_scan(&pool, "after the fold refined them").await;
}

/// Folds racing link inserts lose nothing and count nothing twice, whole
/// hours being counted by minute among them.
#[sqlx::test]
async fn folds_during_inserts_lose_and_double_count_nothing(pool: PgPool) {
    presignd::registry::migrate(&pool).await.unwrap();
    seed_fixture(&pool).await;
    add_links(&pool, 500, 0.9).await;
    coarsen(&pool, "TRUE").await;
    let inserting = tokio::spawn({
        let pool = pool.clone();
        async move {
            for i in 0..40 {
                add_links(&pool, 50, i as f64 / 100.0).await;
            }
        }
    });
    let mut folds = 0;
    while !inserting.is_finished() {
        if link_summary::fold(&pool).await.unwrap().is_some() {
            folds += 1;
        }
    }
    inserting.await.unwrap();
    assert!(folds > 1, "folds ran while links were inserted ({folds})");
    assert_rollup_equals_scan(&pool, "after racing folds").await;
    fold(&pool).await;
    assert_eq!(
        count(&pool, "SELECT sum(links)::bigint FROM link_rollup").await,
        count(&pool, "SELECT count(*) FROM links").await
    );
    assert_rollup_equals_scan(&pool, "after the last fold").await;
}

/// A revocation's events (`revocation_events::record_deactivation`, which
/// reads the roll-up for the hours from the next one on, `links` before) equal
/// a pass over every link of the key: links, quarantined and earliest expiry
/// per caller; with cells folded and unfolded, links expiring this hour and a
/// caller whose first link expires two days ahead.
#[sqlx::test]
async fn revocation_events_from_the_rollup_equal_a_pass_over_the_links(pool: PgPool) {
    seed_fixture(&pool).await;
    add_links(&pool, 3000, 0.3).await;
    fold(&pool).await;
    // Unfolded deltas too, and a caller with nothing before two days ahead.
    add_links(&pool, 1000, 0.4).await;
    sqlx::query(
        "INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key,
                            issued_at, expires_at, signature_sha256)
         SELECT gen_random_uuid(), 'GKBETA2', 'beta', 'svc-late', 'GET', 'photos', 'late/' || i,
                now(), now() + interval '2 days' + i * interval '7 minutes', sha256(i::text::bytea)
         FROM generate_series(1, 30) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let key = "GKBETA2";
    let quarantined: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT id FROM links WHERE key_id = $1 AND expires_at > now() + interval '5 minutes'
           AND revocation_id IS NULL ORDER BY id LIMIT 7",
    )
    .bind(key)
    .fetch_all(&pool)
    .await
    .unwrap();
    let revocation = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO revocations (id, signer, mode, requested_by, reason, state, next_step, blast_radius)
         VALUES ($1, 'beta', 'revoke', 'test', 'test', 'running', 'deactivate_old_key', '{}')",
    )
    .bind(revocation)
    .execute(&pool)
    .await
    .unwrap();

    let mut tx = pool.begin().await.unwrap();
    presignd::registry::keys::deactivate(&mut tx, key, Some(revocation))
        .await
        .unwrap();
    let revoked = presignd::registry::revocation_events::record_deactivation(
        &mut tx,
        revocation,
        key,
        &quarantined,
    )
    .await
    .unwrap();
    type Impact = (String, i64, i64, chrono::DateTime<chrono::Utc>);
    let oracle: Vec<Impact> = sqlx::query_as(
        "SELECT l.caller, count(*), count(*) FILTER (WHERE l.id = ANY ($2)), min(l.expires_at)
         FROM links l JOIN signing_keys k ON k.key_id = l.key_id
         WHERE l.key_id = $1 AND l.expires_at > k.deactivated_at AND l.revocation_id IS NULL
         GROUP BY l.caller ORDER BY l.caller",
    )
    .bind(key)
    .bind(&quarantined)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let events: Vec<Impact> = sqlx::query_as(
        "SELECT caller, links, quarantined, earliest_expiry FROM revocation_events
         WHERE revocation_id = $1 ORDER BY caller",
    )
    .bind(revocation)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    assert_eq!(events, oracle);
    assert_eq!(revoked, oracle.iter().map(|o| o.1).sum::<i64>());
    assert_eq!(
        oracle.len(),
        4,
        "svc-a, svc-b, svc-c and svc-late: {oracle:?}"
    );
    assert_eq!(
        oracle.iter().map(|o| o.2).sum::<i64>(),
        7,
        "every quarantined link counted once"
    );
    assert!(
        oracle
            .iter()
            .any(|o| o.3 < chrono::Utc::now() + chrono::Duration::hours(1)),
        "some caller's earliest expiry falls before the next hour: {oracle:?}"
    );
}

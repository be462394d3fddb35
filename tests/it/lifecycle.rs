//! The registry's lifecycle (migrations 0010, 0011; src/lifecycle.rs): link
//! partitions exist before an insert needs them, even with the clock far
//! ahead; a link no partition takes lands in the default partition and moves
//! to its day's once created; retention drops whole partitions, exactly those
//! whose every link expired more than the retention ago, and leaves lookups,
//! listings and the roll-up exact; audit months are dropped past their
//! retention, the drop itself audited, and every partition stays append-only.

use crate::fixture::seed_fixture;
use crate::link_rollup::assert_rollup_equals_scan;
use chrono::{DateTime, Days, Duration, NaiveDate, Utc};
use presignd::domain::LinkState;
use presignd::lifecycle::{self, Retention};
use presignd::registry::link_queries::{self, LinkFilter};
use presignd::registry::link_summary::{self, GroupBy};
use presignd::registry::links;
use presignd::registry::partitions::{self, Table};
use sqlx::PgPool;
use std::sync::atomic::{AtomicI64, Ordering};
use uuid::Uuid;

fn midnight(d: NaiveDate) -> DateTime<Utc> {
    d.and_hms_opt(0, 0, 0).unwrap().and_utc()
}

async fn partition_names(pool: &PgPool, table: Table) -> Vec<String> {
    partitions::list(&mut pool.acquire().await.unwrap(), table)
        .await
        .unwrap()
}

/// Inserts one link expiring at `expires` (issued an hour before), over the
/// fixture's keys, buckets and callers in turn (one in seven marked by its
/// revocation), so summaries have groups to compare; returns its id.
async fn insert_link(pool: &PgPool, expires: DateTime<Utc>) -> Uuid {
    static N: AtomicI64 = AtomicI64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key,
                            issued_at, expires_at, signature_sha256, revocation_id)
         SELECT $1, k.key_id, k.signer, (ARRAY['svc-a', 'svc-b', 'svc-c'])[1 + $3 % 3],
                'GET', (ARRAY['photos', 'docs', 'archive'])[1 + ($3 / 3) % 3],
                'life/' || $1, $2 - interval '1 hour', $2, sha256($1::text::bytea),
                CASE WHEN $3 % 7 = 0 THEN '0198c0de-0000-7000-8000-000000000001'::uuid END
         FROM (SELECT key_id, signer FROM signing_keys ORDER BY key_id OFFSET $3 % 5 LIMIT 1) k",
    )
    .bind(id)
    .bind(expires)
    .bind(n)
    .execute(pool)
    .await
    .expect("the insert finds a partition");
    id
}

/// The partition a link's row lives in.
async fn partition_of(pool: &PgPool, id: Uuid) -> String {
    sqlx::query_scalar("SELECT tableoid::regclass::text FROM links WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn an_insert_far_ahead_finds_its_partition_or_the_safety_net(pool: PgPool) {
    seed_fixture(&pool).await;
    let now = Utc::now();
    // The maintenance step, run as of 20 days from now, prepares that day and
    // the 14 after it: a link expiring then lands in its day's partition.
    let ahead = now + Duration::days(20);
    let report = lifecycle::prepare(&pool, ahead).await.unwrap();
    let day = ahead.date_naive();
    assert!(
        report.created.contains(&Table::Links.partition_name(day)),
        "{report:?}"
    );
    let last = day
        .checked_add_days(Days::new(lifecycle::LINK_DAYS_AHEAD))
        .unwrap();
    assert!(
        partition_names(&pool, Table::Links)
            .await
            .contains(&Table::Links.partition_name(last))
    );
    let id = insert_link(&pool, ahead).await;
    assert_eq!(
        partition_of(&pool, id).await,
        Table::Links.partition_name(day)
    );

    // 60 days ahead nothing was prepared: the insert does not fail, the link
    // waits in links_default, readable as any other...
    let far = now + Duration::days(60);
    let stray = insert_link(&pool, far).await;
    assert_eq!(partition_of(&pool, stray).await, "links_default");
    assert!(links::get(&pool, stray).await.unwrap().is_some());
    // ...and moves to its day's partition when that is created (the next
    // step creates the days of whatever the default holds).
    let report = lifecycle::prepare(&pool, now).await.unwrap();
    let far_day = Table::Links.partition_name(far.date_naive());
    assert!(report.created.contains(&far_day), "{report:?}");
    assert_eq!(partition_of(&pool, stray).await, far_day);
    let in_default: i64 = sqlx::query_scalar("SELECT count(*) FROM links_default")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(in_default, 0);
    let row = links::get(&pool, stray)
        .await
        .unwrap()
        .expect("GetLink by id");
    assert_eq!(row.expires_at.timestamp(), far.timestamp());
    // The move is no insert: the roll-up still counts it once.
    assert_rollup_equals_scan(&pool, "after moving a link out of the default").await;
    // A second run creates nothing new.
    assert!(
        lifecycle::prepare(&pool, ahead)
            .await
            .unwrap()
            .created
            .is_empty()
    );
}

#[sqlx::test]
async fn retention_drops_whole_partitions_and_everything_retained_stays_exact(pool: PgPool) {
    seed_fixture(&pool).await;
    let today = Utc::now().date_naive();
    let day = |n: u64| today.checked_add_days(Days::new(n)).unwrap();
    // Links expiring on days 2..=9 ahead (one at the last second of each
    // day), half folded into the roll-up, half still deltas.
    let mut by_day = Vec::new();
    for n in 2..=9 {
        let start = midnight(day(n));
        let mut ids = vec![
            insert_link(&pool, start + Duration::hours(3)).await,
            insert_link(&pool, start + Duration::days(1) - Duration::seconds(1)).await,
        ];
        if n % 2 == 0 {
            link_summary::fold(&pool).await.unwrap().expect("fold ran");
        }
        for h in [12, 13, 14, 15, 16, 17] {
            ids.push(insert_link(&pool, start + Duration::hours(h)).await);
        }
        by_day.push((n, ids));
    }
    assert_rollup_equals_scan(&pool, "before any drop").await;
    // Drops allowed from 22:00 to 01:00 UTC: the steps below run at 23:59:59
    // and at midnight.
    let retention = Retention::new(30, 400)
        .unwrap()
        .with_drop_hours("22-1".parse().unwrap());

    // Day 4's partition ends at day 5's midnight: it may go 30 days after.
    let boundary = midnight(day(5)) + Duration::days(30);

    // Outside its drop hours, retention waits: nothing goes, nothing changes.
    let quiet = retention.with_drop_hours("2-5".parse().unwrap());
    let report = lifecycle::step(&pool, boundary - Duration::seconds(1), quiet)
        .await
        .unwrap();
    assert!(report.dropped.is_empty(), "{report:?}");
    let names = partition_names(&pool, Table::Links).await;
    assert!(
        names.contains(&Table::Links.partition_name(day(2))),
        "{names:?}"
    );
    for (_, ids) in &by_day {
        for id in ids {
            assert!(links::get(&pool, *id).await.unwrap().is_some());
        }
    }

    // One second before the boundary, days 1..=3 go (with the table as it
    // was before, `links_before_*`, and the fixture's links); day 4 stays: its
    // last link expired exactly, not more than, 30 days ago.
    let report = lifecycle::step(&pool, boundary - Duration::seconds(1), retention)
        .await
        .unwrap();
    let dropped: Vec<&str> = report
        .dropped
        .iter()
        .map(|d| d.partition.as_str())
        .collect();
    for n in 1..=3 {
        assert!(
            dropped.contains(&Table::Links.partition_name(day(n)).as_str()),
            "day {n}: {dropped:?}"
        );
    }
    assert!(
        dropped.iter().any(|p| p.starts_with("links_before_")),
        "{dropped:?}"
    );
    assert!(!dropped.contains(&Table::Links.partition_name(day(4)).as_str()));
    let names = partition_names(&pool, Table::Links).await;
    assert!(names.contains(&Table::Links.partition_name(day(4))));
    for (n, ids) in &by_day {
        for id in ids {
            let found = links::get(&pool, *id).await.unwrap();
            assert_eq!(found.is_some(), *n >= 4, "link of day {n}");
        }
    }
    // Listings list exactly what is retained, summaries count it.
    let listed = link_queries::list_page(&pool, &LinkFilter::default(), None, 1000)
        .await
        .unwrap();
    let retained: i64 = sqlx::query_scalar("SELECT count(*) FROM links")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(listed.len() as i64, retained);
    assert_eq!(retained, 6 * 8, "days 4..=9, eight links each");
    assert!(listed.iter().all(|l| l.expires_at >= midnight(day(4))));
    assert_rollup_equals_scan(&pool, "after dropping days").await;
    let cells: i64 = sqlx::query_scalar(
        "SELECT ((SELECT coalesce(sum(links), 0) FROM link_rollup)
              + (SELECT coalesce(sum(links), 0) FROM link_rollup_delta))::bigint",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        cells, retained,
        "the roll-up counts exactly the retained links"
    );

    // Each drop is in the audit trail, with how many rows went.
    let audited: Vec<(String, String)> = sqlx::query_as(
        "SELECT target, message FROM audit_events
         WHERE rpc = 'presignd.maintenance/DropPartition' ORDER BY target",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(audited.len(), report.dropped.len());
    let day2 = Table::Links.partition_name(day(2));
    let (_, message) = audited.iter().find(|(t, _)| *t == day2).unwrap();
    assert!(
        message.starts_with("retention dropped 8 links rows"),
        "{message}"
    );

    // At the boundary, day 4 goes too; the roll-up still matches.
    let report = lifecycle::step(&pool, boundary, retention).await.unwrap();
    assert_eq!(
        report
            .dropped
            .iter()
            .map(|d| d.partition.clone())
            .collect::<Vec<_>>(),
        [Table::Links.partition_name(day(4))]
    );
    link_summary::fold(&pool).await.unwrap();
    assert_rollup_equals_scan(&pool, "after dropping day 4 and a fold").await;

    // Retention 0 keeps every link, however late.
    let keep = Retention::new(0, 400).unwrap();
    let report = lifecycle::step(&pool, boundary + Duration::days(3650), keep)
        .await
        .unwrap();
    assert_no_link_partition_dropped(&report);
}

fn assert_no_link_partition_dropped(report: &lifecycle::Report) {
    assert!(
        report
            .dropped
            .iter()
            .all(|d| !d.partition.starts_with("links")),
        "{report:?}"
    );
}

/// The maintenance loop's run (`lifecycle::tick`) judges retention by the
/// registry's clock: a machine whose clock jumped 40 days ahead drops
/// nothing still retained (a link that expired yesterday, a 30-day
/// retention), where a run by that clock (`step`) drops its day at once.
#[sqlx::test]
async fn a_machine_clock_far_ahead_drops_nothing_the_registry_still_keeps(pool: PgPool) {
    seed_fixture(&pool).await;
    let yesterday = Utc::now() - Duration::days(1);
    let id = insert_link(&pool, yesterday).await;
    let holder = partition_of(&pool, id).await;
    let ahead = Utc::now() + Duration::days(40);
    let retention = Retention::new(30, 400).unwrap();

    let report = lifecycle::tick(&pool, ahead, retention).await.unwrap();
    assert_no_link_partition_dropped(&report);
    assert!(
        links::get(&pool, id).await.unwrap().is_some(),
        "the link of yesterday is retained"
    );
    let months: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'audit_events'::regclass",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(months > 0);

    // What the machine's clock alone would have done.
    let report = lifecycle::step(&pool, ahead, retention).await.unwrap();
    assert!(
        report.dropped.iter().any(|d| d.partition == holder),
        "{report:?}"
    );
    assert!(links::get(&pool, id).await.unwrap().is_none());
}

/// A link partition goes in two steps: emptied (with its roll-up cells and
/// its audit row) and renamed, then dropped (`partitions::drop`,
/// `partitions::drop_retired`). A run stopped between them leaves an empty
/// `links_retired_*` partition that nothing lists or counts, and the next run
/// drops it without auditing it again.
#[sqlx::test]
async fn a_drop_stopped_between_its_two_steps_is_finished_by_the_next_run(pool: PgPool) {
    seed_fixture(&pool).await;
    let today = Utc::now().date_naive();
    let day = |n: u64| today.checked_add_days(Days::new(n)).unwrap();
    let (mut gone, mut kept) = (Vec::new(), Vec::new());
    for n in [2, 3] {
        for h in [1, 9, 23] {
            let id = insert_link(&pool, midnight(day(n)) + Duration::hours(h)).await;
            if n == 3 { &mut kept } else { &mut gone }.push(id);
        }
    }
    link_summary::fold(&pool).await.unwrap();
    // Two more after the fold: a link partition is counted from its roll-up
    // cells and its deltas (no pass over it), so it holds both kinds.
    for h in [4, 5] {
        gone.push(insert_link(&pool, midnight(day(2)) + Duration::hours(h)).await);
    }
    let now = midnight(day(3)) + Duration::days(30);
    let name = Table::Links.partition_name(day(2));
    let retired = name.replace("links_p", "links_retired_p");

    // Step one alone, as if the process stopped right after it.
    let mut conn = pool.acquire().await.unwrap();
    let dropped = partitions::drop(&mut conn, Table::Links, &name, 200, now)
        .await
        .unwrap()
        .expect("the partition is emptied");
    assert_eq!(dropped.rows, 5);
    let message: String = sqlx::query_scalar(
        "SELECT message FROM audit_events
         WHERE rpc = 'presignd.maintenance/DropPartition' AND target = $1",
    )
    .bind(&name)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        message.starts_with("retention dropped 5 links rows"),
        "{message}"
    );
    let names = partition_names(&pool, Table::Links).await;
    assert!(
        names.contains(&retired) && !names.contains(&name),
        "{names:?}"
    );
    let in_retired: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {retired}"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(in_retired, 0);
    let listed = link_queries::list_page(&pool, &LinkFilter::default(), None, 1000)
        .await
        .unwrap();
    assert!(gone.iter().all(|id| listed.iter().all(|l| l.id != *id)));
    assert!(kept.iter().all(|id| listed.iter().any(|l| l.id == *id)));
    for id in &gone {
        assert!(links::get(&pool, *id).await.unwrap().is_none());
    }
    assert_rollup_equals_scan(&pool, "between the two steps").await;

    // The next run drops the emptied table; the drop is audited once.
    let report = lifecycle::step(&pool, now, Retention::new(30, 400).unwrap())
        .await
        .unwrap();
    assert_eq!(report.deferred, 0, "{report:?}");
    let names = partition_names(&pool, Table::Links).await;
    assert!(!names.iter().any(|n| n.contains("retired")), "{names:?}");
    assert!(names.contains(&Table::Links.partition_name(day(3))));
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events
         WHERE rpc = 'presignd.maintenance/DropPartition' AND target = $1",
    )
    .bind(&name)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(audited, 1);
    // Only day 3's links are left, and the roll-up counts exactly them.
    let (links, counted): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM links),
                ((SELECT coalesce(sum(links), 0) FROM link_rollup)
                 + (SELECT coalesce(sum(links), 0) FROM link_rollup_delta))::bigint",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((links, counted), (3, 3));
}

#[sqlx::test]
async fn audit_months_past_retention_are_dropped_audited_and_append_only_until_then(pool: PgPool) {
    sqlx::query(
        "INSERT INTO audit_events (id, at, caller, rpc, code) VALUES
             (gen_random_uuid(), now(), 'ops', 'presignd.v1.KeyService/RotateKey', 'OK')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let now = Utc::now();
    lifecycle::prepare(&pool, now).await.unwrap();
    // Every partition refuses UPDATE, DELETE and TRUNCATE, the parent too.
    let mut names = partition_names(&pool, Table::Audit).await;
    assert!(names.len() >= 5, "{names:?}");
    names.push("audit_events".into());
    for name in &names {
        for sql in [
            format!("UPDATE {name} SET code = 'X'"),
            format!("DELETE FROM {name}"),
            format!("TRUNCATE {name}"),
        ] {
            let e = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .execute(&pool)
                .await;
            // Row triggers fire on rows: an empty partition has none to refuse.
            let empty: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT NOT EXISTS (SELECT 1 FROM {name})"
            )))
            .fetch_one(&pool)
            .await
            .unwrap();
            if sql.starts_with("TRUNCATE") || !empty {
                let e = e.expect_err(&sql).to_string();
                assert!(e.contains("append-only"), "{sql}: {e}");
            }
        }
    }

    // 400 days after this month ended, it goes (the table as it was before the
    // upgrade, `audit_events_before_*`, holds it), and the drop is audited.
    let month_end = Table::Audit
        .range_of(&Table::Audit.partition_name(Table::Audit.period_of(now)))
        .unwrap()
        .1;
    let later = midnight(month_end) + Duration::days(400);
    // Links kept: this test is about the audit trail alone.
    let retention = Retention::new(0, 400).unwrap();
    let report = lifecycle::step(&pool, later - Duration::seconds(1), retention)
        .await
        .unwrap();
    assert!(
        report
            .dropped
            .iter()
            .all(|d| !d.partition.starts_with("audit")),
        "{report:?}"
    );
    let report = lifecycle::step(&pool, later, retention).await.unwrap();
    let before = report
        .dropped
        .iter()
        .find(|d| d.partition.starts_with("audit_events_before_"))
        .unwrap_or_else(|| panic!("{report:?}"));
    assert_eq!(before.rows, 1);
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT rpc, target FROM audit_events ORDER BY at, id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        rows.iter()
            .all(|(rpc, _)| rpc == "presignd.maintenance/DropPartition"),
        "the old event went, the drops' rows stay: {rows:?}"
    );
    assert!(rows.iter().any(|(_, t)| *t == before.partition));
}

#[test]
fn an_audit_retention_under_90_days_is_refused() {
    let e = Retention::new(30, 89).unwrap_err().to_string();
    assert!(e.contains("at least 90"), "{e}");
    assert!(Retention::new(0, 90).is_ok());
}

/// A summary (SummarizeLinks, and the outstanding-links gauge at every
/// refresh) locks the partitions of the current hour's links only, so a
/// retention drop of an older day goes ahead while one runs. Planned with
/// `now()`, which the planner cannot prune by, it locked every partition for
/// as long as it ran: seconds on 100M links, and the drop gave up meanwhile
/// (docs/BENCHMARKS.md, "Lifecycle at 100M links").
#[sqlx::test]
async fn a_summary_running_does_not_hold_off_a_retention_drop(pool: PgPool) {
    seed_fixture(&pool).await;
    let today = Utc::now().date_naive();
    let day2 = today.checked_add_days(Days::new(2)).unwrap();
    insert_link(&pool, midnight(day2) + Duration::hours(3)).await;
    insert_link(&pool, Utc::now() + Duration::seconds(1)).await;

    // The summaries' locks held as if they were still running: in one open
    // transaction, every sub-select that reads links (the current hour's
    // active links, the expired probe), and the gauge's count; each more
    // times than PostgreSQL plans a prepared statement for its values before
    // it may settle on a generic plan, which prunes only when it runs.
    let mut running = pool.begin().await.unwrap();
    for state in [None, Some(LinkState::Active), Some(LinkState::Expired)].repeat(7) {
        for group_by in [GroupBy::Key, GroupBy::Bucket] {
            let filter = LinkFilter {
                state,
                ..LinkFilter::default()
            };
            link_summary::summarize(&mut *running, &filter, group_by)
                .await
                .unwrap();
        }
    }
    let gauge = presignd::registry::keys::list_with_outstanding(&mut *running, None)
        .await
        .unwrap();
    assert!(
        gauge.iter().map(|k| k.outstanding_links).sum::<i64>() >= 2,
        "{gauge:?}"
    );

    let name = Table::Links.partition_name(day2);
    let mut conn = pool.acquire().await.unwrap();
    let now = midnight(day2) + Duration::days(31);
    let dropped = partitions::drop(&mut conn, Table::Links, &name, 200, now)
        .await
        .unwrap();
    assert_eq!(
        dropped.map(|d| d.rows),
        Some(1),
        "the drop of {name} waited for a summary's locks and gave up"
    );
    running.commit().await.unwrap();
}

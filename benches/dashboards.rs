//! The dashboards' queries over a large registry: a ListLinks page at several
//! depths, with and without filters, SummarizeLinks, and a blast radius, timed
//! through the registry functions the service runs. Results: docs/BENCHMARKS.md.
//!
//!   DATABASE_URL=... cargo bench --bench dashboards
//!
//! Creates a scratch database (PRESIGND_BENCH_DB, default presignd_bench_dashboards)
//! on the server of DATABASE_URL (the role needs CREATEDB), fills it with
//! PRESIGND_BENCH_ROWS links (default 10,000,000; several minutes), and reuses it
//! on the next run if it holds that many. PRESIGND_BENCH_BURST=N then lays N
//! links of an active key issued with a 5-minute TTL over the hour that ended
//! 5 minutes ago, in place of an earlier run's: all expired, the newest of the
//! registry, a part expiring in the current hour (a busy hour of short-lived
//! links gone quiet). PRESIGND_BENCH_KEEP_BURST=1 keeps the registry's burst
//! and its statistics as they are (builds compared side by side on the same
//! plans' inputs). PRESIGND_BENCH_LIVE_HOUR=N lays N links of the same key
//! issued with a 15-minute TTL and expiring evenly over the rest of the current
//! hour, in place of an earlier run's (also kept by KEEP_BURST): a busy hour of
//! short-lived links still live, which a summary reads link by link.
//! PRESIGND_BENCH_DROP=1 drops the database at the end.
//! Not a test: without `--bench` (as under `cargo test` or nextest) it does nothing.

use presignd::domain::LinkState;
use presignd::lifecycle;
use presignd::paging::Cursor;
use presignd::registry::link_queries::{self, LinkFilter};
use presignd::registry::link_summary::{self, GroupBy};
use presignd::registry::partitions::{self, Table};
use presignd::registry::{self, keys, links};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgPool};
use std::time::{Duration, Instant};

const PAGE: i64 = 100;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --benches` and nextest's `--list` land here: nothing to run.
        return Ok(());
    }
    let url = std::env::var("DATABASE_URL").map_err(|_| anyhow::anyhow!("set DATABASE_URL"))?;
    let rows = env_count("PRESIGND_BENCH_ROWS")?.unwrap_or(10_000_000);
    let burst = env_count("PRESIGND_BENCH_BURST")?.unwrap_or(0);
    let live_hour = env_count("PRESIGND_BENCH_LIVE_HOUR")?.unwrap_or(0);
    let name =
        std::env::var("PRESIGND_BENCH_DB").unwrap_or_else(|_| "presignd_bench_dashboards".into());
    let admin: PgConnectOptions = url.parse()?;

    let pool = scratch_database(&admin, &name).await?;
    let have: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM links WHERE caller NOT IN ('svc-burst', 'svc-live')",
    )
    .fetch_one(&pool)
    .await?;
    if have == rows {
        println!("reusing {name}: {have} links");
    } else {
        generate(&pool, rows).await?;
    }
    if std::env::var_os("PRESIGND_BENCH_KEEP_BURST").is_none() {
        lay_burst(&pool, burst).await?;
        lay_live_hour(&pool, live_hour).await?;
    }
    let t = Instant::now();
    let folded = link_summary::fold(&pool).await?;
    let cells: i64 = sqlx::query_scalar("SELECT count(*) FROM link_rollup")
        .fetch_one(&pool)
        .await?;
    println!(
        "roll-up folded in {:.0?} ({folded:?} rows written); link_rollup holds {cells} cells",
        t.elapsed()
    );
    report(&pool).await?;
    measure(&pool).await?;
    pool.close().await;

    if std::env::var("PRESIGND_BENCH_DROP").is_ok_and(|v| v == "1") {
        let mut conn = sqlx::PgConnection::connect_with(&admin).await?;
        conn.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}")))
            .await?;
        println!("dropped {name}");
    }
    Ok(())
}

/// A count from the environment variable `name`, `_` allowed between digits
/// (10_000_000); None if it is not set.
fn env_count(name: &str) -> anyhow::Result<Option<i64>> {
    std::env::var(name)
        .ok()
        .map(|s| s.replace('_', "").parse())
        .transpose()
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))
}

async fn scratch_database(admin: &PgConnectOptions, name: &str) -> anyhow::Result<PgPool> {
    anyhow::ensure!(
        name.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "PRESIGND_BENCH_DB: lowercase letters, digits and '_' only"
    );
    let mut conn = sqlx::PgConnection::connect_with(admin).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await?;
    }
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(registry::session_settings(admin.clone().database(name)))
        .await?;
    registry::migrate(&pool).await?;
    Ok(pool)
}

/// `rows` links: 10% (at most 1,000,000) for one key of a "bulk" signer, all
/// issued within the last day with a 7-day TTL (a key with a large blast
/// radius); the rest spread evenly over PRESIGND_BENCH_DAYS days (default 30),
/// one partition per day of expiry, across three signers, each with four generations of keys
/// (deleted, inactive with its links marked by a revocation, retired, active).
/// Callers, buckets, methods and TTLs are skewed as real traffic is.
async fn generate(pool: &PgPool, rows: i64) -> anyhow::Result<()> {
    let started = Instant::now();
    let days: i64 = std::env::var("PRESIGND_BENCH_DAYS")
        .ok()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(30);
    println!("generating {rows} links over {days} days (this takes minutes)");
    // A day's partition for every day of expiry: a fresh registry has one
    // partition for everything before tomorrow (0011), emptied and dropped here.
    let mut conn = pool.acquire().await?;
    for name in partitions::list(&mut conn, Table::Links).await? {
        if name.starts_with("links_before_") {
            conn.execute(sqlx::AssertSqlSafe(format!("DROP TABLE {name}")))
                .await?;
        }
    }
    let today = chrono::Utc::now().date_naive();
    for n in -(days + 1)..=lifecycle::LINK_DAYS_AHEAD as i64 {
        let day = today + chrono::Duration::days(n);
        if !partitions::list(&mut conn, Table::Links)
            .await?
            .contains(&Table::Links.partition_name(day))
        {
            partitions::create(&mut conn, Table::Links, day, 10_000).await?;
        }
    }
    drop(conn);
    let mut tx = pool.begin().await?;
    tx.execute(
        "TRUNCATE links, signing_keys, revocations, revocation_events, key_intents, multipart_uploads,
                  signers",
    )
    .await?;
    tx.execute(
        "INSERT INTO signers (name, backend)
         VALUES ('web', 'garage'), ('batch', 'garage'), ('partners', 'garage'), ('bulk', 'garage')",
    )
    .await?;
    // The revocation that marked the inactive keys' links (links.revocation_id
    // references it).
    tx.execute(
        "INSERT INTO revocations (id, signer, mode, requested_by, reason, state, next_step,
                                  blast_radius)
         VALUES ('0198c0de-0000-7000-8000-000000000001', 'web', 'revoke', 'bench', 'bench',
                 'succeeded', 'done', '{}')",
    )
    .await?;
    tx.execute(
        "INSERT INTO signing_keys (key_id, signer, state, sealed_secret)
         SELECT 'GK' || s || g, s,
                (ARRAY['deleted', 'inactive', 'retired', 'active'])[g + 1], '\\x00'::bytea
         FROM unnest(ARRAY['web', 'batch', 'partners']) AS s, generate_series(0, 3) AS g
         UNION ALL SELECT 'GKbulk', 'bulk', 'active', '\\x00'::bytea",
    )
    .await?;
    // Bulk loading: build the indexes and check the foreign keys once at the end
    // (exactly the migrated definitions, read back from the catalog).
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT indexname, indexdef FROM pg_indexes
         WHERE tablename = 'links' AND indexname <> 'links_pkey'",
    )
    .fetch_all(&mut *tx)
    .await?;
    let constraints: Vec<(String, String)> = sqlx::query_as(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
         WHERE conrelid = 'links'::regclass AND contype IN ('f', 'c')",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (name, _) in &indexes {
        tx.execute(sqlx::AssertSqlSafe(format!("DROP INDEX {name}")))
            .await?;
    }
    for (name, _) in &constraints {
        tx.execute(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE links DROP CONSTRAINT {name}"
        )))
        .await?;
    }
    tx.execute("SELECT setseed(0.42)").await?;
    let bulk = env_count("PRESIGND_BENCH_BULK")?.unwrap_or((rows / 10).min(1_000_000));
    let spread = rows - bulk;
    sqlx::query(
        "INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key,
                            issued_at, expires_at, signature_sha256, revocation_id)
         SELECT -- a UUIDv7-like id: milliseconds first, like Uuid::now_v7
                (lpad(to_hex((extract(epoch FROM issued_at) * 1000)::bigint), 12, '0')
                 || '7' || substr(h, 1, 3) || '8' || substr(h, 4, 15))::uuid,
                key_id, signer, caller, method, bucket,
                caller || '/' || to_char(issued_at, 'YYYY/MM/DD') || '/obj-' || i || '.bin',
                issued_at, issued_at + ttl, sha256(h::bytea),
                CASE WHEN key_id LIKE '%1' THEN '0198c0de-0000-7000-8000-000000000001'::uuid END
         FROM (
             SELECT i, md5(i::text) AS h, signer,
                    CASE WHEN signer = 'bulk' THEN 'GKbulk'
                         ELSE 'GK' || signer || greatest(0, 3 - floor(-age_days / 7.5)::int) END AS key_id,
                    'svc-' || lpad(floor(20 * random() ^ 2)::int::text, 2, '0') AS caller,
                    'bucket-' || floor(8 * random() ^ 2)::int AS bucket,
                    (ARRAY['GET','GET','GET','GET','GET','GET','GET','PUT','PUT','HEAD','DELETE'])
                        [1 + floor(random() * 11)::int] AS method,
                    CASE WHEN signer = 'bulk' THEN interval '7 days'
                         ELSE (ARRAY[interval '15 minutes', interval '15 minutes',
                                     interval '15 minutes', interval '1 hour',
                                     interval '1 day', interval '7 days'])
                                  [1 + floor(random() * 6)::int] END AS ttl,
                    date_trunc('second', now() + age_days * interval '1 day') AS issued_at
             FROM (
                 SELECT i,
                        CASE WHEN i <= $2 THEN 'bulk'
                             ELSE (ARRAY['web','web','web','web','web','web',
                                         'batch','batch','batch','partners'])[1 + i % 10] END
                            AS signer,
                        CASE WHEN i <= $2 THEN -random()
                             ELSE -$4 + $4 * (i - $2)::float8 / $3 END AS age_days
                 FROM generate_series(1, $1) AS i
             ) base
         ) gen",
    )
    .bind(rows)
    .bind(bulk)
    .bind(spread)
    .bind(days as f64)
    .execute(&mut *tx)
    .await?;
    println!("  rows inserted after {:.0?}", started.elapsed());
    tx.execute("SET LOCAL maintenance_work_mem = '1GB'").await?;
    for (name, def) in &indexes {
        let t = Instant::now();
        // On the partitioned parent, and so on every partition.
        let def = def.replace(" ON ONLY ", " ON ");
        tx.execute(sqlx::AssertSqlSafe(def)).await?;
        println!("  {name} built in {:.0?}", t.elapsed());
    }
    for (name, def) in &constraints {
        tx.execute(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE links ADD CONSTRAINT {name} {def}"
        )))
        .await?;
    }
    // The keys that no longer sign, inserted in their states directly: their
    // windows, as retiring or deactivating them would have recorded (0019).
    tx.execute(
        "UPDATE signing_keys k
         SET signed_from = coalesce((SELECT min(issued_at) FROM links l WHERE l.key_id = k.key_id), 'infinity'),
             signed_until = coalesce((SELECT max(issued_at) FROM links l WHERE l.key_id = k.key_id), '-infinity')
         WHERE k.state IN ('retired', 'inactive', 'deleted')",
    )
    .await?;
    tx.commit().await?;
    pool.execute("VACUUM ANALYZE links").await?;
    println!("generated in {:.0?}", started.elapsed());
    Ok(())
}

/// Whose the burst's links are (an active key of `generate`'s), for
/// `lay_burst` and for the filters that cross the burst.
const BURST_KEY: &str = "GKweb3";
const BURST_SIGNER: &str = "web";
const BURST_BUCKET: &str = "bucket-0";

/// `n` links of the active key BURST_KEY (caller svc-burst), issued evenly over
/// the hour that ended 5 minutes ago with a 5-minute TTL, inserted as IssueLink
/// records them (the roll-up's trigger counts them), in place of an earlier
/// run's: the newest links of the registry, all expired, as after a busy hour
/// of short-lived links and a quiet spell.
async fn lay_burst(pool: &PgPool, n: i64) -> anyhow::Result<()> {
    let started = Instant::now();
    // The partitions an earlier run's burst is in: rewritten once it is
    // deleted, or each run would walk its dead rows' pages too (a burst laid
    // three times left today's indexes 4x their size).
    let held: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT tableoid::regclass::text FROM links WHERE caller = 'svc-burst'",
    )
    .fetch_all(pool)
    .await?;
    let gone = sqlx::query("DELETE FROM links WHERE caller = 'svc-burst'")
        .execute(pool)
        .await?
        .rows_affected();
    for partition in &held {
        pool.execute(sqlx::AssertSqlSafe(format!("VACUUM FULL {partition}")))
            .await?;
    }
    if !lay_links(
        pool,
        n,
        gone,
        "SELECT (lpad(to_hex((extract(epoch FROM issued_at) * 1000)::bigint), 12, '0')
                 || '7' || substr(h, 1, 3) || '8' || substr(h, 4, 15))::uuid,
                $2, $3, 'svc-burst', 'GET', $4,
                'svc-burst/' || to_char(issued_at, 'YYYY/MM/DD') || '/obj-' || i || '.bin',
                issued_at, issued_at + interval '5 minutes', sha256(h::bytea)
         FROM (SELECT i, md5('burst' || i) AS h,
                      now() - interval '65 minutes' + i * interval '1 hour' / $1 AS issued_at
               FROM generate_series(1, $1) AS i) gen",
    )
    .await?
    {
        return Ok(());
    }
    println!(
        "burst of {n} links laid in {:.0?} ({gone} of an earlier run's deleted)",
        started.elapsed()
    );
    Ok(())
}

/// `n` links of the active key BURST_KEY (caller svc-live), issued with a
/// 15-minute TTL, expiring evenly from a minute from now to the end of the
/// current hour; an earlier run's deleted first. Vacuumed after, as
/// autovacuum does an hour of inserts within minutes: the earlier run's dead
/// rows, left in the same index range, tripled every figure.
async fn lay_live_hour(pool: &PgPool, n: i64) -> anyhow::Result<()> {
    let started = Instant::now();
    let gone = sqlx::query("DELETE FROM links WHERE caller = 'svc-live'")
        .execute(pool)
        .await?
        .rows_affected();
    if !lay_links(
        pool,
        n,
        gone,
        "SELECT (lpad(to_hex((extract(epoch FROM e - interval '15 minutes') * 1000)::bigint),
                      12, '0')
                 || '7' || substr(h, 1, 3) || '8' || substr(h, 4, 15))::uuid,
                $2, $3, 'svc-live', 'GET', $4, 'svc-live/obj-' || i || '.bin',
                e - interval '15 minutes', e, sha256(h::bytea)
         FROM (SELECT i, md5('live' || i) AS h,
                      now() + interval '1 minute'
                      + (date_trunc('hour', now(), 'UTC') + interval '1 hour'
                         - now() - interval '1 minute') * i / ($1 + 1) AS e
               FROM generate_series(1, $1) AS i) gen",
    )
    .await?
    {
        return Ok(());
    }
    println!(
        "live hour of {n} links laid in {:.0?}, expiring by the hour's end \
         ({gone} of an earlier run's deleted)",
        started.elapsed()
    );
    Ok(())
}

/// Inserts the `n` links `select` makes (binds: n, BURST_KEY, BURST_SIGNER,
/// BURST_BUCKET), then vacuums and analyzes `links`; false, doing nothing, if
/// there is nothing to lay and nothing was deleted (`gone`).
async fn lay_links(pool: &PgPool, n: i64, gone: u64, select: &str) -> anyhow::Result<bool> {
    if n == 0 && gone == 0 {
        return Ok(false);
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key,
                            issued_at, expires_at, signature_sha256)
         {select}"
    )))
    .bind(n)
    .bind(BURST_KEY)
    .bind(BURST_SIGNER)
    .bind(BURST_BUCKET)
    .execute(pool)
    .await?;
    pool.execute("VACUUM ANALYZE links").await?;
    Ok(true)
}

async fn report(pool: &PgPool) -> anyhow::Result<()> {
    let (size, version): (String, String) = sqlx::query_as(
        "SELECT pg_size_pretty(sum(pg_total_relation_size(relid))),
                current_setting('server_version')
         FROM pg_partition_tree('links')",
    )
    .fetch_one(pool)
    .await?;
    let by_state: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT state, count(*) FROM (SELECT {} AS state FROM links l
         JOIN signing_keys k ON k.key_id = l.key_id) s GROUP BY state ORDER BY state",
        links::STATE_SQL
    )))
    .fetch_all(pool)
    .await?;
    println!("PostgreSQL {version}; links with indexes: {size}; by state: {by_state:?}");
    Ok(())
}

/// Median and slowest of `runs` executions, after six warm-ups: the bench's
/// one connection then runs cached statements with the generic plan Postgres
/// settles on after five executions, as a serving pool does in steady state
/// (with dozens of partitions, planning a page afresh costs more than running it).
async fn time<F, Fut, T>(runs: usize, mut f: F) -> anyhow::Result<(Duration, Duration, T)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, registry::Error>>,
{
    let mut last = f().await?;
    for _ in 0..5 {
        last = f().await?;
    }
    let mut took = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        last = f().await?;
        took.push(t.elapsed());
    }
    took.sort();
    Ok((took[runs / 2], took[runs - 1], last))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn measure(pool: &PgPool) -> anyhow::Result<()> {
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM links")
        .fetch_one(pool)
        .await?;
    // A cursor is a position in time: the link at that depth of the whole list.
    let mut depths = vec![("first page", None)];
    for (label, fraction) in [("10% deep", 0.1), ("50% deep", 0.5), ("99% deep", 0.99)] {
        let offset = (total as f64 * fraction) as i64;
        let (issued_at, id) = sqlx::query_as(
            "SELECT issued_at, id FROM links ORDER BY issued_at DESC, id DESC OFFSET $1 LIMIT 1",
        )
        .bind(offset)
        .fetch_one(pool)
        .await?;
        depths.push((label, Some(Cursor { at: issued_at, id })));
    }
    let f = LinkFilter::default;
    let filters = vec![
        ("no filter", f()),
        (
            "bucket",
            LinkFilter {
                bucket: Some("bucket-3".into()),
                ..f()
            },
        ),
        (
            "caller (rare)",
            LinkFilter {
                caller: Some("svc-19".into()),
                ..f()
            },
        ),
        (
            "signer (10%)",
            LinkFilter {
                signer: Some("partners".into()),
                ..f()
            },
        ),
        (
            "key id (old, inactive)",
            LinkFilter {
                key_id: Some("GKweb1".into()),
                ..f()
            },
        ),
        (
            "state active",
            LinkFilter {
                state: Some(LinkState::Active),
                ..f()
            },
        ),
        (
            "state expired",
            LinkFilter {
                state: Some(LinkState::Expired),
                ..f()
            },
        ),
        (
            "state revoked",
            LinkFilter {
                state: Some(LinkState::Revoked),
                ..f()
            },
        ),
        (
            "bucket + key prefix",
            LinkFilter {
                bucket: Some("bucket-1".into()),
                object_key_prefix: Some("svc-02/".into()),
                ..f()
            },
        ),
        (
            "key prefix, broad (one caller's keys)",
            LinkFilter {
                object_key_prefix: Some("svc-02/".into()),
                ..f()
            },
        ),
        (
            "key prefix, no match",
            LinkFilter {
                object_key_prefix: Some("nobody/".into()),
                ..f()
            },
        ),
        (
            "expiring in the next hour",
            LinkFilter {
                expires_after: Some(chrono::Utc::now()),
                expires_before: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
                ..f()
            },
        ),
        // A state with an equality filter: the walk is the equality's index.
        // After a burst (BURST_KEY's), these cross it.
        (
            "key id (the burst's) + state active",
            LinkFilter {
                key_id: Some(BURST_KEY.into()),
                state: Some(LinkState::Active),
                ..f()
            },
        ),
        (
            "signer (the burst's) + state active",
            LinkFilter {
                signer: Some(BURST_SIGNER.into()),
                state: Some(LinkState::Active),
                ..f()
            },
        ),
        (
            "bucket (the burst's) + state active",
            LinkFilter {
                bucket: Some(BURST_BUCKET.into()),
                state: Some(LinkState::Active),
                ..f()
            },
        ),
        (
            "bucket (the burst's) + expiring in the next hour",
            LinkFilter {
                bucket: Some(BURST_BUCKET.into()),
                expires_after: Some(chrono::Utc::now()),
                expires_before: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
                ..f()
            },
        ),
    ];
    // PRESIGND_BENCH_ONLY=list|summaries|blast runs one part.
    let only = std::env::var("PRESIGND_BENCH_ONLY").ok();
    let part = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if part("list") {
        println!("\nListLinks, page_size {PAGE} (median / slowest of 20 runs, rows returned):");
        println!(
            "| filter | {} |",
            depths.iter().map(|d| d.0).collect::<Vec<_>>().join(" | ")
        );
        println!("|---|{}", "---|".repeat(depths.len()));
        // PRESIGND_BENCH_FILTER=text: only the filters whose label holds it.
        let chosen = std::env::var("PRESIGND_BENCH_FILTER").ok();
        for (label, filter) in &filters {
            if chosen.as_deref().is_some_and(|c| !label.contains(c)) {
                continue;
            }
            let mut cells = Vec::new();
            for (_, cursor) in &depths {
                let (median, max, rows) = time(20, || {
                    link_queries::list_page(pool, filter, *cursor, PAGE + 1)
                })
                .await?;
                cells.push(format!("{} / {} ({})", ms(median), ms(max), rows.len()));
            }
            println!("| {label} | {} |", cells.join(" | "));
        }
    }
    if part("summaries") {
        println!("\nSummarizeLinks (median / slowest of 5 runs, groups):");
        for (label, group_by, filter) in [
            ("by signer, no filter", GroupBy::Signer, f()),
            ("by key, no filter", GroupBy::Key, f()),
            ("by caller, no filter", GroupBy::Caller, f()),
            (
                "by bucket, signer partners",
                GroupBy::Bucket,
                LinkFilter {
                    signer: Some("partners".into()),
                    ..f()
                },
            ),
            (
                "by signer, state active",
                GroupBy::Signer,
                LinkFilter {
                    state: Some(LinkState::Active),
                    ..f()
                },
            ),
            (
                "by caller, state expired",
                GroupBy::Caller,
                LinkFilter {
                    state: Some(LinkState::Expired),
                    ..f()
                },
            ),
        ] {
            let (median, max, groups) =
                time(5, || link_summary::summarize(pool, &filter, group_by)).await?;
            println!(
                "| {label} | {} / {} | {} groups |",
                ms(median),
                ms(max),
                groups.len()
            );
        }
        // What the roll-up replaced, and what still takes the full pass.
        let prefix = LinkFilter {
            object_key_prefix: Some("svc-02/".into()),
            ..f()
        };
        // An expiry window: a range no roll-up cell answers either.
        let next_hour = LinkFilter {
            expires_after: Some(chrono::Utc::now()),
            expires_before: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            ..f()
        };
        for (label, filter) in [
            ("by signer, scan", f()),
            ("by signer, key prefix (scan)", prefix),
            ("by signer, expiring in the next hour (scan)", next_hour),
        ] {
            let (median, max, groups) = time(5, || {
                link_summary::summarize_scan(pool, &filter, GroupBy::Signer)
            })
            .await?;
            println!(
                "| {label} | {} / {} | {} groups |",
                ms(median),
                ms(max),
                groups.len()
            );
        }
    }
    if !part("blast") {
        return Ok(());
    }
    println!("\nBlast radius (median / slowest of 5 runs):");
    for key in ["GKbulk", "GKweb3", "GKpartners2"] {
        let (median, max, radius) = time(5, || async move {
            links::blast_radius(&mut *registry::begin_snapshot(pool).await?, key).await
        })
        .await?;
        let outstanding = radius.map_or(0, |r| r.outstanding_links);
        println!(
            "| {key} | {outstanding} outstanding | {} / {} |",
            ms(median),
            ms(max)
        );
    }
    let (median, max, rows) = time(5, || keys::list_with_outstanding(pool, None)).await?;
    println!(
        "| keys::list_with_outstanding (ListSigningKeys, the outstanding-links gauge) | {} keys | {} / {} |",
        rows.len(),
        ms(median),
        ms(max)
    );
    Ok(())
}

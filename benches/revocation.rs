//! Benchmark: the blast radius and the revoke step for a key with 1,000,000
//! outstanding links in a registry of 10,000,000 rows.
//!
//!   source deploy/dev/.state/env && cargo bench --bench revocation
//!
//! Creates (or, with BENCH_REUSE=1, reuses) the scratch database
//! `presignd_bench_revocation` (or BENCH_DB) next to DATABASE_URL's, fills it
//! in SQL, folds the roll-up (as the maintenance loop does every tick), then
//! times the same registry functions the service runs. Prints a Markdown
//! table. BENCH_TOTAL=1000000 makes the target key's links the only ones
//! (a 1M-row database: seconds to fill instead of minutes).

use presignd::registry::{self, blast_radius, keys};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection};
use std::time::{Duration, Instant};

const DB: &str = "presignd_bench_revocation";
const DEFAULT_TOTAL: i64 = 10_000_000;
const TARGET: i64 = 1_000_000;
const CHUNK: i64 = 1_000_000;
const RUNS: usize = 7;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test` runs bench binaries too: do nothing then.
        return Ok(());
    }
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL (source deploy/dev/.state/env)");
    let admin: PgConnectOptions = url.parse()?;
    let reuse = std::env::var("BENCH_REUSE").is_ok_and(|v| v == "1");
    let db = std::env::var("BENCH_DB").unwrap_or_else(|_| DB.to_owned());
    let total: i64 = match std::env::var("BENCH_TOTAL") {
        Ok(v) => v.parse()?,
        Err(_) => DEFAULT_TOTAL,
    };
    assert!(total >= TARGET, "BENCH_TOTAL must be at least {TARGET}");
    if !reuse {
        let mut c = PgConnection::connect_with(&admin).await?;
        c.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}")))
            .await?;
        c.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .await?;
    }
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(admin.database(&db))
        .await?;
    registry::migrate(&pool).await?;
    if !reuse {
        seed(&pool, total).await?;
    }
    presignd::registry::link_summary::fold(&pool).await?;

    let mut radius_times = Vec::new();
    let mut radius = None;
    for _ in 0..RUNS {
        let mut tx = pool.begin().await?;
        tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let t = Instant::now();
        radius = Some(blast_radius::compute(&mut tx, "bench-target", "s0").await?);
        radius_times.push(t.elapsed());
        tx.rollback().await?;
    }
    let radius = radius.unwrap();
    assert_eq!(
        radius.outstanding_links, TARGET,
        "the seed gives the target key exactly 1M outstanding links"
    );

    // The revoke step's registry part: deactivate the key row (waiting for
    // in-flight inserts), count what died. Rolled back to run it again.
    let rev = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO revocations (id, signer, mode, requested_by, reason, state, next_step, blast_radius)
         VALUES ($1, 's0', 'revoke', 'bench', 'bench', 'succeeded', 'done', '{}')",
    )
    .bind(rev)
    .execute(&pool)
    .await?;
    let mut revoke_times = Vec::new();
    for _ in 0..RUNS {
        let mut tx = pool.begin().await?;
        let t = Instant::now();
        keys::deactivate(&mut tx, "bench-target", Some(rev)).await?;
        let n = presignd::registry::revocation_events::record_deactivation(
            &mut tx,
            rev,
            "bench-target",
            &[],
        )
        .await?;
        revoke_times.push(t.elapsed());
        assert_eq!(n, TARGET);
        tx.rollback().await?;
    }

    println!(
        "| measure ({TARGET} outstanding links of one key, {total} rows) | median | min | max |"
    );
    println!("|---|---|---|---|");
    for (name, times) in [
        ("blast radius (PlanRevocation)", &mut radius_times),
        ("revoke step, registry part", &mut revoke_times),
    ] {
        times.sort();
        println!(
            "| {name} | {} | {} | {} |",
            ms(times[times.len() / 2]),
            ms(times[0]),
            ms(times[times.len() - 1])
        );
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn seed(pool: &sqlx::PgPool, total: i64) -> anyhow::Result<()> {
    let started = Instant::now();
    pool.execute(
        "INSERT INTO signers (name, backend) SELECT 's' || i, 'garage' FROM generate_series(0, 3) i;
         INSERT INTO signing_keys (key_id, signer, state, sealed_secret)
             VALUES ('bench-target', 's0', 'active', '\\x00');
         INSERT INTO signing_keys (key_id, signer, state, sealed_secret)
             SELECT 'bench-k' || i, 's' || (i % 4), CASE WHEN i < 3 THEN 'active' ELSE 'retired' END, '\\x00'
             FROM generate_series(1, 9) i;",
    )
    .await?;
    // Load without the secondary indexes (rebuilt once at the end: minutes
    // faster than maintaining them row by row).
    let index_defs: Vec<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE tablename = 'links' AND indexname <> 'links_pkey'",
    )
    .fetch_all(pool)
    .await?;
    let index_names: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE tablename = 'links' AND indexname <> 'links_pkey'",
    )
    .fetch_all(pool)
    .await?;
    for name in &index_names {
        pool.execute(sqlx::AssertSqlSafe(format!("DROP INDEX {name}")))
            .await?;
    }
    // Rows 1..=TARGET belong to the target key, issued in the last day and
    // expiring 2 to 5.5 days after issue; the other 9M are spread over 9 keys,
    // half of them expired (issued 3-4 days ago with a 1 h TTL).
    let mut from = 1;
    while from <= total {
        let to = (from + CHUNK - 1).min(total);
        sqlx::query(
            "INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key, labels,
                                issued_at, expires_at, signature_sha256)
             SELECT gen_random_uuid(), key_id, signer,
                    'caller-' || (g % 50),
                    (ARRAY['GET', 'PUT', 'HEAD', 'DELETE'])[1 + g % 4],
                    'bucket-' || (g % 20),
                    'objects/' || g,
                    '{}'::jsonb,
                    issued_at,
                    CASE WHEN expired THEN issued_at + interval '1 hour'
                         ELSE issued_at + interval '2 days' + make_interval(secs => g % 300000) END,
                    sha256(g::text::bytea)
             FROM (SELECT g,
                          CASE WHEN g <= $3 THEN 'bench-target' ELSE 'bench-k' || (1 + g % 9) END AS key_id,
                          CASE WHEN g <= $3 THEN 's0' ELSE 's' || ((1 + g % 9) % 4) END AS signer,
                          g > $3 AND g % 2 = 0 AS expired,
                          CASE WHEN g > $3 AND g % 2 = 0
                               THEN now() - interval '3 days' - make_interval(secs => g % 86400)
                               ELSE now() - make_interval(secs => g % 86400) END AS issued_at
                   FROM generate_series($1::bigint, $2::bigint) g) s",
        )
        .bind(from)
        .bind(to)
        .bind(TARGET)
        .execute(pool)
        .await?;
        eprintln!(
            "seeded {to} rows ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
        from = to + 1;
    }
    for def in &index_defs {
        pool.execute(sqlx::AssertSqlSafe(def.clone())).await?;
    }
    eprintln!("indexes rebuilt ({:.0} s)", started.elapsed().as_secs_f64());
    pool.execute("VACUUM ANALYZE links").await?;
    eprintln!(
        "seeded and analyzed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

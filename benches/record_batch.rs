//! Benchmark: PostgreSQL's CPU a link for a group commit's batch, written the
//! way presignd writes it (`registry::links::record`: one call of
//! `links_record`, the batch as 19 arrays read with UNNEST) against COPY (the
//! same rows in COPY's binary format, in a transaction that first takes the
//! same locks and makes the same checks). Issue 12's "COPY versus UNNEST".
//!
//!   deploy/dev/stack.sh up && source deploy/dev/.state/env && cargo bench --bench record_batch
//!
//! One connection, batches back to back, against the scratch database
//! `presignd_bench_record` (dropped at the end); `links` is truncated before
//! each run, and the runs alternate. CPU is the backend's (utime + stime
//! from /proc), so what the two ways cost PostgreSQL is compared, round
//! trips included; the wall time a batch is the client's. The COPY way is
//! given every advantage the service could take: its checks are one
//! prepared call (`bench_copy_checks`, the first three statements of
//! `links_record`), the rows are encoded before the clock starts.
//! BENCH_BATCH (links a batch, 20: the closed loop's), BENCH_BATCHES (a
//! run's, 2000), BENCH_ROUNDS (3), BENCH_SYNC=on|off (synchronous_commit,
//! `on` as the service runs), BENCH_GAP_MS (a pause before each batch, 0).
//!
//! Through sqlx each COPY batch waits ~40 ms: sqlx sets no TCP_NODELAY, and
//! COPY's end (CopyDone) follows data PostgreSQL does not answer, so Nagle
//! holds it until the delayed ACK. The backend idles meanwhile, which costs
//! it CPU at its next batch (cold caches): compare COPY with the UNNEST way
//! run with BENCH_GAP_MS=44 too (docs/BENCHMARKS.md).
//!
//! A/B of a candidate `links_record` (a migration not yet written):
//! BENCH_CANDIDATE_SQL names a file run on the scratch database once it is
//! migrated, which defines `links_record` in each schema BENCH_CANDIDATES
//! lists (comma-separated). Each candidate then runs in turn with the
//! migrated function, on a connection whose search_path puts its schema
//! first, and COPY is left out.

#[path = "support/proc_stat.rs"]
mod proc_stat;
#[path = "support/scratch_db.rs"]
mod scratch_db;

use chrono::{DateTime, Utc};
use presignd::domain::KeyState;
use presignd::registry::{self, keys, links, signers};
use proc_stat::{TICK_US, cpu_ticks};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection};
use std::time::Instant;
use uuid::Uuid;

const DB: &str = "presignd_bench_record";
const KEY: &str = "GKBENCHRECORDBATCH000000";
const SIGNER: &str = "bench";

/// What `links_record` checks before it inserts: every (key, signer) exists,
/// the keys' issuance locks (shared), the keys that are active.
const CHECKS: &str = "
CREATE FUNCTION bench_copy_checks(in_key_ids TEXT[], in_key_id TEXT[], in_signer TEXT[], in_active TEXT)
RETURNS TEXT[] LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM (SELECT DISTINCT k, s FROM unnest(in_key_id, in_signer) AS u (k, s)) AS p
               WHERE NOT EXISTS (SELECT FROM signing_keys sk WHERE sk.key_id = p.k AND sk.signer = p.s))
    THEN
        RAISE EXCEPTION 'bench_copy_checks: unknown key' USING ERRCODE = 'foreign_key_violation';
    END IF;
    PERFORM pg_advisory_xact_lock_shared(28787, hashtext(k)) FROM unnest(in_key_ids) k;
    RETURN ARRAY(SELECT s.key_id FROM signing_keys s
                 WHERE s.key_id = ANY (in_key_ids) AND s.state = in_active);
END $$;
ALTER FUNCTION bench_copy_checks SET plan_cache_mode = force_generic_plan";

const COPY: &str = "COPY links (id, key_id, signer, caller, method, bucket, object_key, labels,
    issued_at, expires_at, signature_sha256, content_type, content_disposition,
    replaces_link_id, object_key_is_prefix) FROM STDIN (FORMAT binary)";

/// How a run writes its batches.
enum Way {
    /// `links::record`: the migrated `links_record`, or a candidate's (its schema).
    Unnest(Option<String>),
    /// Binary COPY after `bench_copy_checks`.
    Copy,
}

impl std::fmt::Display for Way {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Way::Unnest(None) => f.write_str("UNNEST (links_record)"),
            Way::Unnest(Some(schema)) => write!(f, "UNNEST ({schema}.links_record)"),
            Way::Copy => f.write_str("COPY (binary)"),
        }
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A batch as the service builds one: a GET link of 300 s, no labels.
fn batch(n: usize) -> Vec<links::NewLink> {
    let now = Utc::now();
    (0..n)
        .map(|i| links::NewLink {
            id: Uuid::now_v7(),
            key_id: KEY.into(),
            signer: SIGNER.into(),
            caller: "bench".into(),
            method: "GET",
            bucket: "presignd-dev".into(),
            object_key: format!("bench/object-{i}.bin"),
            object_key_is_prefix: false,
            labels: Default::default(),
            issued_at: now,
            expires_at: now + chrono::Duration::seconds(300),
            signature_sha256: vec![0xab; 32],
            content_type: None,
            content_disposition: None,
            replaces_link_id: None,
            request: None,
        })
        .collect()
}

/// The batch in COPY's binary format (header, a tuple a link, trailer).
fn copy_binary(links: &[links::NewLink]) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
        match bytes {
            Some(b) => {
                out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                out.extend_from_slice(b);
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    fn micros_since_2000(t: DateTime<Utc>) -> [u8; 8] {
        const EPOCH_2000: i64 = 946_684_800_000_000;
        (t.timestamp_micros() - EPOCH_2000).to_be_bytes()
    }
    let mut out = b"PGCOPY\n\xff\r\n\0".to_vec();
    out.extend_from_slice(&[0; 8]); // flags, header extension length
    for l in links {
        out.extend_from_slice(&15i16.to_be_bytes());
        field(&mut out, Some(l.id.as_bytes()));
        field(&mut out, Some(l.key_id.as_bytes()));
        field(&mut out, Some(l.signer.as_bytes()));
        field(&mut out, Some(l.caller.as_bytes()));
        field(&mut out, Some(l.method.as_bytes()));
        field(&mut out, Some(l.bucket.as_bytes()));
        field(&mut out, Some(l.object_key.as_bytes()));
        let mut jsonb = vec![1u8]; // jsonb's binary format: a version, then the text
        jsonb.extend_from_slice(&serde_json::to_vec(&l.labels).expect("labels serialize"));
        field(&mut out, Some(&jsonb));
        field(&mut out, Some(&micros_since_2000(l.issued_at)));
        field(&mut out, Some(&micros_since_2000(l.expires_at)));
        field(&mut out, Some(&l.signature_sha256));
        field(&mut out, l.content_type.as_deref().map(str::as_bytes));
        field(
            &mut out,
            l.content_disposition.as_deref().map(str::as_bytes),
        );
        field(
            &mut out,
            l.replaces_link_id.as_ref().map(|u| &u.as_bytes()[..]),
        );
        field(&mut out, Some(&[l.object_key_is_prefix as u8]));
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

async fn record_unnest(conn: &mut PgConnection, b: &[links::NewLink]) -> anyhow::Result<()> {
    let refs: Vec<&links::NewLink> = b.iter().collect();
    let written = links::record(&mut *conn, &[KEY], &refs).await?;
    anyhow::ensure!(written.active_keys == [KEY], "the key is not active");
    Ok(())
}

async fn record_copy(
    conn: &mut PgConnection,
    b: &[links::NewLink],
    rows: &[u8],
) -> anyhow::Result<()> {
    let key_id: Vec<&str> = b.iter().map(|l| l.key_id.as_str()).collect();
    let signer: Vec<&str> = b.iter().map(|l| l.signer.as_str()).collect();
    let mut tx = conn.begin().await?;
    let (active,): (Vec<String>,) = sqlx::query_as("SELECT bench_copy_checks($1, $2, $3, $4)")
        .bind([KEY])
        .bind(&key_id)
        .bind(&signer)
        .bind(KeyState::Active)
        .fetch_one(&mut *tx)
        .await?;
    anyhow::ensure!(active == [KEY], "the key is not active");
    let mut copy = tx.copy_in_raw(COPY).await?;
    copy.send(rows).await?;
    let n = copy.finish().await?;
    anyhow::ensure!(n == b.len() as u64, "COPY wrote {n} rows of {}", b.len());
    tx.commit().await?;
    Ok(())
}

/// Clock ticks of CPU (user + system) of a backend.
fn backend_ticks(pid: i32) -> u64 {
    cpu_ticks(&format!("/proc/{pid}/stat"))
        .expect("the backend's /proc stat (run the bench on the database's machine)")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(()); // `cargo test` runs bench binaries too
    }
    let size = env_or("BENCH_BATCH", 20);
    let batches = env_or("BENCH_BATCHES", 2000);
    let rounds = env_or("BENCH_ROUNDS", 3);
    let gap = std::time::Duration::from_millis(env_or("BENCH_GAP_MS", 0) as u64);
    let sync = std::env::var("BENCH_SYNC").unwrap_or_else(|_| "on".into());
    anyhow::ensure!(
        sync == "on" || sync == "off",
        "BENCH_SYNC must be on or off"
    );
    let admin: PgConnectOptions = std::env::var("DATABASE_URL")
        .map_err(|_| anyhow::anyhow!("DATABASE_URL is not set (source deploy/dev/.state/env)"))?
        .parse()?;
    let mut a = PgConnection::connect_with(&admin).await?;
    scratch_db::recreate(&mut a, DB).await?;
    let options = admin
        .clone()
        .database(DB)
        .options([("synchronous_commit", sync.as_str())]);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.clone())
        .await?;
    registry::migrate(&pool).await?;
    presignd::lifecycle::prepare(&pool, Utc::now()).await?;
    signers::upsert(&pool, SIGNER, "garage").await?;
    keys::insert(&pool, KEY, SIGNER, KeyState::Active, b"unused").await?;
    pool.execute(CHECKS).await?;
    let mut ways = vec![Way::Unnest(None)];
    match std::env::var("BENCH_CANDIDATE_SQL") {
        Ok(file) => {
            let sql = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("BENCH_CANDIDATE_SQL {file}: {e}"))?;
            pool.execute(sqlx::AssertSqlSafe(sql)).await?;
            let schemas = std::env::var("BENCH_CANDIDATES").map_err(|_| {
                anyhow::anyhow!("BENCH_CANDIDATES must name the schemas BENCH_CANDIDATE_SQL fills")
            })?;
            ways.extend(
                schemas
                    .split(',')
                    .map(|s| Way::Unnest(Some(s.trim().to_owned()))),
            );
        }
        Err(_) => ways.push(Way::Copy),
    }
    pool.close().await;

    println!(
        "{batches} batches of {size} links a run, synchronous_commit {sync}, one connection\n"
    );
    println!("| run | PostgreSQL CPU a link | wall a batch |");
    println!("|---|---|---|");
    for round in 1..=rounds {
        for way in &ways {
            let mut conn = PgConnection::connect_with(&options).await?;
            if let Way::Unnest(Some(schema)) = way {
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "SET search_path = {schema}, public"
                )))
                .await?;
            }
            conn.execute("TRUNCATE links").await?;
            let (pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
                .fetch_one(&mut conn)
                .await?;
            let work: Vec<(Vec<links::NewLink>, Vec<u8>)> = (0..batches)
                .map(|_| {
                    let b = batch(size);
                    let rows = copy_binary(&b);
                    (b, rows)
                })
                .collect();
            let t0 = backend_ticks(pid);
            let start = Instant::now();
            for (b, rows) in &work {
                if !gap.is_zero() {
                    tokio::time::sleep(gap).await;
                }
                match way {
                    Way::Unnest(_) => record_unnest(&mut conn, b).await?,
                    Way::Copy => record_copy(&mut conn, b, rows).await?,
                }
            }
            let wall = start.elapsed();
            let cpu = (backend_ticks(pid) - t0) as f64 * TICK_US;
            let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM links")
                .fetch_one(&mut conn)
                .await?;
            anyhow::ensure!(
                rows == (batches * size) as i64,
                "{way}: {rows} rows for {} links",
                batches * size
            );
            println!(
                "| {round}: {way} | {:.1} µs | {:.3} ms |",
                cpu / (batches * size) as f64,
                wall.as_secs_f64() * 1e3 / batches as f64
            );
        }
    }
    scratch_db::remove(&mut a, DB).await?;
    Ok(())
}

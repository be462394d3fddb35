//! Benchmark: IssueLink throughput and latency, every link committed, against a
//! no-op RPC (grpc.health.v1.Health/Check) on the same server and machine.
//!
//!   deploy/dev/stack.sh && source deploy/dev/.state/env && cargo bench --bench issue_link
//!
//! The server runs in this process (real Postgres, Garage as the key backend)
//! against the scratch database `presignd_bench_issue`. Closed loop: C clients
//! each send requests back to back for D seconds (max throughput). Open loop:
//! requests sent at half the measured IssueLink throughput (p99 at half load),
//! each request's latency from when it started; how late the client started
//! them after they were due is printed apart (the client's own lag).
//!
//! CPU per committed link, over the closed loop: the server runs on a runtime
//! of its own whose threads are known (their utime+stime from
//! /proc/self/task), Postgres is the backends of the bench database (from
//! pg_stat_activity and /proc; the WAL writer and checkpointer, shared with
//! every database, are not counted).
//!
//! BENCH_SECONDS=<s> makes every loop last s seconds (10 by default); the
//! bench ends with the process's resident memory. (Runs of 80 s and more
//! ended in an error the runtime's drop hides: see docs/BENCHMARKS.md.)
//! PRESIGND_RECORD_WORKERS and PRESIGND_RECORD_BATCH_MAX set the server's
//! group commit as they do the service's.
//!
//! BENCH_DB=<name> runs against that existing database instead (e.g. the one
//! `--bench dashboards` filled), untouched but for the links issued; with
//! BENCH_DROP_PARTITION=1 a last closed loop runs while, 5 s in, the oldest
//! day's partition of links is dropped as retention does
//! (`registry::partitions::drop`, then `drop_retired`; a try that gives up
//! at the lock timeout is tried again 250 ms later, as the maintenance loop
//! tries again at its next tick), and both steps are timed; that loop's p99
//! is also given for the requests started in the second from the drop's
//! start, before it and after it (with no day to drop, around the 5 s mark:
//! the same split without a drop). The server
//! listens on ports the system picks (gRPC and metrics).

#[path = "support/proc_stat.rs"]
mod proc_stat;
#[path = "support/scratch_db.rs"]
mod scratch_db;

use clap::Parser;
use presignd::app::App;
use presignd::config::Config;
use presignd::proto::{self, link_service_client::LinkServiceClient};
use proc_stat::{TICK_US, cpu_ticks};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor, PgConnection};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// The server's allocator (src/main.rs), so the in-process server measures as
/// the binary runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DB: &str = "presignd_bench_issue";
const TOKEN: &str = "bench-token";
const DEFAULT_CLIENTS: usize = 64;
const CHANNELS: usize = 4;

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    config: Config,
}

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: source deploy/dev/.state/env"))
}

#[derive(Clone, Copy)]
enum Rpc {
    Issue,
    Health,
}

async fn call(rpc: Rpc, channel: Channel, bucket: &str) -> Result<(), tonic::Status> {
    match rpc {
        Rpc::Issue => {
            let mut c = LinkServiceClient::new(channel);
            let mut req = tonic::Request::new(proto::IssueLinkRequest {
                bucket: bucket.to_owned(),
                object_key: "bench/object.bin".into(),
                method: proto::Method::Get as i32,
                ttl: Some(prost_types::Duration {
                    seconds: 600,
                    nanos: 0,
                }),
                ..Default::default()
            });
            req.metadata_mut()
                .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
            c.issue_link(req).await.map(|_| ())
        }
        Rpc::Health => {
            let mut c = HealthClient::new(channel);
            c.check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|_| ())
        }
    }
}

struct Run {
    per_sec: f64,
    latencies: Vec<Duration>,
    errors: usize,
    /// Closed loops: when each answered request started, and its latency.
    timeline: Vec<(Instant, Duration)>,
    /// Open loops: how late each answered request started after it was due
    /// (the client's own stall: the tick loop's and its tasks' scheduling).
    lags: Vec<Duration>,
}

impl Run {
    /// p50, p99 and the count of the requests started in `when`.
    fn window(&self, when: impl std::ops::RangeBounds<Instant>) -> (Duration, Duration, usize) {
        let mut l: Vec<Duration> = self
            .timeline
            .iter()
            .filter(|(t, _)| when.contains(t))
            .map(|(_, l)| *l)
            .collect();
        if l.is_empty() {
            return (Duration::ZERO, Duration::ZERO, 0);
        }
        l.sort();
        (pct(&l, 0.5), pct(&l, 0.99), l.len())
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// BENCH_CLIENTS overrides the number of closed-loop clients (1 shows the
/// latency of a request alone).
/// BENCH_SECONDS: how long each loop runs (10 s by default).
fn seconds() -> u64 {
    std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

/// Resident memory of this process (server and clients) now and at its peak,
/// in MB, from /proc/self/status.
fn rss_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

fn clients() -> usize {
    std::env::var("BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CLIENTS)
}

async fn closed_loop(rpc: Rpc, channels: &[Channel], bucket: &str) -> Run {
    let deadline = Instant::now() + Duration::from_secs(seconds());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..clients() {
        let (ch, bucket) = (channels[i % channels.len()].clone(), bucket.to_owned());
        tasks.spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0);
            while Instant::now() < deadline {
                let t = Instant::now();
                match call(rpc, ch.clone(), &bucket).await {
                    Ok(()) => lat.push((t, t.elapsed())),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        });
    }
    let started = Instant::now();
    let (mut timeline, mut errors) = (Vec::new(), 0);
    while let Some(r) = tasks.join_next().await {
        let (l, e) = r.unwrap();
        timeline.extend(l);
        errors += e;
    }
    let mut latencies: Vec<Duration> = timeline.iter().map(|(_, l)| *l).collect();
    latencies.sort();
    Run {
        per_sec: latencies.len() as f64 / started.elapsed().as_secs_f64(),
        latencies,
        errors,
        timeline,
        lags: Vec::new(),
    }
}

/// Requests started at a fixed rate for `seconds()`, whatever the answers' pace.
async fn open_loop(rpc: Rpc, channels: &[Channel], bucket: &str, rate: f64) -> Run {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let results = Arc::new(std::sync::Mutex::new((Vec::new(), 0usize)));
    let mut tasks = tokio::task::JoinSet::new();
    let total = (rate * seconds() as f64) as usize;
    let started = Instant::now();
    for i in 0..total {
        tick.tick().await;
        let (ch, bucket, results) = (
            channels[i % channels.len()].clone(),
            bucket.to_owned(),
            results.clone(),
        );
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tasks.spawn(async move {
            let t = Instant::now();
            let r = call(rpc, ch, &bucket).await;
            let mut g = results.lock().unwrap();
            match r {
                Ok(()) => g.0.push((t.elapsed(), t.saturating_duration_since(due))),
                Err(_) => g.1 += 1,
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let (answered, errors) = std::mem::take(&mut *results.lock().unwrap());
    let (mut latencies, mut lags): (Vec<Duration>, Vec<Duration>) = answered.into_iter().unzip();
    latencies.sort();
    lags.sort();
    Run {
        per_sec: latencies.len() as f64 / started.elapsed().as_secs_f64(),
        latencies,
        errors,
        timeline: Vec::new(),
        lags,
    }
}

fn server_ticks(tids: &std::sync::Mutex<Vec<u32>>) -> u64 {
    tids.lock()
        .unwrap()
        .iter()
        .map(|t| cpu_ticks(&format!("/proc/self/task/{t}/stat")).unwrap_or(0))
        .sum()
}

fn postgres_ticks(pids: &[i32]) -> u64 {
    pids.iter()
        .map(|p| cpu_ticks(&format!("/proc/{p}/stat")).unwrap_or(0))
        .sum()
}

fn row(name: &str, r: &Run) {
    println!(
        "| {name} | {:.0}/s | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
        r.per_sec,
        pct(&r.latencies, 0.5).as_secs_f64() * 1e3,
        pct(&r.latencies, 0.99).as_secs_f64() * 1e3,
        pct(&r.latencies, 0.999).as_secs_f64() * 1e3,
        r.errors
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(()); // `cargo test` runs bench binaries too
    }
    // BENCH_LOG=1: the service's logging (stderr, RUST_LOG), to measure what
    // log lines cost; without it nothing is logged.
    if std::env::var("BENCH_LOG").is_ok_and(|v| v == "1") {
        presignd::telemetry::init(presignd::telemetry::LogFormat::Auto, None)?;
    }
    let admin: PgConnectOptions = env("DATABASE_URL").parse()?;
    let existing = std::env::var("BENCH_DB").ok();
    let db = existing.clone().unwrap_or_else(|| DB.to_owned());
    if existing.is_none() {
        let mut c = PgConnection::connect_with(&admin).await?;
        scratch_db::recreate(&mut c, DB).await?;
    }
    let bucket = env("PRESIGND_TEST_BUCKETS")
        .split(',')
        .next()
        .unwrap()
        .to_owned();
    let args = vec![
        "presignd".to_owned(),
        "--listen=127.0.0.1:0".into(),
        // Port 0: the metrics default (9464) may be another server's.
        "--metrics-listen=127.0.0.1:0".into(),
        format!("--callers=bench:{}", presignd::auth::hash_token(TOKEN)),
        format!(
            "--master-key={}",
            &*presignd::seal::MasterKey::generate().to_hex()
        ),
        format!("--garage-admin-url={}", env("GARAGE_ADMIN_URL")),
        format!("--garage-admin-token={}", env("GARAGE_ADMIN_TOKEN")),
        format!("--s3-endpoint={}", env("GARAGE_S3_URL")),
        format!("--s3-region={}", env("GARAGE_REGION")),
        format!("--buckets={bucket}"),
        // The bench keeps its data: on a big BENCH_DB the default 30-day
        // retention would drop millions of links mid-run (it did, last time).
        "--retention-days=0".into(),
    ];
    if existing.is_some() {
        // A server loads every active key, and this run's master key (new
        // each run) opens none of them: the dashboards bench's fake secrets,
        // or the key an earlier run of this bench provisioned (sealed under
        // that run's master key; the server would stay NOT_SERVING). Retired,
        // they sign nothing new; the server provisions its own.
        PgConnection::connect_with(&admin.clone().database(&db))
            .await?
            .execute("UPDATE signing_keys SET state = 'retired' WHERE state = 'active'")
            .await?;
    }
    let config = Wrapper::try_parse_from(args)?.config;
    // The server's own runtime, so its CPU can be told from the clients'.
    let tids = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
    let server_rt = ServerRuntime(Some({
        let tids = tids.clone();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("server") // `perf report --comms server`
            .enable_all()
            .on_thread_start(move || {
                let tid = std::fs::read_link("/proc/thread-self")
                    .ok()
                    .and_then(|p| p.file_name()?.to_str()?.parse::<u32>().ok());
                tids.lock().unwrap().extend(tid);
            })
            .build()?
    }));
    let db_options = admin.clone().database(&db);
    let app = match server_rt
        .spawn(async move { App::build_with_db(config, db_options).await })
        .await?
    {
        Ok(app) => app,
        Err(e) => return Err(e.context("the server did not start")),
    };
    let port = app.port();
    server_rt.spawn(async move {
        if let Err(e) = app.run_until_stopped().await {
            eprintln!("the server stopped: {e:#}");
        }
    });
    let mut channels = Vec::new();
    for _ in 0..CHANNELS {
        channels.push(
            Channel::from_shared(format!("http://127.0.0.1:{port}"))?
                .connect()
                .await?,
        );
    }
    // Wait for SERVING (migrations, key provisioning), saying why not every
    // 10 s (`presignd-not-ready`, what the readiness task last failed on).
    let mut health = HealthClient::new(channels[0].clone());
    let waiting = Instant::now();
    let mut said = Duration::ZERO;
    loop {
        let answer = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        if answer.get_ref().status == 1 {
            break;
        }
        if waiting.elapsed() >= said + Duration::from_secs(10) {
            said = waiting.elapsed();
            eprintln!(
                "not SERVING after {:.0?}: {}",
                said,
                answer
                    .metadata()
                    .get(presignd::health::NOT_READY_METADATA)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("(no reason given)")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Warm up connection pools and caches.
    let _ = closed_loop(Rpc::Issue, &channels, &bucket).await;

    let noop = closed_loop(Rpc::Health, &channels, &bucket).await;

    let mut bench_db = PgConnection::connect_with(&admin.clone().database(&db)).await?;
    let count = "SELECT count(*) FROM links";
    let backends: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&db)
    .fetch_all(&mut bench_db)
    .await?;
    let links_before: i64 = sqlx::query_scalar(count).fetch_one(&mut bench_db).await?;
    let (server0, pg0) = (server_ticks(&tids), postgres_ticks(&backends));
    let issue = closed_loop(Rpc::Issue, &channels, &bucket).await;
    let (server1, pg1) = (server_ticks(&tids), postgres_ticks(&backends));
    let links_after: i64 = sqlx::query_scalar(count).fetch_one(&mut bench_db).await?;
    let committed = (links_after - links_before).max(1) as f64;

    let half = open_loop(Rpc::Issue, &channels, &bucket, issue.per_sec / 2.0).await;
    let dropping = std::env::var("BENCH_DROP_PARTITION").is_ok_and(|v| v == "1");
    // Closed loops right before, during (the drop 5 s in) and right after.
    let around_drop = if dropping {
        let before = closed_loop(Rpc::Issue, &channels, &bucket).await;
        let drop = tokio::spawn(drop_oldest_partition(admin.clone().database(&db)));
        let during = closed_loop(Rpc::Issue, &channels, &bucket).await;
        let dropped = drop.await??;
        let after = closed_loop(Rpc::Issue, &channels, &bucket).await;
        Some((before, during, after, dropped))
    } else {
        None
    };
    let links: i64 = sqlx::query_scalar(count).fetch_one(&mut bench_db).await?;

    println!(
        "| load ({} clients on {CHANNELS} HTTP/2 connections, {} s) | throughput | p50 | p99 | p99.9 | errors |",
        clients(),
        seconds()
    );
    println!("|---|---|---|---|---|---|");
    row("no-op RPC (Health/Check), closed loop", &noop);
    row("IssueLink, closed loop", &issue);
    row(
        &format!(
            "IssueLink, open loop at {:.0}/s (half)",
            issue.per_sec / 2.0
        ),
        &half,
    );
    match &around_drop {
        Some((before, during, after, (_, Some((partition, rows, emptied, dropped, given_up))))) => {
            row("IssueLink, closed loop, before the drop", before);
            row(
                &format!("IssueLink, closed loop, {partition} ({rows} links) dropped 5 s in"),
                during,
            );
            row("IssueLink, closed loop, after the drop", after);
            println!();
            println!(
                "drop of {partition}: emptied in {:.1} ms, the empty table dropped in {:.1} ms{}",
                emptied.as_secs_f64() * 1e3,
                dropped.as_secs_f64() * 1e3,
                if *given_up > 0 {
                    format!(" (tries given up at the lock timeout before: {given_up})")
                } else {
                    String::new()
                }
            );
        }
        Some((before, during, after, (_, None))) => {
            row("IssueLink, closed loop, before", before);
            row("IssueLink, closed loop, no day to drop", during);
            row("IssueLink, closed loop, after", after);
            println!();
            println!("no day's partition held links that expired before today: nothing dropped");
        }
        None => {}
    }
    if let Some((_, during, _, (at, dropped))) = &around_drop {
        // Where in the loop the drop's cost falls: the requests started in
        // the second from its start (or, with nothing to drop, from the
        // moment it would have started) against the rest of the loop.
        let second = *at + Duration::from_secs(1);
        let (p50, p99, n) = during.window(*at..second);
        let (_, before_p99, before_n) = during.window(..*at);
        let (_, after_p99, after_n) = during.window(second..);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "the loop's requests started in the second from the {} ({n}): p50 {:.2} ms, p99 {:.2} ms; before it ({before_n}): p99 {:.2} ms; after it ({after_n}): p99 {:.2} ms",
            if dropped.is_some() {
                "drop's start"
            } else {
                "5 s mark"
            },
            ms(p50),
            ms(p99),
            ms(before_p99),
            ms(after_p99),
        );
    }
    println!();
    println!(
        "IssueLink / no-op throughput: {:.2}; links committed in the registry: {links}",
        issue.per_sec / noop.per_sec
    );
    if !half.lags.is_empty() {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "open loop: requests started after they were due by p50 {:.2} ms, p99 {:.2} ms, \
             p99.9 {:.2} ms, at most {:.2} ms (the client's own lag, not in its latencies)",
            ms(pct(&half.lags, 0.5)),
            ms(pct(&half.lags, 0.99)),
            ms(pct(&half.lags, 0.999)),
            ms(*half.lags.last().unwrap()),
        );
    }
    println!(
        "CPU per committed link over the IssueLink closed loop ({} links committed, {} answered OK, {} backends): server {:.1} µs, Postgres {:.1} µs",
        links_after - links_before,
        issue.latencies.len(),
        backends.len(),
        (server1 - server0) as f64 * TICK_US / committed,
        (pg1 - pg0) as f64 * TICK_US / committed,
    );
    let (rss, peak) = rss_mb();
    println!(
        "resident memory of the bench process (server and clients): {rss:.1} MB, peak {peak:.1} MB"
    );
    Ok(())
}

/// The server's runtime, shut down without waiting for its tasks when the
/// bench ends, by an error too: a runtime dropped inside another panics,
/// and the panic hid the error that ended the run.
struct ServerRuntime(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for ServerRuntime {
    type Target = tokio::runtime::Runtime;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("alive until dropped")
    }
}

impl Drop for ServerRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// 5 s from now, drops the oldest day's partition holding links as retention does
/// (emptied, then the empty table dropped); returns its name, how many links
/// it held, how long each step took (the emptying's successful try, which
/// is when the drop began) and how many tries gave up. Only a day that
/// ended before today (the partitions IssueLink writes to now are never
/// dropped): None if no such day holds links (an empty registry).
async fn drop_oldest_partition(
    db: PgConnectOptions,
) -> anyhow::Result<(Instant, Option<(String, i64, Duration, Duration, u32)>)> {
    use presignd::lifecycle::LOCK_TIMEOUT_MS;
    use presignd::registry::partitions::{self, Table};
    let mut conn = PgConnection::connect_with(&db).await?;
    let today = chrono::Utc::now().date_naive();
    let mut days: Vec<(String, chrono::NaiveDate)> = partitions::list(&mut conn, Table::Links)
        .await?
        .into_iter()
        .filter_map(|p| Table::Links.range_of(&p).map(|r| (p, r.1)))
        .filter(|(_, end)| *end <= today)
        .collect();
    days.sort_by_key(|(_, end)| *end);
    // The oldest that holds links (the dashboards bench's first day is empty).
    let mut oldest = None;
    for (day, _) in days {
        let rows: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT EXISTS (SELECT FROM {day})"
        )))
        .fetch_one(&mut conn)
        .await?;
        if rows {
            oldest = Some(day);
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let t = Instant::now();
    let Some(oldest) = oldest else {
        return Ok((t, None));
    };
    // Tried again after a lock not granted, as the maintenance loop does at
    // its next tick: a statement reading every partition (a summary, a key's
    // retirement reading its window) holds a lock the drop waits for.
    let mut given_up = 0;
    let (dropped, emptied, began) = loop {
        let attempt = Instant::now();
        match partitions::drop(
            &mut conn,
            Table::Links,
            &oldest,
            LOCK_TIMEOUT_MS,
            chrono::Utc::now(),
        )
        .await?
        {
            Some(dropped) => break (dropped, attempt.elapsed(), attempt),
            None if given_up < 10 => {
                given_up += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            None => anyhow::bail!("{oldest}: lock not granted within the timeout, 11 times"),
        }
    };
    let t = Instant::now();
    let left = partitions::drop_retired(&mut conn, Table::Links, LOCK_TIMEOUT_MS).await?;
    anyhow::ensure!(
        left == 0,
        "{oldest}: the empty table's drop did not get its lock"
    );
    Ok((
        began,
        Some((oldest, dropped.rows, emptied, t.elapsed(), given_up)),
    ))
}

//! The registry: every SQL statement presignd runs, one small function each.
//! Functions take an executor (a pool, a connection or a transaction) so callers
//! compose multi-step changes into one transaction.

pub mod audit;
pub mod blast_radius;
mod error;
pub mod key_intents;
pub mod keys;
pub mod link_queries;
pub mod link_requests;
pub mod link_summary;
pub mod links;
pub mod partitions;
pub mod reissue;
pub mod revocation_events;
pub mod revocations;
pub mod sealed;
pub mod signers;
pub mod states;
pub mod uploads;

use error::During;
pub use error::{Constraint, Error, ErrorKind};

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A pool that connects lazily: the service starts (NOT_SERVING) even while
/// Postgres is down, and a request fails fast with UNAVAILABLE instead of hanging.
/// Once `min_connections` are open (`warm`), the pool keeps that many: one
/// closed (broken, or past its lifetime) is replaced.
pub fn lazy_pool(
    options: PgConnectOptions,
    max_connections: u32,
    min_connections: u32,
    acquire_timeout: Duration,
) -> PgPool {
    released_within(PgPoolOptions::new(), RELEASE_WITHIN)
        .max_connections(max_connections)
        .min_connections(min_connections)
        .acquire_timeout(acquire_timeout)
        .connect_lazy_with(session_settings(named(options, SESSIONS)))
}

/// How long a connection handed back to the main pool may take to answer
/// (`released_within`): its statements (lookups, a key's or a revocation's
/// steps) have no statement timeout, and the longest legitimate one is well
/// under this.
const RELEASE_WITHIN: Duration = Duration::from_secs(30);

/// `options` with a bound on how long a connection handed back to the pool
/// may take to show it still answers; past it, the connection is closed
/// instead of kept. sqlx pings every connection handed back, with no bound:
/// one whose caller gave up mid-statement (a client's deadline) just as the
/// database went silent (a failover behind the same address, a network
/// black hole) would keep its place in the pool until TCP gives up, many
/// minutes later, and a few such places are a whole read pool. Bounded, the
/// place is free again within `within`, and the next request opens a
/// connection to wherever the address now leads. `within` is the pool's
/// longest legitimate statement and more: a live connection whose abandoned
/// statement is still running answers once it ends, and keeps its place
/// meanwhile, as before. (sqlx's own ping follows this one; on a live
/// connection each is a round trip.)
fn released_within(options: PgPoolOptions, within: Duration) -> PgPoolOptions {
    use sqlx::Connection;
    options.after_release(move |conn, _| {
        Box::pin(async move {
            match tokio::time::timeout(within, conn.ping()).await {
                Ok(answer) => answer.map(|()| true),
                Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "a registry connection handed back did not answer a ping within {} ms; closed",
                        within.as_millis()
                    ),
                ))),
            }
        })
    })
}

/// What presignd's sessions are called in `pg_stat_activity`
/// (application_name), unless the database URL names them: the read RPCs'
/// pool `READ_SESSIONS`, every other pool `SESSIONS`. An operator sees at a
/// glance which pool holds which connections.
pub const SESSIONS: &str = "presignd";
pub const READ_SESSIONS: &str = "presignd-read";

/// `options` with application_name `name`, unless it names one already.
fn named(options: PgConnectOptions, name: &str) -> PgConnectOptions {
    if options.get_application_name().is_some() {
        options
    } else {
        options.application_name(name)
    }
}

/// The read RPCs' pool: a few connections of their own, each statement
/// cancelled past `statement_timeout`, so dashboards cannot take the
/// connections IssueLink needs, nor hold one for long.
pub fn read_pool(
    options: PgConnectOptions,
    max_connections: u32,
    acquire_timeout: Duration,
    statement_timeout: Duration,
) -> PgPool {
    let timeout = format!("{}ms", statement_timeout.as_millis());
    // A statement ends within its timeout; its cancellation's answer then
    // comes within a round trip, well within an acquire timeout more.
    released_within(PgPoolOptions::new(), statement_timeout + acquire_timeout)
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .connect_lazy_with(
            session_settings(named(options, READ_SESSIONS))
                .options([("statement_timeout", timeout)]),
        )
}

/// The settings presignd's sessions run with. JIT off: every statement here
/// is short and index-driven, and where the planner's estimate crosses
/// `jit_above_cost` compiling costs more than it saves (a roll-up summary over
/// 10M links: 90 ms without JIT, 450 ms with; docs/BENCHMARKS.md).
pub fn session_settings(options: PgConnectOptions) -> PgConnectOptions {
    options.options([("jit", "off")])
}

/// Runs the migrations not yet applied, on a connection of their own.
///
/// sqlx's migrator takes a session advisory lock first and releases it only
/// at the end of a successful run: a run that fails on the way (a landed
/// migration changed, a migration's statement refused, a lock timeout)
/// leaves it held by its session. Back in the pool, that session would
/// make every later run wait for it for ever, the readiness task's retries
/// among them (the server unready, its reason never updated). So after a
/// failure the session's advisory locks are released and it is closed.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let mut conn = acquire(pool).await.context("running registry migrations")?;
    // `run_direct` is what `run` calls with the connection it acquired; `run`
    // itself on a `&mut PgConnection` makes this future not `Send` (sqlx's
    // "Acquire is not general enough", which `run_direct` exists to avoid).
    let run = MIGRATOR.run_direct(None, &mut *conn, false).await;
    if run.is_err() {
        // The unlock is done when its answer comes; a closed session's locks
        // end only once its backend has exited, a moment after. Whether
        // either succeeds or not, the session is not reused.
        let _ = sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut *conn)
            .await;
        let _ = conn.close().await;
    }
    run.context("running registry migrations")
}

/// One connection of `pool`, for a run of statements that must share a
/// session (a session lock).
pub async fn acquire(pool: &PgPool) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, Error> {
    pool.acquire().await.during("acquire")
}

/// Opens `connections` of `pool` before any request needs them, and hands
/// them back idle. One at a time: connections opened together share the
/// CPU, and on a loaded host each then took longer than the acquire timeout
/// (the pool gives up on it, and no connection ever opens); alone, each
/// opens in its own time. An acquisition that times out is tried again
/// until `within` has passed. All are held until the last is open, so each
/// is a connection of its own. The first error, if any (where the database
/// refuses another session, its own answer: sqlx retries "too many
/// connections" until the acquire times out, and says only that); `pool.size()`
/// says how many are open.
pub async fn warm(pool: &PgPool, connections: u32, within: Duration) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + within;
    let mut held = Vec::with_capacity(connections as usize);
    let warmed = loop {
        if held.len() >= connections as usize {
            break Ok(());
        }
        match pool.acquire().await {
            Ok(conn) => held.push(conn),
            Err(sqlx::Error::PoolTimedOut) if tokio::time::Instant::now() < deadline => {}
            Err(sqlx::Error::PoolTimedOut) => break Err(refusal(pool).await),
            Err(e) => break Err(e),
        }
    };
    give_back(pool, held).await;
    warmed.during("warm")
}

/// Why the pool could not open another connection: the database's answer to
/// one more, or the pool's timeout if it accepts it now or does not answer
/// within the acquire timeout (an unreachable host would hold a bare
/// connect for minutes).
async fn refusal(pool: &PgPool) -> sqlx::Error {
    use sqlx::Connection;
    let options = pool.connect_options();
    let one_more = sqlx::PgConnection::connect_with(&options);
    match tokio::time::timeout(pool.options().get_acquire_timeout(), one_more).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            sqlx::Error::PoolTimedOut
        }
        Ok(Err(e)) => e,
        Err(_) => sqlx::Error::PoolTimedOut,
    }
}

/// Hands `held` back and waits (up to a second) until the pool has them
/// idle. A dropped connection goes back through a task of its own (sqlx pings
/// it first), and an acquisition that finds none idle meanwhile opens a new
/// one instead: where the database admits no more sessions (fewer than
/// `--db-min-connections`), it failed after the acquire timeout, every start
/// attempt failed so, and the server never turned ready.
async fn give_back(pool: &PgPool, held: Vec<sqlx::pool::PoolConnection<sqlx::Postgres>>) {
    let back = pool.num_idle() + held.len();
    drop(held);
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while pool.num_idle() < back && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

pub async fn ping(pool: &PgPool) -> Result<(), Error> {
    sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .during("ping")
        .map(|_| ())
}

/// A transaction of the registry: multi-step changes commit atomically.
pub type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

pub async fn begin(pool: &PgPool) -> Result<Tx, Error> {
    pool.begin().await.during("begin")
}

pub async fn commit(tx: Tx) -> Result<(), Error> {
    tx.commit().await.during("commit")
}

/// A read-only transaction that sees one snapshot throughout (a plan computed
/// from several statements is consistent).
pub async fn begin_snapshot(pool: &PgPool) -> Result<Tx, Error> {
    let mut tx = begin(pool).await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await
        .during("begin_snapshot")?;
    Ok(tx)
}

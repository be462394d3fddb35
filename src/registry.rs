//! The registry: every SQL statement presignd runs, one small function each.
//! Functions take an executor (a pool, a connection or a transaction) so callers
//! compose multi-step changes into one transaction.

pub mod audit;
pub mod blast_radius;
pub mod keys;
pub mod link_queries;
pub mod link_summary;
pub mod links;
pub mod revocations;
pub mod sealed;
pub mod signers;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A pool that connects lazily: the service starts (NOT_SERVING) even while
/// Postgres is down, and a request fails fast with UNAVAILABLE instead of hanging.
pub fn lazy_pool(
    options: PgConnectOptions,
    max_connections: u32,
    acquire_timeout: Duration,
) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .connect_lazy_with(session_settings(options))
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
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .connect_lazy_with(session_settings(options).options([("statement_timeout", timeout)]))
}

/// The settings presignd's sessions run with. JIT off: every statement here
/// is short and index-driven, and where the planner's estimate crosses
/// `jit_above_cost` compiling costs more than it saves (a roll-up summary over
/// 10M links: 90 ms without JIT, 450 ms with; docs/BENCHMARKS.md).
pub fn session_settings(options: PgConnectOptions) -> PgConnectOptions {
    options.options([("jit", "off")])
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("running registry migrations")
}

pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}

/// Whether an error means "the registry cannot be reached right now" (retry
/// later, UNAVAILABLE) rather than a bug or a constraint.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    use sqlx::Error::*;
    match e {
        Io(_) | Tls(_) | PoolTimedOut | PoolClosed | WorkerCrashed => true,
        Protocol(_) => true,
        Database(db) => {
            // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections
            matches!(
                db.code().as_deref(),
                Some("57P01" | "57P02" | "57P03" | "53300")
            ) || is_conflict(e)
        }
        _ => false,
    }
}

/// Whether the statement was cancelled by `statement_timeout` (query_canceled).
pub fn is_statement_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("57014"))
}

/// Whether Postgres aborted the transaction to break a conflict with another
/// (deadlock_detected, serialization_failure): running it again may succeed.
pub fn is_conflict(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("40P01" | "40001")),
        _ => false,
    }
}

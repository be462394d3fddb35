//! The audit trail: append-only (the table refuses UPDATE and DELETE).

use super::error::{During, Error};
use crate::paging::Cursor;
use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub caller: Option<String>,
    pub peer: Option<String>,
    pub rpc: String,
    pub target: String,
    pub code: String,
    pub message: String,
    /// How many identical denied requests this row stands for (1 for every
    /// other event; see `audit::Denials`).
    pub count: i64,
}

pub async fn insert(db: impl PgExecutor<'_>, row: &AuditRow) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO audit_events (id, at, caller, peer, rpc, target, code, message, count)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(row.id)
    .bind(row.at)
    .bind(&row.caller)
    .bind(&row.peer)
    .bind(&row.rpc)
    .bind(&row.target)
    .bind(&row.code)
    .bind(&row.message)
    .bind(row.count)
    .execute(db)
    .await
    .during("audit::insert")
    .map(|_| ())
}

/// Newest first, after the keyset cursor `(at, id)`, optionally of one caller.
pub async fn list(
    db: impl PgExecutor<'_>,
    caller: Option<&str>,
    after: Option<Cursor>,
    limit: i64,
) -> Result<Vec<AuditRow>, Error> {
    sqlx::query_as(
        "SELECT id, at, caller, peer, rpc, target, code, message, count FROM audit_events
         WHERE ($1::text IS NULL OR caller = $1)
           AND ($2::timestamptz IS NULL OR (at, id) < ($2, $3))
         ORDER BY at DESC, id DESC LIMIT $4",
    )
    .bind(caller)
    .bind(after.map(|c| c.at))
    .bind(after.map(|c| c.id))
    .bind(limit)
    .fetch_all(db)
    .await
    .during("audit::list")
}

//! The blast radius of a key: its outstanding links (signed by it, not expired,
//! not yet revoked), summarized. Every query is a range scan of the
//! (key_id, expires_at) index.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

pub const TOP_N: i64 = 5;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BlastRadius {
    pub key_id: String,
    pub signer: String,
    pub outstanding_links: i64,
    pub earliest_expiry: Option<DateTime<Utc>>,
    pub latest_expiry: Option<DateTime<Utc>>,
    pub top_buckets: Vec<(String, i64)>,
    pub top_callers: Vec<(String, i64)>,
    pub per_method: Vec<(String, i64)>,
    pub sample_link_ids: Vec<Uuid>,
    pub computed_at: DateTime<Utc>,
}

const OUTSTANDING: &str = "key_id = $1 AND expires_at > $2 AND revocation_id IS NULL";

async fn counts_by(
    conn: &mut PgConnection,
    column: &str,
    key_id: &str,
    at: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {column}, count(*) FROM links WHERE {OUTSTANDING}
         GROUP BY {column} ORDER BY count(*) DESC, {column} LIMIT $3"
    )))
    .bind(key_id)
    .bind(at)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
}

/// Computes the blast radius of `key_id` as of now, in one snapshot (run it in a
/// REPEATABLE READ transaction for a consistent picture).
pub async fn compute(
    conn: &mut PgConnection,
    key_id: &str,
    signer: &str,
) -> Result<BlastRadius, sqlx::Error> {
    let at: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *conn)
        .await?;
    let (count, earliest, latest): (i64, Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*), min(expires_at), max(expires_at) FROM links WHERE {OUTSTANDING}"
        )))
        .bind(key_id)
        .bind(at)
        .fetch_one(&mut *conn)
        .await?;
    let mut radius = BlastRadius {
        key_id: key_id.to_owned(),
        signer: signer.to_owned(),
        outstanding_links: count,
        earliest_expiry: earliest,
        latest_expiry: latest,
        computed_at: at,
        ..Default::default()
    };
    if count == 0 {
        return Ok(radius);
    }
    radius.top_buckets = counts_by(conn, "bucket", key_id, at, TOP_N).await?;
    radius.top_callers = counts_by(conn, "caller", key_id, at, TOP_N).await?;
    radius.per_method = counts_by(conn, "method", key_id, at, 4).await?;
    radius.sample_link_ids = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM links WHERE {OUTSTANDING} ORDER BY expires_at DESC LIMIT $3"
    )))
    .bind(key_id)
    .bind(at)
    .bind(TOP_N)
    .fetch_all(&mut *conn)
    .await?;
    Ok(radius)
}

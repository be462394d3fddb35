//! What a revocation did to each caller: one event per (revocation, caller)
//! whose links it killed, read by WatchRevocations from a cursor (`seq`).

use super::error::{During, Error};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// Held by the transaction that writes events, to its commit: sequence
/// numbers are then handed out in commit order, so a reader that has seen
/// `seq` N never later finds a committed event below N.
const EVENTS_LOCK: (i32, i32) = (0x7074, 3);

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub seq: i64,
    pub revocation_id: Uuid,
    pub caller: String,
    pub signer: String,
    pub key_id: String,
    pub links: i64,
    pub quarantined: i64,
    pub earliest_expiry: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

/// Records, in the transaction that deactivated `key_id` for revocation
/// `revocation_id`, one event per caller whose links died with it (those
/// unexpired at the deactivation), and returns how many links died in all
/// (the revocation's `links_revoked`): one pass over the key's links.
pub async fn record_deactivation(
    conn: &mut PgConnection,
    revocation_id: Uuid,
    key_id: &str,
    quarantined: &[Uuid],
) -> Result<i64, Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(EVENTS_LOCK.0)
        .bind(EVENTS_LOCK.1)
        .execute(&mut *conn)
        .await
        .during("revocation_events::record_deactivation")?;
    sqlx::query_scalar(
        "WITH impact AS (
             SELECT l.caller, l.signer, count(*) AS links,
                    count(*) FILTER (WHERE l.id = ANY ($3)) AS quarantined,
                    min(l.expires_at) AS earliest_expiry
             FROM links l JOIN signing_keys k ON k.key_id = l.key_id
             WHERE l.key_id = $2 AND l.expires_at > k.deactivated_at
             GROUP BY l.caller, l.signer),
         recorded AS (
             INSERT INTO revocation_events (revocation_id, caller, signer, key_id, links,
                                            quarantined, earliest_expiry)
             SELECT $1, caller, signer, $2, links, quarantined, earliest_expiry FROM impact
             ON CONFLICT ON CONSTRAINT revocation_events_once_per_caller DO NOTHING)
         SELECT coalesce(sum(links), 0)::bigint FROM impact",
    )
    .bind(revocation_id)
    .bind(key_id)
    .bind(quarantined)
    .fetch_one(conn)
    .await
    .during("revocation_events::record_deactivation")
}

/// Up to `limit` events after `after_seq`, oldest first: `caller`'s, or
/// everyone's if `None`.
pub async fn after(
    db: impl PgExecutor<'_>,
    caller: Option<&str>,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<EventRow>, Error> {
    sqlx::query_as(
        "SELECT seq, revocation_id, caller, signer, key_id, links, quarantined, earliest_expiry, at
         FROM revocation_events
         WHERE seq > $2 AND ($1::text IS NULL OR caller = $1)
         ORDER BY seq LIMIT $3",
    )
    .bind(caller)
    .bind(after_seq)
    .bind(limit)
    .fetch_all(db)
    .await
    .during("revocation_events::after")
}

/// The latest sequence number (0 if none): where a watch "from now" starts.
pub async fn latest(db: impl PgExecutor<'_>) -> Result<i64, Error> {
    sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM revocation_events")
        .fetch_one(db)
        .await
        .during("revocation_events::latest")
}

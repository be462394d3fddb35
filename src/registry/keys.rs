//! Signing keys: one row per access key, its secret sealed.

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgConnection, PgExecutor};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRow {
    pub key_id: String,
    pub signer: String,
    pub state: String,
    /// nonce || ciphertext: opens only with the master key (see `seal`).
    pub sealed_secret: Vec<u8>,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "key_id, signer, state, sealed_secret, created_at";

pub async fn active_for_signer(
    db: impl PgExecutor<'_>,
    signer: &str,
) -> Result<Option<KeyRow>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM signing_keys WHERE signer = $1 AND state = 'active'"
    )))
    .bind(signer)
    .fetch_optional(db)
    .await
}

pub async fn all_active(db: impl PgExecutor<'_>) -> Result<Vec<KeyRow>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM signing_keys WHERE state = 'active' ORDER BY signer"
    )))
    .fetch_all(db)
    .await
}

/// A key provisioned for a signer that has none: it signs at once.
pub async fn insert_active(
    db: impl PgExecutor<'_>,
    key_id: &str,
    signer: &str,
    sealed_secret: &[u8],
) -> Result<(), sqlx::Error> {
    insert(db, key_id, signer, "active", sealed_secret).await
}

async fn insert(
    db: impl PgExecutor<'_>,
    key_id: &str,
    signer: &str,
    state: &str,
    sealed_secret: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO signing_keys (key_id, signer, state, sealed_secret, activated_at)
         VALUES ($1, $2, $3, $4, CASE WHEN $3 = 'active' THEN now() END)",
    )
    .bind(key_id)
    .bind(signer)
    .bind(state)
    .bind(sealed_secret)
    .execute(db)
    .await
    .map(|_| ())
}

pub async fn get(db: impl PgExecutor<'_>, key_id: &str) -> Result<Option<KeyRow>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM signing_keys WHERE key_id = $1"
    )))
    .bind(key_id)
    .fetch_optional(db)
    .await
}

/// A key a rotation created; it signs nothing until `activate`.
pub async fn insert_pending(
    db: impl PgExecutor<'_>,
    key_id: &str,
    signer: &str,
    sealed_secret: &[u8],
) -> Result<(), sqlx::Error> {
    insert(db, key_id, signer, "pending", sealed_secret).await
}

/// Takes the key's issuance lock exclusively until the end of the transaction:
/// waits for every in-flight batch of links signed by it to commit, and holds
/// new ones off until this transaction commits (see `links::lock_active_keys`).
/// Every change of a key's state runs after it.
pub async fn lock_for_state_change(
    conn: &mut PgConnection,
    key_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT pg_advisory_xact_lock({}, hashtext($1))",
        super::links::ISSUANCE_LOCK_CLASS
    )))
    .bind(key_id)
    .execute(conn)
    .await
    .map(|_| ())
}

/// active -> retired: no link signed by this key is recorded afterwards.
pub async fn retire(conn: &mut PgConnection, key_id: &str) -> Result<bool, sqlx::Error> {
    lock_for_state_change(&mut *conn, key_id).await?;
    sqlx::query("UPDATE signing_keys SET state = 'retired', retired_at = now() WHERE key_id = $1 AND state = 'active'")
        .bind(key_id)
        .execute(conn)
        .await
        .map(|r| r.rows_affected() == 1)
}

/// pending -> active.
pub async fn activate(db: impl PgExecutor<'_>, key_id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query("UPDATE signing_keys SET state = 'active', activated_at = now() WHERE key_id = $1 AND state = 'pending'")
        .bind(key_id)
        .execute(db)
        .await
        .map(|r| r.rows_affected() == 1)
}

/// Marks a key deactivated at its backend (idempotent), after its in-flight
/// links are recorded (`lock_for_state_change`).
pub async fn deactivate(
    conn: &mut PgConnection,
    key_id: &str,
    revocation_id: Option<uuid::Uuid>,
) -> Result<(), sqlx::Error> {
    lock_for_state_change(&mut *conn, key_id).await?;
    sqlx::query(
        "UPDATE signing_keys
         SET state = 'inactive', deactivated_at = coalesce(deactivated_at, now()),
             revocation_id = coalesce(revocation_id, $2)
         WHERE key_id = $1 AND state IN ('pending', 'active', 'retired')",
    )
    .bind(key_id)
    .bind(revocation_id)
    .execute(conn)
    .await
    .map(|_| ())
}

pub async fn mark_deleted(db: impl PgExecutor<'_>, key_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE signing_keys SET state = 'deleted', deleted_at = now() WHERE key_id = $1")
        .bind(key_id)
        .execute(db)
        .await
        .map(|_| ())
}

/// Retired keys none of whose links is still outstanding: safe to deactivate.
pub async fn retired_without_outstanding_links(
    db: impl PgExecutor<'_>,
) -> Result<Vec<KeyRow>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM signing_keys k
         WHERE k.state = 'retired'
           AND NOT EXISTS (SELECT 1 FROM links l WHERE l.key_id = k.key_id AND l.expires_at > now())"
    )))
    .fetch_all(db)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeySummaryRow {
    pub key_id: String,
    pub signer: String,
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub outstanding_links: i64,
    pub latest_expiry: Option<DateTime<Utc>>,
}

/// Every key (optionally of one signer) with its outstanding links, each count
/// served by the (key_id, expires_at) index.
pub async fn list_with_outstanding(
    db: impl PgExecutor<'_>,
    signer: Option<&str>,
) -> Result<Vec<KeySummaryRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT k.key_id, k.signer, k.state, k.created_at, o.n AS outstanding_links, o.latest AS latest_expiry
         FROM signing_keys k
         CROSS JOIN LATERAL (
             SELECT count(*) AS n, max(l.expires_at) AS latest FROM links l
             WHERE l.key_id = k.key_id AND l.expires_at > now() AND l.revocation_id IS NULL
               AND k.state IN ('active', 'retired')
         ) o
         WHERE $1::text IS NULL OR k.signer = $1
         ORDER BY k.signer, k.created_at DESC",
    )
    .bind(signer)
    .fetch_all(db)
    .await
}

/// Tells every replica (LISTEN presignd_keys) that a signer's keys changed;
/// delivered when the surrounding transaction commits.
pub async fn notify_changed(db: impl PgExecutor<'_>, signer: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(KEYS_CHANNEL)
        .bind(signer)
        .execute(db)
        .await
        .map(|_| ())
}

pub const KEYS_CHANNEL: &str = "presignd_keys";

/// Links of a key that still work: not expired, not revoked.
pub async fn outstanding_links(db: impl PgExecutor<'_>, key_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM links WHERE key_id = $1 AND expires_at > now() AND revocation_id IS NULL",
    )
    .bind(key_id)
    .fetch_one(db)
    .await
}

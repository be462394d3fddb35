//! Signing keys: one row per access key, its secret sealed.

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgExecutor};

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

pub async fn insert_active(
    db: impl PgExecutor<'_>,
    key_id: &str,
    signer: &str,
    sealed_secret: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO signing_keys (key_id, signer, state, sealed_secret, activated_at)
         VALUES ($1, $2, 'active', $3, now())",
    )
    .bind(key_id)
    .bind(signer)
    .bind(sealed_secret)
    .execute(db)
    .await
    .map(|_| ())
}

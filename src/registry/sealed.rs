//! Sealed secrets as a whole, for re-sealing them under a new master key.

use super::error::{During, Error};
use sqlx::PgExecutor;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SealedRow {
    pub key_id: String,
    pub sealed_secret: Vec<u8>,
}

/// Every key's sealed secret, rows locked until the transaction ends.
pub async fn all_for_update(db: impl PgExecutor<'_>) -> Result<Vec<SealedRow>, Error> {
    sqlx::query_as(
        "SELECT key_id, sealed_secret FROM signing_keys ORDER BY key_id FOR NO KEY UPDATE",
    )
    .fetch_all(db)
    .await
    .during("sealed::all_for_update")
}

/// Locks every signer: key provisioning and rotation steps take the same lock
/// (FOR NO KEY UPDATE, as `signers::lock` does, so link inserts never wait on it).
pub async fn lock_all_signers(db: impl PgExecutor<'_>) -> Result<(), Error> {
    sqlx::query("SELECT name FROM signers ORDER BY name FOR NO KEY UPDATE")
        .fetch_all(db)
        .await
        .during("sealed::lock_all_signers")
        .map(|_| ())
}

pub async fn replace(
    db: impl PgExecutor<'_>,
    key_id: &str,
    sealed_secret: &[u8],
) -> Result<(), Error> {
    sqlx::query("UPDATE signing_keys SET sealed_secret = $2 WHERE key_id = $1")
        .bind(key_id)
        .bind(sealed_secret)
        .execute(db)
        .await
        .during("sealed::replace")
        .map(|_| ())
}

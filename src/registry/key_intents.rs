//! Key intents: a backend key about to be created, recorded (and committed)
//! before the backend call, resolved in the transaction that records the key.
//! One left behind is reconciled by the key lifecycle (`crate::keys`).

use super::error::{During, Error};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyIntentRow {
    pub id: Uuid,
    pub signer: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

pub async fn insert(
    db: impl PgExecutor<'_>,
    id: Uuid,
    signer: &str,
    name: &str,
) -> Result<(), Error> {
    sqlx::query("INSERT INTO key_intents (id, signer, name) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(signer)
        .bind(name)
        .execute(db)
        .await
        .during("key_intents::insert")
        .map(|_| ())
}

/// The intent is done with: its key is recorded, or deleted at the backend.
pub async fn resolve(db: impl PgExecutor<'_>, id: Uuid) -> Result<(), Error> {
    sqlx::query("DELETE FROM key_intents WHERE id = $1")
        .bind(id)
        .execute(db)
        .await
        .during("key_intents::resolve")
        .map(|_| ())
}

/// Signers with unresolved intents.
pub async fn signers_with_unresolved(db: impl PgExecutor<'_>) -> Result<Vec<String>, Error> {
    sqlx::query_scalar("SELECT DISTINCT signer FROM key_intents ORDER BY signer")
        .fetch_all(db)
        .await
        .during("key_intents::signers_with_unresolved")
}

/// A signer's unresolved intents, oldest first. Read under the signer's row
/// lock, which every key creation of that signer holds from before its intent
/// until it commits: none of these is in progress.
pub async fn unresolved_for_signer(
    conn: &mut PgConnection,
    signer: &str,
) -> Result<Vec<KeyIntentRow>, Error> {
    sqlx::query_as(
        "SELECT id, signer, name, created_at FROM key_intents WHERE signer = $1 ORDER BY created_at",
    )
    .bind(signer)
    .fetch_all(conn)
    .await
    .during("key_intents::unresolved_for_signer")
}

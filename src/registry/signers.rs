//! Signers: the principals whose keys sign links (revocation domains).

use super::error::{During, Error};
use sqlx::PgExecutor;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SignerRow {
    pub name: String,
    pub backend: String,
    pub paused: bool,
}

pub async fn upsert(db: impl PgExecutor<'_>, name: &str, backend: &str) -> Result<(), Error> {
    sqlx::query("INSERT INTO signers (name, backend) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .bind(backend)
        .execute(db)
        .await
        .during("signers::upsert")
        .map(|_| ())
}

/// Locks the signer's row for the rest of the transaction: key provisioning and
/// rotations of one signer are serialized on it.
///
/// FOR NO KEY UPDATE, not FOR UPDATE: a multipart upload's row checks its
/// foreign key with FOR KEY SHARE on this row, under its key's issuance lock
/// (`uploads::record`), which FOR UPDATE would block. A rotation holding this
/// lock while it waits for the issuance lock of the key it retires (held
/// shared by that upload waiting on this row) would then deadlock. (Links
/// have no foreign key since 0017: `links::record` checks their key.)
pub async fn lock(db: impl PgExecutor<'_>, name: &str) -> Result<Option<SignerRow>, Error> {
    sqlx::query_as("SELECT name, backend, paused FROM signers WHERE name = $1 FOR NO KEY UPDATE")
        .bind(name)
        .fetch_optional(db)
        .await
        .during("signers::lock")
}

pub async fn list(db: impl PgExecutor<'_>) -> Result<Vec<SignerRow>, Error> {
    sqlx::query_as("SELECT name, backend, paused FROM signers ORDER BY name")
        .fetch_all(db)
        .await
        .during("signers::list")
}

/// Pauses or resumes issuance for a signer (EMERGENCY rotation).
pub async fn set_paused(db: impl PgExecutor<'_>, name: &str, paused: bool) -> Result<(), Error> {
    sqlx::query("UPDATE signers SET paused = $2 WHERE name = $1")
        .bind(name)
        .bind(paused)
        .execute(db)
        .await
        .during("signers::set_paused")
        .map(|_| ())
}

pub async fn exists(db: impl PgExecutor<'_>, name: &str) -> Result<bool, Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM signers WHERE name = $1)")
        .bind(name)
        .fetch_one(db)
        .await
        .during("signers::exists")
}

/// Signers with no active key: their IssueLink answers UNAVAILABLE.
pub async fn count_without_active_key(db: impl PgExecutor<'_>) -> Result<i64, Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM signers s
         WHERE NOT EXISTS (SELECT 1 FROM signing_keys k WHERE k.signer = s.name AND k.state = $1)",
    )
    .bind(crate::domain::KeyState::Active)
    .fetch_one(db)
    .await
    .during("signers::count_without_active_key")
}

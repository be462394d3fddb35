//! Revocations: the persisted state machine of each rotation.

use crate::paging::Cursor;
use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use sqlx::types::Json;
use uuid::Uuid;

use super::blast_radius::BlastRadius;
use super::error::{During, Error};
use crate::domain::{RevocationState, RotationMode};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct StepRecord {
    pub name: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RevocationRow {
    pub id: Uuid,
    pub signer: String,
    pub mode: RotationMode,
    pub requested_by: String,
    pub reason: String,
    pub old_key_id: Option<String>,
    pub new_key_id: Option<String>,
    pub state: RevocationState,
    pub next_step: String,
    pub blast_radius: Json<BlastRadius>,
    pub links_revoked: i64,
    pub steps: Json<Vec<StepRecord>>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The links named as leaked: killed like the others, never reissued.
    pub quarantined_link_ids: Vec<Uuid>,
}

const COLUMNS: &str =
    "id, signer, mode, requested_by, reason, old_key_id, new_key_id, state, next_step,
    blast_radius, links_revoked, steps, error, created_at, finished_at, quarantined_link_ids";

pub struct NewRevocation<'a> {
    pub id: Uuid,
    pub signer: &'a str,
    pub mode: RotationMode,
    pub requested_by: &'a str,
    pub reason: &'a str,
    pub old_key_id: Option<&'a str>,
    pub first_step: &'a str,
    pub blast_radius: &'a BlastRadius,
    pub quarantined_link_ids: &'a [Uuid],
}

pub async fn insert(db: impl PgExecutor<'_>, r: &NewRevocation<'_>) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO revocations (id, signer, mode, requested_by, reason, old_key_id, state, next_step,
                                  blast_radius, quarantined_link_ids)
         VALUES ($1, $2, $3, $4, $5, $6, $9, $7, $8, $10)",
    )
    .bind(r.id)
    .bind(r.signer)
    .bind(r.mode)
    .bind(r.requested_by)
    .bind(r.reason)
    .bind(r.old_key_id)
    .bind(r.first_step)
    .bind(Json(r.blast_radius))
    .bind(RevocationState::Running)
    .bind(r.quarantined_link_ids)
    .execute(db)
    .await.during("revocations::insert")
    .map(|_| ())
}

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<RevocationRow>, Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM revocations WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(db)
    .await
    .during("revocations::get")
}

/// Locks the revocation for one step: drivers on several replicas take turns.
pub async fn lock(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<RevocationRow>, Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM revocations WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(db)
    .await
    .during("revocations::lock")
}

pub async fn running_ids(db: impl PgExecutor<'_>) -> Result<Vec<Uuid>, Error> {
    sqlx::query_scalar("SELECT id FROM revocations WHERE state = $1 ORDER BY created_at")
        .bind(RevocationState::Running)
        .fetch_all(db)
        .await
        .during("revocations::running_ids")
}

pub async fn running_for_signer(
    db: impl PgExecutor<'_>,
    signer: &str,
) -> Result<Option<Uuid>, Error> {
    sqlx::query_scalar("SELECT id FROM revocations WHERE signer = $1 AND state = $2")
        .bind(signer)
        .bind(RevocationState::Running)
        .fetch_optional(db)
        .await
        .during("revocations::running_for_signer")
}

/// Records a finished step and moves to the next one; `finished`: that was the
/// last step, the revocation succeeded.
pub async fn advance(
    db: impl PgExecutor<'_>,
    id: Uuid,
    step: &StepRecord,
    next_step: &str,
    finished: bool,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE revocations SET steps = steps || $2, next_step = $3, error = NULL,
             state = CASE WHEN $4 THEN $5 ELSE state END,
             finished_at = CASE WHEN $4 THEN now() ELSE finished_at END
         WHERE id = $1",
    )
    .bind(id)
    .bind(Json(vec![step]))
    .bind(next_step)
    .bind(finished)
    .bind(RevocationState::Succeeded)
    .execute(db)
    .await
    .during("revocations::advance")
    .map(|_| ())
}

pub async fn set_new_key(db: impl PgExecutor<'_>, id: Uuid, key_id: &str) -> Result<(), Error> {
    sqlx::query("UPDATE revocations SET new_key_id = $2 WHERE id = $1")
        .bind(id)
        .bind(key_id)
        .execute(db)
        .await
        .during("revocations::set_new_key")
        .map(|_| ())
}

pub async fn add_revoked(db: impl PgExecutor<'_>, id: Uuid, n: i64) -> Result<(), Error> {
    sqlx::query("UPDATE revocations SET links_revoked = links_revoked + $2 WHERE id = $1")
        .bind(id)
        .bind(n)
        .execute(db)
        .await
        .during("revocations::add_revoked")
        .map(|_| ())
}

/// A step failed for good: the revocation stops here, with the failed step recorded.
pub async fn fail(db: impl PgExecutor<'_>, id: Uuid, step: &StepRecord) -> Result<(), Error> {
    finish(db, id, step, RevocationState::Failed).await
}

/// The revocation ends in `state` (failed, cancelled) with `step` recorded and
/// its error as the revocation's.
pub async fn finish(
    db: impl PgExecutor<'_>,
    id: Uuid,
    step: &StepRecord,
    state: RevocationState,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE revocations SET steps = steps || $2, state = $4, error = $3, finished_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(Json(vec![step]))
    .bind(&step.error)
    .bind(state)
    .execute(db)
    .await
    .during("revocations::finish")
    .map(|_| ())
}

/// A step failed for now (backend or registry unavailable): noted, retried later.
pub async fn note_error(db: impl PgExecutor<'_>, id: Uuid, error: &str) -> Result<(), Error> {
    sqlx::query("UPDATE revocations SET error = $2 WHERE id = $1 AND state = $3")
        .bind(id)
        .bind(error)
        .bind(RevocationState::Running)
        .execute(db)
        .await
        .during("revocations::note_error")
        .map(|_| ())
}

/// Newest first, keyset-paged by (created_at, id).
pub async fn list(
    db: impl PgExecutor<'_>,
    signer: Option<&str>,
    after: Option<Cursor>,
    limit: i64,
) -> Result<Vec<RevocationRow>, Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM revocations
         WHERE ($1::text IS NULL OR signer = $1)
           AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
         ORDER BY created_at DESC, id DESC LIMIT $4"
    )))
    .bind(signer)
    .bind(after.map(|c| c.at))
    .bind(after.map(|c| c.id))
    .bind(limit)
    .fetch_all(db)
    .await
    .during("revocations::list")
}

/// How many revocations are running, and how long the oldest has been (for the
/// state gauges).
#[derive(Debug, Clone, Copy, PartialEq, sqlx::FromRow)]
pub struct RunningSummary {
    pub count: i64,
    /// 0 when none is running.
    pub oldest_age_secs: f64,
}

pub async fn running_summary(db: impl PgExecutor<'_>) -> Result<RunningSummary, Error> {
    sqlx::query_as(
        "SELECT count(*) AS count,
                COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 AS oldest_age_secs
         FROM revocations WHERE state = $1",
    )
    .bind(RevocationState::Running)
    .fetch_one(db)
    .await
    .during("revocations::running_summary")
}

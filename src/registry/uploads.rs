//! Multipart uploads (0016): the upload row and the links of its part URLs,
//! written together; its state (open, then completed or aborted once).

use super::error::{During, Error};
use super::links::{self, NewLink};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct NewUpload {
    pub id: Uuid,
    pub upload_id: String,
    pub bucket: String,
    pub object_key: String,
    pub signer: String,
    pub key_id: String,
    pub caller: String,
    pub part_count: i32,
    pub part_size: Option<i64>,
    pub total_size: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UploadRow {
    pub id: Uuid,
    pub upload_id: String,
    pub bucket: String,
    pub object_key: String,
    pub signer: String,
    pub key_id: String,
    pub caller: String,
    pub part_count: i32,
    pub part_size: Option<i64>,
    pub total_size: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// `open`, `completed` or `aborted`.
    pub state: String,
    pub finished_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, upload_id, bucket, object_key, signer, key_id, caller, part_count, \
                       part_size, total_size, created_at, expires_at, state, finished_at";

/// Records the upload and its part links if its key is still active, in one
/// transaction under the key's issuance lock (shared), as the recorder
/// records links: a revocation that deactivates the key waits for this
/// commit and counts these links, or comes first and nothing is written
/// (false: the caller signs again with the new key).
pub async fn record(pool: &PgPool, upload: &NewUpload, parts: &[NewLink]) -> Result<bool, Error> {
    let mut tx = pool.begin().await.during("uploads::record")?;
    let recorded = insert_if_active(&mut tx, upload, parts).await?;
    if recorded {
        tx.commit().await.during("uploads::record")?;
    }
    Ok(recorded)
}

async fn insert_if_active(
    conn: &mut PgConnection,
    upload: &NewUpload,
    parts: &[NewLink],
) -> Result<bool, Error> {
    // The part links first: `record` takes the key's issuance lock, so the
    // key stays as it found it until this transaction ends.
    let refs: Vec<&NewLink> = parts.iter().collect();
    let written = links::record(&mut *conn, &[upload.key_id.as_str()], &refs).await?;
    if !written.active_keys.contains(&upload.key_id) {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO multipart_uploads (id, upload_id, bucket, object_key, signer, key_id, caller,
                                        part_count, part_size, total_size, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(upload.id)
    .bind(&upload.upload_id)
    .bind(&upload.bucket)
    .bind(&upload.object_key)
    .bind(&upload.signer)
    .bind(&upload.key_id)
    .bind(&upload.caller)
    .bind(upload.part_count)
    .bind(upload.part_size)
    .bind(upload.total_size)
    .bind(upload.created_at)
    .bind(upload.expires_at)
    .execute(&mut *conn)
    .await
    .during("uploads::insert_if_active")?;
    Ok(true)
}

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<UploadRow>, Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM multipart_uploads WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(db)
    .await
    .during("uploads::get")
}

/// The upload `id`, its row locked until the transaction ends: a Complete
/// and an Abort (the owner's, or the maintenance's) of one upload go one
/// after the other, each seeing what the other left. `skip_locked`: none if
/// another holds it (the maintenance does not wait on an owner's call).
pub async fn lock(
    conn: &mut PgConnection,
    id: Uuid,
    skip_locked: bool,
) -> Result<Option<UploadRow>, Error> {
    let skip = if skip_locked { " SKIP LOCKED" } else { "" };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM multipart_uploads WHERE id = $1 FOR UPDATE{skip}"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
    .during("uploads::lock")
}

/// Marks an open upload `completed` or `aborted` by `by`; false if it was no
/// longer open (another call finished it first).
pub async fn finish(
    db: impl PgExecutor<'_>,
    id: Uuid,
    state: &'static str,
    by: &str,
) -> Result<bool, Error> {
    sqlx::query(
        "UPDATE multipart_uploads SET state = $2, finished_at = now(), finished_by = $3
         WHERE id = $1 AND state = 'open'",
    )
    .bind(id)
    .bind(state)
    .bind(by)
    .execute(db)
    .await
    .during("uploads::finish")
    .map(|r| r.rows_affected() == 1)
}

/// Open uploads whose part URLs expired at `now`, oldest first (by expiry,
/// then id), after `after` (the last row of the page before), at most `limit`.
pub async fn expired_open(
    db: impl PgExecutor<'_>,
    now: DateTime<Utc>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<UploadRow>, Error> {
    let (after_expiry, after_id) = after.unzip();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM multipart_uploads
         WHERE state = 'open' AND expires_at <= $1
           AND ($3::timestamptz IS NULL OR (expires_at, id) > ($3, $4))
         ORDER BY expires_at, id LIMIT $2"
    )))
    .bind(now)
    .bind(limit)
    .bind(after_expiry)
    .bind(after_id)
    .fetch_all(db)
    .await
    .during("uploads::expired_open")
}

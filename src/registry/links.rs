//! Links: one row per issued URL. The URL itself is never stored; the SHA-256 of
//! its signature finds it again.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, PgExecutor};
use std::collections::BTreeMap;
use uuid::Uuid;

pub use super::blast_radius::{BlastRadius, blast_radius};

#[derive(Debug, Clone)]
pub struct NewLink<'a> {
    pub id: Uuid,
    pub key_id: &'a str,
    pub signer: &'a str,
    pub caller: &'a str,
    pub method: &'a str,
    pub bucket: &'a str,
    pub object_key: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub signature_sha256: &'a [u8],
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LinkRow {
    pub id: Uuid,
    pub key_id: String,
    pub signer: String,
    pub caller: String,
    pub method: String,
    pub bucket: String,
    pub object_key: String,
    pub labels: Json<BTreeMap<String, String>>,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revocation_id: Option<Uuid>,
    /// Derived: 'revoked', 'expired' or 'active' (see `STATE_SQL`).
    pub state: String,
}

impl LinkRow {
    /// The row as `insert_if_key_active` just wrote it (its key is active).
    pub fn just_issued(link: &NewLink<'_>) -> Self {
        Self {
            id: link.id,
            key_id: link.key_id.to_owned(),
            signer: link.signer.to_owned(),
            caller: link.caller.to_owned(),
            method: link.method.to_owned(),
            bucket: link.bucket.to_owned(),
            object_key: link.object_key.to_owned(),
            labels: Json(link.labels.clone()),
            issued_at: link.issued_at,
            expires_at: link.expires_at,
            revocation_id: None,
            state: "active".to_owned(),
        }
    }
}

/// A link's state, derived at read time so it can never disagree with its key:
/// a link whose key is inactive or deleted is revoked, whatever its expiry.
pub const STATE_SQL: &str = "CASE
    WHEN k.state IN ('inactive', 'deleted') OR l.revocation_id IS NOT NULL THEN 'revoked'
    WHEN l.expires_at <= now() THEN 'expired'
    ELSE 'active' END";

/// The revocation that killed a link: the one that deactivated its key while
/// the link was still unexpired.
pub const REVOCATION_SQL: &str =
    "coalesce(l.revocation_id, CASE WHEN l.expires_at > k.deactivated_at THEN k.revocation_id END)";

pub(super) fn select_sql(filter: &str) -> String {
    format!(
        "SELECT l.id, l.key_id, l.signer, l.caller, l.method, l.bucket, l.object_key, l.labels,
                l.issued_at, l.expires_at, {REVOCATION_SQL} AS revocation_id, {STATE_SQL} AS state
         FROM links l JOIN signing_keys k ON k.key_id = l.key_id
         {filter}"
    )
}

/// Records a link, but only while its key is still active. The key row is locked
/// FOR SHARE for the statement, so a revocation (which updates the key row)
/// waits for in-flight inserts and then sees all of them: its count is exact.
/// Returns false if the key is no longer active (nothing was inserted).
pub async fn insert_if_key_active(
    db: impl PgExecutor<'_>,
    link: &NewLink<'_>,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key, labels,
                            issued_at, expires_at, signature_sha256)
         SELECT $1, k.key_id, $3, $4, $5, $6, $7, $8, $9, $10, $11
         FROM signing_keys k
         WHERE k.key_id = $2 AND k.state = 'active'
         FOR SHARE",
    )
    .bind(link.id)
    .bind(link.key_id)
    .bind(link.signer)
    .bind(link.caller)
    .bind(link.method)
    .bind(link.bucket)
    .bind(link.object_key)
    .bind(Json(link.labels))
    .bind(link.issued_at)
    .bind(link.expires_at)
    .bind(link.signature_sha256)
    .execute(db)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<LinkRow>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(select_sql("WHERE l.id = $1")))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// The earliest link recorded with this signature hash: identical requests signed
/// in the same second share one URL, so the hash is not unique.
pub async fn find_by_signature(
    db: impl PgExecutor<'_>,
    signature_sha256: &[u8],
) -> Result<Option<LinkRow>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(select_sql(
        "WHERE l.signature_sha256 = $1 ORDER BY l.issued_at, l.id LIMIT 1",
    )))
    .bind(signature_sha256)
    .fetch_optional(db)
    .await
}

/// How many links a deactivation revoked: those of the key still unexpired when
/// it was deactivated. Nothing is written per link (a key with a million links
/// is revoked in one row update); reads derive each link's revocation from its
/// key (see `STATE_SQL` and `REVOCATION_SQL`). Run in the transaction that
/// deactivated the key: its row lock has made in-flight inserts finish first.
pub async fn count_revoked_by_deactivation(
    db: impl PgExecutor<'_>,
    key_id: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM links l JOIN signing_keys k ON k.key_id = l.key_id
         WHERE l.key_id = $1 AND l.expires_at > k.deactivated_at",
    )
    .bind(key_id)
    .fetch_one(db)
    .await
}

//! ReissueLinks' statements: the links a revocation killed and their
//! replacements (one per link, enforced by `links_one_replacement`). A
//! replacement is inserted as every link is (`links::record`).

use super::error::{During, Error};
use super::links::{LinkRow, select_sql};
use crate::paging::Cursor;
use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgExecutor};
use uuid::Uuid;

/// Up to `limit` links of `caller` (every caller's if `None`) that revocation
/// `revocation_id` killed by deactivating `key_id` and that have not expired,
/// newest first (`issued_at DESC, id DESC`) after `after`: a range of
/// `links_by_key_issued`.
pub async fn killed_by(
    db: impl PgExecutor<'_>,
    revocation_id: Uuid,
    key_id: &str,
    caller: Option<&str>,
    after: Option<Cursor>,
    limit: i64,
) -> Result<Vec<LinkRow>, Error> {
    sqlx::query_as(AssertSqlSafe(select_sql(
        "WHERE l.key_id = $1 AND k.revocation_id = $2 AND l.expires_at > k.deactivated_at
           AND l.expires_at > now()
           AND ($3::text IS NULL OR l.caller = $3)
           AND ($4::timestamptz IS NULL OR (l.issued_at, l.id) < ($4, $5))
         ORDER BY l.issued_at DESC, l.id DESC LIMIT $6",
    )))
    .bind(key_id)
    .bind(revocation_id)
    .bind(caller)
    .bind(after.map(|c| c.at))
    .bind(after.map(|c| c.id))
    .bind(limit)
    .fetch_all(db)
    .await
    .during("reissue::killed_by")
}

/// The replacements of the links `originals` (id, expires_at): the expiry
/// they share with their original prunes to its partition.
pub async fn replacements_of(
    db: impl PgExecutor<'_>,
    originals: &[(Uuid, DateTime<Utc>)],
) -> Result<Vec<LinkRow>, Error> {
    sqlx::query_as(AssertSqlSafe(select_sql(
        "WHERE (l.replaces_link_id, l.expires_at) IN
               (SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[]))",
    )))
    .bind(originals.iter().map(|o| o.0).collect::<Vec<_>>())
    .bind(originals.iter().map(|o| o.1).collect::<Vec<_>>())
    .fetch_all(db)
    .await
    .during("reissue::replacements_of")
}

/// Whether revocation `revocation_id` killed links by deactivating `key_id`
/// (the key is dead, and this revocation did it).
pub async fn key_killed_by(
    db: impl PgExecutor<'_>,
    revocation_id: Uuid,
    key_id: &str,
) -> Result<bool, Error> {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT EXISTS (SELECT 1 FROM signing_keys k
                        WHERE k.key_id = $1 AND k.revocation_id = $2 AND {})",
        super::states::KEY_DEAD
    )))
    .bind(key_id)
    .bind(revocation_id)
    .fetch_one(db)
    .await
    .during("reissue::key_killed_by")
}

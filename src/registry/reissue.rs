//! ReissueLinks' statements: the links a revocation killed, their
//! replacements (one per link, enforced by `links_one_replacement`), and the
//! insert that makes one.

use super::error::{During, Error};
use super::links::{ISSUANCE_LOCK_CLASS, LinkRow, NewLink, select_sql};
use crate::domain::KeyState;
use crate::paging::Cursor;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, PgConnection, PgExecutor};
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

/// Inserts the replacements whose key is still active, under the keys'
/// issuance locks (shared), as `links::insert_batch_if_active` does; a link
/// that has a replacement already keeps it (nothing is inserted for it).
/// `key_ids`: the replacements' keys, sorted and without duplicates.
pub async fn insert_replacements(
    conn: &mut PgConnection,
    key_ids: &[&str],
    links: &[NewLink],
) -> Result<(), Error> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT pg_advisory_xact_lock_shared({ISSUANCE_LOCK_CLASS}, hashtext(k))
         FROM unnest($1::text[]) k"
    )))
    .bind(key_ids)
    .execute(&mut *conn)
    .await
    .during("reissue::insert_replacements")?;
    let col = |f: fn(&NewLink) -> String| links.iter().map(f).collect::<Vec<_>>();
    let opt = |f: fn(&NewLink) -> Option<String>| links.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key, labels,
                            issued_at, expires_at, signature_sha256, content_type,
                            content_disposition, replaces_link_id)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::text[], $7::text[], $8::jsonb[], $9::timestamptz[],
                              $10::timestamptz[], $11::bytea[], $12::text[], $13::text[],
                              $14::uuid[])
             AS u (id, key_id, signer, caller, method, bucket, object_key, labels,
                   issued_at, expires_at, signature_sha256, content_type,
                   content_disposition, replaces_link_id)
         WHERE u.key_id IN (SELECT key_id FROM signing_keys
                            WHERE key_id = ANY ($15) AND state = $16)
         ON CONFLICT (replaces_link_id, expires_at) WHERE replaces_link_id IS NOT NULL
         DO NOTHING",
    )
    .bind(links.iter().map(|l| l.id).collect::<Vec<_>>())
    .bind(col(|l| l.key_id.clone()))
    .bind(col(|l| l.signer.clone()))
    .bind(col(|l| l.caller.clone()))
    .bind(col(|l| l.method.to_owned()))
    .bind(col(|l| l.bucket.clone()))
    .bind(col(|l| l.object_key.clone()))
    .bind(links.iter().map(|l| Json(&l.labels)).collect::<Vec<_>>())
    .bind(links.iter().map(|l| l.issued_at).collect::<Vec<_>>())
    .bind(links.iter().map(|l| l.expires_at).collect::<Vec<_>>())
    .bind(
        links
            .iter()
            .map(|l| l.signature_sha256.clone())
            .collect::<Vec<_>>(),
    )
    .bind(opt(|l| l.content_type.clone()))
    .bind(opt(|l| l.content_disposition.clone()))
    .bind(links.iter().map(|l| l.replaces_link_id).collect::<Vec<_>>())
    .bind(key_ids)
    .bind(KeyState::Active)
    .execute(conn)
    .await
    .during("reissue::insert_replacements")
    .map(|_| ())
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

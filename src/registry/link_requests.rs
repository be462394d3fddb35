//! IssueLink's request ids (safe retries, migration 0013): which link a
//! caller's `request_id` issued, while that link lives. No URL and no
//! signature: the link's id and expiry, and the SHA-256 of the request.

use super::error::{During, Error};
use super::links::{LinkRow, NewLink, columns};
use crate::domain::KeyState;
use sqlx::{AssertSqlSafe, PgConnection, PgExecutor};
use uuid::Uuid;

/// What `claim` did.
#[derive(Debug, Default)]
pub struct Claimed {
    /// The batch's keys that are active (under the issuance locks: they stay so
    /// until the transaction ends).
    pub active_keys: Vec<String>,
    /// The links whose request id was free (never used, or its link expired)
    /// and now names them.
    pub link_ids: Vec<Uuid>,
}

/// Records, for each link of `links` whose key is active, that its caller's
/// request id names it, unless the id already names a link that has not
/// expired (then nothing is written for it, and its link must not be inserted:
/// the caller gets the existing one). An id whose link expired is taken over.
/// Run in the group commit's transaction after `links::lock_keys_for_issuance`
/// and before `links::insert_batch_if_active`, which inserts the claimed links.
///
/// A concurrent transaction claiming the same id makes this one wait for it
/// (the primary key), then see its row: exactly one link per live id, and no
/// error, so a batch never fails because one request of it was a retry. Ids
/// are claimed in one order (byte order of caller, id) so two batches never
/// deadlock. `links`: those with a request, at most one per (caller, id).
pub async fn claim(
    conn: &mut PgConnection,
    key_ids: &[&str],
    links: &[&NewLink],
) -> Result<Claimed, Error> {
    let requested: Vec<(&NewLink, &super::links::LinkRequest)> = links
        .iter()
        .filter_map(|l| l.request.as_ref().map(|r| (*l, r)))
        .collect();
    let (active_keys, link_ids) = sqlx::query_as(
        r#"WITH active AS (
             SELECT key_id FROM signing_keys WHERE key_id = ANY ($7) AND state = $8),
           claimed AS (
             INSERT INTO link_requests (caller, request_id, link_id, expires_at, request_sha256)
             SELECT u.caller, u.request_id, u.link_id, u.expires_at, u.request_sha256
             FROM UNNEST($1::text[], $2::text[], $3::uuid[], $4::timestamptz[], $5::bytea[],
                         $6::text[])
                  AS u (caller, request_id, link_id, expires_at, request_sha256, key_id)
             WHERE u.key_id IN (SELECT key_id FROM active)
             ORDER BY u.caller COLLATE "C", u.request_id COLLATE "C"
             ON CONFLICT (caller, request_id) DO UPDATE
                 SET link_id = EXCLUDED.link_id, expires_at = EXCLUDED.expires_at,
                     request_sha256 = EXCLUDED.request_sha256
                 WHERE link_requests.expires_at <= now()
             RETURNING link_id)
         SELECT ARRAY(SELECT key_id FROM active), ARRAY(SELECT link_id FROM claimed)"#,
    )
    .bind(
        requested
            .iter()
            .map(|(l, _)| l.caller.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        requested
            .iter()
            .map(|(_, r)| r.id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(requested.iter().map(|(l, _)| l.id).collect::<Vec<_>>())
    .bind(
        requested
            .iter()
            .map(|(l, _)| l.expires_at)
            .collect::<Vec<_>>(),
    )
    .bind(
        requested
            .iter()
            .map(|(_, r)| r.sha256.to_vec())
            .collect::<Vec<_>>(),
    )
    .bind(
        requested
            .iter()
            .map(|(l, _)| l.key_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(key_ids)
    .bind(KeyState::Active)
    .fetch_one(conn)
    .await
    .during("link_requests::claim")?;
    Ok(Claimed {
        active_keys,
        link_ids,
    })
}

/// The live link a caller's request id names, with what a retry is checked
/// against: the digest of the request that issued it, and its signature's
/// SHA-256.
#[derive(Debug, sqlx::FromRow)]
pub struct RequestedLink {
    #[sqlx(flatten)]
    pub link: LinkRow,
    pub request_sha256: Vec<u8>,
    pub signature_sha256: Vec<u8>,
}

/// The link `request_id` names for `caller`, unless it expired (an expired
/// link frees its id). Found by the link's primary key (id, expires_at): one
/// partition.
pub async fn find(
    db: impl PgExecutor<'_>,
    caller: &str,
    request_id: &str,
) -> Result<Option<RequestedLink>, Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {}, r.request_sha256, l.signature_sha256
         FROM link_requests r
         JOIN links l ON l.id = r.link_id AND l.expires_at = r.expires_at
         JOIN signing_keys k ON k.key_id = l.key_id
         WHERE r.caller = $1 AND r.request_id = $2 AND r.expires_at > now()",
        columns()
    )))
    .bind(caller)
    .bind(request_id)
    .fetch_optional(db)
    .await
    .during("link_requests::find")
}

/// Forgets the request ids whose link expired (they bind nothing any more);
/// returns how many. The maintenance loop's, every tick. The registry's clock,
/// the one `claim` and `find` judge expiry by: an id is never forgotten while
/// they still consider its link live.
pub async fn delete_expired(db: impl PgExecutor<'_>) -> Result<u64, Error> {
    sqlx::query("DELETE FROM link_requests WHERE expires_at <= now()")
        .execute(db)
        .await
        .during("link_requests::delete_expired")
        .map(|r| r.rows_affected())
}

//! IssueLink's request ids (safe retries, migration 0013): which link a
//! caller's `request_id` issued, while that link lives. No URL and no
//! signature: the link's id and expiry, and the SHA-256 of the request.
//! A link claims its id as it is recorded (`links::record`).

use super::error::{During, Error};
use super::links::{LinkRow, columns};
use sqlx::{AssertSqlSafe, PgExecutor};

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
/// the one the claim (`links::record`) and `find` judge expiry by: an id is never forgotten while
/// they still consider its link live.
pub async fn delete_expired(db: impl PgExecutor<'_>) -> Result<u64, Error> {
    sqlx::query("DELETE FROM link_requests WHERE expires_at <= now()")
        .execute(db)
        .await
        .during("link_requests::delete_expired")
        .map(|r| r.rows_affected())
}

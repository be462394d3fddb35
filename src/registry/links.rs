//! Links: one row per issued URL. The URL itself is never stored; the SHA-256 of
//! its signature finds it again.

use super::error::{During, Error};
use super::states::key_dead;
use crate::domain::{KeyState, LinkState};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, PgConnection, PgExecutor};
use std::collections::BTreeMap;
use uuid::Uuid;

pub use super::blast_radius::{BlastRadius, blast_radius};

#[derive(Debug, Clone)]
pub struct NewLink {
    pub id: Uuid,
    pub key_id: String,
    pub signer: String,
    pub caller: String,
    pub method: &'static str,
    pub bucket: String,
    pub object_key: String,
    /// An upload form for every key starting with `object_key` (POST only).
    pub object_key_is_prefix: bool,
    pub labels: BTreeMap<String, String>,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub signature_sha256: Vec<u8>,
    /// PUT: the Content-Type the upload must carry (signed).
    pub content_type: Option<String>,
    /// GET: the response-content-disposition S3 returns (signed).
    pub content_disposition: Option<String>,
    /// ReissueLinks: the link this one replaces.
    pub replaces_link_id: Option<Uuid>,
    /// The caller's request id and the digest of its request, if it sent one
    /// (`link_requests::claim` records them with the link).
    pub request: Option<LinkRequest>,
}

/// What `link_requests` keeps of a request that named an id.
#[derive(Debug, Clone)]
pub struct LinkRequest {
    pub id: String,
    /// SHA-256 of the canonical request (`issuance::request_digest`).
    pub sha256: [u8; 32],
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
    /// An upload form for every key starting with `object_key`.
    pub object_key_is_prefix: bool,
    pub labels: Json<BTreeMap<String, String>>,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revocation_id: Option<Uuid>,
    /// Derived (see `STATE_SQL`).
    pub state: LinkState,
    pub content_type: Option<String>,
    pub content_disposition: Option<String>,
    /// False for links recorded before 0012, whose bound headers are unknown.
    pub headers_recorded: bool,
    pub replaces_link_id: Option<Uuid>,
}

impl LinkRow {
    /// The row as `insert_batch_if_active` just wrote it (its key is active).
    pub fn just_issued(link: NewLink) -> Self {
        Self {
            id: link.id,
            key_id: link.key_id,
            signer: link.signer,
            caller: link.caller,
            method: link.method.to_owned(),
            bucket: link.bucket,
            object_key: link.object_key,
            object_key_is_prefix: link.object_key_is_prefix,
            labels: Json(link.labels),
            issued_at: link.issued_at,
            expires_at: link.expires_at,
            revocation_id: None,
            state: LinkState::Active,
            content_type: link.content_type,
            content_disposition: link.content_disposition,
            headers_recorded: true,
            replaces_link_id: link.replaces_link_id,
        }
    }
}

/// A link's state, derived at read time so it can never disagree with its key:
/// a link whose key is inactive or deleted is revoked, whatever its expiry.
pub const STATE_SQL: &str = concat!(
    "CASE
    WHEN ",
    key_dead!(),
    " OR l.revocation_id IS NOT NULL THEN 'revoked'
    WHEN l.expires_at <= now() THEN 'expired'
    ELSE 'active' END"
);

/// The revocation that killed a link: the one that deactivated its key while
/// the link was still unexpired.
pub const REVOCATION_SQL: &str =
    "coalesce(l.revocation_id, CASE WHEN l.expires_at > k.deactivated_at THEN k.revocation_id END)";

/// The columns of a `LinkRow`, from `links l JOIN signing_keys k`.
pub(super) fn columns() -> String {
    format!(
        "l.id, l.key_id, l.signer, l.caller, l.method, l.bucket, l.object_key, l.labels,
         l.issued_at, l.expires_at, {REVOCATION_SQL} AS revocation_id, {STATE_SQL} AS state,
         l.content_type, l.content_disposition, l.headers_recorded, l.replaces_link_id,
         l.object_key_is_prefix"
    )
}

pub(super) fn select_sql(filter: &str) -> String {
    format!(
        "SELECT {} FROM links l JOIN signing_keys k ON k.key_id = l.key_id {filter}",
        columns()
    )
}

/// Takes a batch's keys' issuance locks in shared mode until the end of the
/// transaction: the first statement of a group commit. A key's state changes
/// only under the same lock in exclusive mode (`keys::lock_for_state_change`),
/// which waits for every transaction holding it shared: a revocation then sees
/// every link inserted under it, and no link of that key is inserted after it
/// (its count is exact). Advisory locks live in the lock manager: unlike FOR
/// SHARE row locks, thousands of concurrent holders cost no MultiXact churn on
/// the key row. `key_ids`: the batch's keys, sorted and without duplicates
/// (lock order).
pub async fn lock_keys_for_issuance(
    conn: &mut PgConnection,
    key_ids: &[&str],
) -> Result<(), Error> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT pg_advisory_xact_lock_shared({ISSUANCE_LOCK_CLASS}, hashtext(k))
         FROM unnest($1::text[]) k"
    )))
    .bind(key_ids)
    .execute(conn)
    .await
    .during("links::lock_keys_for_issuance")
    .map(|_| ())
}

/// Inserts, in one statement, the links whose key is still active, and
/// returns those keys. Run after `lock_keys_for_issuance` in the same
/// transaction (so no key changes state until it commits); a new statement,
/// so a new snapshot: the key states it reads include any change committed
/// before the locks were granted.
pub async fn insert_batch_if_active(
    conn: &mut PgConnection,
    key_ids: &[&str],
    links: &[&NewLink],
) -> Result<Vec<String>, Error> {
    let col = |f: fn(&NewLink) -> String| links.iter().map(|l| f(l)).collect::<Vec<_>>();
    sqlx::query_scalar(
        "WITH inserted AS (
             INSERT INTO links (id, key_id, signer, caller, method, bucket, object_key, labels,
                                issued_at, expires_at, signature_sha256, content_type,
                                content_disposition, object_key_is_prefix)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::text[], $8::jsonb[], $9::timestamptz[],
                                  $10::timestamptz[], $11::bytea[], $14::text[], $15::text[],
                                  $16::bool[])
                 AS u (id, key_id, signer, caller, method, bucket, object_key, labels,
                       issued_at, expires_at, signature_sha256, content_type,
                       content_disposition, object_key_is_prefix)
             WHERE u.key_id IN (SELECT key_id FROM signing_keys
                                WHERE key_id = ANY ($12) AND state = $13)
             RETURNING key_id)
         SELECT DISTINCT key_id FROM inserted",
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
    .bind(key_ids)
    .bind(KeyState::Active)
    .bind(
        links
            .iter()
            .map(|l| l.content_type.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        links
            .iter()
            .map(|l| l.content_disposition.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        links
            .iter()
            .map(|l| l.object_key_is_prefix)
            .collect::<Vec<_>>(),
    )
    .fetch_all(conn)
    .await
    .during("links::insert_batch_if_active")
}

/// The advisory lock class of a key's issuance lock ("ps").
pub const ISSUANCE_LOCK_CLASS: i32 = 0x7073;

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<LinkRow>, Error> {
    sqlx::query_as(AssertSqlSafe(select_sql("WHERE l.id = $1")))
        .bind(id)
        .fetch_optional(db)
        .await
        .during("links::get")
}

/// The earliest link recorded with this signature hash and signed at
/// `signed_at` (the URL's X-Amz-Date, which is its link's issued_at):
/// identical requests signed in the same second share one URL, so the hash is
/// not unique. The signing time bounds expires_at to the 7 days after it, so
/// only the partitions of those days are searched.
pub async fn find_by_signature(
    db: impl PgExecutor<'_>,
    signature_sha256: &[u8],
    signed_at: DateTime<Utc>,
) -> Result<Option<LinkRow>, Error> {
    sqlx::query_as(AssertSqlSafe(select_sql(
        "WHERE l.signature_sha256 = $1 AND l.issued_at = $2
           AND l.expires_at > $2 AND l.expires_at <= $2 + interval '7 days'
         ORDER BY l.issued_at, l.id LIMIT 1",
    )))
    .bind(signature_sha256)
    .bind(signed_at)
    .fetch_optional(db)
    .await
    .during("links::find_by_signature")
}

/// The links `key_id` signed at `issued_at` (a second): VerifyLink's way back
/// to the link of a URL whose signature was altered, checked by the caller
/// against the URL's bucket and key.
pub async fn find_by_key_and_time(
    db: impl PgExecutor<'_>,
    key_id: &str,
    issued_at: DateTime<Utc>,
) -> Result<Vec<LinkRow>, Error> {
    sqlx::query_as(AssertSqlSafe(select_sql(
        // A link lives at most 7 days: the expiry range keeps the scan to the
        // partitions that can hold it.
        "WHERE l.key_id = $1 AND l.issued_at = $2
           AND l.expires_at > $2 AND l.expires_at <= $2 + interval '7 days'
         ORDER BY l.id LIMIT 100",
    )))
    .bind(key_id)
    .bind(issued_at)
    .fetch_all(db)
    .await
    .during("links::find_by_key_and_time")
}

/// Which of `ids` are links signed by `key_id` (RotateKey's and RevokeKey's
/// `quarantine_link_ids` must be).
pub async fn signed_by(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
    key_id: &str,
) -> Result<Vec<Uuid>, Error> {
    sqlx::query_scalar("SELECT id FROM links WHERE id = ANY ($1) AND key_id = $2")
        .bind(ids)
        .bind(key_id)
        .fetch_all(db)
        .await
        .during("links::signed_by")
}

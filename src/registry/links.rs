//! Links: one row per issued URL. The URL itself is never stored; the SHA-256 of
//! its signature finds it again.

use super::error::{During, Error};
use super::states::key_dead;
use crate::domain::{KeyState, LinkState};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, PgExecutor};
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
    /// (`record` claims the id for the link).
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
    /// The row as `record` just wrote it (its key is active).
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

/// What `record` wrote.
#[derive(Debug, Default)]
pub struct Written {
    /// The batch's keys that are active: their links were inserted (those of
    /// any other key were not), and under their issuance locks they stay
    /// active until the transaction ends.
    pub active_keys: Vec<String>,
    /// The links whose caller's request id was free (never used, or its link
    /// expired) and now names them; a link with a request id that is not
    /// here was not inserted (the id names another live link).
    pub claimed: Vec<Uuid>,
}

/// Records a batch of links in one statement (`links_record`, migration
/// 0017): takes the batch's keys' issuance locks in shared mode until the end
/// of the transaction, claims the request ids of the rows that carry one
/// (`link_requests`), and inserts the rows whose key is active and whose id,
/// if any, was claimed. IssueLink's group commit, ReissueLinks' replacements
/// and a multipart upload's part links alike.
///
/// Called outside a transaction it is one (a round trip, one commit at its
/// end): it returns once PostgreSQL answered ReadyForQuery, which it sends
/// after that commit (sqlx reads a statement's answer to the end, errors
/// after the row included), so a row it reports written is committed.
/// Inside a transaction, the locks are held to its commit. A key's state changes
/// only under the same lock in exclusive mode (`keys::lock_for_state_change`),
/// which waits for every transaction holding it shared: a revocation sees
/// every link inserted under it, and no link of that key is inserted after it
/// (its count is exact). Advisory locks live in the lock manager: unlike FOR
/// SHARE row locks, thousands of concurrent holders cost no MultiXact churn on
/// the key row. `key_ids`: the batch's keys, sorted and without duplicates
/// (lock order).
///
/// Request ids are claimed in one order (byte order of caller, id), so two
/// batches never deadlock; a concurrent transaction claiming the same id makes
/// this one wait for it and then see its row, so a batch never fails because
/// one request of it was a retry. The first row of a (caller, id) in `links`
/// claims it; its duplicates are not inserted.
///
/// A replacement (`replaces_link_id`) whose original has one already is not
/// inserted (`links_one_replacement`). Only a batch holding replacements runs
/// the insert with ON CONFLICT: a speculative insertion costs every row an
/// extra WAL record and about a third more WAL bytes (docs/BENCHMARKS.md),
/// which IssueLink's links, that replace nothing, need not pay.
pub async fn record(
    db: impl PgExecutor<'_>,
    key_ids: &[&str],
    links: &[&NewLink],
) -> Result<Written, Error> {
    let col = |f: fn(&NewLink) -> &str| links.iter().map(|l| f(l)).collect::<Vec<_>>();
    let opt = |f: fn(&NewLink) -> Option<&str>| links.iter().map(|l| f(l)).collect::<Vec<_>>();
    let (active_keys, claimed) = sqlx::query_as(
        "SELECT active_keys, claimed FROM links_record(
             $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)",
    )
    .bind(key_ids)
    .bind(KeyState::Active)
    .bind(links.iter().map(|l| l.id).collect::<Vec<_>>())
    .bind(col(|l| &l.key_id))
    .bind(col(|l| &l.signer))
    .bind(col(|l| &l.caller))
    .bind(col(|l| l.method))
    .bind(col(|l| &l.bucket))
    .bind(col(|l| &l.object_key))
    .bind(links.iter().map(|l| Json(&l.labels)).collect::<Vec<_>>())
    .bind(links.iter().map(|l| l.issued_at).collect::<Vec<_>>())
    .bind(links.iter().map(|l| l.expires_at).collect::<Vec<_>>())
    .bind(
        links
            .iter()
            .map(|l| l.signature_sha256.as_slice())
            .collect::<Vec<_>>(),
    )
    .bind(opt(|l| l.content_type.as_deref()))
    .bind(opt(|l| l.content_disposition.as_deref()))
    .bind(links.iter().map(|l| l.replaces_link_id).collect::<Vec<_>>())
    .bind(
        links
            .iter()
            .map(|l| l.object_key_is_prefix)
            .collect::<Vec<_>>(),
    )
    .bind(opt(|l| l.request.as_ref().map(|r| r.id.as_str())))
    .bind(
        links
            .iter()
            .map(|l| l.request.as_ref().map(|r| r.sha256.as_slice()))
            .collect::<Vec<_>>(),
    )
    .fetch_one(db)
    .await
    .during("links::record")?;
    Ok(Written {
        active_keys,
        claimed,
    })
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

/// The earliest link recorded with this signature hash, signed by `key_id`
/// at `signed_at` (the URL's X-Amz-Credential and X-Amz-Date, which are its
/// link's key and issued_at): identical requests signed in the same second
/// share one URL, so the hash is not unique. `links_by_key_issued` finds the
/// links the key signed in that second and the hash picks among them (0018);
/// the signing time bounds expires_at to the 7 days after it, so only the
/// partitions of those days are searched.
pub async fn find_by_signature(
    db: impl PgExecutor<'_>,
    key_id: &str,
    signature_sha256: &[u8],
    signed_at: DateTime<Utc>,
) -> Result<Option<LinkRow>, Error> {
    sqlx::query_as(AssertSqlSafe(select_sql(
        "WHERE l.key_id = $1 AND l.issued_at = $2 AND l.signature_sha256 = $3
           AND l.expires_at > $2 AND l.expires_at <= $2 + interval '7 days'
         ORDER BY l.issued_at, l.id LIMIT 1",
    )))
    .bind(key_id)
    .bind(signed_at)
    .bind(signature_sha256)
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

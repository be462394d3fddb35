//! Signing keys: one row per access key, its secret sealed. The statements
//! only; the order they run in (and the lock before a state change) is the key
//! lifecycle's (`crate::keys`).

use super::error::{During, Error};
use super::link_queries::LinkFilter;
use super::link_summary::{self, GroupBy};
use crate::domain::{KeyState, LinkState};
use chrono::{DateTime, Utc};
use sqlx::{Acquire, AssertSqlSafe, PgConnection, PgExecutor, Postgres};
use std::collections::HashMap;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRow {
    pub key_id: String,
    pub signer: String,
    pub state: KeyState,
    /// nonce || ciphertext: opens only with the master key (see `seal`).
    pub sealed_secret: Vec<u8>,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "key_id, signer, state, sealed_secret, created_at";

pub async fn active_for_signer(
    db: impl PgExecutor<'_>,
    signer: &str,
) -> Result<Option<KeyRow>, Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM signing_keys WHERE signer = $1 AND state = $2"
    )))
    .bind(signer)
    .bind(KeyState::Active)
    .fetch_optional(db)
    .await
    .during("keys::active_for_signer")
}

pub async fn all_active(db: impl PgExecutor<'_>) -> Result<Vec<KeyRow>, Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM signing_keys WHERE state = $1 ORDER BY signer"
    )))
    .bind(KeyState::Active)
    .fetch_all(db)
    .await
    .during("keys::all_active")
}

/// A new key: `Active` for a signer that has none (it signs at once), or
/// `Pending` for a rotation's replacement (it signs nothing until `activate`).
pub async fn insert(
    db: impl PgExecutor<'_>,
    key_id: &str,
    signer: &str,
    state: KeyState,
    sealed_secret: &[u8],
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO signing_keys (key_id, signer, state, sealed_secret, activated_at)
         VALUES ($1, $2, $3, $4, CASE WHEN $5 THEN now() END)",
    )
    .bind(key_id)
    .bind(signer)
    .bind(state)
    .bind(sealed_secret)
    .bind(state == KeyState::Active)
    .execute(db)
    .await
    .during("keys::insert")
    .map(|_| ())
}

pub async fn get(db: impl PgExecutor<'_>, key_id: &str) -> Result<Option<KeyRow>, Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM signing_keys WHERE key_id = $1"
    )))
    .bind(key_id)
    .fetch_optional(db)
    .await
    .during("keys::get")
}

/// Takes the key's issuance lock exclusively until the end of the transaction
/// (see `links::record` and `crate::keys::lock_for_state_change`).
pub async fn lock_issuance_exclusive(conn: &mut PgConnection, key_id: &str) -> Result<(), Error> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT pg_advisory_xact_lock({}, hashtext($1))",
        super::links::ISSUANCE_LOCK_CLASS
    )))
    .bind(key_id)
    .execute(conn)
    .await
    .during("keys::lock_issuance_exclusive")
    .map(|_| ())
}

/// The range of issued_at of the links of key `k` (0019's signed_from,
/// signed_until; empty, ('infinity', '-infinity'), if it has none): each end
/// one probe of each partition's links_by_key_issued. Final once the key
/// signs no more.
macro_rules! signed_window {
    () => {
        "coalesce((SELECT l.issued_at FROM links l WHERE l.key_id = k.key_id
                   ORDER BY l.issued_at, l.id LIMIT 1), 'infinity'),
         coalesce((SELECT l.issued_at FROM links l WHERE l.key_id = k.key_id
                   ORDER BY l.issued_at DESC, l.id DESC LIMIT 1), '-infinity')"
    };
}

/// The SET clause that records key `k`'s window where `$when` holds (SQL on
/// `k`'s row as it was), and keeps the recorded one otherwise.
macro_rules! record_window_if {
    ($when:literal) => {
        concat!(
            "(signed_from, signed_until) = (
                 SELECT CASE WHEN ",
            $when,
            " THEN w.f ELSE k.signed_from END,
                        CASE WHEN ",
            $when,
            " THEN w.u ELSE k.signed_until END
                 FROM (SELECT ",
            signed_window!(),
            ") w (f, u))"
        )
    };
}

/// active -> retired, recording the range of issued_at it signed in. Run
/// under the key's state-change lock: every link it signed has committed, and
/// none comes after.
pub async fn retire(conn: &mut PgConnection, key_id: &str) -> Result<bool, Error> {
    sqlx::query(concat!(
        "UPDATE signing_keys k SET state = $2, retired_at = now(),
             (signed_from, signed_until) = (SELECT ",
        signed_window!(),
        ")
         WHERE key_id = $1 AND state = $3"
    ))
    .bind(key_id)
    .bind(KeyState::Retired)
    .bind(KeyState::Active)
    .execute(conn)
    .await
    .during("keys::retire")
    .map(|r| r.rows_affected() == 1)
}

/// pending -> active.
pub async fn activate(db: impl PgExecutor<'_>, key_id: &str) -> Result<bool, Error> {
    sqlx::query(
        "UPDATE signing_keys SET state = $2, activated_at = now() WHERE key_id = $1 AND state = $3",
    )
    .bind(key_id)
    .bind(KeyState::Active)
    .bind(KeyState::Pending)
    .execute(db)
    .await
    .during("keys::activate")
    .map(|r| r.rows_affected() == 1)
}

/// Marks a live key deactivated at its backend (idempotent: a dead key stays
/// as it is), recording the range of issued_at it signed in if it was still
/// active (or the range is unknown). Run under the key's state-change lock.
pub async fn deactivate(
    conn: &mut PgConnection,
    key_id: &str,
    revocation_id: Option<uuid::Uuid>,
) -> Result<(), Error> {
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE signing_keys k
         SET state = $3, deactivated_at = coalesce(deactivated_at, now()),
             revocation_id = coalesce(revocation_id, $2),
             {}
         WHERE key_id = $1 AND NOT {}",
        record_window_if!("k.state = 'active' OR k.signed_until IS NULL"),
        super::states::KEY_DEAD
    )))
    .bind(key_id)
    .bind(revocation_id)
    .bind(KeyState::Inactive)
    .execute(conn)
    .await
    .during("keys::deactivate")
    .map(|_| ())
}

/// Marks a key deleted. A key that no longer signs (pending, retired,
/// inactive: only an active key's links are inserted, and this statement's
/// row lock orders it after any activation) gets the range it signed in if it
/// has none yet; an active one's stays unknown (it is not under the
/// state-change lock).
pub async fn mark_deleted(db: impl PgExecutor<'_>, key_id: &str) -> Result<(), Error> {
    sqlx::query(concat!(
        "UPDATE signing_keys k SET state = $2, deleted_at = now(), ",
        record_window_if!("k.state <> 'active' AND k.signed_until IS NULL"),
        " WHERE key_id = $1"
    ))
    .bind(key_id)
    .bind(KeyState::Deleted)
    .execute(db)
    .await
    .during("keys::mark_deleted")
    .map(|_| ())
}

/// Retired keys none of whose links is still outstanding: safe to deactivate.
pub async fn retired_without_outstanding_links(
    db: impl PgExecutor<'_>,
) -> Result<Vec<KeyRow>, Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM signing_keys k
         WHERE k.state = $1
           AND NOT EXISTS (SELECT 1 FROM links l WHERE l.key_id = k.key_id AND l.expires_at > now())
         ORDER BY k.created_at"
    )))
    .bind(KeyState::Retired)
    .fetch_all(db)
    .await
    .during("keys::retired_without_outstanding_links")
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeySummaryRow {
    pub key_id: String,
    pub signer: String,
    pub state: KeyState,
    pub created_at: DateTime<Utc>,
    pub outstanding_links: i64,
    pub latest_expiry: Option<DateTime<Utc>>,
    /// When it began to sign (None: pending), and stopped (None: not retired).
    pub activated_at: Option<DateTime<Utc>>,
    pub retired_at: Option<DateTime<Utc>>,
}

/// Every key (optionally of one signer) with its outstanding links and the
/// latest expiry among them, from the link roll-up (a summary of active links
/// by key, `link_summary::summarize_rollup`): its cells and the live links of
/// the current minute, where a pass over every outstanding link took 0.9 s
/// on 100M links and 3.4 s with 3M live in the current hour
/// (docs/BENCHMARKS.md). The counts are read first, the keys after: a key
/// dead by then shows none, as a pending or dead key always does.
pub async fn list_with_outstanding(
    db: impl Acquire<'_, Database = Postgres>,
    signer: Option<&str>,
) -> Result<Vec<KeySummaryRow>, Error> {
    const WHAT: &str = "keys::list_with_outstanding";
    let mut conn = db.acquire().await.during(WHAT)?;
    let filter = LinkFilter {
        state: Some(LinkState::Active),
        signer: signer.map(str::to_owned),
        ..LinkFilter::default()
    };
    let outstanding: HashMap<String, (i64, Option<DateTime<Utc>>)> =
        link_summary::summarize_rollup(&mut *conn, &filter, GroupBy::Key)
            .await?
            .into_iter()
            .map(|r| (r.group, (r.active, r.latest_expiry)))
            .collect();
    let mut keys: Vec<KeySummaryRow> = sqlx::query_as(
        "SELECT k.key_id, k.signer, k.state, k.created_at, 0::bigint AS outstanding_links,
                NULL::timestamptz AS latest_expiry, k.activated_at, k.retired_at
         FROM signing_keys k
         WHERE $1::text IS NULL OR k.signer = $1
         ORDER BY k.signer, k.created_at DESC",
    )
    .bind(signer)
    .fetch_all(&mut *conn)
    .await
    .during(WHAT)?;
    for k in &mut keys {
        if matches!(k.state, KeyState::Active | KeyState::Retired)
            && let Some(&(links, latest)) = outstanding.get(&k.key_id)
        {
            (k.outstanding_links, k.latest_expiry) = (links, latest);
        }
    }
    Ok(keys)
}

/// Tells every replica (LISTEN presignd_keys) that a signer's keys changed;
/// delivered when the surrounding transaction commits.
pub async fn notify_changed(db: impl PgExecutor<'_>, signer: &str) -> Result<(), Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(KEYS_CHANNEL)
        .bind(signer)
        .execute(db)
        .await
        .during("keys::notify_changed")
        .map(|_| ())
}

pub const KEYS_CHANNEL: &str = "presignd_keys";

/// Links of a key that still work: not expired, not revoked.
pub async fn outstanding_links(db: impl PgExecutor<'_>, key_id: &str) -> Result<i64, Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM links WHERE key_id = $1 AND expires_at > now() AND revocation_id IS NULL",
    )
    .bind(key_id)
    .fetch_one(db)
    .await
    .during("keys::outstanding_links")
}

/// A signer's active key as its blast-radius budget sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BudgetUse {
    pub key_id: String,
    pub activated_at: DateTime<Utc>,
    /// Its outstanding links, counted up to the cap given.
    pub outstanding: i64,
}

/// The signer's active key, when it began to sign, and its outstanding links
/// counted up to `cap`: one range of `links_by_key_expiry` of at most `cap`
/// entries, so the check costs about the budget, never the key's whole history.
pub async fn budget_use(
    db: impl PgExecutor<'_>,
    signer: &str,
    cap: i64,
) -> Result<Option<BudgetUse>, Error> {
    sqlx::query_as(
        "SELECT k.key_id, coalesce(k.activated_at, k.created_at) AS activated_at,
                (SELECT count(*) FROM (
                     SELECT 1 FROM links l
                     WHERE l.key_id = k.key_id AND l.expires_at > now() AND l.revocation_id IS NULL
                     LIMIT $3) o) AS outstanding
         FROM signing_keys k WHERE k.signer = $1 AND k.state = $2",
    )
    .bind(signer)
    .bind(KeyState::Active)
    .bind(cap)
    .fetch_optional(db)
    .await
    .during("keys::budget_use")
}

/// The signer's standby key, if it has one: `pending` and no revocation's
/// replacement (created ahead by the blast-radius budget; the next GRACEFUL
/// rotation of the signer adopts it).
pub async fn standby(db: impl PgExecutor<'_>, signer: &str) -> Result<Option<String>, Error> {
    sqlx::query_scalar(
        "SELECT k.key_id FROM signing_keys k
         WHERE k.signer = $1 AND k.state = $2
           AND NOT EXISTS (SELECT 1 FROM revocations r WHERE r.new_key_id = k.key_id)
         ORDER BY k.created_at LIMIT 1",
    )
    .bind(signer)
    .bind(KeyState::Pending)
    .fetch_optional(db)
    .await
    .during("keys::standby")
}

//! The dashboards' reads of the links table: the filter they share, a filtered
//! listing paged by keyset, and the outstanding links per key for the metrics
//! gauge (summaries: `link_summary`).
//!
//! Filters are bound parameters (`QueryBuilder::push_bind`); the only SQL text
//! chosen at run time comes from enums. Listing walks `(issued_at DESC, id DESC)`
//! and an equality filter picks the index that starts with its column (bucket,
//! caller, key_id, signer: migrations 0001 and 0003), so a page reads about
//! `limit` index entries however deep the cursor is, unless the filters left on
//! top (state, prefix, expiry window) reject most rows.

use super::links::{LinkRow, select_sql};
use crate::domain::LinkState;
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use sqlx::{PgExecutor, Postgres, QueryBuilder};
use uuid::Uuid;

/// A link's key is dead: every link it signed is revoked.
const KEY_DEAD: &str = "k.state IN ('inactive', 'deleted')";

/// `STATE_SQL = 'x'` spelled out per state, so the planner sees plain predicates
/// (tests check that both always agree).
fn state_predicate(state: LinkState) -> String {
    match state {
        LinkState::Revoked => format!("({KEY_DEAD} OR l.revocation_id IS NOT NULL)"),
        LinkState::Expired => {
            format!("(NOT {KEY_DEAD} AND l.revocation_id IS NULL AND l.expires_at <= now())")
        }
        LinkState::Active => {
            format!("(NOT {KEY_DEAD} AND l.revocation_id IS NULL AND l.expires_at > now())")
        }
    }
}

/// Which links to read. Every field narrows; `None` does not filter. Validated by
/// the caller (`dashboard`); serialized to bind page tokens to their filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LinkFilter {
    pub state: Option<LinkState>,
    pub bucket: Option<String>,
    pub object_key_prefix: Option<String>,
    pub caller: Option<String>,
    pub key_id: Option<String>,
    pub signer: Option<String>,
    /// Inclusive.
    pub expires_after: Option<DateTime<Utc>>,
    /// Exclusive.
    pub expires_before: Option<DateTime<Utc>>,
}

/// Where a page ends: the last row's position in `(issued_at DESC, id DESC)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub issued_at: DateTime<Utc>,
    pub id: Uuid,
}

impl From<&LinkRow> for Cursor {
    fn from(row: &LinkRow) -> Self {
        Self {
            issued_at: row.issued_at,
            id: row.id,
        }
    }
}

/// The newest issued_at of any revoked link, NULL if none: the newest link of
/// each dead key (one probe of `links_by_key_issued` per key) or of the marked
/// links (one probe of `links_marked_by_revocation`).
const NEWEST_REVOKED_SQL: &str = "(SELECT greatest(
    (SELECT max(newest.issued_at) FROM signing_keys dead
     CROSS JOIN LATERAL (SELECT x.issued_at FROM links x WHERE x.key_id = dead.key_id
                         ORDER BY x.issued_at DESC LIMIT 1) newest
     WHERE dead.state IN ('inactive', 'deleted')),
    (SELECT max(x.issued_at) FROM links x WHERE x.revocation_id IS NOT NULL)))";

/// The oldest issued_at of any link of a live key, NULL if none: one probe of
/// `links_by_key_issued` per active or retired key.
const OLDEST_OF_LIVE_KEYS_SQL: &str = "(SELECT min(oldest.issued_at) FROM signing_keys live
     CROSS JOIN LATERAL (SELECT x.issued_at FROM links x WHERE x.key_id = live.key_id
                         ORDER BY x.issued_at LIMIT 1) oldest
     WHERE live.state NOT IN ('inactive', 'deleted'))";

/// A link lives at most this long (`links_live_at_most_7_days` in 0003).
const MAX_LIFETIME_SECS: i64 = crate::domain::MAX_TTL.as_secs() as i64;

/// Conditions every link in `state` meets without looking at its key, so a
/// query on `links` alone can narrow by them.
pub(super) fn state_necessary(state: LinkState) -> String {
    match state {
        LinkState::Active => format!(
            "(l.revocation_id IS NULL AND l.expires_at > now()
              AND l.issued_at > now() - make_interval(secs => {MAX_LIFETIME_SECS}))"
        ),
        LinkState::Expired => "(l.revocation_id IS NULL AND l.expires_at <= now())".into(),
        LinkState::Revoked => "TRUE".into(),
    }
}

/// `filter` as conditions on `links l` (and, for a state, `signing_keys k`).
pub(super) fn push_filter(q: &mut QueryBuilder<Postgres>, f: &LinkFilter) {
    q.push(" WHERE TRUE");
    if let Some(state) = f.state {
        q.push(" AND ")
            .push(state_predicate(state))
            .push(" AND ")
            .push(state_necessary(state));
    }
    // Bounds on issued_at implied by the filter and the 7-day lifetime: they
    // let a scan in issued_at order stop where no more link can match.
    if f.state == Some(LinkState::Expired) {
        q.push(" AND l.issued_at >= ").push(OLDEST_OF_LIVE_KEYS_SQL);
    }
    if let Some(t) = f
        .expires_after
        .and_then(|t| t.checked_sub_signed(TimeDelta::seconds(MAX_LIFETIME_SECS)))
    {
        q.push(" AND l.issued_at >= ").push_bind(t);
    }
    if let Some(t) = f.expires_before {
        q.push(" AND l.issued_at < ").push_bind(t);
    }
    if let Some(v) = &f.bucket {
        q.push(" AND l.bucket = ").push_bind(v.clone());
    }
    if let Some(v) = &f.object_key_prefix {
        // starts_with, not LIKE: '%' and '_' in a prefix are plain characters.
        q.push(" AND starts_with(l.object_key, ")
            .push_bind(v.clone())
            .push(")");
    }
    if let Some(v) = &f.caller {
        q.push(" AND l.caller = ").push_bind(v.clone());
    }
    if let Some(v) = &f.key_id {
        q.push(" AND l.key_id = ").push_bind(v.clone());
    }
    if let Some(v) = &f.signer {
        q.push(" AND l.signer = ").push_bind(v.clone());
    }
    if let Some(t) = f.expires_after {
        q.push(" AND l.expires_at >= ").push_bind(t);
    }
    if let Some(t) = f.expires_before {
        q.push(" AND l.expires_at < ").push_bind(t);
    }
}

/// Where the scan starts: strictly after the cursor. For REVOKED, also past
/// the newest revoked link, so the live links newer than it (every link signed
/// since the last rotation) are skipped by the index instead of read. One row
/// comparison carries both: the index starts from it.
fn push_start(q: &mut QueryBuilder<Postgres>, f: &LinkFilter, after: Option<Cursor>) {
    const NIL: &str = "'00000000-0000-0000-0000-000000000000'::uuid";
    let revoked = f.state == Some(LinkState::Revoked);
    let bound = format!("coalesce({NEWEST_REVOKED_SQL} + interval '1 microsecond', '-infinity')");
    match (revoked, after) {
        (false, None) => {}
        (false, Some(c)) => {
            q.push(" AND (l.issued_at, l.id) < (")
                .push_bind(c.issued_at)
                .push(", ")
                .push_bind(c.id)
                .push(")");
        }
        (true, None) => {
            q.push(format!(
                " AND (l.issued_at, l.id) < ((SELECT {bound}), {NIL})"
            ));
        }
        (true, Some(c)) => {
            // The older of (bound, NIL) and the cursor, spelled per column.
            q.push(format!(
                " AND (l.issued_at, l.id) < (CASE WHEN (SELECT {bound}) < "
            ))
            .push_bind(c.issued_at)
            .push(format!(" THEN (SELECT {bound}) ELSE "))
            .push_bind(c.issued_at)
            .push(format!(" END, CASE WHEN (SELECT {bound}) < "))
            .push_bind(c.issued_at)
            .push(format!(" THEN {NIL} ELSE "))
            .push_bind(c.id)
            .push(" END)");
        }
    }
}

/// Up to `limit` links matching `filter`, newest first (`issued_at DESC, id
/// DESC`), strictly after `after`. Rows inserted while a client pages never shift
/// the rows it has not seen yet: the cursor is a position, not an offset.
pub async fn list_page(
    db: impl PgExecutor<'_>,
    filter: &LinkFilter,
    after: Option<Cursor>,
    limit: i64,
) -> Result<Vec<LinkRow>, sqlx::Error> {
    let mut q = QueryBuilder::new(select_sql(""));
    push_filter(&mut q, filter);
    push_start(&mut q, filter, after);
    q.push(" ORDER BY l.issued_at DESC, l.id DESC LIMIT ")
        .push_bind(limit);
    q.build_query_as().fetch_all(db).await
}

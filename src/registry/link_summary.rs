//! SummarizeLinks: links matching a filter, counted per state in each group (key,
//! signer, bucket or caller), with the latest expiry.
//!
//! A link's state depends on its key (see `links::STATE_SQL`), but joining every
//! link to its key costs as much as reading it. So the links are first
//! aggregated per (group, key) into three categories that need no key: live
//! (unmarked, not expired), expired (unmarked) and marked by a revocation. Then
//! each (group, key) row meets its key: for a dead key every category is
//! revoked; otherwise live is active, expired is expired, marked is revoked,
//! exactly as STATE_SQL says. Still one pass over every matching link: see
//! docs/BENCHMARKS.md for what that costs on a large registry.

use super::link_queries::{LinkFilter, push_filter, state_necessary};
use crate::domain::LinkState;
use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, QueryBuilder};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Key,
    Signer,
    Bucket,
    Caller,
}

impl GroupBy {
    fn column(self) -> &'static str {
        match self {
            Self::Key => "l.key_id",
            Self::Signer => "l.signer",
            Self::Bucket => "l.bucket",
            Self::Caller => "l.caller",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SummaryRow {
    pub group: String,
    pub active: i64,
    pub expired: i64,
    pub revoked: i64,
    /// The latest expiry among the group's links that match the filter.
    pub latest_expiry: Option<DateTime<Utc>>,
}

const LIVE: &str = "l.revocation_id IS NULL AND l.expires_at > now()";
const EXPIRED: &str = "l.revocation_id IS NULL AND l.expires_at <= now()";
const MARKED: &str = "l.revocation_id IS NOT NULL";

/// Per state: its count and its latest expiry on a (group, key) row `a` whose
/// key is dead or not (`k.dead`).
fn per_state(state: LinkState) -> (&'static str, &'static str) {
    match state {
        LinkState::Active => (
            "CASE WHEN k.dead THEN 0 ELSE a.live END",
            "CASE WHEN k.dead THEN NULL ELSE a.live_latest END",
        ),
        LinkState::Expired => (
            "CASE WHEN k.dead THEN 0 ELSE a.expired END",
            "CASE WHEN k.dead THEN NULL ELSE a.expired_latest END",
        ),
        LinkState::Revoked => (
            "CASE WHEN k.dead THEN a.live + a.expired + a.marked ELSE a.marked END",
            "CASE WHEN k.dead THEN greatest(a.live_latest, a.expired_latest, a.marked_latest)
                  ELSE a.marked_latest END",
        ),
    }
}

pub async fn summarize(
    db: impl PgExecutor<'_>,
    filter: &LinkFilter,
    group_by: GroupBy,
) -> Result<Vec<SummaryRow>, sqlx::Error> {
    let states = [LinkState::Active, LinkState::Expired, LinkState::Revoked];
    // Under a state filter, the other states count 0 and do not give the latest expiry.
    let wanted = |s: LinkState| filter.state.is_none_or(|f| f == s);
    let count = |s: LinkState| match wanted(s) {
        true => format!("sum({})::bigint", per_state(s).0),
        false => "0::bigint".into(),
    };
    let latest: Vec<String> = states
        .into_iter()
        .filter(|&s| wanted(s))
        .map(|s| format!("max({})", per_state(s).1))
        .collect();
    let mut q = QueryBuilder::new(format!(
        "SELECT a.grp AS \"group\", {} AS active, {} AS expired, {} AS revoked,
                greatest({}) AS latest_expiry
         FROM (SELECT {} AS grp, l.key_id,
                      count(*) FILTER (WHERE {LIVE}) AS live,
                      max(l.expires_at) FILTER (WHERE {LIVE}) AS live_latest,
                      count(*) FILTER (WHERE {EXPIRED}) AS expired,
                      max(l.expires_at) FILTER (WHERE {EXPIRED}) AS expired_latest,
                      count(*) FILTER (WHERE {MARKED}) AS marked,
                      max(l.expires_at) FILTER (WHERE {MARKED}) AS marked_latest
               FROM links l",
        count(LinkState::Active),
        count(LinkState::Expired),
        count(LinkState::Revoked),
        latest.join(", "),
        group_by.column(),
    ));
    // The filter without its state (which needs the key), narrowed by what the
    // state implies on the link alone.
    push_filter(
        &mut q,
        &LinkFilter {
            state: None,
            ..filter.clone()
        },
    );
    if let Some(state) = filter.state {
        q.push(" AND ").push(state_necessary(state));
    }
    q.push(format!(
        " GROUP BY 1, 2) a
         JOIN (SELECT key_id, state IN ('inactive', 'deleted') AS dead FROM signing_keys) k
           ON k.key_id = a.key_id
         GROUP BY a.grp
         HAVING {} + {} + {} > 0
         ORDER BY a.grp",
        count(LinkState::Active),
        count(LinkState::Expired),
        count(LinkState::Revoked),
    ));
    q.build_query_as().fetch_all(db).await
}

//! SummarizeLinks: links matching a filter, counted per state in each group (key,
//! signer, bucket or caller), with the latest expiry.
//!
//! Two ways to the same answer:
//! * `summarize_rollup` reads the roll-up of migration 0005: links counted per
//!   cell (key, signer, bucket, caller, hour of expiry, marked), kept exact by
//!   triggers; the current and the next hour by minute of expiry (0025).
//!   Every cell but the current minute's of a live key has one state now (see
//!   `cell_state`); the current minute is split by links read from `links` by
//!   index range (`summarize_rollup`). It serves every filter on those
//!   columns and on state.
//! * `summarize_scan` is one pass over every matching link, for the filters a
//!   cell cannot answer (object key prefix, expiry window). It is also the
//!   oracle the roll-up is tested against.
//!
//! `fold` moves the triggers' deltas into `link_rollup` and merges the cells
//! whose state no longer depends on time; the maintenance loop runs it.
//! `keys::list_with_outstanding` (ListSigningKeys, the outstanding-links
//! gauge) is a summary of active links by key.

use super::error::{During, Error};
use super::link_queries::{LinkFilter, push_filter, state_necessary};
use super::states::{KEY_DEAD, key_dead};
use crate::domain::LinkState;
use chrono::{DateTime, Utc};
use sqlx::{Acquire, AssertSqlSafe, PgConnection, PgExecutor, PgPool, Postgres, QueryBuilder};

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
            Self::Key => "key_id",
            Self::Signer => "signer",
            Self::Bucket => "bucket",
            Self::Caller => "caller",
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

/// The summary of the links matching `filter`: from the roll-up unless the
/// filter holds a range a cell cannot answer (`LinkFilter::has_ranges`).
pub async fn summarize(
    db: impl Acquire<'_, Database = Postgres>,
    filter: &LinkFilter,
    group_by: GroupBy,
) -> Result<Vec<SummaryRow>, Error> {
    if !filter.has_ranges() {
        summarize_rollup(db, filter, group_by).await
    } else {
        summarize_scan(
            &mut *db.acquire().await.during("link_summary::summarize")?,
            filter,
            group_by,
        )
        .await
    }
}

/// The current hour (UTC) and the minute of it now, computed once per
/// statement, not per cell.
const HOUR_NOW: &str = "(SELECT date_trunc('hour', now(), 'UTC'))";
const MINUTE_NOW: &str = "(SELECT extract(minute FROM now() AT TIME ZONE 'UTC')::smallint)";

/// The keys whose current hour still has a cell of a whole hour (minute -1)
/// of unmarked links: written hours ahead and not yet counted by minute by a
/// fold (`refine`, which looks for the same cells in two hours), or by a
/// presignd before 0025. Such a live key's current hour is read as one hour,
/// as before (a dead key's links are revoked whatever their cell). Spelled
/// inline where it is used: read once in a CTE instead, the summaries
/// measured 30% slower (docs/BENCHMARKS.md, "A live hour counted by minute").
const COARSE_KEYS: &str = "(SELECT key_id FROM link_rollup
                            WHERE minute = -1 AND NOT marked
                              AND expires_hour = (SELECT date_trunc('hour', now(), 'UTC'))
                            UNION ALL
                            SELECT key_id FROM link_rollup_delta
                            WHERE minute = -1 AND NOT marked
                              AND expires_hour = (SELECT date_trunc('hour', now(), 'UTC')))";

/// The state every link of a roll-up cell `c` of key `k` is in now, with the
/// current minute of a live key's unmarked links (its current hour, for a key
/// in `COARSE_KEYS`) counted as expired: its links still active are moved out
/// of it link by link (`summarize_rollup`). The same rules as
/// `links::STATE_SQL`: a cell of an earlier hour or minute holds links that
/// expired before this hour or minute began, one of a later hour or minute
/// links that expire after it ends.
fn cell_state() -> String {
    format!(
        "CASE WHEN {KEY_DEAD} OR c.marked THEN 'revoked'
              WHEN c.expires_hour < {HOUR_NOW} THEN 'expired'
              WHEN c.expires_hour > {HOUR_NOW} THEN 'active'
              WHEN c.minute > {MINUTE_NOW} AND c.key_id NOT IN {COARSE_KEYS} THEN 'active'
              ELSE 'expired' END"
    )
}

/// A cell of the current hour of a live key's unmarked links.
const CELL_CURRENT: &str = concat!(
    "(NOT (",
    key_dead!(),
    " OR c.marked) AND c.expires_hour = (SELECT date_trunc('hour', now(), 'UTC')))"
);

/// The roll-up's cells and the triggers' deltas not folded yet.
const CELLS: &str = "(SELECT key_id, signer, bucket, caller, expires_hour, minute, marked, links,
                             latest
                      FROM link_rollup
                      UNION ALL
                      SELECT key_id, signer, bucket, caller, expires_hour, minute, marked, links,
                             latest
                      FROM link_rollup_delta) c
                     JOIN signing_keys k ON k.key_id = c.key_id";

/// Equality filters on a cell's (or a link's) columns, for `alias`.
fn push_columns_filter(q: &mut QueryBuilder<Postgres>, alias: &str, f: &LinkFilter) {
    for (column, value) in [
        ("bucket", &f.bucket),
        ("caller", &f.caller),
        ("key_id", &f.key_id),
        ("signer", &f.signer),
    ] {
        if let Some(v) = value {
            q.push(format!(" AND {alias}.{column} = "))
                .push_bind(v.clone());
        }
    }
}

/// A summary over rows `x(grp, state, links, latest)`, which the caller pushes
/// after the returned builder's text and closes with `close_summary`: per
/// group, the links of each state (0 unless the filter's state wants it) and
/// the latest expiry among the wanted states. A row whose state is NULL counts
/// nowhere. Returns the builder and the HAVING condition (some wanted link).
fn open_summary(filter: &LinkFilter) -> (QueryBuilder<Postgres>, String) {
    let states = [LinkState::Active, LinkState::Expired, LinkState::Revoked];
    let wanted = |s: LinkState| filter.state.is_none_or(|f| f == s);
    let counts = states.map(|s| match wanted(s) {
        true => format!(
            "coalesce(sum(x.links) FILTER (WHERE x.state = '{}'), 0)::bigint",
            s.as_str()
        ),
        false => "0::bigint".into(),
    });
    let latest: Vec<String> = states
        .into_iter()
        .filter(|&s| wanted(s))
        .map(|s| format!("max(x.latest) FILTER (WHERE x.state = '{}')", s.as_str()))
        .collect();
    let [active, expired, revoked] = counts;
    let q = QueryBuilder::new(format!(
        "SELECT x.grp AS \"group\", {active} AS active, {expired} AS expired,
                {revoked} AS revoked, greatest({}) AS latest_expiry
         FROM (",
        latest.join(", ")
    ));
    (q, format!("{active} + {expired} + {revoked} > 0"))
}

fn close_summary(q: &mut QueryBuilder<Postgres>, having: &str) {
    q.push(format!(
        ") x
         WHERE x.state IS NOT NULL
         GROUP BY x.grp
         HAVING {having}
         ORDER BY x.grp"
    ));
}

/// The summary from the roll-up: a few rows per cell instead of one per link.
///
/// The current minute's cells of a live key hold links of two states, expired
/// up to now and active after. Such a cell counts as expired whole, and each
/// of its links still active, read from `links` (the rest of the minute),
/// moves one from expired to active. Counting the hour link by link instead
/// read every link expiring in it: ~1.4 s after an hour of 2.2M short-lived
/// links; and moving the rest of the hour's, as before 0025, 0.5-0.9 s with
/// 1.6-2.4M of them live (docs/BENCHMARKS.md). A key whose current hour still
/// has a cell of the whole hour (`COARSE_KEYS`) counts all of the hour's
/// cells as expired and moves the rest of the hour's live links. The latest expiry:
/// a cell's is its links', whatever their state, which is the answer unless
/// only expired links are wanted; then the current hour's latest expired link
/// of each key and group is one probe of links_by_key_expiry back from now.
///
/// The hour's links are read between bounds bound as values: the statement's
/// transaction's `now()` (read first, in the same transaction, so they are
/// exactly its bounds) and the end of its hour. The planner prunes `links`'
/// partitions by values, not by `now()`: with `now()` it kept and locked every
/// partition for as long as the summary ran, seconds on 100M links under load
/// (the gauge's refresh), and a retention drop gave up meanwhile
/// (docs/BENCHMARKS.md). The statement is not kept prepared (`persistent`), so
/// it is always planned with its values, never with a generic plan.
pub async fn summarize_rollup(
    db: impl Acquire<'_, Database = Postgres>,
    filter: &LinkFilter,
    group_by: GroupBy,
) -> Result<Vec<SummaryRow>, Error> {
    const WHAT: &str = "link_summary::summarize_rollup";
    let mut tx = db.begin().await.during(WHAT)?;
    // No sequential scan where another path exists, for this transaction (the
    // caller's, when it passes one):
    // the planner estimates every key's share of the hour as the average and,
    // past ~0.5M live links in it, read the whole day's partition once per live
    // key (7 passes, 2.6-4.7 s with 3M live links on one key) where each key's
    // index range is read once (0.5 s; docs/BENCHMARKS.md, "A live hour").
    // And no JIT: the deltas (no index) are still read by a sequential scan,
    // which the setting then charges the planner's penalty (10^10), over any
    // JIT threshold; compiling took ~0.1-0.2 s of a 2 ms summary wherever the
    // session had not turned JIT off (`registry::session_settings` does;
    // tests' pools did not).
    type Bounds = (
        DateTime<Utc>,
        DateTime<Utc>,
        DateTime<Utc>,
        DateTime<Utc>,
        String,
    );
    let (now, hour, minute_end, hour_end, _): Bounds = sqlx::query_as(
        "SELECT now(), date_trunc('hour', now(), 'UTC'),
                date_trunc('minute', now(), 'UTC') + interval '1 minute',
                date_trunc('hour', now(), 'UTC') + interval '1 hour',
                set_config('enable_seqscan', 'off', true) || set_config('jit', 'off', true)",
    )
    .fetch_one(&mut *tx)
    .await
    .during(WHAT)?;
    let (mut q, having) = open_summary(filter);
    let g = group_by.column();
    let probe = filter.state == Some(LinkState::Expired);
    let latest = match probe {
        true => format!("CASE WHEN {CELL_CURRENT} THEN NULL ELSE c.latest END"),
        false => "c.latest".into(),
    };
    q.push(format!(
        "SELECT c.{g} AS grp, {} AS state, c.links, {latest}
         FROM {CELLS} WHERE TRUE",
        cell_state()
    ));
    push_columns_filter(&mut q, "c", filter);
    // The current minute's links still active (the current hour's, for a
    // key in COARSE_KEYS; none can be revoked), counted per key and group
    // where they are read: a row per link carried to the outer sum cost twice
    // as much (docs/BENCHMARKS.md). Grouped, the sub-select stays per key
    // (one range of links_by_key_expiry each). Two branches, each with its
    // range's bounds as values: the planner estimates a minute's links as
    // few and reads each key's range; given a bound it could not estimate
    // (per key, from COARSE_KEYS), it read a day's partition by caller order
    // once per key (4 s, docs/BENCHMARKS.md).
    if filter.state != Some(LinkState::Revoked) {
        for (end, keys) in [(minute_end, "NOT IN"), (hour_end, "IN")] {
            q.push(format!(
                " UNION ALL
                   SELECT l.grp, m.state, m.links, m.latest
                   FROM signing_keys k
                   JOIN LATERAL (SELECT l.{g} AS grp, count(*) AS links,
                                        max(l.expires_at) AS latest
                                 FROM links l
                                 WHERE l.key_id = k.key_id AND l.revocation_id IS NULL
                                   AND l.expires_at > "
            ));
            q.push_bind(now).push(" AND l.expires_at < ").push_bind(end);
            push_columns_filter(&mut q, "l", filter);
            q.push(format!(
                " GROUP BY l.{g}) l ON TRUE
                   CROSS JOIN LATERAL (VALUES ('active', l.links, l.latest),
                                              ('expired', -l.links, NULL::timestamptz))
                                      m (state, links, latest)
                   WHERE NOT {KEY_DEAD} AND k.key_id {keys} {COARSE_KEYS}"
            ));
            // The keys the filter names alone: another key's hour is not read.
            for (column, value) in [("key_id", &filter.key_id), ("signer", &filter.signer)] {
                if let Some(v) = value {
                    q.push(format!(" AND k.{column} = ")).push_bind(v.clone());
                }
            }
        }
    }
    if probe {
        q.push(format!(
            " UNION ALL
               SELECT p.grp, 'expired', 0,
                      (SELECT max(l.expires_at) FROM links l
                       WHERE l.key_id = p.key_id AND l.{g} = p.grp AND l.revocation_id IS NULL
                         AND l.expires_at >= "
        ));
        q.push_bind(hour)
            .push(" AND l.expires_at <= ")
            .push_bind(now);
        push_columns_filter(&mut q, "l", filter);
        q.push(format!(
            ") FROM (SELECT DISTINCT c.key_id, c.{g} AS grp FROM {CELLS}
                     WHERE {CELL_CURRENT}"
        ));
        push_columns_filter(&mut q, "c", filter);
        q.push(") p");
    }
    close_summary(&mut q, &having);
    let rows = q
        .build_query_as()
        .persistent(false)
        .fetch_all(&mut *tx)
        .await
        .during(WHAT)?;
    tx.commit().await.during(WHAT)?;
    Ok(rows)
}

/// The lock a fold takes, and the roll-up triggers' recount (0005's
/// `link_rollup_lock`): a recount never interleaves with a fold.
const ROLLUP_LOCK: (i32, i32) = (0x7074, 1);

/// Moves the triggers' deltas into `link_rollup`, and merges every cell whose
/// state no longer depends on time (an earlier hour, marked, or of a dead key)
/// into the cell of its day (UTC midnight, minute -1): a day is a `links`
/// partition, so retention drops exactly the cells of the days it drops
/// (0011; before, such cells merged into one '-infinity' cell per key). One
/// statement, so a summary sees the roll-up before or after it, never half.
///
/// First, `refine`: the current and the next hour of a live key counted by
/// minute wherever an hour's cell of them is left (0025).
///
/// Returns None if another fold or a recount holds the lock (the next fold
/// will do it), else the rows written.
pub async fn fold(pool: &PgPool) -> Result<Option<u64>, Error> {
    let mut tx = pool.begin().await.during("link_summary::fold")?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, $2)")
        .bind(ROLLUP_LOCK.0)
        .bind(ROLLUP_LOCK.1)
        .fetch_one(&mut *tx)
        .await
        .during("link_summary::fold")?;
    if !locked {
        return Ok(None);
    }
    let refined = refine(&mut tx).await?;
    const SETTLED: &str = concat!(
        "(a.expires_hour < date_trunc('hour', now(), 'UTC') OR a.marked OR ",
        key_dead!(),
        ")"
    );
    let written = sqlx::query(AssertSqlSafe(format!(
        "WITH moved AS (
             DELETE FROM link_rollup_delta
             RETURNING key_id, signer, bucket, caller, expires_hour, minute, marked, links,
                       latest),
         aged AS (
             DELETE FROM link_rollup a USING signing_keys k
             WHERE k.key_id = a.key_id AND {SETTLED}
               AND (a.expires_hour <> date_trunc('day', a.expires_hour, 'UTC') OR a.minute <> -1)
             RETURNING a.key_id, a.signer, a.bucket, a.caller, a.expires_hour, a.minute,
                       a.marked, a.links, a.latest)
         INSERT INTO link_rollup AS t
             (key_id, signer, bucket, caller, expires_hour, minute, marked, links, latest)
         SELECT a.key_id, a.signer, a.bucket, a.caller,
                CASE WHEN {SETTLED} THEN date_trunc('day', a.expires_hour, 'UTC')
                     ELSE a.expires_hour END,
                CASE WHEN {SETTLED} THEN -1 ELSE a.minute END,
                a.marked, sum(a.links), max(a.latest)
         FROM (SELECT * FROM moved UNION ALL SELECT * FROM aged) a
         JOIN signing_keys k ON k.key_id = a.key_id
         GROUP BY 1, 2, 3, 4, 5, 6, 7
         ON CONFLICT (key_id, signer, bucket, caller, expires_hour, minute, marked)
         DO UPDATE SET links = t.links + EXCLUDED.links,
                       latest = greatest(t.latest, EXCLUDED.latest)"
    )))
    .execute(&mut *tx)
    .await
    .during("link_summary::fold")?
    .rows_affected();
    tx.commit().await.during("link_summary::fold")?;
    Ok(Some(refined + written))
}

/// Counts by minute the current and the next hour (UTC) of every live key
/// with an hour's cell (minute -1) of its unmarked links in them: the cells
/// and deltas of those hours are replaced by deltas recounted from `links`
/// (the next fold statement moves them). One statement: the deltas it deletes
/// are exactly those of the links its snapshot sees, so links committed later
/// bring their own and none is counted twice (as in 0005's recount). Marked
/// cells, and a dead key's, are left as they are: their state does not
/// depend on time, and at midnight their cell is the whole day's. Normally
/// once an hour per key, as its next hour begins (the triggers write minutes
/// from then on), reading that hour's links written so far.
///
/// The hours are bound as values (the transaction's `now()`, read first), so
/// the plan reads and locks only their partitions (as `summarize_rollup`).
async fn refine(tx: &mut PgConnection) -> Result<u64, Error> {
    const WHAT: &str = "link_summary::refine";
    let (hour, next, end): (DateTime<Utc>, DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
        "SELECT h, h + interval '1 hour', h + interval '2 hours'
         FROM (SELECT date_trunc('hour', now(), 'UTC') AS h) n",
    )
    .fetch_one(&mut *tx)
    .await
    .during(WHAT)?;
    const HOURS: &str = "$1, $2";
    sqlx::query(AssertSqlSafe(format!(
        "WITH coarse AS (
             SELECT DISTINCT c.key_id, c.expires_hour
             FROM (SELECT key_id, expires_hour FROM link_rollup
                   WHERE minute = -1 AND NOT marked AND expires_hour IN ({HOURS})
                   UNION ALL
                   SELECT key_id, expires_hour FROM link_rollup_delta
                   WHERE minute = -1 AND NOT marked AND expires_hour IN ({HOURS})) c
             JOIN signing_keys k ON k.key_id = c.key_id
             WHERE NOT {KEY_DEAD}),
         gone AS (
             DELETE FROM link_rollup a USING coarse t
             WHERE a.key_id = t.key_id AND a.expires_hour = t.expires_hour AND NOT a.marked),
         gone_deltas AS (
             DELETE FROM link_rollup_delta d USING coarse t
             WHERE d.key_id = t.key_id AND d.expires_hour = t.expires_hour AND NOT d.marked)
         INSERT INTO link_rollup_delta
             (key_id, signer, bucket, caller, expires_hour, minute, marked, links, latest)
         SELECT l.key_id, l.signer, l.bucket, l.caller, t.expires_hour,
                extract(minute FROM l.expires_at AT TIME ZONE 'UTC')::smallint, false,
                count(*), max(l.expires_at)
         FROM coarse t
         JOIN links l ON l.key_id = t.key_id AND l.revocation_id IS NULL
                     AND l.expires_at >= t.expires_hour
                     AND l.expires_at < t.expires_hour + interval '1 hour'
                     AND l.expires_at >= $1 AND l.expires_at < $3
         GROUP BY 1, 2, 3, 4, 5, 6"
    )))
    .bind(hour)
    .bind(next)
    .bind(end)
    .persistent(false)
    .execute(&mut *tx)
    .await
    .during(WHAT)
    .map(|r| r.rows_affected())
}

/// The summary as one pass over every matching link.
pub async fn summarize_scan(
    db: impl PgExecutor<'_>,
    filter: &LinkFilter,
    group_by: GroupBy,
) -> Result<Vec<SummaryRow>, Error> {
    let (mut q, having) = open_summary(filter);
    // Each (group, key) row as three rows, one per state.
    let state_rows = [LinkState::Active, LinkState::Expired, LinkState::Revoked]
        .map(|s| {
            let (links, latest) = per_state(s);
            format!("('{}', {links}, {latest})", s.as_str())
        })
        .join(", ");
    q.push(format!(
        "SELECT a.grp, s.state, s.links, s.latest
         FROM (SELECT l.{} AS grp, l.key_id,
                      count(*) FILTER (WHERE {LIVE}) AS live,
                      max(l.expires_at) FILTER (WHERE {LIVE}) AS live_latest,
                      count(*) FILTER (WHERE {EXPIRED}) AS expired,
                      max(l.expires_at) FILTER (WHERE {EXPIRED}) AS expired_latest,
                      count(*) FILTER (WHERE {MARKED}) AS marked,
                      max(l.expires_at) FILTER (WHERE {MARKED}) AS marked_latest
               FROM links l",
        group_by.column()
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
         JOIN (SELECT k.key_id, {KEY_DEAD} AS dead FROM signing_keys k) k
           ON k.key_id = a.key_id
         CROSS JOIN LATERAL (VALUES {state_rows}) s (state, links, latest)"
    ));
    close_summary(&mut q, &having);
    q.build_query_as()
        .fetch_all(db)
        .await
        .during("link_summary::summarize_scan")
}

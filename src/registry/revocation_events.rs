//! What a revocation did to each caller: one event per (revocation, caller)
//! whose links it killed, read by WatchRevocations from a cursor (`seq`).

use super::error::{During, Error};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Held by the transaction that writes events, to its commit: sequence
/// numbers are then handed out in commit order, so a reader that has seen
/// `seq` N never later finds a committed event below N.
const EVENTS_LOCK: (i32, i32) = (0x7074, 3);

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub seq: i64,
    pub revocation_id: Uuid,
    pub caller: String,
    pub signer: String,
    pub key_id: String,
    pub links: i64,
    pub quarantined: i64,
    pub earliest_expiry: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

/// What a deactivation did to one caller, as `record_deactivation` gathers it.
#[derive(Default)]
struct Impact {
    links: i64,
    /// The earliest expiry, once known.
    earliest: Option<DateTime<Utc>>,
    /// The hour of the caller's first roll-up cell from `cut` on.
    first_hour: Option<DateTime<Utc>>,
}

/// Records, in the transaction that deactivated `key_id` for revocation
/// `revocation_id`, one event per caller whose links died with it (those
/// unexpired at the deactivation, not marked by an older revocation), and
/// returns how many links died in all (the revocation's `links_revoked`).
///
/// Exact without a pass over the key's links (which took a second at a
/// million links, docs/BENCHMARKS.md):
/// * links expiring from `cut` (the start of the next hour, UTC, by the
///   registry's clock) on are counted per caller by the roll-up (0005's
///   `link_rollup` + `link_rollup_delta`): a live key's hourly cell merges into
///   its day only once its hour has passed, so every cell from `cut` on is
///   still its own hour's, and read in one statement, the roll-up is never
///   half folded;
/// * those expiring between the deactivation and `cut` are counted from
///   `links` by index range (at most the rest of this hour);
/// * a caller with none of those has its earliest expiry in the hour of its
///   first cell: one index range per such hour.
///
/// Nothing is added to the key meanwhile: the deactivation holds the key's
/// state-change lock, so no batch inserts links for it.
pub async fn record_deactivation(
    conn: &mut PgConnection,
    revocation_id: Uuid,
    key_id: &str,
    quarantined: &[Uuid],
) -> Result<i64, Error> {
    const DURING: &str = "revocation_events::record_deactivation";
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(EVENTS_LOCK.0)
        .bind(EVENTS_LOCK.1)
        .execute(&mut *conn)
        .await
        .during(DURING)?;
    let key: Option<(String, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT signer, deactivated_at,
                date_trunc('hour', clock_timestamp(), 'UTC') + interval '1 hour'
         FROM signing_keys WHERE key_id = $1 AND deactivated_at IS NOT NULL",
    )
    .bind(key_id)
    .fetch_optional(&mut *conn)
    .await
    .during(DURING)?;
    let Some((signer, dead_at, cut)) = key else {
        return Ok(0);
    };
    let mut impact: BTreeMap<String, Impact> = BTreeMap::new();
    let near: Vec<(String, i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT caller, count(*), min(expires_at) FROM links
         WHERE key_id = $1 AND revocation_id IS NULL AND expires_at > $2 AND expires_at < $3
         GROUP BY caller",
    )
    .bind(key_id)
    .bind(dead_at)
    .bind(cut)
    .fetch_all(&mut *conn)
    .await
    .during(DURING)?;
    for (caller, links, earliest) in near {
        impact.insert(
            caller,
            Impact {
                links,
                earliest: Some(earliest),
                first_hour: None,
            },
        );
    }
    let far: Vec<(String, i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT caller, sum(links)::bigint, min(expires_hour)
         FROM (SELECT caller, expires_hour, links FROM link_rollup
               WHERE key_id = $1 AND NOT marked AND expires_hour >= $2
               UNION ALL
               SELECT caller, expires_hour, links FROM link_rollup_delta
               WHERE key_id = $1 AND NOT marked AND expires_hour >= $2) c
         GROUP BY caller",
    )
    .bind(key_id)
    .bind(cut)
    .fetch_all(&mut *conn)
    .await
    .during(DURING)?;
    for (caller, links, first_hour) in far {
        let e = impact.entry(caller).or_default();
        e.links += links;
        e.first_hour = Some(first_hour);
    }
    // The earliest expiry of callers with no link before `cut`, per first hour.
    let mut by_hour: BTreeMap<DateTime<Utc>, Vec<String>> = BTreeMap::new();
    for (caller, i) in &impact {
        if let (None, Some(hour)) = (i.earliest, i.first_hour) {
            by_hour.entry(hour).or_default().push(caller.clone());
        }
    }
    for (hour, callers) in by_hour {
        let firsts: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT caller, min(expires_at) FROM links
             WHERE key_id = $1 AND revocation_id IS NULL
               AND expires_at >= $2 AND expires_at < $2 + interval '1 hour'
               AND caller = ANY ($3)
             GROUP BY caller",
        )
        .bind(key_id)
        .bind(hour)
        .bind(&callers)
        .fetch_all(&mut *conn)
        .await
        .during(DURING)?;
        for (caller, earliest) in firsts {
            if let Some(e) = impact.get_mut(&caller) {
                e.earliest = Some(earliest);
            }
        }
    }
    let mut callers = Vec::with_capacity(impact.len());
    let mut links = Vec::with_capacity(impact.len());
    let mut earliest = Vec::with_capacity(impact.len());
    for (
        caller,
        Impact {
            links: n,
            earliest: first,
            ..
        },
    ) in impact
    {
        // The roll-up and the links disagree only if one is wrong: refuse
        // (the step is retried) rather than record a wrong event.
        let first = first.ok_or_else(|| {
            Error::new(
                DURING,
                sqlx::Error::Protocol(format!(
                    "the roll-up counts {n} links of key {key_id} for caller {caller} that `links` does not hold"
                )),
            )
        })?;
        callers.push(caller);
        links.push(n);
        earliest.push(first);
    }
    sqlx::query(
        "INSERT INTO revocation_events (revocation_id, caller, signer, key_id, links,
                                        quarantined, earliest_expiry)
         SELECT $1, i.caller, $3, $2, i.links,
                (SELECT count(*) FROM links l
                 WHERE l.id = ANY ($4) AND l.key_id = $2 AND l.caller = i.caller
                   AND l.expires_at > $8 AND l.revocation_id IS NULL),
                i.earliest
         FROM unnest($5::text[], $6::bigint[], $7::timestamptz[]) AS i (caller, links, earliest)
         ON CONFLICT ON CONSTRAINT revocation_events_once_per_caller DO NOTHING",
    )
    .bind(revocation_id)
    .bind(key_id)
    .bind(&signer)
    .bind(quarantined)
    .bind(&callers)
    .bind(&links)
    .bind(&earliest)
    .bind(dead_at)
    .execute(&mut *conn)
    .await
    .during(DURING)?;
    Ok(links.iter().sum())
}

/// Up to `limit` events after `after_seq`, oldest first: `caller`'s, or
/// everyone's if `None`.
pub async fn after(
    db: impl PgExecutor<'_>,
    caller: Option<&str>,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<EventRow>, Error> {
    sqlx::query_as(
        "SELECT seq, revocation_id, caller, signer, key_id, links, quarantined, earliest_expiry, at
         FROM revocation_events
         WHERE seq > $2 AND ($1::text IS NULL OR caller = $1)
         ORDER BY seq LIMIT $3",
    )
    .bind(caller)
    .bind(after_seq)
    .bind(limit)
    .fetch_all(db)
    .await
    .during("revocation_events::after")
}

/// The latest sequence number (0 if none): where a watch "from now" starts.
pub async fn latest(db: impl PgExecutor<'_>) -> Result<i64, Error> {
    sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM revocation_events")
        .fetch_one(db)
        .await
        .during("revocation_events::latest")
}

/// Deletes the oldest events, those through the last one recorded before
/// `before` (a prefix in `seq` order, so a cursor is either before every
/// retained event or among them), and remembers how far (`pruned_through`).
/// Returns how many went.
pub async fn prune(db: impl PgExecutor<'_>, before: DateTime<Utc>) -> Result<u64, Error> {
    // Writers hand out `seq` in commit order (EVENTS_LOCK): one committing
    // later gets a larger seq than any this statement sees.
    let gone: i64 = sqlx::query_scalar(
        "WITH last AS (SELECT max(seq) AS seq FROM revocation_events WHERE at < $1),
         gone AS (DELETE FROM revocation_events WHERE seq <= (SELECT seq FROM last) RETURNING 1),
         mark AS (UPDATE revocation_events_pruned
                  SET through_seq = greatest(through_seq, (SELECT seq FROM last))
                  WHERE (SELECT seq FROM last) IS NOT NULL)
         SELECT count(*) FROM gone",
    )
    .bind(before)
    .fetch_one(db)
    .await
    .during("revocation_events::prune")?;
    Ok(gone as u64)
}

/// The last sequence number retention deleted through (0: none): a cursor
/// before it would miss events.
pub async fn pruned_through(db: impl PgExecutor<'_>) -> Result<i64, Error> {
    sqlx::query_scalar("SELECT through_seq FROM revocation_events_pruned")
        .fetch_one(db)
        .await
        .during("revocation_events::pruned_through")
}

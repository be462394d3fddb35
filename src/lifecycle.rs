//! The registry's lifecycle: time partitions created ahead of need, and
//! retention that drops whole partitions, never rows (docs/ARCHITECTURE.md,
//! "Lifecycle"); and IssueLink's request ids forgotten once their link expired. `step` is what the maintenance loop runs every tick, and
//! `prepare` what `presignd migrate` and startup run; tests call both with a
//! clock of their choosing.

use crate::registry::partitions::{self, Dropped, Table};
use crate::registry::{self, Error};
use chrono::{DateTime, Days, Months, NaiveDate, Timelike, Utc};
use sqlx::{PgConnection, PgPool};
use std::fmt;
use std::str::FromStr;

/// Days of link partitions kept ready past today: a link lives at most 7
/// days, so a week more of margin lets the maintenance fail for a week
/// before an insert lands in `links_default`.
pub const LINK_DAYS_AHEAD: u64 = 14;
/// The longest a link lives (0010's `links_live_at_most_7_days`).
const MAX_LINK_DAYS: u32 = 7;
/// Months of audit partitions kept ready past this one.
pub const AUDIT_MONTHS_AHEAD: u32 = 3;
/// The shortest audit retention `--audit-retention-days` accepts.
pub const MIN_AUDIT_RETENTION_DAYS: u32 = 90;
/// How long partition DDL waits for its lock before giving up until the next
/// tick (registry/partitions.rs): IssueLink's inserts queue behind a waiting
/// drop, so this bounds what a drop can cost them.
pub const LOCK_TIMEOUT_MS: u64 = 200;

/// How long rows are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// A link partition goes once every link in it expired more than this
    /// many days ago; 0 keeps every link.
    pub link_days: u32,
    /// An audit month goes once it ended more than this many days ago.
    pub audit_days: u32,
    /// When partitions may be dropped (any hour unless `with_drop_hours`).
    pub drop_hours: DropHours,
}

impl Retention {
    /// Refuses an audit retention under `MIN_AUDIT_RETENTION_DAYS`. Partitions
    /// may be dropped at any hour.
    pub fn new(link_days: u32, audit_days: u32) -> anyhow::Result<Self> {
        if audit_days < MIN_AUDIT_RETENTION_DAYS {
            anyhow::bail!(
                "--audit-retention-days is {audit_days}: it must be at least {MIN_AUDIT_RETENTION_DAYS} \
                 (the audit trail is what an incident review reads; keep at least a quarter)"
            );
        }
        Ok(Self {
            link_days,
            audit_days,
            drop_hours: DropHours::ANY,
        })
    }

    /// Partitions are dropped only in `hours`.
    pub fn with_drop_hours(self, hours: DropHours) -> Self {
        Self {
            drop_hours: hours,
            ..self
        }
    }
}

/// The hours of the day (UTC) in which retention may drop partitions:
/// `START-END`, from START:00 up to END:00, past midnight when START is the
/// later hour (`22-4`: 22:00 to 04:00); `0-24` is any hour. A day's drop
/// releases its files in one commit, and on the volumes measured IssueLink's
/// p99 rose for a few seconds after it (docs/BENCHMARKS.md, DEPLOY.md "The
/// registry's disks"): operators put it in their quietest hours. Outside them
/// a partition past retention simply waits; everything else the maintenance
/// does still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropHours {
    start: u32,
    end: u32,
}

impl DropHours {
    /// Any hour.
    pub const ANY: Self = Self { start: 0, end: 24 };

    /// Whether a partition may be dropped at `now`.
    pub fn allows(self, now: DateTime<Utc>) -> bool {
        let hour = now.hour();
        if self.start < self.end {
            self.start <= hour && hour < self.end
        } else {
            hour >= self.start || hour < self.end
        }
    }
}

impl FromStr for DropHours {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let hour = |h: &str| h.trim().parse::<u32>().ok();
        let Some((start, end)) = s
            .split_once('-')
            .and_then(|(a, b)| Some((hour(a)?, hour(b)?)))
            .filter(|&(start, end)| start <= 23 && end <= 24)
        else {
            return Err(format!(
                "{s:?} is not START-END in whole UTC hours, START 0-23 and END 0-24: \
                 e.g. 2-5 (02:00 to 05:00 UTC), 22-4 (past midnight) or 0-24 (any hour)"
            ));
        };
        if start == end {
            return Err(format!(
                "{s:?} is an empty window: partitions would never be dropped (0-24 is any hour)"
            ));
        }
        Ok(Self { start, end })
    }
}

impl fmt::Display for DropHours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// What one run created and dropped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub created: Vec<String>,
    pub dropped: Vec<Dropped>,
    /// DDL that did not get its lock in time (retried next run).
    pub deferred: usize,
    /// Request ids forgotten because their link expired (`step` only).
    pub request_ids_forgotten: u64,
    /// WatchRevocations events deleted by retention (`step` only).
    pub revocation_events_pruned: u64,
}

/// Creates the partitions `now` needs: link days from today through
/// `LINK_DAYS_AHEAD` days ahead, the days of any link in `links_default`
/// (which moves it there), audit months through `AUDIT_MONTHS_AHEAD` ahead.
/// Serialized across replicas; a run that finds another one going does nothing.
pub async fn prepare(pool: &PgPool, now: DateTime<Utc>) -> Result<Report, Error> {
    run(pool, now, None).await
}

/// The maintenance loop's `step`, by the registry's clock: a machine whose
/// clock jumped ahead would otherwise drop partitions and audit months still
/// within retention, irreversibly (the request ids' expiry already goes by
/// the registry's). `host_now`, this machine's clock, only to warn when the
/// two differ by more than `CLOCK_SKEW_WARNING`.
pub async fn tick(
    pool: &PgPool,
    host_now: DateTime<Utc>,
    retention: Retention,
) -> Result<Report, Error> {
    let now = partitions::clock(pool).await?;
    let skew = (host_now - now).abs();
    if skew > CLOCK_SKEW_WARNING {
        tracing::warn!(host = %host_now, registry = %now, skew_secs = skew.num_seconds(),
            "this machine's clock differs from the registry's: partitions are created and dropped by the registry's; fix this machine's time (links are signed by it)");
    }
    step(pool, now, retention).await
}

/// How far this machine's clock may drift from the registry's before `tick`
/// says so.
pub const CLOCK_SKEW_WARNING: chrono::TimeDelta = chrono::TimeDelta::minutes(1);

/// `prepare`, then drops what `retention` no longer keeps (partitions only
/// when `now` is in its drop hours): the link
/// partitions whose every link expired more than `link_days` ago, the
/// revocation events older than `link_days` + 7 (every link they counted
/// expired more than `link_days` ago), the audit months that ended more than
/// `audit_days` ago; and forgets the request ids
/// whose link expired (by the registry's clock, not `now`: they bind nothing
/// any more, whatever the retention).
pub async fn step(
    pool: &PgPool,
    now: DateTime<Utc>,
    retention: Retention,
) -> Result<Report, Error> {
    run(pool, now, Some(retention)).await
}

fn days_before(now: DateTime<Utc>, days: u32) -> DateTime<Utc> {
    now.checked_sub_days(Days::new(days.into()))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// One run on one connection holding the maintenance session lock.
async fn run(
    pool: &PgPool,
    now: DateTime<Utc>,
    retention: Option<Retention>,
) -> Result<Report, Error> {
    let mut conn = registry::acquire(pool).await?;
    let mut report = Report::default();
    if !partitions::try_lock(&mut conn).await? {
        return Ok(report);
    }
    let done = async {
        prepare_on(&mut conn, now, &mut report).await?;
        if let Some(r) = retention {
            let drops = r.drop_hours.allows(now);
            if r.link_days > 0 {
                if drops {
                    let cutoff = days_before(now, r.link_days);
                    drop_before(&mut conn, Table::Links, cutoff, now, &mut report).await?;
                }
                // Every link an event counted expires within MAX_LINK_DAYS
                // of it: the event goes with the last of them.
                let cutoff = days_before(now, r.link_days.saturating_add(MAX_LINK_DAYS));
                report.revocation_events_pruned =
                    registry::revocation_events::prune(&mut *conn, cutoff).await?;
            }
            if drops {
                let cutoff = days_before(now, r.audit_days);
                drop_before(&mut conn, Table::Audit, cutoff, now, &mut report).await?;
            }
            report.request_ids_forgotten =
                registry::link_requests::delete_expired(&mut *conn).await?;
        }
        Ok::<(), Error>(())
    }
    .await;
    let unlocked = partitions::unlock(&mut conn).await;
    if unlocked.is_err() {
        // Never hand a connection holding the lock back to the pool.
        conn.detach();
    }
    done.and(unlocked).map(|()| report)
}

async fn prepare_on(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    report: &mut Report,
) -> Result<(), Error> {
    let today = Table::Links.period_of(now);
    let mut days: Vec<NaiveDate> = (0..=LINK_DAYS_AHEAD)
        .filter_map(|n| today.checked_add_days(Days::new(n)))
        .collect();
    days.extend(partitions::periods_in_default(conn, Table::Links).await?);
    let month = Table::Audit.period_of(now);
    let months: Vec<NaiveDate> = (0..=AUDIT_MONTHS_AHEAD)
        .filter_map(|n| month.checked_add_months(Months::new(n)))
        .collect();
    for (table, starts) in [(Table::Links, days), (Table::Audit, months)] {
        let existing = partitions::list(conn, table).await?;
        let covered = |d: NaiveDate| {
            existing.iter().any(|p| {
                table
                    .range_of(p)
                    .is_some_and(|(lo, hi)| lo.is_none_or(|lo| lo <= d) && d < hi)
            })
        };
        let mut starts = starts;
        starts.sort();
        starts.dedup();
        for start in starts.into_iter().filter(|&d| !covered(d)) {
            if partitions::create(conn, table, start, LOCK_TIMEOUT_MS).await? {
                report.created.push(table.partition_name(start));
            } else {
                report.deferred += 1;
            }
        }
    }
    Ok(())
}

/// Drops every partition of `table` whose rows all fall before `cutoff`
/// (its range ends at or before it): for links, empties it, then drops the
/// emptied tables (`partitions::drop`, `partitions::drop_retired`).
async fn drop_before(
    conn: &mut PgConnection,
    table: Table,
    cutoff: DateTime<Utc>,
    now: DateTime<Utc>,
    report: &mut Report,
) -> Result<(), Error> {
    for name in partitions::list(conn, table).await? {
        let Some((_, end)) = table.range_of(&name) else {
            continue;
        };
        if end.and_hms_opt(0, 0, 0).expect("midnight").and_utc() > cutoff {
            continue;
        }
        match partitions::drop(conn, table, &name, LOCK_TIMEOUT_MS, now).await? {
            Some(dropped) => {
                tracing::info!(
                    partition = name,
                    rows = dropped.rows,
                    "retention dropped a partition"
                );
                report.dropped.push(dropped);
            }
            None => report.deferred += 1,
        }
    }
    if table == Table::Links {
        // The emptied partitions' tables, and any a stopped run left.
        report.deferred += partitions::drop_retired(conn, table, LOCK_TIMEOUT_MS).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn allowed(hours: &str) -> Vec<u32> {
        let hours: DropHours = hours.parse().unwrap();
        (0..24)
            .filter(|&h| {
                [0, 59]
                    .iter()
                    .all(|&m| hours.allows(Utc.with_ymd_and_hms(2026, 12, 1, h, m, 59).unwrap()))
            })
            .collect()
    }

    #[test]
    fn drop_hours_are_start_up_to_end_utc_wrapping_past_midnight() {
        assert_eq!(allowed("2-5"), [2, 3, 4]);
        assert_eq!(allowed("22-4"), [0, 1, 2, 3, 22, 23]);
        assert_eq!(allowed("22-0"), [22, 23]);
        assert_eq!(allowed("23-24"), [23]);
        assert_eq!(allowed("0-24"), (0..24).collect::<Vec<_>>());
        assert_eq!(allowed(" 0 - 24 "), (0..24).collect::<Vec<_>>());
        assert_eq!("0-24".parse::<DropHours>().unwrap(), DropHours::ANY);
        for bad in [
            "", "5", "5-", "-5", "24-3", "3-25", "-1-3", "x-3", "5-5", "0-0",
        ] {
            assert!(bad.parse::<DropHours>().is_err(), "{bad:?}");
        }
    }
}

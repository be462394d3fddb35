//! Time partitions (migrations 0011, 0012): `links` has one partition per UTC
//! day of `expires_at`, `audit_events` one per UTC month of `at`. Names carry
//! the range: `links_p20261128` is [2026-11-28, 2026-11-29),
//! `links_before_20261129` everything before 2026-11-29 (the table as it was
//! before the upgrade); likewise `audit_events_p202611` and
//! `audit_events_before_202612`. The `*_default` partitions are safety nets.
//!
//! DDL runs with a short `lock_timeout`: a partition is created with CREATE
//! TABLE LIKE + ATTACH PARTITION (SHARE UPDATE EXCLUSIVE on the parent, which
//! inserts and reads do not wait for), and a link partition is emptied first
//! and its empty table dropped after (`drop`, `drop_retired`), so the parent
//! is locked only for a catalog change; if a step cannot get its lock at once
//! (a long read holds the table), it gives up and is tried again later,
//! rather than queueing IssueLink's inserts behind it.

use super::audit::{self, AuditRow};
use super::error::{During, Error};
use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use sqlx::{Acquire, AssertSqlSafe, PgConnection, Postgres, Transaction};

/// The two partitioned tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `links`, by day of expires_at.
    Links,
    /// `audit_events`, by month of at.
    Audit,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Self::Links => "links",
            Self::Audit => "audit_events",
        }
    }

    fn column(self) -> &'static str {
        match self {
            Self::Links => "expires_at",
            Self::Audit => "at",
        }
    }

    fn date_format(self) -> &'static str {
        match self {
            Self::Links => "%Y%m%d",
            Self::Audit => "%Y%m",
        }
    }

    /// The partition holding [start, next(start)).
    pub fn partition_name(self, start: NaiveDate) -> String {
        format!("{}_p{}", self.name(), start.format(self.date_format()))
    }

    /// The start of the period after the one starting at `start`.
    pub fn next(self, start: NaiveDate) -> NaiveDate {
        match self {
            Self::Links => start.succ_opt().expect("a date before the year 262143"),
            Self::Audit => start + Months::new(1),
        }
    }

    /// The start of the period holding `t`.
    pub fn period_of(self, t: DateTime<Utc>) -> NaiveDate {
        let day = t.date_naive();
        match self {
            Self::Links => day,
            Self::Audit => day.with_day(1).expect("day 1 exists"),
        }
    }

    /// The range a partition holds, from its name: (start, end), start None
    /// for `_before_` (MINVALUE). None for the default partition or a name
    /// that is not ours.
    pub fn range_of(self, partition: &str) -> Option<(Option<NaiveDate>, NaiveDate)> {
        let parse = |s: &str| match self {
            Self::Links => NaiveDate::parse_from_str(s, "%Y%m%d").ok(),
            Self::Audit => NaiveDate::parse_from_str(&format!("{s}01"), "%Y%m%d").ok(),
        };
        let rest = partition.strip_prefix(self.name())?;
        if let Some(d) = rest.strip_prefix("_before_") {
            return Some((None, parse(d)?));
        }
        let start = parse(rest.strip_prefix("_p")?)?;
        Some((Some(start), self.next(start)))
    }
}

/// The instant a period starting on `d` starts: its midnight, UTC.
pub(super) fn utc(d: NaiveDate) -> DateTime<Utc> {
    d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc()
}

/// The partitions of `table`, by name.
pub async fn list(conn: &mut PgConnection, table: Table) -> Result<Vec<String>, Error> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = $1::regclass ORDER BY 1",
    )
    .bind(table.name())
    .fetch_all(conn)
    .await
    .during("partitions::list")
}

/// The periods of the rows in `links_default` (links no partition took):
/// creating their partitions moves them there.
pub async fn periods_in_default(
    conn: &mut PgConnection,
    table: Table,
) -> Result<Vec<NaiveDate>, Error> {
    let unit = match table {
        Table::Links => "day",
        Table::Audit => "month",
    };
    let rows: Vec<DateTime<Utc>> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT DISTINCT date_trunc('{unit}', {}, 'UTC') FROM {}_default",
        table.column(),
        table.name()
    )))
    .fetch_all(conn)
    .await
    .during("partitions::periods_in_default")?;
    Ok(rows.into_iter().map(|t| t.date_naive()).collect())
}

/// Creates the partition of the period starting at `start`, moving into it
/// the default partition's rows of that period (links only: audit rows cannot
/// be moved, see 0012; an audit month the default already holds rows of is
/// not created). False if a lock was not granted within `lock_timeout` or the
/// audit default holds rows of the month; the caller tries again later.
pub async fn create(
    conn: &mut PgConnection,
    table: Table,
    start: NaiveDate,
    lock_timeout_ms: u64,
) -> Result<bool, Error> {
    const WHAT: &str = "partitions::create";
    let (parent, column) = (table.name(), table.column());
    let name = table.partition_name(start);
    let (lo, hi) = (utc(start), utc(table.next(start)));
    let (lo_sql, hi_sql) = (lo.to_rfc3339(), hi.to_rfc3339());
    let mut tx = conn.begin().await.during(WHAT)?;
    set_lock_timeout(&mut tx, lock_timeout_ms).await?;
    let in_default: bool = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT EXISTS (SELECT 1 FROM {parent}_default WHERE {column} >= $1 AND {column} < $2)"
    )))
    .bind(lo)
    .bind(hi)
    .fetch_one(&mut *tx)
    .await
    .during(WHAT)?;
    if in_default && table == Table::Audit {
        tracing::warn!(
            partition = name,
            "audit_events_default holds rows of this month: it stays there (append-only)"
        );
        return Ok(false);
    }
    let mut ddl =
        format!("CREATE TABLE {name} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS);");
    if in_default {
        // Direct DML on partitions fires none of the parent's statement
        // triggers: the roll-up, which counts these links already, is untouched.
        ddl.push_str(&format!(
            "WITH moved AS (DELETE FROM {parent}_default
                            WHERE {column} >= '{lo_sql}' AND {column} < '{hi_sql}' RETURNING *)
             INSERT INTO {name} SELECT * FROM moved;"
        ));
    }
    ddl.push_str(&format!(
        "ALTER TABLE {parent} ATTACH PARTITION {name} FOR VALUES FROM ('{lo_sql}') TO ('{hi_sql}');"
    ));
    if table == Table::Audit {
        ddl.push_str(&format!(
            "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON {name}
             FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();"
        ));
    }
    match sqlx::raw_sql(AssertSqlSafe(ddl)).execute(&mut *tx).await {
        Ok(_) => {}
        Err(e) if is_lock_timeout(&e) => return Ok(false),
        Err(e) => return Err(e).during(WHAT),
    }
    tx.commit().await.during(WHAT)?;
    Ok(true)
}

/// What a drop removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub partition: String,
    pub rows: i64,
}

/// Drops a whole partition's rows and, in the same transaction, records it in
/// the audit trail; for links, also its roll-up cells: a cell settles into the
/// day its links expire (`link_summary::fold`), so the cells of the days the
/// partition held are exactly its links (neither TRUNCATE of a partition nor
/// DROP fires the parent's triggers). None if a lock was not granted within
/// `lock_timeout` or the partition is gone. The audit row is dated `now` (the
/// maintenance run's clock).
///
/// A link partition goes in two steps, so `links` is locked only for an
/// instant. This transaction TRUNCATEs it (ACCESS EXCLUSIVE on that partition
/// alone, which inserts never touch: they route to the days still to come;
/// the commit unlinks its files) and renames it `links_retired_…`; then
/// `drop_retired` DROPs the empty table, which needs ACCESS EXCLUSIVE on
/// `links` (and `links_default`) but only for a catalog change. DETACH would
/// lock `links` as long and also make the partition's foreign keys its own,
/// adding (then, at the drop, removing) triggers on `signing_keys`, `signers`
/// and `revocations`, whose locks IssueLink's foreign-key checks wait for. If
/// the process stops between the steps, the next run's `drop_retired`
/// finishes. Audit months (append-only: no TRUNCATE) are dropped in one step.
pub async fn drop(
    conn: &mut PgConnection,
    table: Table,
    partition: &str,
    lock_timeout_ms: u64,
    now: DateTime<Utc>,
) -> Result<Option<Dropped>, Error> {
    const WHAT: &str = "partitions::drop";
    let Some((lo, hi)) = table.range_of(partition) else {
        return Ok(None);
    };
    let (lo, hi) = (lo.map(utc), utc(hi));
    let mut tx = conn.begin().await.during(WHAT)?;
    if table == Table::Links {
        // Folds and recounts wait for this transaction (the roll-up's lock);
        // taken before the table lock, as a recount inside an UPDATE of links
        // takes them in the other order and would deadlock (then lock_timeout
        // ends this one).
        sqlx::query("SELECT link_rollup_lock()")
            .execute(&mut *tx)
            .await
            .during(WHAT)?;
        // Cells merged by an older presignd ('-infinity', before 0011) mix
        // days: recount their keys so every cell belongs to one day.
        sqlx::query(
            "SELECT link_rollup_recount(ARRAY(
                 SELECT DISTINCT key_id FROM link_rollup WHERE expires_hour = '-infinity'))
             WHERE EXISTS (SELECT 1 FROM link_rollup WHERE expires_hour = '-infinity')",
        )
        .execute(&mut *tx)
        .await
        .during(WHAT)?;
    }
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(partition)
        .fetch_one(&mut *tx)
        .await
        .during(WHAT)?;
    if !exists {
        return Ok(None);
    }
    // A link partition's rows are counted from its roll-up cells (and, after
    // the lock, its deltas), which hold exactly its links: no pass over the
    // partition, whose millions of rows a count(*) would read (with parallel
    // workers, on the cores IssueLink's commits need) while writers run.
    // An audit month is counted; nothing is written to a partition this old.
    let mut rows: i64 = match table {
        Table::Links => delete_cells(&mut tx, "link_rollup", lo, hi).await?,
        Table::Audit => {
            sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {partition}")))
                .fetch_one(&mut *tx)
                .await
                .during(WHAT)?
        }
    };
    set_lock_timeout(&mut tx, lock_timeout_ms).await?;
    let ddl = match table {
        Table::Links => format!(
            "TRUNCATE {partition}; ALTER TABLE {partition} RENAME TO {}",
            retired_name(table, partition)
        ),
        Table::Audit => format!("DROP TABLE {partition}"),
    };
    match sqlx::raw_sql(AssertSqlSafe(ddl)).execute(&mut *tx).await {
        Ok(_) => {}
        Err(e) if is_lock_timeout(&e) => return Ok(None),
        Err(e) => return Err(e).during(WHAT),
    }
    if table == Table::Links {
        // After the lock: inserts that committed before it may have left deltas.
        rows += delete_cells(&mut tx, "link_rollup_delta", lo, hi).await?;
    }
    let range = |t: Option<DateTime<Utc>>| t.map_or("the beginning".into(), |t| t.to_rfc3339());
    audit::insert(
        &mut *tx,
        &AuditRow {
            id: uuid::Uuid::now_v7(),
            at: now,
            caller: Some("presignd".into()),
            peer: None,
            rpc: "presignd.maintenance/DropPartition".into(),
            target: partition.to_owned(),
            code: "OK".into(),
            message: format!(
                "retention dropped {rows} {} rows with {} from {} to {}",
                table.name(),
                table.column(),
                range(lo),
                hi.to_rfc3339()
            ),
            count: 1,
        },
    )
    .await?;
    tx.commit().await.during(WHAT)?;
    Ok(Some(Dropped {
        partition: partition.to_owned(),
        rows,
    }))
}

/// Deletes the cells of `table` (`link_rollup` or `link_rollup_delta`) whose
/// links expire in [`lo`, `hi`) and returns how many links they counted.
async fn delete_cells(
    tx: &mut Transaction<'_, Postgres>,
    table: &'static str,
    lo: Option<DateTime<Utc>>,
    hi: DateTime<Utc>,
) -> Result<i64, Error> {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "WITH gone AS (DELETE FROM {table}
                       WHERE expires_hour >= coalesce($1, '-infinity') AND expires_hour < $2
                       RETURNING links)
         SELECT coalesce(sum(links), 0)::bigint FROM gone"
    )))
    .bind(lo)
    .bind(hi)
    .fetch_one(&mut **tx)
    .await
    .during("partitions::drop")
}

/// The name a partition emptied by `drop` waits under for `drop_retired`.
fn retired_name(table: Table, partition: &str) -> String {
    let rest = partition
        .strip_prefix(table.name())
        .expect("a partition of the table");
    format!("{}_retired{rest}", table.name())
}

/// DROPs every partition of `table` that `drop` emptied (`…_retired_…`), each
/// in its own short transaction under `lock_timeout`, trying each up to three
/// times; returns how many are left for the next run. The table is empty, so
/// the drop is a catalog change: ACCESS EXCLUSIVE on the parent for a few
/// milliseconds, nothing on the tables its foreign keys reference (their
/// triggers belong to the parent's constraints). Also finishes what a run
/// stopped between the two steps left.
pub async fn drop_retired(
    conn: &mut PgConnection,
    table: Table,
    lock_timeout_ms: u64,
) -> Result<usize, Error> {
    const WHAT: &str = "partitions::drop_retired";
    let prefix = format!("{}_retired_", table.name());
    let mut left = 0;
    for name in list(conn, table).await? {
        if !name.starts_with(&prefix) {
            continue;
        }
        let mut dropped = false;
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            let mut tx = conn.begin().await.during(WHAT)?;
            set_lock_timeout(&mut tx, lock_timeout_ms).await?;
            match sqlx::query(AssertSqlSafe(format!("DROP TABLE {name}")))
                .execute(&mut *tx)
                .await
            {
                Ok(_) => {}
                Err(e) if is_lock_timeout(&e) => continue,
                Err(e) => return Err(e).during(WHAT),
            }
            tx.commit().await.during(WHAT)?;
            dropped = true;
            break;
        }
        if !dropped {
            left += 1;
        }
    }
    Ok(left)
}

async fn set_lock_timeout(tx: &mut Transaction<'_, Postgres>, ms: u64) -> Result<(), Error> {
    sqlx::query(AssertSqlSafe(format!("SET LOCAL lock_timeout = '{ms}ms'")))
        .execute(&mut **tx)
        .await
        .during("partitions::set_lock_timeout")
        .map(|_| ())
}

/// 55P03 lock_not_available: `lock_timeout` passed.
fn is_lock_timeout(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "55P03")
}

/// The registry's clock: what retention and the partitions ahead are
/// judged by, whatever the clock of the machine asking.
pub async fn clock(db: impl sqlx::PgExecutor<'_>) -> Result<DateTime<Utc>, Error> {
    sqlx::query_scalar("SELECT now()")
        .fetch_one(db)
        .await
        .during("partitions::clock")
}

/// The session lock (class 0x7074, id 2) one maintenance run holds, so
/// replicas do not create or drop the same partitions at once. False if
/// another run holds it.
pub async fn try_lock(conn: &mut PgConnection) -> Result<bool, Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock(28788, 2)")
        .fetch_one(conn)
        .await
        .during("partitions::try_lock")
}

pub async fn unlock(conn: &mut PgConnection) -> Result<(), Error> {
    sqlx::query("SELECT pg_advisory_unlock(28788, 2)")
        .execute(conn)
        .await
        .during("partitions::unlock")
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn a_partition_name_says_its_range() {
        let t = Table::Links;
        assert_eq!(t.partition_name(d(2026, 11, 28)), "links_p20261128");
        assert_eq!(
            t.range_of("links_p20261231"),
            Some((Some(d(2026, 12, 31)), d(2027, 1, 1)))
        );
        assert_eq!(
            t.range_of("links_before_20261129"),
            Some((None, d(2026, 11, 29)))
        );
        assert_eq!(t.range_of("links_default"), None);
        let a = Table::Audit;
        assert_eq!(a.partition_name(d(2026, 12, 1)), "audit_events_p202612");
        assert_eq!(
            a.range_of("audit_events_p202612"),
            Some((Some(d(2026, 12, 1)), d(2027, 1, 1)))
        );
        assert_eq!(
            a.range_of("audit_events_before_202612"),
            Some((None, d(2026, 12, 1)))
        );
        assert_eq!(a.range_of("links_p20261128"), None);
    }
}

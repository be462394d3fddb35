//! The blast radius of deactivating one signing key: its outstanding links (signed
//! by the key, not expired, the key not yet deactivated), counted and described.
//! LookupLink shows it next to a link; PlanRevocation and RotateKey report it.
//!
//! It reads the `(key_id, expires_at)` index range of the key once (GROUPING SETS
//! aggregate every breakdown in the same pass), so the cost grows with the key's
//! outstanding links, not with the whole table.

use super::error::{During, Error};
use crate::domain::KeyState;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// How many buckets, callers and sample links the blast radius names.
pub const TOP_N: usize = 5;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlastRadius {
    pub key_id: String,
    pub signer: String,
    /// The key's state now: for an `inactive` or `deleted` key the outstanding
    /// links are already dead, and revoking it again breaks nothing new.
    pub key_state: String,
    pub outstanding_links: i64,
    pub earliest_expiry: Option<DateTime<Utc>>,
    pub latest_expiry: Option<DateTime<Utc>>,
    /// At most `TOP_N`, most links first (ties by name).
    pub top_buckets: Vec<(String, i64)>,
    pub top_callers: Vec<(String, i64)>,
    /// Every method with outstanding links, most links first.
    pub per_method: Vec<(String, i64)>,
    /// Up to `TOP_N` outstanding links, those expiring last first.
    pub sample_link_ids: Vec<Uuid>,
    /// The database's clock when the statement ran.
    pub computed_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct Part {
    /// GROUPING(bucket, caller, method): 7 for the total, 3 per bucket, 5 per
    /// caller, 6 per method (a set bit is a column not grouped by).
    grouping: Option<i32>,
    bucket: Option<String>,
    caller: Option<String>,
    method: Option<String>,
    n: Option<i64>,
    earliest: Option<DateTime<Utc>>,
    latest: Option<DateTime<Utc>>,
}

/// Outstanding as of $2 (the database's clock when the key was read).
const OUTSTANDING: &str = "key_id = $1 AND expires_at > $2 AND revocation_id IS NULL";

/// Every breakdown in one pass: GROUPING SETS over the key's index range. Its own
/// statement (not a LATERAL join) so PostgreSQL can read it with parallel workers.
fn aggregate_sql() -> String {
    format!(
        "SELECT GROUPING(bucket, caller, method) AS grouping, bucket, caller, method,
                count(*) AS n, min(expires_at) AS earliest, max(expires_at) AS latest
         FROM links WHERE {OUTSTANDING}
         GROUP BY GROUPING SETS ((), (bucket), (caller), (method))"
    )
}

/// The blast radius of deactivating `key_id` now; `None` if no such key.
///
/// Outstanding means `expires_at > now()`, not marked by a revocation, and the
/// key not deactivated: an inactive or deleted key has none left to break. Run
/// it in a REPEATABLE READ transaction for one snapshot across its three
/// statements; to make the count exact with respect to concurrent issuance, in
/// the transaction that holds the key's issuance lock (`keys::lock_for_state_change`).
pub async fn blast_radius(
    conn: &mut sqlx::PgConnection,
    key_id: &str,
) -> Result<Option<BlastRadius>, Error> {
    let key: Option<(String, KeyState, DateTime<Utc>)> =
        sqlx::query_as("SELECT signer, state, now() FROM signing_keys WHERE key_id = $1")
            .bind(key_id)
            .fetch_optional(&mut *conn)
            .await
            .during("blast_radius::blast_radius")?;
    let Some((signer, key_state, computed_at)) = key else {
        return Ok(None);
    };
    let mut radius = BlastRadius {
        key_id: key_id.to_owned(),
        signer,
        key_state: key_state.as_str().to_owned(),
        computed_at,
        ..Default::default()
    };
    if key_state.is_dead() {
        return Ok(Some(radius));
    }
    let parts: Vec<Part> = sqlx::query_as(sqlx::AssertSqlSafe(aggregate_sql()))
        .bind(key_id)
        .bind(computed_at)
        .fetch_all(&mut *conn)
        .await
        .during("blast_radius::blast_radius")?;
    radius.sample_link_ids = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM links WHERE {OUTSTANDING} ORDER BY expires_at DESC, id DESC LIMIT {TOP_N}"
    )))
    .bind(key_id)
    .bind(computed_at)
    .fetch_all(&mut *conn)
    .await
    .during("blast_radius::blast_radius")?;
    for p in parts {
        let n = p.n.unwrap_or(0);
        match (p.grouping, p.bucket, p.caller, p.method) {
            (Some(7), ..) => {
                radius.outstanding_links = n;
                radius.earliest_expiry = p.earliest;
                radius.latest_expiry = p.latest;
            }
            (Some(3), Some(bucket), ..) => radius.top_buckets.push((bucket, n)),
            (Some(5), _, Some(caller), _) => radius.top_callers.push((caller, n)),
            (Some(6), _, _, Some(method)) => radius.per_method.push((method, n)),
            _ => {}
        }
    }
    for list in [
        &mut radius.top_buckets,
        &mut radius.top_callers,
        &mut radius.per_method,
    ] {
        list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    }
    radius.top_buckets.truncate(TOP_N);
    radius.top_callers.truncate(TOP_N);
    Ok(Some(radius))
}

/// The blast radius of `key_id` of `signer` (empty if the key is unknown), in
/// the caller's transaction.
pub async fn compute(
    conn: &mut sqlx::PgConnection,
    key_id: &str,
    signer: &str,
) -> Result<BlastRadius, Error> {
    Ok(blast_radius(&mut *conn, key_id)
        .await?
        .unwrap_or_else(|| BlastRadius {
            key_id: key_id.to_owned(),
            signer: signer.to_owned(),
            computed_at: Utc::now(),
            ..Default::default()
        }))
}

//! The blast radius of deactivating one signing key: its outstanding links (signed
//! by the key, not expired, the key not yet deactivated), counted and described.
//! LookupLink shows it next to a link; PlanRevocation and RotateKey report it.
//!
//! One statement, so one snapshot: the count, the breakdowns and the samples always
//! agree with each other. It reads the `(key_id, expires_at)` index range of the
//! key once (GROUPING SETS aggregate every breakdown in the same pass), so the
//! cost grows with the key's outstanding links, not with the whole table.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
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
    signer: String,
    key_state: String,
    computed_at: DateTime<Utc>,
    samples: Vec<Uuid>,
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

const SQL: &str = "
SELECT k.signer, k.state AS key_state, now() AS computed_at,
       ARRAY(SELECT s.id FROM links s
             WHERE s.key_id = k.key_id AND s.expires_at > now() AND s.revocation_id IS NULL
               AND k.state IN ('pending', 'active', 'retired')
             ORDER BY s.expires_at DESC, s.id DESC LIMIT 5) AS samples,
       a.grouping, a.bucket, a.caller, a.method, a.n, a.earliest, a.latest
FROM signing_keys k
LEFT JOIN LATERAL (
    SELECT GROUPING(l.bucket, l.caller, l.method) AS grouping,
           l.bucket, l.caller, l.method,
           count(*) AS n, min(l.expires_at) AS earliest, max(l.expires_at) AS latest
    FROM links l
    WHERE l.key_id = k.key_id AND l.expires_at > now() AND l.revocation_id IS NULL
      AND k.state IN ('pending', 'active', 'retired')
    GROUP BY GROUPING SETS ((), (l.bucket), (l.caller), (l.method))
) a ON true
WHERE k.key_id = $1";

/// The blast radius of deactivating `key_id` now; `None` if no such key.
///
/// Outstanding means `expires_at > now()`, not marked by a revocation, and the
/// key not deactivated: an inactive or deleted key has none left to break. To make the count exact with respect to
/// concurrent issuance, run it in the transaction that locks the key's row
/// (issuance inserts under a FOR SHARE lock of that row).
pub async fn blast_radius(
    db: impl PgExecutor<'_>,
    key_id: &str,
) -> Result<Option<BlastRadius>, sqlx::Error> {
    let parts: Vec<Part> = sqlx::query_as(SQL).bind(key_id).fetch_all(db).await?;
    let Some(first) = parts.first() else {
        return Ok(None);
    };
    let mut radius = BlastRadius {
        key_id: key_id.to_owned(),
        signer: first.signer.clone(),
        key_state: first.key_state.clone(),
        outstanding_links: 0,
        earliest_expiry: None,
        latest_expiry: None,
        top_buckets: Vec::new(),
        top_callers: Vec::new(),
        per_method: Vec::new(),
        sample_link_ids: first.samples.clone(),
        computed_at: first.computed_at,
    };
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
) -> Result<BlastRadius, sqlx::Error> {
    Ok(blast_radius(&mut *conn, key_id)
        .await?
        .unwrap_or_else(|| BlastRadius {
            key_id: key_id.to_owned(),
            signer: signer.to_owned(),
            computed_at: Utc::now(),
            ..Default::default()
        }))
}

//! Background upkeep, every `--maintenance-interval-secs`: retries revocations
//! left running by a retryable error, deactivates retired keys whose last link
//! expired (GRACEFUL rotations), folds the link roll-up, and runs the
//! registry's lifecycle (partitions ahead, retention: `lifecycle::step`).

use crate::keys::KeyManager;
use crate::lifecycle::{self, Retention};
use crate::registry;
use crate::revocation::Revocations;
use sqlx::PgPool;
use std::time::Duration;

pub(super) async fn run(
    pool: PgPool,
    keys: KeyManager,
    revocations: Revocations,
    interval: Duration,
    retention: Retention,
) {
    loop {
        tokio::time::sleep(interval).await;
        if let Err(e) = revocations.resume_all().await {
            tracing::warn!(error = %e, "resuming revocations");
        }
        if let Err(e) = keys.sweep_retired_keys().await {
            tracing::warn!(error = %e, "deactivating expired retired keys");
        }
        if let Err(e) = registry::link_summary::fold(&pool).await {
            tracing::warn!(error = %e, "folding the link roll-up");
        }
        if let Err(e) = lifecycle::step(&pool, chrono::Utc::now(), retention).await {
            tracing::warn!(error = %e, "creating partitions ahead, dropping expired ones");
        }
    }
}

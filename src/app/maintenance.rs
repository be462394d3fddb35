//! Background upkeep, every `--maintenance-interval-secs`: reconciles key
//! intents left unresolved (keys created and never recorded), retries revocations
//! left running by a retryable error (each with its own backoff) and reports
//! those still stuck (health detail, a metric), deactivates retired keys whose
//! last link expired (GRACEFUL rotations; one failure does not stop the
//! others), folds the link roll-up, and runs the registry's lifecycle
//! (partitions ahead, retention, request ids whose link expired:
//! `lifecycle::tick`, by the registry's clock), and aborts the multipart
//! uploads left open past their expiry (`issuance::abort_expired`). Beside
//! it, the blast-radius budgets' check (`keep_budgets`), woken by issuance
//! too.

use crate::domain::SignerName;
use crate::health::Readiness;
use crate::issuance;
use crate::keys::{KeyBudgets, KeyManager};
use crate::lifecycle::{self, Retention};
use crate::registry;
use crate::revocation::{Revocations, Stuck};
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::time::Duration;

pub(super) struct Upkeep {
    pub pool: PgPool,
    pub keys: KeyManager,
    pub revocations: Revocations,
    pub signers: Vec<SignerName>,
    pub readiness: Readiness,
    pub interval: Duration,
    pub retention: Retention,
}

pub(super) async fn run(u: Upkeep) {
    loop {
        tokio::time::sleep(u.interval).await;
        if let Err(e) = u.keys.reconcile_intents().await {
            tracing::warn!(error = %e, "reconciling key intents");
        }
        match u.revocations.resume_all().await {
            Ok(stuck) => report_stuck(&u.readiness, &u.signers, &stuck),
            Err(e) => tracing::warn!(error = %e, "resuming revocations"),
        }
        match u.keys.sweep_retired_keys().await {
            Ok(swept) if !swept.failed.is_empty() => {
                tracing::warn!(
                    failed = swept.failed.len(),
                    "some retired keys are still live; retried next time"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "deactivating expired retired keys"),
        }
        if let Err(e) = registry::link_summary::fold(&u.pool).await {
            tracing::warn!(error = %e, "folding the link roll-up");
        }
        if let Err(e) = lifecycle::tick(&u.pool, chrono::Utc::now(), u.retention).await {
            tracing::warn!(error = %e, "creating partitions ahead, dropping expired ones");
        }
        if let Err(e) = issuance::abort_expired(&u.pool, &u.keys, chrono::Utc::now()).await {
            tracing::warn!(error = %e, "aborting expired multipart uploads");
        }
    }
}

/// The blast-radius budgets' check (`Revocations::enforce_budgets`): every
/// `interval` (age budgets, and links other replicas issued) and whenever the
/// issuer has committed a twentieth of a signer's links budget since the last
/// one (`KeyBudgets::issued`), so a key's overshoot is bounded by what is
/// issued during one check and rotation, not during a whole interval. One
/// task: checks never overlap within a process (replicas: the rotation
/// expects the key it saw, so a key is rotated once).
pub(super) async fn keep_budgets(
    revocations: Revocations,
    budgets: KeyBudgets,
    interval: Duration,
) {
    if budgets.is_empty() {
        return;
    }
    loop {
        revocations
            .enforce_budgets(&budgets, chrono::Utc::now())
            .await;
        tokio::select! {
            _ = budgets.woken() => {}
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Names the stuck revocations in health answers and the metric.
pub(super) fn report_stuck(readiness: &Readiness, signers: &[SignerName], stuck: &[Stuck]) {
    let names: Vec<String> = signers.iter().map(|s| s.to_string()).collect();
    let stuck_signers: BTreeSet<String> = stuck.iter().map(|s| s.signer.clone()).collect();
    crate::metrics::set_stuck_revocations(&names, &stuck_signers);
    readiness.set_degraded((!stuck.is_empty()).then(|| {
        stuck
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    }));
}

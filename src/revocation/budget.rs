//! The blast-radius budget's check: for each budgeted signer, its active key's
//! outstanding links (counted up to twice the budget: the check costs about the
//! budget) and age; a key at a limit is rotated GRACEFUL, as RotateKey would,
//! expecting that key (so two replicas checking at once rotate once). The old
//! key keeps serving its links; the sweep deactivates it once they expired.
//! The rotation adopts the standby key the previous check made ready
//! (`KeyManager::prepare_standby`), so the old key stops signing within
//! milliseconds of the check, not after a key is created and probed.

use super::{RevocationError, Revocations, RotateRequest, Rotation};
use crate::domain::{KeyBudget, RotationMode, SignerName, Spent};
use crate::keys::KeyBudgets;
use crate::metrics;
use crate::registry::keys::{self, BudgetUse};
use chrono::{DateTime, Utc};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Who budget rotations are recorded as requested by.
pub const BUDGET_REQUESTER: &str = "presignd.maintenance/budget";

/// How long a signer whose budget rotation failed is left alone (the failed
/// revocation says why; an admin may rotate it by hand meanwhile).
const HOLD_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// What one check found for one signer.
#[derive(Debug)]
pub struct BudgetCheck {
    pub signer: String,
    pub key_id: String,
    pub outstanding: u64,
    pub age: Duration,
    /// The limit reached, and the revocation that rotated the key (None: a
    /// rotation of this key was already running or done elsewhere).
    pub rotated: Option<(Spent, Option<Uuid>)>,
}

impl Revocations {
    /// Checks every budgeted signer as of `now` (the maintenance loop's clock;
    /// tests pass a later one); one signer's failure does not stop the others.
    pub async fn enforce_budgets(
        &self,
        budgets: &KeyBudgets,
        now: DateTime<Utc>,
    ) -> Vec<BudgetCheck> {
        let mut checks = Vec::new();
        for (signer, budget) in budgets.iter() {
            if budgets.is_held(signer, Instant::now()) {
                continue;
            }
            match self.enforce_budget(budgets, signer, budget, now).await {
                Ok(Some(check)) => checks.push(check),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(signer, error = %e, "blast-radius budget: rotation failed; retried in a minute");
                    budgets.hold(signer, Instant::now() + HOLD_AFTER_FAILURE);
                }
            }
        }
        checks
    }

    async fn enforce_budget(
        &self,
        budgets: &KeyBudgets,
        signer: &str,
        budget: KeyBudget,
        now: DateTime<Utc>,
    ) -> Result<Option<BudgetCheck>, RevocationError> {
        let Some(key) = self.budget_use(signer, budget, now).await? else {
            // No active key: a rotation is giving it one.
            return Ok(None);
        };
        let age = age(&key, now);
        let outstanding = key.outstanding.max(0) as u64;
        let mut check = BudgetCheck {
            signer: signer.to_owned(),
            key_id: key.key_id.clone(),
            outstanding,
            age,
            rotated: None,
        };
        let Some(spent) = budget.spent(outstanding, age) else {
            budgets.prepare_standby(&self.keys, signer);
            return Ok(Some(check));
        };
        let request = RotateRequest {
            signer: SignerName::parse(signer)?,
            mode: RotationMode::Graceful,
            reason: format!("blast-radius budget: key {} {spent}", key.key_id),
            expected_key_id: Some(key.key_id.clone()),
            dry_run: false,
            requested_by: BUDGET_REQUESTER.to_owned(),
            // Nothing leaked: the rotation is routine.
            quarantine_link_ids: Vec::new(),
        };
        let id = match self.rotate(request, false).await {
            Ok(Rotation::Ran(row)) => Some(row.id),
            Ok(Rotation::DryRun { .. }) => None,
            // Another replica, or an admin, is rotating or has rotated it.
            Err(
                RevocationError::AlreadyRunning { .. }
                | RevocationError::ExpectedKeyMismatch { .. },
            ) => None,
            Err(e) => return Err(e),
        };
        tracing::info!(signer, key_id = %key.key_id, revocation_id = ?id, %spent, "blast-radius budget: key rotated");
        check.rotated = Some((spent, id));
        // The metric names the new key from now on; the next one is made ready.
        self.budget_use(signer, budget, now).await?;
        budgets.prepare_standby(&self.keys, signer);
        Ok(Some(check))
    }

    /// Reads the signer's active key's use and records its share (metric).
    async fn budget_use(
        &self,
        signer: &str,
        budget: KeyBudget,
        now: DateTime<Utc>,
    ) -> Result<Option<BudgetUse>, RevocationError> {
        let cap = budget.max_links.map_or(0, |m| m.saturating_mul(2));
        let key =
            keys::budget_use(&self.pool, signer, i64::try_from(cap).unwrap_or(i64::MAX)).await?;
        if let Some(key) = &key {
            let (links, age) = budget.share(key.outstanding.max(0) as u64, age(key, now));
            metrics::set_key_budget(signer, &key.key_id, links, age);
        }
        Ok(key)
    }
}

fn age(key: &BudgetUse, now: DateTime<Utc>) -> Duration {
    (now - key.activated_at).to_std().unwrap_or_default()
}

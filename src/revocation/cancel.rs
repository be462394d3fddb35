//! CancelRevocation: an admin abandons a revocation that cannot finish (the
//! backend stays down). Nothing is left half-done without a record: the
//! revocation says who cancelled it and why, an unused replacement key is
//! deleted (or, if the backend still refuses, stays `pending` and signs
//! nothing), and the answer lists the signer's keys live afterwards.

use super::rotate::validate_reason;
use super::{RevocationError, Revocations};
use crate::domain::RevocationState;
use crate::registry::keys::KeySummaryRow;
use crate::registry::revocations::{RevocationRow, StepRecord};
use crate::registry::{self, keys, revocations, signers};
use chrono::Utc;
use uuid::Uuid;

pub struct Cancelled {
    pub revocation: RevocationRow,
    /// The signer's keys still live at the backend: pending, active, retired.
    pub live_keys: Vec<KeySummaryRow>,
}

impl Revocations {
    /// Waits for a step in progress (the row lock), then stops the revocation.
    pub async fn cancel(
        &self,
        id: Uuid,
        reason: &str,
        cancelled_by: &str,
    ) -> Result<Cancelled, RevocationError> {
        let reason = validate_reason(reason)?;
        let mut tx = registry::begin(&self.pool).await?;
        let row = revocations::lock(&mut *tx, id)
            .await?
            .ok_or(RevocationError::NotFound(id))?;
        if row.state != RevocationState::Running {
            return Err(RevocationError::NotRunning {
                id,
                state: row.state,
            });
        }
        if let Some(new) = &row.new_key_id {
            self.keys.discard_pending(&mut tx, &row.signer, new).await?;
        }
        signers::set_paused(&mut *tx, &row.signer, false).await?;
        let now = Utc::now();
        let message = format!(
            "cancelled by {cancelled_by} at step {}: {reason}",
            row.next_step
        );
        let step = StepRecord {
            name: "cancelled".into(),
            started_at: now,
            finished_at: now,
            error: Some(message),
        };
        revocations::finish(&mut *tx, id, &step, RevocationState::Cancelled).await?;
        keys::notify_changed(&mut *tx, &row.signer).await?;
        registry::commit(tx).await?;
        self.keys.reload_signer(&row.signer).await?;
        tracing::warn!(revocation_id = %id, signer = %row.signer, cancelled_by, "revocation cancelled");
        let live_keys = keys::list_with_outstanding(&self.pool, Some(&row.signer))
            .await?
            .into_iter()
            .filter(|k| !k.state.is_dead())
            .collect();
        crate::metrics::record_revocation(row.mode.as_str(), "cancelled", &row.signer);
        Ok(Cancelled {
            revocation: self.get(id).await?,
            live_keys,
        })
    }
}

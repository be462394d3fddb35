//! CancelRevocation: an admin abandons a revocation that cannot finish (the
//! backend stays down). Nothing is left half-done without a record: the
//! revocation says who cancelled it and why, an unused replacement key is
//! deleted (or, if the backend still refuses, stays `pending` and signs
//! nothing), and the answer lists the signer's keys live afterwards.

use super::rotate::validate_reason;
use super::{RevocationError, Revocations, Step};
use crate::backend::BackendError;
use crate::domain::{KeyState, RevocationState};
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
        if let Some(old) = deactivation_under_way(&mut tx, &row).await? {
            // Its deactivation may have reached the backend (a crash, or an
            // answer lost, after the backend applied it): cancelled, the key
            // would stay retired in the registry, its dead links reported
            // active (invariant 2). The backend tells.
            match self.keys.live_at_backend(&row.signer, &old).await {
                Ok(true) => {}
                Ok(false) => return Err(RevocationError::DeactivatedAlready { id, key_id: old }),
                Err(e) if e.is_transient() => {
                    return Err(RevocationError::Backend(BackendError::Unavailable(
                        format!(
                            "whether key {old} was deactivated cannot be told before the backend answers: {e}"
                        ),
                    )));
                }
                // A refusal (its token, say) says so, as any other call's.
                Err(e) => return Err(RevocationError::Backend(e)),
            }
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

/// The old key of a revocation whose next step deactivates it and that has
/// stopped signing already (`retired`): its backend call may have been made.
async fn deactivation_under_way(
    conn: &mut sqlx::PgConnection,
    row: &RevocationRow,
) -> Result<Option<String>, RevocationError> {
    let Some(old) = row.old_key_id.as_deref() else {
        return Ok(None);
    };
    if row.next_step != Step::DeactivateOld.as_str() {
        return Ok(None);
    }
    let retired = keys::get(&mut *conn, old)
        .await?
        .is_some_and(|k| k.state == KeyState::Retired);
    Ok(retired.then(|| old.to_owned()))
}

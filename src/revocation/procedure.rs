//! The procedure: `try_advance` runs exactly one step of one revocation inside a
//! transaction that holds the revocation's row lock, records it, and commits.
//! Every step is idempotent, so a crash anywhere just means the step runs again
//! (at startup, or from the periodic resume loop).
//!
//! Backend calls happen before the registry changes they justify: a key is
//! deactivated at the backend first, then marked inactive with its outstanding
//! links, in one transaction, so the report's count is exactly the rows revoked.

use super::{RevocationError, Revocations, Step, next_after};
use crate::backend::BackendError;
use crate::domain::{RevocationState, RotationMode};
use crate::keys::{self, KeyError};
use crate::metrics;
use crate::registry::revocations::{RevocationRow, StepRecord};
use crate::registry::{self, revocation_events, revocations, signers};
use chrono::Utc;
use sqlx::PgConnection;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The longest wait between two attempts at a stuck revocation.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// When a revocation that failed on a retryable error is tried again.
#[derive(Debug, Clone, Copy)]
pub(super) struct Retry {
    at: Instant,
    delay: Duration,
}

/// A revocation that could not finish yet (its signer's issuance may pause;
/// the others' does not).
#[derive(Debug, Clone)]
pub struct Stuck {
    pub id: Uuid,
    pub signer: String,
    pub step: String,
    pub error: String,
}

impl std::fmt::Display for Stuck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "signer {}: revocation {} stuck at {}: {}",
            self.signer, self.id, self.step, self.error
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advance {
    /// One step ran and was recorded.
    Stepped(Step),
    /// Nothing left to do: the revocation is in this final state.
    Finished(RevocationState),
}

/// Why a step did not complete.
enum StepError {
    /// Try again later (backend or registry unavailable).
    Retry(RevocationError),
    /// It will not work by retrying: the revocation fails, with this message.
    Fatal(String),
}

impl From<registry::Error> for StepError {
    fn from(e: registry::Error) -> Self {
        Self::Retry(e.into())
    }
}

impl From<BackendError> for StepError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Unavailable(_) => Self::Retry(e.into()),
            BackendError::Refused(m) | BackendError::LimitExceeded(m) => {
                Self::Fatal(format!("key backend refused: {m}"))
            }
        }
    }
}

impl From<KeyError> for StepError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Backend(e) => e.into(),
            KeyError::Registry(e) => e.into(),
            KeyError::Unusable(m) => Self::Fatal(m),
            // An outage of the store, not a verdict on the key: the step
            // waits for it (an EMERGENCY's old key is dead already; failing
            // would delete the replacement too and leave the signer none).
            KeyError::StoreUnavailable(m) => Self::Retry(RevocationError::StoreUnavailable(m)),
        }
    }
}

impl Revocations {
    /// Runs the revocation's next step. Revocations on several replicas are
    /// serialized by the row lock: a second driver waits, then sees the step done.
    pub async fn try_advance(&self, id: Uuid) -> Result<Advance, RevocationError> {
        let mut tx = registry::begin(&self.pool).await?;
        let row = revocations::lock(&mut *tx, id)
            .await?
            .ok_or(RevocationError::NotFound(id))?;
        if row.state != RevocationState::Running {
            return Ok(Advance::Finished(row.state));
        }
        let mode = row.mode;
        let step = Step::parse(&row.next_step)
            .ok_or_else(|| anyhow::anyhow!("revocation {id}: unknown step {}", row.next_step))?;
        let has_old = row.old_key_id.is_some();
        let started_at = Utc::now();
        let outcome = match step {
            Step::Done => Ok(()),
            Step::CreateKey => self.create_key(&mut tx, &row).await,
            Step::VerifyKey => self.verify_key(&mut tx, &row).await,
            Step::ActivateKey => activate_key(&mut tx, &row).await,
            Step::DeactivateOld => self.deactivate_old(&mut tx, &row, mode).await,
        };
        let mut record = StepRecord {
            name: step.as_str().to_owned(),
            started_at,
            finished_at: Utc::now(),
            error: None,
        };
        match outcome {
            Ok(()) => {
                let next = if step == Step::Done {
                    Step::Done
                } else {
                    next_after(mode, has_old, step)
                };
                let finished = next == Step::Done;
                revocations::advance(&mut *tx, id, &record, next.as_str(), finished).await?;
                self.keys.failpoints().check(keys::Failpoint::BeforeCommit);
                registry::commit(tx).await?;
                tracing::info!(revocation_id = %id, step = step.as_str(), next = next.as_str(), "revocation step done");
                if finished {
                    // Counted here, where it finishes, whoever drives it (the
                    // RotateKey call, startup, the maintenance loop): once.
                    metrics::record_revocation(mode.as_str(), "succeeded", &row.signer);
                }
                self.keys.reload_signer(&row.signer).await?;
                Ok(if finished {
                    Advance::Finished(RevocationState::Succeeded)
                } else {
                    Advance::Stepped(step)
                })
            }
            Err(StepError::Retry(e)) => {
                drop(tx);
                tracing::warn!(revocation_id = %id, step = step.as_str(), error = %e, "revocation step failed; will retry");
                let _ = revocations::note_error(&self.pool, id, &format!("{}: {e}", step.as_str()))
                    .await;
                Err(e)
            }
            Err(StepError::Fatal(message)) => {
                drop(tx);
                tracing::error!(revocation_id = %id, step = step.as_str(), error = %message, "revocation failed");
                record.error = Some(message);
                self.fail(&row, &record).await?;
                metrics::record_revocation(mode.as_str(), "failed", &row.signer);
                Ok(Advance::Finished(RevocationState::Failed))
            }
        }
    }

    /// Runs a revocation until it is finished or a step must be retried later.
    pub async fn drive(&self, id: Uuid) -> Result<RevocationState, RevocationError> {
        loop {
            if let Advance::Finished(state) = self.try_advance(id).await? {
                return Ok(state);
            }
        }
    }

    /// Drives every running revocation that is due (after a crash, or a step
    /// that must be retried: each waits twice as long after every failure, up
    /// to `MAX_RETRY_DELAY`). Returns those still running: each harms only its
    /// signer, and is reported (readiness detail, a metric, ListRevocations).
    pub async fn resume_all(&self) -> Result<Vec<Stuck>, RevocationError> {
        let mut stuck = Vec::new();
        for id in revocations::running_ids(&self.pool).await? {
            let due = self
                .retries
                .lock()
                .expect("retry lock")
                .get(&id)
                .is_none_or(|r| r.at <= Instant::now());
            if due {
                tracing::info!(revocation_id = %id, "resuming revocation");
                match self.drive(id).await {
                    Ok(_) => {
                        self.retries.lock().expect("retry lock").remove(&id);
                        continue;
                    }
                    Err(e) => {
                        let mut retries = self.retries.lock().expect("retry lock");
                        let r = retries.entry(id).or_insert(Retry {
                            at: Instant::now(),
                            delay: Duration::from_millis(500),
                        });
                        r.delay = (r.delay * 2).min(MAX_RETRY_DELAY);
                        r.at = Instant::now() + r.delay;
                        tracing::warn!(revocation_id = %id, error = %e, retry_in_ms = r.delay.as_millis() as u64,
                            "revocation not finished yet");
                    }
                }
            }
            if let Some(row) = revocations::get(&self.pool, id).await?
                && row.state == RevocationState::Running
            {
                stuck.push(Stuck {
                    id,
                    signer: row.signer,
                    step: row.next_step,
                    error: row.error.unwrap_or_default(),
                });
            }
        }
        Ok(stuck)
    }

    async fn create_key(
        &self,
        tx: &mut PgConnection,
        row: &RevocationRow,
    ) -> Result<(), StepError> {
        if row.new_key_id.is_some() {
            return Ok(());
        }
        // A GRACEFUL rotation adopts the signer's standby key (the blast-radius
        // budget keeps one ready): already proven usable, it only needs the
        // quick re-probe of `verify_key`. Other modes make a fresh key.
        let standby = match row.mode {
            RotationMode::Graceful => registry::keys::standby(&mut *tx, &row.signer).await?,
            _ => None,
        };
        let key_id = match standby {
            Some(key_id) => key_id,
            None => self.keys.create_replacement(&mut *tx, &row.signer).await?,
        };
        tracing::info!(revocation_id = %row.id, key_id, "created replacement key");
        revocations::set_new_key(&mut *tx, row.id, &key_id).await?;
        Ok(())
    }

    async fn verify_key(
        &self,
        tx: &mut PgConnection,
        row: &RevocationRow,
    ) -> Result<(), StepError> {
        let key_id = row
            .new_key_id
            .as_deref()
            .ok_or_else(|| StepError::Fatal("no new key to verify".into()))?;
        Ok(self.keys.verify_recorded(&mut *tx, key_id).await?)
    }

    async fn deactivate_old(
        &self,
        tx: &mut PgConnection,
        row: &RevocationRow,
        mode: RotationMode,
    ) -> Result<(), StepError> {
        let Some(old) = row.old_key_id.as_deref() else {
            return Ok(());
        };
        // Stop the bleeding first: the backend refuses the old key, then the
        // registry marks it under its state-change lock (in-flight batches
        // commit first, later ones see it inactive).
        self.keys
            .deactivate(&mut *tx, &row.signer, old, Some(row.id))
            .await
            .map_err(|e| match StepError::from(e) {
                StepError::Fatal(why) => StepError::Fatal(format!(
                    "{why}. Key {old} is STILL LIVE: its links keep working. Once the cause is fixed, \
                     kill it with KeyService.RevokeKey(key_id={old}) (`presignctl revoke --key {old} --reason ...`)"
                )),
                retry => retry,
            })?;
        if mode == RotationMode::Emergency {
            signers::set_paused(&mut *tx, &row.signer, true).await?;
        }
        // The links that died, counted in one pass that also records, per
        // caller, the event WatchRevocations delivers (committed with the
        // deactivation, whoever drives this step).
        let revoked = revocation_events::record_deactivation(
            &mut *tx,
            row.id,
            old,
            &row.quarantined_link_ids,
        )
        .await?;
        revocations::add_revoked(&mut *tx, row.id, revoked).await?;
        tracing::warn!(revocation_id = %row.id, key_id = old, links_revoked = revoked, "old key deactivated");
        Ok(())
    }

    /// Records the failure and undoes what cannot stay: a replacement key that was
    /// never activated is deleted at the backend. The signer is unpaused so that a
    /// new RotateKey (or a restart) can give it a key.
    async fn fail(&self, row: &RevocationRow, record: &StepRecord) -> Result<(), RevocationError> {
        let mut tx = registry::begin(&self.pool).await?;
        if let Some(new) = &row.new_key_id {
            self.keys.discard_pending(&mut tx, &row.signer, new).await?;
        }
        signers::set_paused(&mut *tx, &row.signer, false).await?;
        revocations::fail(&mut *tx, row.id, record).await?;
        registry::commit(tx).await?;
        Ok(())
    }
}

async fn activate_key(tx: &mut PgConnection, row: &RevocationRow) -> Result<(), StepError> {
    let key_id = row
        .new_key_id
        .as_deref()
        .ok_or_else(|| StepError::Fatal("no new key to activate".into()))?;
    if !keys::activate_replacement(&mut *tx, &row.signer, row.old_key_id.as_deref(), key_id).await?
    {
        // Rolled back with the step: the old key keeps signing.
        return Err(StepError::Fatal(format!(
            "new key {key_id} is no longer pending (discarded meanwhile, as a standby key whose probe failed): \
             nothing was activated, the old key still signs; rotate again"
        )));
    }
    Ok(())
}

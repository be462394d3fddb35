//! The procedure: `try_advance` runs exactly one step of one revocation inside a
//! transaction that holds the revocation's row lock, records it, and commits.
//! Every step is idempotent, so a crash anywhere just means the step runs again
//! (at startup, or from the periodic resume loop).
//!
//! Backend calls happen before the registry changes they justify: a key is
//! deactivated at the backend first, then marked inactive with its outstanding
//! links, in one transaction, so the report's count is exactly the rows revoked.

use super::{Mode, RevocationError, Step};
use crate::backend::BackendError;
use crate::keys::KeyManager;
use crate::registry::revocations::{RevocationRow, StepRecord};
use crate::registry::{keys, links, revocations, signers};
use crate::signing::SigningKey;
use chrono::Utc;
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advance {
    /// One step ran and was recorded.
    Stepped(Step),
    /// Nothing left to do: the revocation is in this final state.
    Finished(String),
}

/// Why a step did not complete.
enum StepError {
    /// Try again later (backend or registry unavailable).
    Retry(RevocationError),
    /// It will not work by retrying: the revocation fails, with this message.
    Fatal(String),
}

impl From<sqlx::Error> for StepError {
    fn from(e: sqlx::Error) -> Self {
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

/// Runs the revocation's next step. Revocations on several replicas are
/// serialized by the row lock: a second driver waits, then sees the step done.
pub async fn try_advance(km: &KeyManager, id: Uuid) -> Result<Advance, RevocationError> {
    let mut tx = km.pool.begin().await?;
    let row = revocations::lock(&mut *tx, id)
        .await?
        .ok_or(RevocationError::NotFound(id))?;
    if row.state != "running" {
        return Ok(Advance::Finished(row.state));
    }
    let mode = Mode::parse(&row.mode)
        .ok_or_else(|| anyhow::anyhow!("revocation {id}: unknown mode {}", row.mode))?;
    let step = Step::parse(&row.next_step)
        .ok_or_else(|| anyhow::anyhow!("revocation {id}: unknown step {}", row.next_step))?;
    let has_old = row.old_key_id.is_some();
    let started_at = Utc::now();
    let outcome = match step {
        Step::Done => Ok(()),
        Step::CreateKey => create_key(km, &mut tx, &row).await,
        Step::VerifyKey => verify_key(km, &mut tx, &row).await,
        Step::ActivateKey => activate_key(&mut tx, &row).await,
        Step::DeactivateOld => deactivate_old(km, &mut tx, &row, mode).await,
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
                mode.next_after(has_old, step)
            };
            revocations::advance(&mut *tx, id, &record, next.as_str()).await?;
            tx.commit().await?;
            tracing::info!(revocation_id = %id, step = step.as_str(), next = next.as_str(), "revocation step done");
            km.reload_signer(&row.signer).await?;
            Ok(if next == Step::Done {
                Advance::Finished("succeeded".into())
            } else {
                Advance::Stepped(step)
            })
        }
        Err(StepError::Retry(e)) => {
            drop(tx);
            tracing::warn!(revocation_id = %id, step = step.as_str(), error = %e, "revocation step failed; will retry");
            let _ = revocations::note_error(&km.pool, id, &format!("{}: {e}", step.as_str())).await;
            Err(e)
        }
        Err(StepError::Fatal(message)) => {
            drop(tx);
            tracing::error!(revocation_id = %id, step = step.as_str(), error = %message, "revocation failed");
            record.error = Some(message);
            fail(km, &row, &record).await?;
            Ok(Advance::Finished("failed".into()))
        }
    }
}

/// Runs a revocation until it is finished or a step must be retried later.
pub async fn drive(km: &KeyManager, id: Uuid) -> Result<String, RevocationError> {
    loop {
        if let Advance::Finished(state) = try_advance(km, id).await? {
            return Ok(state);
        }
    }
}

/// Drives every running revocation (after a crash, or a step that must be
/// retried). Returns how many are still running.
pub async fn resume_all(km: &KeyManager) -> Result<usize, RevocationError> {
    let mut still_running = 0;
    for id in revocations::running_ids(&km.pool).await? {
        tracing::info!(revocation_id = %id, "resuming revocation");
        if let Err(e) = drive(km, id).await {
            tracing::warn!(revocation_id = %id, error = %e, "revocation not finished yet");
            still_running += 1;
        }
    }
    Ok(still_running)
}

async fn create_key(
    km: &KeyManager,
    tx: &mut PgConnection,
    row: &RevocationRow,
) -> Result<(), StepError> {
    if row.new_key_id.is_some() {
        return Ok(());
    }
    let new = km.create_backend_key(&mut *tx, &row.signer).await?;
    // Logged so that a crash before commit leaves a trace of the backend key.
    tracing::info!(revocation_id = %row.id, key_id = %new.access_key_id, "created replacement key");
    keys::insert_pending(&mut *tx, &new.access_key_id, &row.signer, &km.seal(&new)).await?;
    revocations::set_new_key(&mut *tx, row.id, &new.access_key_id).await?;
    Ok(())
}

async fn verify_key(
    km: &KeyManager,
    tx: &mut PgConnection,
    row: &RevocationRow,
) -> Result<(), StepError> {
    let key_id = row
        .new_key_id
        .as_deref()
        .ok_or_else(|| StepError::Fatal("no new key to verify".into()))?;
    let key_row = keys::get(&mut *tx, key_id).await?.ok_or_else(|| {
        StepError::Fatal(format!("new key {key_id} is missing from the registry"))
    })?;
    let secret = km
        .open_secret(&key_row)
        .map_err(|e| StepError::Fatal(format!("{e:#}")))?;
    let key = SigningKey::new(&km.target, key_id, &secret, &row.signer);
    km.prove_usable(&key)
        .await
        .map_err(|e| StepError::Fatal(e.to_string()))
}

async fn activate_key(tx: &mut PgConnection, row: &RevocationRow) -> Result<(), StepError> {
    let key_id = row
        .new_key_id
        .as_deref()
        .ok_or_else(|| StepError::Fatal("no new key to activate".into()))?;
    signers::lock(&mut *tx, &row.signer).await?;
    if let Some(old) = &row.old_key_id {
        // Waits for in-flight inserts signed by the old key; none succeed after.
        keys::retire(&mut *tx, old).await?;
    }
    keys::activate(&mut *tx, key_id).await?;
    signers::set_paused(&mut *tx, &row.signer, false).await?;
    keys::notify_changed(&mut *tx, &row.signer).await?;
    Ok(())
}

async fn deactivate_old(
    km: &KeyManager,
    tx: &mut PgConnection,
    row: &RevocationRow,
    mode: Mode,
) -> Result<(), StepError> {
    let Some(old) = row.old_key_id.as_deref() else {
        return Ok(());
    };
    // Stop the bleeding first: from here on, the backend refuses the old key.
    km.backend.deactivate_key(&row.signer, old).await?;
    // Under the key's issuance lock: in-flight batches commit first, later ones see it inactive.
    keys::deactivate(&mut *tx, old, Some(row.id)).await?;
    if mode == Mode::Emergency {
        signers::set_paused(&mut *tx, &row.signer, true).await?;
    }
    let revoked = links::count_revoked_by_deactivation(&mut *tx, old).await?;
    revocations::add_revoked(&mut *tx, row.id, revoked).await?;
    keys::notify_changed(&mut *tx, &row.signer).await?;
    tracing::warn!(revocation_id = %row.id, key_id = old, links_revoked = revoked, "old key deactivated");
    Ok(())
}

/// Records the failure and undoes what cannot stay: a replacement key that was
/// never activated is deleted at the backend. The signer is unpaused so that a
/// new RotateKey (or a restart) can give it a key.
async fn fail(
    km: &KeyManager,
    row: &RevocationRow,
    record: &StepRecord,
) -> Result<(), RevocationError> {
    let mut tx = km.pool.begin().await?;
    if let Some(new) = &row.new_key_id
        && keys::get(&mut *tx, new)
            .await?
            .is_some_and(|k| k.state == "pending")
    {
        match km.backend.delete_key(&row.signer, new).await {
            Ok(()) => keys::mark_deleted(&mut *tx, new).await?,
            Err(e) => {
                tracing::warn!(key_id = %new, error = %e, "could not delete the unused replacement key")
            }
        }
    }
    signers::set_paused(&mut *tx, &row.signer, false).await?;
    revocations::fail(&mut *tx, row.id, record).await?;
    tx.commit().await?;
    Ok(())
}

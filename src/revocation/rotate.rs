//! Starting a rotation (after computing its plan), and reading revocations back.

use super::{RevocationError, Revocations, Step, steps};
use crate::domain::{FieldError, RevocationState, RotationMode, SignerName};
use crate::registry::blast_radius::{self, BlastRadius};
use crate::registry::revocations::{self, NewRevocation, RevocationRow};
use crate::registry::{self, keys, signers};
use chrono::Utc;
use uuid::Uuid;

pub const MAX_REASON_CHARS: usize = 1000;

pub enum PlanTarget {
    Key(String),
    Signer(SignerName),
}

pub struct RotateRequest {
    pub signer: SignerName,
    pub mode: RotationMode,
    pub reason: String,
    pub expected_key_id: Option<String>,
    pub dry_run: bool,
    pub requested_by: String,
}

pub enum Rotation {
    /// What would happen: nothing was touched.
    DryRun {
        signer: String,
        mode: RotationMode,
        old_key_id: Option<String>,
        blast_radius: Box<BlastRadius>,
        steps: Vec<Step>,
    },
    /// The revocation as recorded (succeeded, failed, or still running if a
    /// step must be retried).
    Ran(Box<RevocationRow>),
}

impl Revocations {
    /// The blast radius of deactivating a key (or a signer's active key), computed
    /// in one consistent snapshot, touching nothing.
    pub async fn plan(&self, target: PlanTarget) -> Result<BlastRadius, RevocationError> {
        let mut tx = registry::begin_snapshot(&self.pool).await?;
        let key = match target {
            PlanTarget::Key(id) => keys::get(&mut *tx, &id)
                .await?
                .ok_or(RevocationError::UnknownKey(id))?,
            PlanTarget::Signer(s) => {
                if !signers::exists(&mut *tx, s.as_str()).await? {
                    return Err(RevocationError::UnknownSigner(s.to_string()));
                }
                keys::active_for_signer(&mut *tx, s.as_str())
                    .await?
                    .ok_or_else(|| RevocationError::NoActiveKey(s.to_string()))?
            }
        };
        Ok(blast_radius::compute(&mut tx, &key.key_id, &key.signer).await?)
    }

    /// Plans, records and runs a rotation to its end (or to a step that must be
    /// retried later: the report then says RUNNING, with the error).
    pub async fn rotate(&self, req: RotateRequest) -> Result<Rotation, RevocationError> {
        let id = match self.start(req).await? {
            dry_run @ Rotation::DryRun { .. } => return Ok(dry_run),
            Rotation::Ran(row) => row.id,
        };
        if let Err(e) = self.drive(id).await {
            // Left running: the maintenance loop retries it.
            tracing::warn!(revocation_id = %id, error = %e, "revocation paused on a retryable error");
        }
        let row = self.get(id).await?;
        if row.state == RevocationState::Failed {
            // The report stays readable with GetRevocation; the caller gets a
            // status that says the rotation did not happen, and why.
            return Err(RevocationError::Failed {
                id,
                message: row.error.unwrap_or_default(),
            });
        }
        Ok(Rotation::Ran(Box::new(row)))
    }

    /// Plans and records a rotation without running any step (`try_advance` runs
    /// them). Serialized per signer: the signer's row lock is held while the plan is
    /// computed and the revocation recorded; at most one runs per signer.
    pub async fn start(&self, req: RotateRequest) -> Result<Rotation, RevocationError> {
        let reason = validate_reason(&req.reason)?;
        let signer = req.signer.as_str();
        let mut tx = registry::begin(&self.pool).await?;
        signers::lock(&mut *tx, signer)
            .await?
            .ok_or_else(|| RevocationError::UnknownSigner(signer.to_owned()))?;
        if let Some(id) = revocations::running_for_signer(&mut *tx, signer).await? {
            return Err(RevocationError::AlreadyRunning {
                id,
                signer: signer.to_owned(),
            });
        }
        let old = keys::active_for_signer(&mut *tx, signer).await?;
        if let Some(expected) = &req.expected_key_id {
            let actual = old
                .as_ref()
                .map(|k| k.key_id.clone())
                .unwrap_or_else(|| "(none)".into());
            if &actual != expected {
                return Err(RevocationError::ExpectedKeyMismatch {
                    signer: signer.to_owned(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let old_key_id = old.map(|k| k.key_id);
        let radius = match &old_key_id {
            Some(key_id) => blast_radius::compute(&mut tx, key_id, signer).await?,
            None => BlastRadius {
                signer: signer.to_owned(),
                computed_at: Utc::now(),
                ..Default::default()
            },
        };
        let steps = steps(req.mode, old_key_id.is_some());
        if req.dry_run {
            return Ok(Rotation::DryRun {
                signer: signer.to_owned(),
                mode: req.mode,
                old_key_id,
                blast_radius: Box::new(radius),
                steps,
            });
        }
        let id = Uuid::now_v7();
        revocations::insert(
            &mut *tx,
            &NewRevocation {
                id,
                signer,
                mode: req.mode,
                requested_by: &req.requested_by,
                reason: &reason,
                old_key_id: old_key_id.as_deref(),
                first_step: steps.first().copied().unwrap_or(Step::Done).as_str(),
                blast_radius: &radius,
            },
        )
        .await?;
        registry::commit(tx).await?;
        tracing::warn!(
            revocation_id = %id, signer, mode = req.mode.as_str(), requested_by = %req.requested_by,
            old_key_id = old_key_id.as_deref().unwrap_or("-"), outstanding_links = radius.outstanding_links,
            "revocation started"
        );
        Ok(Rotation::Ran(Box::new(self.get(id).await?)))
    }

    pub async fn get(&self, id: Uuid) -> Result<RevocationRow, RevocationError> {
        revocations::get(&self.pool, id)
            .await?
            .ok_or(RevocationError::NotFound(id))
    }
}

fn validate_reason(reason: &str) -> Result<String, FieldError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(FieldError::new(
            "reason",
            "is required: say why (it goes into the audit trail)",
        ));
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(FieldError::new(
            "reason",
            format!("is over {MAX_REASON_CHARS} characters"),
        ));
    }
    if reason.chars().any(|c| c.is_control() && c != '\n') {
        return Err(FieldError::new(
            "reason",
            "must not contain control characters",
        ));
    }
    // A responder may paste the leaked URL: stored here it would be a live
    // credential in the registry (invariant 5).
    if reason
        .split_whitespace()
        .any(crate::audit::looks_like_credential)
    {
        return Err(FieldError::new(
            "reason",
            "must not contain a URL or a signature (it would be stored as a live credential); name the link by its id instead (LookupLink finds it)",
        ));
    }
    Ok(reason.to_owned())
}

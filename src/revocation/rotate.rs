//! Starting a rotation (after computing its plan), and reading revocations back.

use super::{RevocationError, Revocations, Step, steps};
use crate::domain::KeyState;
use crate::domain::{FieldError, RevocationState, RotationMode, SignerName};
use crate::registry::blast_radius::{self, BlastRadius};
use crate::registry::revocations::{self, NewRevocation, RevocationRow};
use crate::registry::{self, keys, links, signers};
use chrono::Utc;
use uuid::Uuid;

pub const MAX_REASON_CHARS: usize = 1000;
/// The most links one revocation may quarantine: the leaked ones, named one
/// by one (LookupLink finds each); not a way to withhold a key's links wholesale.
pub const MAX_QUARANTINE: usize = 100;

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
    /// The leaked links (signed by the key being revoked): never reissued.
    pub quarantine_link_ids: Vec<Uuid>,
}

/// RevokeKey: any live key, by id.
pub struct RevokeKeyRequest {
    pub key_id: String,
    pub reason: String,
    pub dry_run: bool,
    pub requested_by: String,
    /// As `RotateRequest::quarantine_link_ids`.
    pub quarantine_link_ids: Vec<Uuid>,
}

/// What a revocation starts from: a signer's active key (RotateKey), or one
/// key by id (RevokeKey).
enum Target {
    Signer {
        signer: SignerName,
        mode: RotationMode,
        expected_key_id: Option<String>,
    },
    Key(String),
}

pub enum Rotation {
    /// What would happen: nothing was touched.
    DryRun {
        signer: String,
        mode: RotationMode,
        old_key_id: Option<String>,
        blast_radius: Box<BlastRadius>,
        steps: Vec<Step>,
        quarantined_link_ids: Vec<Uuid>,
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

    /// Plans, records and runs a rotation. All of it runs in a task of its own
    /// (`run`): the caller going away cuts no step.
    pub async fn rotate(
        &self,
        req: RotateRequest,
        detach: bool,
    ) -> Result<Rotation, RevocationError> {
        let this = self.clone();
        self.run(detach, async move { this.start(req).await }).await
    }

    /// RevokeKey: deactivates a live key now. A retired key: one step
    /// (deactivate); the active key: rotated first as REVOKE does.
    pub async fn revoke_key(
        &self,
        req: RevokeKeyRequest,
        detach: bool,
    ) -> Result<Rotation, RevocationError> {
        let this = self.clone();
        let start = async move {
            let start = Start {
                reason: &req.reason,
                requested_by: &req.requested_by,
                dry_run: req.dry_run,
                quarantine: req.quarantine_link_ids,
            };
            this.start_target(Target::Key(req.key_id), start).await
        };
        self.run(detach, start).await
    }

    /// Starts (plans and records) and drives a revocation in a task of its
    /// own, to its end or to a step that must be retried later (the report
    /// then says RUNNING, with the error). The caller waits for the start;
    /// then, unless `detach`, for the end.
    async fn run(
        &self,
        detach: bool,
        start: impl Future<Output = Result<Rotation, RevocationError>> + Send + 'static,
    ) -> Result<Rotation, RevocationError> {
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let this = self.clone();
        let task = tokio::spawn(async move {
            let started = start.await;
            let ran = match &started {
                Ok(Rotation::Ran(row)) => Some(row.id),
                _ => None,
            };
            let _ = started_tx.send(started);
            let Some(id) = ran else {
                return;
            };
            // Counted in the metrics where it finishes (procedure.rs), whoever
            // drives it: here, or the maintenance loop after a retry.
            if let Err(e) = this.drive(id).await {
                // Left running: the maintenance loop retries it.
                tracing::warn!(revocation_id = %id, error = %e, "revocation paused on a retryable error");
            }
        });
        let started = started_rx
            .await
            .map_err(|_| anyhow::anyhow!("the revocation task ended before it was recorded"))??;
        let id = match started {
            dry_run @ Rotation::DryRun { .. } => return Ok(dry_run),
            // Detached: the revocation as recorded (RUNNING), whatever its
            // task has done since; the caller follows it with GetRevocation.
            // (Reading it again here would race with the task: a step that
            // fails at once would turn the answer into an error or not,
            // depending on which came first.)
            Rotation::Ran(row) if detach => return Ok(Rotation::Ran(row)),
            Rotation::Ran(row) => row.id,
        };
        if let Err(e) = task.await {
            tracing::error!(revocation_id = %id, error = %e, "the revocation task ended abnormally");
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
    /// them).
    pub async fn start(&self, req: RotateRequest) -> Result<Rotation, RevocationError> {
        let target = Target::Signer {
            signer: req.signer,
            mode: req.mode,
            expected_key_id: req.expected_key_id,
        };
        let start = Start {
            reason: &req.reason,
            requested_by: &req.requested_by,
            dry_run: req.dry_run,
            quarantine: req.quarantine_link_ids,
        };
        self.start_target(target, start).await
    }

    /// Serialized per signer: the signer's row lock is held while the target
    /// key is checked, the plan computed and the revocation recorded; at most
    /// one runs per signer.
    async fn start_target(
        &self,
        target: Target,
        start: Start<'_>,
    ) -> Result<Rotation, RevocationError> {
        let Start {
            reason,
            requested_by,
            dry_run,
            mut quarantine,
        } = start;
        let reason = validate_reason(reason)?;
        quarantine.sort_unstable();
        quarantine.dedup();
        if quarantine.len() > MAX_QUARANTINE {
            return Err(FieldError::new(
                QUARANTINE_FIELD,
                format!(
                    "names {} links; at most {MAX_QUARANTINE} (the leaked ones, by id)",
                    quarantine.len()
                ),
            )
            .into());
        }
        let signer = match &target {
            Target::Signer { signer, .. } => signer.as_str().to_owned(),
            Target::Key(key_id) => {
                keys::get(&self.pool, key_id)
                    .await?
                    .ok_or_else(|| RevocationError::UnknownKey(key_id.clone()))?
                    .signer
            }
        };
        let signer = signer.as_str();
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
        let (mode, old_key_id, steps) = match target {
            Target::Signer {
                mode,
                expected_key_id,
                ..
            } => {
                let old = keys::active_for_signer(&mut *tx, signer).await?;
                if let Some(expected) = expected_key_id {
                    let actual = old
                        .as_ref()
                        .map(|k| k.key_id.clone())
                        .unwrap_or_else(|| "(none)".into());
                    if actual != expected {
                        return Err(RevocationError::ExpectedKeyMismatch {
                            signer: signer.to_owned(),
                            expected,
                            actual,
                        });
                    }
                }
                let old_key_id = old.map(|k| k.key_id);
                (mode, old_key_id.clone(), steps(mode, old_key_id.is_some()))
            }
            Target::Key(key_id) => {
                // Read again under the signer's lock: no rotation moves it now.
                let key = keys::get(&mut *tx, &key_id)
                    .await?
                    .ok_or_else(|| RevocationError::UnknownKey(key_id.clone()))?;
                let mode = RotationMode::Revoke;
                let steps = match key.state {
                    KeyState::Active => steps(mode, true),
                    KeyState::Retired => vec![Step::DeactivateOld],
                    state => return Err(RevocationError::KeyNotLive { key_id, state }),
                };
                (mode, Some(key_id), steps)
            }
        };
        validate_quarantine(&mut tx, mode, old_key_id.as_deref(), &quarantine).await?;
        let radius = match &old_key_id {
            Some(key_id) => blast_radius::compute(&mut tx, key_id, signer).await?,
            None => BlastRadius {
                signer: signer.to_owned(),
                computed_at: Utc::now(),
                ..Default::default()
            },
        };
        if dry_run {
            return Ok(Rotation::DryRun {
                signer: signer.to_owned(),
                mode,
                old_key_id,
                blast_radius: Box::new(radius),
                steps,
                quarantined_link_ids: quarantine,
            });
        }
        let id = Uuid::now_v7();
        revocations::insert(
            &mut *tx,
            &NewRevocation {
                id,
                signer,
                mode,
                requested_by,
                reason: &reason,
                old_key_id: old_key_id.as_deref(),
                first_step: steps.first().copied().unwrap_or(Step::Done).as_str(),
                blast_radius: &radius,
                quarantined_link_ids: &quarantine,
            },
        )
        .await?;
        registry::commit(tx).await?;
        tracing::warn!(
            revocation_id = %id, signer, mode = mode.as_str(), requested_by = %requested_by,
            old_key_id = old_key_id.as_deref().unwrap_or("-"), outstanding_links = radius.outstanding_links,
            quarantined = quarantine.len(), "revocation started"
        );
        Ok(Rotation::Ran(Box::new(self.get(id).await?)))
    }

    pub async fn get(&self, id: Uuid) -> Result<RevocationRow, RevocationError> {
        revocations::get(&self.pool, id)
            .await?
            .ok_or(RevocationError::NotFound(id))
    }
}

/// The request field naming the leaked links.
const QUARANTINE_FIELD: &str = "quarantine_link_ids";

/// What every start shares, whatever the target.
struct Start<'a> {
    reason: &'a str,
    requested_by: &'a str,
    dry_run: bool,
    quarantine: Vec<Uuid>,
}

/// Each quarantined link must be one the revocation kills: a link signed by
/// the key being deactivated. Checked under the signer's lock, with the key
/// the revocation targets.
async fn validate_quarantine(
    tx: &mut registry::Tx,
    mode: RotationMode,
    old_key_id: Option<&str>,
    quarantine: &[Uuid],
) -> Result<(), RevocationError> {
    if quarantine.is_empty() {
        return Ok(());
    }
    let old = match (mode, old_key_id) {
        (RotationMode::Graceful, _) => {
            return Err(FieldError::new(
                QUARANTINE_FIELD,
                "GRACEFUL kills no link: quarantine goes with REVOKE or EMERGENCY (or RevokeKey)",
            )
            .into());
        }
        (_, None) => {
            return Err(FieldError::new(
                QUARANTINE_FIELD,
                "the signer has no active key: this rotation kills no link",
            )
            .into());
        }
        (_, Some(old)) => old,
    };
    let signed = links::signed_by(&mut **tx, quarantine, old).await?;
    if let Some(stray) = quarantine.iter().find(|id| !signed.contains(id)) {
        return Err(FieldError::new(
            QUARANTINE_FIELD,
            format!(
                "link {stray} is not a link signed by key {old}, the key this revocation kills"
            ),
        )
        .into());
    }
    Ok(())
}

pub(super) fn validate_reason(reason: &str) -> Result<String, FieldError> {
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

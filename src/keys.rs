//! The signing keys' lifecycle, in one place: provisioning a signer's first
//! key, creating keys under a recorded intent and reconciling those a crash
//! left behind (`intents`), loading active keys into the keyring (opening their sealed secrets),
//! creating a rotation's replacement and proving it usable, changing a key's
//! state under its state-change lock (retire, activate, deactivate, discard),
//! freeing a backend key slot, and following other replicas' key changes.
//! Revocation decides *when* these happen; this module is *how*.

mod budget;
mod failpoints;
mod follow;
mod intents;
mod keyring;
mod preflight;
mod regions;
mod slots;
mod state;
mod sweep;
mod verify;

pub use budget::KeyBudgets;
pub use failpoints::{Failpoint, Failpoints};
pub use intents::Reconciled;
pub use keyring::Keyring;
pub use preflight::{BucketRefused, BucketStatus};
pub use regions::Regions;
pub use state::{activate_replacement, lock_for_state_change};
pub use sweep::Swept;
pub use verify::{NotUsable, ProbeAnswer, classify as classify_probe, verify_usable, xml_field};

use crate::backend::{BackendError, KeyBackend, NewKey};
use crate::domain::KeyState;
use crate::registry::{self, keys::KeyRow};
use crate::seal::MasterKey;
use crate::secret::SecretString;
use crate::signing::{S3Target, SESSION_KEY_REFUSED, SigningKey, is_session_key_id};
use anyhow::Context;
use sqlx::PgPool;
use std::sync::Arc;

/// Backend deactivation attempts within one step (200 ms, then doubling).
const DEACTIVATE_ATTEMPTS: u32 = 4;

/// Why a key operation did not complete.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Registry(#[from] registry::Error),
    /// It will not work by retrying: the key is missing, its secret does not
    /// open, or the S3 endpoint never accepted it.
    #[error("{0}")]
    Unusable(String),
    /// The S3 endpoint could not be reached, or was busy, while the key was
    /// being proven: proving it again later may pass.
    #[error("{0}")]
    StoreUnavailable(String),
}

/// How a new key is proven usable before it signs anything.
#[derive(Clone)]
pub struct Probe {
    pub http: reqwest::Client,
    /// A bucket new keys are probed against (HEAD of a probe object).
    pub bucket: Option<String>,
    pub attempts: u32,
}

/// Owns the keyring and the key backend; shared (cheap clones) by the issuer,
/// the revocation procedure and the readiness task.
#[derive(Clone)]
pub struct KeyManager {
    pool: PgPool,
    keyring: Keyring,
    backend: Arc<dyn KeyBackend>,
    master_key: MasterKey,
    target: S3Target,
    regions: Regions,
    probe: Probe,
    preflight: preflight::Preflight,
    failpoints: Failpoints,
    /// Bumped on every key change heard (`follow`): a deactivation's
    /// transaction notifies, so WatchRevocations wakes on it.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
}

impl KeyManager {
    pub fn new(
        pool: PgPool,
        backend: Arc<dyn KeyBackend>,
        master_key: MasterKey,
        target: S3Target,
        regions: Regions,
        probe: Probe,
    ) -> Self {
        Self {
            pool,
            keyring: Keyring::default(),
            backend,
            master_key,
            target,
            regions,
            probe,
            preflight: preflight::Preflight::default(),
            failpoints: Failpoints::default(),
            changes: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// Changes whenever a key change is heard from any replica (LISTEN), and
    /// after the listener reconnects (changes may have been missed).
    pub fn key_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A key that can still sign a working URL: the signer's active key, or a
    /// retired one (its links work until it is deactivated), opened from the
    /// registry. `None` for a pending, dead or unknown key.
    pub async fn live_key(&self, key_id: &str) -> Result<Option<Arc<SigningKey>>, KeyError> {
        let Some(row) = registry::keys::get(&self.pool, key_id).await? else {
            return Ok(None);
        };
        match row.state {
            KeyState::Active => {
                if let Some(key) = self.keyring.active(&row.signer)
                    && key.key_id == key_id
                {
                    return Ok(Some(key));
                }
            }
            KeyState::Retired => {}
            _ => return Ok(None),
        }
        let secret = self
            .open_secret(&row)
            .map_err(|e| KeyError::Unusable(format!("{e:#}")))?;
        Ok(Some(Arc::new(SigningKey::new(
            &self.target,
            key_id,
            &secret,
            &row.signer,
        ))))
    }

    /// Where links point (endpoint, region, URL style).
    pub fn target(&self) -> &S3Target {
        &self.target
    }

    /// Each bucket's region (VerifyLink signs its probes for it).
    pub fn regions(&self) -> &Regions {
        &self.regions
    }

    /// The HTTP client that probes the store.
    pub fn http(&self) -> &reqwest::Client {
        &self.probe.http
    }

    /// Crash injection (tests): inert unless a point is armed.
    pub fn failpoints(&self) -> &Failpoints {
        &self.failpoints
    }

    /// The key `signer` signs with now, if it has one.
    pub fn active_key(&self, signer: &str) -> Option<Arc<SigningKey>> {
        self.keyring.active(signer)
    }

    /// Makes sure `signer` exists and has an active key, creating one through the
    /// backend if needed, and loads it into the keyring. Serialized per signer by
    /// the signer's row lock, so replicas starting together create one key.
    pub async fn ensure_active_key(&self, signer: &str) -> anyhow::Result<()> {
        registry::signers::upsert(&self.pool, signer, self.backend.kind()).await?;
        let mut tx = registry::begin(&self.pool).await?;
        registry::signers::lock(&mut *tx, signer).await?;
        if registry::revocations::running_for_signer(&mut *tx, signer)
            .await?
            .is_some()
        {
            // That revocation's procedure gives the signer its next key.
            return Ok(());
        }
        if let Some(row) = registry::keys::active_for_signer(&mut *tx, signer).await? {
            registry::commit(tx).await?;
            return self.install(&row);
        }
        let created = self
            .create_backend_key(&mut tx, signer)
            .await
            .with_context(|| format!("creating a signing key for signer {signer}"))?;
        let new = &created.key;
        let key = SigningKey::new(
            &self.target,
            &new.access_key_id,
            &new.secret_access_key,
            signer,
        );
        let recorded = async {
            self.prove_usable(&key).await?;
            self.failpoints.check(Failpoint::AfterProbe);
            self.record(&mut tx, signer, &created, KeyState::Active)
                .await?;
            self.failpoints.check(Failpoint::BeforeCommit);
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = recorded {
            // A key that never reaches the registry is deleted at once, not
            // left live until reconciliation: a failed probe or insert takes it.
            let _ = tx.rollback().await;
            let key_id = new.access_key_id.clone();
            if let Err(d) = self.abandon(signer, created).await {
                tracing::error!(signer, key_id, error = %d,
                    "the unrecorded key could not be deleted yet: its intent stays, reconciliation retries");
            }
            return Err(e.context(format!(
                "provisioning key {key_id} for signer {signer} (deleted again)"
            )));
        }
        // A failed commit may still have landed: the intent tells
        // (reconciliation deletes the key only if the intent is still there).
        registry::commit(tx).await?;
        tracing::info!(signer, key_id = %key.key_id, "provisioned a signing key");
        self.preflight_key(&key).await;
        self.keyring.install(key);
        Ok(())
    }

    /// Creates a rotation's replacement key for `signer` at the backend and
    /// records it `pending` (sealed) in the caller's transaction, which holds
    /// the signer's row lock from then on; returns its id. If that transaction
    /// never commits, the key's intent stays and reconciliation deletes it.
    pub async fn create_replacement(
        &self,
        conn: &mut sqlx::PgConnection,
        signer: &str,
    ) -> Result<String, KeyError> {
        let created = self.create_backend_key(&mut *conn, signer).await?;
        self.record(&mut *conn, signer, &created, KeyState::Pending)
            .await?;
        Ok(created.key.access_key_id)
    }

    /// Proves a recorded key usable: opens its secret and probes the S3
    /// endpoint with it, retrying while the backend propagates the key.
    pub async fn verify_recorded(
        &self,
        conn: &mut sqlx::PgConnection,
        key_id: &str,
    ) -> Result<(), KeyError> {
        let row = registry::keys::get(&mut *conn, key_id)
            .await?
            .ok_or_else(|| {
                KeyError::Unusable(format!("new key {key_id} is missing from the registry"))
            })?;
        let secret = self
            .open_secret(&row)
            .map_err(|e| KeyError::Unusable(format!("{e:#}")))?;
        let key = SigningKey::new(&self.target, key_id, &secret, &row.signer);
        self.prove_usable(&key).await.map_err(|e| {
            if e.store_unavailable {
                KeyError::StoreUnavailable(format!(
                    "{e} (the endpoint unreachable or busy: the key is proven again later)"
                ))
            } else {
                KeyError::Unusable(e.to_string())
            }
        })?;
        self.failpoints.check(Failpoint::AfterProbe);
        // Its buckets, before it signs: a bucket it may not use is refused by
        // IssueLink once it is active, and does not hold the rotation.
        self.preflight_key(&key).await;
        Ok(())
    }

    /// A presigned probe against the S3 endpoint, retried while the backend
    /// propagates the key: a key signs nothing before it passes.
    async fn prove_usable(&self, key: &SigningKey) -> Result<(), NotUsable> {
        match &self.probe.bucket {
            Some(bucket) => {
                let region = match self.regions.resolve(&self.probe.http, bucket, false).await {
                    Ok(r) => r,
                    Err(e) => {
                        return Err(NotUsable {
                            key_id: key.key_id.clone(),
                            attempts: 0,
                            last: format!("the region of bucket {bucket}: {e}"),
                            store_unavailable: false,
                        });
                    }
                };
                verify_usable(&self.probe.http, key, bucket, &region, self.probe.attempts).await
            }
            None => {
                tracing::warn!(signer = %key.signer, key_id = %key.key_id,
                    "no bucket configured: the new key was not probed before use");
                Ok(())
            }
        }
    }

    /// The new key's secret sealed for the registry (the key id as associated data).
    fn seal(&self, new: &NewKey) -> Vec<u8> {
        self.master_key.seal(
            &new.access_key_id,
            new.secret_access_key.expose().as_bytes(),
        )
    }

    /// Some signer has an active key loaded: IssueLink admits its requests.
    pub fn signs_anything(&self) -> bool {
        !self.keyring.is_empty()
    }

    /// Loads every active key from the registry into the keyring.
    pub async fn load_active_keys(&self) -> anyhow::Result<()> {
        for row in registry::keys::all_active(&self.pool).await? {
            self.install(&row)?;
        }
        Ok(())
    }

    /// Opens a key's sealed secret with the master key.
    pub fn open_secret(&self, row: &KeyRow) -> anyhow::Result<SecretString> {
        let secret = self
            .master_key
            .open(&row.key_id, &row.sealed_secret)
            .map_err(|e| {
                anyhow::anyhow!(
                    "opening the secret of key {}: {e}. If the master key changed: start presignd with the one \
                     the registry's secrets were sealed with, or re-seal them under the new one with \
                     `presignd reseal --new-master-key-file FILE` (run with the original key); \
                     a dev stack (deploy/dev) starts over with `deploy/dev/stack.sh reset`",
                    row.key_id
                )
            })?;
        Ok(SecretString::new(
            String::from_utf8(secret.to_vec()).context("a sealed secret is not UTF-8")?,
        ))
    }

    fn install(&self, row: &KeyRow) -> anyhow::Result<()> {
        if let Some(key) = self.open_new(row)? {
            self.keyring.install(key);
            tracing::info!(signer = %row.signer, key_id = %row.key_id, "signing with key");
        }
        Ok(())
    }

    /// The key of `row`, ready to sign, unless it is already the signer's
    /// active key in the keyring.
    fn open_new(&self, row: &KeyRow) -> anyhow::Result<Option<SigningKey>> {
        if self
            .keyring
            .active(&row.signer)
            .is_some_and(|k| k.key_id == row.key_id)
        {
            return Ok(None);
        }
        if is_session_key_id(&row.key_id) {
            anyhow::bail!("signing key {} {SESSION_KEY_REFUSED}", row.key_id);
        }
        let secret = self.open_secret(row)?;
        Ok(Some(SigningKey::new(
            &self.target,
            &row.key_id,
            &secret,
            &row.signer,
        )))
    }

    /// Makes the keyring agree with the registry for one signer: its active key,
    /// or none (issuance for it pauses).
    pub async fn reload_signer(&self, signer: &str) -> Result<(), registry::Error> {
        match registry::keys::active_for_signer(&self.pool, signer).await? {
            Some(row) => match self.open_new(&row) {
                Ok(None) => {}
                Ok(Some(key)) => {
                    // Activated by a rotation here (already checked) or by
                    // another replica: its buckets are checked from here too.
                    if !self.preflight_covers(&key) {
                        self.preflight_key(&key).await;
                    }
                    self.keyring.install(key);
                    tracing::info!(signer, key_id = %row.key_id, "signing with key");
                }
                Err(e) => {
                    tracing::error!(
                        signer,
                        error = format!("{e:#}"),
                        "cannot load the active key"
                    );
                    self.keyring.remove_signer(signer);
                }
            },
            None => self.keyring.remove_signer(signer),
        }
        Ok(())
    }

    /// Deactivates a live key. First it stops signing (an active key is
    /// retired and committed, so no link of it is handed out once the backend
    /// refuses it: an EMERGENCY gives out no dead link); then the backend
    /// deactivates it (from then on its links are refused), transient failures
    /// retried; then the registry marks it under its state-change lock, with
    /// the revocation that did it, in the caller's transaction; other replicas
    /// hear of it at commit.
    pub async fn deactivate(
        &self,
        conn: &mut sqlx::PgConnection,
        signer: &str,
        key_id: &str,
        revocation_id: Option<uuid::Uuid>,
    ) -> Result<(), KeyError> {
        self.stop_signing(signer, key_id).await?;
        self.deactivate_at_backend(signer, key_id).await?;
        self.failpoints.check(Failpoint::AfterBackendDeactivate);
        lock_for_state_change(&mut *conn, key_id).await?;
        registry::keys::deactivate(&mut *conn, key_id, revocation_id).await?;
        registry::keys::notify_changed(&mut *conn, signer).await?;
        Ok(())
    }

    /// An active key signs nothing more: retired under its state-change lock
    /// (in-flight link batches commit first, later ones are refused and the
    /// issuer finds no active key: UNAVAILABLE), committed, keyring reloaded.
    async fn stop_signing(&self, signer: &str, key_id: &str) -> Result<(), registry::Error> {
        let mut tx = registry::begin(&self.pool).await?;
        lock_for_state_change(&mut tx, key_id).await?;
        if registry::keys::retire(&mut tx, key_id).await? {
            registry::keys::notify_changed(&mut *tx, signer).await?;
            registry::commit(tx).await?;
            tracing::warn!(
                signer,
                key_id,
                "key stopped signing before its deactivation"
            );
            self.reload_signer(signer).await?;
        }
        Ok(())
    }

    /// The backend call, retried with backoff while the backend is throttling
    /// or unavailable (a few seconds in all; after that the revocation stays
    /// running and is resumed later). A refusal is returned at once.
    async fn deactivate_at_backend(&self, signer: &str, key_id: &str) -> Result<(), BackendError> {
        let mut delay = std::time::Duration::from_millis(200);
        for attempt in 1.. {
            match self.backend.deactivate_key(signer, key_id).await {
                Err(e) if e.is_transient() && attempt < DEACTIVATE_ATTEMPTS => {
                    tracing::warn!(signer, key_id, attempt, error = %e, "deactivation not done yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                other => return other,
            }
        }
        unreachable!("the loop returns")
    }

    /// Whether the backend still accepts `key_id` (false once deactivated or
    /// gone): the registry cannot know it for a key whose deactivation may
    /// have reached the backend without being recorded.
    pub async fn live_at_backend(&self, signer: &str, key_id: &str) -> Result<bool, BackendError> {
        self.backend.key_live(signer, key_id).await
    }

    /// Deletes a replacement key that never signed (still `pending`) at the
    /// backend and marks it deleted. A backend that refuses is logged: the key
    /// then stays pending, and signs nothing.
    pub async fn discard_pending(
        &self,
        conn: &mut sqlx::PgConnection,
        signer: &str,
        key_id: &str,
    ) -> Result<(), registry::Error> {
        let pending = registry::keys::get(&mut *conn, key_id)
            .await?
            .is_some_and(|k| k.state == KeyState::Pending);
        if !pending {
            return Ok(());
        }
        match self.backend.delete_key(signer, key_id).await {
            Ok(()) => registry::keys::mark_deleted(&mut *conn, key_id).await,
            Err(e) => {
                tracing::warn!(key_id, error = %e, "could not delete the unused replacement key");
                Ok(())
            }
        }
    }
}

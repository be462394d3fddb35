//! The signing keys' lifecycle: provisioning a signer's first key through its
//! backend, and loading active keys into the keyring (opening their sealed
//! secrets). Rotation and revocation build on these steps.

use crate::backend::{BackendError, KeyBackend, NewKey};
use crate::registry;
use crate::seal::MasterKey;
use crate::secret::SecretString;
use crate::signing::{Keyring, NotUsable, S3Target, SigningKey, verify_usable};
use anyhow::Context;
use sqlx::PgPool;
use std::sync::Arc;

#[derive(Clone)]
pub struct KeyManager {
    pub pool: PgPool,
    pub keyring: Keyring,
    pub backend: Arc<dyn KeyBackend>,
    pub master_key: MasterKey,
    pub target: S3Target,
    pub http: reqwest::Client,
    /// A bucket new keys are probed against (HEAD of a probe object).
    pub probe_bucket: Option<String>,
    pub verify_attempts: u32,
}

impl KeyManager {
    /// Makes sure `signer` exists and has an active key, creating one through the
    /// backend if needed, and loads it into the keyring. Serialized per signer by
    /// the signer's row lock, so replicas starting together create one key.
    pub async fn ensure_active_key(&self, signer: &str) -> anyhow::Result<()> {
        registry::signers::upsert(&self.pool, signer, self.backend.kind()).await?;
        let mut tx = self.pool.begin().await?;
        registry::signers::lock(&mut *tx, signer).await?;
        if registry::revocations::running_for_signer(&mut *tx, signer)
            .await?
            .is_some()
        {
            // That revocation's procedure gives the signer its next key.
            return Ok(());
        }
        if let Some(row) = registry::keys::active_for_signer(&mut *tx, signer).await? {
            tx.commit().await?;
            return self.install(&row);
        }
        let new = self
            .create_backend_key(&mut tx, signer)
            .await
            .with_context(|| format!("creating a signing key for signer {signer}"))?;
        let key = SigningKey::new(
            &self.target,
            &new.access_key_id,
            &new.secret_access_key,
            signer,
        );
        self.prove_usable(&key).await?;
        registry::keys::insert_active(&mut *tx, &new.access_key_id, signer, &self.seal(&new))
            .await?;
        tx.commit().await?;
        tracing::info!(signer, key_id = %new.access_key_id, "provisioned a signing key");
        self.keyring.install(key);
        Ok(())
    }

    /// A presigned probe against the S3 endpoint, retried while the backend
    /// propagates the key: a key signs nothing before it passes.
    pub async fn prove_usable(&self, key: &SigningKey) -> Result<(), NotUsable> {
        match &self.probe_bucket {
            Some(bucket) => verify_usable(&self.http, key, bucket, self.verify_attempts).await,
            None => {
                tracing::warn!(signer = %key.signer, key_id = %key.key_id,
                    "no bucket configured: the new key was not probed before use");
                Ok(())
            }
        }
    }

    /// The new key's secret sealed for the registry (the key id as associated data).
    pub fn seal(&self, new: &NewKey) -> Vec<u8> {
        self.master_key.seal(
            &new.access_key_id,
            new.secret_access_key.expose().as_bytes(),
        )
    }

    /// Loads every active key from the registry into the keyring.
    pub async fn load_active_keys(&self) -> anyhow::Result<()> {
        for row in registry::keys::all_active(&self.pool).await? {
            self.install(&row)?;
        }
        Ok(())
    }

    /// Opens a key's sealed secret with the master key.
    pub fn open_secret(&self, row: &registry::keys::KeyRow) -> anyhow::Result<SecretString> {
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

    fn install(&self, row: &registry::keys::KeyRow) -> anyhow::Result<()> {
        if self
            .keyring
            .active(&row.signer)
            .is_some_and(|k| k.key_id == row.key_id)
        {
            return Ok(());
        }
        let secret = self.open_secret(row)?;
        self.keyring.install(SigningKey::new(
            &self.target,
            &row.key_id,
            &secret,
            &row.signer,
        ));
        tracing::info!(signer = %row.signer, key_id = %row.key_id, "signing with key");
        Ok(())
    }

    /// Makes the keyring agree with the registry for one signer: its active key,
    /// or none (issuance for it pauses).
    pub async fn reload_signer(&self, signer: &str) -> Result<(), sqlx::Error> {
        match registry::keys::active_for_signer(&self.pool, signer).await? {
            Some(row) => {
                if let Err(e) = self.install(&row) {
                    tracing::error!(
                        signer,
                        error = format!("{e:#}"),
                        "cannot load the active key"
                    );
                    self.keyring.remove_signer(signer);
                }
            }
            None => self.keyring.remove_signer(signer),
        }
        Ok(())
    }

    /// Creates a key at the backend for `signer`. Where the backend limits keys
    /// per signer (AWS IAM: 2 per user) and the limit is reached, one slot is
    /// freed if a key can go without breaking anything (see `free_key_slot`).
    pub async fn create_backend_key(
        &self,
        conn: &mut sqlx::PgConnection,
        signer: &str,
    ) -> Result<NewKey, BackendError> {
        match self.backend.create_key(signer).await {
            Err(BackendError::LimitExceeded(limit)) => {
                self.free_key_slot(conn, signer, &limit).await?;
                self.backend.create_key(signer).await
            }
            other => other,
        }
    }

    /// Deletes one of the signer's backend keys whose links are all dead or
    /// expired: an inactive key, or a retired one with no outstanding link. A key
    /// presignd does not know is never touched. Otherwise says what to do.
    async fn free_key_slot(
        &self,
        conn: &mut sqlx::PgConnection,
        signer: &str,
        limit: &str,
    ) -> Result<(), BackendError> {
        let unavailable = |e: sqlx::Error| BackendError::Unavailable(format!("registry: {e}"));
        let mut described = Vec::new();
        for key in self.backend.list_keys(signer).await? {
            let id = &key.access_key_id;
            let state = registry::keys::get(&mut *conn, id)
                .await
                .map_err(unavailable)?
                .map(|k| k.state);
            let outstanding = registry::keys::outstanding_links(&mut *conn, id)
                .await
                .map_err(unavailable)?;
            let freeable = match state.as_deref() {
                Some("inactive" | "deleted") => true,
                Some("retired") => outstanding == 0,
                _ => false,
            };
            if freeable {
                if key.active {
                    self.backend.deactivate_key(signer, id).await?;
                }
                self.backend.delete_key(signer, id).await?;
                registry::keys::mark_deleted(&mut *conn, id)
                    .await
                    .map_err(unavailable)?;
                tracing::info!(signer, key_id = %id, "deleted a spent key to stay within the backend's key limit");
                return Ok(());
            }
            described.push(format!(
                "{id}: {} in presignd, {} at the backend, {outstanding} outstanding links",
                state.as_deref().unwrap_or("unknown"),
                if key.active { "active" } else { "inactive" },
            ));
        }
        Err(BackendError::Refused(format!(
            "signer {signer} already has as many keys as the backend allows ({limit}) and none can go without breaking links: {}. \
             Use mode EMERGENCY (it deactivates the active key first), or wait until the retired key's links expire, then retry",
            described.join("; ")
        )))
    }

    /// Follows key changes made by any replica (NOTIFY presignd_keys, sent by the
    /// transaction that changes a signer's keys) and reloads that signer. After a
    /// lost connection every signer is reloaded, as notifications may be missed.
    pub async fn follow_key_changes(self, signers: Vec<String>) {
        loop {
            let mut listener = match sqlx::postgres::PgListener::connect_with(&self.pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(error = %e, "key-change listener cannot connect; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Err(e) = listener.listen(registry::keys::KEYS_CHANNEL).await {
                tracing::warn!(error = %e, "LISTEN failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
            self.reload_all(&signers).await;
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) => {
                        if let Err(e) = self.reload_signer(n.payload()).await {
                            tracing::warn!(error = %e, "reloading keys after a change");
                        }
                    }
                    // The connection was lost and re-established: resync everything.
                    Ok(None) => self.reload_all(&signers).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "key-change listener failed; reconnecting");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
        }
    }

    async fn reload_all(&self, signers: &[String]) {
        for s in signers {
            if let Err(e) = self.reload_signer(s).await {
                tracing::warn!(signer = %s, error = %e, "reloading keys");
            }
        }
    }
}

impl KeyManager {
    /// Signers and every key with its outstanding links (ListSigningKeys).
    pub async fn list_keys(
        &self,
        signer: Option<&str>,
    ) -> Result<
        (
            Vec<registry::signers::SignerRow>,
            Vec<registry::keys::KeySummaryRow>,
        ),
        crate::revocation::RevocationError,
    > {
        let signers = registry::signers::list(&self.pool)
            .await?
            .into_iter()
            .filter(|s| signer.is_none_or(|n| n == s.name))
            .collect();
        let keys = registry::keys::list_with_outstanding(&self.pool, signer).await?;
        Ok((signers, keys))
    }
}

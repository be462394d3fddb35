//! The signing keys' lifecycle: provisioning a signer's first key through its
//! backend, and loading active keys into the keyring (opening their sealed
//! secrets). Rotation and revocation build on these steps.

use crate::backend::KeyBackend;
use crate::registry;
use crate::seal::MasterKey;
use crate::secret::SecretString;
use crate::signing::{Keyring, S3Target, SigningKey, verify_usable};
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
        if let Some(row) = registry::keys::active_for_signer(&mut *tx, signer).await? {
            tx.commit().await?;
            return self.install(&row);
        }
        let new = self
            .backend
            .create_key(signer)
            .await
            .with_context(|| format!("creating a signing key for signer {signer}"))?;
        let key = SigningKey::new(
            &self.target,
            &new.access_key_id,
            &new.secret_access_key,
            signer,
        );
        match &self.probe_bucket {
            Some(bucket) => verify_usable(&self.http, &key, bucket, self.verify_attempts).await?,
            None => tracing::warn!(
                signer,
                "no bucket configured: the new key was not probed before use"
            ),
        }
        let sealed = self.master_key.seal(
            &new.access_key_id,
            new.secret_access_key.expose().as_bytes(),
        );
        registry::keys::insert_active(&mut *tx, &new.access_key_id, signer, &sealed).await?;
        tx.commit().await?;
        tracing::info!(signer, key_id = %new.access_key_id, "provisioned a signing key");
        self.keyring.install(key);
        Ok(())
    }

    /// Loads every active key from the registry into the keyring.
    pub async fn load_active_keys(&self) -> anyhow::Result<()> {
        for row in registry::keys::all_active(&self.pool).await? {
            self.install(&row)?;
        }
        Ok(())
    }

    fn install(&self, row: &registry::keys::KeyRow) -> anyhow::Result<()> {
        let secret = self
            .master_key
            .open(&row.key_id, &row.sealed_secret)
            .with_context(|| format!("opening the secret of key {}", row.key_id))?;
        let secret = SecretString::new(
            String::from_utf8(secret.to_vec()).context("a sealed secret is not UTF-8")?,
        );
        self.keyring.install(SigningKey::new(
            &self.target,
            &row.key_id,
            &secret,
            &row.signer,
        ));
        Ok(())
    }
}

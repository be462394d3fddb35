//! `presignd reseal`: re-encrypts every sealed secret under a new master key, in
//! one transaction. Each secret is first opened with the current key (any that
//! does not open aborts everything: nothing is half-resealed), then sealed under
//! the new key with the same associated data (its key id) and checked to open.
//!
//! Stop every replica first: a running replica keeps sealing new keys under the
//! old master key. Then restart them with the new one.

use crate::registry::sealed;
use crate::seal::MasterKey;
use anyhow::{Context, bail};
use sqlx::PgPool;

/// Returns how many secrets were resealed.
pub async fn reseal(pool: &PgPool, old: &MasterKey, new: &MasterKey) -> anyhow::Result<usize> {
    if old.to_hex() == new.to_hex() {
        bail!("the new master key is the current one: nothing to do");
    }
    let mut tx = pool.begin().await.context("registry")?;
    sealed::lock_all_signers(&mut *tx).await?;
    let rows = sealed::all_for_update(&mut *tx).await?;
    for row in &rows {
        let secret = old.open(&row.key_id, &row.sealed_secret).with_context(|| {
            format!(
                "the secret of key {} does not open with the current master key; nothing was changed",
                row.key_id
            )
        })?;
        let resealed = new.seal(&row.key_id, &secret);
        let check = new
            .open(&row.key_id, &resealed)
            .with_context(|| format!("key {}: the resealed secret does not open", row.key_id))?;
        if *check != *secret {
            bail!(
                "key {}: the resealed secret does not round-trip",
                row.key_id
            );
        }
        sealed::replace(&mut *tx, &row.key_id, &resealed).await?;
    }
    tx.commit()
        .await
        .context("committing the resealed secrets")?;
    tracing::info!(
        keys = rows.len(),
        "resealed every secret under the new master key"
    );
    Ok(rows.len())
}

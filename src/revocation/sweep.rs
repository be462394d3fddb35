//! GRACEFUL rotations leave the old key retired: it signs nothing new, and its
//! links keep working until they expire. Once the last one has expired, the key
//! is deactivated at the backend, so a leaked secret is worthless from then on.

use super::RevocationError;
use crate::keys::KeyManager;
use crate::registry::keys;

/// Deactivates every retired key with no unexpired link; returns their ids.
pub async fn sweep_retired_keys(km: &KeyManager) -> Result<Vec<String>, RevocationError> {
    let mut done = Vec::new();
    for key in keys::retired_without_outstanding_links(&km.pool).await? {
        km.backend.deactivate_key(&key.signer, &key.key_id).await?;
        let mut tx = km.pool.begin().await?;
        keys::deactivate(&mut tx, &key.key_id, None).await?;
        keys::notify_changed(&mut *tx, &key.signer).await?;
        tx.commit().await?;
        tracing::info!(key_id = %key.key_id, signer = %key.signer, "retired key deactivated: its last link expired");
        done.push(key.key_id);
    }
    Ok(done)
}

//! GRACEFUL rotations leave the old key retired: it signs nothing new, and its
//! links keep working until they expire. Once the last one has expired, the key
//! is deactivated at the backend, so a leaked secret is worthless from then on.

use super::{KeyError, KeyManager};
use crate::registry;

impl KeyManager {
    /// Deactivates every retired key with no unexpired link; returns their ids.
    pub async fn sweep_retired_keys(&self) -> Result<Vec<String>, KeyError> {
        let mut done = Vec::new();
        for key in registry::keys::retired_without_outstanding_links(&self.pool).await? {
            let mut tx = registry::begin(&self.pool).await?;
            self.deactivate(&mut tx, &key.signer, &key.key_id, None)
                .await?;
            registry::commit(tx).await?;
            tracing::info!(key_id = %key.key_id, signer = %key.signer, "retired key deactivated: its last link expired");
            done.push(key.key_id);
        }
        Ok(done)
    }
}

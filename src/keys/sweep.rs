//! GRACEFUL rotations leave the old key retired: it signs nothing new, and its
//! links keep working until they expire. Once the last one has expired, the key
//! is deactivated at the backend, so a leaked secret is worthless from then on.
//! One key failing does not stop the others: it stays retired and is tried
//! again on the next sweep.

use super::{KeyError, KeyManager};
use crate::registry;

/// What one sweep did.
#[derive(Debug, Default)]
pub struct Swept {
    pub deactivated: Vec<String>,
    /// Keys still live, with why: retried on the next sweep.
    pub failed: Vec<(String, KeyError)>,
}

impl KeyManager {
    /// Deactivates every retired key with no unexpired link.
    pub async fn sweep_retired_keys(&self) -> Result<Swept, registry::Error> {
        let mut swept = Swept::default();
        for key in registry::keys::retired_without_outstanding_links(&self.pool).await? {
            match self.deactivate_retired(&key.signer, &key.key_id).await {
                Ok(()) => {
                    tracing::info!(key_id = %key.key_id, signer = %key.signer, "retired key deactivated: its last link expired");
                    swept.deactivated.push(key.key_id);
                }
                Err(e) => {
                    tracing::warn!(key_id = %key.key_id, signer = %key.signer, error = %e,
                        "retired key not deactivated; it stays live and is retried on the next sweep");
                    swept.failed.push((key.key_id, e));
                }
            }
        }
        Ok(swept)
    }

    async fn deactivate_retired(&self, signer: &str, key_id: &str) -> Result<(), KeyError> {
        let mut tx = registry::begin(&self.pool).await?;
        self.deactivate(&mut tx, signer, key_id, None).await?;
        registry::commit(tx).await?;
        Ok(())
    }
}

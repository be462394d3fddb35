//! Following key changes made by any replica: the transaction that changes a
//! signer's keys sends NOTIFY presignd_keys with the signer's name, and every
//! replica reloads that signer. After a lost connection every signer is
//! reloaded, as notifications may have been missed.

use super::KeyManager;
use crate::registry;
use std::time::Duration;

impl KeyManager {
    pub async fn follow_key_changes(self, signers: Vec<String>) {
        loop {
            let mut listener = match sqlx::postgres::PgListener::connect_with(&self.pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(error = %e, "key-change listener cannot connect; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Err(e) = listener.listen(registry::keys::KEYS_CHANNEL).await {
                tracing::warn!(error = %e, "LISTEN failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            self.reload_all(&signers).await;
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) => {
                        if let Err(e) = self.reload_signer(n.payload()).await {
                            tracing::warn!(error = %e, "reloading keys after a change");
                        }
                        self.changes.send_modify(|n| *n += 1);
                    }
                    // The connection was lost and re-established: resync everything.
                    Ok(None) => {
                        self.reload_all(&signers).await;
                        self.changes.send_modify(|n| *n += 1);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "key-change listener failed; reconnecting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
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

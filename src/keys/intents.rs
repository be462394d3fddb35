//! Key creation no crash can leak (invariant 6). Before the backend creates a
//! key, an intent naming it (`presignd-{signer}-{intent id}`, Garage's key
//! name) is committed; the transaction that records the key resolves the
//! intent. Every creation holds its signer's row lock from before the intent
//! until that transaction ends, and so does reconciliation: an intent it
//! finds is not in progress, it was left behind by a crash or an error
//! between the backend call and the commit. Its key is then deleted at the
//! backend, never adopted: its secret was never sealed anywhere (AWS shows a
//! secret only once), and the step that wanted it creates another.

use super::failpoints::Failpoint;
use super::{KeyError, KeyManager};
use crate::backend::{BackendError, NewKey};
use crate::domain::KeyState;
use crate::registry::{self, key_intents};
use uuid::Uuid;

/// A key the backend created under an intent not yet resolved.
pub(super) struct Created {
    pub key: NewKey,
    intent: Uuid,
}

/// What one reconciliation did.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Backend keys deleted: created under an intent, never recorded.
    pub deleted: Vec<String>,
    /// Intents resolved.
    pub resolved: usize,
    /// Signers whose intents stay unresolved (the backend failed): retried
    /// on the next maintenance tick.
    pub failed: Vec<(String, BackendError)>,
}

impl Reconciled {
    fn fail(&mut self, signer: String, e: BackendError) {
        tracing::warn!(signer, error = %e,
            "key intents not reconciled yet: keys created for them may be live; retried on the next tick");
        self.failed.push((signer, e));
    }
}

impl KeyManager {
    /// Creates a key for `signer` at the backend under a committed intent,
    /// taking the signer's row lock in `conn` first (held until the caller's
    /// transaction ends). The caller records it with `record` in that
    /// transaction; if it never commits, reconciliation deletes the key.
    pub(super) async fn create_backend_key(
        &self,
        conn: &mut sqlx::PgConnection,
        signer: &str,
    ) -> Result<Created, KeyError> {
        registry::signers::lock(&mut *conn, signer).await?;
        let intent = Uuid::now_v7();
        let name = format!("presignd-{signer}-{intent}");
        key_intents::insert(&self.pool, intent, signer, &name).await?;
        self.failpoints.check(Failpoint::AfterIntent);
        let key = self.create_within_limit(&mut *conn, signer, &name).await?;
        self.failpoints.check(Failpoint::AfterBackendCreate);
        Ok(Created { key, intent })
    }

    /// Records the created key (sealed) in `state` and resolves its intent, in
    /// the caller's transaction.
    pub(super) async fn record(
        &self,
        conn: &mut sqlx::PgConnection,
        signer: &str,
        created: &Created,
        state: KeyState,
    ) -> Result<(), registry::Error> {
        let sealed = self.seal(&created.key);
        registry::keys::insert(
            &mut *conn,
            &created.key.access_key_id,
            signer,
            state,
            &sealed,
        )
        .await?;
        key_intents::resolve(&mut *conn, created.intent).await
    }

    /// The created key never reached the registry: deleted at the backend
    /// now, then its intent resolved (if the backend refuses, the intent
    /// stays and reconciliation tries again).
    pub(super) async fn abandon(&self, signer: &str, created: Created) -> Result<(), KeyError> {
        let id = &created.key.access_key_id;
        self.backend.delete_key(signer, id).await?;
        key_intents::resolve(&self.pool, created.intent).await?;
        Ok(())
    }

    /// Resolves every intent no creation holds: each key created under it
    /// and unknown to the registry is deleted at the backend, then the
    /// intents of that signer are resolved together. Runs at startup and on
    /// every maintenance tick; one signer failing does not stop the others.
    pub async fn reconcile_intents(&self) -> Result<Reconciled, registry::Error> {
        let mut done = Reconciled::default();
        'signers: for signer in key_intents::signers_with_unresolved(&self.pool).await? {
            let mut tx = registry::begin(&self.pool).await?;
            // Waits for a creation in progress, which resolves its own intent.
            registry::signers::lock(&mut *tx, &signer).await?;
            let intents = key_intents::unresolved_for_signer(&mut tx, &signer).await?;
            let Some(since) = intents.iter().map(|i| i.created_at).min() else {
                continue;
            };
            let names: Vec<String> = intents.iter().map(|i| i.name.clone()).collect();
            let found = match self.backend.find_created(&signer, &names, since).await {
                Ok(found) => found,
                Err(e) => {
                    done.fail(signer, e);
                    continue;
                }
            };
            let mut deleted = Vec::new();
            for id in found {
                if registry::keys::get(&mut *tx, &id).await?.is_some() {
                    continue;
                }
                if let Err(e) = self.backend.delete_key(&signer, &id).await {
                    done.deleted.extend(deleted);
                    done.fail(signer, e);
                    continue 'signers;
                }
                deleted.push(id);
            }
            for intent in &intents {
                key_intents::resolve(&mut *tx, intent.id).await?;
            }
            registry::commit(tx).await?;
            tracing::warn!(signer, intents = intents.len(), deleted = ?deleted,
                "reconciled key intents left by a crash or an error: keys created and never recorded were deleted");
            done.resolved += intents.len();
            done.deleted.extend(deleted);
        }
        Ok(done)
    }
}

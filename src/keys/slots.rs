//! Backends that limit keys per signer (AWS IAM: 2 per user): when the limit
//! is reached, one slot is freed if a key can go without breaking anything.

use super::KeyManager;
use crate::backend::{BackendError, NewKey};
use crate::domain::KeyState;
use crate::registry;
use crate::signing::{SESSION_KEY_REFUSED, is_session_key_id};

impl KeyManager {
    /// Creates a key named `name` at the backend for `signer`, freeing a slot
    /// first if the backend's limit is reached (see `free_key_slot`).
    pub(super) async fn create_within_limit(
        &self,
        conn: &mut sqlx::PgConnection,
        signer: &str,
        name: &str,
    ) -> Result<NewKey, BackendError> {
        let new = match self.backend.create_key(signer, name).await {
            Err(BackendError::LimitExceeded(limit)) => {
                self.free_key_slot(conn, signer, &limit).await?;
                self.backend.create_key(signer, name).await
            }
            other => other,
        }?;
        if is_session_key_id(&new.access_key_id) {
            // Never recorded, so never left live: deleted at once.
            let _ = self.backend.delete_key(signer, &new.access_key_id).await;
            return Err(BackendError::Refused(format!(
                "the new key {} {SESSION_KEY_REFUSED}",
                new.access_key_id
            )));
        }
        Ok(new)
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
        let unavailable = |e: registry::Error| BackendError::Unavailable(e.to_string());
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
            let freeable = match state {
                Some(s) if s.is_dead() => true,
                Some(KeyState::Retired) => outstanding == 0,
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
                state.map_or("unknown", KeyState::as_str),
                if key.active { "active" } else { "inactive" },
            ));
        }
        Err(BackendError::Refused(format!(
            "signer {signer} already has as many keys as the backend allows ({limit}) and none can go without breaking links: {}. \
             Use mode EMERGENCY (it deactivates the active key first), or wait until the retired key's links expire, then retry",
            described.join("; ")
        )))
    }
}

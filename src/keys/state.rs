//! Changing a key's state. Every change runs after the key's state-change lock
//! (`lock_for_state_change`): it waits for the in-flight batches of links
//! signed by the key to commit, and holds new ones off until the change
//! commits, so a revocation counts exactly the links it revokes (invariant 3).

use crate::registry;
use sqlx::PgConnection;

/// Takes the key's issuance lock exclusively until the end of the transaction
/// (see `registry::links::record`, which takes it shared).
pub async fn lock_for_state_change(
    conn: &mut PgConnection,
    key_id: &str,
) -> Result<(), registry::Error> {
    registry::keys::lock_issuance_exclusive(conn, key_id).await
}

/// The signer's next key takes over: the old one (if any) `active → retired`,
/// the new one `pending → active`, issuance resumes, replicas are told.
/// False if the new key is not pending any more (a standby key discarded
/// after a failed probe while a rotation adopted it): then nothing must
/// commit, or the signer would be left with no active key.
pub async fn activate_replacement(
    conn: &mut PgConnection,
    signer: &str,
    old_key_id: Option<&str>,
    new_key_id: &str,
) -> Result<bool, registry::Error> {
    registry::signers::lock(&mut *conn, signer).await?;
    if let Some(old) = old_key_id {
        // Waits for in-flight inserts signed by the old key; none succeed after.
        lock_for_state_change(&mut *conn, old).await?;
        registry::keys::retire(&mut *conn, old).await?;
    }
    if !registry::keys::activate(&mut *conn, new_key_id).await? {
        return Ok(false);
    }
    registry::signers::set_paused(&mut *conn, signer, false).await?;
    registry::keys::notify_changed(&mut *conn, signer).await?;
    Ok(true)
}

//! The signers' blast-radius budgets (`--key-budgets`) as this process holds
//! them, and the issuance-side trigger of their checks.
//!
//! The check itself (count the active key's outstanding links, rotate GRACEFUL
//! when a limit is reached) is `revocation::budget`'s; it runs every
//! maintenance tick and whenever this process has committed a twentieth of a
//! signer's links budget since the last check (`issued`), so a hot signer is
//! checked after a few links, not after a tick, and an idle one costs nothing.
//!
//! A budgeted signer keeps one standby key (`prepare_standby`): created,
//! proven usable and recorded `pending` ahead of need, so the budget's GRACEFUL
//! rotation adopts it and only activates (milliseconds), instead of creating
//! and probing a key while the old one keeps signing (a third of a second on
//! Garage: the links issued meanwhile would overshoot the budget).

use super::{KeyError, KeyManager};
use crate::domain::{KeyBudget, SignerName};
use crate::registry;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Notify;

/// Cheap to clone; shared by the issuer (which counts) and the budget check.
#[derive(Clone, Default)]
pub struct KeyBudgets {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    by_signer: BTreeMap<String, Watched>,
    wake: Notify,
    /// Signers whose budget rotation failed: not tried again before then.
    held: Mutex<HashMap<String, Instant>>,
}

struct Watched {
    budget: KeyBudget,
    /// Links this process committed for the signer since the last wake-up.
    since_check: AtomicU64,
    /// A standby key is being made ready (one at a time).
    preparing: AtomicBool,
}

impl KeyBudgets {
    pub fn new(budgets: impl IntoIterator<Item = (SignerName, KeyBudget)>) -> Self {
        let by_signer = budgets
            .into_iter()
            .map(|(signer, budget)| {
                let watched = Watched {
                    budget,
                    since_check: AtomicU64::new(0),
                    preparing: AtomicBool::new(false),
                };
                (signer.to_string(), watched)
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                by_signer,
                ..Inner::default()
            }),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.inner.by_signer.is_empty()
    }

    pub fn get(&self, signer: &str) -> Option<KeyBudget> {
        self.inner.by_signer.get(signer).map(|w| w.budget)
    }

    /// Every budgeted signer and its budget.
    pub fn iter(&self) -> impl Iterator<Item = (&str, KeyBudget)> {
        self.inner
            .by_signer
            .iter()
            .map(|(s, w)| (s.as_str(), w.budget))
    }

    /// One link of `signer` committed by this process: wakes the budget check
    /// once every `KeyBudget::check_every` of them. Two atomic operations on
    /// the issuance path; nothing for a signer without a links budget.
    pub fn issued(&self, signer: &str) {
        let Some(w) = self.inner.by_signer.get(signer) else {
            return;
        };
        let Some(every) = w.budget.check_every() else {
            return;
        };
        if w.since_check.fetch_add(1, Ordering::Relaxed) + 1 >= every {
            w.since_check.store(0, Ordering::Relaxed);
            // A permit is kept if the check is busy: no wake-up is lost.
            self.inner.wake.notify_one();
        }
    }

    /// Waits until `issued` asks for a check.
    pub async fn woken(&self) {
        self.inner.wake.notified().await
    }

    /// Makes `signer`'s standby key ready in a task of its own (creating and
    /// probing a key takes a third of a second or more: the checks go on
    /// meanwhile), unless one is being made already.
    pub fn prepare_standby(&self, keys: &KeyManager, signer: &str) {
        let Some(w) = self.inner.by_signer.get(signer) else {
            return;
        };
        if w.preparing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (budgets, keys, signer) = (self.clone(), keys.clone(), signer.to_owned());
        tokio::spawn(async move {
            if let Err(e) = keys.prepare_standby(&signer).await {
                tracing::warn!(signer, error = %e, "no standby key yet; the next budget rotation creates its key");
            }
            if let Some(w) = budgets.inner.by_signer.get(&signer) {
                w.preparing.store(false, Ordering::Release);
            }
        });
    }

    /// Skips the signer's budget rotations until `until` (after one failed).
    pub fn hold(&self, signer: &str, until: Instant) {
        self.held().insert(signer.to_owned(), until);
    }

    pub fn is_held(&self, signer: &str, now: Instant) -> bool {
        self.held().get(signer).is_some_and(|until| *until > now)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.inner.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl KeyManager {
    /// Gives `signer` a standby key if it has none and no revocation is
    /// running for it (that one brings its own key); returns the key created.
    /// Created under the signer's row lock (as a rotation's `create_key`), so
    /// replicas make one; then proven usable, or deleted again.
    pub async fn prepare_standby(&self, signer: &str) -> Result<Option<String>, KeyError> {
        let mut tx = registry::begin(&self.pool).await?;
        registry::signers::lock(&mut *tx, signer).await?;
        if registry::revocations::running_for_signer(&mut *tx, signer)
            .await?
            .is_some()
            || registry::keys::standby(&mut *tx, signer).await?.is_some()
        {
            return Ok(None);
        }
        let key_id = self.create_replacement(&mut tx, signer).await?;
        registry::commit(tx).await?;
        let mut tx = registry::begin(&self.pool).await?;
        if let Err(e) = self.verify_recorded(&mut tx, &key_id).await {
            self.discard_pending(&mut tx, signer, &key_id).await?;
            registry::commit(tx).await?;
            return Err(e);
        }
        registry::commit(tx).await?;
        tracing::info!(
            signer,
            key_id,
            "standby key ready for the next budget rotation"
        );
        Ok(Some(key_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_check_is_asked_for_every_twentieth_of_the_links_budget() {
        let (signer, budget) = KeyBudget::parse("hot:links=100").unwrap();
        let budgets = KeyBudgets::new([(signer, budget)]);
        for _ in 0..4 {
            budgets.issued("hot");
            budgets.issued("cold");
        }
        let woken = tokio::time::timeout(Duration::from_millis(20), budgets.woken());
        assert!(woken.await.is_err(), "4 of 5 links: no check yet");
        budgets.issued("hot");
        let woken = tokio::time::timeout(Duration::from_millis(20), budgets.woken());
        assert!(woken.await.is_ok(), "the fifth link asks for a check");
    }
}

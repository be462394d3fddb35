//! Revocation: what breaks if a key dies (the plan, or blast radius), and the
//! rotate-and-deactivate procedure, a persisted state machine advanced one
//! idempotent step at a time (see `procedure`). The key changes each step makes
//! are the key lifecycle's (`crate::keys`).

mod budget;
mod cancel;
mod procedure;
mod rotate;
mod watch;

pub use budget::{BUDGET_REQUESTER, BudgetCheck};
pub use cancel::Cancelled;
pub use procedure::{Advance, Stuck};
pub use rotate::{
    MAX_QUARANTINE, MAX_REASON_CHARS, PlanTarget, RevokeKeyRequest, RotateRequest, Rotation,
};
pub use watch::Watched;

use crate::backend::BackendError;
use crate::domain::{FieldError, KeyState, RevocationState, RotationMode};
use crate::keys::{KeyError, KeyManager};
use crate::registry;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// The revocation service: plans, starts, drives and reads revocations.
#[derive(Clone)]
pub struct Revocations {
    pool: PgPool,
    keys: KeyManager,
    /// When each stuck revocation is tried again (backoff, this process only).
    retries: Arc<Mutex<HashMap<Uuid, procedure::Retry>>>,
    /// True once the server shuts down: WatchRevocations' streams end.
    closing: Arc<tokio::sync::watch::Sender<bool>>,
    watchers: Arc<watch::Watchers>,
}

impl Revocations {
    pub fn new(pool: PgPool, keys: KeyManager) -> Self {
        Self {
            pool,
            keys,
            retries: Arc::default(),
            closing: Arc::new(tokio::sync::watch::Sender::new(false)),
            watchers: Arc::new(watch::Watchers::new(
                watch::DEFAULT_MAX_WATCHERS,
                watch::DEFAULT_MAX_WATCHERS_PER_CALLER,
            )),
        }
    }

    /// At most `max` WatchRevocations streams at once, `per_caller` per caller.
    pub fn with_watch_limits(mut self, max: usize, per_caller: usize) -> Self {
        self.watchers = Arc::new(watch::Watchers::new(max, per_caller));
        self
    }
}

/// The steps of `mode`, in order. Without an old key (a signer left with no
/// active key), there is nothing to deactivate.
pub fn steps(mode: RotationMode, has_old_key: bool) -> Vec<Step> {
    use Step::*;
    let all: &[Step] = match mode {
        RotationMode::Graceful => &[CreateKey, VerifyKey, ActivateKey],
        RotationMode::Revoke => &[CreateKey, VerifyKey, ActivateKey, DeactivateOld],
        RotationMode::Emergency => &[DeactivateOld, CreateKey, VerifyKey, ActivateKey],
    };
    all.iter()
        .copied()
        .filter(|s| has_old_key || *s != DeactivateOld)
        .collect()
}

pub fn next_after(mode: RotationMode, has_old_key: bool, step: Step) -> Step {
    let steps = steps(mode, has_old_key);
    steps
        .iter()
        .position(|s| *s == step)
        .and_then(|i| steps.get(i + 1).copied())
        .unwrap_or(Step::Done)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    CreateKey,
    VerifyKey,
    ActivateKey,
    DeactivateOld,
    Done,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateKey => "create_key",
            Self::VerifyKey => "verify_key",
            Self::ActivateKey => "activate_key",
            Self::DeactivateOld => "deactivate_old_key",
            Self::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::CreateKey,
            Self::VerifyKey,
            Self::ActivateKey,
            Self::DeactivateOld,
            Self::Done,
        ]
        .into_iter()
        .find(|step| step.as_str() == s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error(transparent)]
    InvalidArgument(#[from] FieldError),
    #[error("unknown signer {0:?}")]
    UnknownSigner(String),
    #[error("unknown signing key {0:?}")]
    UnknownKey(String),
    #[error("signer {0} has no active key")]
    NoActiveKey(String),
    #[error(
        "signer {signer}'s active key is {actual}, not the expected {expected}: it was rotated already; re-plan before rotating again"
    )]
    ExpectedKeyMismatch {
        signer: String,
        expected: String,
        actual: String,
    },
    #[error(
        "revocation {id} is already running for signer {signer}; follow it with GetRevocation (or abandon it with CancelRevocation)"
    )]
    AlreadyRunning { id: Uuid, signer: String },
    #[error("signing key {key_id} is {state}: {}", not_live_hint(*.state))]
    KeyNotLive { key_id: String, state: KeyState },
    #[error("revocation {id} is {state}, not running: nothing to cancel")]
    NotRunning { id: Uuid, state: RevocationState },
    #[error(
        "revocation {id} has deactivated key {key_id} at the backend already (its links are dead); only recording it is left, which the revocation does when it resumes (the maintenance loop retries it): nothing to cancel"
    )]
    DeactivatedAlready { id: Uuid, key_id: String },
    #[error("revocation {0} not found")]
    NotFound(Uuid),
    #[error("revocation {id} failed: {message} (see GetRevocation {id} for the steps)")]
    Failed { id: Uuid, message: String },
    #[error("{0}")]
    NotYours(String),
    #[error("{0}")]
    TooManyWatchers(String),
    #[error(
        "after_sequence {after} is before the retained events: retention (--retention-days) deleted those through sequence {pruned}; \
         reconcile with ListRevocations (ReissueLinks per revocation), then watch with after_sequence={pruned}"
    )]
    CursorPruned { after: i64, pruned: i64 },
    #[error("the server is shutting down: reconnect (to another replica) with after_sequence={0}")]
    ShuttingDown(i64),
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The S3 endpoint unreachable or busy while a new key was proven.
    #[error("{0}")]
    StoreUnavailable(String),
    #[error(transparent)]
    Registry(#[from] registry::Error),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

fn not_live_hint(state: KeyState) -> &'static str {
    match state {
        KeyState::Pending => {
            "it is a running rotation's replacement (CancelRevocation deletes it) or a blast-radius budget's standby key (the next GRACEFUL rotation adopts it), and signs nothing"
        }
        _ => "it is already deactivated at the backend: every link it signed is dead",
    }
}

impl From<KeyError> for RevocationError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Backend(e) => Self::Backend(e),
            KeyError::Registry(e) => Self::Registry(e),
            KeyError::Unusable(m) => Self::Other(anyhow::anyhow!(m)),
            KeyError::StoreUnavailable(m) => Self::StoreUnavailable(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emergency_deactivates_before_creating_the_replacement() {
        let steps = steps(RotationMode::Emergency, true);
        assert_eq!(steps.first(), Some(&Step::DeactivateOld));
        assert_eq!(steps.last(), Some(&Step::ActivateKey));
    }

    #[test]
    fn revoke_deactivates_only_after_the_new_key_is_active() {
        let steps = steps(RotationMode::Revoke, true);
        let activate = steps.iter().position(|s| *s == Step::ActivateKey).unwrap();
        let deactivate = steps
            .iter()
            .position(|s| *s == Step::DeactivateOld)
            .unwrap();
        assert!(activate < deactivate);
    }

    #[test]
    fn graceful_never_deactivates() {
        assert!(!steps(RotationMode::Graceful, true).contains(&Step::DeactivateOld));
    }

    #[test]
    fn without_an_old_key_there_is_nothing_to_deactivate() {
        assert!(!steps(RotationMode::Emergency, false).contains(&Step::DeactivateOld));
        assert_eq!(steps(RotationMode::Emergency, false)[0], Step::CreateKey);
    }

    #[test]
    fn the_step_after_the_last_is_done_and_names_round_trip() {
        assert_eq!(
            next_after(RotationMode::Revoke, true, Step::DeactivateOld),
            Step::Done
        );
        for s in [
            Step::CreateKey,
            Step::VerifyKey,
            Step::ActivateKey,
            Step::DeactivateOld,
            Step::Done,
        ] {
            assert_eq!(Step::parse(s.as_str()), Some(s));
        }
    }
}

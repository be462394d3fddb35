//! Revocation: what breaks if a key dies (the plan, or blast radius), and the
//! rotate-and-deactivate procedure, a persisted state machine advanced one
//! idempotent step at a time (see `procedure`).

mod procedure;
mod rotate;
mod sweep;

pub use procedure::{Advance, drive, resume_all, try_advance};
pub use rotate::{PlanTarget, RotateRequest, Rotation, get, plan, rotate, start};
pub use sweep::sweep_retired_keys;

use crate::backend::BackendError;
use crate::domain::FieldError;
use crate::proto;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// New key active, old key retired: nothing breaks; the old key is
    /// deactivated once its last link expires.
    Graceful,
    /// As graceful, then the old key is deactivated at once.
    Revoke,
    /// Deactivate first, then create the replacement; issuance pauses between.
    Emergency,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Graceful => "graceful",
            Self::Revoke => "revoke",
            Self::Emergency => "emergency",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "graceful" => Some(Self::Graceful),
            "revoke" => Some(Self::Revoke),
            "emergency" => Some(Self::Emergency),
            _ => None,
        }
    }

    pub fn from_proto(value: i32) -> Result<Self, FieldError> {
        match proto::RotationMode::try_from(value) {
            Ok(proto::RotationMode::Graceful) => Ok(Self::Graceful),
            Ok(proto::RotationMode::Revoke) => Ok(Self::Revoke),
            Ok(proto::RotationMode::Emergency) => Ok(Self::Emergency),
            _ => Err(FieldError::new(
                "mode",
                "is required: one of GRACEFUL, REVOKE, EMERGENCY",
            )),
        }
    }

    pub fn to_proto(self) -> proto::RotationMode {
        match self {
            Self::Graceful => proto::RotationMode::Graceful,
            Self::Revoke => proto::RotationMode::Revoke,
            Self::Emergency => proto::RotationMode::Emergency,
        }
    }

    /// The steps of this mode, in order. Without an old key (a signer left with
    /// no active key), there is nothing to deactivate.
    pub fn steps(self, has_old_key: bool) -> Vec<Step> {
        use Step::*;
        let all: &[Step] = match self {
            Self::Graceful => &[CreateKey, VerifyKey, ActivateKey],
            Self::Revoke => &[CreateKey, VerifyKey, ActivateKey, DeactivateOld],
            Self::Emergency => &[DeactivateOld, CreateKey, VerifyKey, ActivateKey],
        };
        all.iter()
            .copied()
            .filter(|s| has_old_key || *s != DeactivateOld)
            .collect()
    }

    pub fn next_after(self, has_old_key: bool, step: Step) -> Step {
        let steps = self.steps(has_old_key);
        steps
            .iter()
            .position(|s| *s == step)
            .and_then(|i| steps.get(i + 1).copied())
            .unwrap_or(Step::Done)
    }
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
    #[error("revocation {id} is already running for signer {signer}; follow it with GetRevocation")]
    AlreadyRunning { id: Uuid, signer: String },
    #[error("revocation {0} not found")]
    NotFound(Uuid),
    #[error("revocation {id} failed: {message} (see GetRevocation {id} for the steps)")]
    Failed { id: Uuid, message: String },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("registry: {0}")]
    Registry(#[from] sqlx::Error),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emergency_deactivates_before_creating_the_replacement() {
        let steps = Mode::Emergency.steps(true);
        assert_eq!(steps.first(), Some(&Step::DeactivateOld));
        assert_eq!(steps.last(), Some(&Step::ActivateKey));
    }

    #[test]
    fn revoke_deactivates_only_after_the_new_key_is_active() {
        let steps = Mode::Revoke.steps(true);
        let activate = steps.iter().position(|s| *s == Step::ActivateKey).unwrap();
        let deactivate = steps
            .iter()
            .position(|s| *s == Step::DeactivateOld)
            .unwrap();
        assert!(activate < deactivate);
    }

    #[test]
    fn graceful_never_deactivates() {
        assert!(!Mode::Graceful.steps(true).contains(&Step::DeactivateOld));
    }

    #[test]
    fn without_an_old_key_there_is_nothing_to_deactivate() {
        assert!(!Mode::Emergency.steps(false).contains(&Step::DeactivateOld));
        assert_eq!(Mode::Emergency.steps(false)[0], Step::CreateKey);
    }

    #[test]
    fn the_step_after_the_last_is_done_and_names_round_trip() {
        assert_eq!(
            Mode::Revoke.next_after(true, Step::DeactivateOld),
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

    #[test]
    fn an_unspecified_mode_is_rejected_naming_the_field() {
        assert_eq!(Mode::from_proto(0).unwrap_err().field, "mode");
    }
}

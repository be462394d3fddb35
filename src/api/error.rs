//! The one error type at the edge and its mapping to gRPC codes, written once.
//! Internal causes are logged here with context and reach the caller as an
//! opaque message; a registry constraint the caller ran into is
//! FAILED_PRECONDITION, saying which.
//!
//! Each status also carries the google.rpc richer error model in its
//! `grpc-status-details-bin` (clients read it with e.g. tonic-types'
//! `StatusExt`), the message staying as it is: INVALID_ARGUMENT a `BadRequest`
//! naming the field (the name the message starts with); PERMISSION_DENIED and
//! FAILED_PRECONDITION an `ErrorInfo` (a stable UPPER_SNAKE reason, domain
//! `presignd`, metadata such as the policy rule, signer, key or revocation);
//! UNAVAILABLE and RESOURCE_EXHAUSTED a `RetryInfo` (how long to wait first).

use crate::backend::BackendError;
use crate::dashboard::DashboardError;
use crate::domain::FieldError;
use crate::issuance::{IssueError, UploadError};
use crate::keys::BucketRefused;
use crate::metrics;
use crate::registry::{self, ErrorKind};
use crate::revocation::RevocationError;
use crate::signing::StoreError;
use std::collections::HashMap;
use std::time::Duration;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every error presignd explains.
pub const ERROR_DOMAIN: &str = "presignd";

/// After a registry or backend outage, or with no active key during an
/// EMERGENCY rotation: about the time a pool connection or a key swap takes.
const RETRY_OUTAGE: Duration = Duration::from_secs(1);
/// After WatchRevocations refused a stream over its limit: streams end when
/// their clients go, so a slot frees up about as fast as a client reconnects.
const RETRY_WATCHERS: Duration = Duration::from_secs(5);
/// After a read that ran past its statement timeout: the reads' pool is busy.
const RETRY_TIMED_OUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    InvalidArgument(#[from] FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("{}", .0.message)]
    PermissionDenied(Refusal),
    #[error("{message}")]
    ResourceExhausted {
        message: String,
        retry_after: Duration,
    },
    #[error("{}", .0.message)]
    FailedPrecondition(Refusal),
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Duration,
    },
    #[error("{0}")]
    Internal(String),
}

/// A refusal and why, for `ErrorInfo`.
#[derive(Debug)]
pub struct Refusal {
    pub message: String,
    /// Stable, UPPER_SNAKE: what a client may branch on.
    pub reason: &'static str,
    pub metadata: Vec<(&'static str, String)>,
}

impl Refusal {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            reason,
            metadata: Vec::new(),
        }
    }

    pub fn with(mut self, key: &'static str, value: impl ToString) -> Self {
        self.metadata.push((key, value.to_string()));
        self
    }
}

impl ApiError {
    /// The registry failed: unreachable → UNAVAILABLE, a constraint →
    /// FAILED_PRECONDITION, anything else → INTERNAL. `outcome` tells the
    /// caller what did not happen ("no link was issued"), if it matters.
    pub fn registry(e: &registry::Error, outcome: Option<&str>) -> Self {
        let then = outcome.map(|o| format!(": {o}")).unwrap_or_default();
        match e.kind {
            ErrorKind::Unavailable => {
                tracing::warn!(error = %e, "registry unavailable");
                Self::unavailable(format!("registry unavailable{then}; retry shortly"))
            }
            ErrorKind::Conflict(c) => {
                tracing::info!(error = %e, constraint = c.name(), "refused by a registry constraint");
                Self::FailedPrecondition(
                    Refusal::new("REGISTRY_CONSTRAINT", c.message()).with("constraint", c.name()),
                )
            }
            ErrorKind::Bug => {
                tracing::error!(error = %e, "registry error");
                Self::Internal(format!("registry error{then}"))
            }
        }
    }

    fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
            retry_after: RETRY_OUTAGE,
        }
    }
}

impl From<registry::Error> for ApiError {
    fn from(e: registry::Error) -> Self {
        Self::registry(&e, None)
    }
}

impl From<crate::ratelimit::RateLimited> for ApiError {
    fn from(r: crate::ratelimit::RateLimited) -> Self {
        Self::ResourceExhausted {
            message: r.to_string(),
            retry_after: r.retry_after,
        }
    }
}

impl From<IssueError> for ApiError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::NoActiveKey(_) => Self::unavailable(e.to_string()),
            IssueError::Denied(d) => Self::PermissionDenied(
                Refusal::new("POLICY_DENIED", d.to_string()).with("rule", d.rule),
            ),
            IssueError::RateLimited(r) => r.into(),
            IssueError::Bucket(b) => bucket_refused(b),
            IssueError::Registry(ref cause) => Self::registry(cause, Some("no link was issued")),
            IssueError::Sign(ref cause) => {
                tracing::error!(error = %cause, "signing failed");
                Self::Internal("signing failed: no link was issued".into())
            }
            IssueError::RequestIdReused { .. } => {
                Self::InvalidArgument(FieldError::new("request_id", e.to_string()))
            }
            IssueError::RetriedLinkRevoked {
                link_id,
                ref key_id,
            } => Self::FailedPrecondition(
                Refusal::new("LINK_REVOKED", e.to_string())
                    .with("link_id", link_id)
                    .with("key_id", key_id),
            ),
            IssueError::NotReproducible { link_id } => Self::FailedPrecondition(
                Refusal::new("LINK_NOT_REPRODUCIBLE", e.to_string()).with("link_id", link_id),
            ),
            IssueError::RequestIdContended => Self::unavailable(e.to_string()),
            IssueError::InvalidArgument(f) => Self::InvalidArgument(f),
            IssueError::NotYours(m) => {
                Self::PermissionDenied(Refusal::new("ADMIN_ONLY", m).with("field", "caller"))
            }
            IssueError::RevocationNotFound(_) => Self::NotFound(e.to_string()),
            IssueError::KilledNoLink(m) => {
                Self::FailedPrecondition(Refusal::new("KILLED_NO_LINK", m))
            }
            IssueError::Key(m) => {
                tracing::error!(error = %m, "a recorded key cannot sign");
                Self::Internal("a recorded key cannot sign; see the server log".into())
            }
        }
    }
}

/// A bucket the preflight did not prove: FAILED_PRECONDITION naming the
/// bucket and why (UNAVAILABLE while it is still being checked, or when its
/// check met an outage).
fn bucket_refused(b: BucketRefused) -> ApiError {
    let message = format!("{b}; no link was issued");
    match b {
        BucketRefused::Pending { .. } | BucketRefused::Unreachable { .. } => {
            ApiError::unavailable(message)
        }
        BucketRefused::NotPrepared { signer, bucket } => ApiError::FailedPrecondition(
            Refusal::new("BUCKET_NOT_PREPARED", message)
                .with("bucket", bucket)
                .with("signer", signer),
        ),
        BucketRefused::Failed {
            signer,
            bucket,
            key_id,
            cause,
        } => ApiError::FailedPrecondition(
            Refusal::new("BUCKET_NOT_READY", message)
                .with("bucket", bucket)
                .with("signer", signer)
                .with("key_id", key_id)
                .with("cause", cause),
        ),
    }
}

impl From<RevocationError> for ApiError {
    fn from(e: RevocationError) -> Self {
        use RevocationError::*;
        let refused = |reason| Refusal::new(reason, e.to_string());
        let precondition = match &e {
            NoActiveKey(signer) => refused("NO_ACTIVE_KEY").with("signer", signer),
            ExpectedKeyMismatch {
                signer,
                expected,
                actual,
            } => refused("EXPECTED_KEY_MISMATCH")
                .with("signer", signer)
                .with("expected_key_id", expected)
                .with("active_key_id", actual),
            AlreadyRunning { id, signer } => refused("REVOCATION_RUNNING")
                .with("revocation_id", id)
                .with("signer", signer),
            KeyNotLive { key_id, state } => refused("KEY_NOT_LIVE")
                .with("key_id", key_id)
                .with("state", state.as_str()),
            NotRunning { id, state } => refused("REVOCATION_NOT_RUNNING")
                .with("revocation_id", id)
                .with("state", state.as_str()),
            DeactivatedAlready { id, key_id } => refused("KEY_DEACTIVATED")
                .with("revocation_id", id)
                .with("key_id", key_id),
            Failed { id, .. } => refused("REVOCATION_FAILED").with("revocation_id", id),
            CursorPruned { after, pruned } => refused("EVENTS_PRUNED")
                .with("field", "after_sequence")
                .with("after_sequence", after)
                .with("pruned_through_sequence", pruned),
            Backend(BackendError::Refused(m) | BackendError::LimitExceeded(m)) => {
                Refusal::new("BACKEND_REFUSED", format!("key backend refused: {m}"))
            }
            _ => {
                return match e {
                    InvalidArgument(f) => Self::InvalidArgument(f),
                    NotYours(m) => Self::PermissionDenied(
                        Refusal::new("ADMIN_ONLY", m).with("field", "caller"),
                    ),
                    TooManyWatchers(m) => Self::ResourceExhausted {
                        message: m,
                        retry_after: RETRY_WATCHERS,
                    },
                    ShuttingDown(_) => Self::Unavailable {
                        message: e.to_string(),
                        retry_after: Duration::ZERO,
                    },
                    UnknownSigner(_) | UnknownKey(_) | NotFound(_) => Self::NotFound(e.to_string()),
                    Backend(ref m) => {
                        tracing::warn!(error = %m, "key backend unavailable");
                        Self::unavailable("key backend unavailable; retry shortly")
                    }
                    StoreUnavailable(ref m) => {
                        tracing::warn!(error = %m, "S3 endpoint unavailable");
                        Self::unavailable(
                            "the S3 endpoint is unreachable or busy; the revocation resumes by itself",
                        )
                    }
                    Registry(cause) => cause.into(),
                    ref other => {
                        tracing::error!(error = format!("{other:#}"), "revocation error");
                        Self::Internal("internal error; see the server log".into())
                    }
                };
            }
        };
        Self::FailedPrecondition(precondition)
    }
}

impl From<DashboardError> for ApiError {
    fn from(e: DashboardError) -> Self {
        match e {
            DashboardError::InvalidArgument(f) => Self::InvalidArgument(f),
            DashboardError::NotFound(m) => Self::NotFound(m),
            DashboardError::PermissionDenied(m) => {
                Self::PermissionDenied(Refusal::new("ADMIN_ONLY", m).with("field", "filter.caller"))
            }
            DashboardError::Registry(cause) => cause.into(),
            DashboardError::RateLimited(r) => r.into(),
            DashboardError::TimedOut => Self::ResourceExhausted {
                message: e.to_string(),
                retry_after: RETRY_TIMED_OUT,
            },
            DashboardError::Probe(m) => {
                tracing::error!(error = %m, "VerifyLink could not sign its probe");
                Self::Internal("could not sign the probe".into())
            }
        }
    }
}

fn error_info(refusal: Refusal) -> (String, ErrorDetails) {
    let metadata: HashMap<String, String> = refusal
        .metadata
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    (
        refusal.message,
        ErrorDetails::with_error_info(refusal.reason, ERROR_DOMAIN, metadata),
    )
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let (code, message, details) = match e {
            ApiError::InvalidArgument(f) => {
                let message = f.to_string();
                let details = ErrorDetails::with_bad_request_violation(f.field, &f.reason);
                (Code::InvalidArgument, message, details)
            }
            ApiError::NotFound(m) => return Status::not_found(m),
            ApiError::Internal(m) => return Status::internal(m),
            ApiError::PermissionDenied(r) => {
                // Every PERMISSION_DENIED a service returns is its policy's refusal.
                metrics::record_denial(metrics::Denial::Policy);
                let (message, details) = error_info(r);
                (Code::PermissionDenied, message, details)
            }
            ApiError::FailedPrecondition(r) => {
                let (message, details) = error_info(r);
                (Code::FailedPrecondition, message, details)
            }
            ApiError::ResourceExhausted {
                message,
                retry_after,
            } => (
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            ApiError::Unavailable {
                message,
                retry_after,
            } => (
                Code::Unavailable,
                message,
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
        };
        Status::with_error_details(code, message, details)
    }
}

/// Handlers return `Status`: each error of a layer below converts through
/// `ApiError`, so `?` is the whole of a handler's error handling.
macro_rules! into_status {
    ($($t:ty),+) => {$(
        impl From<$t> for Status {
            fn from(e: $t) -> Self {
                ApiError::from(e).into()
            }
        }
    )+};
}

into_status!(
    FieldError,
    IssueError,
    RevocationError,
    DashboardError,
    registry::Error,
    UploadError
);

/// Multipart uploads: the store's answers to presignd's own calls. A refusal
/// of the caller's parts is INVALID_ARGUMENT naming `parts`; a store that
/// cannot be reached is UNAVAILABLE; any other refusal FAILED_PRECONDITION
/// with the store's code.
impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Issue(e) => e.into(),
            UploadError::NotFound(_) => Self::NotFound(e.to_string()),
            UploadError::NotOpen { ref state, id } => Self::FailedPrecondition(
                Refusal::new("UPLOAD_NOT_OPEN", e.to_string())
                    .with("upload_id", id)
                    .with("state", state),
            ),
            UploadError::Gone(id) => Self::FailedPrecondition(
                Refusal::new("UPLOAD_GONE", e.to_string()).with("upload_id", id),
            ),
            UploadError::NoLiveKey(_) => Self::unavailable(e.to_string()),
            UploadError::Store(StoreError::Refused { ref code, .. })
                if matches!(
                    code.as_str(),
                    "InvalidPart" | "InvalidPartOrder" | "EntityTooSmall"
                ) =>
            {
                Self::InvalidArgument(FieldError::new("parts", e.to_string()))
            }
            UploadError::Store(StoreError::Refused { ref code, .. }) => {
                tracing::warn!(error = %e, "the store refused a multipart call");
                let code = code.clone();
                Self::FailedPrecondition(
                    Refusal::new("STORE_REFUSED", e.to_string()).with("code", code),
                )
            }
            UploadError::Store(StoreError::Unavailable { .. }) => {
                tracing::warn!(error = %e, "the store is unreachable");
                Self::unavailable(e.to_string())
            }
            UploadError::Store(StoreError::Sign(ref cause)) => {
                tracing::error!(error = %cause, "signing a multipart call failed");
                Self::Internal("signing failed".into())
            }
        }
    }
}

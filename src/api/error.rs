//! The one error type at the edge and its mapping to gRPC codes, written once.
//! Internal causes are logged here with context and reach the caller as an
//! opaque message; a registry constraint the caller ran into is
//! FAILED_PRECONDITION, saying which.

use crate::backend::BackendError;
use crate::dashboard::DashboardError;
use crate::domain::FieldError;
use crate::issuance::IssueError;
use crate::registry::{self, ErrorKind};
use crate::revocation::RevocationError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    InvalidArgument(#[from] FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
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
                Self::Unavailable(format!("registry unavailable{then}; retry shortly"))
            }
            ErrorKind::Conflict(c) => {
                tracing::info!(error = %e, constraint = c.name(), "refused by a registry constraint");
                Self::FailedPrecondition(c.message().to_owned())
            }
            ErrorKind::Bug => {
                tracing::error!(error = %e, "registry error");
                Self::Internal(format!("registry error{then}"))
            }
        }
    }
}

impl From<registry::Error> for ApiError {
    fn from(e: registry::Error) -> Self {
        Self::registry(&e, None)
    }
}

impl From<IssueError> for ApiError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::NoActiveKey(_) => Self::Unavailable(e.to_string()),
            IssueError::Denied(ref d) => Self::PermissionDenied(d.to_string()),
            IssueError::RateLimited(ref r) => Self::ResourceExhausted(r.to_string()),
            IssueError::Registry(ref cause) => Self::registry(cause, Some("no link was issued")),
            IssueError::Sign(ref cause) => {
                tracing::error!(error = %cause, "signing failed");
                Self::Internal("signing failed: no link was issued".into())
            }
        }
    }
}

impl From<RevocationError> for ApiError {
    fn from(e: RevocationError) -> Self {
        use RevocationError::*;
        match e {
            InvalidArgument(f) => Self::InvalidArgument(f),
            UnknownSigner(_) | UnknownKey(_) | NotFound(_) => Self::NotFound(e.to_string()),
            NoActiveKey(_)
            | ExpectedKeyMismatch { .. }
            | AlreadyRunning { .. }
            | KeyNotLive { .. }
            | NotRunning { .. } => Self::FailedPrecondition(e.to_string()),
            Backend(BackendError::Unavailable(ref m)) => {
                tracing::warn!(error = %m, "key backend unavailable");
                Self::Unavailable("key backend unavailable; retry shortly".into())
            }
            Backend(BackendError::Refused(ref m) | BackendError::LimitExceeded(ref m)) => {
                Self::FailedPrecondition(format!("key backend refused: {m}"))
            }
            Failed { .. } => Self::FailedPrecondition(e.to_string()),
            Registry(cause) => cause.into(),
            Other(ref cause) => {
                tracing::error!(error = format!("{cause:#}"), "revocation error");
                Self::Internal("internal error; see the server log".into())
            }
        }
    }
}

impl From<DashboardError> for ApiError {
    fn from(e: DashboardError) -> Self {
        match e {
            DashboardError::InvalidArgument(f) => Self::InvalidArgument(f),
            DashboardError::NotFound(m) => Self::NotFound(m),
            DashboardError::PermissionDenied(m) => Self::PermissionDenied(m),
            DashboardError::Registry(cause) => cause.into(),
            DashboardError::RateLimited(ref r) => Self::ResourceExhausted(r.to_string()),
            DashboardError::TimedOut => Self::ResourceExhausted(e.to_string()),
            DashboardError::Probe(m) => {
                tracing::error!(error = %m, "VerifyLink could not sign its probe");
                Self::Internal("could not sign the probe".into())
            }
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::InvalidArgument(f) => Status::invalid_argument(f.to_string()),
            ApiError::NotFound(m) => Status::not_found(m),
            ApiError::PermissionDenied(m) => Status::permission_denied(m),
            ApiError::ResourceExhausted(m) => Status::resource_exhausted(m),
            ApiError::FailedPrecondition(m) => Status::failed_precondition(m),
            ApiError::Unavailable(m) => Status::unavailable(m),
            ApiError::Internal(m) => Status::internal(m),
        }
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
    registry::Error
);

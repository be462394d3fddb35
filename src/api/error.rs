//! The one error type at the edge and its mapping to gRPC codes. Internal causes
//! are logged here with context and reach the caller as an opaque message.

use crate::backend::BackendError;
use crate::dashboard::DashboardError;
use crate::domain::FieldError;
use crate::issuance::IssueError;
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

impl From<IssueError> for ApiError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::NoActiveKey(_) => Self::Unavailable(e.to_string()),
            IssueError::Denied(ref d) => Self::PermissionDenied(d.to_string()),
            IssueError::RateLimited(ref r) => Self::ResourceExhausted(r.to_string()),
            IssueError::RegistryUnavailable(ref cause) => {
                tracing::warn!(error = %cause, "registry unavailable");
                Self::Unavailable("registry unavailable: no link was issued; retry shortly".into())
            }
            IssueError::Registry(ref cause) => {
                tracing::error!(error = %cause, "registry error");
                Self::Internal("registry error: no link was issued".into())
            }
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
            NoActiveKey(_) | ExpectedKeyMismatch { .. } | AlreadyRunning { .. } => {
                Self::FailedPrecondition(e.to_string())
            }
            Backend(BackendError::Unavailable(ref m)) => {
                tracing::warn!(error = %m, "key backend unavailable");
                Self::Unavailable("key backend unavailable; retry shortly".into())
            }
            Backend(BackendError::Refused(ref m) | BackendError::LimitExceeded(ref m)) => {
                Self::FailedPrecondition(format!("key backend refused: {m}"))
            }
            Failed { .. } => Self::FailedPrecondition(e.to_string()),
            Registry(ref cause) if crate::registry::is_unavailable(cause) => {
                tracing::warn!(error = %cause, "registry unavailable");
                Self::Unavailable("registry unavailable; retry shortly".into())
            }
            Registry(ref cause) => {
                tracing::error!(error = %cause, "registry error");
                Self::Internal("registry error".into())
            }
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
            DashboardError::RateLimited(ref r) => Self::ResourceExhausted(r.to_string()),
            DashboardError::TimedOut => Self::ResourceExhausted(e.to_string()),
            DashboardError::RegistryUnavailable(ref cause) => {
                tracing::warn!(error = %cause, "registry unavailable");
                Self::Unavailable("registry unavailable; retry shortly".into())
            }
            DashboardError::Registry(ref cause) => {
                tracing::error!(error = %cause, "registry error");
                Self::Internal("registry error".into())
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

//! The one error type at the edge and its mapping to gRPC codes. Internal causes
//! are logged here with context and reach the caller as an opaque message.

use crate::dashboard::DashboardError;
use crate::domain::FieldError;
use crate::issuance::IssueError;
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
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<IssueError> for ApiError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::NoActiveKey(_) => Self::Unavailable(e.to_string()),
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

impl From<DashboardError> for ApiError {
    fn from(e: DashboardError) -> Self {
        match e {
            DashboardError::InvalidArgument(f) => Self::InvalidArgument(f),
            DashboardError::NotFound(m) => Self::NotFound(m),
            DashboardError::PermissionDenied(m) => Self::PermissionDenied(m),
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
            ApiError::Unavailable(m) => Status::unavailable(m),
            ApiError::Internal(m) => Status::internal(m),
        }
    }
}

//! Where signing keys live. A backend creates an access key for a signer,
//! deactivates it (every URL it signed dies), and deletes it. Garage is the
//! self-hosted implementation; AWS IAM comes next behind the same trait.

pub mod aws;
pub mod garage;

use crate::secret::SecretString;
use chrono::{DateTime, Utc};

/// A freshly created access key. The secret leaves this struct only to be sealed
/// and to build a signing client.
#[derive(Debug)]
pub struct NewKey {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend could not be reached or answered 5xx: retry later.
    #[error("key backend unavailable: {0}")]
    Unavailable(String),
    /// The backend refused the operation (bad token, unknown bucket...).
    #[error("key backend refused: {0}")]
    Refused(String),
    /// The signer has as many keys as the backend allows (AWS IAM: 2 per user).
    #[error("key backend limit: {0}")]
    LimitExceeded(String),
}

/// Throttling answers: the backend is busy, not refusing.
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "SlowDown",
    "ServiceUnavailable",
];

impl BackendError {
    /// An HTTP error answer: throttling (429, or a throttling error code) and
    /// 5xx are transient (retry); any other 4xx is the backend's refusal.
    pub fn from_http(status: u16, code: Option<&str>, message: String) -> Self {
        if status == 429 || status >= 500 || code.is_some_and(|c| THROTTLING_CODES.contains(&c)) {
            Self::Unavailable(message)
        } else {
            Self::Refused(message)
        }
    }

    /// Retrying later may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// A key as the backend sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendKey {
    pub access_key_id: String,
    pub active: bool,
}

#[async_trait::async_trait]
pub trait KeyBackend: Send + Sync + 'static {
    /// "garage" or "aws", as stored in the registry.
    fn kind(&self) -> &'static str;

    /// Creates a new access key for `signer` under `name` (unique, chosen and
    /// recorded by presignd before this call: `find_created` finds the key by
    /// it). Buckets are granted one by one (`allow_bucket`) by the preflight.
    async fn create_key(&self, signer: &str, name: &str) -> Result<NewKey, BackendError>;

    /// Lets the key read and write objects of `bucket`. Idempotent. Garage
    /// grants it (AllowBucketKey); on AWS what a key may do is the IAM
    /// user's policy, which presignd does not manage: nothing to do, the
    /// preflight's probe tells.
    async fn allow_bucket(
        &self,
        _signer: &str,
        _access_key_id: &str,
        _bucket: &str,
    ) -> Result<(), BackendError> {
        Ok(())
    }

    /// The ids of `signer`'s keys that calls `create_key(signer, name)` with
    /// one of `names`, none earlier than `since`, may have created, however
    /// many keys the backend holds. Garage looks each name up in all its keys
    /// (GetKeyInfo's search; one ListKeys stops at 10,000 keys); IAM access
    /// keys carry no name, so AWS answers the user's keys created since
    /// `since` (the caller leaves out those it knows).
    async fn find_created(
        &self,
        signer: &str,
        names: &[String],
        since: DateTime<Utc>,
    ) -> Result<Vec<String>, BackendError>;

    /// Makes the key unusable: every URL it signed stops working. Idempotent.
    async fn deactivate_key(&self, signer: &str, access_key_id: &str) -> Result<(), BackendError>;

    /// Removes the key for good. Idempotent.
    async fn delete_key(&self, signer: &str, access_key_id: &str) -> Result<(), BackendError>;

    /// Whether the key still signs working URLs: false once deactivated or
    /// gone. Asked where the registry cannot know (a revocation cancelled
    /// while its deactivation may have reached the backend).
    async fn key_live(&self, signer: &str, access_key_id: &str) -> Result<bool, BackendError>;

    /// The signer's keys, where the backend limits how many a signer may have
    /// (empty where there is no such limit).
    async fn list_keys(&self, _signer: &str) -> Result<Vec<BackendKey>, BackendError> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_server_errors_are_transient_other_client_errors_are_refusals() {
        for (status, code) in [
            (429, None),
            (500, None),
            (503, Some("SlowDown")),
            (400, Some("Throttling")),
        ] {
            assert!(
                BackendError::from_http(status, code, String::new()).is_transient(),
                "{status} {code:?}"
            );
        }
        for (status, code) in [
            (400, Some("InvalidRequest")),
            (403, Some("AccessDenied")),
            (404, None),
        ] {
            assert!(
                matches!(
                    BackendError::from_http(status, code, String::new()),
                    BackendError::Refused(_)
                ),
                "{status}"
            );
        }
    }
}

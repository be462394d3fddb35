//! AWS: each signer is an IAM user (`{prefix}{signer}`, created by whoever runs
//! the account) whose access keys sign links. Deactivation is
//! UpdateAccessKey(Inactive): S3 then refuses every URL the key signed. IAM allows
//! two access keys per user; `list_keys` lets the key manager free a slot.

use super::{BackendError, BackendKey, KeyBackend, NewKey};
use crate::secret::SecretString;
use aws_sdk_iam::config::retry::RetryConfig;
use aws_sdk_iam::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_iam::types::{AccessKeyMetadata, StatusType};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// How long one IAM request may take, as the Garage backend's admin calls:
/// the SDK sets no limit but on connecting, so an IAM (or a proxy) that
/// takes the connection and never answers would hold a revocation's step
/// for ever. Past it the request fails as unavailable, and the step is
/// retried, then resumed later, as for any outage.
pub const IAM_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The SDK's connect timeout (its default, which a timeout config replaces).
const IAM_CONNECT_TIMEOUT: Duration = Duration::from_millis(3100);

/// Attempts the SDK's standard retry makes of one call (its default).
const IAM_ATTEMPTS: u32 = 3;

pub struct AwsBackend {
    iam: aws_sdk_iam::Client,
    user_prefix: String,
}

/// Where and how to reach IAM. Credentials come from the usual AWS chain
/// (environment, profile, instance role...).
pub struct AwsSettings {
    pub region: String,
    /// An IAM endpoint other than AWS's (tests use moto).
    pub iam_endpoint: Option<String>,
    pub user_prefix: String,
    /// How long one request may take (`IAM_ATTEMPT_TIMEOUT`; tests shorten it).
    pub attempt_timeout: Duration,
}

fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    op: &str,
    e: SdkError<E, aws_sdk_iam::config::http::HttpResponse>,
) -> BackendError {
    let code = e.code().map(str::to_owned);
    // Never the raw response: a CreateAccessKey answer carries the secret.
    let text = match (&e, e.code(), e.message()) {
        (_, Some(code), Some(message)) => format!("IAM {op}: {code}: {message}"),
        (SdkError::DispatchFailure(d), ..) => format!(
            "IAM {op}: cannot reach IAM: {:?}",
            d.as_connector_error().map(|c| c.to_string())
        ),
        (SdkError::TimeoutError(_), ..) => format!("IAM {op}: timed out"),
        (SdkError::ResponseError(_), ..) => format!("IAM {op}: unreadable response"),
        (SdkError::ServiceError(s), ..) => format!("IAM {op}: HTTP {}", s.raw().status()),
        _ => format!("IAM {op}: request failed"),
    };
    match (&e, code.as_deref()) {
        (_, Some("LimitExceeded")) => BackendError::LimitExceeded(text),
        (SdkError::ServiceError(s), code) => {
            BackendError::from_http(s.raw().status().as_u16(), code, text)
        }
        _ => BackendError::Unavailable(text),
    }
}

impl AwsBackend {
    pub async fn new(settings: AwsSettings) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(settings.region))
            .http_client(http)
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(IAM_CONNECT_TIMEOUT.min(settings.attempt_timeout))
                    .operation_attempt_timeout(settings.attempt_timeout)
                    .operation_timeout(settings.attempt_timeout * IAM_ATTEMPTS)
                    .build(),
            );
        if let Some(endpoint) = settings.iam_endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let config = loader.load().await;
        Self {
            iam: aws_sdk_iam::Client::new(&config),
            user_prefix: settings.user_prefix,
        }
    }

    fn user(&self, signer: &str) -> String {
        format!("{}{signer}", self.user_prefix)
    }

    /// The signer's user's access keys, as IAM lists them: at most two (IAM's
    /// limit), so one page.
    async fn access_keys(&self, signer: &str) -> Result<Vec<AccessKeyMetadata>, BackendError> {
        Ok(self
            .iam
            .list_access_keys()
            .user_name(self.user(signer))
            .send()
            .await
            .map_err(|e| classify("ListAccessKeys", e))?
            .access_key_metadata)
    }
}

#[async_trait::async_trait]
impl KeyBackend for AwsBackend {
    fn kind(&self) -> &'static str {
        "aws"
    }

    async fn create_key(&self, signer: &str, _name: &str) -> Result<NewKey, BackendError> {
        // Sent once: an attempt whose answer is lost (a timeout, a reset) may
        // have created a key, and the SDK's retry would create another and
        // return only that one; recorded, it resolves the intent, and the
        // first stays live, unknown to the registry (invariant 6). Failed,
        // the call leaves its intent, and reconciliation deletes whatever
        // IAM created under it.
        let once = aws_sdk_iam::config::Builder::default().retry_config(RetryConfig::disabled());
        let out = self
            .iam
            .create_access_key()
            .user_name(self.user(signer))
            .customize()
            .config_override(once)
            .send()
            .await
            .map_err(|e| classify("CreateAccessKey", e))?;
        let key = out
            .access_key
            .ok_or_else(|| BackendError::Refused("IAM CreateAccessKey returned no key".into()))?;
        Ok(NewKey {
            access_key_id: key.access_key_id,
            secret_access_key: SecretString::new(key.secret_access_key),
        })
    }

    async fn deactivate_key(&self, signer: &str, access_key_id: &str) -> Result<(), BackendError> {
        self.iam
            .update_access_key()
            .user_name(self.user(signer))
            .access_key_id(access_key_id)
            .status(StatusType::Inactive)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("UpdateAccessKey", e))
    }

    async fn delete_key(&self, signer: &str, access_key_id: &str) -> Result<(), BackendError> {
        match self
            .iam
            .delete_access_key()
            .user_name(self.user(signer))
            .access_key_id(access_key_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("NoSuchEntity") => Ok(()),
            Err(e) => Err(classify("DeleteAccessKey", e)),
        }
    }

    async fn find_created(
        &self,
        signer: &str,
        _names: &[String],
        since: DateTime<Utc>,
    ) -> Result<Vec<String>, BackendError> {
        // A minute of leeway for the clocks of Postgres (the intent's time) and IAM.
        let since = (since - chrono::Duration::minutes(1)).timestamp();
        Ok(self
            .access_keys(signer)
            .await?
            .into_iter()
            .filter(|k| k.create_date.is_none_or(|d| d.secs() >= since))
            .filter_map(|k| k.access_key_id)
            .collect())
    }

    async fn key_live(&self, signer: &str, access_key_id: &str) -> Result<bool, BackendError> {
        Ok(self.access_keys(signer).await?.iter().any(|k| {
            k.access_key_id.as_deref() == Some(access_key_id)
                && k.status == Some(StatusType::Active)
        }))
    }

    async fn list_keys(&self, signer: &str) -> Result<Vec<BackendKey>, BackendError> {
        Ok(self
            .access_keys(signer)
            .await?
            .into_iter()
            .filter_map(|k| {
                Some(BackendKey {
                    active: k.status == Some(StatusType::Active),
                    access_key_id: k.access_key_id?,
                })
            })
            .collect())
    }
}

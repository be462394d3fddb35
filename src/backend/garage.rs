//! Garage through its admin API v2 (HTTP + JSON, bearer token). Deactivation sets
//! the key's expiration in the past: Garage then refuses every request signed by
//! it at once, and the change is reversible (unlike DeleteKey).

use super::{BackendError, KeyBackend, NewKey};
use crate::secret::SecretString;
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::json;

pub struct GarageBackend {
    http: reqwest::Client,
    admin_url: String,
    token: SecretString,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyInfo {
    access_key_id: String,
    secret_access_key: Option<String>,
}

/// One entry of ListKeys.
#[derive(Deserialize)]
struct ListedKey {
    id: String,
    name: String,
}

#[derive(Deserialize)]
struct BucketInfo {
    id: String,
}

impl GarageBackend {
    pub fn new(admin_url: &str, token: SecretString) -> Self {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .expect("a default HTTP client builds");
        Self {
            http,
            admin_url: admin_url.trim_end_matches('/').to_owned(),
            token,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        endpoint: &str,
        query: &[(&str, &str)],
        body: Option<serde_json::Value>,
    ) -> Result<reqwest::Response, BackendError> {
        let mut req = self
            .http
            .request(method, format!("{}/v2/{endpoint}", self.admin_url))
            .bearer_auth(self.token.expose())
            .query(query);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| BackendError::Unavailable(format!("garage admin {endpoint}: {e}")))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        // Garage's error bodies are JSON messages without secrets.
        let text = resp.text().await.unwrap_or_default();
        let msg = format!("garage admin {endpoint}: HTTP {status}: {}", text.trim());
        Err(BackendError::from_http(status.as_u16(), None, msg))
    }

    async fn bucket_id(&self, bucket: &str) -> Result<String, BackendError> {
        let info: BucketInfo = self
            .call(
                reqwest::Method::GET,
                "GetBucketInfo",
                &[("globalAlias", bucket)],
                None,
            )
            .await?
            .json()
            .await
            .map_err(|e| BackendError::Unavailable(format!("garage GetBucketInfo: {e}")))?;
        Ok(info.id)
    }
}

#[async_trait::async_trait]
impl KeyBackend for GarageBackend {
    fn kind(&self) -> &'static str {
        "garage"
    }

    async fn create_key(&self, _signer: &str, name: &str) -> Result<NewKey, BackendError> {
        let info: KeyInfo = self
            .call(
                reqwest::Method::POST,
                "CreateKey",
                &[],
                Some(json!({ "name": name })),
            )
            .await?
            .json()
            .await
            .map_err(|e| BackendError::Unavailable(format!("garage CreateKey: {e}")))?;
        let secret = info
            .secret_access_key
            .ok_or_else(|| BackendError::Refused("garage CreateKey returned no secret".into()))?;
        Ok(NewKey {
            access_key_id: info.access_key_id,
            secret_access_key: SecretString::new(secret),
        })
    }

    async fn allow_bucket(
        &self,
        _signer: &str,
        access_key_id: &str,
        bucket: &str,
    ) -> Result<(), BackendError> {
        let bucket_id = self.bucket_id(bucket).await?;
        let body = json!({
            "bucketId": bucket_id,
            "accessKeyId": access_key_id,
            "permissions": { "read": true, "write": true, "owner": false },
        });
        self.call(reqwest::Method::POST, "AllowBucketKey", &[], Some(body))
            .await
            .map(|_| ())
    }

    async fn find_created(
        &self,
        _signer: &str,
        names: &[String],
        _since: DateTime<Utc>,
    ) -> Result<Vec<String>, BackendError> {
        let keys: Vec<ListedKey> = self
            .call(reqwest::Method::GET, "ListKeys", &[], None)
            .await?
            .json()
            .await
            .map_err(|e| BackendError::Unavailable(format!("garage ListKeys: {e}")))?;
        Ok(keys
            .into_iter()
            .filter(|k| names.contains(&k.name))
            .map(|k| k.id)
            .collect())
    }

    async fn deactivate_key(&self, _signer: &str, access_key_id: &str) -> Result<(), BackendError> {
        let past = (Utc::now() - Duration::minutes(1)).to_rfc3339();
        self.call(
            reqwest::Method::POST,
            "UpdateKey",
            &[("id", access_key_id)],
            Some(json!({ "expiration": past })),
        )
        .await
        .map(|_| ())
    }

    async fn delete_key(&self, _signer: &str, access_key_id: &str) -> Result<(), BackendError> {
        match self
            .call(
                reqwest::Method::POST,
                "DeleteKey",
                &[("id", access_key_id)],
                None,
            )
            .await
        {
            // Already gone: deleting is idempotent.
            Err(BackendError::Refused(msg)) if msg.contains("404") => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

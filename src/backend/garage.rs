//! Garage through its admin API v2 (HTTP + JSON, bearer token). Deactivation sets
//! the key's expiration in the past: Garage then refuses every request signed by
//! it at once, and the change is reversible (unlike DeleteKey).
//!
//! Keys are found by name with GetKeyInfo's `search`, which Garage answers
//! from its whole key table. Not with one ListKeys: it answers the first
//! 10,000 keys (by id) unless paged, and a key past them would go unseen.

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
    name: String,
    secret_access_key: Option<String>,
    /// Past its expiration (how `deactivate_key` deactivates it).
    #[serde(default)]
    expired: bool,
}

/// One entry of ListKeys.
#[derive(Deserialize)]
struct ListedKey {
    id: String,
    name: String,
}

/// Keys asked for per ListKeys page (Garage's default).
const LIST_PAGE: usize = 10_000;

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

    /// Sends the call; an answer is returned whatever its status.
    async fn send(
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
        req.send()
            .await
            .map_err(|e| BackendError::Unavailable(format!("garage admin {endpoint}: {e}")))
    }

    /// Sends the call; an answer other than 2xx is an error.
    async fn call(
        &self,
        method: reqwest::Method,
        endpoint: &str,
        query: &[(&str, &str)],
        body: Option<serde_json::Value>,
    ) -> Result<reqwest::Response, BackendError> {
        let resp = self.send(method, endpoint, query, body).await?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(error(endpoint, resp).await)
        }
    }

    /// The keys named exactly `name` (one, unless a creation was retried).
    /// Garage's search matches names equal to it but for case, and ids
    /// starting with it; it answers 404 if none does and 400 "N matching
    /// keys" if several do: then every key is listed instead.
    async fn keys_named(&self, name: &str) -> Result<Vec<String>, BackendError> {
        let endpoint = "GetKeyInfo";
        let resp = self
            .send(reqwest::Method::GET, endpoint, &[("search", name)], None)
            .await?;
        match resp.status() {
            reqwest::StatusCode::NOT_FOUND => Ok(Vec::new()),
            s if s.is_success() => {
                let key: KeyInfo = resp
                    .json()
                    .await
                    .map_err(|e| BackendError::Unavailable(format!("garage {endpoint}: {e}")))?;
                Ok(Vec::from_iter(
                    (key.name == name).then_some(key.access_key_id),
                ))
            }
            _ => match error(endpoint, resp).await {
                BackendError::Refused(msg) if msg.contains("matching keys") => {
                    tracing::warn!(
                        name,
                        "several Garage keys match a key intent's name: listing every key"
                    );
                    self.listed_named(name).await
                }
                e => Err(e),
            },
        }
    }

    /// The keys named `name`, from every ListKeys page. Pages follow the id
    /// order; each starts at the last id of the one before, included, and
    /// the listing ends at a page with nothing after it (whatever size
    /// Garage gives its pages).
    async fn listed_named(&self, name: &str) -> Result<Vec<String>, BackendError> {
        let limit = LIST_PAGE.to_string();
        let mut named = Vec::new();
        let mut last: Option<String> = None;
        loop {
            let mut query = vec![("limit", limit.as_str())];
            if let Some(last) = &last {
                query.push(("offset", last.as_str()));
            }
            let page: Vec<ListedKey> = self
                .call(reqwest::Method::GET, "ListKeys", &query, None)
                .await?
                .json()
                .await
                .map_err(|e| BackendError::Unavailable(format!("garage ListKeys: {e}")))?;
            let next = page.last().map(|k| k.id.clone());
            if next.is_none() || next == last {
                return Ok(named);
            }
            named.extend(
                page.into_iter()
                    .filter(|k| k.name == name && Some(&k.id) != last.as_ref())
                    .map(|k| k.id),
            );
            last = next;
        }
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
        let mut found = Vec::new();
        for name in names {
            found.extend(self.keys_named(name).await?);
        }
        Ok(found)
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

    async fn key_live(&self, _signer: &str, access_key_id: &str) -> Result<bool, BackendError> {
        let endpoint = "GetKeyInfo";
        let resp = self
            .send(
                reqwest::Method::GET,
                endpoint,
                &[("id", access_key_id)],
                None,
            )
            .await?;
        match resp.status() {
            reqwest::StatusCode::NOT_FOUND => Ok(false),
            s if s.is_success() => {
                let key: KeyInfo = resp
                    .json()
                    .await
                    .map_err(|e| BackendError::Unavailable(format!("garage {endpoint}: {e}")))?;
                Ok(!key.expired)
            }
            _ => Err(error(endpoint, resp).await),
        }
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

/// A non-2xx answer as an error. Garage's error bodies are JSON messages
/// without secrets.
async fn error(endpoint: &str, resp: reqwest::Response) -> BackendError {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let msg = format!("garage admin {endpoint}: HTTP {status}: {}", text.trim());
    BackendError::from_http(status.as_u16(), None, msg)
}

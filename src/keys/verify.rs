//! Proving a new key usable before it signs anything: backends are eventually
//! consistent (AWS IAM takes seconds to accept a new key), so a presigned probe is
//! sent until the backend accepts it, with bounded retries.

use crate::signing::SigningKey;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[error("new key {key_id} was not accepted by the S3 endpoint after {attempts} attempts: {last}")]
pub struct NotUsable {
    pub key_id: String,
    pub attempts: u32,
    pub last: String,
}

pub async fn verify_usable(
    http: &reqwest::Client,
    key: &SigningKey,
    bucket: &str,
    attempts: u32,
) -> Result<(), NotUsable> {
    let attempts = attempts.max(1);
    let mut last = String::new();
    for attempt in 1..=attempts {
        match key.presign_probe(bucket) {
            Ok(url) => match http.head(&url).send().await {
                Ok(r)
                    if r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND =>
                {
                    return Ok(());
                }
                Ok(r) => last = format!("HTTP {}", r.status()),
                Err(e) => last = format!("request failed: {}", e.without_url()),
            },
            Err(e) => last = e.to_string(),
        }
        if attempt < attempts {
            let backoff =
                Duration::from_millis(100 * u64::from(attempt)).min(Duration::from_secs(2));
            tokio::time::sleep(backoff).await;
        }
    }
    Err(NotUsable {
        key_id: key.key_id.clone(),
        attempts,
        last,
    })
}

//! One access key, ready to presign. The secret lives only inside the SDK's
//! credentials (whose Debug output is redacted).

use crate::domain::{LinkSpec, Method};
use crate::secret::SecretString;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::presigning::PresigningConfig;
use std::time::SystemTime;

/// Where links point: an S3 endpoint, the region they are signed for, and the
/// URL style.
#[derive(Debug, Clone)]
pub struct S3Target {
    pub endpoint: String,
    pub region: String,
    pub path_style: bool,
}

/// A presigned request. `url` is a bearer credential: it is returned to the
/// caller and dropped, never stored nor logged.
pub struct Presigned {
    pub url: String,
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for Presigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Presigned(<redacted>)")
    }
}

impl Presigned {
    pub fn signature(&self) -> Option<&str> {
        signature_of(&self.url)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("presigning failed: {0}")]
    Presign(String),
}

/// The `X-Amz-Signature` query parameter of a presigned URL.
pub fn signature_of(url: &str) -> Option<&str> {
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("X-Amz-Signature="))
        .filter(|s| !s.is_empty())
}

pub struct SigningKey {
    pub key_id: String,
    pub signer: String,
    client: aws_sdk_s3::Client,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    pub fn new(target: &S3Target, key_id: &str, secret: &SecretString, signer: &str) -> Self {
        let credentials = Credentials::new(key_id, secret.expose(), None, None, "presignd");
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(target.region.clone()))
            .endpoint_url(&target.endpoint)
            .force_path_style(target.path_style)
            .credentials_provider(credentials)
            // A presigned PUT must not pin a checksum of a body the SDK never saw.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .build();
        Self {
            key_id: key_id.to_owned(),
            signer: signer.to_owned(),
            client: aws_sdk_s3::Client::from_conf(config),
        }
    }

    /// Signs `spec` as of `issued_at` (so the recorded issued_at is exactly the
    /// signature's X-Amz-Date).
    pub async fn presign(
        &self,
        spec: &LinkSpec,
        issued_at: SystemTime,
    ) -> Result<Presigned, SignError> {
        let config = PresigningConfig::builder()
            .start_time(issued_at)
            .expires_in(spec.ttl.as_duration())
            .build()
            .map_err(|e| SignError::Presign(e.to_string()))?;
        let (bucket, key) = (spec.bucket.as_str(), spec.object_key.as_str());
        let c = &self.client;
        let e = |e: &dyn std::fmt::Display| SignError::Presign(e.to_string());
        let request = match spec.method {
            Method::Get => c
                .get_object()
                .bucket(bucket)
                .key(key)
                .set_response_content_disposition(
                    spec.content_disposition
                        .as_ref()
                        .map(|d| d.as_str().to_owned()),
                )
                .presigned(config)
                .await
                .map_err(|x| e(&DisplayErrorContext(x)))?,
            Method::Put => c
                .put_object()
                .bucket(bucket)
                .key(key)
                .set_content_type(spec.content_type.as_ref().map(|t| t.as_str().to_owned()))
                .presigned(config)
                .await
                .map_err(|x| e(&DisplayErrorContext(x)))?,
            Method::Head => c
                .head_object()
                .bucket(bucket)
                .key(key)
                .presigned(config)
                .await
                .map_err(|x| e(&DisplayErrorContext(x)))?,
            Method::Delete => c
                .delete_object()
                .bucket(bucket)
                .key(key)
                .presigned(config)
                .await
                .map_err(|x| e(&DisplayErrorContext(x)))?,
        };
        Ok(Presigned {
            url: request.uri().to_owned(),
            headers: request
                .headers()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        })
    }

    /// A presigned HEAD of a probe object in `bucket`: the backend answers 200 or
    /// 404 if it accepts this key, 403 if it does not.
    /// A presigned GET of an object that does not exist: the answer's body
    /// says why a key is refused (a HEAD answer has no body), and no object is
    /// read.
    pub async fn presign_probe(&self, bucket: &str) -> Result<String, SignError> {
        let config = PresigningConfig::expires_in(std::time::Duration::from_secs(60))
            .map_err(|e| SignError::Presign(e.to_string()))?;
        let request = self
            .client
            .get_object()
            .bucket(bucket)
            .key(".presignd-probe-missing-object")
            .presigned(config)
            .await
            .map_err(|e| SignError::Presign(DisplayErrorContext(e).to_string()))?;
        Ok(request.uri().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_read_from_the_query() {
        let url =
            "http://h/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc123&x-id=GetObject";
        assert_eq!(signature_of(url), Some("abc123"));
        assert_eq!(signature_of("http://h/b/k?X-Amz-Signature="), None);
        assert_eq!(signature_of("http://h/b/k"), None);
    }
}

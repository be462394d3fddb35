//! One access key, ready to presign. The secret lives only inside the
//! `QuerySigner` (whose key is never printed).

use super::signed::{Presigned, SignError};
use super::sigv4::{self, Endpoint, Multipart, QuerySigner, Request};
use crate::domain::{LinkSpec, Method};
use crate::secret::SecretString;
use std::time::SystemTime;

/// Where links point: an S3 endpoint, the region links are signed for unless
/// their bucket's region says otherwise, and the URL style.
#[derive(Debug, Clone)]
pub struct S3Target {
    pub endpoint: String,
    pub region: String,
    pub path_style: bool,
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

/// Whether `key_id` is a temporary (STS session) access key: AWS gives those
/// the ASIA prefix (long-term keys: AKIA). presignd never signs with one: the
/// session could end before the links it signed, cutting them short of their
/// recorded expiry.
pub fn is_session_key_id(key_id: &str) -> bool {
    key_id.starts_with("ASIA")
}

/// Why a session key is refused, for the error that stops startup.
pub const SESSION_KEY_REFUSED: &str = "is a temporary STS session key: presignd signs only with \
     long-term access keys it created itself (a session could end before the links it signed); \
     delete that key from the registry and let presignd create one";

pub struct SigningKey {
    pub key_id: String,
    pub signer: String,
    endpoint: Result<Endpoint, String>,
    /// The target's region: what `presign` signs for.
    region: String,
    sigv4: QuerySigner,
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
        Self {
            key_id: key_id.to_owned(),
            signer: signer.to_owned(),
            endpoint: Endpoint::parse(&target.endpoint, target.path_style),
            region: target.region.clone(),
            sigv4: QuerySigner::new(key_id, secret),
        }
    }

    pub(super) fn sigv4(&self) -> &QuerySigner {
        &self.sigv4
    }

    pub(super) fn endpoint(&self) -> Result<&Endpoint, SignError> {
        self.endpoint
            .as_ref()
            .map_err(|e| SignError::Presign(e.clone()))
    }

    /// Signs `spec` as of `issued_at` for the target's region.
    pub fn presign(&self, spec: &LinkSpec, issued_at: SystemTime) -> Result<Presigned, SignError> {
        self.presign_in(spec, &self.region, issued_at)
    }

    /// Signs `spec` as of `issued_at` (so the recorded issued_at is exactly the
    /// signature's X-Amz-Date) for `region`, its bucket's.
    pub fn presign_in(
        &self,
        spec: &LinkSpec,
        region: &str,
        issued_at: SystemTime,
    ) -> Result<Presigned, SignError> {
        self.sigv4.presign(
            self.endpoint()?,
            &Request {
                method: spec.method,
                bucket: spec.bucket.as_str(),
                key: spec.object_key.as_str(),
                content_type: spec.content_type.as_ref().map(|t| t.as_str()),
                content_disposition: spec.content_disposition.as_ref().map(|d| d.as_str()),
                x_id: true,
                time: sigv4::epoch_secs(issued_at),
                expires_secs: spec.ttl.as_secs(),
                multipart: None,
            },
            region,
        )
    }

    /// Signs one call of a multipart upload of `key` in `bucket` for
    /// `region`, as of `issued_at`, valid `expires_secs`: an UploadPart URL
    /// handed to a caller (a link), or a Create/Complete/Abort presignd sends
    /// itself (`multipart::Store`).
    pub fn presign_multipart(
        &self,
        op: Multipart<'_>,
        bucket: &str,
        key: &str,
        region: &str,
        issued_at: SystemTime,
        expires_secs: u64,
    ) -> Result<Presigned, SignError> {
        self.sigv4.presign(
            self.endpoint()?,
            &Request {
                // Replaced by the operation's own method.
                method: Method::Put,
                bucket,
                key,
                content_type: None,
                content_disposition: None,
                x_id: true,
                time: sigv4::epoch_secs(issued_at),
                expires_secs,
                multipart: Some(op),
            },
            region,
        )
    }

    /// A presigned GET of an object that does not exist: the answer's body
    /// says why a key is refused (a HEAD answer has no body), and no object is
    /// read.
    pub fn presign_probe(&self, bucket: &str, region: &str) -> Result<String, SignError> {
        self.presign_get(bucket, ".presignd-probe-missing-object", region)
    }

    /// A presigned GET of `key` in `bucket` (signed for `region`), valid one
    /// minute: VerifyLink's probe of a GET or HEAD link's object.
    pub fn presign_get(&self, bucket: &str, key: &str, region: &str) -> Result<String, SignError> {
        let presigned = self.sigv4.presign(
            self.endpoint()?,
            &Request {
                method: Method::Get,
                bucket,
                key,
                content_type: None,
                content_disposition: None,
                x_id: true,
                time: sigv4::epoch_secs(SystemTime::now()),
                expires_secs: 60,
                multipart: None,
            },
            region,
        )?;
        Ok(presigned.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_keys_are_told_from_long_term_ones_by_their_prefix() {
        assert!(is_session_key_id("ASIAIOSFODNN7EXAMPLE"));
        assert!(!is_session_key_id("AKIAIOSFODNN7EXAMPLE"));
        assert!(!is_session_key_id("GK31c2f218a2e44f485b94239e"));
    }

    #[test]
    fn the_signature_is_read_from_the_query() {
        let url =
            "http://h/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc123&x-id=GetObject";
        assert_eq!(signature_of(url), Some("abc123"));
        assert_eq!(signature_of("http://h/b/k?X-Amz-Signature="), None);
        assert_eq!(signature_of("http://h/b/k"), None);
    }
}

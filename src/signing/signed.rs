//! What signing gives: a presigned request (`Presigned`, a bearer credential
//! that is never printed) and the error it can fail with (`SignError`). Below
//! the signers (`sigv4`, `presign`, `form`, `multipart`), which all return them.

use std::ops::Range;

/// A presigned request. `url` is a bearer credential: it is returned to the
/// caller and dropped, never stored nor logged.
pub struct Presigned {
    pub url: String,
    pub headers: Vec<(String, String)>,
    signature: Range<usize>,
}

impl std::fmt::Debug for Presigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Presigned(<redacted>)")
    }
}

impl Presigned {
    pub(super) fn new(
        url: String,
        headers: Vec<(String, String)>,
        signature: Range<usize>,
    ) -> Self {
        Self {
            url,
            headers,
            signature,
        }
    }

    /// The hex `X-Amz-Signature` of the URL.
    pub fn signature(&self) -> &str {
        &self.url[self.signature.clone()]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("presigning failed: {0}")]
    Presign(String),
}

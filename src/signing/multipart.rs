//! The multipart calls presignd makes itself, with a signer's key: Create
//! (before any part URL is signed), Complete and Abort. Each is a request
//! presigned by our SigV4 signer for one minute (the same signer the part
//! URLs use, proven against aws-sdk-s3's for these operations) and sent with
//! the process's reqwest client; the store's XML answer is read for the
//! upload id or the error's `<Code>`. No URL is logged: errors name the
//! operation, the status and the store's code and message only.

use super::presign::SigningKey;
use super::signed::SignError;
use super::sigv4::Multipart;
use std::time::SystemTime;

/// How long a call presignd sends itself is signed for.
const CALL_SECS: u64 = 60;

/// One part as the caller uploaded it: its number and the ETag the store
/// answered for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedPart {
    pub number: u32,
    pub etag: String,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store answered with an S3 error (`code`: `NoSuchUpload`,
    /// `InvalidPart`, `EntityTooSmall`, `AccessDenied`...).
    #[error("{op}: the store answered {status} {code}: {message}")]
    Refused {
        op: &'static str,
        status: u16,
        code: String,
        message: String,
    },
    /// The store could not be reached, or answered something unreadable.
    #[error("{op}: {cause}")]
    Unavailable { op: &'static str, cause: String },
    #[error(transparent)]
    Sign(#[from] SignError),
}

impl StoreError {
    /// The store's S3 error code, if it answered one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// The text of the first `<name>` element (S3's XML answers are flat and small).
pub fn xml_field<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    let start = body.find(&format!("<{name}>"))? + name.len() + 2;
    let len = body[start..].find(&format!("</{name}>"))?;
    Some(body[start..start + len].trim())
}

/// `text` with XML's five special characters escaped.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` with XML's predefined entities resolved (an upload id may hold them).
fn xml_unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The store's multipart calls for one object, with one key.
pub struct Store<'a> {
    pub http: &'a reqwest::Client,
    pub key: &'a SigningKey,
    pub bucket: &'a str,
    pub object_key: &'a str,
    /// The bucket's signing region.
    pub region: &'a str,
}

impl Store<'_> {
    async fn call(
        &self,
        op: &'static str,
        call: Multipart<'_>,
        content_type: Option<&str>,
        body: Option<String>,
    ) -> Result<String, StoreError> {
        let signed = self.key.presign_multipart(
            call,
            self.bucket,
            self.object_key,
            self.region,
            SystemTime::now(),
            CALL_SECS,
        )?;
        let method = reqwest::Method::from_bytes(call.http_method().as_bytes())
            .expect("POST, PUT and DELETE are methods");
        let mut request = self.http.request(method, &signed.url);
        if let Some(t) = content_type {
            request = request.header("content-type", t);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let unavailable = |cause: String| StoreError::Unavailable { op, cause };
        let response = request
            .send()
            .await
            .map_err(|e| unavailable(format!("request failed: {}", e.without_url())))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| unavailable(format!("reading the answer: {}", e.without_url())))?;
        // CompleteMultipartUpload may answer 200 with an error in the body.
        match (status, xml_field(&text, "Code")) {
            (200..=299, None) => Ok(text),
            (_, Some(code)) if (400..=499).contains(&status) || status < 300 => {
                Err(StoreError::Refused {
                    op,
                    status,
                    code: code.to_owned(),
                    message: xml_field(&text, "Message").unwrap_or_default().to_owned(),
                })
            }
            _ => Err(unavailable(format!("the store answered HTTP {status}"))),
        }
    }

    /// CreateMultipartUpload: the store's upload id.
    pub async fn create(&self, content_type: Option<&str>) -> Result<String, StoreError> {
        // The object's content type is the Create request's Content-Type
        // header (not signed: only `host` is).
        let body = self
            .call(
                "CreateMultipartUpload",
                Multipart::Create,
                content_type,
                None,
            )
            .await?;
        xml_field(&body, "UploadId")
            .filter(|id| !id.is_empty())
            .map(xml_unescape)
            .ok_or(StoreError::Unavailable {
                op: "CreateMultipartUpload",
                cause: "the answer holds no UploadId".into(),
            })
    }

    /// CompleteMultipartUpload with `parts` (ascending numbers): the object's ETag.
    pub async fn complete(
        &self,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> Result<String, StoreError> {
        let mut body = String::from(
            "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">",
        );
        for p in parts {
            body.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
                p.number,
                xml_escape(&p.etag)
            ));
        }
        body.push_str("</CompleteMultipartUpload>");
        let answer = self
            .call(
                "CompleteMultipartUpload",
                Multipart::Complete { upload_id },
                Some("application/xml"),
                Some(body),
            )
            .await?;
        Ok(xml_field(&answer, "ETag")
            .map(xml_unescape)
            .unwrap_or_default())
    }

    /// AbortMultipartUpload. An upload the store no longer has is
    /// `Refused` with code `NoSuchUpload`.
    pub async fn abort(&self, upload_id: &str) -> Result<(), StoreError> {
        self.call(
            "AbortMultipartUpload",
            Multipart::Abort { upload_id },
            None,
            None,
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_escaped_and_upload_ids_unescaped() {
        assert_eq!(xml_escape("\"a&b\""), "&quot;a&amp;b&quot;");
        assert_eq!(xml_unescape("a&amp;lt;b&quot;"), "a&lt;b\"");
    }

    #[test]
    fn the_first_element_is_read() {
        let body = "<R><UploadId> abc </UploadId><Code>NoSuchUpload</Code></R>";
        assert_eq!(xml_field(body, "UploadId"), Some("abc"));
        assert_eq!(xml_field(body, "Code"), Some("NoSuchUpload"));
        assert_eq!(xml_field(body, "Message"), None);
    }
}

//! A presigned URL handed back to presignd (LookupLink: "which link is this?").
//! It is a bearer credential: Debug is redacted, and it is never logged or stored.
//! Parsing only checks that it has the shape of a SigV4 presigned S3 URL; whether
//! presignd issued it is the registry's answer.

use super::FieldError;
use chrono::{DateTime, NaiveDateTime, Utc};
use sha2::{Digest, Sha256};

const FIELD: &str = "url";
/// Far above any URL presignd issues (a 1024-byte key, encoded, plus the query).
const MAX_URL_BYTES: usize = 16 * 1024;

pub struct PresignedUrl {
    host: String,
    /// The decoded path: `/bucket/key` (path style) or `/key` (virtual-hosted).
    path: String,
    signature: String,
    access_key_id: String,
    signed_at: DateTime<Utc>,
}

impl std::fmt::Debug for PresignedUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PresignedUrl(<redacted>)")
    }
}

fn invalid(reason: &str) -> FieldError {
    FieldError::new(FIELD, format!("is not a presigned S3 URL: {reason}"))
}

/// An access key id as presignd's backends make them (Garage's `GK…`, AWS's
/// `AKIA…`): at most 128 characters of A-Z, a-z, 0-9, '-' and '_'. Anything
/// else (a NUL, a quote) names no key, and is refused before a query sees it.
pub fn is_access_key_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

impl PresignedUrl {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(FieldError::new(FIELD, "is required"));
        }
        if s.len() > MAX_URL_BYTES {
            return Err(invalid("too long"));
        }
        let url = url::Url::parse(s).map_err(|_| invalid("not an absolute URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("no host"))?
            .to_ascii_lowercase();
        let query = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let signature = query("X-Amz-Signature").ok_or_else(|| invalid("no X-Amz-Signature"))?;
        if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid("X-Amz-Signature is not 64 hex digits"));
        }
        let credential = query("X-Amz-Credential").ok_or_else(|| invalid("no X-Amz-Credential"))?;
        let access_key_id = credential
            .split('/')
            .next()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| invalid("X-Amz-Credential has no access key id"))?
            .to_owned();
        if !is_access_key_id(&access_key_id) {
            return Err(invalid(
                "X-Amz-Credential's access key id is not at most 128 characters of A-Z, a-z, 0-9, '-' and '_'",
            ));
        }
        let date = query("X-Amz-Date").ok_or_else(|| invalid("no X-Amz-Date"))?;
        let signed_at = NaiveDateTime::parse_from_str(&date, "%Y%m%dT%H%M%SZ")
            .map_err(|_| invalid("X-Amz-Date is not YYYYMMDDTHHMMSSZ"))?
            .and_utc();
        Ok(Self {
            host,
            path: raw_path(s).ok_or_else(|| invalid("the path is not valid UTF-8"))?,
            signature,
            access_key_id,
            signed_at,
        })
    }

    /// SHA-256 of the signature, as the registry records it at issuance.
    pub fn signature_sha256(&self) -> [u8; 32] {
        Sha256::digest(self.signature.as_bytes()).into()
    }

    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// When it was signed (X-Amz-Date): a recorded link's issued_at.
    pub fn signed_at(&self) -> DateTime<Utc> {
        self.signed_at
    }

    /// Whether the URL addresses `key` in `bucket`, path style (`/bucket/key`) or
    /// virtual-hosted style (`bucket.host/key`).
    pub fn addresses(&self, bucket: &str, key: &str) -> bool {
        let path_style = self
            .path
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(bucket))
            .and_then(|p| p.strip_prefix('/'))
            .is_some_and(|k| k == key);
        let virtual_hosted = self
            .host
            .strip_prefix(bucket)
            .is_some_and(|h| h.starts_with('.'))
            && self.path.strip_prefix('/').is_some_and(|k| k == key);
        path_style || virtual_hosted
    }
}

/// The path exactly as written, percent-decoded. Read from the text rather than
/// from `url::Url`, which would normalize `.` and `..` segments that S3 keeps
/// (a key may well be `a/../b`).
fn raw_path(s: &str) -> Option<String> {
    let after_scheme = &s[s.find("://")? + 3..];
    let end = after_scheme.find(['?', '#']).unwrap_or(after_scheme.len());
    let authority_and_path = &after_scheme[..end];
    let path = authority_and_path
        .find('/')
        .map_or("/", |i| &authority_and_path[i..]);
    percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .ok()
        .map(|p| p.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn url(path: &str) -> String {
        format!(
            "http://127.0.0.1:3900{path}?x-id=GetObject&X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=GKabc%2F20250102%2Fgarage%2Fs3%2Faws4_request\
             &X-Amz-Date=20250102T030405Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host\
             &X-Amz-Signature={SIG}"
        )
    }

    #[test]
    fn a_path_style_url_yields_its_signature_key_and_object() {
        let u = PresignedUrl::parse(&url("/bucket-a/dir/a%20b.txt")).unwrap();
        assert_eq!(u.access_key_id(), "GKabc");
        assert_eq!(u.signature_sha256(), <[u8; 32]>::from(Sha256::digest(SIG)));
        assert_eq!(u.signed_at().to_rfc3339(), "2025-01-02T03:04:05+00:00");
        assert!(u.addresses("bucket-a", "dir/a b.txt"));
        assert!(!u.addresses("bucket-a", "dir/a b.tx"));
        assert!(!u.addresses("bucket", "a/dir/a b.txt"));
    }

    #[test]
    fn a_virtual_hosted_url_names_its_bucket_in_the_host() {
        let u = PresignedUrl::parse(
            &url("/k/../x").replace("127.0.0.1:3900", "bucket-a.s3.example.com"),
        )
        .unwrap();
        assert!(u.addresses("bucket-a", "k/../x"), "dot segments are kept");
        assert!(!u.addresses("bucket-b", "k/../x"));
    }

    #[test]
    fn anything_but_a_presigned_url_is_rejected_naming_url() {
        let no_sig = url("/b/k").replace(&format!("&X-Amz-Signature={SIG}"), "");
        let short_sig = url("/b/k").replace(SIG, "abc");
        let no_cred = url("/b/k").replace("X-Amz-Credential", "X-Other");
        for bad in [
            "",
            "garbage",
            "/b/k?X-Amz-Signature=abc",
            "ftp://h/b/k",
            &no_sig,
            &short_sig,
            &no_cred,
        ] {
            let e = PresignedUrl::parse(bad).unwrap_err();
            assert_eq!(e.field, "url", "{bad}");
        }
    }

    #[test]
    fn debug_output_never_shows_the_url() {
        let u = PresignedUrl::parse(&url("/b/k")).unwrap();
        assert!(!format!("{u:?}").contains(SIG));
    }
}

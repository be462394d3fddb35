//! Safe retries (`IssueLinkRequest.request_id`): a request id names, per
//! caller, the one link it issued until that link expires. A retry gets that
//! link back with the same URL, which is not stored but signed again: SigV4 is
//! a function of the key, the request and X-Amz-Date, and the link records its
//! key and issued_at (= X-Amz-Date) and expiry (= issued_at + X-Amz-Expires).
//! The recorded SHA-256 of the signature proves the URL is the one issued.

use super::{IssueError, IssuedLink};
use crate::domain::{Labels, LinkSpec, LinkState};
use crate::keys::{KeyError, KeyManager};
use crate::registry::{self, link_requests::RequestedLink, links::LinkRequest};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

/// SHA-256 of the canonical request: everything a link binds and records
/// (method, bucket, key, ttl, signed headers, labels), after validation and
/// defaults, so two requests that would issue the same link hash the same.
/// Length-prefixed fields, labels in key order. Retries may cross an upgrade:
/// this encoding never changes (a test pins a digest); a new field that a
/// link binds is appended, written only when set, so older digests still match.
pub fn request_digest(spec: &LinkSpec, labels: &Labels) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut field = |v: &[u8]| {
        h.update((v.len() as u64).to_be_bytes());
        h.update(v);
    };
    field(b"presignd/v1/IssueLink");
    field(spec.method.as_str().as_bytes());
    field(spec.bucket.as_str().as_bytes());
    field(spec.object_key.as_str().as_bytes());
    field(&spec.ttl.as_secs().to_be_bytes());
    field(
        spec.content_type
            .as_ref()
            .map_or("", |t| t.as_str())
            .as_bytes(),
    );
    field(
        spec.content_disposition
            .as_ref()
            .map_or("", |d| d.as_str())
            .as_bytes(),
    );
    field(&(labels.as_map().len() as u64).to_be_bytes());
    for (k, v) in labels.as_map() {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    h.finalize().into()
}

/// The answer to a request whose id names a live link: that link and its URL
/// signed again, or why not. `None`: the id names no live link (its link
/// expired since the claim): the caller tries again.
pub(super) async fn replay(
    pool: &PgPool,
    keys: &KeyManager,
    caller: &str,
    request: &LinkRequest,
    spec: &LinkSpec,
) -> Result<Option<IssuedLink>, IssueError> {
    let Some(found) = registry::link_requests::find(pool, caller, &request.id).await? else {
        return Ok(None);
    };
    let RequestedLink {
        link,
        request_sha256,
        signature_sha256,
    } = found;
    if request_sha256 != request.sha256 {
        return Err(IssueError::RequestIdReused { link_id: link.id });
    }
    match link.state {
        LinkState::Active => {}
        LinkState::Revoked => {
            return Err(IssueError::RetriedLinkRevoked {
                link_id: link.id,
                key_id: link.key_id,
            });
        }
        LinkState::Expired => return Ok(None),
    }
    let key = keys
        .live_key(&link.key_id)
        .await
        .map_err(|e| match e {
            KeyError::Registry(e) => IssueError::Registry(e),
            other => IssueError::Key(other.to_string()),
        })?
        .ok_or_else(|| IssueError::RetriedLinkRevoked {
            // Its key was deactivated since the look-up.
            link_id: link.id,
            key_id: link.key_id.clone(),
        })?;
    // The bucket's region now: if it changed, the signature check below
    // refuses rather than hand out another URL.
    let region = keys.regions().region_of(&link.bucket);
    let presigned = key.presign_in(spec, &region, link.issued_at.into())?;
    if Sha256::digest(presigned.signature().as_bytes()).as_slice() != signature_sha256 {
        // The S3 endpoint, region or URL style changed since: the URL would
        // not be the one recorded (LookupLink would not know it).
        return Err(IssueError::NotReproducible { link_id: link.id });
    }
    tracing::debug!(link_id = %link.id, caller, request_id = %request.id, "retry answered with its link");
    Ok(Some(IssuedLink {
        link,
        url: presigned.url,
        headers: presigned.headers,
        replayed: true,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Bucket, ContentType, Method, ObjectKey, Ttl};
    use std::collections::HashMap;

    fn spec() -> LinkSpec {
        LinkSpec {
            method: Method::Put,
            bucket: Bucket::parse("photos").unwrap(),
            object_key: ObjectKey::parse("users/1/a.jpg").unwrap(),
            ttl: Ttl::from_secs(300).unwrap(),
            content_type: Some(ContentType::parse("image/jpeg").unwrap()),
            content_disposition: None,
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Labels::parse(&m).unwrap()
    }

    #[test]
    fn the_request_digest_never_changes_across_versions() {
        // Retries cross upgrades: a digest recorded by one version must match
        // the same request hashed by the next. (Computed independently: each
        // field as a u64 big-endian length then its bytes, numbers as u64 BE.)
        assert_eq!(
            hex::encode(request_digest(
                &spec(),
                &labels(&[("team", "a"), ("ticket", "7")])
            )),
            "fd06d77ddcd21c3a394037f7ddf95471b98644eb1a84ccca6bc0da3d5eb89f38"
        );
    }

    #[test]
    fn every_field_a_link_binds_changes_the_digest() {
        let base = request_digest(&spec(), &Labels::default());
        let mut changed = Vec::new();
        let mut s = spec();
        s.method = Method::Get;
        s.content_type = None;
        changed.push(request_digest(&s, &Labels::default()));
        let mut s = spec();
        s.bucket = Bucket::parse("photos2").unwrap();
        changed.push(request_digest(&s, &Labels::default()));
        let mut s = spec();
        s.object_key = ObjectKey::parse("users/1/b.jpg").unwrap();
        changed.push(request_digest(&s, &Labels::default()));
        let mut s = spec();
        s.ttl = Ttl::from_secs(301).unwrap();
        changed.push(request_digest(&s, &Labels::default()));
        let mut s = spec();
        s.content_type = Some(ContentType::parse("image/png").unwrap());
        changed.push(request_digest(&s, &Labels::default()));
        changed.push(request_digest(&spec(), &labels(&[("team", "a")])));
        for c in &changed {
            assert_ne!(*c, base);
        }
        assert_eq!(request_digest(&spec(), &Labels::default()), base);
    }

    #[test]
    fn fields_cannot_run_into_each_other() {
        // Length prefixes: "ab" + "c" is not "a" + "bc".
        let a = labels(&[("ab", "c")]);
        let b = labels(&[("a", "bc")]);
        assert_ne!(request_digest(&spec(), &a), request_digest(&spec(), &b));
    }
}

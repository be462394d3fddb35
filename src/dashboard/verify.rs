//! VerifyLink: why a link works or fails, right now. The store is probed with
//! the link's key and its answer judged by the S3 error code and message in the
//! XML body (Garage says AccessDenied for most refusals; its message tells them
//! apart: see docs/ARCHITECTURE.md, "VerifyLink"). A GET or HEAD link given by
//! URL is sent as is, so its own expiry, region and signature are what the store
//! judges; otherwise presignd signs a fresh GET of the object (GET and HEAD
//! links) or of a missing object (PUT and DELETE links must not be replayed).
//! A fresh signature cannot show what the registry already knows, so an expired
//! link, a link whose key is no longer active, or a URL whose signature is not
//! the recorded one, are judged from the registry when no URL can be sent.
//! The URL is a bearer credential: it goes only to the configured S3 endpoint,
//! and is never logged nor stored.

use super::{Dashboard, DashboardError, may_read};
use crate::auth::Caller;
use crate::domain::{FieldError, LinkState, PresignedUrl};
use crate::keys::{KeyManager, xml_field};
use crate::registry::links::{self, LinkRow};
use uuid::Uuid;

/// The verdicts of VerifyLink (proto `Verdict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Expired,
    KeyInactive,
    AccessDenied,
    RegionMismatch,
    SignatureMismatch,
    ObjectMissing,
    StoreUnreachable,
}

/// The store's answer to a probe: status 0 when none came.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreAnswer {
    pub status: u16,
    pub code: String,
    pub message: String,
}

#[derive(Debug)]
pub struct Verification {
    pub link: LinkRow,
    pub verdict: Verdict,
    /// REGION_MISMATCH: the region the store expects.
    pub expected_region: Option<String>,
    pub answer: StoreAnswer,
}

/// What to verify.
pub enum Subject<'a> {
    Id(Uuid),
    /// The raw URL (sent as is) and its parse.
    Url(&'a str, PresignedUrl),
}

/// Judges the store's answer. `missing_is_ok`: the probe asked for an object
/// that must not exist (PUT and DELETE links), so NoSuchKey proves the key.
pub fn judge(answer: &StoreAnswer, missing_is_ok: bool) -> (Verdict, Option<String>) {
    let message = answer.message.as_str();
    let verdict = match (answer.status, answer.code.as_str()) {
        (0, _) | (500..=599, _) => Verdict::StoreUnreachable,
        (200..=299, _) => Verdict::Ok,
        (404, "NoSuchKey") if missing_is_ok => Verdict::Ok,
        (404, _) => Verdict::ObjectMissing,
        (400, "AuthorizationHeaderMalformed") => {
            return (Verdict::RegionMismatch, expected_region(message));
        }
        // Garage: 400 InvalidRequest "Date is too old"; AWS: 403 AccessDenied.
        (400, "InvalidRequest") if message.contains("too old") => Verdict::Expired,
        (403, "AccessDenied") if message.contains("Request has expired") => Verdict::Expired,
        (403, "SignatureDoesNotMatch") => Verdict::SignatureMismatch,
        (403, "AccessDenied") if message.contains("Invalid signature") => {
            Verdict::SignatureMismatch
        }
        (403, "InvalidAccessKeyId") => Verdict::KeyInactive,
        (403, "AccessDenied")
            if message.contains("No such key")
                || (message.contains("Access key") && message.ends_with("has expired")) =>
        {
            Verdict::KeyInactive
        }
        _ => Verdict::AccessDenied,
    };
    (verdict, None)
}

/// The region in "… expected: 20250101/garage/s3/aws4_request" (Garage), or
/// "… the region 'us-east-1' is wrong; expecting 'eu-west-3'" (AWS).
fn expected_region(message: &str) -> Option<String> {
    if let Some((_, scope)) = message.rsplit_once("expected: ") {
        return scope.split('/').nth(1).map(str::to_owned);
    }
    let (_, rest) = message.rsplit_once("expecting '")?;
    rest.split('\'').next().map(str::to_owned)
}

impl Dashboard {
    pub async fn verify(
        &self,
        caller: &Caller,
        keys: &KeyManager,
        subject: Subject<'_>,
    ) -> Result<Verification, DashboardError> {
        let (link, url, recorded_signature) = match subject {
            // The primary, as for a URL: a verdict on a link just issued
            // must not be NOT_FOUND for the replica's lag.
            Subject::Id(id) => (self.get_from(&self.pool, caller, id).await?, None, true),
            Subject::Url(raw, url) => {
                let (link, recorded) = self.link_of_url(caller, raw, &url).await?;
                (link, Some(raw), recorded)
            }
        };
        let read = matches!(link.method.as_str(), "GET" | "HEAD");
        if let Some(raw) = url.filter(|_| read) {
            let answer = send_as_is(keys, raw, &link.method).await?;
            // A HEAD answer has no body: only a success or a 404 says enough.
            if link.method == "GET" || matches!(answer.status, 0 | 200..=299 | 404 | 500..=599) {
                return Ok(verification(link, &answer, false));
            }
        }
        let from_registry = if link.state == LinkState::Expired {
            Some(Verdict::Expired)
        } else if link.state == LinkState::Revoked {
            Some(Verdict::KeyInactive)
        } else if !recorded_signature {
            Some(Verdict::SignatureMismatch)
        } else {
            None
        };
        let key = keys
            .active_key(&link.signer)
            .filter(|k| k.key_id == link.key_id);
        let (Some(key), None) = (key, from_registry) else {
            let verdict = from_registry.unwrap_or(Verdict::KeyInactive);
            return Ok(Verification {
                link,
                verdict,
                expected_region: None,
                answer: StoreAnswer::default(),
            });
        };
        let region = keys.regions().region_of(&link.bucket);
        let probe = match read {
            true => key.presign_get(&link.bucket, &link.object_key, &region),
            false => key.presign_probe(&link.bucket, &region),
        }
        .map_err(|e| DashboardError::Probe(e.to_string()))?;
        let answer = send(keys.http(), reqwest::Method::GET, &probe).await;
        Ok(verification(link, &answer, !read))
    }

    /// The link of `url`: by its signature's hash, or else (an altered
    /// signature) by its access key, signing time, bucket, key and operation
    /// (`x-id`; a HEAD has none). The flag says whether the signature is the
    /// recorded one.
    async fn link_of_url(
        &self,
        caller: &Caller,
        raw: &str,
        url: &PresignedUrl,
    ) -> Result<(LinkRow, bool), DashboardError> {
        match self.lookup_link(caller, url).await {
            Ok(found) => return Ok((found, true)),
            Err(DashboardError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        links::find_by_key_and_time(&self.pool, url.access_key_id(), url.signed_at())
            .await?
            .into_iter()
            .find(|l| {
                url.addresses(&l.bucket, &l.object_key)
                    && l.method == method_of(raw)
                    && may_read(caller, l)
            })
            .map(|l| (l, false))
            .ok_or_else(|| {
                DashboardError::NotFound("no link issued by presignd has this URL".into())
            })
    }
}

/// The method a presigned URL was signed for, from its `x-id` operation.
fn method_of(raw: &str) -> &'static str {
    let x_id = url::Url::parse(raw.trim()).ok().and_then(|u| {
        u.query_pairs()
            .find(|(k, _)| k == "x-id")
            .map(|(_, v)| v.into_owned())
    });
    match x_id.as_deref() {
        Some("GetObject") => "GET",
        Some("PutObject") => "PUT",
        Some("DeleteObject") => "DELETE",
        _ => "HEAD",
    }
}

fn verification(link: LinkRow, answer: &StoreAnswer, missing_is_ok: bool) -> Verification {
    let (verdict, expected_region) = judge(answer, missing_is_ok);
    Verification {
        link,
        verdict,
        expected_region,
        answer: answer.clone(),
    }
}

/// Sends the caller's URL with the link's method, only to the configured S3
/// endpoint (path style: its host; virtual-hosted: a subdomain of it), so
/// VerifyLink cannot be made to call anywhere else.
async fn send_as_is(
    keys: &KeyManager,
    raw: &str,
    method: &str,
) -> Result<StoreAnswer, DashboardError> {
    let outside = || FieldError::new("url", "does not point at this presignd's S3 endpoint");
    let url = url::Url::parse(raw.trim()).map_err(|_| outside())?;
    let endpoint = url::Url::parse(&keys.target().endpoint).map_err(|_| outside())?;
    let (host, at) = (
        url.host_str().unwrap_or(""),
        endpoint.host_str().unwrap_or(""),
    );
    let same_host = host == at || host.strip_suffix(at).is_some_and(|b| b.ends_with('.'));
    if url.scheme() != endpoint.scheme()
        || url.port_or_known_default() != endpoint.port_or_known_default()
        || !same_host
    {
        return Err(outside().into());
    }
    let method = match method {
        "HEAD" => reqwest::Method::HEAD,
        _ => reqwest::Method::GET,
    };
    Ok(send(keys.http(), method, url.as_str()).await)
}

/// One request; the body is read only when it is an error (small XML), never
/// a served object.
async fn send(http: &reqwest::Client, method: reqwest::Method, url: &str) -> StoreAnswer {
    let Ok(r) = http.request(method, url).send().await else {
        // The error would name the URL: say only that no answer came.
        return StoreAnswer {
            message: "the store did not answer".into(),
            ..StoreAnswer::default()
        };
    };
    let status = r.status().as_u16();
    if r.status().is_success() {
        return StoreAnswer {
            status,
            ..StoreAnswer::default()
        };
    }
    let body = r.text().await.unwrap_or_default();
    StoreAnswer {
        status,
        code: xml_field(&body, "Code").unwrap_or_default().to_owned(),
        message: xml_field(&body, "Message").unwrap_or_default().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, code: &str, message: &str) -> StoreAnswer {
        StoreAnswer {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    #[test]
    fn garage_and_aws_answers_get_their_verdicts() {
        let cases = [
            (answer(200, "", ""), Verdict::Ok),
            (
                answer(404, "NoSuchKey", "Key not found"),
                Verdict::ObjectMissing,
            ),
            (
                answer(400, "InvalidRequest", "Bad request: Date is too old"),
                Verdict::Expired,
            ),
            (
                answer(403, "AccessDenied", "Request has expired"),
                Verdict::Expired,
            ),
            (
                answer(403, "AccessDenied", "Invalid signature"),
                Verdict::SignatureMismatch,
            ),
            (
                answer(403, "SignatureDoesNotMatch", "..."),
                Verdict::SignatureMismatch,
            ),
            (
                answer(403, "AccessDenied", "Access key GK01 has expired"),
                Verdict::KeyInactive,
            ),
            (
                answer(403, "AccessDenied", "No such key: GK01"),
                Verdict::KeyInactive,
            ),
            (
                answer(403, "InvalidAccessKeyId", "..."),
                Verdict::KeyInactive,
            ),
            (
                answer(403, "AccessDenied", "Operation is not allowed for this key"),
                Verdict::AccessDenied,
            ),
            (answer(503, "SlowDown", ""), Verdict::StoreUnreachable),
            (StoreAnswer::default(), Verdict::StoreUnreachable),
        ];
        for (a, want) in cases {
            assert_eq!(judge(&a, false).0, want, "{a:?}");
        }
    }

    #[test]
    fn a_missing_object_proves_the_key_when_the_probe_asked_for_one() {
        assert_eq!(judge(&answer(404, "NoSuchKey", ""), true).0, Verdict::Ok);
        assert_eq!(
            judge(&answer(404, "NoSuchBucket", ""), true).0,
            Verdict::ObjectMissing
        );
    }

    #[test]
    fn a_region_mismatch_names_the_region_the_store_expects() {
        let garage = answer(
            400,
            "AuthorizationHeaderMalformed",
            "Authorization header malformed, unexpected scope: 20250101/us-east-1/s3/aws4_request, expected: 20250101/garage/s3/aws4_request",
        );
        assert_eq!(
            judge(&garage, false),
            (Verdict::RegionMismatch, Some("garage".into()))
        );
        let aws = answer(
            400,
            "AuthorizationHeaderMalformed",
            "The authorization header is malformed; the region 'us-east-1' is wrong; expecting 'eu-west-3'",
        );
        assert_eq!(
            judge(&aws, false),
            (Verdict::RegionMismatch, Some("eu-west-3".into()))
        );
    }
}

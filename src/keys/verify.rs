//! Proving a new key usable before it signs anything: backends are eventually
//! consistent (AWS IAM takes seconds to accept a new key), so a presigned probe
//! (a GET of a missing object) is sent until the store accepts the key, with
//! bounded retries. The answer is judged by the S3 error code in its XML body
//! (`classify`), not by the status alone: under least privilege (s3:GetObject
//! only) AWS answers a missing object with 403 AccessDenied, which proves the
//! key valid. Garage's and AWS's answers: docs/ARCHITECTURE.md, "The new-key probe".

use crate::signing::SigningKey;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[error("new key {key_id} was not accepted by the S3 endpoint after {attempts} attempt(s): {last}")]
pub struct NotUsable {
    pub key_id: String,
    pub attempts: u32,
    pub last: String,
    /// The last attempt never had the key judged: the endpoint could not be
    /// reached, or answered busy (429, 5xx). The key may be fine: proving
    /// it again later may pass.
    pub store_unavailable: bool,
}

/// What one probe answer says about the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAnswer {
    /// The store authenticated the key (the object is missing, or was served).
    Accepted,
    /// The key is valid but may not list the bucket (AccessDenied for a missing
    /// object): it can still sign what it is allowed to.
    AcceptedNarrow,
    /// The key is valid but has no grant on the bucket (Garage's AccessDenied
    /// "Operation is not allowed for this key"): the key is proven, the
    /// (key, bucket) pair is not usable.
    NotGranted(String),
    /// Not (yet) known to the store, or the store is busy: retry with backoff.
    NotYet(String),
    /// It will not work by retrying (wrong region, clock, missing bucket,
    /// a deactivated key): fail now, saying why.
    Refused(String),
}

/// Judges a probe answer by its status and the `<Code>`/`<Message>` of the S3
/// XML error body.
pub fn classify(status: u16, body: &str) -> ProbeAnswer {
    let code = xml_field(body, "Code").unwrap_or_default();
    let full_message = xml_field(body, "Message").unwrap_or_default();
    // Garage prefixes its messages with the status' reason ("Forbidden: No
    // such key: GK…"); the cases below are told apart by what follows.
    let message = full_message
        .strip_prefix("Forbidden: ")
        .unwrap_or(full_message);
    let what = || {
        format!("HTTP {status} {code}: {full_message}")
            .trim_end_matches(": ")
            .to_owned()
    };
    match (status, code) {
        (200..=299, _) | (404, "NoSuchKey") => ProbeAnswer::Accepted,
        (404, "NoSuchBucket") => ProbeAnswer::Refused(what()),
        (404, _) => ProbeAnswer::Accepted,
        // AWS: not yet propagated (or a wrong secret, which retrying will not
        // fix; the bounded attempts end it).
        (403, "InvalidAccessKeyId" | "SignatureDoesNotMatch") => ProbeAnswer::NotYet(what()),
        // Garage says AccessDenied for everything; its message tells the cases
        // apart (see S3-ANSWERS: "No such key", "Invalid signature", "has expired").
        (403, "AccessDenied") if message.starts_with("No such key") => ProbeAnswer::NotYet(what()),
        (403, "AccessDenied") if message.starts_with("Invalid signature") => {
            ProbeAnswer::NotYet(what())
        }
        (403, "AccessDenied") if message.starts_with("Operation is not allowed") => {
            ProbeAnswer::NotGranted(what())
        }
        (403, "AccessDenied")
            if message.starts_with("Access key") && message.ends_with("has expired") =>
        {
            ProbeAnswer::Refused(format!("{}: the key is deactivated at the backend", what()))
        }
        (403, "AccessDenied") if message == "Request has expired" => {
            ProbeAnswer::Refused(format!("{}: check this machine's clock", what()))
        }
        (403, "AccessDenied") => ProbeAnswer::AcceptedNarrow,
        (403, _) => ProbeAnswer::NotYet(what()),
        (status, _) if store_busy(status) => ProbeAnswer::NotYet(what()),
        (400..=499, _) => ProbeAnswer::Refused(what()),
        _ => ProbeAnswer::NotYet(what()),
    }
}

pub use crate::signing::xml_field;

/// The store busy or failing (429, 5xx): an answer that judges no key.
pub(super) fn store_busy(status: u16) -> bool {
    status == 429 || (500..=599).contains(&status)
}

/// Sends one probe: its status, and its body when it is an error (small XML;
/// a served object is not read). The error never names the URL.
pub(super) async fn send_probe(http: &reqwest::Client, url: &str) -> Result<(u16, String), String> {
    let r = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("request failed: {}", e.without_url()))?;
    let status = r.status().as_u16();
    let body = if r.status().is_success() {
        String::new()
    } else {
        r.text().await.unwrap_or_default()
    };
    Ok((status, body))
}

/// Waits after the `attempt`th probe: 200 ms doubling, at most 2 s.
pub(super) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100 * 2u64.pow(attempt.min(5))).min(Duration::from_secs(2))
}

/// Proves a key usable: a probe of `bucket` (signed for `region`) until the
/// store authenticates the key.
pub async fn verify_usable(
    http: &reqwest::Client,
    key: &SigningKey,
    bucket: &str,
    region: &str,
    attempts: u32,
) -> Result<(), NotUsable> {
    let attempts = attempts.max(1);
    let mut last = String::new();
    let mut store_unavailable = false;
    let not_usable = |attempts, last, store_unavailable| NotUsable {
        key_id: key.key_id.clone(),
        attempts,
        last,
        store_unavailable,
    };
    for attempt in 1..=attempts {
        match key.presign_probe(bucket, region) {
            Ok(url) => match send_probe(http, &url).await {
                Ok((status, body)) => match classify(status, &body) {
                    ProbeAnswer::Accepted => return Ok(()),
                    // The bucket's own grant is the preflight's (`preflight`).
                    ProbeAnswer::AcceptedNarrow | ProbeAnswer::NotGranted(_) => {
                        tracing::info!(signer = %key.signer, key_id = %key.key_id, bucket,
                            "new key accepted; it may not read this bucket yet (AccessDenied for a missing object)");
                        return Ok(());
                    }
                    ProbeAnswer::Refused(why) => return Err(not_usable(attempt, why, false)),
                    ProbeAnswer::NotYet(why) => {
                        (last, store_unavailable) = (why, store_busy(status));
                    }
                },
                Err(e) => (last, store_unavailable) = (e, true),
            },
            Err(e) => (last, store_unavailable) = (e.to_string(), false),
        }
        if attempt < attempts {
            tokio::time::sleep(backoff(attempt)).await;
        }
    }
    Err(not_usable(attempts, last, store_unavailable))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: &str, message: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message><Resource>/b/k</Resource><Region>garage</Region></Error>"
        )
    }

    #[test]
    fn a_missing_object_proves_the_key_on_garage_and_on_aws_with_list_permission() {
        assert_eq!(
            classify(404, &body("NoSuchKey", "Key not found")),
            ProbeAnswer::Accepted
        );
        assert_eq!(classify(200, ""), ProbeAnswer::Accepted);
    }

    #[test]
    fn access_denied_for_a_missing_object_means_a_valid_key_with_narrow_permissions() {
        // AWS, a key without s3:ListBucket.
        assert_eq!(
            classify(403, &body("AccessDenied", "Access Denied")),
            ProbeAnswer::AcceptedNarrow
        );
    }

    #[test]
    fn garage_s_not_allowed_means_a_valid_key_without_a_grant_on_the_bucket() {
        for message in [
            "Operation is not allowed for this key",
            "Forbidden: Operation is not allowed for this key.",
        ] {
            assert!(
                matches!(
                    classify(403, &body("AccessDenied", message)),
                    ProbeAnswer::NotGranted(m) if m.contains("not allowed")
                ),
                "{message}"
            );
        }
    }

    #[test]
    fn an_unknown_key_or_a_bad_signature_is_not_usable_yet() {
        // AWS: IAM has not propagated the key yet.
        for code in ["InvalidAccessKeyId", "SignatureDoesNotMatch"] {
            assert!(
                matches!(classify(403, &body(code, "...")), ProbeAnswer::NotYet(_)),
                "{code}"
            );
        }
        // Garage's words for the same cases, bare and as Garage 2.5 really
        // sends them (prefixed with the status' reason).
        for message in [
            "No such key: GK0123456789abcdef01234567",
            "Invalid signature",
            "Forbidden: No such key: GK0123456789abcdef01234567",
            "Forbidden: Invalid signature",
        ] {
            assert!(
                matches!(
                    classify(403, &body("AccessDenied", message)),
                    ProbeAnswer::NotYet(_)
                ),
                "{message}"
            );
        }
    }

    #[test]
    fn a_deactivated_key_is_refused_in_garage_s_real_words() {
        let answer = classify(
            403,
            &body(
                "AccessDenied",
                "Forbidden: Access key GK0123456789abcdef01234567 has expired",
            ),
        );
        assert!(
            matches!(&answer, ProbeAnswer::Refused(m) if m.contains("deactivated")),
            "{answer:?}"
        );
    }

    #[test]
    fn throttling_and_server_errors_are_retried() {
        assert!(matches!(
            classify(503, &body("SlowDown", "Reduce your request rate")),
            ProbeAnswer::NotYet(_)
        ));
        assert!(matches!(classify(500, ""), ProbeAnswer::NotYet(_)));
        assert!(matches!(classify(429, ""), ProbeAnswer::NotYet(_)));
    }

    #[test]
    fn what_retrying_cannot_fix_is_refused_at_once_saying_why() {
        let region = classify(
            400,
            &body(
                "AuthorizationHeaderMalformed",
                "unexpected scope 20250101/us-east-1/s3/aws4_request, expected: 20250101/garage/s3/aws4_request",
            ),
        );
        assert!(
            matches!(&region, ProbeAnswer::Refused(m) if m.contains("expected: 20250101/garage")),
            "{region:?}"
        );
        assert!(matches!(
            classify(400, &body("InvalidRequest", "Date is too old")),
            ProbeAnswer::Refused(_)
        ));
        // A deactivated key: Garage's AccessDenied "has expired"; AWS's is
        // InvalidAccessKeyId, indistinguishable from propagation (bounded retries).
        assert!(matches!(
            classify(
                403,
                &body(
                    "AccessDenied",
                    "Access key GK0123456789abcdef01234567 has expired"
                )
            ),
            ProbeAnswer::Refused(_)
        ));
        assert!(matches!(
            classify(403, &body("AccessDenied", "Request has expired")),
            ProbeAnswer::Refused(_)
        ));
        assert!(matches!(
            classify(404, &body("NoSuchBucket", "Bucket not found")),
            ProbeAnswer::Refused(_)
        ));
    }
}

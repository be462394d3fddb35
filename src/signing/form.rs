//! Browser upload forms: a SigV4 POST policy (JSON, base64) listing the
//! form's conditions, signed with the key's cached day key (`sigv4`). The
//! browser posts the returned fields and the file, multipart/form-data, to the
//! bucket's URL; the store checks the signature, the expiry and each condition.

use super::presign::SigningKey;
use super::signed::SignError;
use super::sigv4;
use crate::domain::{FormSpec, KeyCondition, TypeCondition};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::time::SystemTime;

/// A signed form. The signature field makes it a bearer credential: it is
/// returned to the caller and dropped, never stored nor logged.
pub struct SignedForm {
    /// Where to POST: the bucket's URL.
    pub url: String,
    /// The form fields to send before the file, in this order.
    pub fields: Vec<(String, String)>,
}

impl std::fmt::Debug for SignedForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignedForm(<redacted>)")
    }
}

/// The name of the field that carries the signature.
pub const SIGNATURE_FIELD: &str = "x-amz-signature";

impl SignedForm {
    /// The hex signature of the policy.
    pub fn signature(&self) -> &str {
        self.fields
            .iter()
            .find(|(name, _)| name == SIGNATURE_FIELD)
            .map_or("", |(_, v)| v.as_str())
    }
}

impl SigningKey {
    /// Signs `spec` as of `issued_at` (the form's x-amz-date; the policy
    /// expires at issued_at + ttl) for `region`, its bucket's.
    pub fn sign_form(
        &self,
        spec: &FormSpec,
        region: &str,
        issued_at: SystemTime,
    ) -> Result<SignedForm, SignError> {
        let time = sigv4::epoch_secs(issued_at);
        let (credential, date) = self.sigv4().form_scope(time, region);
        let expiration: DateTime<Utc> = (issued_at + spec.ttl.as_duration()).into();
        let bucket = spec.bucket.as_str();
        let mut conditions: Vec<Value> = vec![json!({ "bucket": bucket })];
        conditions.push(match &spec.key {
            KeyCondition::Exact(k) => json!({ "key": k.as_str() }),
            KeyCondition::Prefix(p) => json!(["starts-with", "$key", p.as_str()]),
        });
        conditions.push(json!([
            "content-length-range",
            spec.size.min,
            spec.size.max
        ]));
        match &spec.content_type {
            Some(TypeCondition::Exact(t)) => conditions.push(json!({ "Content-Type": t.as_str() })),
            Some(TypeCondition::Prefix(p)) => {
                conditions.push(json!(["starts-with", "$Content-Type", p]))
            }
            None => {}
        }
        conditions.push(json!({ "x-amz-algorithm": "AWS4-HMAC-SHA256" }));
        conditions.push(json!({ "x-amz-credential": credential }));
        conditions.push(json!({ "x-amz-date": date }));
        let policy = json!({
            "expiration": expiration.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            "conditions": conditions,
        });
        let policy = base64::engine::general_purpose::STANDARD.encode(policy.to_string());
        let signature = self.sigv4().sign_policy(time, region, &policy);

        let mut fields = vec![("key".to_owned(), spec.key.as_str().to_owned())];
        if let Some(TypeCondition::Exact(t)) = &spec.content_type {
            fields.push(("Content-Type".to_owned(), t.as_str().to_owned()));
        }
        fields.extend([
            ("x-amz-algorithm".to_owned(), "AWS4-HMAC-SHA256".to_owned()),
            ("x-amz-credential".to_owned(), credential),
            ("x-amz-date".to_owned(), date),
            ("policy".to_owned(), policy),
            (SIGNATURE_FIELD.to_owned(), signature),
        ]);
        Ok(SignedForm {
            url: self.endpoint()?.bucket_url(bucket),
            fields,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Bucket, ObjectKey, SizeRange, Ttl};
    use crate::secret::SecretString;
    use crate::signing::S3Target;
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    fn key() -> SigningKey {
        let target = S3Target {
            endpoint: "http://127.0.0.1:3900".into(),
            region: "garage".into(),
            path_style: true,
        };
        SigningKey::new(
            &target,
            "GKEXAMPLE",
            &SecretString::new("s3cr3t".into()),
            "default",
        )
    }

    fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
        m.update(data);
        m.finalize().into_bytes().to_vec()
    }

    /// The policy lists every condition the request named, and its signature
    /// is the one an independent HMAC chain computes over the base64 policy.
    #[test]
    fn a_prefix_form_binds_its_conditions_and_signs_its_policy() {
        let spec = FormSpec {
            bucket: Bucket::parse("photos").unwrap(),
            key: KeyCondition::Prefix(ObjectKey::parse("in/").unwrap()),
            size: SizeRange::parse(1, 1024).unwrap(),
            content_type: Some(TypeCondition::Prefix("image/".into())),
            ttl: Ttl::from_secs(600).unwrap(),
        };
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_451_347_200);
        let form = key().sign_form(&spec, "garage", at).unwrap();
        assert_eq!(form.url, "http://127.0.0.1:3900/photos");
        let field = |n: &str| form.fields.iter().find(|(k, _)| k == n).unwrap().1.clone();
        assert_eq!(field("key"), "in/");
        assert_eq!(
            field("x-amz-credential"),
            "GKEXAMPLE/20151229/garage/s3/aws4_request"
        );
        assert_eq!(field("x-amz-date"), "20151229T000000Z");
        let policy = field("policy");
        let decoded: Value = serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(&policy)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(decoded["expiration"], "2015-12-29T00:10:00Z");
        assert_eq!(
            decoded["conditions"],
            json!([
                {"bucket": "photos"},
                ["starts-with", "$key", "in/"],
                ["content-length-range", 1, 1024],
                ["starts-with", "$Content-Type", "image/"],
                {"x-amz-algorithm": "AWS4-HMAC-SHA256"},
                {"x-amz-credential": "GKEXAMPLE/20151229/garage/s3/aws4_request"},
                {"x-amz-date": "20151229T000000Z"}
            ])
        );
        let mut k = hmac(b"AWS4s3cr3t", b"20151229");
        for part in [&b"garage"[..], b"s3", b"aws4_request"] {
            k = hmac(&k, part);
        }
        assert_eq!(form.signature(), hex::encode(hmac(&k, policy.as_bytes())));
        assert_eq!(format!("{form:?}"), "SignedForm(<redacted>)");
    }
}

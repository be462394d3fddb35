//! Issuing a browser upload form (IssueUploadForm): the path of IssueLink
//! with a POST policy instead of a URL. The caller's policy judges it (the
//! POST right, the key or prefix, the largest file), the signer's active key
//! signs it for the bucket's region, and the recorder commits its row (method
//! POST; object_key the exact key or the prefix, `object_key_is_prefix` says
//! which; the SHA-256 of the policy's signature) before the fields leave.

use super::{IssueError, Issuer, Recorded, metered, now_in_seconds};
use crate::auth::Caller;
use crate::domain::{FormSpec, Labels, Method};
use crate::registry::links::{LinkRow, NewLink};
use crate::signing::SignedForm;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

const RPC: &str = "presignd.v1.LinkService/IssueUploadForm";

/// A recorded form and the fields the caller may now post.
pub struct IssuedForm {
    pub link: LinkRow,
    pub form: SignedForm,
}

impl Issuer {
    /// Issues one upload form, metered as IssueLink is.
    pub async fn issue_form(
        &self,
        caller: &Caller,
        spec: FormSpec,
        labels: Labels,
    ) -> Result<IssuedForm, IssueError> {
        metered(self.issue_form_unmetered(caller, spec, labels), |issued| {
            Some(&issued.link)
        })
        .await
    }

    async fn issue_form_unmetered(
        &self,
        caller: &Caller,
        spec: FormSpec,
        labels: Labels,
    ) -> Result<IssuedForm, IssueError> {
        let grant = match self.policy.current().authorize_form(&caller.name, &spec) {
            Ok(grant) => grant,
            Err(denied) => {
                let target = format!(
                    "POST {}/{}{}",
                    spec.bucket,
                    spec.key.as_str(),
                    if spec.key.is_prefix() { "*" } else { "" }
                );
                self.audit_refusal(caller, RPC, target, &denied);
                return Err(denied.into());
            }
        };
        let signer = grant.signer.as_str();
        // As IssueLink: a rotation between our read of the key and the insert
        // refuses the row, and one retry signs with the new key.
        for _ in 0..2 {
            let (key, region) = self.signing_key(signer, spec.bucket.as_str())?;
            let issued = now_in_seconds();
            let form = key.sign_form(&spec, &region, issued)?;
            let issued_at: DateTime<Utc> = issued.into();
            let row = NewLink {
                id: Uuid::now_v7(),
                key_id: key.key_id.clone(),
                signer: signer.to_owned(),
                caller: caller.name.to_string(),
                method: Method::Post.as_str(),
                bucket: spec.bucket.to_string(),
                object_key: spec.key.as_str().to_owned(),
                object_key_is_prefix: spec.key.is_prefix(),
                labels: labels.as_map().clone(),
                issued_at,
                expires_at: issued_at + spec.ttl.as_duration(),
                signature_sha256: Sha256::digest(form.signature().as_bytes()).to_vec(),
                content_type: None,
                content_disposition: None,
                replaces_link_id: None,
                request: None,
            };
            match self.recorder.record(row).await? {
                Recorded::Committed(row) => {
                    self.budgets.issued(signer);
                    tracing::debug!(link_id = %row.id, caller = %caller.name, signer,
                        key_id = %key.key_id, bucket = %spec.bucket, ttl_s = spec.ttl.as_secs(),
                        "issued upload form");
                    return Ok(IssuedForm {
                        link: LinkRow::just_issued(row),
                        form,
                    });
                }
                Recorded::KeyNotActive => {
                    tracing::info!(signer, key_id = %key.key_id, "key rotated while issuing a form; retrying with the current key");
                    self.keys.reload_signer(signer).await?;
                }
                Recorded::RequestIdTaken => {
                    unreachable!("a form row carries no request id")
                }
            }
        }
        Err(IssueError::NoActiveKey(signer.to_owned()))
    }
}

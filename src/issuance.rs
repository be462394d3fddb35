//! Issuing a link: check the caller's policy, sign with the caller's signer,
//! record, commit, and only then hand the URL out (invariant 1). The row holds
//! the SHA-256 of the signature, never the URL. A request the policy refuses is
//! audited. A bucket the signer's key was not proven for (`keys::preflight`)
//! gets no link: the store would refuse it. A request with a request id that
//! names a live link gets that link back instead of a new one (`retry`).
//! An upload form (`form`) takes the same path with a POST policy for a URL;
//! a multipart upload (`multipart`) records one link per part URL.

mod form;
mod multipart;
mod recorder;
mod reissue;
mod retry;

pub use form::IssuedForm;
pub use multipart::{
    PART_LABEL, PartUrl, StartUpload, Started, UPLOAD_LABEL, UploadError, abort_expired,
};
pub use recorder::{Recorded, Recorder};
pub use reissue::{ReissueRequest, Reissued, Replacement, SkipReason, Skipped};
pub use retry::request_digest;

use crate::audit::{AuditEvent, Auditor};
use crate::auth::Caller;
use crate::domain::{Labels, LinkSpec, RequestId};
use crate::keys::{BucketRefused, KeyBudgets, KeyManager};
use crate::metrics;
use crate::policy::{Denied, PolicyHandle};
use crate::ratelimit::{RateLimited, RateLimits};
use crate::registry::{
    self,
    links::{LinkRequest, NewLink},
};
use crate::signing::SignError;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(
        "signer {0} has no active signing key right now (starting, or an emergency rotation is replacing it); retry shortly"
    )]
    NoActiveKey(String),
    #[error(transparent)]
    Registry(#[from] registry::Error),
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error(transparent)]
    RateLimited(#[from] RateLimited),
    #[error(transparent)]
    InvalidArgument(#[from] crate::domain::FieldError),
    #[error("{0}")]
    NotYours(String),
    #[error("revocation {0} not found")]
    RevocationNotFound(Uuid),
    #[error("{0}")]
    KilledNoLink(String),
    /// A recorded key could not sign (its secret does not open).
    #[error("{0}")]
    Key(String),
    /// The preflight did not prove the signer's key for the bucket.
    #[error(transparent)]
    Bucket(#[from] BucketRefused),
    /// The caller's mistake (INVALID_ARGUMENT naming `request_id`): the text
    /// is the field's reason.
    #[error(
        "already names link {link_id}, issued for a different request (method, bucket, object key, \
         ttl, signed headers or labels differ); use a new request_id for a new request"
    )]
    RequestIdReused { link_id: Uuid },
    #[error(
        "request_id names link {link_id}, which is revoked (its key {key_id} was deactivated or the \
         link marked by a revocation): no URL is returned; ask for a new link with a new request_id"
    )]
    RetriedLinkRevoked { link_id: Uuid, key_id: String },
    #[error(
        "request_id names link {link_id}, which cannot be signed again identically (the S3 \
         endpoint, region or URL style changed since it was issued); ask for a new link with a \
         new request_id"
    )]
    NotReproducible { link_id: Uuid },
    #[error("request_id is being claimed by a concurrent request whose link just expired; retry")]
    RequestIdContended,
}

/// A recorded link and the URL the caller may now use.
pub struct IssuedLink {
    pub link: registry::links::LinkRow,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// A retry's answer: the link an earlier request with its id issued.
    pub replayed: bool,
}

#[derive(Clone)]
pub struct Issuer {
    /// The registry (primary): ReissueLinks reads and records here, and a
    /// retried IssueLink looks up the link its request id names.
    pub pool: PgPool,
    pub keys: KeyManager,
    /// Group commit of link rows (see `recorder`).
    pub recorder: Recorder,
    pub policy: PolicyHandle,
    pub limits: RateLimits,
    pub audit: Auditor,
    /// Counts the links of budgeted signers (wakes their budget check).
    pub budgets: KeyBudgets,
}

/// Now, truncated to the second: SigV4's X-Amz-Date has second precision, so the
/// recorded issued_at and expires_at match the signature exactly.
pub(crate) fn now_in_seconds() -> SystemTime {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    UNIX_EPOCH + Duration::from_secs(secs)
}

const RPC: &str = "presignd.v1.LinkService/IssueLink";
const RPC_REISSUE: &str = "presignd.v1.LinkService/ReissueLinks";

impl Issuer {
    /// Takes one of the caller's IssueLink tokens: called before anything else
    /// is looked at, so floods of bad requests are limited too.
    pub fn admit(&self, caller: &Caller) -> Result<(), IssueError> {
        let rate = self.policy.current().rate_for(&caller.name);
        Ok(self.limits.check(&caller.name, rate)?)
    }

    /// Issues one link, recording its latency and outcome in the metrics. With
    /// a `request_id` that names a live link of the caller, returns that link
    /// instead (counted in the latency, not as issued).
    pub async fn issue(
        &self,
        caller: &Caller,
        spec: LinkSpec,
        labels: Labels,
        request_id: Option<RequestId>,
    ) -> Result<IssuedLink, IssueError> {
        metered(
            self.issue_unmetered(caller, spec, labels, request_id),
            |issued| (!issued.replayed).then_some(&issued.link),
        )
        .await
    }

    async fn issue_unmetered(
        &self,
        caller: &Caller,
        spec: LinkSpec,
        labels: Labels,
        request_id: Option<RequestId>,
    ) -> Result<IssuedLink, IssueError> {
        let grant = match self.policy.current().authorize_issue(&caller.name, &spec) {
            Ok(grant) => grant,
            Err(denied) => {
                let target = format!(
                    "{} {}/{}",
                    spec.method.as_str(),
                    spec.bucket,
                    spec.object_key.as_str()
                );
                self.audit_refusal(caller, RPC, target, &denied);
                return Err(denied.into());
            }
        };
        let signer = grant.signer.as_str();
        let request = request_id.map(|id| LinkRequest {
            id: id.to_string(),
            sha256: request_digest(&spec, &labels),
        });
        // Why the last attempt did not issue: its key, or its request id.
        let mut contended = false;
        // A rotation may deactivate the key between our read and our insert; the
        // insert then refuses, and one retry picks up the new key.
        for _ in 0..2 {
            let (key, region) = self.signing_key(signer, spec.bucket.as_str())?;
            let issued = now_in_seconds();
            let presigned = key.presign_in(&spec, &region, issued)?;
            let signature = presigned.signature();
            let issued_at: DateTime<Utc> = issued.into();
            let row = NewLink {
                id: Uuid::now_v7(),
                key_id: key.key_id.clone(),
                signer: signer.to_owned(),
                caller: caller.name.to_string(),
                method: spec.method.as_str(),
                bucket: spec.bucket.to_string(),
                object_key: spec.object_key.as_str().to_owned(),
                object_key_is_prefix: false,
                labels: labels.as_map().clone(),
                issued_at,
                expires_at: issued_at + spec.ttl.as_duration(),
                signature_sha256: Sha256::digest(signature.as_bytes()).to_vec(),
                content_type: spec.content_type.as_ref().map(|t| t.as_str().to_owned()),
                content_disposition: spec
                    .content_disposition
                    .as_ref()
                    .map(|d| d.as_str().to_owned()),
                replaces_link_id: None,
                request: request.clone(),
            };
            let row = match self.recorder.record(row).await? {
                Recorded::Committed(row) => {
                    self.budgets.issued(signer);
                    row
                }
                Recorded::KeyNotActive => {
                    contended = false;
                    tracing::info!(signer, key_id = %key.key_id, "key rotated while issuing; retrying with the current key");
                    self.keys.reload_signer(signer).await?;
                    continue;
                }
                Recorded::RequestIdTaken => {
                    let request = request
                        .as_ref()
                        .expect("only a row with a request id is answered RequestIdTaken");
                    let replayed =
                        retry::replay(&self.pool, &self.keys, caller.name.as_str(), request, &spec)
                            .await?;
                    match replayed {
                        Some(issued) => return Ok(issued),
                        // Its link expired since our claim: the id is free, claim it again.
                        None => {
                            contended = true;
                            continue;
                        }
                    }
                }
            };
            // Debug: at thousands of links a second, a line each is a
            // measurable share of the server's CPU (docs/BENCHMARKS.md).
            tracing::debug!(
                link_id = %row.id, caller = %caller.name, signer, key_id = %key.key_id,
                method = spec.method.as_str(), bucket = %spec.bucket, ttl_s = spec.ttl.as_secs(),
                "issued link"
            );
            return Ok(IssuedLink {
                link: registry::links::LinkRow::just_issued(row),
                url: presigned.url,
                headers: presigned.headers,
                replayed: false,
            });
        }
        Err(match contended {
            true => IssueError::RequestIdContended,
            false => IssueError::NoActiveKey(signer.to_owned()),
        })
    }
}

impl Issuer {
    /// `signer`'s active key and the region it signs `bucket` for. Lock-free:
    /// the key ring, and the preflight's outcome for this key and bucket.
    fn signing_key(
        &self,
        signer: &str,
        bucket: &str,
    ) -> Result<
        (
            std::sync::Arc<crate::signing::SigningKey>,
            std::sync::Arc<str>,
        ),
        IssueError,
    > {
        let key = self
            .keys
            .active_key(signer)
            .ok_or_else(|| IssueError::NoActiveKey(signer.to_owned()))?;
        let region = self.keys.bucket_ready(signer, &key.key_id, bucket)?;
        Ok((key, region))
    }

    /// Audits the policy's refusal of `rpc` on `target` for `caller`.
    fn audit_refusal(&self, caller: &Caller, rpc: &str, target: String, denied: &Denied) {
        self.audit.record_denial(AuditEvent {
            caller: Some(caller.name.to_string()),
            peer: None,
            rpc: rpc.into(),
            target,
            code: tonic::Code::PermissionDenied,
            message: denied.to_string(),
        });
    }
}

/// Runs one issuance and meters it: its latency by outcome, a registry
/// failure, and the link it issued (`issued` picks it; `None` for an answer
/// that issued nothing new, such as a replayed request id).
async fn metered<T>(
    issuance: impl std::future::Future<Output = Result<T, IssueError>>,
    issued: impl FnOnce(&T) -> Option<&registry::links::LinkRow>,
) -> Result<T, IssueError> {
    let started = std::time::Instant::now();
    let result = issuance.await;
    let outcome = match &result {
        Ok(done) => {
            if let Some(link) = issued(done) {
                metrics::record_issued(&link.method, &link.signer);
            }
            "ok"
        }
        Err(IssueError::Registry(_)) => {
            metrics::record_registry_error("issue_link");
            "error"
        }
        Err(_) => "error",
    };
    metrics::record_issue_latency(started.elapsed(), outcome);
    result
}

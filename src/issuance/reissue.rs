//! ReissueLinks: after a revocation, fresh URLs for the innocent links it
//! killed. For each link of the page (the caller's, killed by this revocation,
//! not yet expired) that is not quarantined and that the owner's policy still
//! allows, a replacement is recorded: same object, method, bound headers and
//! labels, the original's expires_at (the remaining lifetime), signed by the
//! signer's active key, naming the link it replaces. One replacement per link
//! (`links_one_replacement`): a second call finds the first and signs it again
//! from its row (same key, same issued_at: the same URL, as SigV4 is
//! deterministic). URLs are signed only from committed rows (invariant 1).

use super::{IssueError, Issuer, RPC_REISSUE, now_in_seconds};
use crate::auth::Caller;
use crate::domain::{
    Bucket, CallerName, ContentDisposition, ContentType, FieldError, LinkSpec, Method, ObjectKey,
    Ttl,
};
use crate::paging::{Cursor, Listing, PageTokens};
use crate::registry::links::{LinkRow, NewLink};
use crate::registry::{self, reissue, revocations};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use uuid::Uuid;

pub struct ReissueRequest {
    pub revocation_id: Uuid,
    /// Whose links: empty means the caller's own (an admin's: every caller's).
    pub owner: Option<CallerName>,
    pub page_size: u32,
    pub page_token: String,
}

/// One page: the replacements (with their URLs) and the links not reissued.
pub struct Reissued {
    pub replacements: Vec<Replacement>,
    pub skipped: Vec<Skipped>,
    pub next_page_token: Option<String>,
}

pub struct Replacement {
    pub replaces_link_id: Uuid,
    pub link: LinkRow,
    /// A bearer credential: returned, never stored nor logged.
    pub url: String,
    pub headers: Vec<(String, String)>,
}

pub struct Skipped {
    pub link_id: Uuid,
    pub reason: SkipReason,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Named as leaked by the revocation.
    Quarantined,
    /// The owner's policy in force no longer allows this link.
    PolicyDenied,
    /// Recorded before presignd kept a link's bound headers (0012).
    HeadersUnknown,
    /// Its replacement died since (another revocation): reissue for that one.
    ReplacementRevoked,
    /// Less than a second of its lifetime is left.
    Expiring,
    /// The signer's key is not (yet) proven for the bucket (`keys::preflight`).
    BucketNotReady,
    /// A multipart upload's part URL: a plain PUT would not replace it.
    UploadPart,
    /// An upload form (POST): not a URL; the caller asks for a new form.
    UploadForm,
}

/// A replacement's URL and headers, or why it is not handed out.
type Signed = Result<(String, Vec<(String, String)>), (SkipReason, String)>;

/// A page's link that the policy allows: what to sign, and which signer.
struct Wanted {
    original: LinkRow,
    spec: LinkSpec,
    signer: String,
}

impl Issuer {
    pub async fn reissue(
        &self,
        caller: &Caller,
        req: ReissueRequest,
        tokens: &PageTokens,
    ) -> Result<Reissued, IssueError> {
        let owner = match req.owner {
            None if caller.admin => None,
            None => Some(caller.name.clone()),
            Some(o) if caller.admin || o == caller.name => Some(o),
            Some(o) => {
                return Err(IssueError::NotYours(format!(
                    "caller: only admins may reissue other callers' links (asked for {o})"
                )));
            }
        };
        let id = req.revocation_id;
        let rev = revocations::get(&self.pool, id)
            .await?
            .ok_or(IssueError::RevocationNotFound(id))?;
        let old = match rev.old_key_id.as_deref() {
            Some(old) if reissue::key_killed_by(&self.pool, id, old).await? => old,
            _ => {
                return Err(IssueError::KilledNoLink(format!(
                    "revocation {id} ({}, {}) has deactivated no key: it killed no link to reissue",
                    rev.mode.as_str(),
                    rev.state.as_str()
                )));
            }
        };
        let filter =
            serde_json::json!({ "revocation": id, "caller": owner.as_ref().map(|c| c.as_str()) });
        let page = tokens.request(Listing::Reissue, &filter, req.page_size, &req.page_token)?;
        let owner = owner.as_ref().map(|c| c.as_str());
        let mut rows =
            reissue::killed_by(&self.pool, id, old, owner, page.after, page.fetch_limit()).await?;
        let next_page_token = tokens.next_page(&page, &mut rows, |r| Cursor::from(r));

        let (wanted, mut skipped) = self.judge(caller, &rev.quarantined_link_ids, rows);
        let (recorded, ran_out) = self.record_replacements(&wanted).await?;
        let mut replacements = Vec::with_capacity(recorded.len());
        for w in &wanted {
            let Some(link) = recorded.get(&w.original.id) else {
                if ran_out.contains(&w.original.id) {
                    skipped.push(Skipped {
                        link_id: w.original.id,
                        reason: SkipReason::Expiring,
                        message: "its lifetime ran out while it was being reissued".into(),
                    });
                }
                continue;
            };
            match self.sign_recorded(link).await? {
                Ok((url, headers)) => replacements.push(Replacement {
                    replaces_link_id: w.original.id,
                    link: link.clone(),
                    url,
                    headers,
                }),
                Err((reason, message)) => skipped.push(Skipped {
                    link_id: w.original.id,
                    reason,
                    message,
                }),
            }
        }
        tracing::info!(revocation_id = %id, caller = %caller.name, replacements = replacements.len(),
            skipped = skipped.len(), "reissued links");
        Ok(Reissued {
            replacements,
            skipped,
            next_page_token,
        })
    }

    /// Which links of the page may be reissued now, and why the others not.
    fn judge(
        &self,
        caller: &Caller,
        quarantined: &[Uuid],
        rows: Vec<LinkRow>,
    ) -> (Vec<Wanted>, Vec<Skipped>) {
        let policy = self.policy.current();
        let now: DateTime<Utc> = now_in_seconds().into();
        let mut wanted = Vec::new();
        let mut skipped = Vec::new();
        let mut skip = |link_id, reason, message: String| {
            skipped.push(Skipped {
                link_id,
                reason,
                message,
            })
        };
        for row in rows {
            if quarantined.contains(&row.id) {
                skip(
                    row.id,
                    SkipReason::Quarantined,
                    "named as leaked by the revocation: not reissued".into(),
                );
                continue;
            }
            if let Some(upload) = row.labels.get(super::UPLOAD_LABEL) {
                skip(
                    row.id,
                    SkipReason::UploadPart,
                    format!(
                        "a part URL of multipart upload {upload}: not reissued; abort the upload \
                         and start a new one"
                    ),
                );
                continue;
            }
            if row.method == Method::Post.as_str() {
                skip(
                    row.id,
                    SkipReason::UploadForm,
                    "an upload form is not a URL: ask IssueUploadForm for a new one".into(),
                );
                continue;
            }
            if !row.headers_recorded {
                skip(
                    row.id,
                    SkipReason::HeadersUnknown,
                    "issued before presignd recorded a link's bound headers: issue it anew".into(),
                );
                continue;
            }
            let left = (row.expires_at - now).num_seconds();
            let spec = match spec_of(&row, left) {
                Ok(spec) => spec,
                Err(e) => {
                    skip(row.id, SkipReason::Expiring, e.reason);
                    continue;
                }
            };
            let grant = CallerName::parse(&row.caller)
                .map_err(|e| crate::policy::Denied::new("entry", e.reason))
                .and_then(|owner| policy.authorize_issue(&owner, &spec));
            match grant {
                Ok(grant) => {
                    let signer = grant.signer.as_str().to_owned();
                    // As IssueLink: no link the store would refuse.
                    if let Some(key) = self.keys.active_key(&signer)
                        && let Err(refused) =
                            self.keys.bucket_ready(&signer, &key.key_id, &row.bucket)
                    {
                        skip(row.id, SkipReason::BucketNotReady, refused.to_string());
                        continue;
                    }
                    wanted.push(Wanted {
                        signer,
                        original: row,
                        spec,
                    });
                }
                Err(denied) => {
                    let target = format!("link={} caller={}", row.id, row.caller);
                    self.audit_refusal(caller, RPC_REISSUE, target, &denied);
                    skip(row.id, SkipReason::PolicyDenied, denied.to_string());
                }
            }
        }
        (wanted, skipped)
    }

    /// The replacements of `wanted`, by original id: those recorded before
    /// (an earlier call) and those recorded now, committed before any URL is
    /// signed; and the originals whose last second passed since `judge` (no
    /// replacement: it would expire as it is issued). A key rotated between
    /// the keyring's read and the insert refuses the rows; the signer is
    /// reloaded and they are tried once more.
    async fn record_replacements(
        &self,
        wanted: &[Wanted],
    ) -> Result<(HashMap<Uuid, LinkRow>, Vec<Uuid>), IssueError> {
        let originals: Vec<(Uuid, DateTime<Utc>)> = wanted
            .iter()
            .map(|w| (w.original.id, w.original.expires_at))
            .collect();
        let mut found = HashMap::new();
        let mut ran_out = Vec::new();
        for attempt in 0..2 {
            let missing: Vec<&Wanted> = wanted
                .iter()
                .filter(|w| !found.contains_key(&w.original.id))
                .filter(|w| !ran_out.contains(&w.original.id))
                .collect();
            if missing.is_empty() {
                break;
            }
            if attempt > 0 {
                for w in &missing {
                    self.keys.reload_signer(&w.signer).await?;
                }
            }
            let mut rows = Vec::with_capacity(missing.len());
            for w in &missing {
                match self.new_replacement(w)? {
                    Some(row) => rows.push(row),
                    None => ran_out.push(w.original.id),
                }
            }
            if rows.is_empty() {
                continue;
            }
            let mut keys: Vec<&str> = rows.iter().map(|r| r.key_id.as_str()).collect();
            keys.sort_unstable();
            keys.dedup();
            // As a group commit: under the keys' issuance locks, the
            // replacements whose key is active (an original replaced already
            // keeps its replacement), in one statement and transaction.
            let rows: Vec<&NewLink> = rows.iter().collect();
            registry::links::record(&self.pool, &keys, &rows).await?;
            found = reissue::replacements_of(&self.pool, &originals)
                .await?
                .into_iter()
                .filter_map(|r| r.replaces_link_id.map(|orig| (orig, r)))
                .collect();
        }
        let unrecorded = wanted
            .iter()
            .filter(|w| !ran_out.contains(&w.original.id))
            .find(|w| !found.contains_key(&w.original.id));
        match unrecorded {
            Some(w) => Err(IssueError::NoActiveKey(w.signer.clone())),
            None => Ok((found, ran_out)),
        }
    }

    /// A replacement row for `w`, signed now by its signer's active key (the
    /// signature only gives the row its hash; the URL is signed again from
    /// the committed row). None if its original has no second left now (the
    /// clock passed a second since `judge`, or the signer's reload took
    /// seconds): a row expiring as it is issued would break `links_check`
    /// and fail the whole page.
    fn new_replacement(&self, w: &Wanted) -> Result<Option<NewLink>, IssueError> {
        let key = self
            .keys
            .active_key(&w.signer)
            .ok_or_else(|| IssueError::NoActiveKey(w.signer.clone()))?;
        let issued = now_in_seconds();
        let issued_at: DateTime<Utc> = issued.into();
        let Ok(ttl) = ttl_left((w.original.expires_at - issued_at).num_seconds()) else {
            return Ok(None);
        };
        let spec = LinkSpec {
            ttl,
            ..w.spec.clone()
        };
        let region = self
            .keys
            .bucket_ready(&w.signer, &key.key_id, spec.bucket.as_str())?;
        let presigned = key.presign_in(&spec, &region, issued)?;
        let o = &w.original;
        Ok(Some(NewLink {
            id: Uuid::now_v7(),
            key_id: key.key_id.clone(),
            signer: w.signer.clone(),
            caller: o.caller.clone(),
            method: spec.method.as_str(),
            bucket: o.bucket.clone(),
            object_key: o.object_key.clone(),
            object_key_is_prefix: false,
            labels: o.labels.0.clone(),
            issued_at,
            expires_at: o.expires_at,
            signature_sha256: Sha256::digest(presigned.signature().as_bytes()).to_vec(),
            content_type: o.content_type.clone(),
            content_disposition: o.content_disposition.clone(),
            replaces_link_id: Some(o.id),
            request: None,
        }))
    }

    /// The URL of a recorded replacement, signed from its row: its key, its
    /// issued_at, the lifetime it had then. Or why it cannot be handed out.
    async fn sign_recorded(&self, link: &LinkRow) -> Result<Signed, IssueError> {
        let key = self
            .keys
            .live_key(&link.key_id)
            .await
            .map_err(|e| match e {
                crate::keys::KeyError::Registry(e) => IssueError::Registry(e),
                other => IssueError::Key(other.to_string()),
            })?;
        let Some(key) = key else {
            return Ok(Err((
                SkipReason::ReplacementRevoked,
                format!(
                    "its replacement {} died with key {}: reissue for the revocation that killed it",
                    link.id, link.key_id
                ),
            )));
        };
        let secs = (link.expires_at - link.issued_at).num_seconds();
        let spec = match spec_of(link, secs) {
            Ok(spec) => spec,
            Err(e) => return Ok(Err((SkipReason::Expiring, e.reason))),
        };
        let region = self.keys.regions().region_of(&link.bucket);
        let presigned = key.presign_in(&spec, &region, link.issued_at.into())?;
        Ok(Ok((presigned.url, presigned.headers)))
    }
}

fn ttl_left(secs: i64) -> Result<Ttl, FieldError> {
    Ttl::parse(secs, 0).map_err(|_| {
        FieldError::new(
            "ttl",
            format!("{secs} s of its lifetime left: too little to reissue"),
        )
    })
}

/// What `row` binds, with `secs` of lifetime.
fn spec_of(row: &LinkRow, secs: i64) -> Result<LinkSpec, FieldError> {
    Ok(LinkSpec {
        method: Method::parse(&row.method)?,
        bucket: Bucket::parse(&row.bucket)?,
        object_key: ObjectKey::parse(&row.object_key)?,
        ttl: ttl_left(secs)?,
        content_type: row
            .content_type
            .as_deref()
            .map(ContentType::parse)
            .transpose()?,
        content_disposition: row
            .content_disposition
            .as_deref()
            .map(ContentDisposition::parse)
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replacement is built only with a second of its original's life left
    /// (`new_replacement`): none at 0 or past, where a row would expire as it
    /// is issued and break `links_check`, failing the whole page.
    #[test]
    fn a_replacement_needs_a_second_of_its_original_left() {
        assert!(ttl_left(0).is_err());
        assert!(ttl_left(-1).is_err());
        assert_eq!(ttl_left(1).unwrap().as_secs(), 1);
    }
}

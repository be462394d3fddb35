//! Multipart uploads. Start: the policy judges a PUT of the object, presignd
//! creates the upload at the store with the signer's active key, signs one
//! UploadPart URL per part, and records the upload and one link per part URL
//! in one transaction under the key's issuance lock (as the recorder does), so
//! every blast radius counts them; only then do the URLs leave (invariant 1).
//! Complete and Abort run here, server-side, with the key that started the
//! upload while it lives, else the signer's active key (a deactivated key
//! signs nothing the store accepts; the upload belongs to the bucket, not to
//! the key). The maintenance loop aborts the uploads still open past their
//! expiry (`abort_expired`).

use super::{IssueError, Issuer, now_in_seconds};
use crate::auth::Caller;
use crate::domain::{CallerName, FieldError, Labels, LinkSpec, PartPlan};
use crate::keys::{KeyError, KeyManager};
use crate::metrics;
use crate::policy::Denied;
use crate::registry::links::NewLink;
use crate::registry::uploads::{self, NewUpload, UploadRow};
use crate::registry::{self};
use crate::signing::{CompletedPart, Multipart, SigningKey, Store, StoreError};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

/// The labels presignd puts on each part link (callers may not: `Labels`).
pub const UPLOAD_LABEL: &str = "presignd.upload";
pub const PART_LABEL: &str = "presignd.part";
/// A caller's labels on a StartMultipartUpload: Labels' 16 less presignd's two.
const MAX_LABELS_WITH_PARTS: usize = 14;
/// Expired uploads the maintenance reads a page at a time.
const ABORT_BATCH: i64 = 100;
/// Expired uploads the maintenance tries to abort in one tick, at most.
const ABORT_ATTEMPTS: usize = 1_000;

/// Complete and Abort calls that may hold an upload's row (and so a registry
/// connection, IssueLink's pool's) through the store's call at once: a burst
/// of them on a slow store waits here, and leaves the rest of the pool to
/// IssueLink.
static ROW_HOLDERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

const RPC_START: &str = "presignd.v1.LinkService/StartMultipartUpload";

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Issue(#[from] IssueError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("upload {0} not found")]
    NotFound(Uuid),
    #[error("upload {id} is {state}: only an open upload can be completed or aborted")]
    NotOpen { id: Uuid, state: String },
    #[error("upload {0} no longer exists at the store (aborted, or expired there); marked aborted")]
    Gone(Uuid),
    #[error("signer {0} has no live key to send the call with right now; retry shortly")]
    NoLiveKey(String),
}

impl From<registry::Error> for UploadError {
    fn from(e: registry::Error) -> Self {
        Self::Issue(IssueError::Registry(e))
    }
}

impl From<FieldError> for UploadError {
    fn from(e: FieldError) -> Self {
        Self::Issue(IssueError::InvalidArgument(e))
    }
}

/// A validated StartMultipartUpload: `spec` is the PUT the policy judges
/// (its content type goes to the store's Create, not into the part URLs).
pub struct StartUpload {
    pub spec: LinkSpec,
    pub plan: PartPlan,
    pub labels: Labels,
}

pub struct PartUrl {
    pub number: u32,
    /// A bearer credential: returned, never stored nor logged.
    pub url: String,
    pub link_id: Uuid,
    /// With a total size: (offset, length).
    pub range: Option<(u64, u64)>,
}

pub struct Started {
    pub id: Uuid,
    pub store_upload_id: String,
    pub key_id: String,
    pub expires_at: DateTime<Utc>,
    pub part_size: Option<u64>,
    pub parts: Vec<PartUrl>,
}

/// The policy's `max_upload_bytes`, if the caller's entry has one: the
/// upload's total_size must be within it, and given (with part_count alone
/// the object's size is unknown). The part URLs bind no size: this bounds
/// what the caller declares (see "Multipart uploads" in ARCHITECTURE.md).
fn within_max_upload(caller: &CallerName, plan: &PartPlan, max: Option<u64>) -> Result<(), Denied> {
    let Some(max) = max else {
        return Ok(());
    };
    match plan.total() {
        Some(total) if total <= max => Ok(()),
        Some(total) => Err(Denied::new(
            "max_upload_bytes",
            format!("caller {caller} may not upload {total} bytes (max_upload_bytes: {max})"),
        )),
        None => Err(Denied::new(
            "max_upload_bytes",
            format!(
                "caller {caller} has max_upload_bytes ({max}): give total_size, not part_count"
            ),
        )),
    }
}

/// Whose upload this is, and whether it may still be finished.
fn check_open(caller: &Caller, row: Option<UploadRow>, id: Uuid) -> Result<UploadRow, UploadError> {
    match row {
        // Another caller's upload is as unknown as a missing one.
        Some(row) if caller.may_see_caller(&row.caller) => match row.state.as_str() {
            "open" => Ok(row),
            state => Err(UploadError::NotOpen {
                id,
                state: state.to_owned(),
            }),
        },
        _ => Err(UploadError::NotFound(id)),
    }
}

/// The key a Complete or Abort is sent with: the one that started the upload
/// while it lives (active or retired), else the signer's active key.
async fn key_for(keys: &KeyManager, row: &UploadRow) -> Result<Arc<SigningKey>, UploadError> {
    let live = keys.live_key(&row.key_id).await.map_err(|e| match e {
        KeyError::Registry(e) => UploadError::from(e),
        other => UploadError::Issue(IssueError::Key(other.to_string())),
    })?;
    live.or_else(|| keys.active_key(&row.signer))
        .ok_or_else(|| UploadError::NoLiveKey(row.signer.clone()))
}

fn store<'a>(
    keys: &'a KeyManager,
    key: &'a SigningKey,
    row: &'a UploadRow,
    region: &'a str,
) -> Store<'a> {
    Store {
        http: keys.http(),
        key,
        bucket: &row.bucket,
        object_key: &row.object_key,
        region,
    }
}

/// Aborts one open upload at the store and marks it aborted by `by`, in
/// `tx`, which holds its row (`uploads::lock`) and is committed here.
/// NoSuchUpload or NoSuchBucket: the store has none (its bucket gone with
/// it); marked aborted all the same.
async fn abort_row(
    mut tx: registry::Tx,
    keys: &KeyManager,
    row: &UploadRow,
    by: &str,
) -> Result<String, UploadError> {
    let key = key_for(keys, row).await?;
    let region = keys.regions().region_of(&row.bucket);
    match store(keys, &key, row, &region).abort(&row.upload_id).await {
        Ok(()) => {}
        Err(e) if matches!(e.code(), Some("NoSuchUpload" | "NoSuchBucket")) => {}
        Err(e) => return Err(e.into()),
    }
    uploads::finish(&mut *tx, row.id, "aborted", by).await?;
    registry::commit(tx).await?;
    Ok(key.key_id.clone())
}

/// The maintenance loop's step: aborts the uploads still open at `now` past
/// their expiry, oldest first, a page of `ABORT_BATCH` at a time, each with
/// `abort_row`'s key rule. One that fails stays open, is tried again next
/// tick, and holds back none after it (the pages go on past it, up to
/// `ABORT_ATTEMPTS` a tick). A store that cannot be reached ends the tick's
/// pass: the rest would wait on it too. Returns how many were aborted.
pub async fn abort_expired(
    pool: &PgPool,
    keys: &KeyManager,
    now: DateTime<Utc>,
) -> Result<usize, registry::Error> {
    let (mut aborted, mut tried, mut after) = (0, 0, None);
    loop {
        let page = uploads::expired_open(pool, now, after, ABORT_BATCH).await?;
        for row in &page {
            tried += 1;
            // Still open, and no owner's Complete or Abort under way on it.
            let mut tx = registry::begin(pool).await?;
            let row = match uploads::lock(&mut tx, row.id, true).await? {
                Some(locked) if locked.state == "open" => locked,
                _ => continue,
            };
            match abort_row(tx, keys, &row, "maintenance").await {
                Ok(key_id) => {
                    aborted += 1;
                    tracing::info!(upload = %row.id, bucket = %row.bucket, key_id, "aborted an expired multipart upload");
                }
                Err(e @ UploadError::Store(StoreError::Unavailable { .. })) => {
                    tracing::warn!(upload = %row.id, error = %e, "the store cannot be reached: expired multipart uploads are aborted next tick");
                    return Ok(aborted);
                }
                Err(e) => {
                    tracing::warn!(upload = %row.id, error = %e, "aborting an expired multipart upload; retried next tick")
                }
            }
        }
        match page.last() {
            Some(last) if page.len() as i64 == ABORT_BATCH && tried < ABORT_ATTEMPTS => {
                after = Some((last.expires_at, last.id));
            }
            _ => return Ok(aborted),
        }
    }
}

impl Issuer {
    /// StartMultipartUpload (see the module's doc).
    pub async fn start_upload(
        &self,
        caller: &Caller,
        req: StartUpload,
    ) -> Result<Started, UploadError> {
        let spec = &req.spec;
        if req.labels.as_map().len() > MAX_LABELS_WITH_PARTS {
            return Err(FieldError::new(
                "labels",
                format!("at most {MAX_LABELS_WITH_PARTS}: each part link also gets {UPLOAD_LABEL} and {PART_LABEL}"),
            )
            .into());
        }
        let policy = self.policy.current();
        let judged = policy
            .authorize_issue(&caller.name, spec)
            .and_then(|grant| {
                let max = policy.rules(&caller.name).and_then(|r| r.max_upload_bytes);
                within_max_upload(&caller.name, &req.plan, max).map(|()| grant)
            });
        let grant = match judged {
            Ok(grant) => grant,
            Err(denied) => {
                let target = format!("multipart {}/{}", spec.bucket, spec.object_key.as_str());
                self.audit_refusal(caller, RPC_START, target, &denied);
                return Err(IssueError::from(denied).into());
            }
        };
        let signer = grant.signer.as_str();
        // The store's upload, once created: a rotation between the creation
        // and the insert only changes the key that signs the part URLs.
        let mut created: Option<(String, Arc<SigningKey>, Arc<str>)> = None;
        for _ in 0..2 {
            let key = self
                .keys
                .active_key(signer)
                .ok_or_else(|| IssueError::NoActiveKey(signer.to_owned()))?;
            let region = self
                .keys
                .bucket_ready(signer, &key.key_id, spec.bucket.as_str())
                .map_err(IssueError::from);
            let region = match region {
                Ok(r) => r,
                Err(e) => {
                    self.abort_created(created.as_ref(), spec).await;
                    return Err(e.into());
                }
            };
            let store_upload_id = match &created {
                Some((id, ..)) => id.clone(),
                None => {
                    let store = Store {
                        http: self.keys.http(),
                        key: &key,
                        bucket: spec.bucket.as_str(),
                        object_key: spec.object_key.as_str(),
                        region: &region,
                    };
                    let content_type = spec.content_type.as_ref().map(|t| t.as_str());
                    let id = store.create(content_type).await?;
                    created = Some((id.clone(), key.clone(), region.clone()));
                    id
                }
            };
            let (upload, links, parts) =
                self.sign_parts(caller, signer, &key, &region, &req, &store_upload_id)?;
            match uploads::record(&self.pool, &upload, &links).await {
                Ok(true) => {
                    for _ in &links {
                        metrics::record_issued("PUT", signer);
                        self.budgets.issued(signer);
                    }
                    tracing::info!(
                        upload = %upload.id, caller = %caller.name, signer, key_id = %key.key_id,
                        bucket = %spec.bucket, parts = parts.len(), ttl_s = spec.ttl.as_secs(),
                        "started a multipart upload"
                    );
                    return Ok(Started {
                        id: upload.id,
                        store_upload_id,
                        key_id: key.key_id.clone(),
                        expires_at: upload.expires_at,
                        part_size: req.plan.part_size(),
                        parts,
                    });
                }
                Ok(false) => {
                    tracing::info!(signer, key_id = %key.key_id, "key rotated while starting an upload; signing again with the current key");
                    self.keys.reload_signer(signer).await?;
                }
                Err(e) => {
                    self.abort_created(created.as_ref(), spec).await;
                    return Err(e.into());
                }
            }
        }
        self.abort_created(created.as_ref(), spec).await;
        Err(IssueError::NoActiveKey(signer.to_owned()).into())
    }

    /// The upload row, its part links and their URLs, signed as of now.
    #[allow(clippy::type_complexity)]
    fn sign_parts(
        &self,
        caller: &Caller,
        signer: &str,
        key: &SigningKey,
        region: &str,
        req: &StartUpload,
        store_upload_id: &str,
    ) -> Result<(NewUpload, Vec<NewLink>, Vec<PartUrl>), UploadError> {
        let spec = &req.spec;
        let issued = now_in_seconds();
        let issued_at: DateTime<Utc> = issued.into();
        let expires_at = issued_at + spec.ttl.as_duration();
        let id = Uuid::now_v7();
        let count = req.plan.count();
        let mut links = Vec::with_capacity(count as usize);
        let mut parts = Vec::with_capacity(count as usize);
        for number in 1..=count {
            let op = Multipart::Part {
                number,
                upload_id: store_upload_id,
            };
            let presigned = key
                .presign_multipart(
                    op,
                    spec.bucket.as_str(),
                    spec.object_key.as_str(),
                    region,
                    issued,
                    spec.ttl.as_secs(),
                )
                .map_err(IssueError::from)?;
            let mut labels = req.labels.as_map().clone();
            labels.insert(UPLOAD_LABEL.into(), id.to_string());
            labels.insert(PART_LABEL.into(), number.to_string());
            let link_id = Uuid::now_v7();
            links.push(NewLink {
                id: link_id,
                key_id: key.key_id.clone(),
                signer: signer.to_owned(),
                caller: caller.name.to_string(),
                method: "PUT",
                bucket: spec.bucket.to_string(),
                object_key: spec.object_key.as_str().to_owned(),
                object_key_is_prefix: false,
                labels,
                issued_at,
                expires_at,
                signature_sha256: Sha256::digest(presigned.signature().as_bytes()).to_vec(),
                content_type: None,
                content_disposition: None,
                replaces_link_id: None,
                request: None,
            });
            parts.push(PartUrl {
                number,
                url: presigned.url,
                link_id,
                range: req.plan.range(number),
            });
        }
        let as_i64 = |v: u64| i64::try_from(v).expect("at most 5 TiB");
        let upload = NewUpload {
            id,
            upload_id: store_upload_id.to_owned(),
            bucket: spec.bucket.to_string(),
            object_key: spec.object_key.as_str().to_owned(),
            signer: signer.to_owned(),
            key_id: key.key_id.clone(),
            caller: caller.name.to_string(),
            part_count: i32::try_from(count).expect("at most 10,000 parts"),
            part_size: req.plan.part_size().map(as_i64),
            total_size: req.plan.total().map(as_i64),
            created_at: issued_at,
            expires_at,
        };
        Ok((upload, links, parts))
    }

    /// Best effort: an upload the store created but presignd did not record
    /// would be nobody's; abort it (a failure is logged, the store's own
    /// lifecycle rules are the last resort).
    async fn abort_created(
        &self,
        created: Option<&(String, Arc<SigningKey>, Arc<str>)>,
        spec: &LinkSpec,
    ) {
        let Some((upload_id, key, region)) = created else {
            return;
        };
        let store = Store {
            http: self.keys.http(),
            key,
            bucket: spec.bucket.as_str(),
            object_key: spec.object_key.as_str(),
            region,
        };
        if let Err(e) = store.abort(upload_id).await {
            tracing::warn!(error = %e, bucket = %spec.bucket, "an unrecorded multipart upload could not be aborted");
        }
    }

    /// CompleteMultipartUpload: the object's ETag and the key it was sent with.
    pub async fn complete_upload(
        &self,
        caller: &Caller,
        id: Uuid,
        parts: Vec<CompletedPart>,
    ) -> Result<(String, String), UploadError> {
        // Held through the store's call: an Abort racing this one waits, then
        // finds the upload completed (and says so), and not the other way
        // round (the store completes, the Abort gets NoSuchUpload, marks it
        // aborted and answers OK for an object that exists).
        let _holder = ROW_HOLDERS.acquire().await.expect("never closed");
        let mut tx = registry::begin(&self.pool).await?;
        let row = check_open(caller, uploads::lock(&mut tx, id, false).await?, id)?;
        let mut previous = 0;
        for p in &parts {
            if p.number <= previous || p.number > row.part_count as u32 {
                return Err(FieldError::new(
                    "parts",
                    format!(
                        "part_number {}: numbers must ascend, each once, within 1..={}",
                        p.number, row.part_count
                    ),
                )
                .into());
            }
            if p.etag.trim().is_empty() {
                return Err(
                    FieldError::new("parts", format!("part {}: etag is empty", p.number)).into(),
                );
            }
            previous = p.number;
        }
        if parts.is_empty() {
            return Err(FieldError::new(
                "parts",
                "is required: the uploaded parts and their ETags",
            )
            .into());
        }
        let key = key_for(&self.keys, &row).await?;
        let region = self.keys.regions().region_of(&row.bucket);
        let etag = match store(&self.keys, &key, &row, &region)
            .complete(&row.upload_id, &parts)
            .await
        {
            Ok(etag) => etag,
            Err(e) if e.code() == Some("NoSuchUpload") => {
                uploads::finish(&mut *tx, id, "aborted", "store").await?;
                registry::commit(tx).await?;
                return Err(UploadError::Gone(id));
            }
            Err(e) => return Err(e.into()),
        };
        uploads::finish(&mut *tx, id, "completed", caller.name.as_str()).await?;
        registry::commit(tx).await?;
        Ok((etag, key.key_id.clone()))
    }

    /// AbortMultipartUpload: the key it was sent with.
    pub async fn abort_upload(&self, caller: &Caller, id: Uuid) -> Result<String, UploadError> {
        // As Complete: held through the store's call.
        let _holder = ROW_HOLDERS.acquire().await.expect("never closed");
        let mut tx = registry::begin(&self.pool).await?;
        let row = check_open(caller, uploads::lock(&mut tx, id, false).await?, id)?;
        abort_row(tx, &self.keys, &row, caller.name.as_str()).await
    }
}

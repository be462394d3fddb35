//! Conversions between registry rows / domain values and proto messages.

use crate::domain::{
    Bucket, ContentDisposition, ContentType, FieldError, Labels, Method, ObjectKey, Ttl,
};
use crate::proto;
use crate::registry::links::LinkRow;
use crate::signing::LinkSpec;
use chrono::{DateTime, Utc};

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn link_state(state: &str) -> proto::LinkState {
    match state {
        "active" => proto::LinkState::Active,
        "expired" => proto::LinkState::Expired,
        "revoked" => proto::LinkState::Revoked,
        _ => proto::LinkState::Unspecified,
    }
}

pub fn link(row: LinkRow) -> proto::Link {
    let method = Method::parse(&row.method)
        .map(|m| m.to_proto())
        .unwrap_or(proto::Method::Unspecified);
    proto::Link {
        id: row.id.to_string(),
        method: method as i32,
        bucket: row.bucket,
        object_key: row.object_key,
        caller: row.caller,
        signer: row.signer,
        key_id: row.key_id,
        issued_at: Some(timestamp(row.issued_at)),
        expires_at: Some(timestamp(row.expires_at)),
        labels: row.labels.0.into_iter().collect(),
        state: link_state(&row.state) as i32,
        revocation_id: row.revocation_id.map(|r| r.to_string()).unwrap_or_default(),
    }
}

/// Validates an IssueLinkRequest field by field; the first bad field is named.
pub fn link_request(req: &proto::IssueLinkRequest) -> Result<(LinkSpec, Labels), FieldError> {
    let bucket = Bucket::parse(&req.bucket)?;
    let object_key = ObjectKey::parse(&req.object_key)?;
    let method = Method::from_proto(req.method)?;
    let ttl = match &req.ttl {
        Some(d) => Ttl::parse(d.seconds, d.nanos)?,
        None => return Err(FieldError::new("ttl", "is required (1s to 7 days)")),
    };
    let labels = Labels::parse(&req.labels)?;
    let content_type = match (req.content_type.as_str(), method) {
        ("", _) => None,
        (ct, Method::Put) => Some(ContentType::parse(ct)?),
        _ => {
            return Err(FieldError::new(
                "content_type",
                "may be set only for PUT links",
            ));
        }
    };
    let content_disposition = match (req.response_content_disposition.as_str(), method) {
        ("", _) => None,
        (d, Method::Get) => Some(ContentDisposition::parse(d)?),
        _ => {
            return Err(FieldError::new(
                "response_content_disposition",
                "may be set only for GET links",
            ));
        }
    };
    Ok((
        LinkSpec {
            method,
            bucket,
            object_key,
            ttl,
            content_type,
            content_disposition,
        },
        labels,
    ))
}

pub fn uuid(field: &'static str, s: &str) -> Result<uuid::Uuid, FieldError> {
    if s.is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    uuid::Uuid::parse_str(s).map_err(|_| FieldError::new(field, format!("{s:?} is not a UUID")))
}

pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;

pub fn page_size(n: u32) -> Result<i64, FieldError> {
    match n {
        0 => Ok(DEFAULT_PAGE_SIZE as i64),
        n if n > MAX_PAGE_SIZE => Err(FieldError::new(
            "page_size",
            format!("{n} is over the maximum of {MAX_PAGE_SIZE}"),
        )),
        n => Ok(n as i64),
    }
}

fn counts(v: &[(String, i64)]) -> Vec<proto::Count> {
    v.iter()
        .map(|(name, count)| proto::Count {
            name: name.clone(),
            count: *count as u64,
        })
        .collect()
}

pub fn blast_radius(b: &crate::registry::blast_radius::BlastRadius) -> proto::BlastRadius {
    proto::BlastRadius {
        key_id: b.key_id.clone(),
        signer: b.signer.clone(),
        outstanding_links: b.outstanding_links as u64,
        earliest_expiry: b.earliest_expiry.map(timestamp),
        latest_expiry: b.latest_expiry.map(timestamp),
        top_buckets: counts(&b.top_buckets),
        top_callers: counts(&b.top_callers),
        per_method: counts(&b.per_method),
        sample_link_ids: b.sample_link_ids.iter().map(|id| id.to_string()).collect(),
        computed_at: Some(timestamp(b.computed_at)),
    }
}

fn revocation_state(s: &str) -> proto::RevocationState {
    match s {
        "running" => proto::RevocationState::Running,
        "succeeded" => proto::RevocationState::Succeeded,
        "failed" => proto::RevocationState::Failed,
        _ => proto::RevocationState::Unspecified,
    }
}

pub fn revocation(r: crate::registry::revocations::RevocationRow) -> proto::Revocation {
    let mode = crate::revocation::Mode::parse(&r.mode)
        .map(|m| m.to_proto())
        .unwrap_or(proto::RotationMode::Unspecified);
    proto::Revocation {
        id: r.id.to_string(),
        requested_by: r.requested_by,
        reason: r.reason,
        mode: mode as i32,
        signer: r.signer,
        old_key_id: r.old_key_id.unwrap_or_default(),
        new_key_id: r.new_key_id.unwrap_or_default(),
        blast_radius: Some(blast_radius(&r.blast_radius.0)),
        links_revoked: r.links_revoked as u64,
        steps: r
            .steps
            .0
            .into_iter()
            .map(|s| proto::Step {
                name: s.name,
                started_at: Some(timestamp(s.started_at)),
                finished_at: Some(timestamp(s.finished_at)),
                error: s.error.unwrap_or_default(),
            })
            .collect(),
        state: revocation_state(&r.state) as i32,
        created_at: Some(timestamp(r.created_at)),
        finished_at: r.finished_at.map(timestamp),
        dry_run: false,
        error: r.error.unwrap_or_default(),
    }
}

pub fn rotation(r: crate::revocation::Rotation) -> proto::Revocation {
    match r {
        crate::revocation::Rotation::Ran(row) => revocation(*row),
        crate::revocation::Rotation::DryRun {
            signer,
            mode,
            old_key_id,
            blast_radius: radius,
            steps,
        } => proto::Revocation {
            signer,
            mode: mode.to_proto() as i32,
            old_key_id: old_key_id.unwrap_or_default(),
            blast_radius: Some(blast_radius(&radius)),
            steps: steps
                .iter()
                .map(|s| proto::Step {
                    name: s.as_str().into(),
                    ..Default::default()
                })
                .collect(),
            state: proto::RevocationState::Planned as i32,
            dry_run: true,
            ..Default::default()
        },
    }
}

pub fn revocation_token(created_at: DateTime<Utc>, id: uuid::Uuid) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{}|{id}", created_at.timestamp_micros()))
}

pub fn revocation_cursor(token: &str) -> Result<Option<(DateTime<Utc>, uuid::Uuid)>, FieldError> {
    use base64::Engine;
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || FieldError::new("page_token", "is not a token this service issued");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (micros, id) = raw.split_once('|').ok_or_else(bad)?;
    let at = DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
    Ok(Some((at, uuid::Uuid::parse_str(id).map_err(|_| bad())?)))
}

fn key_state(s: &str) -> proto::KeyState {
    match s {
        "active" => proto::KeyState::Active,
        "retired" => proto::KeyState::Retired,
        "inactive" => proto::KeyState::Inactive,
        "deleted" => proto::KeyState::Deleted,
        _ => proto::KeyState::Unspecified,
    }
}

pub fn signers(
    signers: Vec<crate::registry::signers::SignerRow>,
    keys: Vec<crate::registry::keys::KeySummaryRow>,
) -> proto::ListSigningKeysResponse {
    proto::ListSigningKeysResponse {
        signers: signers
            .into_iter()
            .map(|s| proto::Signer {
                keys: keys
                    .iter()
                    .filter(|k| k.signer == s.name)
                    .map(|k| proto::SigningKey {
                        key_id: k.key_id.clone(),
                        signer: k.signer.clone(),
                        state: key_state(&k.state) as i32,
                        created_at: Some(timestamp(k.created_at)),
                        outstanding_links: k.outstanding_links as u64,
                        latest_expiry: k.latest_expiry.map(timestamp),
                    })
                    .collect(),
                name: s.name,
                backend: s.backend,
            })
            .collect(),
    }
}

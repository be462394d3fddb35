//! Conversions between registry rows / domain values and proto messages.

use crate::domain::{
    Bucket, CallerName, ContentDisposition, ContentType, FieldError, Labels, LinkState, Method,
    ObjectKey, SignerName, Ttl,
};
use crate::proto;
use crate::registry::link_queries::LinkFilter;
use crate::registry::link_summary::{GroupBy, SummaryRow};
use crate::registry::links::{BlastRadius, LinkRow};
use crate::signing::LinkSpec;
use chrono::{DateTime, Utc};
use uuid::Uuid;

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

pub fn blast_radius(row: &BlastRadius) -> proto::BlastRadius {
    let row = row.clone();
    let counts = |v: Vec<(String, i64)>| {
        v.into_iter()
            .map(|(name, n)| proto::Count {
                name,
                count: n.max(0) as u64,
            })
            .collect()
    };
    proto::BlastRadius {
        key_id: row.key_id,
        signer: row.signer,
        outstanding_links: row.outstanding_links.max(0) as u64,
        earliest_expiry: row.earliest_expiry.map(timestamp),
        latest_expiry: row.latest_expiry.map(timestamp),
        top_buckets: counts(row.top_buckets),
        top_callers: counts(row.top_callers),
        per_method: counts(row.per_method),
        sample_link_ids: row.sample_link_ids.iter().map(Uuid::to_string).collect(),
        computed_at: Some(timestamp(row.computed_at)),
    }
}

pub fn summary_group(row: SummaryRow) -> proto::LinkSummaryGroup {
    proto::LinkSummaryGroup {
        group: row.group,
        active: row.active.max(0) as u64,
        expired: row.expired.max(0) as u64,
        revoked: row.revoked.max(0) as u64,
        latest_expiry: row.latest_expiry.map(timestamp),
    }
}

pub fn link_id(id: &str) -> Result<Uuid, FieldError> {
    match id {
        "" => Err(FieldError::new("id", "is required")),
        id => {
            Uuid::parse_str(id).map_err(|_| FieldError::new("id", format!("{id:?} is not a UUID")))
        }
    }
}

pub fn group_by(value: i32) -> Result<GroupBy, FieldError> {
    match proto::GroupBy::try_from(value) {
        Ok(proto::GroupBy::Key) => Ok(GroupBy::Key),
        Ok(proto::GroupBy::Signer) => Ok(GroupBy::Signer),
        Ok(proto::GroupBy::Bucket) => Ok(GroupBy::Bucket),
        Ok(proto::GroupBy::Caller) => Ok(GroupBy::Caller),
        Ok(proto::GroupBy::Unspecified) | Err(_) => Err(FieldError::new(
            "group_by",
            "is required: one of KEY, SIGNER, BUCKET, CALLER",
        )),
    }
}

fn time(
    field: &'static str,
    t: &Option<prost_types::Timestamp>,
) -> Result<Option<DateTime<Utc>>, FieldError> {
    t.as_ref()
        .map(|t| {
            u32::try_from(t.nanos)
                .ok()
                .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
                .ok_or_else(|| FieldError::new(field, "is not a valid timestamp"))
        })
        .transpose()
}

/// A field of the filter, validated by `parse` and named `filter.<field>`; empty
/// means "do not filter".
fn filter_field<T>(
    field: &'static str,
    value: &str,
    parse: impl FnOnce(&str) -> Result<T, FieldError>,
) -> Result<Option<T>, FieldError> {
    if value.is_empty() {
        return Ok(None);
    }
    parse(value)
        .map(Some)
        .map_err(|e| FieldError::new(field, e.reason))
}

fn key_id(s: &str) -> Result<String, FieldError> {
    let ok = s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    match ok {
        true => Ok(s.to_owned()),
        false => Err(FieldError::new(
            "key_id",
            "must be at most 128 characters of A-Z, a-z, 0-9, '-' and '_'",
        )),
    }
}

/// Validates a LinkFilter (absent: every link); a bad field is named `filter.<field>`.
pub fn link_filter(f: Option<&proto::LinkFilter>) -> Result<LinkFilter, FieldError> {
    let Some(f) = f else {
        return Ok(LinkFilter::default());
    };
    let filter = LinkFilter {
        state: LinkState::from_proto("filter.state", f.state)?,
        bucket: filter_field("filter.bucket", &f.bucket, |s| {
            Bucket::parse(s).map(|b| b.as_str().to_owned())
        })?,
        object_key_prefix: filter_field("filter.object_key_prefix", &f.object_key_prefix, |s| {
            ObjectKey::parse(s).map(|k| k.as_str().to_owned())
        })?,
        caller: filter_field("filter.caller", &f.caller, |s| {
            CallerName::parse(s).map(|c| c.as_str().to_owned())
        })?,
        key_id: filter_field("filter.key_id", &f.key_id, key_id)?,
        signer: filter_field("filter.signer", &f.signer, |s| {
            SignerName::parse(s).map(|c| c.as_str().to_owned())
        })?,
        expires_after: time("filter.expires_after", &f.expires_after)?,
        expires_before: time("filter.expires_before", &f.expires_before)?,
    };
    if let (Some(after), Some(before)) = (filter.expires_after, filter.expires_before)
        && after >= before
    {
        return Err(FieldError::new(
            "filter.expires_before",
            "must be later than filter.expires_after",
        ));
    }
    Ok(filter)
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

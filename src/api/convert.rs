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

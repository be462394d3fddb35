//! Parsing requests: proto messages into validated domain values. A bad field
//! is a `FieldError` naming it (INVALID_ARGUMENT at the edge).

use crate::domain::{
    Bucket, CallerName, ContentDisposition, ContentType, FieldError, FormSpec, KeyCondition,
    Labels, LinkSpec, LinkState, Method, ObjectKey, RequestId, RotationMode, SignerName, SizeRange,
    Ttl, TypeCondition, parse_type_prefix,
};
use crate::proto;
use crate::registry::link_queries::LinkFilter;
use crate::registry::link_summary::GroupBy;
use chrono::{DateTime, Utc};
use uuid::Uuid;

pub fn method(value: i32) -> Result<Method, FieldError> {
    match proto::Method::try_from(value) {
        Ok(proto::Method::Get) => Ok(Method::Get),
        Ok(proto::Method::Put) => Ok(Method::Put),
        Ok(proto::Method::Head) => Ok(Method::Head),
        Ok(proto::Method::Delete) => Ok(Method::Delete),
        Ok(proto::Method::Post) => Err(FieldError::new(
            "method",
            "POST is a browser upload form, not a URL: use IssueUploadForm",
        )),
        Ok(proto::Method::Unspecified) => Err(FieldError::new(
            "method",
            "is required: one of GET, PUT, HEAD, DELETE",
        )),
        Err(_) => Err(FieldError::new(
            "method",
            format!("unknown value {value}: expected one of GET, PUT, HEAD, DELETE"),
        )),
    }
}

/// `None` for UNSPECIFIED: no filter on the state.
pub fn link_state(field: &'static str, value: i32) -> Result<Option<LinkState>, FieldError> {
    match proto::LinkState::try_from(value) {
        Ok(proto::LinkState::Unspecified) => Ok(None),
        Ok(proto::LinkState::Active) => Ok(Some(LinkState::Active)),
        Ok(proto::LinkState::Expired) => Ok(Some(LinkState::Expired)),
        Ok(proto::LinkState::Revoked) => Ok(Some(LinkState::Revoked)),
        Err(_) => Err(FieldError::new(
            field,
            format!("unknown value {value}: expected ACTIVE, EXPIRED or REVOKED"),
        )),
    }
}

pub fn rotation_mode(value: i32) -> Result<RotationMode, FieldError> {
    match proto::RotationMode::try_from(value) {
        Ok(proto::RotationMode::Graceful) => Ok(RotationMode::Graceful),
        Ok(proto::RotationMode::Revoke) => Ok(RotationMode::Revoke),
        Ok(proto::RotationMode::Emergency) => Ok(RotationMode::Emergency),
        _ => Err(FieldError::new(
            "mode",
            "is required: one of GRACEFUL, REVOKE, EMERGENCY",
        )),
    }
}

pub fn link_id(id: &str) -> Result<Uuid, FieldError> {
    link_id_named(id, "id")
}

/// A link id in the request field `field`.
pub fn link_id_named(id: &str, field: &'static str) -> Result<Uuid, FieldError> {
    match id {
        "" => Err(FieldError::new(field, "is required")),
        id => {
            Uuid::parse_str(id).map_err(|_| FieldError::new(field, format!("{id:?} is not a UUID")))
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

/// google.protobuf.Timestamp's documented range, 0001-01-01T00:00:00Z to
/// 9999-12-31T23:59:59Z: its seconds field can say far more (year 300000, or
/// before 4713 BC) than Postgres stores, and a time Postgres refuses must be
/// the caller's INVALID_ARGUMENT, not our INTERNAL.
const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

fn time(
    field: &'static str,
    t: &Option<prost_types::Timestamp>,
) -> Result<Option<DateTime<Utc>>, FieldError> {
    t.as_ref()
        .map(|t| {
            if !TIMESTAMP_SECONDS.contains(&t.seconds) {
                return Err(FieldError::new(
                    field,
                    "is outside 0001-01-01T00:00:00Z..=9999-12-31T23:59:59Z",
                ));
            }
            u32::try_from(t.nanos)
                .ok()
                .filter(|n| *n < 1_000_000_000)
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
    signing_key_id("key_id", s)
}

/// A signing key's id in `field` (required).
pub fn signing_key_id(field: &'static str, s: &str) -> Result<String, FieldError> {
    match crate::domain::is_access_key_id(s) {
        true => Ok(s.to_owned()),
        false if s.is_empty() => Err(FieldError::new(field, "is required")),
        false => Err(FieldError::new(
            field,
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
        state: link_state("filter.state", f.state)?,
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
pub fn link_request(
    req: &proto::IssueLinkRequest,
) -> Result<(LinkSpec, Labels, Option<RequestId>), FieldError> {
    let bucket = Bucket::parse(&req.bucket)?;
    let object_key = ObjectKey::parse(&req.object_key)?;
    let method = method(req.method)?;
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
        RequestId::parse(&req.request_id)?,
    ))
}

/// Validates an IssueUploadFormRequest field by field; the first bad field
/// is named.
pub fn form_request(req: &proto::IssueUploadFormRequest) -> Result<(FormSpec, Labels), FieldError> {
    let bucket = Bucket::parse(&req.bucket)?;
    let key = match (req.object_key.as_str(), req.object_key_prefix.as_str()) {
        ("", "") => {
            return Err(FieldError::new(
                "object_key",
                "is required: set object_key (one key) or object_key_prefix (keys starting with it)",
            ));
        }
        (k, "") => KeyCondition::Exact(ObjectKey::parse(k)?),
        ("", p) => KeyCondition::Prefix(ObjectKey::parse_field("object_key_prefix", p)?),
        _ => {
            return Err(FieldError::new(
                "object_key_prefix",
                "set either object_key or object_key_prefix, not both",
            ));
        }
    };
    let size = match &req.content_length_range {
        Some(r) => SizeRange::parse(r.min, r.max)?,
        None => {
            return Err(FieldError::new(
                "content_length_range",
                "is required: the file's size bounds in bytes",
            ));
        }
    };
    let content_type = match (req.content_type.as_str(), req.content_type_prefix.as_str()) {
        ("", "") => None,
        (t, "") => Some(TypeCondition::Exact(ContentType::parse(t)?)),
        ("", p) => Some(TypeCondition::Prefix(parse_type_prefix(
            "content_type_prefix",
            p,
        )?)),
        _ => {
            return Err(FieldError::new(
                "content_type_prefix",
                "set either content_type or content_type_prefix, not both",
            ));
        }
    };
    let ttl = match &req.ttl {
        Some(d) => Ttl::parse(d.seconds, d.nanos)?,
        None => return Err(FieldError::new("ttl", "is required (1s to 7 days)")),
    };
    let labels = Labels::parse(&req.labels)?;
    let spec = FormSpec {
        bucket,
        key,
        size,
        content_type,
        ttl,
    };
    Ok((spec, labels))
}

/// A caller named in `field`; empty: none.
pub fn optional_caller(field: &'static str, s: &str) -> Result<Option<CallerName>, FieldError> {
    filter_field(field, s, CallerName::parse)
}

/// Link ids in `field` (RotateKey's and RevokeKey's quarantine_link_ids);
/// a malformed one is named.
pub fn link_ids(field: &'static str, ids: &[String]) -> Result<Vec<Uuid>, FieldError> {
    ids.iter()
        .map(|id| {
            Uuid::parse_str(id).map_err(|_| FieldError::new(field, format!("{id:?} is not a UUID")))
        })
        .collect()
}

pub fn uuid(field: &'static str, s: &str) -> Result<Uuid, FieldError> {
    if s.is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    uuid::Uuid::parse_str(s).map_err(|_| FieldError::new(field, format!("{s:?} is not a UUID")))
}

/// StartMultipartUpload: the PUT the policy judges, and the parts (S3's
/// limits checked here, before anything is called or recorded).
pub fn start_upload(
    req: &proto::StartMultipartUploadRequest,
) -> Result<crate::issuance::StartUpload, FieldError> {
    use proto::start_multipart_upload_request::Size;
    let bucket = Bucket::parse(&req.bucket)?;
    let object_key = ObjectKey::parse(&req.object_key)?;
    let ttl = match &req.ttl {
        Some(d) => Ttl::parse(d.seconds, d.nanos)?,
        None => return Err(FieldError::new("ttl", "is required (1s to 7 days)")),
    };
    let labels = Labels::parse(&req.labels)?;
    let content_type = match req.content_type.as_str() {
        "" => None,
        ct => Some(ContentType::parse(ct)?),
    };
    let plan = match req.size {
        Some(Size::PartCount(n)) => crate::domain::PartPlan::by_count(n, req.part_size)?,
        Some(Size::TotalSize(total)) => crate::domain::PartPlan::by_size(total, req.part_size)?,
        None => {
            return Err(FieldError::new(
                "size",
                "is required: part_count (1 to 10,000) or total_size (bytes, at most 5 TiB)",
            ));
        }
    };
    Ok(crate::issuance::StartUpload {
        spec: LinkSpec {
            method: Method::Put,
            bucket,
            object_key,
            ttl,
            content_type,
            content_disposition: None,
        },
        plan,
        labels,
    })
}

/// CompleteMultipartUpload's parts (their order is checked against the upload).
pub fn completed_parts(parts: &[proto::CompletedPart]) -> Vec<crate::signing::CompletedPart> {
    parts
        .iter()
        .map(|p| crate::signing::CompletedPart {
            number: p.part_number,
            etag: p.etag.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::response;

    #[test]
    fn every_method_state_and_mode_round_trips_through_proto() {
        for m in [Method::Get, Method::Put, Method::Head, Method::Delete] {
            assert_eq!(method(response::method(m) as i32).unwrap(), m);
        }
        // POST exists in the registry (forms) but is no IssueLink method.
        let e = method(response::method(Method::Post) as i32).unwrap_err();
        assert!(e.reason.contains("IssueUploadForm"), "{e}");
        for s in [LinkState::Active, LinkState::Expired, LinkState::Revoked] {
            assert_eq!(
                link_state("state", response::link_state(s) as i32).unwrap(),
                Some(s)
            );
        }
        for m in RotationMode::ALL {
            assert_eq!(
                rotation_mode(response::rotation_mode(*m) as i32).unwrap(),
                *m
            );
        }
    }

    #[test]
    fn an_unspecified_or_unknown_enum_is_rejected_naming_its_field() {
        assert!(method(0).unwrap_err().reason.contains("required"));
        assert_eq!(method(42).unwrap_err().field, "method");
        assert_eq!(rotation_mode(0).unwrap_err().field, "mode");
        assert_eq!(link_state("filter.state", 0).unwrap(), None);
        assert_eq!(
            link_state("filter.state", 9).unwrap_err().field,
            "filter.state"
        );
    }
}

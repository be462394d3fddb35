//! A validated request for a browser upload form (a presigned POST policy):
//! what the policy judges and the signer signs. The form's conditions are
//! S3's: the key (exact, or `starts-with`), the file's size range, and the
//! Content-Type (exact, or `starts-with`).

use super::{Bucket, ContentType, FieldError, ObjectKey, Ttl};

/// The largest object one POST may upload: S3's limit for a single upload
/// (5 GiB), also Garage's for a form's `file` field.
pub const MAX_FORM_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// Which keys the form may upload to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCondition {
    /// Exactly this key (`{"key": ...}`).
    Exact(ObjectKey),
    /// Any key starting with this (`["starts-with", "$key", ...]`); never empty.
    Prefix(ObjectKey),
}

impl KeyCondition {
    /// The key or the prefix, as recorded in the link's object_key.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Exact(k) | Self::Prefix(k) => k.as_str(),
        }
    }

    pub fn is_prefix(&self) -> bool {
        matches!(self, Self::Prefix(_))
    }
}

/// The Content-Type the upload must declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeCondition {
    /// Exactly this media type.
    Exact(ContentType),
    /// Any value starting with this, e.g. `image/`.
    Prefix(String),
}

/// Bounds of the uploaded file's size in bytes, both inclusive
/// (`content-length-range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeRange {
    pub min: u64,
    pub max: u64,
}

impl SizeRange {
    /// `min..=max`, with `max` at least 1, at least `min`, at most
    /// `MAX_FORM_BYTES`. Errors name `content_length_range.min` / `.max`.
    pub fn parse(min: u64, max: u64) -> Result<Self, FieldError> {
        const MAX: &str = "content_length_range.max";
        if max == 0 {
            return Err(FieldError::new(MAX, "is required: at least 1 byte"));
        }
        if max > MAX_FORM_BYTES {
            return Err(FieldError::new(
                MAX,
                format!("{max} bytes is over S3's limit of one upload ({MAX_FORM_BYTES} bytes)"),
            ));
        }
        if max < min {
            return Err(FieldError::new(
                MAX,
                format!("{max} is less than content_length_range.min ({min})"),
            ));
        }
        Ok(Self { min, max })
    }
}

/// Everything a form binds.
#[derive(Debug, Clone)]
pub struct FormSpec {
    pub bucket: Bucket,
    pub key: KeyCondition,
    pub size: SizeRange,
    pub content_type: Option<TypeCondition>,
    pub ttl: Ttl,
}

/// A Content-Type prefix: printable ASCII, 1 to 256 bytes.
pub fn parse_type_prefix(field: &'static str, s: &str) -> Result<String, FieldError> {
    if s.len() > 256 {
        return Err(FieldError::new(field, "is over 256 bytes"));
    }
    if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(FieldError::new(field, "must be printable ASCII"));
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_size_range_is_inclusive_and_bounded_by_s3s_limit() {
        assert_eq!(
            SizeRange::parse(0, 10).unwrap(),
            SizeRange { min: 0, max: 10 }
        );
        assert!(SizeRange::parse(10, 10).is_ok());
        assert!(SizeRange::parse(0, MAX_FORM_BYTES).is_ok());
        for (min, max) in [(11, 10), (0, 0), (0, MAX_FORM_BYTES + 1)] {
            let e = SizeRange::parse(min, max).unwrap_err();
            assert_eq!(e.field, "content_length_range.max", "{min}..={max}");
        }
    }

    #[test]
    fn a_prefix_condition_is_recorded_as_its_prefix() {
        let k = KeyCondition::Prefix(ObjectKey::parse("in/").unwrap());
        assert_eq!((k.as_str(), k.is_prefix()), ("in/", true));
    }
}

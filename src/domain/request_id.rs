//! A client-chosen id of one IssueLink request, so a retry is recognized
//! (AIP-155 style): a UUID, a ULID, a hash or an "order-123:attempt" key.
//! Bounded and plain, since it is stored and may appear in logs.

use super::FieldError;

pub const MAX_REQUEST_ID_CHARS: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// The empty string is "no request id" (proto3's unset string): `None`.
    pub fn parse(s: &str) -> Result<Option<Self>, FieldError> {
        if s.is_empty() {
            return Ok(None);
        }
        let ok = s.len() <= MAX_REQUEST_ID_CHARS
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if !ok {
            return Err(FieldError::new(
                "request_id",
                format!(
                    "must be at most {MAX_REQUEST_ID_CHARS} characters of A-Z, a-z, 0-9, '-', '_', '.' and ':'"
                ),
            ));
        }
        Ok(Some(Self(s.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uuid_a_ulid_and_a_composite_key_are_request_ids() {
        for id in [
            "0198c0de-0000-7000-8000-000000000001",
            "01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "order-123:attempt.2_b",
        ] {
            assert_eq!(RequestId::parse(id).unwrap().unwrap().as_str(), id);
        }
    }

    #[test]
    fn an_empty_request_id_is_no_request_id() {
        assert_eq!(RequestId::parse("").unwrap(), None);
    }

    #[test]
    fn a_request_id_over_128_characters_or_with_other_characters_is_rejected() {
        assert!(RequestId::parse(&"a".repeat(128)).is_ok());
        for bad in [
            "a".repeat(129),
            "white space".into(),
            "é".into(),
            "a/b".into(),
        ] {
            let e = RequestId::parse(&bad).unwrap_err();
            assert_eq!(e.field, "request_id");
            assert!(e.reason.contains("128"), "{e}");
        }
    }
}

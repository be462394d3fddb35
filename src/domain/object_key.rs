//! S3 object keys: 1 to 1024 bytes of UTF-8, no control characters (they break
//! logs, terminals and some S3 implementations' signature checks).

use super::FieldError;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey(String);

pub const MAX_OBJECT_KEY_BYTES: usize = 1024;

impl ObjectKey {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        Self::parse_field("object_key", s)
    }

    /// The same rules for a field with another name (a prefix in a filter, say).
    pub fn parse_field(field: &'static str, s: &str) -> Result<Self, FieldError> {
        if s.is_empty() {
            return Err(FieldError::new(field, "is required"));
        }
        if s.len() > MAX_OBJECT_KEY_BYTES {
            return Err(FieldError::new(
                field,
                format!(
                    "is {} bytes long; at most {MAX_OBJECT_KEY_BYTES} bytes",
                    s.len()
                ),
            ));
        }
        if let Some(c) = s.chars().find(|c| c.is_control()) {
            return Err(FieldError::new(
                field,
                format!(
                    "must not contain control characters (found U+{:04X})",
                    c as u32
                ),
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_with_slashes_and_unicode_is_accepted() {
        assert!(ObjectKey::parse("reports/2026/été final.pdf").is_ok());
    }

    #[test]
    fn an_empty_key_is_rejected() {
        assert_eq!(ObjectKey::parse("").unwrap_err().field, "object_key");
    }

    #[test]
    fn a_key_of_1024_bytes_is_accepted_and_1025_rejected() {
        assert!(ObjectKey::parse(&"k".repeat(1024)).is_ok());
        let e = ObjectKey::parse(&"k".repeat(1025)).unwrap_err();
        assert!(e.reason.contains("1025 bytes"), "{e}");
    }

    #[test]
    fn the_limit_counts_bytes_not_characters() {
        // 'é' is two bytes in UTF-8: 513 of them are 1026 bytes.
        assert!(ObjectKey::parse(&"é".repeat(513)).is_err());
    }

    #[test]
    fn control_characters_are_rejected() {
        assert!(ObjectKey::parse("a\nb").is_err());
        assert!(ObjectKey::parse("a\u{0}b").is_err());
    }
}

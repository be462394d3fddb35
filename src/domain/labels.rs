//! Free-form labels a caller attaches to a link (ticket id, purpose...): bounded so
//! the registry cannot be flooded through them.

use super::FieldError;
use std::collections::BTreeMap;

pub const MAX_LABELS: usize = 16;
pub const MAX_LABEL_KEY_CHARS: usize = 63;
pub const MAX_LABEL_VALUE_BYTES: usize = 256;
/// Label keys beginning with this are presignd's own (a multipart upload's
/// part links carry `presignd.upload` and `presignd.part`): a caller may not
/// set them, so they can be trusted.
pub const RESERVED_PREFIX: &str = "presignd.";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    pub fn parse<'a>(
        pairs: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<Self, FieldError> {
        let mut out = BTreeMap::new();
        for (k, v) in pairs {
            if k.is_empty() || k.len() > MAX_LABEL_KEY_CHARS {
                return Err(FieldError::new(
                    "labels",
                    format!("key {k:?} must be 1 to {MAX_LABEL_KEY_CHARS} characters"),
                ));
            }
            if !k.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
            }) {
                return Err(FieldError::new(
                    "labels",
                    format!("key {k:?} may contain only a-z, 0-9, '_', '.' and '-'"),
                ));
            }
            if k.starts_with(RESERVED_PREFIX) {
                return Err(FieldError::new(
                    "labels",
                    format!("key {k:?}: keys beginning {RESERVED_PREFIX:?} are presignd's"),
                ));
            }
            if v.len() > MAX_LABEL_VALUE_BYTES {
                return Err(FieldError::new(
                    "labels",
                    format!("value of {k:?} is over {MAX_LABEL_VALUE_BYTES} bytes"),
                ));
            }
            if v.chars().any(char::is_control) {
                return Err(FieldError::new(
                    "labels",
                    format!("value of {k:?} must not contain control characters"),
                ));
            }
            out.insert(k.clone(), v.clone());
        }
        if out.len() > MAX_LABELS {
            return Err(FieldError::new(
                "labels",
                format!("{} labels given; at most {MAX_LABELS}", out.len()),
            ));
        }
        Ok(Self(out))
    }

    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    pub fn into_map(self) -> BTreeMap<String, String> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<Labels, FieldError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Labels::parse(&m)
    }

    #[test]
    fn keys_beginning_presignd_dot_are_reserved() {
        let e = parse(&[("presignd.upload", "x")]).unwrap_err();
        assert_eq!(e.field, "labels");
        assert!(e.reason.contains("presignd's"));
        assert!(parse(&[("presignd-team", "x")]).is_ok());
    }

    #[test]
    fn ordinary_labels_are_accepted() {
        assert_eq!(
            parse(&[("ticket", "SEC-42"), ("team.name", "x")])
                .unwrap()
                .as_map()
                .len(),
            2
        );
    }

    #[test]
    fn more_than_sixteen_labels_are_rejected() {
        let keys: Vec<String> = (0..17).map(|i| format!("k{i}")).collect();
        let pairs: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "v")).collect();
        assert_eq!(parse(&pairs).unwrap_err().field, "labels");
    }

    #[test]
    fn keys_with_uppercase_or_empty_are_rejected() {
        assert!(parse(&[("Ticket", "x")]).is_err());
        assert!(parse(&[("", "x")]).is_err());
    }

    #[test]
    fn a_value_over_256_bytes_is_rejected() {
        assert!(parse(&[("k", &"v".repeat(257))]).is_err());
        assert!(parse(&[("k", &"v".repeat(256))]).is_ok());
    }
}

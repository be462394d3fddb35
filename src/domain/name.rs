//! Names of callers and signers: short, lowercase, safe in logs and metric labels.

use super::FieldError;

fn parse_name(field: &'static str, s: &str) -> Result<String, FieldError> {
    let ok_first = s
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok_rest = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'));
    if s.is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    if s.len() > 63 || !ok_first || !ok_rest {
        return Err(FieldError::new(
            field,
            format!(
                "{s:?} must be 1 to 63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
            ),
        ));
    }
    Ok(s.to_owned())
}

macro_rules! name_type {
    ($name:ident, $field:literal) => {
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, FieldError> {
                parse_name($field, s).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(CallerName, "caller");
name_type!(SignerName, "signer");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lowercase_service_name_is_a_valid_caller() {
        assert_eq!(
            CallerName::parse("billing-api").unwrap().as_str(),
            "billing-api"
        );
    }

    #[test]
    fn an_empty_or_uppercase_signer_is_rejected_naming_the_field() {
        assert_eq!(SignerName::parse("").unwrap_err().field, "signer");
        assert_eq!(SignerName::parse("Prod").unwrap_err().field, "signer");
    }

    #[test]
    fn a_name_over_63_characters_is_rejected() {
        assert!(CallerName::parse(&"a".repeat(64)).is_err());
    }
}

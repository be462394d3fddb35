//! The HTTP method a link allows.

use super::FieldError;
use crate::proto;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Put,
    Head,
    Delete,
}

impl Method {
    pub fn from_proto(value: i32) -> Result<Self, FieldError> {
        match proto::Method::try_from(value) {
            Ok(proto::Method::Get) => Ok(Self::Get),
            Ok(proto::Method::Put) => Ok(Self::Put),
            Ok(proto::Method::Head) => Ok(Self::Head),
            Ok(proto::Method::Delete) => Ok(Self::Delete),
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

    pub fn to_proto(self) -> proto::Method {
        match self {
            Self::Get => proto::Method::Get,
            Self::Put => proto::Method::Put,
            Self::Head => proto::Method::Head,
            Self::Delete => proto::Method::Delete,
        }
    }

    /// The name stored in the registry and shown to humans.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Put => "PUT",
            Self::Head => "HEAD",
            Self::Delete => "DELETE",
        }
    }

    pub fn parse(s: &str) -> Result<Self, FieldError> {
        match s.to_ascii_uppercase().as_str() {
            "GET" => Ok(Self::Get),
            "PUT" => Ok(Self::Put),
            "HEAD" => Ok(Self::Head),
            "DELETE" => Ok(Self::Delete),
            _ => Err(FieldError::new(
                "method",
                format!("unknown method {s:?}: expected one of GET, PUT, HEAD, DELETE"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_proto_method_round_trips() {
        for m in [Method::Get, Method::Put, Method::Head, Method::Delete] {
            assert_eq!(Method::from_proto(m.to_proto() as i32).unwrap(), m);
            assert_eq!(Method::parse(m.as_str()).unwrap(), m);
        }
    }

    #[test]
    fn an_unspecified_method_is_rejected_as_required() {
        assert!(
            Method::from_proto(0)
                .unwrap_err()
                .reason
                .contains("required")
        );
    }

    #[test]
    fn an_unknown_method_number_is_rejected() {
        assert_eq!(Method::from_proto(42).unwrap_err().field, "method");
        assert!(Method::parse("PATCH").is_err());
    }
}

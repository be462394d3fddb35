//! The HTTP method a link allows.

use super::FieldError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Put,
    Head,
    Delete,
    /// A browser form upload (a presigned POST policy, `IssueUploadForm`):
    /// never a URL.
    Post,
}

impl Method {
    pub const ALL: [Method; 5] = [
        Method::Get,
        Method::Put,
        Method::Head,
        Method::Delete,
        Method::Post,
    ];

    /// The name stored in the registry and shown to humans.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Put => "PUT",
            Self::Head => "HEAD",
            Self::Delete => "DELETE",
            Self::Post => "POST",
        }
    }

    pub fn parse(s: &str) -> Result<Self, FieldError> {
        match s.to_ascii_uppercase().as_str() {
            "GET" => Ok(Self::Get),
            "PUT" => Ok(Self::Put),
            "HEAD" => Ok(Self::Head),
            "DELETE" => Ok(Self::Delete),
            "POST" => Ok(Self::Post),
            _ => Err(FieldError::new(
                "method",
                format!("unknown method {s:?}: expected one of GET, PUT, HEAD, DELETE, POST"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_round_trips_through_its_name() {
        for m in Method::ALL {
            assert_eq!(Method::parse(m.as_str()).unwrap(), m);
        }
    }

    #[test]
    fn an_unknown_method_is_rejected() {
        assert_eq!(Method::parse("PATCH").unwrap_err().field, "method");
    }
}

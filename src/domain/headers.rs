//! Signed header values a link may bind: Content-Type on PUT, and the
//! response-content-disposition S3 returns on GET. Printable ASCII only, since
//! they end up in headers and query strings.

use super::FieldError;

fn parse_header_value(field: &'static str, s: &str, max: usize) -> Result<String, FieldError> {
    if s.len() > max {
        return Err(FieldError::new(field, format!("is over {max} bytes")));
    }
    if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(FieldError::new(field, "must be printable ASCII"));
    }
    Ok(s.to_owned())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentType(String);

impl ContentType {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let v = parse_header_value("content_type", s, 256)?;
        if !v.contains('/') {
            return Err(FieldError::new(
                "content_type",
                format!("{s:?} is not a media type such as text/plain"),
            ));
        }
        Ok(Self(v))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentDisposition(String);

impl ContentDisposition {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        parse_header_value("response_content_disposition", s, 512).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_media_type_is_a_valid_content_type() {
        assert!(ContentType::parse("application/json; charset=utf-8").is_ok());
    }

    #[test]
    fn a_content_type_without_a_slash_or_with_newlines_is_rejected() {
        assert!(ContentType::parse("json").is_err());
        assert!(ContentType::parse("text/plain\r\nX-Evil: 1").is_err());
    }

    #[test]
    fn a_disposition_with_non_ascii_is_rejected() {
        assert!(ContentDisposition::parse("attachment; filename=\"r.pdf\"").is_ok());
        assert_eq!(
            ContentDisposition::parse("attachment; filename=\"é\"")
                .unwrap_err()
                .field,
            "response_content_disposition"
        );
    }
}

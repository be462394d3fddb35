//! S3 bucket names, by the general-purpose bucket naming rules.

use super::FieldError;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Bucket(String);

impl Bucket {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let err = |reason: &str| Err(FieldError::new("bucket", reason));
        if s.is_empty() {
            return err("is required");
        }
        if !(3..=63).contains(&s.len()) {
            return err("must be 3 to 63 characters long");
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            return err("may contain only lowercase letters, digits, '-' and '.'");
        }
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !alnum(s.as_bytes()[0]) || !alnum(s.as_bytes()[s.len() - 1]) {
            return err("must begin and end with a lowercase letter or a digit");
        }
        if s.contains("..") {
            return err("must not contain two adjacent periods");
        }
        if s.parse::<std::net::Ipv4Addr>().is_ok() {
            return err("must not be formatted as an IP address");
        }
        if s.starts_with("xn--") || s.starts_with("sthree-") {
            return err("must not start with 'xn--' or 'sthree-'");
        }
        if s.ends_with("-s3alias") || s.ends_with("--ol-s3") {
            return err("must not end with '-s3alias' or '--ol-s3'");
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::Bucket;

    #[test]
    fn a_plain_lowercase_name_is_accepted() {
        assert_eq!(
            Bucket::parse("my-bucket.v2").unwrap().as_str(),
            "my-bucket.v2"
        );
    }

    #[test]
    fn an_empty_name_is_rejected_as_required() {
        assert!(Bucket::parse("").unwrap_err().reason.contains("required"));
    }

    #[test]
    fn names_shorter_than_3_or_longer_than_63_are_rejected() {
        assert!(Bucket::parse("ab").is_err());
        assert!(Bucket::parse(&"a".repeat(64)).is_err());
        assert!(Bucket::parse(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn uppercase_and_underscores_are_rejected() {
        assert!(Bucket::parse("MyBucket").is_err());
        assert!(Bucket::parse("my_bucket").is_err());
    }

    #[test]
    fn a_name_must_start_and_end_with_a_letter_or_digit() {
        assert!(Bucket::parse("-abc").is_err());
        assert!(Bucket::parse("abc.").is_err());
    }

    #[test]
    fn adjacent_periods_and_ip_addresses_are_rejected() {
        assert!(Bucket::parse("a..b").is_err());
        assert!(Bucket::parse("192.168.5.4").is_err());
    }

    #[test]
    fn reserved_prefixes_and_suffixes_are_rejected() {
        assert!(Bucket::parse("xn--abc").is_err());
        assert!(Bucket::parse("abc-s3alias").is_err());
    }

    #[test]
    fn every_error_names_the_bucket_field() {
        assert_eq!(Bucket::parse("A").unwrap_err().field, "bucket");
    }
}

//! How long a link is valid: whole seconds from 1 s to 7 days (SigV4's maximum).

use super::FieldError;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ttl(Duration);

pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

impl Ttl {
    /// From a protobuf Duration's parts.
    pub fn parse(seconds: i64, nanos: i32) -> Result<Self, FieldError> {
        let err = |reason: String| Err(FieldError::new("ttl", reason));
        if seconds < 0 || nanos < 0 {
            return err("must be positive".into());
        }
        if nanos != 0 {
            return err("must be a whole number of seconds".into());
        }
        if seconds == 0 {
            return err("must be at least 1s".into());
        }
        if seconds as u64 > MAX_TTL.as_secs() {
            return err(format!(
                "{seconds}s is over the maximum of 7 days ({}s)",
                MAX_TTL.as_secs()
            ));
        }
        Ok(Self(Duration::from_secs(seconds as u64)))
    }

    pub fn from_secs(seconds: u64) -> Result<Self, FieldError> {
        Self::parse(i64::try_from(seconds).unwrap_or(i64::MAX), 0)
    }

    pub fn as_duration(&self) -> Duration {
        self.0
    }

    pub fn as_secs(&self) -> u64 {
        self.0.as_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_second_and_seven_days_are_the_bounds() {
        assert!(Ttl::parse(1, 0).is_ok());
        assert!(Ttl::parse(7 * 24 * 3600, 0).is_ok());
    }

    #[test]
    fn a_ttl_of_zero_is_rejected() {
        assert_eq!(Ttl::parse(0, 0).unwrap_err().field, "ttl");
    }

    #[test]
    fn a_ttl_over_seven_days_is_rejected() {
        assert!(Ttl::parse(7 * 24 * 3600 + 1, 0).is_err());
        assert!(Ttl::parse(8 * 24 * 3600, 0).is_err());
    }

    #[test]
    fn a_negative_or_fractional_ttl_is_rejected() {
        assert!(Ttl::parse(-5, 0).is_err());
        assert!(Ttl::parse(10, 500).is_err());
    }
}

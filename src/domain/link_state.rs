//! The state of a link as the dashboards filter on it. Derived, never stored: see
//! `registry::links::STATE_SQL`.

use super::FieldError;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum LinkState {
    Active,
    Expired,
    Revoked,
}

impl LinkState {
    /// The name `STATE_SQL` yields.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Result<Self, FieldError> {
        match s.to_ascii_lowercase().as_str() {
            "active" => Ok(Self::Active),
            "expired" => Ok(Self::Expired),
            "revoked" => Ok(Self::Revoked),
            _ => Err(FieldError::new(
                "state",
                format!("unknown state {s:?}: expected active, expired or revoked"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_through_its_name() {
        for s in [LinkState::Active, LinkState::Expired, LinkState::Revoked] {
            assert_eq!(LinkState::parse(s.as_str()).unwrap(), s);
        }
        assert!(LinkState::parse("dead").is_err());
    }
}

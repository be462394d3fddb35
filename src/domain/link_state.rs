//! The state of a link as the dashboards filter on it. Derived, never stored: see
//! `registry::links::STATE_SQL`.

use super::FieldError;
use crate::proto;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum LinkState {
    Active,
    Expired,
    Revoked,
}

impl LinkState {
    /// `None` for UNSPECIFIED: no filter on the state.
    pub fn from_proto(field: &'static str, value: i32) -> Result<Option<Self>, FieldError> {
        match proto::LinkState::try_from(value) {
            Ok(proto::LinkState::Unspecified) => Ok(None),
            Ok(proto::LinkState::Active) => Ok(Some(Self::Active)),
            Ok(proto::LinkState::Expired) => Ok(Some(Self::Expired)),
            Ok(proto::LinkState::Revoked) => Ok(Some(Self::Revoked)),
            Err(_) => Err(FieldError::new(
                field,
                format!("unknown value {value}: expected ACTIVE, EXPIRED or REVOKED"),
            )),
        }
    }

    pub fn to_proto(self) -> proto::LinkState {
        match self {
            Self::Active => proto::LinkState::Active,
            Self::Expired => proto::LinkState::Expired,
            Self::Revoked => proto::LinkState::Revoked,
        }
    }

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
    fn every_state_round_trips_through_proto_and_text() {
        for s in [LinkState::Active, LinkState::Expired, LinkState::Revoked] {
            assert_eq!(
                LinkState::from_proto("state", s.to_proto() as i32).unwrap(),
                Some(s)
            );
            assert_eq!(LinkState::parse(s.as_str()).unwrap(), s);
        }
    }

    #[test]
    fn an_unspecified_state_means_no_filter_and_an_unknown_one_is_rejected() {
        assert_eq!(LinkState::from_proto("filter.state", 0).unwrap(), None);
        assert_eq!(
            LinkState::from_proto("filter.state", 9).unwrap_err().field,
            "filter.state"
        );
    }
}

//! Where the typed states meet SQL, once: every state column is read and bound
//! as its enum (text in Postgres, the enum's `as_str` name), and the dead-key
//! rule is spelled in one fragment (`KEY_DEAD`) that every statement uses.

use crate::domain::{KeyState, LinkState, RevocationState, RotationMode};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Type};

/// A key is dead when inactive or deleted: deactivated at its backend, every
/// link it signed is revoked. For a `signing_keys` row aliased `k`; expands to
/// a literal so it composes into constant SQL (`concat!`).
macro_rules! key_dead {
    () => {
        "k.state IN ('inactive', 'deleted')"
    };
}
pub(crate) use key_dead;

/// `key_dead!()` for statements built at run time.
pub const KEY_DEAD: &str = key_dead!();

macro_rules! text_enum {
    ($t:ty, $what:literal, $parse:expr) => {
        impl Type<Postgres> for $t {
            fn type_info() -> PgTypeInfo {
                <&str as Type<Postgres>>::type_info()
            }

            fn compatible(ty: &PgTypeInfo) -> bool {
                <&str as Type<Postgres>>::compatible(ty)
            }
        }

        impl Encode<'_, Postgres> for $t {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <&str as Encode<Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> Decode<'r, Postgres> for $t {
            fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                let s = <&str as Decode<Postgres>>::decode(value)?;
                let parse: fn(&str) -> Option<$t> = $parse;
                parse(s).ok_or_else(|| format!("unknown {} {s:?} in the registry", $what).into())
            }
        }
    };
}

text_enum!(KeyState, "key state", KeyState::parse);
text_enum!(RevocationState, "revocation state", RevocationState::parse);
text_enum!(RotationMode, "rotation mode", RotationMode::parse);
text_enum!(LinkState, "link state", |s| LinkState::parse(s).ok());

#[cfg(test)]
mod tests {
    use super::*;

    /// The quoted names a SQL fragment yields (`'active'`), in order.
    fn literals(sql: &str) -> Vec<&str> {
        sql.split('\'').skip(1).step_by(2).collect()
    }

    /// The link's state is derived in SQL (`STATE_SQL`) and read back as
    /// `LinkState`: the fragment yields exactly the enum's names.
    #[test]
    fn the_derived_link_state_yields_exactly_the_link_state_names() {
        use crate::registry::links::STATE_SQL;
        let names: Vec<&str> = [LinkState::Revoked, LinkState::Expired, LinkState::Active]
            .iter()
            .map(|s| s.as_str())
            .collect();
        let yielded: Vec<&str> = literals(STATE_SQL)
            .into_iter()
            .filter(|l| {
                LinkState::parse(l).is_ok() || !KeyState::ALL.iter().any(|k| k.as_str() == *l)
            })
            .collect();
        assert_eq!(yielded, names, "{STATE_SQL}");
    }

    #[test]
    fn the_dead_key_fragment_names_exactly_the_dead_states() {
        let named: Vec<KeyState> = KeyState::ALL
            .iter()
            .copied()
            .filter(|s| KEY_DEAD.contains(&format!("'{}'", s.as_str())))
            .collect();
        let dead: Vec<KeyState> = KeyState::ALL
            .iter()
            .copied()
            .filter(|s| s.is_dead())
            .collect();
        assert_eq!(named, dead);
    }
}

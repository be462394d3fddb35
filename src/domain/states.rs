//! The typed states of a signing key and of a revocation, and the mode of a
//! rotation. Their names are the registry's (see `registry::states`, the one
//! place they meet SQL) and what operators read.

/// A signing key's life: `pending` (a rotation created it, signs nothing yet)
/// → `active` (signs new links) → `retired` (signs nothing new, its links still
/// work) → `inactive` (deactivated at the backend: its links are dead) →
/// `deleted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyState {
    Pending,
    Active,
    Retired,
    Inactive,
    Deleted,
}

/// A revocation's run: `running` until it `succeeded` or `failed`, or an
/// admin `cancelled` it (CancelRevocation, for one stuck on an outage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// How a rotation treats the old key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RotationMode {
    /// New key active, old key retired: nothing breaks; the old key is
    /// deactivated once its last link expires.
    Graceful,
    /// As graceful, then the old key is deactivated at once.
    Revoke,
    /// Deactivate first, then create the replacement; issuance pauses between.
    Emergency,
}

/// Each enum's names, written once: `as_str` and `parse` both read this table.
macro_rules! named {
    ($t:ty { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $t {
            pub const ALL: &'static [$t] = &[$(<$t>::$v),+];

            pub fn as_str(self) -> &'static str {
                match self { $(<$t>::$v => $s),+ }
            }

            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named!(KeyState {
    Pending => "pending",
    Active => "active",
    Retired => "retired",
    Inactive => "inactive",
    Deleted => "deleted",
});

named!(RevocationState {
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Cancelled => "cancelled",
});

named!(RotationMode {
    Graceful => "graceful",
    Revoke => "revoke",
    Emergency => "emergency",
});

impl KeyState {
    /// Deactivated at the backend: every link it signed is dead. The registry
    /// spells the same rule once in SQL (`registry::states::KEY_DEAD`).
    pub fn is_dead(self) -> bool {
        matches!(self, Self::Inactive | Self::Deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_and_mode_round_trips_through_its_name() {
        for s in KeyState::ALL {
            assert_eq!(KeyState::parse(s.as_str()), Some(*s));
        }
        for s in RevocationState::ALL {
            assert_eq!(RevocationState::parse(s.as_str()), Some(*s));
        }
        for m in RotationMode::ALL {
            assert_eq!(RotationMode::parse(m.as_str()), Some(*m));
        }
        assert_eq!(KeyState::parse("Active"), None);
    }

    #[test]
    fn a_key_is_dead_when_inactive_or_deleted() {
        let dead: Vec<_> = KeyState::ALL.iter().filter(|s| s.is_dead()).collect();
        assert_eq!(dead, [&KeyState::Inactive, &KeyState::Deleted]);
    }
}

//! A signer's blast-radius budget: how many outstanding links one of its keys
//! may hold, and/or how long it may sign, before it is rotated (GRACEFUL), so
//! revoking any one key kills at most about that many links.
//!
//! Written `SIGNER:links=N:age=DURATION` (either limit or both; the age in
//! s, m, h or d, e.g. `24h`).

use super::{FieldError, SignerName};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyBudget {
    pub max_links: Option<u64>,
    pub max_age: Option<Duration>,
}

/// Which limit a key reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spent {
    Links { outstanding: u64, max: u64 },
    Age { age: Duration, max: Duration },
}

impl std::fmt::Display for Spent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Links { outstanding, max } => write!(
                f,
                "{outstanding} outstanding links reached the rotation point of a budget of {max}"
            ),
            Self::Age { age, max } => write!(
                f,
                "signing for {}s reached the age budget of {}s",
                age.as_secs(),
                max.as_secs()
            ),
        }
    }
}

impl KeyBudget {
    /// Parses one `SIGNER:links=N:age=D` entry.
    pub fn parse(spec: &str) -> Result<(SignerName, Self), FieldError> {
        let err = |reason: String| FieldError::new("key_budgets", format!("{spec:?}: {reason}"));
        let mut parts = spec.trim().split(':');
        let signer = SignerName::parse(parts.next().unwrap_or_default())
            .map_err(|e| err(e.reason.clone()))?;
        let mut budget = Self::default();
        for part in parts {
            match part.split_once('=') {
                Some(("links", n)) => match n.parse::<u64>() {
                    Ok(n) if n > 0 => budget.max_links = Some(n),
                    _ => return Err(err(format!("links={n} is not a positive whole number"))),
                },
                Some(("age", d)) => {
                    budget.max_age = Some(parse_duration(d).ok_or_else(|| {
                        err(format!(
                            "age={d} is not a duration like 90s, 30m, 12h or 7d"
                        ))
                    })?);
                }
                _ => {
                    return Err(err(format!(
                        "unknown part {part:?}: expected links=N or age=D"
                    )));
                }
            }
        }
        if budget.max_links.is_none() && budget.max_age.is_none() {
            return Err(err("names no limit: add links=N and/or age=D".into()));
        }
        Ok((signer, budget))
    }

    /// The outstanding count at which the key is rotated: 3/4 of the budget.
    /// The last quarter is headroom for the links issued while the replacement
    /// is created, probed and activated (the key signs until then), so the
    /// key stays within the budget unless more than a quarter of it is issued
    /// during one rotation (docs/ARCHITECTURE.md, "Blast-radius budget").
    pub fn rotate_at(&self) -> Option<u64> {
        self.max_links.map(|max| (max - max / 4).max(1))
    }

    /// Links issued by this process between two budget checks of a signer's
    /// key: a twentieth of the budget (at least one).
    pub fn check_every(&self) -> Option<u64> {
        self.max_links.map(|max| (max / 20).max(1))
    }

    /// The limit a key with these outstanding links, signing for `age`, has
    /// reached, if any.
    pub fn spent(&self, outstanding: u64, age: Duration) -> Option<Spent> {
        if let (Some(at), Some(max)) = (self.rotate_at(), self.max_links)
            && outstanding >= at
        {
            return Some(Spent::Links { outstanding, max });
        }
        match self.max_age {
            Some(max) if age >= max => Some(Spent::Age { age, max }),
            _ => None,
        }
    }

    /// A key's share of each limit (1.0: the limit), None without that limit.
    pub fn share(&self, outstanding: u64, age: Duration) -> (Option<f64>, Option<f64>) {
        (
            self.max_links.map(|max| outstanding as f64 / max as f64),
            self.max_age
                .map(|max| age.as_secs_f64() / max.as_secs_f64().max(1.0)),
        )
    }
}

fn parse_duration(text: &str) -> Option<Duration> {
    let unit = match text.chars().last()? {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    let n: u64 = text[..text.len() - 1].parse().ok()?;
    (n > 0).then_some(Duration::from_secs(n.checked_mul(unit)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_names_its_signer_and_either_limit() {
        let (signer, b) = KeyBudget::parse("billing:links=100:age=12h").unwrap();
        assert_eq!(signer.as_str(), "billing");
        assert_eq!(b.max_links, Some(100));
        assert_eq!(b.max_age, Some(Duration::from_secs(12 * 3600)));
        let (_, b) = KeyBudget::parse("ops:age=90s").unwrap();
        assert_eq!(
            (b.max_links, b.max_age),
            (None, Some(Duration::from_secs(90)))
        );
    }

    #[test]
    fn a_budget_without_a_limit_or_with_a_bad_one_is_refused_naming_the_setting() {
        for bad in [
            "billing",
            "billing:links=0",
            "billing:age=12",
            "billing:size=3",
            ":links=5",
        ] {
            let e = KeyBudget::parse(bad).unwrap_err();
            assert_eq!(e.field, "key_budgets", "{bad}");
            assert!(e.reason.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn a_key_is_rotated_at_three_quarters_of_its_links_budget_or_at_its_age() {
        let (_, b) = KeyBudget::parse("s:links=100:age=1h").unwrap();
        assert_eq!(b.rotate_at(), Some(75));
        assert_eq!(b.check_every(), Some(5));
        assert_eq!(b.spent(74, Duration::from_secs(10)), None);
        assert!(matches!(
            b.spent(75, Duration::ZERO),
            Some(Spent::Links { max: 100, .. })
        ));
        assert!(matches!(
            b.spent(0, Duration::from_secs(3600)),
            Some(Spent::Age { .. })
        ));
        let (_, one) = KeyBudget::parse("s:links=1").unwrap();
        assert_eq!((one.rotate_at(), one.check_every()), (Some(1), Some(1)));
    }

    #[test]
    fn the_share_is_the_fraction_of_each_limit() {
        let (_, b) = KeyBudget::parse("s:links=200").unwrap();
        assert_eq!(b.share(50, Duration::from_secs(5)), (Some(0.25), None));
    }
}

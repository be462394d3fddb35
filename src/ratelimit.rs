//! Per-caller rate limits on IssueLink: one token bucket (governor's GCRA) per
//! caller, with the quota its policy gives. A policy reload that changes a
//! caller's quota gives it a fresh bucket; others keep theirs.

use crate::domain::CallerName;
use crate::policy::RateSpec;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Refused: the caller asked faster than its limit.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "rate limit: caller {caller} may issue {per_sec} links per second (burst {burst}); retry later"
)]
pub struct RateLimited {
    pub caller: String,
    pub per_sec: u32,
    pub burst: u32,
}

type Bucket = (RateSpec, Arc<DefaultDirectRateLimiter>);

#[derive(Clone, Default)]
pub struct RateLimits {
    buckets: Arc<RwLock<HashMap<CallerName, Bucket>>>,
}

impl RateLimits {
    /// Takes one token from `caller`'s bucket, if it has a limit.
    pub fn check(&self, caller: &CallerName, spec: Option<RateSpec>) -> Result<(), RateLimited> {
        let Some(spec) = spec else {
            return Ok(());
        };
        let limiter = self.limiter(caller, spec);
        limiter.check().map_err(|_| RateLimited {
            caller: caller.to_string(),
            per_sec: spec.per_sec.get(),
            burst: spec.burst.get(),
        })
    }

    fn limiter(&self, caller: &CallerName, spec: RateSpec) -> Arc<DefaultDirectRateLimiter> {
        if let Some((s, l)) = self.buckets.read().expect("rate limits lock").get(caller)
            && *s == spec
        {
            return l.clone();
        }
        let mut map = self.buckets.write().expect("rate limits lock");
        let entry = map
            .entry(caller.clone())
            .or_insert_with(|| (spec, new(spec)));
        if entry.0 != spec {
            *entry = (spec, new(spec));
        }
        entry.1.clone()
    }
}

fn new(spec: RateSpec) -> Arc<DefaultDirectRateLimiter> {
    Arc::new(RateLimiter::direct(
        Quota::per_second(spec.per_sec).allow_burst(spec.burst),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_gets_its_burst_then_is_refused_naming_the_limit() {
        let limits = RateLimits::default();
        let c = CallerName::parse("svc").unwrap();
        let spec = RateSpec::new(1, 3);
        for _ in 0..3 {
            limits.check(&c, spec).unwrap();
        }
        let e = limits.check(&c, spec).unwrap_err().to_string();
        assert!(
            e.starts_with("rate limit: caller svc may issue 1 links per second (burst 3)"),
            "{e}"
        );
        // Another caller has its own bucket; no limit means no limit.
        limits
            .check(&CallerName::parse("other").unwrap(), spec)
            .unwrap();
        for _ in 0..100 {
            limits.check(&c, None).unwrap();
        }
    }

    #[test]
    fn a_new_quota_gives_a_fresh_bucket() {
        let limits = RateLimits::default();
        let c = CallerName::parse("svc").unwrap();
        limits.check(&c, RateSpec::new(1, 1)).unwrap();
        assert!(limits.check(&c, RateSpec::new(1, 1)).is_err());
        limits.check(&c, RateSpec::new(1, 2)).unwrap();
    }
}

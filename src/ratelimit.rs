//! Per-caller rate limits: one token bucket (governor's GCRA) per caller and
//! quota. IssueLink's quota comes from the policy (a reload that changes a
//! caller's quota gives it a fresh bucket; others keep theirs); the read RPCs
//! share another, `--read-rate-per-sec` per caller, so a flood of dashboards
//! queries never spends a caller's issuance quota, nor the other way round.

use crate::domain::CallerName;
use crate::policy::RateSpec;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Refused: the caller asked faster than its limit.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "rate limit: caller {caller} may {what} {per_sec} {per} per second (burst {burst}); retry later"
)]
pub struct RateLimited {
    pub caller: String,
    pub per_sec: u32,
    pub burst: u32,
    /// When the next token is there at the latest: one emission interval.
    pub retry_after: std::time::Duration,
    what: &'static str,
    per: &'static str,
}

type Bucket = (RateSpec, Arc<DefaultDirectRateLimiter>);

#[derive(Clone)]
pub struct RateLimits {
    buckets: Arc<RwLock<HashMap<CallerName, Bucket>>>,
    /// How a refusal names the quota: "issue N links", "make N read requests".
    what: &'static str,
    per: &'static str,
}

impl Default for RateLimits {
    /// IssueLink's.
    fn default() -> Self {
        Self {
            buckets: Arc::default(),
            what: "issue",
            per: "links",
        }
    }
}

/// The read RPCs' quota: every caller gets `spec` (None: unlimited).
#[derive(Clone)]
pub struct ReadLimits {
    limits: RateLimits,
    spec: Option<RateSpec>,
}

impl ReadLimits {
    pub fn new(spec: Option<RateSpec>) -> Self {
        Self {
            limits: RateLimits {
                buckets: Arc::default(),
                what: "make",
                per: "read requests",
            },
            spec,
        }
    }

    /// Takes one token from `caller`'s read bucket.
    pub fn check(&self, caller: &CallerName) -> Result<(), RateLimited> {
        self.limits.check(caller, self.spec)
    }
}

impl RateLimits {
    /// Takes one token from `caller`'s bucket, if it has a limit.
    pub fn check(&self, caller: &CallerName, spec: Option<RateSpec>) -> Result<(), RateLimited> {
        let Some(spec) = spec else {
            return Ok(());
        };
        let limiter = self.limiter(caller, spec);
        limiter.check().map_err(|_| {
            crate::metrics::record_denial(crate::metrics::Denial::RateLimit);
            RateLimited {
                caller: caller.to_string(),
                per_sec: spec.per_sec.get(),
                burst: spec.burst.get(),
                retry_after: std::time::Duration::from_secs_f64(
                    1.0 / f64::from(spec.per_sec.get()),
                ),
                what: self.what,
                per: self.per,
            }
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
    fn reads_have_their_own_bucket_and_say_so() {
        let issue = RateLimits::default();
        let reads = ReadLimits::new(RateSpec::new(1, 2));
        let c = CallerName::parse("svc").unwrap();
        reads.check(&c).unwrap();
        reads.check(&c).unwrap();
        let e = reads.check(&c).unwrap_err().to_string();
        assert!(
            e.starts_with("rate limit: caller svc may make 1 read requests per second (burst 2)"),
            "{e}"
        );
        issue
            .check(&c, RateSpec::new(1, 1))
            .expect("issuance has its own quota");
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

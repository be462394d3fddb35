//! Preflight: every bucket a signer may sign for (`--buckets`, and the buckets
//! the policy's entries for that signer name) is made usable by the signer's
//! key and proven so before a link for it is issued. For each (key, bucket):
//! the backend grants the bucket (Garage's AllowBucketKey; on AWS the IAM
//! policy is the account's, nothing to grant), the bucket's region is resolved
//! (`regions`), and a probe (a GET of a missing object, `verify::classify`)
//! must be authenticated and allowed. It runs for a new key before it signs
//! (provisioning, a rotation's verify step, another replica's key change), for
//! every active key at startup, when a policy reload adds a bucket, and on
//! every maintenance tick for the pairs not ready yet.
//!
//! The outcome is kept per key and bucket in an `ArcSwap`: IssueLink reads it
//! without a lock or a query (`bucket_ready`) and refuses a pair that failed
//! (FAILED_PRECONDITION naming the bucket and the cause), so no URL the store
//! would refuse leaves presignd. Each replica keeps its own (it probes from
//! where it runs).

use super::KeyManager;
use super::verify::{ProbeAnswer, backoff, classify, send_probe, store_busy, xml_field};
use crate::signing::SigningKey;
use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Probes of one pair while the store answers "not yet" (busy, or a grant
/// still propagating): the key itself was proven before.
const PAIR_ATTEMPTS: u32 = 4;
/// Outcomes of keys no longer active are forgotten after this long.
const FORGET_AFTER: chrono::Duration = chrono::Duration::minutes(10);

/// One (key, bucket) pair as last checked.
#[derive(Debug, Clone)]
pub struct BucketStatus {
    pub bucket: String,
    /// The region the key signs this bucket's links for.
    pub region: Arc<str>,
    /// Err: why the key may not sign for the bucket.
    pub outcome: Result<(), String>,
    /// The failure was an outage, not a verdict: the store unreachable or
    /// busy (429, 5xx) through every probe, or the backend unreachable
    /// when the bucket had to be granted. Checked again on the next tick.
    pub transient: bool,
    pub checked_at: DateTime<Utc>,
}

/// Why IssueLink does not sign for a bucket now.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BucketRefused {
    #[error(
        "bucket {bucket} is not prepared for signer {signer}: presignd signs only for the buckets of \
         --buckets and those the policy's entries for this signer name"
    )]
    NotPrepared { signer: String, bucket: String },
    #[error(
        "bucket {bucket} is still being prepared for key {key_id} of signer {signer}; retry shortly"
    )]
    Pending {
        signer: String,
        bucket: String,
        key_id: String,
    },
    #[error(
        "bucket {bucket} could not be checked for key {key_id} of signer {signer}, the store or the key backend being unreachable or busy ({cause}); retry shortly"
    )]
    Unreachable {
        signer: String,
        bucket: String,
        key_id: String,
        cause: String,
    },
    #[error("bucket {bucket} cannot be used by key {key_id} of signer {signer}: {cause}")]
    Failed {
        signer: String,
        bucket: String,
        key_id: String,
        cause: String,
    },
}

/// Which buckets each signer must be ready for, and each key's outcomes.
#[derive(Clone, Default)]
pub(super) struct Preflight {
    wanted: Arc<ArcSwap<BTreeMap<String, BTreeSet<String>>>>,
    /// key id → bucket → status.
    status: Arc<ArcSwap<HashMap<String, HashMap<String, BucketStatus>>>>,
    /// One preflight at a time per key: its pairs are not probed twice at
    /// once, and one key's slow checks (a bucket whose store never answers
    /// takes ~40 s, again on every tick) never hold back another's: another
    /// signer's new key, which its reload installs only once checked.
    running: KeyLocks,
}

/// A lock per key id (made on first use, forgotten when unused).
#[derive(Clone, Default)]
struct KeyLocks(Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>);

impl KeyLocks {
    async fn lock(&self, key_id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.0.lock().expect("preflight locks");
            // Those no one holds or waits for go (the map stays as small as
            // the keys being checked).
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry(key_id.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

impl KeyManager {
    /// Sets the buckets each signer must be ready for (startup, policy
    /// reload); `preflight_all` then prepares the new pairs.
    pub fn set_buckets(&self, wanted: BTreeMap<String, BTreeSet<String>>) {
        self.preflight.wanted.store(Arc::new(wanted));
    }

    /// IssueLink's check, lock-free: the region to sign `bucket` for with
    /// `key_id`, or why not.
    pub fn bucket_ready(
        &self,
        signer: &str,
        key_id: &str,
        bucket: &str,
    ) -> Result<Arc<str>, BucketRefused> {
        if let Some(s) = self
            .preflight
            .status
            .load()
            .get(key_id)
            .and_then(|k| k.get(bucket))
        {
            return match &s.outcome {
                Ok(()) => Ok(s.region.clone()),
                Err(cause) if s.transient => Err(BucketRefused::Unreachable {
                    signer: signer.to_owned(),
                    bucket: bucket.to_owned(),
                    key_id: key_id.to_owned(),
                    cause: cause.clone(),
                }),
                Err(cause) => Err(BucketRefused::Failed {
                    signer: signer.to_owned(),
                    bucket: bucket.to_owned(),
                    key_id: key_id.to_owned(),
                    cause: cause.clone(),
                }),
            };
        }
        let wanted = self
            .preflight
            .wanted
            .load()
            .get(signer)
            .is_some_and(|b| b.contains(bucket));
        Err(match wanted {
            true => BucketRefused::Pending {
                signer: signer.to_owned(),
                bucket: bucket.to_owned(),
                key_id: key_id.to_owned(),
            },
            false => BucketRefused::NotPrepared {
                signer: signer.to_owned(),
                bucket: bucket.to_owned(),
            },
        })
    }

    /// The outcomes of one key, by bucket.
    pub fn bucket_statuses(&self, key_id: &str) -> Vec<BucketStatus> {
        let mut v: Vec<BucketStatus> = self
            .preflight
            .status
            .load()
            .get(key_id)
            .map(|k| k.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.bucket.cmp(&b.bucket));
        v
    }

    /// Every wanted (signer, bucket) pair and whether the signer's active key
    /// may sign for it (false: failed, not checked yet, or no active key).
    pub fn bucket_readiness(&self) -> Vec<(String, String, Result<(), String>)> {
        let status = self.preflight.status.load();
        let mut out = Vec::new();
        for (signer, buckets) in self.preflight.wanted.load().iter() {
            let key = self.active_key(signer);
            for bucket in buckets {
                let outcome = match &key {
                    None => Err("no active key".to_owned()),
                    Some(k) => match status.get(&k.key_id).and_then(|s| s.get(bucket)) {
                        None => Err(format!("not checked yet for key {}", k.key_id)),
                        Some(s) => s
                            .outcome
                            .clone()
                            .map_err(|e| format!("key {}: {e}", k.key_id)),
                    },
                };
                out.push((signer.clone(), bucket.clone(), outcome));
            }
        }
        out
    }

    /// The pairs IssueLink refuses now, in one line for health answers.
    pub fn failing_buckets(&self) -> Option<String> {
        let failing: Vec<String> = self
            .bucket_readiness()
            .into_iter()
            .filter_map(|(signer, bucket, o)| {
                o.err()
                    .map(|e| format!("bucket {bucket} for signer {signer}: {e}"))
            })
            .collect();
        (!failing.is_empty()).then(|| failing.join("; "))
    }

    /// Prepares every pair of every signer's active key that is not ready
    /// (startup, policy reload, maintenance), and forgets old keys' outcomes.
    pub async fn preflight_all(&self) {
        let signers: Vec<String> = self.preflight.wanted.load().keys().cloned().collect();
        for signer in signers {
            if let Some(key) = self.active_key(&signer) {
                self.preflight_key(&key).await;
            }
        }
        let now = Utc::now();
        let active = self.keyring.active_key_ids();
        self.preflight.status.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.retain(|key_id, buckets| {
                active.contains(key_id)
                    || buckets.values().any(|s| now - s.checked_at < FORGET_AFTER)
            });
            m
        });
    }

    /// Prepares `key` for each bucket of its signer that it is not ready for.
    pub(super) async fn preflight_key(&self, key: &SigningKey) {
        let _one_at_a_time = self.preflight.running.lock(&key.key_id).await;
        let buckets = self
            .preflight
            .wanted
            .load()
            .get(&key.signer)
            .cloned()
            .unwrap_or_default();
        for bucket in buckets {
            let ready = self
                .preflight
                .status
                .load()
                .get(&key.key_id)
                .and_then(|k| k.get(&bucket))
                .is_some_and(|s| s.outcome.is_ok());
            if ready {
                continue;
            }
            let status = self.check_pair(key, &bucket).await;
            match &status.outcome {
                Ok(()) => tracing::info!(signer = %key.signer, key_id = %key.key_id, bucket,
                    region = %status.region, "bucket ready for the key"),
                Err(cause) => tracing::warn!(signer = %key.signer, key_id = %key.key_id, bucket,
                    cause, "bucket NOT usable by the key: links for it are refused"),
            }
            let key_id = key.key_id.clone();
            self.preflight.status.rcu(|m| {
                let mut m = HashMap::clone(m);
                m.entry(key_id.clone())
                    .or_default()
                    .insert(status.bucket.clone(), status.clone());
                m
            });
        }
    }

    /// Grants, resolves the region, probes: one pair's outcome.
    async fn check_pair(&self, key: &SigningKey, bucket: &str) -> BucketStatus {
        let mut region = self.regions.region_of(bucket);
        // The probe is the proof, the grant a means: a backend that cannot
        // grant now (down) leaves a grant made earlier in force.
        let granted = self
            .backend
            .allow_bucket(&key.signer, &key.key_id, bucket)
            .await;
        let grant_outage = granted.as_ref().is_err_and(|e| e.is_transient());
        let granted = granted.map_err(|e| format!("granting the bucket: {e}"));
        // Whether the probes' last failure was an outage (no answer, 429,
        // 5xx) or the store's refusal for want of a grant that failed so.
        let mut outage = false;
        let outcome = async {
            region = self
                .regions
                .resolve(&self.probe.http, bucket, false)
                .await
                .map_err(|e| format!("detecting the bucket's region: {e}"))?;
            let mut refreshed = false;
            let mut last = String::new();
            for attempt in 1..=PAIR_ATTEMPTS {
                let url = key
                    .presign_probe(bucket, &region)
                    .map_err(|e| e.to_string())?;
                let (status, body) = match send_probe(&self.probe.http, &url).await {
                    Ok(answer) => answer,
                    Err(e) => {
                        (last, outage) = (e, true);
                        tokio::time::sleep(backoff(attempt)).await;
                        continue;
                    }
                };
                let wrong_region = xml_field(&body, "Code") == Some("AuthorizationHeaderMalformed");
                match classify(status, &body) {
                    ProbeAnswer::Accepted | ProbeAnswer::AcceptedNarrow => return Ok(()),
                    ProbeAnswer::Refused(_)
                        if wrong_region && !refreshed && !self.regions.is_configured(bucket) =>
                    {
                        // The bucket moved, or was detected wrong: ask again.
                        refreshed = true;
                        region = self
                            .regions
                            .resolve(&self.probe.http, bucket, true)
                            .await
                            .map_err(|e| format!("detecting the bucket's region: {e}"))?;
                        continue;
                    }
                    ProbeAnswer::Refused(why) if wrong_region => {
                        return Err(format!(
                            "region mismatch: signed for {region}, the store answered {why}"
                        ));
                    }
                    ProbeAnswer::NotGranted(why) => {
                        outage = grant_outage;
                        return Err(format!("access denied: {why}"));
                    }
                    ProbeAnswer::Refused(why) => return Err(why),
                    ProbeAnswer::NotYet(why) => {
                        (last, outage) = (why, store_busy(status));
                    }
                }
                if attempt < PAIR_ATTEMPTS {
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
            Err(format!("the store did not accept the key: {last}"))
        }
        .await;
        let outcome = match (outcome, granted) {
            (Err(cause), Err(grant)) => Err(format!("{grant}; then {cause}")),
            (Ok(()), Err(grant)) => {
                tracing::warn!(signer = %key.signer, key_id = %key.key_id, bucket, grant,
                    "the store accepts the key for the bucket although granting failed (granted before)");
                Ok(())
            }
            (outcome, Ok(())) => outcome,
        };
        BucketStatus {
            bucket: bucket.to_owned(),
            region,
            transient: outcome.is_err() && outage,
            outcome,
            checked_at: Utc::now(),
        }
    }

    /// Whether `key` was checked for every bucket of its signer (ready or
    /// not): a key another replica activated needs its own preflight here.
    pub(super) fn preflight_covers(&self, key: &SigningKey) -> bool {
        let status = self.preflight.status.load();
        let checked = status.get(&key.key_id);
        self.preflight
            .wanted
            .load()
            .get(&key.signer)
            .is_none_or(|b| b.iter().all(|b| checked.is_some_and(|c| c.contains_key(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_key_s_preflight_never_waits_for_another_s() {
        let locks = KeyLocks::default();
        let _slow = locks.lock("GKslow").await;
        tokio::time::timeout(Duration::from_secs(1), locks.lock("GKother"))
            .await
            .expect("another key's preflight goes at once");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), locks.lock("GKslow"))
                .await
                .is_err(),
            "the same key's waits"
        );
    }

    #[tokio::test]
    async fn a_lock_no_one_holds_is_forgotten() {
        let locks = KeyLocks::default();
        drop(locks.lock("GKa").await);
        let _b = locks.lock("GKb").await;
        let held: Vec<String> = locks.0.lock().unwrap().keys().cloned().collect();
        assert_eq!(held, ["GKb"]);
    }
}

//! Building responses: registry rows and domain values into proto messages.

use crate::dashboard::{Verdict, Verification};
use crate::domain::{KeyBudget, KeyState, LinkState, Method, RevocationState, RotationMode};
use crate::issuance::{Reissued, SkipReason};
use crate::keys::{BucketStatus, KeyBudgets};
use crate::proto;
use crate::registry::keys::KeySummaryRow;
use crate::registry::link_summary::SummaryRow;
use crate::registry::links::{BlastRadius, LinkRow};
use crate::registry::revocation_events::EventRow;
use crate::registry::revocations::RevocationRow;
use crate::registry::signers::SignerRow;
use crate::revocation::{Cancelled, Rotation};
use chrono::{DateTime, Utc};
use uuid::Uuid;

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn link_state(state: LinkState) -> proto::LinkState {
    match state {
        LinkState::Active => proto::LinkState::Active,
        LinkState::Expired => proto::LinkState::Expired,
        LinkState::Revoked => proto::LinkState::Revoked,
    }
}

pub fn verification(v: Verification) -> proto::VerifyLinkResponse {
    let verdict = match v.verdict {
        Verdict::Ok => proto::Verdict::Ok,
        Verdict::Expired => proto::Verdict::Expired,
        Verdict::KeyInactive => proto::Verdict::KeyInactive,
        Verdict::AccessDenied => proto::Verdict::AccessDenied,
        Verdict::RegionMismatch => proto::Verdict::RegionMismatch,
        Verdict::SignatureMismatch => proto::Verdict::SignatureMismatch,
        Verdict::ObjectMissing => proto::Verdict::ObjectMissing,
        Verdict::StoreUnreachable => proto::Verdict::StoreUnreachable,
    };
    proto::VerifyLinkResponse {
        link: Some(link(v.link)),
        verdict: verdict.into(),
        expected_region: v.expected_region.unwrap_or_default(),
        store_status: v.answer.status.into(),
        store_code: v.answer.code,
        store_message: v.answer.message,
    }
}

pub fn method(m: Method) -> proto::Method {
    match m {
        Method::Get => proto::Method::Get,
        Method::Put => proto::Method::Put,
        Method::Head => proto::Method::Head,
        Method::Delete => proto::Method::Delete,
        Method::Post => proto::Method::Post,
    }
}

pub fn rotation_mode(m: RotationMode) -> proto::RotationMode {
    match m {
        RotationMode::Graceful => proto::RotationMode::Graceful,
        RotationMode::Revoke => proto::RotationMode::Revoke,
        RotationMode::Emergency => proto::RotationMode::Emergency,
    }
}

pub fn link(row: LinkRow) -> proto::Link {
    let method = Method::parse(&row.method)
        .map(method)
        .unwrap_or(proto::Method::Unspecified);
    proto::Link {
        id: row.id.to_string(),
        method: method as i32,
        bucket: row.bucket,
        object_key: row.object_key,
        caller: row.caller,
        signer: row.signer,
        key_id: row.key_id,
        issued_at: Some(timestamp(row.issued_at)),
        expires_at: Some(timestamp(row.expires_at)),
        labels: row.labels.0.into_iter().collect(),
        state: link_state(row.state) as i32,
        revocation_id: row.revocation_id.map(|r| r.to_string()).unwrap_or_default(),
        replaces_link_id: row
            .replaces_link_id
            .map(|r| r.to_string())
            .unwrap_or_default(),
        object_key_is_prefix: row.object_key_is_prefix,
    }
}

fn ids(ids: &[Uuid]) -> Vec<String> {
    ids.iter().map(Uuid::to_string).collect()
}

fn headers(headers: Vec<(String, String)>) -> Vec<proto::Header> {
    headers
        .into_iter()
        .map(|(name, value)| proto::Header { name, value })
        .collect()
}

pub fn reissued(r: Reissued) -> proto::ReissueLinksResponse {
    proto::ReissueLinksResponse {
        links: r
            .replacements
            .into_iter()
            .map(|l| proto::ReissuedLink {
                replaces_link_id: l.replaces_link_id.to_string(),
                link: Some(link(l.link)),
                url: l.url,
                headers: headers(l.headers),
            })
            .collect(),
        skipped: r
            .skipped
            .into_iter()
            .map(|s| proto::SkippedLink {
                link_id: s.link_id.to_string(),
                reason: skip_reason(s.reason) as i32,
                message: s.message,
            })
            .collect(),
        next_page_token: r.next_page_token.unwrap_or_default(),
    }
}

fn skip_reason(r: SkipReason) -> proto::SkipReason {
    match r {
        SkipReason::Quarantined => proto::SkipReason::Quarantined,
        SkipReason::PolicyDenied => proto::SkipReason::PolicyDenied,
        SkipReason::HeadersUnknown => proto::SkipReason::HeadersUnknown,
        SkipReason::ReplacementRevoked => proto::SkipReason::ReplacementRevoked,
        SkipReason::Expiring => proto::SkipReason::Expiring,
        SkipReason::BucketNotReady => proto::SkipReason::BucketNotReady,
        SkipReason::UploadForm => proto::SkipReason::UploadForm,
    }
}

pub fn revocation_event(e: EventRow) -> proto::WatchRevocationsResponse {
    let event = proto::RevocationEvent {
        sequence: e.seq.max(0) as u64,
        revocation_id: e.revocation_id.to_string(),
        caller: e.caller,
        signer: e.signer,
        key_id: e.key_id,
        links: e.links.max(0) as u64,
        quarantined: e.quarantined.max(0) as u64,
        earliest_expiry: Some(timestamp(e.earliest_expiry)),
        at: Some(timestamp(e.at)),
    };
    proto::WatchRevocationsResponse { event: Some(event) }
}

pub fn blast_radius(row: &BlastRadius) -> proto::BlastRadius {
    let row = row.clone();
    let counts = |v: Vec<(String, i64)>| {
        v.into_iter()
            .map(|(name, n)| proto::Count {
                name,
                count: n.max(0) as u64,
            })
            .collect()
    };
    proto::BlastRadius {
        key_id: row.key_id,
        signer: row.signer,
        outstanding_links: row.outstanding_links.max(0) as u64,
        earliest_expiry: row.earliest_expiry.map(timestamp),
        latest_expiry: row.latest_expiry.map(timestamp),
        top_buckets: counts(row.top_buckets),
        top_callers: counts(row.top_callers),
        per_method: counts(row.per_method),
        sample_link_ids: row.sample_link_ids.iter().map(Uuid::to_string).collect(),
        computed_at: Some(timestamp(row.computed_at)),
    }
}

pub fn summary_group(row: SummaryRow) -> proto::LinkSummaryGroup {
    proto::LinkSummaryGroup {
        group: row.group,
        active: row.active.max(0) as u64,
        expired: row.expired.max(0) as u64,
        revoked: row.revoked.max(0) as u64,
        latest_expiry: row.latest_expiry.map(timestamp),
    }
}

fn revocation_state(s: RevocationState) -> proto::RevocationState {
    match s {
        RevocationState::Running => proto::RevocationState::Running,
        RevocationState::Succeeded => proto::RevocationState::Succeeded,
        RevocationState::Failed => proto::RevocationState::Failed,
        RevocationState::Cancelled => proto::RevocationState::Cancelled,
    }
}

pub fn revocation(r: RevocationRow) -> proto::Revocation {
    let mode = rotation_mode(r.mode);
    proto::Revocation {
        id: r.id.to_string(),
        requested_by: r.requested_by,
        reason: r.reason,
        mode: mode as i32,
        signer: r.signer,
        old_key_id: r.old_key_id.unwrap_or_default(),
        new_key_id: r.new_key_id.unwrap_or_default(),
        blast_radius: Some(blast_radius(&r.blast_radius.0)),
        links_revoked: r.links_revoked as u64,
        steps: r
            .steps
            .0
            .into_iter()
            .map(|s| proto::Step {
                name: s.name,
                started_at: Some(timestamp(s.started_at)),
                finished_at: Some(timestamp(s.finished_at)),
                error: s.error.unwrap_or_default(),
            })
            .collect(),
        state: revocation_state(r.state) as i32,
        created_at: Some(timestamp(r.created_at)),
        finished_at: r.finished_at.map(timestamp),
        dry_run: false,
        error: r.error.unwrap_or_default(),
        quarantined_link_ids: ids(&r.quarantined_link_ids),
    }
}

pub fn rotation(r: Rotation) -> proto::Revocation {
    match r {
        Rotation::Ran(row) => revocation(*row),
        Rotation::DryRun {
            signer,
            mode,
            old_key_id,
            blast_radius: radius,
            steps,
            quarantined_link_ids,
        } => proto::Revocation {
            signer,
            mode: rotation_mode(mode) as i32,
            old_key_id: old_key_id.unwrap_or_default(),
            blast_radius: Some(blast_radius(&radius)),
            steps: steps
                .iter()
                .map(|s| proto::Step {
                    name: s.as_str().into(),
                    ..Default::default()
                })
                .collect(),
            state: proto::RevocationState::Planned as i32,
            dry_run: true,
            quarantined_link_ids: ids(&quarantined_link_ids),
            ..Default::default()
        },
    }
}

fn key_state(s: KeyState) -> proto::KeyState {
    match s {
        KeyState::Pending => proto::KeyState::Pending,
        KeyState::Active => proto::KeyState::Active,
        KeyState::Retired => proto::KeyState::Retired,
        KeyState::Inactive => proto::KeyState::Inactive,
        KeyState::Deleted => proto::KeyState::Deleted,
    }
}

pub fn cancelled(c: Cancelled) -> proto::CancelRevocationResponse {
    proto::CancelRevocationResponse {
        revocation: Some(revocation(c.revocation)),
        live_keys: c
            .live_keys
            .iter()
            .map(|k| signing_key(k, Vec::new()))
            .collect(),
    }
}

fn signing_key(k: &KeySummaryRow, buckets: Vec<BucketStatus>) -> proto::SigningKey {
    proto::SigningKey {
        key_id: k.key_id.clone(),
        signer: k.signer.clone(),
        state: key_state(k.state) as i32,
        created_at: Some(timestamp(k.created_at)),
        outstanding_links: k.outstanding_links as u64,
        latest_expiry: k.latest_expiry.map(timestamp),
        buckets: buckets
            .into_iter()
            .map(|b| proto::BucketStatus {
                ready: b.outcome.is_ok(),
                cause: b.outcome.err().unwrap_or_default(),
                region: b.region.to_string(),
                checked_at: Some(timestamp(b.checked_at)),
                bucket: b.bucket,
            })
            .collect(),
        budget_share: None,
    }
}

/// ListSigningKeys: each signer's keys, each with its buckets' preflight.
pub fn signers(
    signers: Vec<SignerRow>,
    keys: Vec<KeySummaryRow>,
    buckets: impl Fn(&str) -> Vec<BucketStatus>,
    budgets: &KeyBudgets,
) -> proto::ListSigningKeysResponse {
    let now = chrono::Utc::now();
    proto::ListSigningKeysResponse {
        signers: signers
            .into_iter()
            .map(|s| {
                let budget = budgets.get(&s.name);
                proto::Signer {
                    keys: keys
                        .iter()
                        .filter(|k| k.signer == s.name)
                        .map(|k| proto::SigningKey {
                            budget_share: budget.and_then(|b| budget_share(&b, k, now)),
                            ..signing_key(k, buckets(&k.key_id))
                        })
                        .collect(),
                    budget: budget.map(|b| proto::KeyBudget {
                        max_outstanding_links: b.max_links.unwrap_or(0),
                        max_age: b.max_age.map(duration),
                    }),
                    name: s.name,
                    backend: s.backend,
                }
            })
            .collect(),
    }
}

/// A live key's share of its signer's budget: its outstanding links, and the
/// time it signed (from activation to retirement, or now).
fn budget_share(
    budget: &KeyBudget,
    k: &KeySummaryRow,
    now: DateTime<Utc>,
) -> Option<proto::KeyBudgetShare> {
    if !matches!(k.state, KeyState::Active | KeyState::Retired) {
        return None;
    }
    let signed = k.retired_at.unwrap_or(now) - k.activated_at.unwrap_or(k.created_at);
    let age = signed.to_std().unwrap_or_default();
    let (links, age_share) = budget.share(k.outstanding_links.max(0) as u64, age);
    Some(proto::KeyBudgetShare {
        outstanding_share: links.unwrap_or(0.0),
        age: Some(duration(age)),
        age_share: age_share.unwrap_or(0.0),
    })
}

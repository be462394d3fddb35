//! The audit trail: who asked for what, when, and what came of it. Every
//! KeyService call is recorded (whatever its outcome), and so is every denied
//! request: unauthenticated ones (caller unknown) and those the policy refused.
//!
//! Nothing recorded is a bearer credential: targets and messages are cut short,
//! and any word that looks like a URL or a signature is replaced before it is
//! written. Denials are recorded under a global rate limit, so a flood of
//! hostile requests cannot turn into a flood of writes; what was not recorded is
//! counted and logged.

use crate::registry::{self, audit::AuditRow};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sqlx::PgPool;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tonic::Code;

const MAX_TARGET_CHARS: usize = 300;
const MAX_MESSAGE_CHARS: usize = 500;

/// One thing that happened, before it is cleaned and written.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub caller: Option<String>,
    pub peer: Option<String>,
    /// The gRPC method, e.g. `presignd.v1.KeyService/RotateKey`.
    pub rpc: String,
    pub target: String,
    pub code: Code,
    pub message: String,
}

#[derive(Clone)]
pub struct Auditor {
    pool: PgPool,
    denials: Arc<DefaultDirectRateLimiter>,
    suppressed: Arc<AtomicU64>,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auditor")
    }
}

impl Auditor {
    /// `denials_per_sec`: at most this many denied requests are recorded per
    /// second (with the same burst); 0 means no limit.
    pub fn new(pool: PgPool, denials_per_sec: u32) -> Self {
        let rate = NonZeroU32::new(denials_per_sec).unwrap_or(NonZeroU32::MAX);
        Self {
            pool,
            denials: Arc::new(RateLimiter::direct(Quota::per_second(rate))),
            suppressed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Writes the event and waits for it. A failed write is logged, not
    /// returned: the call it describes already happened.
    pub async fn record(&self, event: AuditEvent) {
        let row = to_row(event);
        if let Err(e) = registry::audit::insert(&self.pool, &row).await {
            tracing::error!(
                error = %e, rpc = %row.rpc, code = %row.code,
                caller = row.caller.as_deref().unwrap_or("-"),
                "could not write an audit event"
            );
        }
    }

    /// Records a denied request, unless denials arrive faster than the limit.
    pub async fn record_denial(&self, event: AuditEvent) {
        if self.admit_denial() {
            self.record(event).await;
        }
    }

    /// As `record_denial`, without waiting (for synchronous interceptors).
    pub fn record_denial_detached(&self, event: AuditEvent) {
        if self.admit_denial()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let me = self.clone();
            handle.spawn(async move { me.record(event).await });
        }
    }

    fn admit_denial(&self) -> bool {
        if self.denials.check().is_ok() {
            let skipped = self.suppressed.swap(0, Ordering::Relaxed);
            if skipped > 0 {
                tracing::warn!(
                    skipped,
                    "denied requests arrived faster than the audit limit; these were not recorded"
                );
            }
            true
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

fn to_row(e: AuditEvent) -> AuditRow {
    AuditRow {
        id: uuid::Uuid::now_v7(),
        at: chrono::Utc::now(),
        caller: e.caller,
        peer: e.peer,
        rpc: clean(&e.rpc, 200),
        target: clean(&e.target, MAX_TARGET_CHARS),
        code: code_name(e.code).to_owned(),
        message: clean(&e.message, MAX_MESSAGE_CHARS),
    }
}

/// Control characters out, anything credential-like redacted, length capped.
pub fn clean(text: &str, max_chars: usize) -> String {
    let words: Vec<String> = text
        .split(' ')
        .map(|w| {
            if looks_like_credential(w) {
                "<redacted>".to_owned()
            } else {
                w.chars().filter(|c| !c.is_control()).collect()
            }
        })
        .collect();
    let joined = words.join(" ");
    if joined.chars().count() > max_chars {
        let mut cut: String = joined.chars().take(max_chars).collect();
        cut.push('…');
        cut
    } else {
        joined
    }
}

/// Whether a word looks like a URL or a piece of a presigned one.
pub fn looks_like_credential(word: &str) -> bool {
    let lower = word.to_ascii_lowercase();
    lower.contains("://") || lower.contains("x-amz-") || lower.contains("signature=")
}

/// The canonical upper-case name of a gRPC code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The gRPC method a request is for, put in its extensions by `tag_rpc` (a
/// layer in front of every service), so interceptors can name it.
#[derive(Debug, Clone)]
pub struct RpcPath(pub String);

/// Tags a request with its gRPC method (`/pkg.Service/Method` → `pkg.Service/Method`).
pub fn tag_rpc<B>(mut req: tonic::codegen::http::Request<B>) -> tonic::codegen::http::Request<B> {
    let path = req.uri().path().trim_start_matches('/').to_owned();
    req.extensions_mut().insert(RpcPath(path));
    req
}

/// The gRPC method of a request, as tagged by `tag_rpc`.
pub fn rpc_of<T>(req: &tonic::Request<T>) -> String {
    req.extensions()
        .get::<RpcPath>()
        .map(|p| p.0.clone())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_signatures_and_tokens_are_redacted() {
        let m = clean(
            "leaked https://s3/b/k?X-Amz-Signature=abc and X-Amz-Credential=GK1",
            500,
        );
        assert!(
            !m.contains("https") && !m.contains("abc") && !m.contains("GK1"),
            "{m}"
        );
        assert!(m.starts_with("leaked <redacted>"), "{m}");
    }

    #[test]
    fn long_text_is_cut_and_control_characters_dropped() {
        assert_eq!(clean("a\nb", 10), "ab");
        assert_eq!(clean(&"x".repeat(20), 5), "xxxxx…");
    }
}

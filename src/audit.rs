//! The audit trail: who asked for what, when, and what came of it. Every
//! KeyService call by an admin is recorded (whatever its outcome), and so is
//! every denied request: unauthenticated ones (caller unknown), those the
//! policy refused, and non-admins on KeyService.
//!
//! Nothing recorded is a bearer credential: targets and messages are cut short,
//! and any word that looks like a URL or a signature is replaced before it is
//! written. Denials cannot grow the table without bound: repeats from one peer
//! for one cause (caller, RPC, code, message) within a window (`Denials`) are
//! one row when first seen and one more, carrying their `count`, when the
//! window closes; windows opened per second have a global limit, and what was
//! not recorded is counted and logged.

use crate::registry::{self, audit::AuditRow};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sqlx::PgPool;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tonic::Code;

const MAX_TARGET_CHARS: usize = 300;
const MAX_MESSAGE_CHARS: usize = 500;
/// Denials waiting for the writer; past that they are counted, not recorded.
const DENIAL_QUEUE: usize = 4096;
/// Windows open at once (distinct peers and causes within a window).
const MAX_OPEN_WINDOWS: usize = 10_000;

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

type Writer = (oneshot::Sender<()>, tokio::task::JoinHandle<()>);

#[derive(Clone)]
pub struct Auditor {
    pool: PgPool,
    denials: mpsc::Sender<AuditEvent>,
    suppressed: Arc<AtomicU64>,
    writer: Arc<Mutex<Option<Writer>>>,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auditor")
    }
}

impl Auditor {
    /// Starts the denials' writer. `denials_per_sec`: at most this many
    /// windows open per second (0: no limit); `window`: how long repeats of
    /// one denial are counted before their row is written.
    pub fn new(pool: PgPool, denials_per_sec: u32, window: Duration) -> Self {
        let (tx, rx) = mpsc::channel(DENIAL_QUEUE);
        let (stop, stopped) = oneshot::channel();
        let suppressed = Arc::new(AtomicU64::new(0));
        let denials = Denials::new(window, denials_per_sec, suppressed.clone());
        let task = tokio::spawn(write_denials(pool.clone(), rx, stopped, denials));
        Self {
            pool,
            denials: tx,
            suppressed,
            writer: Arc::new(Mutex::new(Some((stop, task)))),
        }
    }

    /// Writes the event and waits for it. A failed write is logged, not
    /// returned: the call it describes already happened.
    pub async fn record(&self, event: AuditEvent) {
        write(&self.pool, to_row(event, 1)).await;
    }

    /// Records a denied request in the background (interceptors cannot wait),
    /// aggregated with its repeats.
    pub fn record_denial(&self, event: AuditEvent) {
        if self.denials.try_send(event).is_err() {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Closes every open window (their counts are written) and stops the
    /// writer; denials after this are not recorded. On shutdown.
    pub async fn close(&self) {
        let writer = self.writer.lock().expect("audit writer").take();
        if let Some((stop, task)) = writer {
            let _ = stop.send(());
            let _ = task.await;
        }
    }
}

/// Writes one audit row; a passing outage (no connection within the pool's
/// timeout, as under load or while Postgres restarts) is retried a few times,
/// since a lost row is a hole in the trail.
async fn write(pool: &PgPool, row: AuditRow) {
    let mut backoff = Duration::from_millis(100);
    let mut result = registry::audit::insert(pool, &row).await;
    for _ in 0..5 {
        match &result {
            Err(e) if e.is_unavailable() => {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                result = registry::audit::insert(pool, &row).await;
            }
            _ => break,
        }
    }
    if let Err(e) = result {
        tracing::error!(
            error = %e, rpc = %row.rpc, code = %row.code,
            caller = row.caller.as_deref().unwrap_or("-"),
            "could not write an audit event"
        );
    }
}

/// The denials' writer: one row when a window opens, one when it closes with
/// repeats; every open window is closed when stopped.
async fn write_denials(
    pool: PgPool,
    mut events: mpsc::Receiver<AuditEvent>,
    mut stop: oneshot::Receiver<()>,
    mut denials: Denials,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let rows = tokio::select! {
            event = events.recv() => match event {
                Some(e) => denials.note(e, Instant::now()),
                None => break,
            },
            _ = tick.tick() => denials.close_expired(Instant::now()),
            _ = &mut stop => break,
        };
        for row in rows {
            write(&pool, row).await;
        }
    }
    while let Ok(e) = events.try_recv() {
        for row in denials.note(e, Instant::now()) {
            write(&pool, row).await;
        }
    }
    for row in denials.close_all() {
        write(&pool, row).await;
    }
}

/// What makes two denials the same: the peer's address (not its port: a new
/// connection is the same peer) and the cause.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Cause {
    peer: Option<String>,
    caller: Option<String>,
    rpc: String,
    code: Code,
    message: String,
}

impl Cause {
    fn of(e: &AuditEvent) -> Self {
        let peer = e
            .peer
            .as_deref()
            .map(|p| match p.parse::<std::net::SocketAddr>() {
                Ok(addr) => addr.ip().to_string(),
                Err(_) => p.to_owned(),
            });
        Self {
            peer,
            caller: e.caller.clone(),
            rpc: e.rpc.clone(),
            code: e.code,
            message: e.message.clone(),
        }
    }
}

struct Window {
    opened: Instant,
    first: AuditEvent,
    repeats: u64,
}

/// Repeated denials folded into windows: the first of a (peer, cause) is
/// recorded at once; the repeats within `window` are counted and recorded as
/// one row carrying their count when the window closes.
pub struct Denials {
    window: Duration,
    open: HashMap<Cause, Window>,
    opened_per_sec: DefaultDirectRateLimiter,
    suppressed: Arc<AtomicU64>,
}

impl Denials {
    pub fn new(window: Duration, per_sec: u32, suppressed: Arc<AtomicU64>) -> Self {
        let rate = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MAX);
        Self {
            window,
            open: HashMap::new(),
            opened_per_sec: RateLimiter::direct(Quota::per_second(rate)),
            suppressed,
        }
    }

    /// The rows to write now for one more denial at `now`.
    pub fn note(&mut self, event: AuditEvent, now: Instant) -> Vec<AuditRow> {
        let cause = Cause::of(&event);
        let mut rows = Vec::new();
        if let Some(w) = self.open.get_mut(&cause) {
            if now.duration_since(w.opened) < self.window {
                w.repeats += 1;
                return rows;
            }
            let w = self.open.remove(&cause).expect("just seen");
            rows.extend(summary(w));
        }
        if self.open.len() >= MAX_OPEN_WINDOWS {
            rows.extend(self.close_expired(now));
        }
        if self.open.len() >= MAX_OPEN_WINDOWS || self.opened_per_sec.check().is_err() {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return rows;
        }
        let skipped = self.suppressed.swap(0, Ordering::Relaxed);
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "denied requests arrived faster than the audit limit; these were not recorded"
            );
        }
        rows.push(to_row(event.clone(), 1));
        self.open.insert(
            cause,
            Window {
                opened: now,
                first: event,
                repeats: 0,
            },
        );
        rows
    }

    /// The count rows of the windows that are over at `now`.
    pub fn close_expired(&mut self, now: Instant) -> Vec<AuditRow> {
        let over: Vec<Cause> = self
            .open
            .iter()
            .filter(|(_, w)| now.duration_since(w.opened) >= self.window)
            .map(|(c, _)| c.clone())
            .collect();
        over.into_iter()
            .filter_map(|c| self.open.remove(&c).and_then(summary))
            .collect()
    }

    /// The count rows of every open window.
    pub fn close_all(&mut self) -> Vec<AuditRow> {
        self.open.drain().filter_map(|(_, w)| summary(w)).collect()
    }
}

/// The row standing for a window's repeats (none if the first was alone).
fn summary(w: Window) -> Option<AuditRow> {
    (w.repeats > 0).then(|| to_row(w.first, w.repeats))
}

fn to_row(e: AuditEvent, count: u64) -> AuditRow {
    AuditRow {
        id: uuid::Uuid::now_v7(),
        at: chrono::Utc::now(),
        caller: e.caller,
        peer: e.peer,
        rpc: clean(&e.rpc, 200),
        target: clean(&e.target, MAX_TARGET_CHARS),
        code: crate::telemetry::rpc::code_name(e.code).to_owned(),
        message: clean(&e.message, MAX_MESSAGE_CHARS),
        count: i64::try_from(count).unwrap_or(i64::MAX),
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

    fn unknown_token(peer: &str) -> AuditEvent {
        AuditEvent {
            caller: None,
            peer: Some(peer.to_owned()),
            rpc: "presignd.v1.LinkService/IssueLink".into(),
            target: String::new(),
            code: Code::Unauthenticated,
            message: "unknown token".into(),
        }
    }

    #[test]
    fn repeats_of_a_denial_are_one_row_then_one_row_with_their_count() {
        let window = Duration::from_secs(60);
        let mut d = Denials::new(window, 0, Arc::default());
        let t0 = Instant::now();
        let mut rows = Vec::new();
        for i in 0..1000u64 {
            // A new connection each time: another port, the same peer.
            let peer = format!("10.0.0.7:{}", 40000 + i);
            rows.extend(d.note(unknown_token(&peer), t0 + Duration::from_millis(i)));
        }
        assert_eq!(rows.len(), 1);
        assert!(d.close_expired(t0 + window / 2).is_empty(), "still open");
        rows.extend(d.close_expired(t0 + window));
        let counts: Vec<i64> = rows.iter().map(|r| r.count).collect();
        assert_eq!(counts, [1, 999]);
        // The next window starts afresh; another peer has its own.
        let later = t0 + window * 2;
        assert_eq!(d.note(unknown_token("10.0.0.7:1"), later).len(), 1);
        assert_eq!(d.note(unknown_token("10.0.0.8:1"), later).len(), 1);
        assert!(
            d.close_all().is_empty(),
            "no repeats: nothing more to write"
        );
    }

    #[test]
    fn a_repeat_after_the_window_writes_the_old_count_and_opens_another() {
        let window = Duration::from_secs(60);
        let mut d = Denials::new(window, 0, Arc::default());
        let t0 = Instant::now();
        d.note(unknown_token("10.0.0.7:1"), t0);
        d.note(unknown_token("10.0.0.7:2"), t0);
        let rows = d.note(unknown_token("10.0.0.7:3"), t0 + window);
        assert_eq!(rows.iter().map(|r| r.count).collect::<Vec<_>>(), [1, 1]);
        assert_eq!(d.open.len(), 1);
    }

    #[test]
    fn long_text_is_cut_and_control_characters_dropped() {
        assert_eq!(clean("a\nb", 10), "ab");
        assert_eq!(clean(&"x".repeat(20), 5), "xxxxx…");
    }
}

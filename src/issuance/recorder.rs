//! Group commit of link rows. Every IssueLink hands its row to the recorder and
//! waits for the answer; a few workers each take whatever rows are waiting (up
//! to a batch), record them in one statement under shared issuance locks of
//! their keys (`links::record`: one round trip, one commit), and only then
//! answer each request. The URL still leaves only after its own row is
//! committed (invariant 1), but N links cost one WAL flush instead of N.
//!
//! A row carrying a request id claims it in the same transaction; a row whose
//! id already names a live link is not inserted and is answered
//! `RequestIdTaken`, the rest of the batch commits as usual.
//!
//! A commit whose answer does not come within the recorder's timeout is
//! abandoned: its requests are answered unavailable (whether it committed is
//! unknown, so no URL leaves) and its connection, mid-statement, is closed
//! rather than returned to the pool. A registry that stops answering without
//! closing the connection holds a worker that long, not until TCP gives up.

use crate::registry::{self, links::NewLink};
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

/// How long a worker keeps its connection with no row to write before it
/// hands it back to the pool.
const HOLD_IDLE: Duration = Duration::from_secs(1);

/// What became of one row. A batch's error is cloned to every request in it.
// Moved once through a oneshot per link: a Box would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Recorded {
    /// Committed: the link back.
    Committed(NewLink),
    /// Its key is no longer active: nothing was written; sign again with the
    /// current key.
    KeyNotActive,
    /// Its caller's request id names a link that has not expired (an earlier
    /// or concurrent request's, committed): nothing was written; that link is
    /// the answer (`link_requests::find`).
    RequestIdTaken,
}

struct Pending {
    link: NewLink,
    done: oneshot::Sender<Result<Recorded, registry::Error>>,
}

#[derive(Clone)]
pub struct Recorder {
    queue: mpsc::Sender<Pending>,
}

impl Recorder {
    /// Starts `workers` batch writers on `pool`, each committing up to
    /// `max_batch` links at a time and waiting at most `timeout` for a
    /// commit's answer. They stop when every `Recorder` is dropped.
    pub fn start(pool: PgPool, workers: usize, max_batch: usize, timeout: Duration) -> Self {
        let (queue, rx) = mpsc::channel::<Pending>(max_batch * workers.max(1) * 4);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..workers.max(1) {
            tokio::spawn(work(pool.clone(), rx.clone(), max_batch.max(1), timeout));
        }
        Self { queue }
    }

    /// Records `link` and waits for its commit.
    pub async fn record(&self, link: NewLink) -> Result<Recorded, registry::Error> {
        // Unavailable: whether the row was committed is unknown, no URL leaves.
        let stopped = || registry::Error::new("recorder", sqlx::Error::WorkerCrashed);
        let (done, answer) = oneshot::channel();
        if self.queue.send(Pending { link, done }).await.is_err() {
            return Err(stopped());
        }
        // A worker that died with our row gives no answer: whether it committed
        // is unknown, and without certainty no URL may leave.
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// A worker keeps the connection it wrote with while rows keep coming: taking
/// one from the pool pings it first (a round trip to Postgres, and a wake-up
/// of its backend, per batch). It hands it back after `HOLD_IDLE` without a
/// row, and after an error, so a broken connection is checked (and replaced)
/// by the pool's ping before its next use.
async fn work(
    pool: PgPool,
    rx: Arc<Mutex<mpsc::Receiver<Pending>>>,
    max_batch: usize,
    timeout: Duration,
) {
    let mut held: Option<PoolConnection<Postgres>> = None;
    loop {
        let mut batch = Vec::with_capacity(max_batch);
        {
            let mut rx = rx.lock().await;
            let taken =
                match tokio::time::timeout(HOLD_IDLE, rx.recv_many(&mut batch, max_batch)).await {
                    Ok(n) => n,
                    Err(_) => {
                        held = None; // idle: back to the pool
                        rx.recv_many(&mut batch, max_batch).await
                    }
                };
            if taken == 0 {
                return; // every sender is gone
            }
            // The batch goes at once with whatever was queued. A pass of the
            // scheduler first (to let running requests hand in their rows)
            // made batches ~10% fuller but put the commit behind every task
            // the last answers woke: 12% fewer links a second in the
            // closed loop (medians; docs/BENCHMARKS.md, 2026-12-03).
        }
        let started = std::time::Instant::now();
        let mut outcome = commit(&pool, &mut held, &batch, timeout).await;
        if let Err(e) = &outcome
            && e.is_lock_conflict()
        {
            // Nothing was committed and no URL has left: run the batch again once.
            tracing::warn!(error = %e, rows = batch.len(), "link batch aborted by a lock conflict; retrying it");
            outcome = commit(&pool, &mut held, &batch, timeout).await;
        }
        crate::metrics::record_link_commit(started.elapsed(), batch.len());
        for p in batch {
            let recorded = match &outcome {
                Ok(c) if !c.active_keys.contains(&p.link.key_id) => Ok(Recorded::KeyNotActive),
                Ok(c) if p.link.request.is_some() && !c.claimed.contains(&p.link.id) => {
                    Ok(Recorded::RequestIdTaken)
                }
                Ok(_) => Ok(Recorded::Committed(p.link)),
                Err(e) => Err(e.clone()),
            };
            let _ = p.done.send(recorded);
        }
    }
}

/// One statement, its own transaction: lock the batch's keys, claim its
/// request ids, insert the rows whose key is still active (and whose id, if
/// any, was claimed), commit. On the worker's held connection, taken from
/// `pool` if it holds none; dropped (back to the pool) on an error, closed
/// if the answer does not come within `timeout`.
async fn commit(
    pool: &PgPool,
    held: &mut Option<PoolConnection<Postgres>>,
    batch: &[Pending],
    timeout: Duration,
) -> Result<Committed, registry::Error> {
    let mut keys: Vec<&str> = batch.iter().map(|p| p.link.key_id.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    let rows: Vec<&NewLink> = batch.iter().map(|p| &p.link).collect();
    let conn = match held {
        Some(c) => c,
        None => held.insert(
            pool.acquire()
                .await
                .map_err(|e| registry::Error::new("recorder", e))?,
        ),
    };
    let written =
        match tokio::time::timeout(timeout, registry::links::record(&mut **conn, &keys, &rows))
            .await
        {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => {
                *held = None;
                return Err(e);
            }
            Err(_) => {
                // Returned to the pool, a connection cut off mid-statement is
                // pinged first, and that ping would wait as long as TCP does.
                if let Some(mut conn) = held.take() {
                    conn.close_on_drop();
                }
                let silence = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {timeout:?}; whether the batch committed is unknown"),
                );
                return Err(registry::Error::new(
                    "links::record",
                    sqlx::Error::Io(silence),
                ));
            }
        };
    Ok(Committed {
        active_keys: written.active_keys.into_iter().collect(),
        claimed: written.claimed.into_iter().collect(),
    })
}

struct Committed {
    active_keys: HashSet<String>,
    /// Links whose request id the batch claimed (and so inserted).
    claimed: HashSet<Uuid>,
}

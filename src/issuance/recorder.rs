//! Group commit of link rows. Every IssueLink hands its row to the recorder and
//! waits for the answer; a few workers each take whatever rows are waiting (up
//! to a batch), record them in one statement under shared issuance locks of
//! their keys (`links::record`: one round trip, one commit), and only then
//! answer each request. The URL still leaves only after its own row is
//! committed (invariant 1), but N links cost one WAL flush instead of N.
//!
//! One commit is in flight at a time unless it is slow: a batch that finds
//! another commit under way keeps taking rows until it ends (or the batch is
//! full), and goes alongside it only once it has lasted `OVERLAP_AFTER`
//! (`CommitGate`). Two commits at once shared PostgreSQL's CPU and split the
//! rows into smaller batches, each paying a batch's fixed cost.
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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use uuid::Uuid;

/// How long a worker keeps its connection with no row to write before it
/// hands it back to the pool.
const HOLD_IDLE: Duration = Duration::from_secs(1);

/// How long a commit in flight holds the next batch back (filling) before
/// that batch goes alongside it. Above a commit's usual time under full load
/// (~1 ms for 40 links here), so batches do not split in the common case;
/// short, so a commit that waits (on a key's state change, a slow flush, a
/// registry that stopped answering) holds the next one back only this long
/// (docs/BENCHMARKS.md, 2026-12-03: 1 and 2 ms measured alike).
const OVERLAP_AFTER: Duration = Duration::from_millis(2);

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
        let gate = Arc::new(CommitGate::new(OVERLAP_AFTER));
        for _ in 0..workers.max(1) {
            let (pool, rx, gate) = (pool.clone(), rx.clone(), gate.clone());
            tokio::spawn(work(pool, rx, gate, max_batch.max(1), timeout));
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
/// by the pool's ping before its next use. The worker that holds the queue
/// also waits at the gate with it: the other workers wait for the queue.
async fn work(
    pool: PgPool,
    rx: Arc<Mutex<mpsc::Receiver<Pending>>>,
    gate: Arc<CommitGate>,
    max_batch: usize,
    timeout: Duration,
) {
    let mut held: Option<PoolConnection<Postgres>> = None;
    loop {
        let mut batch = Vec::with_capacity(max_batch);
        let in_flight = {
            let mut rx = rx.lock().await;
            let taken =
                match tokio::time::timeout(HOLD_IDLE, rx.recv_many(&mut batch, max_batch)).await {
                    Ok(n) => n,
                    Err(_) => {
                        held = None; // idle: back to the pool
                        rx.recv_many(&mut batch, max_batch).await
                    }
                };
            if taken == 0 || gate.fill(&mut rx, &mut batch, max_batch).await {
                return; // every sender is gone
            }
            // No pass of the scheduler before the batch goes: it made batches
            // ~10% fuller but put the commit behind every task the last
            // answers woke (docs/BENCHMARKS.md, 2026-12-03).
            // In flight before the queue is let go: the next worker to take
            // it finds this commit under way and fills behind it.
            gate.enter()
        };
        let started = std::time::Instant::now();
        let mut outcome = commit(&pool, &mut held, &batch, timeout).await;
        if let Err(e) = &outcome
            && e.is_lock_conflict()
        {
            // Nothing was committed and no URL has left: run the batch again once.
            tracing::warn!(error = %e, rows = batch.len(), "link batch aborted by a lock conflict; retrying it");
            outcome = commit(&pool, &mut held, &batch, timeout).await;
        }
        drop(in_flight); // the next batch goes now, not after these answers
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

/// Keeps group commits one at a time unless one is slow (module doc). A
/// commit counts from `enter` until its `InFlight` is dropped.
struct CommitGate {
    in_flight: AtomicUsize,
    /// When the newest commit in flight started: µs since `epoch`.
    newest: AtomicU64,
    epoch: tokio::time::Instant,
    ended: Notify,
    overlap_after: Duration,
}

/// A commit in flight; dropping it ends it at the gate.
struct InFlight<'a>(&'a CommitGate);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.ended.notify_waiters();
    }
}

impl CommitGate {
    fn new(overlap_after: Duration) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            newest: AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
            ended: Notify::new(),
            overlap_after,
        }
    }

    fn enter(&self) -> InFlight<'_> {
        let now = self.epoch.elapsed().as_micros() as u64;
        self.newest.store(now, Ordering::SeqCst);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self)
    }

    /// Takes more rows from `rx` into `batch` while another commit is in
    /// flight, until none is, the batch holds `max_batch`, or the newest
    /// commit has lasted `overlap_after`. True if every sender is gone.
    async fn fill<T>(
        &self,
        rx: &mut mpsc::Receiver<T>,
        batch: &mut Vec<T>,
        max_batch: usize,
    ) -> bool {
        loop {
            // Registered before the count is read: an end between the two
            // still wakes this wait.
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 || batch.len() >= max_batch {
                return false;
            }
            let newest = Duration::from_micros(self.newest.load(Ordering::SeqCst));
            let deadline = self.epoch + newest + self.overlap_after;
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            let room = max_batch - batch.len();
            tokio::select! {
                _ = &mut ended => {}
                // Cancel-safe: rows it took are in `batch`.
                taken = rx.recv_many(batch, room) => if taken == 0 { return true },
                _ = tokio::time::sleep_until(deadline) => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The timer's resolution is a millisecond.
    const AFTER: Duration = Duration::from_millis(10);

    #[tokio::test(start_paused = true)]
    async fn a_batch_goes_at_once_when_no_commit_is_in_flight() {
        let gate = CommitGate::new(AFTER);
        let (tx, mut rx) = mpsc::channel(8);
        tx.send(2).await.unwrap();
        let mut batch = vec![1];
        let t0 = tokio::time::Instant::now();
        assert!(!gate.fill(&mut rx, &mut batch, 8).await);
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert_eq!(batch, [1], "nothing taken: the batch went as it was");
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_fills_while_a_commit_is_in_flight_and_goes_when_it_ends() {
        let gate = Arc::new(CommitGate::new(AFTER));
        let (tx, mut rx) = mpsc::channel(8);
        let in_flight = gate.enter();
        let waiting = {
            let gate = gate.clone();
            tokio::spawn(async move {
                let mut batch = vec![1];
                let t0 = tokio::time::Instant::now();
                let closed = gate.fill(&mut rx, &mut batch, 8).await;
                (closed, batch, t0.elapsed())
            })
        };
        for row in 2..=4 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            tx.send(row).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        drop(in_flight);
        let (closed, batch, waited) = waiting.await.unwrap();
        assert!(!closed);
        assert_eq!(batch, [1, 2, 3, 4], "the rows that came meanwhile");
        assert_eq!(waited, Duration::from_millis(4), "until the commit ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_commit_holds_the_next_batch_back_only_overlap_after() {
        let gate = CommitGate::new(AFTER);
        let (_tx, mut rx) = mpsc::channel::<u32>(8);
        let _stuck = gate.enter();
        let mut batch = vec![1];
        let t0 = tokio::time::Instant::now();
        assert!(!gate.fill(&mut rx, &mut batch, 8).await);
        assert_eq!(t0.elapsed(), AFTER);
        assert_eq!(gate.in_flight.load(Ordering::SeqCst), 1, "still in flight");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_without_waiting() {
        let gate = CommitGate::new(AFTER);
        let (tx, mut rx) = mpsc::channel(8);
        let _in_flight = gate.enter();
        tx.send(3).await.unwrap();
        let mut batch = vec![1, 2];
        let t0 = tokio::time::Instant::now();
        assert!(!gate.fill(&mut rx, &mut batch, 3).await);
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert_eq!(batch, [1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_waiting_at_the_gate_sees_its_senders_gone() {
        let gate = CommitGate::new(AFTER);
        let (tx, mut rx) = mpsc::channel::<u32>(8);
        let _in_flight = gate.enter();
        drop(tx);
        assert!(gate.fill(&mut rx, &mut vec![1], 8).await);
    }
}

//! Group commit of link rows. Every IssueLink hands its row to the recorder and
//! waits for the answer; a few workers each take whatever rows are waiting (up
//! to a batch), insert them in one transaction under shared issuance locks of their
//! keys, commit once, and only then answer each request. The URL still leaves
//! only after its own row is committed (invariant 1), but N links cost one WAL
//! flush instead of N.

use crate::registry::{self, links::NewLink};
use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc, oneshot};

/// The link back once committed, or None if its key is no longer active
/// (nothing was written; sign again with the current key). A batch's error is
/// cloned to every request in it.
pub type Recorded = Result<Option<NewLink>, registry::Error>;

struct Pending {
    link: NewLink,
    done: oneshot::Sender<Recorded>,
}

#[derive(Clone)]
pub struct Recorder {
    queue: mpsc::Sender<Pending>,
}

impl Recorder {
    /// Starts `workers` batch writers on `pool`, each committing up to
    /// `max_batch` links at a time. They stop when every `Recorder` is dropped.
    pub fn start(pool: PgPool, workers: usize, max_batch: usize) -> Self {
        let (queue, rx) = mpsc::channel::<Pending>(max_batch * workers.max(1) * 4);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..workers.max(1) {
            tokio::spawn(work(pool.clone(), rx.clone(), max_batch.max(1)));
        }
        Self { queue }
    }

    /// Records `link` and waits for its commit.
    pub async fn record(&self, link: NewLink) -> Recorded {
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

async fn work(pool: PgPool, rx: Arc<Mutex<mpsc::Receiver<Pending>>>, max_batch: usize) {
    loop {
        let mut batch = Vec::with_capacity(max_batch);
        {
            let mut rx = rx.lock().await;
            if rx.recv_many(&mut batch, max_batch).await == 0 {
                return; // every sender is gone
            }
        }
        let mut outcome = commit(&pool, &batch).await;
        if let Err(e) = &outcome
            && e.is_lock_conflict()
        {
            // Nothing was committed and no URL has left: run the batch again once.
            tracing::warn!(error = %e, rows = batch.len(), "link batch aborted by a lock conflict; retrying it");
            outcome = commit(&pool, &batch).await;
        }
        for p in batch {
            let recorded = match &outcome {
                Ok(active) if active.contains(&p.link.key_id) => Ok(Some(p.link)),
                Ok(_) => Ok(None),
                Err(e) => Err(e.clone()),
            };
            let _ = p.done.send(recorded);
        }
    }
}

/// One transaction: lock the batch's keys, insert the rows whose key is still
/// active, commit. Returns the keys that were active.
async fn commit(pool: &PgPool, batch: &[Pending]) -> Result<HashSet<String>, registry::Error> {
    let mut tx = registry::begin(pool).await?;
    let mut keys: Vec<&str> = batch.iter().map(|p| p.link.key_id.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    let rows: Vec<&NewLink> = batch.iter().map(|p| &p.link).collect();
    let active = registry::links::insert_batch_if_active(&mut tx, &keys, &rows).await?;
    registry::commit(tx).await?;
    Ok(active.into_iter().collect())
}

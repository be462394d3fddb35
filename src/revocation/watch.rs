//! WatchRevocations: each subscriber has one task that reads the events
//! (`registry::revocation_events`, written with the deactivation) after its
//! cursor, a page at a time, and hands them to a bounded channel. A slow
//! consumer holds at most a page: the task waits on the channel, and the
//! registry keeps the rest. With nothing to read it sleeps until a key change
//! is heard (every deactivation NOTIFYs, on any replica), or a poll interval
//! passes, or the server shuts down: then the stream ends with UNAVAILABLE
//! and the client resumes elsewhere from its last sequence.

use super::{RevocationError, Revocations};
use crate::auth::Caller;
use crate::domain::CallerName;
use crate::registry::revocation_events::{self, EventRow};
use std::time::Duration;
use tokio::sync::mpsc;

/// Events read per statement, and the most a subscriber's channel holds.
const PAGE: i64 = 64;
/// A notification may be lost (listener reconnecting): look anyway this often.
const POLL: Duration = Duration::from_secs(5);
/// How long a stream's last word (UNAVAILABLE) may wait for a full channel.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// After a registry error, before reading again.
const RETRY: Duration = Duration::from_secs(1);

/// An item of the stream: an event, or why it ends.
pub type Watched = Result<EventRow, RevocationError>;

impl Revocations {
    /// Starts a subscription for `caller` (an admin: everyone's events, or
    /// `only`'s; another caller: its own) after sequence `after` (None: from
    /// the latest event on).
    pub async fn watch(
        &self,
        caller: &Caller,
        only: Option<CallerName>,
        after: Option<u64>,
    ) -> Result<mpsc::Receiver<Watched>, RevocationError> {
        let who = match only {
            None if caller.admin => None,
            None => Some(caller.name.to_string()),
            Some(c) if caller.admin || c == caller.name => Some(c.to_string()),
            Some(c) => {
                return Err(RevocationError::NotYours(format!(
                    "caller: only admins may watch other callers' revocations (asked for {c})"
                )));
            }
        };
        let start = match after {
            Some(seq) => i64::try_from(seq).unwrap_or(i64::MAX),
            None => revocation_events::latest(&self.pool).await?,
        };
        let (tx, rx) = mpsc::channel(PAGE as usize);
        tokio::spawn(self.clone().feed(who, start, tx));
        Ok(rx)
    }

    /// Ends every subscription (server shutdown): each stream ends with
    /// UNAVAILABLE, so a graceful shutdown does not wait on them.
    pub fn close_watches(&self) {
        self.closing.send_replace(true);
    }

    async fn feed(self, who: Option<String>, mut cursor: i64, tx: mpsc::Sender<Watched>) {
        let mut changes = self.keys.key_changes();
        let mut closing = self.closing.subscribe();
        loop {
            if *closing.borrow_and_update() {
                // A consumer that reads nothing must not hold the shutdown:
                // past the grace, the stream just ends.
                let last = tx.send(Err(RevocationError::ShuttingDown(cursor)));
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, last).await;
                return;
            }
            // Marked seen before reading: a change committed during the read wakes the wait below.
            changes.borrow_and_update();
            let rows =
                match revocation_events::after(&self.pool, who.as_deref(), cursor, PAGE).await {
                    Ok(rows) => rows,
                    Err(e) => {
                        tracing::warn!(error = %e, "WatchRevocations: reading events; retrying");
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                };
            let full = rows.len() as i64 == PAGE;
            for row in rows {
                let seq = row.seq;
                tokio::select! {
                    sent = tx.send(Ok(row)) => if sent.is_err() { return },
                    _ = closing.changed() => break,
                }
                cursor = seq;
            }
            if full {
                continue;
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = closing.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = tx.closed() => return,
            }
        }
    }
}

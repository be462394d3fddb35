//! WatchRevocations: each subscriber has one task that reads the events
//! (`registry::revocation_events`, written with the deactivation) after its
//! cursor, a page at a time, and hands them to a bounded channel. A slow
//! consumer holds at most a page: the task waits on the channel, and the
//! registry keeps the rest. With nothing to read it sleeps until a key change
//! is heard (every deactivation NOTIFYs, on any replica), or a poll interval
//! passes, or the server shuts down: then the stream ends with UNAVAILABLE
//! and the client resumes elsewhere from its last sequence.
//!
//! Streams are counted (`Watchers`): over `--max-watchers` on the replica, or
//! `--max-watchers-per-caller` for one caller, a new one is refused with
//! RESOURCE_EXHAUSTED; the count is the gauge `presignd_revocation_watchers`.

use super::{RevocationError, Revocations};
use crate::auth::Caller;
use crate::domain::CallerName;
use crate::registry::revocation_events::{self, EventRow};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// `--max-watchers`' and `--max-watchers-per-caller`'s defaults.
pub const DEFAULT_MAX_WATCHERS: usize = 1000;
pub const DEFAULT_MAX_WATCHERS_PER_CALLER: usize = 100;

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

/// The streams open on this replica: in all and per (connected) caller.
pub(super) struct Watchers {
    max: usize,
    per_caller: usize,
    open: Mutex<(usize, HashMap<String, usize>)>,
}

/// One open stream's place, given back when its feed task ends.
struct Slot {
    watchers: Arc<Watchers>,
    caller: String,
}

impl Watchers {
    pub(super) fn new(max: usize, per_caller: usize) -> Self {
        Self {
            max,
            per_caller,
            open: Mutex::default(),
        }
    }

    fn take(self: &Arc<Self>, caller: &str) -> Result<Slot, RevocationError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per) = &mut *open;
        if *total >= self.max {
            return Err(RevocationError::TooManyWatchers(format!(
                "WatchRevocations: this replica already serves {total} streams, its limit \
                 (--max-watchers={}); retry later or on another replica",
                self.max
            )));
        }
        let mine = per.entry(caller.to_owned()).or_default();
        if *mine >= self.per_caller {
            return Err(RevocationError::TooManyWatchers(format!(
                "WatchRevocations: caller {caller} already has {mine} streams open on this \
                 replica, its limit (--max-watchers-per-caller={}); close one (one stream \
                 per service instance is enough: events carry every revocation)",
                self.per_caller
            )));
        }
        *mine += 1;
        *total += 1;
        crate::metrics::set_revocation_watchers(*total);
        Ok(Slot {
            watchers: self.clone(),
            caller: caller.to_owned(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.watchers.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = per.get_mut(&self.caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per.remove(&self.caller);
            }
        }
        crate::metrics::set_revocation_watchers(*total);
    }
}

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
        let slot = self.watchers.take(caller.name.as_str())?;
        let start = match after {
            Some(seq) => {
                let seq = i64::try_from(seq).unwrap_or(i64::MAX);
                // Retention deleted the events through `pruned`: resuming
                // before it would skip some without a word.
                let pruned = revocation_events::pruned_through(&self.pool).await?;
                if seq < pruned {
                    return Err(RevocationError::CursorPruned { after: seq, pruned });
                }
                seq
            }
            None => revocation_events::latest(&self.pool).await?,
        };
        let (tx, rx) = mpsc::channel(PAGE as usize);
        tokio::spawn(self.clone().feed(who, start, tx, slot));
        Ok(rx)
    }

    /// Ends every subscription (server shutdown): each stream ends with
    /// UNAVAILABLE, so a graceful shutdown does not wait on them.
    pub fn close_watches(&self) {
        self.closing.send_replace(true);
    }

    /// Holds `_slot` until the stream ends (its client went, or shutdown).
    async fn feed(
        self,
        who: Option<String>,
        mut cursor: i64,
        tx: mpsc::Sender<Watched>,
        _slot: Slot,
    ) {
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

//! Crash injection for tests: a point between two steps of key work where a
//! test makes the work stop as a crash would. Compiled in always, inert unless
//! a test arms a point: then the next time the work reaches it, the task
//! panics, so no cleanup code of presignd runs (a transaction in progress is
//! rolled back, as Postgres does when a process dies).

use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Where key work can be cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failpoint {
    /// The key intent is committed; the backend was not called.
    AfterIntent,
    /// The backend created the key; the registry has not recorded it.
    AfterBackendCreate,
    /// The new key passed its probe (provisioning, or the `verify_key` step).
    AfterProbe,
    /// Deactivated at the backend; the registry has not recorded it.
    AfterBackendDeactivate,
    /// The work's registry changes are made, not committed (provisioning, or
    /// any revocation step).
    BeforeCommit,
}

/// The armed point, and who hears that it was reached.
type Armed = (Failpoint, oneshot::Sender<()>);

#[derive(Clone, Default)]
pub struct Failpoints {
    armed: Arc<Mutex<Option<Armed>>>,
}

impl Failpoints {
    /// Arms `point` once; the receiver hears when the work reached it.
    pub fn arm(&self, point: Failpoint) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        *self.armed.lock().expect("failpoint lock") = Some((point, tx));
        rx
    }

    /// Panics here if a test armed `point`.
    pub fn check(&self, point: Failpoint) {
        let mut armed = self.armed.lock().expect("failpoint lock");
        if armed.as_ref().is_some_and(|(p, _)| *p == point) {
            let (_, reached) = armed.take().expect("armed");
            drop(armed);
            let _ = reached.send(());
            panic!("failpoint {point:?}: a crash injected by a test");
        }
    }
}
